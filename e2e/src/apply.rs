//! Running `nftpol apply` inside the cluster's nodes, from Kubernetes objects written to files.
//!
//! Kernel tests of `nftpol apply` and the datapath benchmark drive the real binary the way a
//! user does: a directory of YAML/JSON manifests (the cluster snapshot from
//! [`Cluster::kube_objects`] plus the test's NetworkPolicies), `nftpol apply --node <name> -f
//! <dir> --json` inside the node's namespace, and the JSON summary it prints. This module keeps
//! that plumbing out of the tests: input directories that live (and die) with the cluster,
//! running the binary on one or every node, parsing the summary, and small edits of the
//! snapshot that the harness does not model itself (a pod's labels changing, hostNetwork pods).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::{Cluster, Node};
use crate::cmd::{self, CmdError, Output};
use crate::netns::NetnsError;
use crate::{BinaryError, workspace_binary};

/// The table `nftpol` owns by default.
pub const TABLE: &str = "nftpol";

/// Deadline for one `nftpol apply` (a debug build on a loaded machine).
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of running `nftpol`.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Binary(#[from] BinaryError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node {node}: {source}")]
    Run {
        node: String,
        #[source]
        source: CmdError,
    },
    #[error("node {node}: nftpol apply failed:\n{output}")]
    Failed { node: String, output: Box<Output> },
    #[error("node {node}: cannot read the summary {stdout:?}: {reason}")]
    Summary {
        node: String,
        stdout: String,
        reason: String,
    },
}

/// The `--json` summary of one `nftpol apply`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplySummary {
    pub node: String,
    /// False when the kernel already held the desired table and nothing was sent.
    pub changed: bool,
    /// The table was replaced as a whole.
    pub replaced: bool,
    pub chains_added: u64,
    pub chains_refilled: u64,
    pub chains_deleted: u64,
    pub sets_added: u64,
    pub sets_deleted: u64,
    pub elements_added: u64,
    pub elements_deleted: u64,
    pub rules_added: u64,
    pub messages: u64,
    pub bytes: u64,
    pub elapsed_ms: f64,
    /// The JSON as printed.
    pub raw: Value,
}

impl ApplySummary {
    /// Parses the line `nftpol apply --json` prints.
    pub fn parse(node: &str, stdout: &str) -> Result<ApplySummary, ApplyError> {
        let bad = |reason: String| ApplyError::Summary {
            node: node.to_string(),
            stdout: stdout.to_string(),
            reason,
        };
        let raw: Value = serde_json::from_str(stdout.trim()).map_err(|e| bad(e.to_string()))?;
        let count = |key: &str| {
            raw[key]
                .as_u64()
                .ok_or_else(|| bad(format!("no count {key}")))
        };
        let flag = |key: &str| {
            raw[key]
                .as_bool()
                .ok_or_else(|| bad(format!("no flag {key}")))
        };
        Ok(ApplySummary {
            node: node.to_string(),
            changed: flag("changed")?,
            replaced: flag("replaced")?,
            chains_added: count("chains_added")?,
            chains_refilled: count("chains_refilled")?,
            chains_deleted: count("chains_deleted")?,
            sets_added: count("sets_added")?,
            sets_deleted: count("sets_deleted")?,
            elements_added: count("elements_added")?,
            elements_deleted: count("elements_deleted")?,
            rules_added: count("rules_added")?,
            messages: count("messages")?,
            bytes: count("bytes")?,
            elapsed_ms: raw["elapsed_ms"].as_f64().unwrap_or_default(),
            raw: raw.clone(),
        })
    }

    /// `(chains_added, chains_refilled, chains_deleted, elements_added, elements_deleted,
    /// rules_added)`: the shape of a delta, for compact assertions.
    pub fn delta(&self) -> (u64, u64, u64, u64, u64, u64) {
        (
            self.chains_added,
            self.chains_refilled,
            self.chains_deleted,
            self.elements_added,
            self.elements_deleted,
            self.rules_added,
        )
    }
}

/// The built `nftpol` binary.
#[derive(Debug, Clone)]
pub struct Nftpol {
    pub bin: PathBuf,
}

impl Nftpol {
    /// Finds the binary ([`workspace_binary`]: `NFTPOL_BIN` or next to the test executable).
    pub fn locate() -> Result<Nftpol, ApplyError> {
        Ok(Nftpol {
            bin: workspace_binary("nftpol")?,
        })
    }

    /// The command `nftpol apply --node <node> -f <input> --json` inside the node.
    pub fn apply_command(&self, node: &Node, input: &Path) -> Command {
        let mut c = node.netns.command(&self.bin);
        c.args(["apply", "--node", &node.name, "-f"])
            .arg(input)
            .arg("--json");
        c
    }

    /// Runs `apply` in the node and returns what it printed, whatever the exit status.
    pub fn apply_output(&self, node: &Node, input: &Path) -> Result<Output, ApplyError> {
        cmd::run(&mut self.apply_command(node, input), None, APPLY_TIMEOUT).map_err(|source| {
            ApplyError::Run {
                node: node.name.clone(),
                source,
            }
        })
    }

