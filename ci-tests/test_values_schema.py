"""values.schema.json: a mistaken value fails `helm install` with a message naming the key,
instead of rendering a broken DaemonSet. Each case goes through Helm's render, which
validates the merged values exactly as `helm install` and `helm template` do."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import pytest

from support import CHART, render

BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("log level not in the enum", {"logLevel": "loud"}, "/logLevel"),
    ("log format not in the enum", {"logFormat": "xml"}, "/logFormat"),
    ("metrics port above 65535", {"metrics": {"port": 70000}}, "/metrics/port"),
    ("metrics port below 1024 (no NET_BIND_SERVICE)", {"metrics": {"port": 80}}, "/metrics/port"),
    ("metrics port as a string", {"metrics": {"port": "9464"}}, "/metrics/port"),
    ("metrics bind address not an IP", {"metrics": {"bindAddress": "localhost"}}, "/metrics/bindAddress"),
    ("unknown top-level key", {"loglevel": "debug"}, "loglevel"),
    ("unknown nested key", {"cni": {"confdir": "/etc/cni"}}, "confdir"),
    ("conflist with a directory", {"cni": {"conflist": "../10-flannel.conflist"}}, "/cni/conflist"),
    ("conflist that is not a .conflist", {"cni": {"conflist": "10-flannel.conf"}}, "/cni/conflist"),
    ("relative CNI bin dir", {"cni": {"binDir": "opt/cni/bin"}}, "/cni/binDir"),
    ("plugin timeout of zero", {"cni": {"timeoutSeconds": 0}}, "/cni/timeoutSeconds"),
    ("table name nft cannot parse", {"table": "my-table"}, "/table"),
    ("duration in words", {"resyncInterval": "5 minutes"}, "/resyncInterval"),
    ("pull policy not in the enum", {"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ("image tag with a space", {"image": {"tag": "0.1 .0"}}, "/image/tag"),
    ("toleration operator not in the enum", {"tolerations": [{"operator": "Any"}]}, "/tolerations/0/operator"),
    ("maxUnavailable of zero", {"updateStrategy": {"maxUnavailable": 0}}, "/updateStrategy/maxUnavailable"),
    ("resource quantity not a quantity", {"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
    ("unknown resource name", {"resources": {"limits": {"gpu": 1}}}, "gpu"),
    ("extra argument that is not a flag", {"extraArgs": ["agent"]}, "/extraArgs/0"),
    ("socket dir relative", {"socketDir": "run/nftpol"}, "/socketDir"),
    ("label value not a string", {"podLabels": {"tier": 1}}, "/podLabels/tier"),
]


@pytest.mark.parametrize("what,values,where", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_value_is_rejected_with_its_path(what: str, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        render(values)
    assert where in str(err.value), str(err.value)


def test_schema_is_strict_at_every_object_level() -> None:
    """Every object in the schema that lists properties rejects unknown ones, except the
    free-form maps (affinity, global) that Kubernetes or Helm validate."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    loose: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                loose.append(path or "<root>")
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")

    walk(schema, "")
    assert loose == []


def test_good_edge_values_are_accepted() -> None:
    for values in (
        {"metrics": {"port": 1024}}, {"metrics": {"port": 65535}},
        {"metrics": {"bindAddress": "::1"}}, {"cni": {"conflist": ""}},
        {"updateStrategy": {"maxUnavailable": "100%"}},
        {"image": {"tag": "0.1.0@sha256:" + "a" * 64}},
        {"resources": {"requests": {"cpu": 0.5, "memory": "1.5Gi"}}},
        {"global": {"imageRegistry": "x"}},
    ):
        render(values)
