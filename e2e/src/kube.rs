//! The cluster as Kubernetes API objects, for tools that read a cluster snapshot from a file.
//!
//! `nftpol render`/`apply` take Namespaces, Nodes, Pods and NetworkPolicies as YAML or JSON.
//! Tests write the policies; this module writes the rest from what actually runs (pod IPs from
//! the CNI results, nodes and their addresses), so the snapshot cannot drift from the
//! namespaces it describes. JSON is valid YAML.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::cluster::{Cluster, Pod};
use crate::traffic::Proto;

/// The label every namespace carries.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

impl Cluster {
    /// A `v1` `List` of the cluster's Namespaces (every namespace of a pod plus those given
    /// labels), Nodes and running Pods (phase `Running`, `podIPs` from CNI).
    pub fn kube_objects(&self) -> Value {
        let pods = self.pods();
        let labels = self.namespace_labels();
        let namespaces: BTreeSet<String> = pods
            .iter()
            .map(|p| p.namespace().to_string())
            .chain(labels.keys().cloned())
            .collect();
        let mut items = Vec::new();
        for ns in &namespaces {
            let mut l = labels.get(ns).cloned().unwrap_or_default();
            l.insert(NAMESPACE_NAME_LABEL.to_string(), ns.clone());
            items.push(json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": { "name": ns, "labels": l },
            }));
        }
        for node in self.nodes() {
            let mut cidrs = vec![node.pod_cidr_v4.to_string()];
            cidrs.extend(node.pod_cidr_v6.map(|n| n.to_string()));
            let addresses: Vec<Value> = node
                .ips()
                .iter()
                .map(|ip| json!({ "type": "InternalIP", "address": ip.to_string() }))
                .collect();
            items.push(json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": node.name,
                    "labels": { "kubernetes.io/hostname": node.name },
                },
                "spec": { "podCIDR": cidrs[0], "podCIDRs": cidrs },
                "status": { "addresses": addresses },
            }));
        }
        for pod in &pods {
            items.push(pod_object(pod, &self.nodes()[pod.node()].ipv4.to_string()));
        }
        json!({ "apiVersion": "v1", "kind": "List", "items": items })
    }
}

fn pod_object(pod: &Pod, host_ip: &str) -> Value {
    let ports: Vec<Value> = pod
        .spec
        .ports
        .iter()
        .map(|(name, proto, port)| {
            json!({
                "name": name,
                "containerPort": port,
                "protocol": match proto { Proto::Udp => "UDP", _ => "TCP" },
            })
        })
        .collect();
    let ips: Vec<Value> = pod
        .ips
        .iter()
        .map(|ip| json!({ "ip": ip.to_string() }))
        .collect();
    let labels: BTreeMap<&str, &str> = pod
        .spec
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": pod.namespace(),
            "name": pod.name(),
            "uid": uid(&pod.container_id),
            "labels": labels,
        },
        "spec": {
            "nodeName": pod.node_name,
            "containers": [{ "name": "main", "image": "none", "ports": ports }],
        },
        "status": {
            "phase": "Running",
            "hostIP": host_ip,
            "podIP": pod.ips.first().map(|ip| ip.to_string()),
            "podIPs": ips,
        },
    })
}

/// A UUID-shaped uid from the container id (`<pid:16><cluster:16><pod:32>` hex): the low
/// halves of the three parts, unique per pod like the API server's uids.
fn uid(container_id: &str) -> String {
    let part = |r: std::ops::Range<usize>| container_id.get(r).unwrap_or("0");
    let h = format!(
        "{:0>32}",
        format!("{}{}{}", part(8..16), part(24..32), part(48..64))
    );
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