    /// Runs `apply` in the node; a failure is an error carrying its output.
    pub fn apply(&self, node: &Node, input: &Path) -> Result<ApplySummary, ApplyError> {
        let out = self.apply_output(node, input)?;
        if !out.success() {
            return Err(ApplyError::Failed {
                node: node.name.clone(),
                output: Box::new(out),
            });
        }
        ApplySummary::parse(&node.name, &out.stdout)
    }

    /// Runs `apply` in every node of the cluster at once; summaries in node order.
    pub fn apply_all(
        &self,
        cluster: &Cluster,
        input: &Path,
    ) -> Result<Vec<ApplySummary>, ApplyError> {
        std::thread::scope(|s| {
            let handles: Vec<_> = cluster
                .nodes()
                .iter()
                .map(|node| s.spawn(move || self.apply(node, input)))
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(r) => r,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        })
    }
}

/// `nft list table inet nftpol` in a node; `None` when the table does not exist.
pub fn list_table(node: &Node) -> Result<Option<String>, ApplyError> {
    let out = node.netns.exec("nft", ["list", "table", "inet", TABLE])?;
    Ok(out.success().then_some(out.stdout))
}

/// A directory of input files under the cluster's state directory (removed with the cluster).
#[derive(Debug, Clone)]
pub struct InputDir {
    path: PathBuf,
}

impl InputDir {
    /// Creates (or empties) `<cluster state>/input/<name>`.
    pub fn new(cluster: &Cluster, name: &str) -> Result<InputDir, ApplyError> {
        let path = cluster.state_dir().join("input").join(name);
        if path.exists() {
            fs::remove_dir_all(&path).map_err(|source| ApplyError::Io {
                what: "emptying",
                path: path.clone(),
                source,
            })?;
        }
        fs::create_dir_all(&path).map_err(|source| ApplyError::Io {
            what: "creating",
            path: path.clone(),
            source,
        })?;
        Ok(InputDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes (replaces) one file; returns its path.
    pub fn write(&self, file: &str, text: &str) -> Result<PathBuf, ApplyError> {
        let path = self.path.join(file);
        fs::write(&path, text).map_err(|source| ApplyError::Io {
            what: "writing",
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Writes a JSON value (pretty) as one file.
    pub fn write_json(&self, file: &str, value: &Value) -> Result<PathBuf, ApplyError> {
        let text = serde_json::to_string_pretty(value).map_err(|e| ApplyError::Io {
            what: "serialising",
            path: self.path.join(file),
            source: std::io::Error::other(e),
        })?;
        self.write(file, &text)
    }

    /// Removes one file (missing is fine).
    pub fn remove(&self, file: &str) -> Result<(), ApplyError> {
        let path = self.path.join(file);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ApplyError::Io {
                what: "removing",
                path,
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

/// Edits of a `v1 List` from [`Cluster::kube_objects`].
pub mod objects {
    use super::*;

    fn items_mut(list: &mut Value) -> impl Iterator<Item = &mut Value> {
        list["items"].as_array_mut().into_iter().flatten()
    }

    /// Sets (or with `None` removes) a label of the Pod `namespace/name`; false when there is
    /// no such pod.
    pub fn set_pod_label(
        list: &mut Value,
        namespace: &str,
        name: &str,
        key: &str,
        value: Option<&str>,
    ) -> bool {
        for item in items_mut(list) {
            if item["kind"] == "Pod"
                && item["metadata"]["namespace"] == namespace
                && item["metadata"]["name"] == name
            {
                let labels = &mut item["metadata"]["labels"];
                if !labels.is_object() {
                    *labels = json!({});
                }
                if let Some(map) = labels.as_object_mut() {
                    match value {
                        Some(v) => {
                            map.insert(key.to_string(), json!(v));
                        }
                        None => {
                            map.remove(key);
                        }
                    }
                }
                return true;
            }
        }
        false
    }

    /// Adds a running `hostNetwork: true` Pod on `node`: its IPs are the node's addresses, as
    /// the kubelet reports them. The harness has no such pods of its own (they would be the
    /// node's namespace); servers started in the node namespace stand in for its containers.
    pub fn add_host_network_pod(
        list: &mut Value,
        node: &Node,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) {
        let ips: Vec<Value> = node
            .ips()
            .iter()
            .map(|ip| json!({ "ip": ip.to_string() }))
            .collect();
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "namespace": namespace,
                "name": name,
                "uid": format!("00000000-0000-4000-8000-{:012x}", node.index + 1),
                "labels": labels,
            },
            "spec": {
                "nodeName": node.name,
                "hostNetwork": true,
                "containers": [{ "name": "main", "image": "none" }],
            },
            "status": {
                "phase": "Running",
                "hostIP": node.ipv4.to_string(),
                "podIP": node.ipv4.to_string(),
                "podIPs": ips,
            },
        });
        if let Some(items) = list["items"].as_array_mut() {
            items.push(pod);
        }
    }
}
