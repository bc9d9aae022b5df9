"""e2e/kind: the scripts users and upstream CI run against a kind cluster. No docker here,
so they are checked statically (bash -n, shellcheck), their functions are called one by
one, and up.sh / netpol-e2e.sh run end to end against stub docker, kind, kubectl, helm and
curl that record every call: the test reads the command lines they would have run."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from support import CHART, KIND, ROOT, bash, kind_k8s_version, lib_call, render, validate_object

SCRIPTS = sorted(KIND.glob("*.sh"))
EXECUTABLES = [p for p in SCRIPTS if p.name != "lib.sh"]


# --- static checks ---------------------------------------------------------------------


def test_the_expected_scripts_exist() -> None:
    assert {p.name for p in SCRIPTS} == {"lib.sh", "up.sh", "down.sh", "smoke.sh",
                                         "netpol-e2e.sh", "collect-logs.sh"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_parses(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_shellcheck_clean() -> None:
    from support import tool
    proc = subprocess.run(
        [tool("shellcheck"), "--external-sources", "--severity=style",
         "--enable=check-unassigned-uppercase,avoid-nullary-conditions,deprecate-which,quote-safe-variables",
         *map(str, SCRIPTS), str(ROOT / "ci-tests" / "run.sh")], capture_output=True, text=True, cwd=KIND)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", EXECUTABLES, ids=lambda p: p.name)
def test_scripts_are_strict_and_executable(script: Path) -> None:
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    # inherit_errexit: a failure inside $(...) stops the script too (bash resets -e in
    # command substitutions otherwise, and a half-computed command line would run).
    assert "\nset -euo pipefail\nshopt -s inherit_errexit\n" in text
    assert script.stat().st_mode & stat.S_IXUSR, f"{script.name} is not executable"
    # Sourcing a script must not run it (the tests and other scripts reuse its functions).
    assert 'if [[ ${BASH_SOURCE[0]} == "$0" ]]; then\n\tmain "$@"\nfi\n' in text


def test_lib_is_sourced_not_run() -> None:
    lib = KIND / "lib.sh"
    assert not lib.stat().st_mode & stat.S_IXUSR
    assert "set -e" not in lib.read_text(), "options belong to the scripts that source lib.sh"


# --- kind cluster config -----------------------------------------------------------------


def test_kind_config() -> None:
    cfg = yaml.safe_load((KIND / "kind-config.yaml").read_text())
    assert cfg["kind"] == "Cluster" and cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert cfg["networking"] == {"disableDefaultCNI": True, "podSubnet": "10.244.0.0/16"}
    assert [n["role"] for n in cfg["nodes"]] == ["control-plane", "worker", "worker"]


def test_pinned_versions() -> None:
    env = lib_call('printf "%s\\n" "$KIND_NODE_IMAGE" "$FLANNEL_VERSION" "$CNI_PLUGINS_VERSION"',
                   env={"KIND_NODE_IMAGE": "", "FLANNEL_VERSION": "", "CNI_PLUGINS_VERSION": ""}).stdout
    node_image, flannel, plugins = env.split()
    assert node_image.startswith(f"kindest/node:v{kind_k8s_version()}.") and "@sha256:" in node_image
    assert flannel.startswith("v0.") and plugins.startswith("v1.")
    # The cluster version is one the chart supports and the schemas cover.
    import kubernetes_validate
    assert kind_k8s_version() in {v[:4] for v in kubernetes_validate.utils.all_versions()}


# --- lib.sh functions ----------------------------------------------------------------------


def test_download_urls() -> None:
    out = lib_call("flannel_manifest_url; cni_plugins_url; k8s_test_tarball_url v1.33.1",
                   env={"FLANNEL_VERSION": "v0.27.4", "CNI_PLUGINS_VERSION": "v1.7.1"}).stdout
    assert out.split() == [
        "https://github.com/flannel-io/flannel/releases/download/v0.27.4/kube-flannel.yml",
        "https://github.com/containernetworking/plugins/releases/download/v1.7.1/cni-plugins-linux-amd64-v1.7.1.tgz",
        "https://dl.k8s.io/v1.33.1/kubernetes-test-linux-amd64.tar.gz",
    ]
    bad = lib_call("k8s_test_tarball_url v1.33", check=False)
    assert bad.returncode != 0 and "not a release version" in bad.stderr


def test_server_version_from_the_api_servers_answer() -> None:
    answer = json.dumps({"major": "1", "minor": "33", "gitVersion": "v1.33.1",
                         "gitCommit": "8adc0f041b8e7ad1d30e29cc59c6ae7a15e19828", "platform": "linux/amd64"},
                        indent=2)
    out = lib_call(f"server_git_version <<'EOF'\n{answer}\nEOF").stdout.strip()
    assert out == "v1.33.1"
    plus = lib_call("""echo '{"gitVersion":"v1.30.2+k3s1"}' | server_git_version""").stdout.strip()
    assert plus == "v1.30.2"
    assert lib_call("echo '{}' | server_git_version", check=False).returncode != 0


@pytest.mark.parametrize("image,repo,tag", [
    ("nftpol:e2e", "nftpol", "e2e"),
    ("localhost:5000/team/nftpol:0.1.0", "localhost:5000/team/nftpol", "0.1.0"),
])
def test_image_split(image: str, repo: str, tag: str) -> None:
    out = lib_call(f"image_repository {image}; image_tag {image}").stdout.split()
    assert out == [repo, tag]


def test_image_without_tag_is_refused() -> None:
    proc = lib_call("image_repository localhost:5000/nftpol", check=False)
    assert proc.returncode != 0 and "has no tag" in proc.stderr


def test_verify_sha256_both_sum_formats(tmp_path: Path) -> None:
    f = tmp_path / "a.tgz"
    f.write_bytes(b"payload")
    digest = hashlib.sha256(b"payload").hexdigest()
    (tmp_path / "bare").write_text(digest + "\n")
    (tmp_path / "named").write_text(f"{digest}  a.tgz\n")
    (tmp_path / "wrong").write_text("0" * 64 + "\n")
    lib_call(f"verify_sha256 {f} {tmp_path / 'bare'}; verify_sha256 {f} {tmp_path / 'named'}")
    proc = lib_call(f"verify_sha256 {f} {tmp_path / 'wrong'}", check=False)
    assert proc.returncode != 0 and "checksum mismatch" in proc.stderr


def helm_words(env: dict[str, str] | None = None) -> list[str]:
    return lib_call("nftpol_helm_args", env=env).stdout.splitlines()


def values_from_helm_words(words: list[str]) -> dict[str, Any]:
    """What helm would install with that command line: --values files then --set."""
    values: dict[str, Any] = {}

    def merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v

    for flag, arg in zip(words, words[1:]):
        if flag == "--values":
            merge(values, yaml.safe_load(Path(arg).read_text()))
        elif flag == "--set":
            merge(values, helm.parse_set_string(arg))
    return values


def test_helm_command_line_of_up_sh() -> None:
    words = helm_words({"NFTPOL_IMAGE": "nftpol:e2e", "KIND_CLUSTER_NAME": "nftpol",
                        "NFTPOL_NAMESPACE": "kube-system"})
    assert words[:4] == ["upgrade", "--install", "nftpol", str(CHART)]
    assert words[words.index("--kube-context") + 1] == "kind-nftpol"
    assert words[words.index("--namespace") + 1] == "kube-system"
    assert "--wait" in words


@pytest.mark.parametrize("image", ["nftpol:e2e", "localhost:5001/nftpol:dev"])
def test_chart_renders_with_the_values_the_scripts_pass(image: str) -> None:
    words = helm_words({"NFTPOL_IMAGE": image})
    values = values_from_helm_words(words)
    namespace = words[words.index("--namespace") + 1]
    r = render(values, name=words[2], namespace=namespace)
    for obj in r.objects:
        validate_object(obj, kind_k8s_version())
    for c in r.pod["containers"] + r.pod["initContainers"]:
        assert c["image"] == image
        assert c["imagePullPolicy"] == "Never", "kind load docker-image: never pulled"
    init_args = r.container("install-cni")["args"]
    assert "--conflist=10-flannel.conflist" in init_args
    # The DaemonSet name up.sh waits for is the one the chart creates.
    assert r.daemonset["metadata"]["name"] == words[2]


# --- dry runs with stub tools --------------------------------------------------------------

STUB = r"""#!/usr/bin/env bash
name=$(basename "$0")
printf '%s\n' "$name $*" >>"$STUB_LOG"
case "$name $*" in
"kind get clusters"*) printf '%s' "${STUB_CLUSTERS:-}" ;;
"kind get nodes"*) printf '%s\n' nftpol-control-plane nftpol-worker nftpol-worker2 ;;
"kind get kubeconfig"*) echo "apiVersion: v1" ;;
"docker exec "*" sysctl -n net.bridge.bridge-nf-call-iptables")
	[[ -n ${STUB_NO_BR_NETFILTER:-} ]] && exit 1
	echo "${STUB_BRIDGE_NF:-1}" ;;
