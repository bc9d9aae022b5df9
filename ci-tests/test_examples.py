"""examples/: manifests valid for the supported Kubernetes versions, policies that select
the demo pods the walkthroughs say they do, READMEs that point at real files and keep the
placeholder the lead fills with `nftpol render` output, and agreement with smoke.sh."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from support import EXAMPLES, KIND, ROOT, k8s_versions, lib_call, load_yaml_docs, validate_object

CASES = ["tenant-ingress", "egress-db-dns"]
MANIFESTS = sorted(EXAMPLES.glob("**/*.yaml"))


def objects(case: str, *, snapshot: bool = False) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted((EXAMPLES / case).glob("**/*.yaml")):
        if ("snapshot" in path.parts) != snapshot:
            continue
        for doc in load_yaml_docs(path):
            out += doc["items"] if doc["kind"] == "List" else [doc]
    return out


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise AssertionError(f"no {kind} {name}")


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "the examples use matchLabels only"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def pod_templates(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(namespace, pod template) of every Deployment."""
    return [(o["metadata"]["namespace"], o["spec"]["template"]) for o in objs if o["kind"] == "Deployment"]


def test_there_are_manifests() -> None:
    assert {p.parent.name for p in MANIFESTS} >= set(CASES)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(EXAMPLES)))
@pytest.mark.parametrize("version", k8s_versions())
def test_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    docs = load_yaml_docs(path)
    assert docs
    for doc in docs:
        validate_object(doc, version)


def test_every_namespaced_object_names_its_namespace() -> None:
    for case in CASES:
        for o in objects(case) + objects(case, snapshot=True):
            if o["kind"] not in ("Namespace", "Node"):
                assert o["metadata"].get("namespace"), f"{case}: {o['kind']} {o['metadata']['name']}"


def test_tenant_ingress_policies() -> None:
    objs = objects("tenant-ingress")
    deny = find(objs, "NetworkPolicy", "default-deny-ingress")
    assert deny["metadata"]["namespace"] == "tenant-a"
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    allow = find(objs, "NetworkPolicy", "allow-from-ingress-nginx")
    assert allow["metadata"]["namespace"] == "tenant-a"
    assert allow["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = allow["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "ingress-nginx"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]
    # The policy selects the web pods, and those pods have the named port it opens.
    selected = [t for ns, t in pod_templates(objs)
                if ns == "tenant-a" and matches(allow["spec"]["podSelector"], t["metadata"]["labels"])]
    assert len(selected) == 1
    ports = {p["name"]: p for c in selected[0]["spec"]["containers"] for p in c.get("ports", [])}
    assert ports["http"]["containerPort"] == 8080 and ports["http"]["protocol"] == "TCP"
    # The Service the clients use sends port 80 to that named port.
    svc = find(objs, "Service", "web")
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert matches({"matchLabels": svc["spec"]["selector"]}, selected[0]["metadata"]["labels"])
    # One client per place the walkthrough connects from.
    clients = {(ns, t["metadata"]["labels"]["app"]) for ns, t in pod_templates(objs)}
    assert {("tenant-a", "neighbour"), ("tenant-b", "outsider"), ("ingress-nginx", "ingress-client")} <= clients


