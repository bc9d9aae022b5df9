//! The resource types the test API server serves, and the discovery documents that describe
//! them.
//!
//! The set is what the nftpol agent reads and writes (Namespaces, Nodes, Pods,
//! NetworkPolicies, Events of both APIs). Everything about a type (group, version, plural,
//! scope, indexed fields) lives in this one table, so adding a type is one match arm per
//! method.

use std::fmt;

use serde_json::{Value, json};

/// A resource type served by the test API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` `Namespace` (cluster-scoped).
    Namespace,
    /// `v1` `Node` (cluster-scoped).
    Node,
    /// `v1` `Pod`.
    Pod,
    /// `networking.k8s.io/v1` `NetworkPolicy`.
    NetworkPolicy,
    /// `v1` `Event` (the core, older Event API).
    CoreEvent,
    /// `events.k8s.io/v1` `Event` (what kube-runtime's `Recorder` writes).
    Event,
}

/// Number of [`Kind`]s (array sizes).
pub(crate) const KIND_COUNT: usize = 6;

const VERBS_ALL: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; KIND_COUNT] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::CoreEvent,
        Kind::Event,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// API group (`""` for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Node | Kind::Pod | Kind::CoreEvent => "",
            Kind::NetworkPolicy => "networking.k8s.io",
            Kind::Event => "events.k8s.io",
        }
    }

    /// API version within the group.
    pub fn version(self) -> &'static str {
        "v1"
    }

    /// `apiVersion` of objects: `v1` or `<group>/v1`.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Node | Kind::Pod | Kind::CoreEvent => "v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::Event => "events.k8s.io/v1",
        }
    }

    /// `kind` of objects.
    pub fn kind_name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::CoreEvent | Kind::Event => "Event",
        }
    }

    /// Plural resource name used in URLs.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::CoreEvent | Kind::Event => "events",
        }
    }

    fn singular(self) -> &'static str {
        match self {
            Kind::Namespace => "namespace",
            Kind::Node => "node",
            Kind::Pod => "pod",
            Kind::NetworkPolicy => "networkpolicy",
            Kind::CoreEvent | Kind::Event => "event",
        }
    }

    fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Namespace => &["ns"],
            Kind::Node => &["no"],
            Kind::Pod => &["po"],
            Kind::NetworkPolicy => &["netpol"],
            Kind::CoreEvent => &["ev"],
            Kind::Event => &["ev"],
        }
    }

    /// Whether objects live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }

    /// Fields a field selector may use besides `metadata.name` and `metadata.namespace`
    /// (path, value when the field is absent), a subset of what kube-apiserver indexes.
    pub(crate) fn fields(self) -> &'static [(&'static str, &'static str)] {
        match self {
            // spec.nodeName first: tests and the agent use it most.
            Kind::Pod => &[
                ("spec.nodeName", ""),
                ("status.phase", ""),
                ("status.podIP", ""),
                ("spec.hostNetwork", "false"),
            ],
            Kind::Namespace => &[("status.phase", "")],
            Kind::Node => &[("spec.unschedulable", "false")],
            Kind::NetworkPolicy => &[],
            Kind::CoreEvent => &[
                ("involvedObject.kind", ""),
                ("involvedObject.name", ""),
                ("involvedObject.namespace", ""),
                ("reason", ""),
                ("type", ""),
            ],
            Kind::Event => &[
                ("regarding.kind", ""),
                ("regarding.name", ""),
                ("regarding.namespace", ""),
                ("reason", ""),
                ("type", ""),
            ],
        }
    }

    /// The kind of an object from its `apiVersion` and `kind`.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.kind_name() == kind)
    }

    /// The kind served at `/<group>/<version>/<plural>`.
    pub(crate) fn from_resource(group: &str, version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.version() == version && k.plural() == plural)
    }
}

/// `pods`, `networkpolicies.networking.k8s.io`: the resource as kube-apiserver names it in
/// messages.
impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group().is_empty() {
            f.write_str(self.plural())
        } else {
            write!(f, "{}.{}", self.plural(), self.group())
        }
    }
}

/// Groups other than the core group, in discovery order.
fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&str> = Vec::new();
    for kind in Kind::ALL {
        if !kind.group().is_empty() && !groups.contains(&kind.group()) {
            groups.push(kind.group());
        }
    }
    groups
}

fn group_version(group: &str) -> Value {
    json!({ "groupVersion": format!("{group}/v1"), "version": "v1" })
}

fn api_group(group: &str) -> Value {
    json!({
        "name": group,
        "versions": [group_version(group)],
        "preferredVersion": group_version(group),
    })
}

/// `GET /version`.
pub(crate) fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "35",
        "emulationMajor": "1",
        "emulationMinor": "35",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "34",
        "gitVersion": "v1.35.0-nftpol-test-apiserver",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "none (nftpol e2e test API server, Rust)",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

/// `GET /api` (legacy discovery).
pub(crate) fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            { "clientCIDR": "0.0.0.0/0", "serverAddress": server_address }
        ],
    })
}

/// `GET /apis` (legacy discovery).
pub(crate) fn group_list() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups().into_iter().map(api_group).collect::<Vec<_>>(),
    })
}

/// `GET /apis/<group>`; `None` for groups we do not serve.
pub(crate) fn group(group: &str) -> Option<Value> {
    groups().contains(&group).then(|| {
        let mut doc = api_group(group);
        if let Value::Object(map) = &mut doc {
            map.insert("kind".into(), json!("APIGroup"));
            map.insert("apiVersion".into(), json!("v1"));
        }
        doc
    })
}

/// `GET /api/v1` or `/apis/<group>/<version>`; `None` when no kind is served there.
pub(crate) fn resource_list(group: &str, version: &str) -> Option<Value> {
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| k.group() == group && k.version() == version)
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let resources: Vec<Value> = kinds
        .iter()
        .map(|k| {
            json!({
                "name": k.plural(),
                "singularName": k.singular(),
                "namespaced": k.namespaced(),
                "kind": k.kind_name(),
                "verbs": VERBS_ALL,
                "shortNames": k.short_names(),
            })
        })
        .collect();
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// Aggregated discovery (`Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`)
/// of `/api` (`core == true`) or `/apis`.
pub(crate) fn aggregated(core: bool) -> Value {
    let group_names: Vec<&str> = if core { vec![""] } else { groups() };
    let items: Vec<Value> = group_names
        .into_iter()
        .map(|group| {
            let resources: Vec<Value> = Kind::ALL
                .into_iter()
                .filter(|k| k.group() == group)
                .map(|k| {
                    json!({
                        "resource": k.plural(),
                        "responseKind": { "group": group, "version": k.version(), "kind": k.kind_name() },
                        "scope": if k.namespaced() { "Namespaced" } else { "Cluster" },
                        "singularResource": k.singular(),
                        "verbs": VERBS_ALL,
                        "shortNames": k.short_names(),
                    })
                })
                .collect();
            let mut metadata = serde_json::Map::new();
            if !group.is_empty() {
                metadata.insert("name".into(), json!(group));
            }
            json!({
                "metadata": metadata,
                "versions": [{ "version": "v1", "resources": resources, "freshness": "Current" }],
            })
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}