"kubectl "*"get --raw /version"*) printf '{\n  "gitVersion": "v1.33.1",\n  "platform": "linux/amd64"\n}\n' ;;
curl*)
	out=
	while (($#)); do
		case $1 in -o) out=$2; shift ;; http*) url=$1 ;; esac
		shift
	done
	cp "$STUB_WEB/${url##*/}" "$out" ;;
esac
exit 0
"""

RECORDER = """#!/usr/bin/env bash
printf '%s\\n' "$(basename "$0") $*" >>"$STUB_LOG"
exit "${STUB_SUITE_EXIT:-0}"
"""


def add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def publish(web: Path, name: str, members: dict[str, bytes], sum_with_name: bool) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for member, data in members.items():
            add_file(tar, member, data)
    (web / name).write_bytes(buf.getvalue())
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    (web / f"{name}.sha256").write_text(f"{digest}  {name}\n" if sum_with_name else f"{digest}\n")


@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, Any]:
    bin_dir, web = tmp_path / "bin", tmp_path / "web"
    bin_dir.mkdir()
    web.mkdir()
    for tool_name in ("docker", "kind", "kubectl", "helm", "curl"):
        p = bin_dir / tool_name
        p.write_text(STUB)
        p.chmod(0o755)
    publish(web, "cni-plugins-linux-amd64-v1.7.1.tgz",
            {"./bridge": b"#!/bin/sh\n", "./host-local": b"#!/bin/sh\n"}, sum_with_name=True)
    publish(web, "kubernetes-test-linux-amd64.tar.gz",
            {"kubernetes/test/bin/e2e.test": RECORDER.encode(),
             "kubernetes/test/bin/ginkgo": RECORDER.encode()}, sum_with_name=False)
    log = tmp_path / "calls.log"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log), "STUB_WEB": str(web),
           "E2E_CACHE_DIR": str(tmp_path / "cache"), "ARTIFACTS": str(tmp_path / "artifacts"),
           "KIND_CLUSTER_NAME": "nftpol", "NFTPOL_IMAGE": "nftpol:e2e", "CNI_PLUGINS_VERSION": "v1.7.1",
           "FLANNEL_VERSION": "v0.27.4", "NFTPOL_NAMESPACE": "kube-system", "GINKGO_NODES": "4"}
    return {"env": env, "log": log, "tmp": tmp_path}


def calls(stubs: dict[str, Any]) -> list[str]:
    return stubs["log"].read_text().splitlines() if stubs["log"].exists() else []


def index_of(lines: list[str], prefix: str) -> int:
    for i, line in enumerate(lines):
        if line.startswith(prefix):
            return i
    raise AssertionError(f"no call starting with {prefix!r} in:\n" + "\n".join(lines))


def test_up_sh_builds_the_cluster_in_order(stubs: dict[str, Any]) -> None:
    proc = bash(f'"{KIND / "up.sh"}"', env=stubs["env"])
    assert proc.returncode == 0, proc.stderr
    log = calls(stubs)
    image = lib_call('printf "%s" "$KIND_NODE_IMAGE"', env={"KIND_NODE_IMAGE": ""}).stdout
    create = index_of(log, f"kind create cluster --name nftpol --image {image} "
                           f"--config {KIND / 'kind-config.yaml'}")
    cp = [i for i, line in enumerate(log) if line.startswith("docker cp ")]
    assert [log[i].split()[-1] for i in cp] == [f"{n}:/opt/cni/bin/bridge" for n in
                                                ("nftpol-control-plane", "nftpol-worker", "nftpol-worker2")]
    br = [i for i, line in enumerate(log) if "sysctl -n net.bridge.bridge-nf-call-iptables" in line]
    assert len(br) == 3
    flannel = index_of(log, "kubectl --context kind-nftpol apply -f "
                            "https://github.com/flannel-io/flannel/releases/download/v0.27.4/kube-flannel.yml")
    build = index_of(log, "docker build -t nftpol:e2e")
    load = index_of(log, "kind load docker-image nftpol:e2e --name nftpol")
    install = index_of(log, "helm upgrade --install nftpol")
    rollout = index_of(log, "kubectl --context kind-nftpol -n kube-system rollout status daemonset/nftpol")
    # The plugin is chained into the conflist flannel writes, so flannel comes first.
    assert create < cp[0] < br[0] < flannel < build < load < install < rollout
    assert not any("sysctl -w" in line for line in log), "already 1: left alone"
    assert log[install].split()[1:] == helm_words(stubs["env"])
    assert log[index_of(log, "docker build")].endswith(f"-f {ROOT / 'Dockerfile'} {ROOT}")


def test_up_sh_reuses_a_cluster_and_an_image(stubs: dict[str, Any]) -> None:
    env = dict(stubs["env"], STUB_CLUSTERS="other\nnftpol\n", NFTPOL_SKIP_BUILD="1")
    proc = bash(f'"{KIND / "up.sh"}"', env=env)
    assert proc.returncode == 0, proc.stderr
    log = calls(stubs)
    assert not any(line.startswith(("kind create", "docker build")) for line in log)
    index_of(log, "helm upgrade --install")


def test_up_sh_stops_before_helm_on_a_bad_image_name(stubs: dict[str, Any]) -> None:
    env = dict(stubs["env"], NFTPOL_IMAGE="localhost:5000/nftpol", NFTPOL_SKIP_BUILD="1")
    proc = bash(f'"{KIND / "up.sh"}"', env=env)
    assert proc.returncode != 0 and "has no tag" in proc.stderr
    assert not any(line.startswith("helm") for line in calls(stubs))


def test_up_sh_refuses_a_tampered_download(stubs: dict[str, Any]) -> None:
    web = Path(stubs["env"]["STUB_WEB"])
    (web / "cni-plugins-linux-amd64-v1.7.1.tgz.sha256").write_text("0" * 64 + "\n")
    proc = bash(f'"{KIND / "up.sh"}"', env=stubs["env"])
    assert proc.returncode != 0 and "checksum mismatch" in proc.stderr
    assert not any(line.startswith("docker cp") for line in calls(stubs))


def test_netpol_e2e_runs_the_upstream_suite_in_parallel(stubs: dict[str, Any]) -> None:
    proc = bash(f'"{KIND / "netpol-e2e.sh"}"', env=stubs["env"])
    assert proc.returncode == 0, proc.stderr
    log = calls(stubs)
    index_of(log, "curl -fsSL --retry 3 -o")
    assert any("https://dl.k8s.io/v1.33.1/kubernetes-test-linux-amd64.tar.gz" in line for line in log)
    run = log[index_of(log, "ginkgo ")]
    bindir = Path(stubs["env"]["E2E_CACHE_DIR"]) / "kubernetes-test-v1.33.1-amd64"
    artifacts = stubs["env"]["ARTIFACTS"]
    assert run == ("ginkgo --nodes=4 --focus=\\[sig-network\\] Netpol  --skip=SCTP --timeout=3h "
                   f"{bindir}/e2e.test -- --kubeconfig={artifacts}/kubeconfig --provider=local "
                   f"--report-dir={artifacts} --disable-log-dump=true --dump-logs-on-failure=false")
    assert Path(artifacts, "kubeconfig").read_text().startswith("apiVersion: v1")


def test_netpol_e2e_serial_runs_e2e_test_directly(stubs: dict[str, Any]) -> None:
    proc = bash(f'"{KIND / "netpol-e2e.sh"}"', env=dict(stubs["env"], GINKGO_NODES="1"))
    assert proc.returncode == 0, proc.stderr
    run = calls(stubs)[index_of(calls(stubs), "e2e.test ")]
    assert run.startswith("e2e.test --ginkgo.focus=\\[sig-network\\] Netpol  --ginkgo.skip=SCTP "
                          "--ginkgo.timeout=3h --kubeconfig=")


def test_netpol_e2e_failure_collects_logs_and_fails(stubs: dict[str, Any]) -> None:
    proc = bash(f'"{KIND / "netpol-e2e.sh"}"', env=dict(stubs["env"], STUB_SUITE_EXIT="1"))
    assert proc.returncode == 1
    log = calls(stubs)
    out = Path(stubs["env"]["ARTIFACTS"]) / "logs-netpol-e2e"
    index_of(log, f"kind export logs {out}/kind --name nftpol")
    for node in ("nftpol-control-plane", "nftpol-worker", "nftpol-worker2"):
        index_of(log, f"docker exec {node} nft list ruleset")


def test_collect_logs_reads_every_agent_and_node(stubs: dict[str, Any], tmp_path: Path) -> None:
    # kubectl lists two agent pods; collect-logs must read logs and the ruleset of each.
    stub = Path(stubs["env"]["PATH"].split(":")[0]) / "kubectl"
    stub.write_text(STUB.replace('"kind get clusters"*)',
                                 '"kubectl "*"get pods -l"*) printf "nftpol-a nftpol-worker\\nnftpol-b nftpol-worker2\\n" ;;\n'
                                 '"kind get clusters"*)'))
    out = tmp_path / "logs"
    proc = bash(f'"{KIND / "collect-logs.sh"}" {out}', env=stubs["env"])
    assert proc.returncode == 0, proc.stderr
    log = calls(stubs)
    for pod in ("nftpol-a", "nftpol-b"):
        index_of(log, f"kubectl --context kind-nftpol -n kube-system logs {pod} -c agent")
        index_of(log, f"kubectl --context kind-nftpol -n kube-system logs {pod} -c install-cni")
        index_of(log, f"kubectl --context kind-nftpol -n kube-system exec {pod} -c agent -- nft list ruleset")
    assert (out / "nft" / "nftpol-worker.via-agent.nft").exists()
    assert (out / "nft" / "nftpol-worker2.nft").exists()


def test_down_sh_deletes_only_an_existing_cluster(stubs: dict[str, Any]) -> None:
    bash(f'"{KIND / "down.sh"}"', env=stubs["env"], check=True)
    assert not any(line.startswith("kind delete") for line in calls(stubs))
    bash(f'"{KIND / "down.sh"}"', env=dict(stubs["env"], STUB_CLUSTERS="nftpol\n"), check=True)
    index_of(calls(stubs), "kind delete cluster --name nftpol")


# smoke.sh against a simulated cluster: kubectl answers `agnhost connect` from a table of
# what a working enforcer does once the example policies are applied. With an enforcer
# that drops nothing, smoke.sh must fail: it is a test that can fail.
SMOKE_KUBECTL = r"""#!/usr/bin/env bash
printf '%s\n' "kubectl $*" >>"$STUB_LOG"
state=$STUB_STATE
case "$*" in
*" apply -f -"*) cat >"$state.egress-policy.yaml"; touch "$state.egress" ;;
*"apply -f "*"/10-policies.yaml"*) touch "$state.ingress" ;;
*" exec "*" dig "*) echo 10.96.0.1 ;;
*" exec "*"/agnhost connect"*)
	from=$(printf '%s\n' "$@" | grep '^deploy/' | cut -d/ -f2)
	target=${*: -1}
	verdict=OK
	[[ $target == *:8080 && $target != web.* ]] && verdict=REFUSED
	if [[ $STUB_ENFORCING == 1 ]]; then
		if [[ -e $state.ingress && $target == web.tenant-a* && $from != ingress-client ]]; then verdict=TIMEOUT; fi
		if [[ -e $state.egress && $from == api && $target != *:5432 ]]; then verdict=TIMEOUT; fi
	fi
	[[ $verdict == OK ]] && exit 0
	echo "$verdict" >&2
	exit 1 ;;
