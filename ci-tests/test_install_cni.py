"""The chart's init container against a copy of flannel's CNI config: the exact
`nftpol install-cni` command line the chart renders, with the /host mounts mapped to
temporary directories. Runs once a built nftpol has the subcommand (NFTPOL_BIN, or
target/{release,debug}/nftpol); until then it skips, loudly.

The fixture is the conflist flannel's manifest writes to /etc/cni/net.d/10-flannel.conflist
(its ConfigMap's cni-conf.json)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from support import HERE, ROOT, render

FLANNEL = HERE / "fixtures" / "10-flannel.conflist"


def binary() -> str:
    candidates = [Path(os.environ["NFTPOL_BIN"])] if os.environ.get("NFTPOL_BIN") else []
    candidates += [ROOT / "target" / "release" / "nftpol", ROOT / "target" / "debug" / "nftpol"]
    for p in candidates:
        if p.exists():
            probe = subprocess.run([str(p), "install-cni", "--help"], capture_output=True, text=True)
            if probe.returncode == 0 and "--cni-conf-dir" in probe.stdout:
                return str(p)
    pytest.skip("!!! no built nftpol with an `install-cni` subcommand: the chart's init container "
                "was not run against flannel's conflist")


def host(tmp_path: Path) -> dict[str, Path]:
    dirs = {"/host/opt/cni/bin": tmp_path / "opt-cni-bin", "/host/etc/cni/net.d": tmp_path / "etc-cni-net.d"}
    for d in dirs.values():
        d.mkdir()
    shutil.copy(FLANNEL, dirs["/host/etc/cni/net.d"] / "10-flannel.conflist")
    plugin = tmp_path / "nftpol-cni"
    plugin.write_bytes(b"\x7fELF stand-in for the static plugin\n")
    plugin.chmod(0o755)
    dirs["plugin"] = plugin
    return dirs


def init_args(values: dict[str, Any], dirs: dict[str, Path]) -> list[str]:
    """The init container's args from the rendered chart, host mounts mapped to dirs."""
    args = render(values).container("install-cni")["args"]
    out = []
    for a in args:
        for mount, real in dirs.items():
            if mount.startswith("/host/"):
                a = a.replace(mount, str(real))
        a = a.replace("/usr/local/bin/nftpol-cni", str(dirs["plugin"]))
        out.append(a)
    assert not any("/host/" in a for a in out)
    return out


def run(bin_: str, args: list[str]) -> None:
    proc = subprocess.run([bin_, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"


def test_chains_nftpol_into_flannel_idempotently(tmp_path: Path) -> None:
    bin_ = binary()
    dirs = host(tmp_path)
    conflist = dirs["/host/etc/cni/net.d"] / "10-flannel.conflist"
    original = json.loads(conflist.read_text())
    args = init_args({}, dirs)
    run(bin_, args)

    installed = dirs["/host/opt/cni/bin"] / "nftpol"
    assert installed.read_bytes() == dirs["plugin"].read_bytes()
    assert os.access(installed, os.X_OK)
    patched = json.loads(conflist.read_text())
    assert {k: v for k, v in patched.items() if k != "plugins"} == \
        {k: v for k, v in original.items() if k != "plugins"}
    types = [p["type"] for p in patched["plugins"]]
    assert types.count("nftpol") == 1
    assert [p for p in patched["plugins"] if p["type"] != "nftpol"] == original["plugins"]
    assert types.index("nftpol") > types.index("flannel"), "chained: it needs flannel's result"
    entry = next(p for p in patched["plugins"] if p["type"] == "nftpol")
    assert "/run/nftpol/nftpol.sock" in json.dumps(entry)

    first = conflist.read_text()
    run(bin_, args)
    assert json.loads(conflist.read_text()) == json.loads(first), "a pod restart must not change it"


def test_uninstall_restores_flannels_config(tmp_path: Path) -> None:
    bin_ = binary()
    dirs = host(tmp_path)
    conflist = dirs["/host/etc/cni/net.d"] / "10-flannel.conflist"
    original = json.loads(conflist.read_text())
    run(bin_, init_args({}, dirs))
    run(bin_, init_args({"cni": {"uninstall": True}}, dirs))
    assert json.loads(conflist.read_text()) == original
    assert not (dirs["/host/opt/cni/bin"] / "nftpol").exists()
