//! The repository's `examples/` in a [`KubeCluster`], as a user would `kubectl apply` them.
//!
//! The manifests are used unchanged. What a real cluster would do with them is played by the
//! harness: a Deployment becomes one harness pod per replica ([`deployment_pods`]), a Service
//! becomes a Service of the kube-proxy stand-in ([`services`]). What the examples assume
//! exists outside their manifests is built here too: the managed database of
//! `egress-db-dns` ([`add_database`]) and the cluster DNS ([`kube_dns_pods`],
//! [`kube_dns_services`]).
//!
//! Shared by the end-to-end tests of the examples (`tests/e2e_examples.rs`) and the local
//! demo (`examples/demo.rs`), so both show the same setup.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cluster::{Cluster, ClusterError, Family, Host, Pod, PodSpec, service_ip};
use crate::kube_cluster::{KubeCluster, KubeClusterError};
use crate::netns::NetnsError;
use crate::service::Service;
use crate::traffic::Proto;

/// The managed database of `egress-db-dns`: an address in the policy's `ipBlock`.
pub const DATABASE_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
/// The `ipBlock` of `egress-db-dns`, routed by every node to the database host.
pub const DATABASE_CIDR: &str = "10.200.0.0/24";
/// The database's port (the policy allows TCP to it).
pub const DATABASE_PORT: u16 = 5432;
/// `n` of the kube-dns ClusterIP ([`service_ip`]`(V4, n)`, i.e. 10.96.0.10).
pub const KUBE_DNS_SERVICE_N: u16 = 10;

/// Errors setting up an example.
#[derive(Debug, thiserror::Error)]
pub enum ExampleError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("manifest: {0}")]
    Manifest(String),
    #[error(transparent)]
    Kube(#[from] KubeClusterError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

type Result<T, E = ExampleError> = std::result::Result<T, E>;

/// The `examples/` directory: `$NFTPOL_EXAMPLES_DIR` if set, else the one of the workspace
/// this crate was built from.
pub fn examples_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NFTPOL_EXAMPLES_DIR") {
        return PathBuf::from(dir);
    }
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).join("examples")
}

/// The documents of a manifest of `examples/` (`relative` to it, e.g.
/// `tenant-ingress/10-policies.yaml`), empty documents left out.
pub fn manifests(relative: &str) -> Result<Vec<Value>> {
    let path = examples_dir().join(relative);
    let text = std::fs::read_to_string(&path).map_err(|source| ExampleError::Read {
        path: path.clone(),
        source,
    })?;
    let docs = serde_saphyr::from_multiple::<Value>(&text).map_err(|e| ExampleError::Parse {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(docs.into_iter().filter(|v| !v.is_null()).collect())
}

/// The documents of kind `kind`.
pub fn of_kind<'a>(docs: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    docs.iter().filter(move |d| d["kind"] == kind)
}

/// Applies every document of kind `kind` to the API server; returns how many.
pub fn apply_kind(kc: &KubeCluster, docs: &[Value], kind: &str) -> Result<usize> {
    let mut n = 0;
    for doc in of_kind(docs, kind) {
        kc.apply(doc.clone())?;
        n += 1;
    }
    Ok(n)
}

/// The string at a JSON pointer of a manifest document.
fn text<'a>(doc: &'a Value, pointer: &str) -> Result<&'a str> {
    doc.pointer(pointer).and_then(Value::as_str).ok_or_else(|| {
        ExampleError::Manifest(format!(
            "{} {}: no string at {pointer}",
            doc["kind"].as_str().unwrap_or("object"),
            doc["metadata"]["name"].as_str().unwrap_or("?"),
        ))
    })
}

fn proto_of(port: &Value) -> Proto {
    match port["protocol"].as_str() {
        Some("UDP") => Proto::Udp,
        _ => Proto::Tcp,
    }
}

fn port_at(doc: &Value, port: &Value, field: &str) -> Result<u16> {
    port[field]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| {
            ExampleError::Manifest(format!(
                "{} {}: bad {field} {}",
                doc["kind"].as_str().unwrap_or("object"),
                doc["metadata"]["name"].as_str().unwrap_or("?"),
                port[field]
            ))
        })
}

