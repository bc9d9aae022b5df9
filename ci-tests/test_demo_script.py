"""e2e/demo.sh, the README's first command: checked statically (bash -n, shellcheck, strict
mode), its functions called one by one, and run end to end against a stub cargo and a stub
demo program that record how they were called. The demo itself (e2e/examples/demo.rs) is
built by `cargo build --workspace --all-targets` and runs as root only."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from support import ROOT, bash, tool

DEMO = ROOT / "e2e" / "demo.sh"
DEMO_RS = ROOT / "e2e" / "examples" / "demo.rs"
CNI_DIR = Path("/usr/lib/cni")


def demo_call(snippet: str, env: dict[str, str] | None = None,
              check: bool = True) -> subprocess.CompletedProcess[str]:
    """Source e2e/demo.sh (which does not run it), then run `snippet`."""
    return bash(f'source "{DEMO}"\n{snippet}', env=env, check=check)


# --- static checks ---------------------------------------------------------------------


def test_the_script_and_the_example_it_runs_exist() -> None:
    assert DEMO.is_file() and DEMO_RS.is_file()
    text = DEMO.read_text()
    # It builds and runs the cargo example e2e/examples/demo.rs, with both binaries.
    assert "-p nftpol-e2e --example demo" in text
    assert "-p nftpol --bin nftpol" in text and "-p nftpol-cni --bin nftpol-cni" in text
    assert 'exec "$out/examples/demo" "$@"' in text


def test_the_script_is_strict_and_executable() -> None:
    text = DEMO.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\nshopt -s inherit_errexit\n" in text
    assert DEMO.stat().st_mode & stat.S_IXUSR, "e2e/demo.sh is not executable"
    assert 'if [[ ${BASH_SOURCE[0]} == "$0" ]]; then\n\tmain "$@"\nfi\n' in text


def test_bash_parses() -> None:
    proc = subprocess.run(["bash", "-n", str(DEMO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_shellcheck_clean() -> None:
    proc = subprocess.run(
        [tool("shellcheck"), "--severity=style",
         "--enable=check-unassigned-uppercase,avoid-nullary-conditions,deprecate-which,quote-safe-variables",
         str(DEMO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_readme_command_is_the_script() -> None:
    assert "sudo e2e/demo.sh" in (ROOT / "README.md").read_text()


# --- functions -------------------------------------------------------------------------


def build_words(env: dict[str, str]) -> list[str]:
    return demo_call("build_command", env=env).stdout.splitlines()


def test_release_build_of_the_three_targets(tmp_path: Path) -> None:
    words = build_words({"CARGO": "/x/cargo", "CARGO_TARGET_DIR": str(tmp_path), "SUDO_USER": ""})
    assert words == ["/x/cargo", "build", "--locked", "--manifest-path", str(ROOT / "Cargo.toml"),
                     "--target-dir", str(tmp_path), "--release",
                     "-p", "nftpol", "--bin", "nftpol", "-p", "nftpol-cni", "--bin", "nftpol-cni",
                     "-p", "nftpol-e2e", "--example", "demo"]


def test_debug_profile_and_default_target_dir() -> None:
    env = {"CARGO": "/x/cargo", "NFTPOL_DEMO_PROFILE": "debug", "CARGO_TARGET_DIR": "", "SUDO_USER": ""}
    words = build_words(env)
    assert "--release" not in words
    assert words[words.index("--target-dir") + 1] == str(ROOT / "target")
    assert demo_call("profile", env=env).stdout.strip() == "debug"
    bad = demo_call("profile", env={"NFTPOL_DEMO_PROFILE": "fast"}, check=False)
    assert bad.returncode != 0 and "release or debug" in bad.stderr


def fake_bin(tmp_path: Path, scripts: dict[str, str]) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        p = bin_dir / name
        p.write_text("#!/usr/bin/env bash\n" + body)
        p.chmod(0o755)
    return bin_dir


def test_under_sudo_it_builds_as_the_owner_of_the_repository(tmp_path: Path) -> None:
    """No files owned by root in the user's target/: the build runs as $SUDO_USER with their
    cargo when the repository is theirs."""
    home = tmp_path / "home"
    cargo = home / ".cargo" / "bin" / "cargo"
    cargo.parent.mkdir(parents=True)
    cargo.write_text("#!/bin/sh\n")
    cargo.chmod(0o755)
    bin_dir = fake_bin(tmp_path, {
        "stat": 'echo alice\n',
        "getent": f'echo "alice:x:1000:1000::{home}:/bin/bash"\n',
    })
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SUDO_USER": "alice", "CARGO": ""}
    words = build_words(env)
    assert words[:5] == ["sudo", "-u", "alice", "-H", "--"]
    assert words[5:7] == [str(cargo), "build"]
    # Somebody else's repository (or root's): built by the current user.
    other = build_words(dict(env, SUDO_USER="bob", CARGO="/x/cargo"))
    assert other[:2] == ["/x/cargo", "build"]


# --- runs with stubs ---------------------------------------------------------------------


@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, Any]:
    log = tmp_path / "calls.log"
    target = tmp_path / "target"
    bin_dir = fake_bin(tmp_path, {
        "id": 'if [[ $* == -u ]]; then echo "${STUB_UID:-0}"; else exec /usr/bin/id "$@"; fi\n',
        "cargo": 'printf "%s\\n" "cargo $*" >>"$STUB_LOG"\n',
        "nft": "exit 0\n",
        "ip": "exit 0\n",
    })
    demo = target / "release" / "examples" / "demo"
    demo.parent.mkdir(parents=True)
    demo.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "demo $*" "NFTPOL_BIN=$NFTPOL_BIN" '
                    '"NFTPOL_CNI_BIN=$NFTPOL_CNI_BIN" "NFTPOL_EXAMPLES_DIR=$NFTPOL_EXAMPLES_DIR" >>"$STUB_LOG"\n'
                    "exit 7\n")
    demo.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log),
           "CARGO": str(bin_dir / "cargo"), "CARGO_TARGET_DIR": str(target), "SUDO_USER": ""}
    return {"env": env, "log": log, "target": target}


def calls(stubs: dict[str, Any]) -> list[str]:
    return stubs["log"].read_text().splitlines() if stubs["log"].exists() else []


def test_help_needs_neither_root_nor_a_build(stubs: dict[str, Any]) -> None:
    proc = bash(f'"{DEMO}" --help', env=dict(stubs["env"], STUB_UID="1000"))
    assert proc.returncode == 0 and "--keep" in proc.stdout
    assert calls(stubs) == []


def test_without_root_it_says_so_before_building(stubs: dict[str, Any]) -> None:
    proc = bash(f'"{DEMO}" --keep', env=dict(stubs["env"], STUB_UID="1000"))
    assert proc.returncode == 1
    assert "needs root" in proc.stderr and "sudo" in proc.stderr
    assert calls(stubs) == []


def test_an_unknown_argument_is_refused_before_building(stubs: dict[str, Any]) -> None:
    proc = bash(f'"{DEMO}" --kep', env=stubs["env"])
    assert proc.returncode != 0 and "unknown argument: --kep" in proc.stderr
    assert calls(stubs) == []


def test_missing_tools_are_named_with_the_packages(stubs: dict[str, Any], tmp_path: Path) -> None:
    # The stubs and what any script needs, but no nft and no ip.
    bare = tmp_path / "bare"
    bare.mkdir()
    for t in ("id", "cargo"):
        (bare / t).symlink_to(Path(stubs["env"]["PATH"].split(":")[0]) / t)
    for t in ("bash", "env", "dirname"):
        found = shutil.which(t)
        assert found, t
        (bare / t).symlink_to(found)
    proc = bash(f'"{DEMO}"', env=dict(stubs["env"], PATH=f"{bare}:/nonexistent"))
    assert proc.returncode == 1
    assert "missing: nft" in proc.stderr and "missing: ip" in proc.stderr
    assert "apt-get install containernetworking-plugins nftables iproute2" in proc.stderr
    assert calls(stubs) == []


@pytest.mark.skipif(not (CNI_DIR / "bridge").exists(), reason="needs containernetworking-plugins")
def test_builds_once_then_runs_the_demo_with_the_binaries_it_built(stubs: dict[str, Any]) -> None:
    proc = bash(f'"{DEMO}" --keep', env=stubs["env"])
    # The demo's exit status is the script's (exec).
    assert proc.returncode == 7, proc.stderr
    out = stubs["target"] / "release"
    log = calls(stubs)
    assert log[0].startswith("cargo build --locked ") and "--release" in log[0].split()
    assert log[1:] == ["demo --keep", f"NFTPOL_BIN={out}/nftpol", f"NFTPOL_CNI_BIN={out}/nftpol-cni",
                       f"NFTPOL_EXAMPLES_DIR={ROOT}/examples"]