esac
exit 0
"""

SMOKE_DOCKER = r"""#!/usr/bin/env bash
printf '%s\n' "docker $*" >>"$STUB_LOG"
[[ "$*" == inspect\ -f* ]] && echo 172.18.0.9
exit 0
"""


def smoke_run(stubs: dict[str, Any], enforcing: bool) -> subprocess.CompletedProcess[str]:
    bin_dir = Path(stubs["env"]["PATH"].split(":")[0])
    (bin_dir / "kubectl").write_text(SMOKE_KUBECTL)
    (bin_dir / "docker").write_text(SMOKE_DOCKER)
    env = dict(stubs["env"], STUB_STATE=str(stubs["tmp"] / "state"), SMOKE_TIMEOUT="0",
               STUB_ENFORCING="1" if enforcing else "0")
    return bash(f'"{KIND / "smoke.sh"}"', env=env, timeout=120)


def test_smoke_passes_against_an_enforcing_cluster(stubs: dict[str, Any]) -> None:
    proc = smoke_run(stubs, enforcing=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "15 passed, 0 failed"
    # The egress example went in with the stand-in database's address, and is still valid.
    applied = yaml.safe_load((stubs["tmp"] / "state.egress-policy.yaml").read_text())
    validate_object(applied, kind_k8s_version())
    assert applied["spec"]["egress"][0]["to"] == [{"ipBlock": {"cidr": "172.18.0.9/32"}}]
    log = calls(stubs)
    # Policies only after the baseline, and any leftovers from a previous run removed first.
    first_policy = index_of(log, "kubectl --context kind-nftpol apply -f " + str(ROOT / "examples/tenant-ingress/10-policies.yaml"))
    assert index_of(log, "kubectl --context kind-nftpol delete --ignore-not-found") < first_policy
    baseline = [i for i, line in enumerate(log) if "agnhost connect" in line]
    assert len([i for i in baseline if i < first_policy]) == 6


def test_smoke_fails_against_a_cluster_that_drops_nothing(stubs: dict[str, Any]) -> None:
    proc = smoke_run(stubs, enforcing=False)
    assert proc.returncode == 1
    assert proc.stdout.strip() == "11 passed, 4 failed"
    assert "FAIL tenant-b/outsider -> web.tenant-a.svc.cluster.local:80: want TIMEOUT, got OK" in proc.stderr


def test_up_sh_needs_br_netfilter(stubs: dict[str, Any]) -> None:
    proc = bash(f'"{KIND / "up.sh"}"', env=dict(stubs["env"], STUB_NO_BR_NETFILTER="1"))
    assert proc.returncode != 0 and "sudo modprobe br_netfilter" in proc.stderr
    assert not any(line.startswith("kubectl") for line in calls(stubs)), "stops before flannel"


def test_up_sh_turns_bridge_filtering_on(stubs: dict[str, Any]) -> None:
    proc = bash(f'"{KIND / "up.sh"}"', env=dict(stubs["env"], STUB_BRIDGE_NF="0"))
    assert proc.returncode == 0, proc.stderr
    sets = [line for line in calls(stubs) if "sysctl -w net.bridge.bridge-nf-call-iptables=1" in line]
    assert [line.split()[2] for line in sets] == ["nftpol-control-plane", "nftpol-worker", "nftpol-worker2"]