def test_egress_db_dns_policy() -> None:
    objs = objects("egress-db-dns")
    pol = find(objs, "NetworkPolicy", "api-egress")
    assert pol["metadata"]["namespace"] == "shop"
    assert pol["spec"]["policyTypes"] == ["Egress"]
    db, dns = pol["spec"]["egress"]
    assert db == {"to": [{"ipBlock": {"cidr": "10.200.0.0/24"}}], "ports": [{"protocol": "TCP", "port": 5432}]}
    assert dns["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                          "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    assert sorted(p["protocol"] for p in dns["ports"]) == ["TCP", "UDP"]
    assert {p["port"] for p in dns["ports"]} == {53}
    selected = {t["metadata"]["labels"]["app"] for ns, t in pod_templates(objs)
                if ns == "shop" and matches(pol["spec"]["podSelector"], t["metadata"]["labels"])}
    unselected = {t["metadata"]["labels"]["app"] for ns, t in pod_templates(objs)} - selected
    assert selected == {"api"} and unselected == {"batch"}


@pytest.mark.parametrize("case", CASES)
def test_snapshot_matches_the_demo(case: str) -> None:
    """The render snapshot holds the pods the Deployments create: same namespaces, labels
    (plus pod-template-hash), containers and named ports, each on a node of the snapshot."""
    objs, snap = objects(case), objects(case, snapshot=True)
    nodes = {o["metadata"]["name"] for o in snap if o["kind"] == "Node"}
    assert nodes == {"nftpol-control-plane", "nftpol-worker", "nftpol-worker2"}
    namespaces = {o["metadata"]["name"] for o in objs + snap if o["kind"] == "Namespace"}
    templates = pod_templates(objs)
    pods = [o for o in snap if o["kind"] == "Pod"]
    for pod in pods:
        assert pod["metadata"]["namespace"] in namespaces
        assert pod["spec"]["nodeName"] in nodes
        assert pod["status"]["phase"] == "Running" and pod["status"]["podIP"]
        labels = {k: v for k, v in pod["metadata"]["labels"].items() if k != "pod-template-hash"}
        if pod["metadata"]["namespace"] == "kube-system":
            continue
        same = [t for ns, t in templates if ns == pod["metadata"]["namespace"] and t["metadata"]["labels"] == labels]
        assert same, f"snapshot pod {pod['metadata']['name']} matches no Deployment"
        want = [(c["name"], c.get("ports", [])) for c in same[0]["spec"]["containers"]]
        got = [(c["name"], c.get("ports", [])) for c in pod["spec"]["containers"]]
        assert got == want
    ips = [p["status"]["podIP"] for p in pods]
    assert len(ips) == len(set(ips))
    for t_ns, t in templates:
        assert any(p["metadata"]["namespace"] == t_ns and
                   {k: v for k, v in p["metadata"]["labels"].items() if k != "pod-template-hash"}
                   == t["metadata"]["labels"] for p in pods), "every demo Deployment has a pod"


@pytest.mark.parametrize("case", CASES)
def test_readme_walkthrough(case: str) -> None:
    text = (EXAMPLES / case / "README.md").read_text()
    for heading in ("## Try it", "## What nftpol programs"):
        assert heading in text
    # Exactly one excerpt block, for the lead to fill with real `nftpol render` output.
    opens = re.findall(r"<!-- nft-excerpt:([a-z0-9-]+) -->", text)
    assert opens == [case]
    assert text.count("<!-- /nft-excerpt -->") == 1
    assert text.index(f"<!-- nft-excerpt:{case} -->") < text.index("<!-- /nft-excerpt -->")
    # Every example file the walkthrough mentions exists.
    for rel in re.findall(r"examples/[\w./-]+\.yaml", text):
        assert (ROOT / rel).exists(), rel
    for path in (EXAMPLES / case).glob("*.yaml"):
        assert path.name in text, f"README does not mention {path.name}"


def test_smoke_uses_the_example_workloads() -> None:
    smoke = (KIND / "smoke.sh").read_text()
    (listed,) = re.findall(r"for f in ((?:[a-z-]+/[a-z-]+ ?)+); do", smoke)
    deployments = {(o["metadata"]["namespace"], o["metadata"]["name"])
                   for case in CASES for o in objects(case) if o["kind"] == "Deployment"}
    assert {tuple(x.split("/")) for x in listed.split()} == deployments
    for rel in re.findall(r'\$EXAMPLES"?/([\w./-]+\.yaml)', smoke):
        assert (EXAMPLES / rel).exists(), rel


def test_database_cidr_substitution_of_the_local_demo() -> None:
    policy = EXAMPLES / "egress-db-dns" / "10-policy.yaml"
    out = lib_call(f'retarget_db_cidr "{policy}" 172.18.0.9/32').stdout
    (doc,) = [d for d in __import__("yaml").safe_load_all(out) if d]
    validate_object(doc, k8s_versions()[-1])
    assert doc["spec"]["egress"][0]["to"] == [{"ipBlock": {"cidr": "172.18.0.9/32"}}]
    assert doc["spec"]["egress"][1] == find(objects("egress-db-dns"), "NetworkPolicy", "api-egress")["spec"]["egress"][1]
    bad = lib_call(f'retarget_db_cidr "{policy}" "172.18.0.9"', check=False)
    assert bad.returncode != 0 and "not an IPv4 CIDR" in bad.stderr
    other = EXAMPLES / "tenant-ingress" / "10-policies.yaml"
    missing = lib_call(f'retarget_db_cidr "{other}" 172.18.0.9/32', check=False)
    assert missing.returncode != 0 and "found 0" in missing.stderr


def nftpol_binary_with(subcommand: str) -> str | None:
    """NFTPOL_BIN, else a binary built in this checkout, if it has `subcommand`."""
    candidates = [Path(os.environ["NFTPOL_BIN"])] if os.environ.get("NFTPOL_BIN") else []
    candidates += [ROOT / "target" / "release" / "nftpol", ROOT / "target" / "debug" / "nftpol"]
    for p in candidates:
        if p.exists():
            probe = subprocess.run([str(p), subcommand, "--help"], capture_output=True, text=True)
            if probe.returncode == 0 and "--node" in probe.stdout:
                return str(p)
    return None


@pytest.mark.parametrize("case", CASES)
def test_render_of_the_example(case: str) -> None:
    """Once `nftpol render` exists: the snapshot renders, the table has a chain per policy
    rule, and a filled-in README excerpt is text the renderer really prints."""
    binary = nftpol_binary_with("render")
    if binary is None:
        pytest.skip("!!! no built nftpol with a `render` subcommand in target/: example render not checked")
    proc = subprocess.run([binary, "render", "--node", "nftpol-worker", "-f", str(EXAMPLES / case)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "table inet nftpol" in out
    expected_chains = {"tenant-ingress": ["np_tenant-a_allow-from-ingress-nginx_ingress_0"],
                       "egress-db-dns": ["np_shop_api-egress_egress_0", "np_shop_api-egress_egress_1"]}
    for chain in expected_chains[case]:
        assert f"chain {chain}" in out
    text = (EXAMPLES / case / "README.md").read_text()
    # The walkthrough's explanation quotes chains and map elements: they must be real.
    flat = " ".join(out.split())
    prose = text.split("Line by line:")[1]
    spans = [" ".join(m.split()) for m in re.findall(r"`([^`]+)`", prose)]
    quoted = [sp for sp in spans if " : goto " in sp or " : jump " in sp]
    assert quoted, "the explanation quotes no map element"
    for sp in quoted:
        assert sp in flat, f"README quotes {sp!r}, which the render does not contain"
    for chain in re.findall(r"\*\*`chain ([\w-]+)`\*\*", prose):
        assert f"chain {chain} {{" in out, f"README explains chain {chain}, which the render lacks"
    block = text.split(f"<!-- nft-excerpt:{case} -->")[1].split("<!-- /nft-excerpt -->")[0]
    if "PLACEHOLDER" not in block:
        for line in block.strip().strip("`").splitlines():
            if line.strip() and line.strip() != "...":
                assert line.strip() in out, f"README excerpt line not in the render: {line!r}"
