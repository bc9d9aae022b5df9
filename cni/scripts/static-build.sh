#!/bin/sh
# Builds the nftpol-cni plugin as a fully static x86_64 binary and proves it is static.
#
# The plugin is copied onto hosts (/opt/cni/bin/nftpol) whose libc we do not know, so it must
# not need a dynamic loader or any shared library. For .ci/run:
#
#     cni/scripts/static-build.sh
#
# Uses its own target dir (target-static/, git-ignored) so that RUSTFLAGS do not invalidate
# the normal build. --target is explicit so that RUSTFLAGS apply to the plugin only, not to
# build scripts and proc macros (which must stay dynamic). Prints the binary's path and size.
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
target=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR="${STATIC_TARGET_DIR:-$root/target-static}"
export RUSTFLAGS="-C target-feature=+crt-static"
# A host binary, not something we debug in place: no debug info, stripped, one optimized
# unit, abort on panic (the plugin never recovers from one). Overrides [profile.release]
# for this build only.
export CARGO_PROFILE_RELEASE_DEBUG=false
export CARGO_PROFILE_RELEASE_STRIP=symbols
export CARGO_PROFILE_RELEASE_LTO=true
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
export CARGO_PROFILE_RELEASE_PANIC=abort

cd "$root"
cargo build --release --locked -p nftpol-cni --bin nftpol-cni --target "$target"
bin="$CARGO_TARGET_DIR/$target/release/nftpol-cni"

fail() { echo "static-build: $*" >&2; exit 1; }

# No dynamic section needs: no NEEDED entries, no program interpreter.
if readelf -d "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
    readelf -d "$bin" | grep '(NEEDED)' >&2
    fail "$bin needs shared libraries"
fi
if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
    fail "$bin asks for a dynamic loader"
fi
# ldd agrees ("not a dynamic executable" / "statically linked"; exit status varies by libc).
ldd_out=$(ldd "$bin" 2>&1 || true)
case "$ldd_out" in
    *"not a dynamic executable"*|*"statically linked"*) ;;
    *) echo "$ldd_out" >&2; fail "ldd reports dynamic dependencies" ;;
esac

# It runs with an empty environment and answers VERSION.
out=$(env -i CNI_COMMAND=VERSION "$bin" </dev/null)
case "$out" in
    *'"supportedVersions"'*) ;;
    *) fail "VERSION printed: $out" ;;
esac

size=$(stat -c %s "$bin")
echo "static-build: OK $bin ($size bytes, $(( (size + 1023) / 1024 )) KiB), statically linked"
