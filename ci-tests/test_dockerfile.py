"""The Dockerfile, checked without docker: hadolint, then BuildKit's own parser to check
that the image holds what the chart runs (binary names and paths, entrypoint), that it
builds exactly the two shipped crates of the workspace, and that .dockerignore keeps every
file cargo needs."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import dockerfile
import pytest

from support import ROOT, args_map, render, tool

COMMANDS = dockerfile.parse_file(str(ROOT / "Dockerfile"))


def stages() -> list[list[Any]]:
    out: list[list[Any]] = []
    for c in COMMANDS:
        if c.cmd == "FROM":
            out.append([])
        if out:
            out[-1].append(c)
    return out


def simple_commands(run: Any) -> list[list[str]]:
    """A RUN's shell text split into simple commands (on &&, ||, ;, |, if/then)."""
    lexer = shlex.shlex(" ".join(run.value), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    out: list[list[str]] = [[]]
    for tok in lexer:
        if tok in ("&&", "||", ";", "|", "if", "then", "fi", "else"):
            out.append([])
        else:
            out[-1].append(tok)
    return [c for c in out if c]


def runs(stage: list[Any]) -> list[list[str]]:
    return [cmd for c in stage if c.cmd == "RUN" for cmd in simple_commands(c)]


def apt_installed(stage: list[Any]) -> set[str]:
    pkgs: set[str] = set()
    for cmd in runs(stage):
        if cmd[:2] == ["apt-get", "install"]:
            assert "--no-install-recommends" in cmd and "-y" in cmd, cmd
            pkgs |= {a for a in cmd[2:] if not a.startswith("-")}
    return pkgs


def cargo_builds(stage: list[Any]) -> list[dict[str, Any]]:
    builds = []
    for cmd in runs(stage):
        env = {}
        while cmd and re.fullmatch(r"[A-Z_]+=.*", cmd[0]):
            k, _, v = cmd.pop(0).partition("=")
            env[k] = v
        if cmd[:2] == ["cargo", "build"]:
            flags = cmd[2:]
            value = lambda f: flags[flags.index(f) + 1] if f in flags else None  # noqa: E731
            builds.append({"env": env, "flags": flags, "package": value("-p"),
                           "bin": value("--bin"), "target": value("--target")})
    return builds


def workspace() -> dict[str, dict[str, Any]]:
    """package name -> its Cargo.toml, for every workspace member."""
    root = tomllib.loads((ROOT / "Cargo.toml").read_text())
    members = {}
    for m in root["workspace"]["members"]:
        manifest = tomllib.loads((ROOT / m / "Cargo.toml").read_text())
        manifest["_dir"] = m
        members[manifest["package"]["name"]] = manifest
    return members


def test_hadolint_clean() -> None:
    proc = subprocess.run([tool("hadolint"), "--no-color", "--failure-threshold", "info",
                           str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_two_stages_on_debian_bookworm() -> None:
    builder, runtime = stages()
    assert re.fullmatch(r"rust:\$\{RUST_VERSION\}-bookworm", builder[0].value[0])
    assert [v.lower() for v in builder[0].value[1:]] == ["as", "builder"]
    assert runtime[0].value == ("debian:bookworm-slim",)


def test_builder_packages() -> None:
    builder, _ = stages()
    assert apt_installed(builder) == {"libnftnl-dev", "libmnl-dev", "pkg-config"}


def test_runtime_has_only_the_needed_packages() -> None:
    _, runtime = stages()
    # libnftnl-dev/libmnl-dev at build time -> their shared libraries at run time; nftables
    # is the optional `nft` CLI for `kubectl exec ... nft list ruleset`.
    assert apt_installed(runtime) == {"libnftnl11", "libmnl0", "ca-certificates", "nftables"}
    cleanup = [c for c in runs(runtime) if c[:2] == ["rm", "-rf"]]
    assert cleanup and "/var/lib/apt/lists/*" in cleanup[0]


def test_builds_exactly_the_shipped_crates() -> None:
    builder, _ = stages()
    builds = cargo_builds(builder)
    members = workspace()
    shipped = {b["package"] for b in builds}
    assert shipped == {"nftpol", "nftpol-cni"}
    assert shipped <= set(members), "package names must match the Cargo manifests"
    assert "nftpol-e2e" in members and "nftpol-e2e" not in shipped
    for b in builds:
        assert "--release" in b["flags"] and "--locked" in b["flags"]
        assert not {"--workspace", "--all"} & set(b["flags"])
        bins = [t["name"] for t in members[b["package"]].get("bin", [])]
        assert b["bin"] in bins, f"{b['bin']} is not a [[bin]] of {b['package']}"
    agent = next(b for b in builds if b["package"] == "nftpol")
    plugin = next(b for b in builds if b["package"] == "nftpol-cni")
    assert "RUSTFLAGS" not in agent["env"], "the agent links libnftnl dynamically"
    assert plugin["env"]["RUSTFLAGS"] == "-C target-feature=+crt-static"
    assert plugin["target"] == "${CNI_TARGET}"
    defaults = dict(c.value[0].split("=", 1) for c in COMMANDS if c.cmd == "ARG" and "=" in c.value[0])
    assert defaults["CNI_TARGET"] == "x86_64-unknown-linux-gnu"


def test_cargo_caches_are_mounted() -> None:
    builder, _ = stages()
    (build_run,) = [c for c in builder if c.cmd == "RUN" and "cargo build" in c.value[0]]
    targets = {re.search(r"target=([^,]+)", f).group(1) for f in build_run.flags
               if f.startswith("--mount=type=cache")}
    assert {"/usr/local/cargo/registry", "/usr/local/cargo/git", "/src/target"} <= targets


def copied_binaries() -> dict[str, str]:
    """destination in the image -> source in the builder."""
    _, runtime = stages()
    out = {}
    for c in runtime:
        if c.cmd == "COPY":
            assert c.flags == ("--from=builder",)
            src, dest = c.value
            out[dest] = src
    return out


def test_image_layout_matches_what_the_chart_runs() -> None:
    copied = copied_binaries()
    assert set(copied) == {"/usr/local/bin/nftpol", "/usr/local/bin/nftpol-cni"}
    # What the builder put in /out is what cargo produced for those crates.
    builder, _ = stages()
    cps = {c[2]: c[1] for c in runs(builder) if c and c[0] == "cp"}
    assert cps[copied["/usr/local/bin/nftpol"]] == "target/release/nftpol"
    assert cps[copied["/usr/local/bin/nftpol-cni"]] == "target/${CNI_TARGET}/release/nftpol-cni"

    (entrypoint,) = [c for c in COMMANDS if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json and entrypoint.value == ("/usr/local/bin/nftpol",)
    pod = render().pod
    (agent,) = pod["containers"]
    (init,) = pod["initContainers"]
    assert "command" not in agent and "command" not in init
    assert agent["args"][0] == "agent" and init["args"][0] == "install-cni"
    assert args_map(init["args"])["plugin-binary"] in copied


def test_oci_labels_and_versions() -> None:
    labels: dict[str, str] = {}
    for c in COMMANDS:
        if c.cmd == "LABEL":
            vals = list(c.value)
            for k, v in zip(vals[0::2], vals[1::2]):
                labels[k] = v.strip('"')
    for key in ("title", "description", "source", "licenses", "version", "revision"):
        assert f"org.opencontainers.image.{key}" in labels
    pkg = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]
    assert labels["org.opencontainers.image.licenses"] == pkg["license"]
    defaults = dict(c.value[0].split("=", 1) for c in COMMANDS if c.cmd == "ARG" and "=" in c.value[0])
    import yaml
    chart = yaml.safe_load((ROOT / "charts" / "nftpol" / "Chart.yaml").read_text())
    assert defaults["VERSION"] == pkg["version"] == chart["appVersion"]


# --- .dockerignore -----------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """Docker's rules: patterns are relative to the context root, `*` and `?` stay within
    a path element, `**` matches any number of elements, `!` re-includes, last match wins,
    and excluding a directory excludes everything under it."""
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line[1:] if negate else line
        pat = pat.strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**", i):
                rx += ".*"
                i += 2
                if pat.startswith("/", i):
                    rx += "/?"
                    i += 1
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        out.append((negate, re.compile(rx + "$")))
    return out


def excluded(path: str) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, rx in dockerignore_patterns():
        if any(rx.match(p) for p in prefixes):
            result = not negate
    return result


def paths_cargo_needs() -> list[str]:
    need = ["Cargo.toml", "Cargo.lock"]
    for name, manifest in workspace().items():
        d = manifest["_dir"].strip("./")
        prefix = f"{d}/" if d else ""
        need.append(f"{prefix}Cargo.toml")
        lib = manifest.get("lib", {}).get("path", "src/lib.rs")
        need.append(prefix + lib)
        for kind, default_dir in (("bin", "src/bin"), ("bench", "benches"), ("test", "tests"),
                                  ("example", "examples")):
            for target in manifest.get(kind, []):
                path = target.get("path") or f"{default_dir}/{target['name']}.rs"
                need.append(prefix + path)
    # Every source file of the crates the image builds (module files, build scripts).
    for name in ("nftpol", "nftpol-cni"):
        d = ROOT / workspace()[name]["_dir"]
        need += [f.relative_to(ROOT).as_posix() for f in (d / "src").rglob("*") if f.is_file()]
        if (d / "build.rs").exists():
            need.append((d / "build.rs").relative_to(ROOT).as_posix())
    # Files pulled into the crates at compile time.
    for src in ROOT.glob("**/src/**/*.rs"):
        rel = src.relative_to(ROOT).as_posix()
        if rel.startswith(("target", "e2e/")):
            continue
        for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"', src.read_text()):
            need.append((src.parent / m.group(1)).resolve().relative_to(ROOT).as_posix())
    return need


def test_dockerignore_keeps_what_cargo_needs() -> None:
    need = paths_cargo_needs()
    assert "cni/Cargo.toml" in need and "e2e/Cargo.toml" in need
    for path in need:
        assert (ROOT / path).exists(), f"{path} is declared but missing"
        assert not excluded(path), f".dockerignore excludes {path}, which the build needs"


@pytest.mark.parametrize("path", ["target/release/nftpol", "charts/nftpol/values.yaml",
                                  "e2e/kind/up.sh", "examples/tenant-ingress/10-policies.yaml",
                                  "ci-tests/run.sh", ".git/HEAD"])
def test_dockerignore_drops_what_the_build_does_not_need(path: str) -> None:
    assert excluded(path)


def test_the_built_agent_needs_only_the_runtime_libraries() -> None:
    """If a locally built agent exists, its dynamic dependencies must be exactly what the
    runtime stage installs (or glibc/libgcc, which debian:bookworm-slim has)."""
    candidates = [ROOT / "target" / p / "nftpol" for p in ("release", "debug")]
    binary = next((p for p in candidates if p.exists()), None)
    if binary is None:
        pytest.skip("!!! no target/{release,debug}/nftpol built: cannot check its shared libraries")
    out = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True, check=True).stdout
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out))
    base = {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2", "libpthread.so.0",
            "libdl.so.2", "librt.so.1"}
    from_packages = {"libnftnl.so.11": "libnftnl11", "libmnl.so.0": "libmnl0"}
    assert needed - base <= set(from_packages), f"unexpected shared libraries: {needed - base}"
    assert {from_packages[lib] for lib in needed - base} <= apt_installed(stages()[1])
