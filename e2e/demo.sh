#!/usr/bin/env bash
# The local demo: no Docker, no cluster, one command.
#
#   sudo e2e/demo.sh           # build, run the demo, remove everything
#   sudo e2e/demo.sh --keep    # ... leave the cluster up until Enter is pressed
#
# Builds nftpol, the nftpol-cni plugin and the demo program (the cargo example `demo` of
# e2e/, e2e/examples/demo.rs) once, then runs the demo: a two-node cluster made of network
# namespaces with the real `bridge` CNI plugin (the test harness of e2e/), a test API server
# and an nftpol agent per node with the plugin chained after `bridge`. It prints the
# connectivity matrix, applies the policies of examples/tenant-ingress and
# examples/egress-db-dns, prints the matrix again and node-0's table. Everything it creates
# is removed at the end, also on Ctrl-C.
#
# Environment:
#   NFTPOL_DEMO_PROFILE  release (default) or debug: which cargo profile to build and run
#   CARGO                the cargo to build with (default: cargo on PATH, else the invoking
#                        user's ~/.cargo/bin/cargo under sudo)
#   CARGO_TARGET_DIR     as for cargo (default: target/ of the repository)
# Under sudo, the build runs as the invoking user when the repository is theirs, so that
# target/ does not fill with files owned by root.
set -euo pipefail
shopt -s inherit_errexit

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Where the harness runs the reference CNI plugins from (Debian's containernetworking-plugins).
CNI_DIR=/usr/lib/cni
PACKAGES="containernetworking-plugins nftables iproute2"

log() { printf '==> %s\n' "$*" >&2; }
die() {
	printf 'demo.sh: %s\n' "$*" >&2
	exit 1
}

usage() {
	cat <<EOF
usage: sudo e2e/demo.sh [--keep]
  --keep   leave the cluster up after the demo until Enter is pressed (or Ctrl-C)
environment: NFTPOL_DEMO_PROFILE=release|debug, CARGO, CARGO_TARGET_DIR
EOF
}

# Checks the arguments before anything is built; prints nothing.
check_args() {
	local arg
	for arg in "$@"; do
		case $arg in
		--keep) ;;
		*)
			usage >&2
			die "unknown argument: $arg"
			;;
		esac
	done
}

check_root() {
	[[ $(id -u) -eq 0 ]] || die "needs root: it creates network namespaces and nftables tables. Run: sudo $0 $*"
}

# The programs the harness runs; prints what is missing and how to install it.
check_tools() {
	local missing=()
	[[ -x $CNI_DIR/bridge && -x $CNI_DIR/host-local ]] || missing+=("$CNI_DIR/bridge and $CNI_DIR/host-local (the reference CNI plugins)")
	command -v nft >/dev/null 2>&1 || missing+=("nft")
	command -v ip >/dev/null 2>&1 || missing+=("ip")
	if ((${#missing[@]} > 0)); then
		printf 'demo.sh: missing: %s\n' "${missing[@]}" >&2
		die "install them with: apt-get install $PACKAGES"
	fi
	# Same-node pod traffic reaches the nodes' tables through br_netfilter.
	if [[ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
		modprobe br_netfilter 2>/dev/null || die "the br_netfilter kernel module is missing (modprobe br_netfilter failed)"
	fi
}

# The cargo profile: "release" or "debug" (the name of its directory under the target dir).
profile() {
	case ${NFTPOL_DEMO_PROFILE:-release} in
	release) echo release ;;
	debug | dev) echo debug ;;
	*) die "NFTPOL_DEMO_PROFILE must be release or debug, not '${NFTPOL_DEMO_PROFILE}'" ;;
	esac
}

target_dir() { echo "${CARGO_TARGET_DIR:-$REPO_ROOT/target}"; }

# The user to build as: the one who ran sudo when the repository belongs to them, else none
# (build as the current user).
build_user() {
	local user=${SUDO_USER:-}
	if [[ -n $user && $user != root && $(stat -c %U "$REPO_ROOT") == "$user" ]]; then
		echo "$user"
	fi
}

# The cargo to run (as `build_user` if any).
find_cargo() {
	local user home
	if [[ -n ${CARGO:-} ]]; then
		echo "$CARGO"
		return
	fi
	user=$(build_user)
	if [[ -n $user ]]; then
		home=$(getent passwd "$user" | cut -d: -f6)
		if [[ -x $home/.cargo/bin/cargo ]]; then
			echo "$home/.cargo/bin/cargo"
			return
		fi
	fi
	if command -v cargo >/dev/null 2>&1; then
		command -v cargo
		return
	fi
	die "cargo not found: install Rust (https://rustup.rs) or set CARGO=/path/to/cargo"
}

# The build command line, one word per line.
build_command() {
	local user
	user=$(build_user)
	if [[ -n $user ]]; then
		printf '%s\n' sudo -u "$user" -H --
	fi
	printf '%s\n' "$(find_cargo)" build --locked --manifest-path "$REPO_ROOT/Cargo.toml" \
		--target-dir "$(target_dir)"
	if [[ $(profile) == release ]]; then
		echo --release
	fi
	printf '%s\n' -p nftpol --bin nftpol -p nftpol-cni --bin nftpol-cni -p nftpol-e2e --example demo
}

main() {
	local arg
	for arg in "$@"; do
		if [[ $arg == -h || $arg == --help ]]; then
			usage
			return 0
		fi
	done
	check_args "$@"
	check_root "$@"
	check_tools

	local profile out words cmd=()
	profile=$(profile)
	out="$(target_dir)/$profile"
	words=$(build_command)
	mapfile -t cmd <<<"$words"
	log "building nftpol, nftpol-cni and the demo ($profile): ${cmd[*]}"
	"${cmd[@]}"

	# The harness finds the binaries and the manifests through these.
	export NFTPOL_BIN="$out/nftpol"
	export NFTPOL_CNI_BIN="$out/nftpol-cni"
	export NFTPOL_EXAMPLES_DIR="$REPO_ROOT/examples"
	log "running $out/examples/demo $*"
	# exec: the demo itself takes Ctrl-C and cleans up.
	exec "$out/examples/demo" "$@"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	main "$@"
fi