/// One pod per replica of every Deployment: `<name>-<i>` in the Deployment's namespace, with
/// the template's labels and container ports, on the node `place(deployment, replica)` says.
pub fn deployment_pods(
    docs: &[Value],
    place: impl Fn(&str, usize) -> usize,
) -> Result<Vec<PodSpec>> {
    let mut specs = Vec::new();
    for d in of_kind(docs, "Deployment") {
        let name = text(d, "/metadata/name")?;
        let namespace = text(d, "/metadata/namespace")?;
        let template = &d["spec"]["template"];
        let replicas = d["spec"]["replicas"].as_u64().unwrap_or(1);
        for i in 0..usize::try_from(replicas).unwrap_or(1) {
            let mut spec = PodSpec::new(namespace, &format!("{name}-{i}")).on(place(name, i));
            for (k, v) in template["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
            {
                spec = spec.label(k, v.as_str().unwrap_or_default());
            }
            let containers = template["spec"]["containers"].as_array();
            for c in containers.into_iter().flatten() {
                for p in c["ports"].as_array().into_iter().flatten() {
                    let port = port_at(d, p, "containerPort")?;
                    spec = spec.port(p["name"].as_str().unwrap_or(""), proto_of(p), port);
                }
            }
            specs.push(spec);
        }
    }
    Ok(specs)
}

/// Whether a Service (or any object with a `spec.selector` map) in `namespace` selects `pod`.
fn selects(object: &Value, pod: &Pod) -> bool {
    let Some(selector) = object["spec"]["selector"].as_object() else {
        return false;
    };
    pod.namespace() == object["metadata"]["namespace"]
        && selector
            .iter()
            .all(|(k, v)| pod.spec.labels.get(k).map(String::as_str) == v.as_str())
}

/// The kube-proxy stand-in's Services for the manifest's Services, at the ClusterIPs
/// [`service_ip`]`(V4, first_ip)`, `first_ip + 1`, ...: one per Service port, backed by the
/// pods the selector matches, the target port resolved (by name, too) on each pod.
pub fn services(docs: &[Value], pods: &[Pod], first_ip: u16) -> Result<Vec<Service>> {
    let mut out = Vec::new();
    for (n, s) in (first_ip..).zip(of_kind(docs, "Service")) {
        let name = format!(
            "{}/{}",
            text(s, "/metadata/namespace")?,
            text(s, "/metadata/name")?
        );
        let backends: Vec<&Pod> = pods.iter().filter(|p| selects(s, p)).collect();
        let ip = service_ip(Family::V4, n);
        for port in s["spec"]["ports"].as_array().into_iter().flatten() {
            let proto = proto_of(port);
            let mut svc = Service::new(&name, proto, ip, port_at(s, port, "port")?);
            for pod in &backends {
                let target = match &port["targetPort"] {
                    Value::String(named) => pod
                        .spec
                        .ports
                        .iter()
                        .find(|(n, p, _)| n == named && *p == proto)
                        .map(|(_, _, port)| *port)
                        .ok_or_else(|| {
                            ExampleError::Manifest(format!(
                                "Service {name}: pod {} has no {proto} port {named}",
                                pod.key()
                            ))
                        })?,
                    _ => port_at(s, port, "targetPort")?,
                };
                let ip = pod.ipv4().ok_or_else(|| {
                    ExampleError::Manifest(format!("pod {} has no IPv4 address", pod.key()))
                })?;
                svc = svc.backend(ip, target);
            }
            out.push(svc);
        }
    }
    Ok(out)
}

/// The managed database of `egress-db-dns`: an external host named `db` that also holds
/// [`DATABASE_IP`] in [`DATABASE_CIDR`], which every node routes to it, serving TCP
/// [`DATABASE_PORT`].
pub fn add_database(cluster: &Cluster) -> Result<Host> {
    let db = cluster.add_host("db")?;
    db.netns
        .ip(&["addr", "add", &format!("{DATABASE_IP}/24"), "dev", "eth0"])?;
    for node in cluster.nodes() {
        node.netns
            .ip(&["route", "add", DATABASE_CIDR, "via", &db.ipv4.to_string()])?;
    }
    db.netns.serve(Proto::Tcp, DATABASE_PORT)?;
    Ok(db)
}

/// The cluster DNS the `egress-db-dns` policy allows: `kube-system/coredns-<i>` on node `i`
/// for every node, labelled `k8s-app=kube-dns`, with CoreDNS's ports (`dns` UDP 53,
/// `dns-tcp` TCP 53, `metrics` TCP 9153). Serve them with [`serve_declared_ports`].
pub fn kube_dns_pods(nodes: usize) -> Vec<PodSpec> {
    (0..nodes)
        .map(|i| {
            PodSpec::new("kube-system", &format!("coredns-{i}"))
                .on(i)
                .label("k8s-app", "kube-dns")
                .port("dns", Proto::Udp, 53)
                .port("dns-tcp", Proto::Tcp, 53)
                .port("metrics", Proto::Tcp, 9153)
        })
        .collect()
}

/// The kube-dns ClusterIP (10.96.0.10).
pub fn kube_dns_ip() -> IpAddr {
    service_ip(Family::V4, KUBE_DNS_SERVICE_N)
}

/// The kube-dns Services (UDP and TCP 53 at [`kube_dns_ip`]), backed by the `kube-system`
/// pods of `pods` labelled `k8s-app=kube-dns`.
pub fn kube_dns_services(pods: &[Pod]) -> Vec<Service> {
    [Proto::Udp, Proto::Tcp]
        .into_iter()
        .map(|proto| {
            pods.iter()
                .filter(|p| {
                    p.namespace() == "kube-system"
                        && p.spec.labels.get("k8s-app").map(String::as_str) == Some("kube-dns")
                })
                .filter_map(Pod::ipv4)
                .fold(
                    Service::new("kube-system/kube-dns", proto, kube_dns_ip(), 53),
                    |s, ip| s.backend(ip, 53),
                )
        })
        .collect()
}

/// Starts an echo server on every port the pod's spec declares.
pub fn serve_declared_ports(pod: &Pod) -> Result<()> {
    let ports: Vec<(Proto, u16)> = pod.spec.ports.iter().map(|(_, p, n)| (*p, *n)).collect();
    pod.serve_all(&ports)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_examples_deployments_become_pods_with_their_labels_and_named_ports() {
        let docs = manifests("tenant-ingress/20-demo-workloads.yaml").unwrap();
        let specs = deployment_pods(&docs, |d, i| usize::from(d == "web") * i).unwrap();
        let keys: Vec<String> = specs
            .iter()
            .map(|s| format!("{}/{}@{}", s.namespace, s.name, s.node))
            .collect();
        assert_eq!(
            keys,
            [
                "tenant-a/web-0@0",
                "tenant-a/web-1@1",
                "tenant-a/neighbour-0@0",
                "tenant-b/outsider-0@0",
                "ingress-nginx/ingress-client-0@0"
            ]
        );
        assert_eq!(specs[0].labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(specs[0].ports, [("http".to_string(), Proto::Tcp, 8080)]);
        assert!(specs[2].ports.is_empty());
        assert_eq!(of_kind(&docs, "Service").count(), 1);
    }

    #[test]
    fn a_manifest_without_what_is_needed_is_an_error_not_a_panic() {
        let bad = [json!({
            "kind": "Deployment",
            "metadata": { "name": "web", "namespace": "a" },
            "spec": { "template": { "spec": { "containers": [{ "ports": [{ "containerPort": 70000 }] }] } } },
        })];
        let err = deployment_pods(&bad, |_, _| 0).unwrap_err().to_string();
        assert!(
            err.contains("Deployment web: bad containerPort 70000"),
            "{err}"
        );
        let unnamed = [json!({ "kind": "Deployment", "metadata": {} })];
        let err = deployment_pods(&unnamed, |_, _| 0).unwrap_err().to_string();
        assert!(err.contains("no string at /metadata/name"), "{err}");
        let missing = manifests("no-such-example/x.yaml").unwrap_err().to_string();
        assert!(missing.contains("no-such-example/x.yaml"), "{missing}");
    }
}
