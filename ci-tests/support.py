"""Shared helpers of the install-surface tests: where things are, rendering the chart with
Helm's own library, and validating objects against the Kubernetes JSON schemas.

The Kubernetes versions tested are read from the repository, not repeated here: the
chart's minimum (Chart.yaml kubeVersion) and the version the kind scripts pin (lib.sh),
plus the newest release the pinned kubernetes-validate has schemas for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "nftpol"
KIND = ROOT / "e2e" / "kind"
EXAMPLES = ROOT / "examples"
HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A tool installed by requirements.txt (hadolint, shellcheck), from this venv."""
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed (see ci-tests/requirements.txt)")
    return found


def min_k8s_version() -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    m = re.fullmatch(r">=\s*(\d+\.\d+)\.\d+(-0)?", chart["kubeVersion"])
    assert m, f"unexpected kubeVersion constraint {chart['kubeVersion']!r}"
    return m.group(1)


def kind_k8s_version() -> str:
    m = re.search(r"KIND_NODE_IMAGE:=kindest/node:v(\d+\.\d+)\.\d+@sha256:[0-9a-f]{64}",
                  (KIND / "lib.sh").read_text())
    assert m, "lib.sh must pin KIND_NODE_IMAGE as kindest/node:vX.Y.Z@sha256:<digest>"
    return m.group(1)


def newest_schema_version() -> str:
    """The newest Kubernetes release kubernetes-validate has schemas for."""
    return ".".join(kubernetes_validate.utils.latest_version().split(".")[:2])


def k8s_versions() -> list[str]:
    """Oldest supported, the kind e2e cluster's, and the newest there are schemas for."""
    return sorted({min_k8s_version(), kind_k8s_version(), newest_schema_version()},
                  key=lambda v: tuple(int(x) for x in v.split(".")))


@dataclass
class Rendered:
    """One rendering of the chart: the Kubernetes objects and NOTES.txt."""

    objects: list[dict[str, Any]]
    notes: str
    values: dict[str, Any] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    @property
    def daemonset(self) -> dict[str, Any]:
        return self.one("DaemonSet")

    @property
    def pod(self) -> dict[str, Any]:
        return self.daemonset["spec"]["template"]["spec"]

    def container(self, name: str) -> dict[str, Any]:
        for c in self.pod.get("containers", []) + self.pod.get("initContainers", []):
            if c["name"] == name:
                return c
        raise AssertionError(f"no container {name!r}")

    def volume(self, name: str) -> dict[str, Any]:
        for v in self.pod["volumes"]:
            if v["name"] == name:
                return v
        raise AssertionError(f"no volume {name!r}")


_chart: helm.Chart | None = None


def chart() -> helm.Chart:
    global _chart
    if _chart is None:
        _chart = helm.Chart.load(str(CHART))
    return _chart


def render(values: dict[str, Any] | None = None, *, name: str = "nftpol",
           namespace: str = "kube-system") -> Rendered:
    """`helm template` through Helm's library: values are checked against
    values.schema.json exactly as `helm install` does (HelmValuesError otherwise)."""
    manifests = chart().render(values or {}, name=name, namespace=namespace, is_install=True)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                objects.append(doc)
    return Rendered(objects, notes, values or {})


def args_map(args: list[str]) -> dict[str, str | bool]:
    """["sub", "--a=1", "--flag"] -> {"a": "1", "flag": True} (subcommand dropped)."""
    out: dict[str, str | bool] = {}
    for a in args[1:]:
        assert a.startswith("--"), f"unexpected argument {a!r}"
        key, sep, value = a[2:].partition("=")
        assert key not in out, f"argument --{key} given twice"
        out[key] = value if sep else True
    return out


_SERVICEMONITOR_SCHEMA = json.loads((HERE / "schemas" / "servicemonitor-v1-subset.json").read_text())


def validate_object(obj: dict[str, Any], version: str) -> None:
    """Strict validation against the Kubernetes OpenAPI schemas of `version` (unknown
    fields are errors). ServiceMonitor (a CRD) is checked against the subset of the
    Prometheus Operator's CRD schema that the chart uses."""
    if obj.get("apiVersion") == "v1" and obj.get("kind") == "List":
        # `kubectl get -o yaml` lists have no schema of their own: check the wrapper, then
        # each item.
        assert set(obj) <= {"apiVersion", "kind", "metadata", "items"}, sorted(obj)
        for item in obj["items"]:
            validate_object(item, version)
        return
    if obj.get("apiVersion") == "monitoring.coreos.com/v1" and obj.get("kind") == "ServiceMonitor":
        jsonschema.validate(obj, _SERVICEMONITOR_SCHEMA)
        return
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        raise AssertionError(
            f"{obj['kind']}/{obj['metadata'].get('name')} invalid for Kubernetes {version} "
            f"at {path or '<root>'}: {e.message}") from None
    except kubernetes_validate.SchemaNotFoundError as e:
        raise AssertionError(e.message) from None


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def bash(script: str, *, env: dict[str, str] | None = None, cwd: Path | None = None,
         check: bool = False, timeout: int = 60) -> subprocess.CompletedProcess[str]:
    """Run a bash snippet (strict mode) and capture its output."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=full_env,
                          cwd=cwd or ROOT, text=True, capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"bash failed ({proc.returncode}):\n{script}\n--- stderr\n{proc.stderr}")
    return proc


def lib_call(snippet: str, env: dict[str, str] | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    """Source e2e/kind/lib.sh, then run `snippet`."""
    return bash(f'source "{KIND / "lib.sh"}"\n{snippet}', env=env, check=check)
