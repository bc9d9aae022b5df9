"""The Helm chart as users install it: rendered by Helm's own library with the value sets
users are expected to use, every object valid for the Kubernetes versions the chart
supports, and the properties that make it safe (privileges, RBAC) and working (the socket
shared with the host, the CNI directories, the probes) checked on the rendered objects."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import pytest
import yaml

from support import CHART, Rendered, args_map, k8s_versions, render, validate_object

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}},
    "metrics-service-only": {"metrics": {"service": {"enabled": True}}},
    "custom-cni": {"cni": {"binDir": "/var/lib/cni/bin", "confDir": "/etc/kubernetes/cni/net.d",
                           "conflist": "05-custom.conflist", "timeoutSeconds": 30}},
    "cni-auto-detect": {"cni": {"conflist": ""}},
    "cni-uninstall": {"cni": {"uninstall": True}},
    "cni-not-installed": {"cni": {"install": False}},
    "json-logs": {"logLevel": "debug", "logFormat": "json"},
    "resources": {"resources": {"requests": {"cpu": "200m", "memory": "128Mi"},
                                "limits": {"cpu": 2, "memory": "1Gi"}},
                  "cni": {"resources": {"requests": {"cpu": "5m", "memory": "8Mi"}}}},
    "scheduling": {"nodeSelector": {"kubernetes.io/os": "linux", "pool": "edge"},
                   "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "net",
                                    "effect": "NoSchedule"}],
                   "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                       "nodeSelectorTerms": [{"matchExpressions": [
                           {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
                   "priorityClassName": "", "updateStrategy": {"maxUnavailable": "20%"},
                   "podAnnotations": {"a.example/x": "1"}, "podLabels": {"team": "net"}},
    "names-and-image": {"fullnameOverride": "netpol-agent", "serviceAccount": {"name": "agent-sa"},
                        "image": {"repository": "registry.example:5000/team/nftpol", "tag": "0.2.0-rc1",
                                  "pullPolicy": "Always"},
                        "imagePullSecrets": [{"name": "regcred"}], "extraArgs": ["--some-flag=1"]},
    "loopback-metrics": {"metrics": {"bindAddress": "127.0.0.1", "port": 19464}},
    "ipv6-metrics": {"metrics": {"bindAddress": "::", "port": 9464}},
    "no-rbac-no-sa": {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "existing"}},
    "other-table-and-socket": {"table": "np_enforcer", "socketDir": "/var/run/nftpol-x",
                               "resyncInterval": "1h", "debounce": "50ms"},
}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return render(VALUE_SETS[request.param])


@pytest.fixture(scope="module")
def default() -> Rendered:
    return render()


# --- Helm itself -----------------------------------------------------------------------


def test_chart_metadata() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "nftpol"
    assert meta["version"] == "0.1.0"
    assert meta["appVersion"] == "0.1.0"
    assert meta["kubeVersion"] == ">=1.28.0-0"


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_helm_lint_is_clean(values_name: str) -> None:
    for version in k8s_versions():
        report = helm.lint(str(CHART), VALUE_SETS[values_name], strict=True,
                           kube_version=f"v{version}.0", namespace="kube-system")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not problems and not report["errors"], report


@pytest.mark.parametrize("version", k8s_versions())
def test_every_rendered_object_is_valid_kubernetes(rendered: Rendered, version: str) -> None:
    assert rendered.objects
    for obj in rendered.objects:
        validate_object(obj, version)


def test_validation_catches_a_misspelt_field(default: Rendered) -> None:
    # Guards the guard: strict validation must reject what Kubernetes would reject.
    ds = yaml.safe_load(yaml.safe_dump(default.daemonset))
    ds["spec"]["template"]["spec"]["hostNetwrk"] = True
    with pytest.raises(AssertionError, match="hostNetwrk"):
        validate_object(ds, k8s_versions()[0])


def test_default_objects(default: Rendered) -> None:
    kinds = sorted(o["kind"] for o in default.objects)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "ServiceAccount"]
    for o in default.objects:
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "nftpol"
        assert labels["app.kubernetes.io/instance"] == "nftpol"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "nftpol-0.1.0"
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == "kube-system"


# --- privileges ------------------------------------------------------------------------


def test_agent_gets_net_admin_and_nothing_else(rendered: Rendered) -> None:
    pod = rendered.pod
    for key in ("hostPID", "hostIPC", "shareProcessNamespace"):
        assert not pod.get(key), key
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    agent = rendered.container("agent")["securityContext"]
    assert agent["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert agent["privileged"] is False
    assert agent["allowPrivilegeEscalation"] is False
    assert agent["readOnlyRootFilesystem"] is True
    assert agent["runAsUser"] == 0 and agent["runAsNonRoot"] is False


def test_install_cni_gets_no_capability(rendered: Rendered) -> None:
    inits = rendered.pod.get("initContainers", [])
    if rendered.values.get("cni", {}).get("install") is False:
        assert inits == []
        return
    assert [c["name"] for c in inits] == ["install-cni"]
    sc = inits[0]["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True


def test_every_host_path_is_one_nftpol_needs(rendered: Rendered) -> None:
    values = render_values(rendered)
    wanted = {values["socketDir"]}
    if values["cni"]["install"]:
        wanted |= {values["cni"]["binDir"], values["cni"]["confDir"]}
    host_paths = {v["hostPath"]["path"] for v in rendered.pod["volumes"] if "hostPath" in v}
    assert host_paths == wanted
    for v in rendered.pod["volumes"]:
        if "hostPath" in v:
            assert v["hostPath"]["type"] == "DirectoryOrCreate"


def test_rbac_is_read_only_plus_events(default: Rendered) -> None:
    role = default.one("ClusterRole")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    read = {"get", "list", "watch"}
    expected = ({("", r, v) for r in ("pods", "namespaces", "nodes") for v in read}
                | {("networking.k8s.io", "networkpolicies", v) for v in read}
                | {(g, "events", v) for g in ("", "events.k8s.io") for v in ("create", "patch")})
    assert granted == expected
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames/nonResourceURLs"
    binding = default.one("ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    sa = default.one("ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "kube-system"}]
    assert default.pod["serviceAccountName"] == sa["metadata"]["name"]


def test_rbac_and_service_account_can_be_brought_by_the_user() -> None:
    r = render(VALUE_SETS["no-rbac-no-sa"])
    assert not r.of_kind("ClusterRole") and not r.of_kind("ServiceAccount")
    assert r.pod["serviceAccountName"] == "existing"


# --- scheduling ------------------------------------------------------------------------


def test_runs_on_every_linux_node_first(default: Rendered) -> None:
    pod = default.pod
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["terminationGracePeriodSeconds"] == 30
    strategy = default.daemonset["spec"]["updateStrategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}


def test_scheduling_values_reach_the_pod() -> None:
    v = VALUE_SETS["scheduling"]
    r = render(v)
    assert r.pod["nodeSelector"] == v["nodeSelector"]
    assert r.pod["tolerations"] == v["tolerations"]
    assert r.pod["affinity"] == v["affinity"]
    assert "priorityClassName" not in r.pod
    assert r.daemonset["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "20%"
    meta = r.daemonset["spec"]["template"]["metadata"]
    assert meta["annotations"]["a.example/x"] == "1"
    assert meta["labels"]["team"] == "net"
    # The selector must not change with pod labels (it is immutable on upgrade).
    assert r.daemonset["spec"]["selector"] == render().daemonset["spec"]["selector"]
    assert set(r.daemonset["spec"]["selector"]["matchLabels"].items()) <= set(meta["labels"].items())


# --- the agent -------------------------------------------------------------------------


def render_values(r: Rendered) -> dict[str, Any]:
    from support import chart
    return chart().merge_values(r.values)


def test_agent_command_line(rendered: Rendered) -> None:
    values = render_values(rendered)
    agent = rendered.container("agent")
    assert "command" not in agent, "the image's ENTRYPOINT is the nftpol binary"
    assert agent["args"][0] == "agent"
    args = args_map(agent["args"])
    assert args["table"] == values["table"]
    assert args["socket"] == values["socketDir"].rstrip("/") + "/nftpol.sock"
    assert args["state-dir"] == values["socketDir"]
    assert args["log-level"] == values["logLevel"]
    assert args["log-format"] == values["logFormat"]
    assert args["resync-interval"] == values["resyncInterval"]
    assert args["debounce"] == values["debounce"]
    bind = values["metrics"]["bindAddress"]
    host = f"[{bind}]" if ":" in bind else bind
    assert args["metrics-addr"] == f"{host}:{values['metrics']['port']}"
    cni = values["cni"]
    if cni["install"] and not cni["uninstall"]:
        # The agent keeps the plugin chained in the config the init container edited.
        assert args["cni-conf-dir"] == "/host/etc/cni/net.d"
        assert args.get("cni-conflist") == (cni["conflist"] or None)
        assert args["cni-timeout-seconds"] == str(cni["timeoutSeconds"])
        mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
        assert mounts["/host/etc/cni/net.d"] == "cni-conf"
    else:
        assert "cni-conf-dir" not in args
    for extra in values["extraArgs"]:
        key, _, value = extra[2:].partition("=")
        assert args[key] == (value or True)
    assert agent["env"] == [{"name": "NODE_NAME",
                             "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]


def test_probes_hit_the_metrics_port(rendered: Rendered) -> None:
    values = render_values(rendered)
    agent = rendered.container("agent")
    assert agent["ports"] == [{"name": "metrics", "containerPort": values["metrics"]["port"],
                               "protocol": "TCP"}]
    live, ready = agent["livenessProbe"]["httpGet"], agent["readinessProbe"]["httpGet"]
    assert (live["path"], live["port"]) == ("/healthz", "metrics")
    assert (ready["path"], ready["port"]) == ("/readyz", "metrics")
    bind = values["metrics"]["bindAddress"]
    if bind.startswith("127.") or bind == "::1":
        # The kubelet shares the host network: it reaches a loopback-only listener.
        assert live["host"] == ready["host"] == bind
    else:
        assert "host" not in live and "host" not in ready


def test_socket_dir_is_the_same_path_in_the_pod_and_on_the_host(rendered: Rendered) -> None:
    values = render_values(rendered)
    mounts = {m["name"]: m for m in rendered.container("agent")["volumeMounts"]}
    assert mounts["run"]["mountPath"] == values["socketDir"]
    assert rendered.volume("run")["hostPath"]["path"] == values["socketDir"]
    assert not mounts["run"].get("readOnly")
    assert mounts["tmp"]["mountPath"] == "/tmp"
    cni = values["cni"]
    wanted = {"run", "tmp"}
    if cni["install"] and not cni["uninstall"]:
        wanted.add("cni-conf")  # to keep the plugin chained when flannel rewrites its config
    assert set(mounts) == wanted, "the agent needs no other host path"


def test_image_defaults_to_app_version(default: Rendered) -> None:
    for c in default.pod["containers"] + default.pod["initContainers"]:
        assert c["image"] == "ghcr.io/nftpol/nftpol:0.1.0"
        assert c["imagePullPolicy"] == "IfNotPresent"


def test_image_and_names_can_be_overridden() -> None:
    r = render(VALUE_SETS["names-and-image"])
    for c in r.pod["containers"] + r.pod["initContainers"]:
        assert c["image"] == "registry.example:5000/team/nftpol:0.2.0-rc1"
        assert c["imagePullPolicy"] == "Always"
    assert r.pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert r.daemonset["metadata"]["name"] == "netpol-agent"
    assert r.pod["serviceAccountName"] == "agent-sa"
    assert r.one("ServiceAccount")["metadata"]["name"] == "agent-sa"


def test_resources(default: Rendered) -> None:
    agent = default.container("agent")["resources"]
    assert agent["requests"] == {"cpu": "50m", "memory": "64Mi"}
    assert agent["limits"] == {"memory": "512Mi"}, "memory limit, no CPU limit (see values.yaml)"
    r = render(VALUE_SETS["resources"])
    assert r.container("agent")["resources"] == VALUE_SETS["resources"]["resources"]
    assert r.container("install-cni")["resources"]["requests"] == {"cpu": "5m", "memory": "8Mi"}


# --- the CNI plugin installation -------------------------------------------------------


def test_install_cni_command_line_and_mounts(rendered: Rendered) -> None:
    values = render_values(rendered)
    cni = values["cni"]
    if not cni["install"]:
        assert {v["name"] for v in rendered.pod["volumes"]} == {"run", "tmp"}
        return
    init = rendered.container("install-cni")
    assert "command" not in init
    assert init["args"][0] == "install-cni"
    args = args_map(init["args"])
    expected: dict[str, str | bool] = {
        "plugin-binary": "/usr/local/bin/nftpol-cni",
        "cni-bin-dir": "/host/opt/cni/bin",
        "cni-conf-dir": "/host/etc/cni/net.d",
        "socket": args_map(rendered.container("agent")["args"])["socket"],
        "timeout-seconds": str(cni["timeoutSeconds"]),
    }
    if cni["conflist"]:
        expected["conflist"] = cni["conflist"]
    if cni["uninstall"]:
        expected["uninstall"] = True
        expected["remove-binary"] = True
    assert args == expected
    mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    assert mounts == {"/host/opt/cni/bin": "cni-bin", "/host/etc/cni/net.d": "cni-conf"}
    assert rendered.volume("cni-bin")["hostPath"]["path"] == cni["binDir"]
    assert rendered.volume("cni-conf")["hostPath"]["path"] == cni["confDir"]


def test_default_chains_after_flannel(default: Rendered) -> None:
    args = args_map(default.container("install-cni")["args"])
    assert args["conflist"] == "10-flannel.conflist"
    assert default.volume("cni-conf")["hostPath"]["path"] == "/etc/cni/net.d"
    assert default.volume("cni-bin")["hostPath"]["path"] == "/opt/cni/bin"


# --- metrics ---------------------------------------------------------------------------


def test_no_service_or_service_monitor_by_default(default: Rendered) -> None:
    assert not default.of_kind("Service") and not default.of_kind("ServiceMonitor")


def test_service_monitor_scrapes_every_agent() -> None:
    r = render(VALUE_SETS["service-monitor"])
    svc, sm = r.one("Service"), r.one("ServiceMonitor")
    assert svc["spec"]["clusterIP"] == "None"
    pod_labels = r.daemonset["spec"]["template"]["metadata"]["labels"]
    assert set(svc["spec"]["selector"].items()) <= set(pod_labels.items())
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9464, "targetPort": "metrics",
                                     "protocol": "TCP"}]
    assert set(sm["spec"]["selector"]["matchLabels"].items()) <= set(svc["metadata"]["labels"].items())
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["kube-system"]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert sm["metadata"]["labels"]["release"] == "prom"


def test_metrics_service_alone() -> None:
    r = render(VALUE_SETS["metrics-service-only"])
    assert r.one("Service") and not r.of_kind("ServiceMonitor")


# --- NOTES.txt -------------------------------------------------------------------------


def test_notes_tell_how_to_check_it_works(default: Rendered) -> None:
    assert "rollout status daemonset/nftpol" in default.notes
    assert "get daemonset nftpol" in default.notes
    assert "nft list table inet nftpol" in default.notes
    assert "-n kube-system" in default.notes
    assert "cni.uninstall=true" in default.notes
    custom = render(VALUE_SETS["other-table-and-socket"])
    assert "nft list table inet np_enforcer" in custom.notes


def test_notes_in_uninstall_mode() -> None:
    notes = render(VALUE_SETS["cni-uninstall"]).notes
    assert "UNINSTALL mode" in notes and "helm -n kube-system uninstall nftpol" in notes


# --- values.yaml and templates stay in step ---------------------------------------------


def leaf_paths(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        path = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and v and k not in ("resources", "nodeSelector"):
            out += leaf_paths(v, path)
        else:
            out.append(path)
    return out


def test_every_value_is_used_by_a_template() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    sources = "\n".join(p.read_text() for p in (CHART / "templates").iterdir())
    unused = [p for p in leaf_paths(values)
              if not re.search(r"\.Values\." + re.escape(p) + r"\b", sources)]
    assert unused == []
