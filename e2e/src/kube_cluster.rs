//! A Kubernetes cluster for the node agent: the harness's nodes and pods, a test API server,
//! one `nftpol agent` per node, and the nftpol CNI plugin chained after `bridge`.
//!
//! End-to-end tests must run the agent as it runs on a real node: unchanged, a process of its
//! own inside the node's network namespace, learning the cluster from an API server through
//! kube-rs watches, and asked by the CNI plugin (run by the "container runtime", i.e. the
//! harness) for every new pod. No kube-apiserver, kubelet or container runtime can run here,
//! so this module plays the parts around the agent exactly where a real cluster would:
//!
//! - **API server**: [`crate::apiserver::Server`], bound on [`API_SERVER_IP`] (an address of
//!   the underlay bridge `br0`, inside the underlay namespace), so every node reaches it over
//!   the node network like a control-plane endpoint. It holds the Node objects (`spec.podCIDRs`
//!   = the harness's pod subnets, `status.addresses` = the underlay addresses), Namespaces,
//!   Pods and NetworkPolicies. The kubeconfig the agents use lives in the cluster's state
//!   directory.
//! - **Agents**: `nftpol agent --kubeconfig <kc> --node-name node-<i> --socket
//!   <node>/agent/nftpol.sock --state-dir <node>/agent --metrics-addr 127.0.0.1:0 --log-format
//!   json` started with [`Netns::start`](crate::Netns::start) inside node `i`; the bound metrics
//!   address is read from `<state-dir>/metrics-addr` and the agent counts as up when `/readyz`
//!   answers 200 (its first full sync committed). Agents can be killed (SIGKILL), stopped
//!   (SIGTERM) and started again. Their logs are printed when a test panics.
//! - **CNI**: every node's conflist is `bridge` (+ `host-local`) followed by
//!   `{"type": "nftpol", "socket": <that node's agent socket>, "timeoutSeconds": ...}`.
//!   `CNI_PATH` starts with a directory of this cluster holding the plugin as `nftpol`: a copy
//!   of the static `nftpol-cni` binary ([`PluginBinary::Static`]) or a link to the main
//!   `nftpol` binary, which acts as the plugin when `CNI_COMMAND` is set
//!   ([`PluginBinary::Main`]).
//! - **Kubelet**: [`KubeCluster::add_pod`] creates the Pod object (node, labels, container
//!   ports, phase `Pending`, no addresses), runs the CNI ADD chain in the node, then reports
//!   `podIPs` and phase `Running` in the Pod's status. [`KubeCluster::delete_pod`] runs CNI
//!   DEL, then deletes the object. A failed ADD leaves the Pod `Pending` (a kubelet would
//!   retry) and returns the plugin's error.
//!
//! Pod operations go through this type (they touch the API server); everything else of the
//! underlying [`Cluster`] (nodes, hosts, Services, probes) is reachable through `Deref`.
//!
//! Teardown (drop, also on panic): agents get SIGTERM, the API server stops (from inside the
//! underlay namespace, where its address lives), then the cluster goes (pods get CNI DEL,
//! namespaces and state are removed). When a test panics, the topology, the API objects and
//! every agent's output (including agents killed earlier in the test) are printed.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::apiserver::{ApiError, Kind, Server, ServerError};
use crate::cluster::{Cluster, ClusterError, Node, Pod, PodSpec};
use crate::netns::{self, Netns, NetnsError};
use crate::process::Process;
use crate::traffic::{Endpoint, Outcome, Probe, Proto};
use crate::{BinaryError, workspace_binary};

/// Where the API server listens: an address of the underlay bridge, reachable from every node
/// (outside the external hosts' range `10.0.0.200..249`).
pub const API_SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 250);

/// How long an agent may take to become ready (a debug build on a loaded 2-core machine).
pub const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `inet` table the agents own.
pub const TABLE: &str = "nftpol";

/// Which binary the CNI runtime finds as the `nftpol` plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginBinary {
    /// A copy of the static `nftpol-cni` binary (what `install-cni` puts on hosts).
    Static,
    /// A link to the main `nftpol` binary, which acts as the plugin when `CNI_COMMAND` is set.
    Main,
}

/// Errors of the agent cluster.
#[derive(Debug, thiserror::Error)]
pub enum KubeClusterError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Binary(#[from] BinaryError),
    #[error("test API server: {0}")]
    Server(#[from] ServerError),
    #[error("test API server: {0}")]
    Api(#[from] ApiError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("agent on {node} exited ({status}) before it was ready; its output:\n{log}")]
    AgentExited {
        node: String,
        status: String,
        log: String,
    },
    #[error("agent on {node} not ready after {waited:?} (last answer: {last})")]
    AgentNotReady {
        node: String,
        waited: Duration,
        last: String,
    },
    #[error("agent on {node}: GET {path}: {reason}")]
    Http {
        node: String,
        path: String,
        reason: String,
    },
    #[error("no agent is running on {node}")]
    NoAgent { node: String },
    #[error("{0}")]
    Invalid(String),
}

type Result<T, E = KubeClusterError> = std::result::Result<T, E>;

/// Configures a [`KubeCluster`]; see [`KubeCluster::builder`].
#[derive(Debug, Clone)]
pub struct KubeClusterBuilder {
    prefix: String,
    nodes: usize,
    dual_stack: bool,
    plugin: PluginBinary,
    plugin_timeout: Duration,
    agent_args: Vec<String>,
    start_agents: bool,
}

impl KubeClusterBuilder {
    /// Number of nodes (default 2).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// IPv6 too (default: IPv4 only).
    pub fn dual_stack(mut self, on: bool) -> Self {
        self.dual_stack = on;
        self
    }

    /// Which binary serves as the `nftpol` plugin (default [`PluginBinary::Static`]).
    pub fn plugin(mut self, plugin: PluginBinary) -> Self {
        self.plugin = plugin;
        self
    }

    /// The plugin's `timeoutSeconds` (default 10 s, the plugin's own default).
    pub fn plugin_timeout(mut self, timeout: Duration) -> Self {
        self.plugin_timeout = timeout;
        self
    }

    /// An extra flag for every agent (e.g. `--cni-ready-timeout=1s`).
    pub fn agent_arg(mut self, arg: &str) -> Self {
        self.agent_args.push(arg.to_string());
        self
    }

    /// Whether `build` starts the agents and waits for them (default true).
    pub fn start_agents(mut self, on: bool) -> Self {
        self.start_agents = on;
        self
    }

    /// Builds the nodes, starts the API server with the Node objects, and (unless turned off)
    /// starts every node's agent and waits until all are ready.
    pub fn build(self) -> Result<KubeCluster> {
        let agent_bin = workspace_binary("nftpol")?;
        let plugin_src = match self.plugin {
            PluginBinary::Static => workspace_binary("nftpol-cni")?,
            PluginBinary::Main => agent_bin.clone(),
        };
        netns::validate_prefix(&self.prefix)?;
        // Named like the cluster's namespaces, so that `netns::cleanup_stale` removes it after
        // a crash.
        let plugin_dir =
            Path::new(netns::STATE_ROOT).join(netns::unique_name(&self.prefix, "cni-bin"));
        let plugin_dir = DirGuard(plugin_dir);
        install_plugin(&plugin_src, &plugin_dir.0, self.plugin)?;
        let timeout = self.plugin_timeout.as_secs_f64();
        let built = Cluster::builder(&self.prefix)
            .nodes(self.nodes)
            .dual_stack(self.dual_stack)
            .cni_path_prepend(&plugin_dir.0)
            .chain_plugin_with(move |node| {
                json!({
                    "type": "nftpol",
                    "socket": agent_socket(node).display().to_string(),
                    "timeoutSeconds": timeout,
                })
            })
            .build();
        let cluster = built?;
        let api = start_api_server(&cluster)?;
        // From here on an error drops `kc`, which removes everything.
        let kc = KubeCluster {
            agents: cluster.nodes().iter().map(|_| Mutex::new(None)).collect(),
            cluster,
            api: Arc::new(api),
            agent_bin,
            agent_args: self.agent_args,
            plugin_dir,
            plugin: self.plugin,
            seq: AtomicU64::new(0),
        };
        for node in kc.cluster.nodes() {
            kc.api().apply(node_object(node))?;
        }
        kc.ensure_namespace("default")?;
        kc.ensure_namespace("kube-system")?;
        if self.start_agents {
            kc.start_agents()?;
        }
        Ok(kc)
    }
}

fn install_plugin(src: &Path, dir: &Path, plugin: PluginBinary) -> Result<()> {
    let io_err = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| KubeClusterError::Io { what, path, source }
    };
    fs::create_dir_all(dir).map_err(io_err("creating plugin directory", dir))?;
    let dst = dir.join("nftpol");
    match plugin {
        PluginBinary::Static => {
            fs::copy(src, &dst).map_err(io_err("copying the plugin to", &dst))?;
        }
        PluginBinary::Main => {
            std::os::unix::fs::symlink(src, &dst).map_err(io_err("linking the plugin at", &dst))?;
        }
    }
    Ok(())
}

fn start_api_server(cluster: &Cluster) -> Result<Server> {
    let underlay = cluster.underlay();
    underlay.ip(&["addr", "add", &format!("{API_SERVER_IP}/24"), "dev", "br0"])?;
    let listener = underlay
        .run(|| TcpListener::bind(SocketAddr::new(IpAddr::V4(API_SERVER_IP), 0)))?
        .map_err(|source| KubeClusterError::Io {
            what: "binding the API server in the underlay at",
            path: PathBuf::from(API_SERVER_IP.to_string()),
            source,
        })?;
    Ok(Server::builder()
        .listener(listener)
        .kubeconfig_dir(cluster.state_dir().join("kube"))
        .start()?)
}

/// The agent's socket on a node (also the plugin's `socket`).
pub fn agent_socket(node: &Node) -> PathBuf {
    agent_state_dir(node).join("nftpol.sock")
}

/// The agent's `--state-dir` on a node.
pub fn agent_state_dir(node: &Node) -> PathBuf {
    node.state_dir.join("agent")
}

/// The Node object for a harness node.
fn node_object(node: &Node) -> Value {
    let mut cidrs = vec![node.pod_cidr_v4.to_string()];
    cidrs.extend(node.pod_cidr_v6.map(|n| n.to_string()));
    let mut addresses: Vec<Value> = node
        .ips()
        .iter()
        .map(|ip| json!({ "type": "InternalIP", "address": ip.to_string() }))
        .collect();
    addresses.push(json!({ "type": "Hostname", "address": node.name }));
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": { "kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux" },
        },
        "spec": { "podCIDR": cidrs[0], "podCIDRs": cidrs },
        "status": { "addresses": addresses, "conditions": [{ "type": "Ready", "status": "True" }] },
    })
}

/// The harness cluster with an API server and an agent per node; see the module docs.
pub struct KubeCluster {
    // Dropped after `Drop::drop` stopped the agents and the API server: pods get CNI DEL,
    // then every namespace goes.
    cluster: Cluster,
    api: Arc<Server>,
    agent_bin: PathBuf,
    agent_args: Vec<String>,
    agents: Vec<Mutex<Option<Arc<Process>>>>,
    // After `cluster`: the pods' CNI DEL during its teardown still needs the plugin.
    plugin_dir: DirGuard,
    plugin: PluginBinary,
    seq: AtomicU64,
}

/// Removes a directory when dropped.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove directory");
        }
    }
}

impl Deref for KubeCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl KubeCluster {
    /// Starts configuring a cluster whose namespaces are named `<prefix>-<pid>-<seq>-...`.
    pub fn builder(prefix: &str) -> KubeClusterBuilder {
        KubeClusterBuilder {
            prefix: prefix.to_string(),
            nodes: 2,
            dual_stack: false,
            plugin: PluginBinary::Static,
            plugin_timeout: Duration::from_secs(10),
            agent_args: Vec::new(),
            start_agents: true,
        }
    }

    /// The underlying harness cluster.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The test API server (objects, events, request counters, faults).
    pub fn api(&self) -> &Server {
        &self.api
    }

    /// The plugin binary the runtime runs as `nftpol`.
    pub fn plugin(&self) -> PluginBinary {
        self.plugin
    }

    /// Where the plugin binary lives (first in `CNI_PATH`).
    pub fn plugin_dir(&self) -> &Path {
        &self.plugin_dir.0
    }

    fn node_at(&self, i: usize) -> Result<&Node> {
        self.cluster
            .nodes()
            .get(i)
            .ok_or_else(|| KubeClusterError::Invalid(format!("no node {i}")))
    }

    // ---- agents ----

    /// Starts every node's agent, then waits until all are ready.
    pub fn start_agents(&self) -> Result<()> {
        for i in 0..self.cluster.nodes().len() {
            self.spawn_agent(i)?;
        }
        for i in 0..self.cluster.nodes().len() {
            self.wait_agent_ready(i, AGENT_READY_TIMEOUT)?;
        }
        Ok(())
    }

    /// Starts node `i`'s agent (which must not be running) and waits until it is ready;
    /// returns how long that took.
    pub fn start_agent(&self, i: usize) -> Result<Duration> {
        let start = Instant::now();
        self.spawn_agent(i)?;
        self.wait_agent_ready(i, AGENT_READY_TIMEOUT)?;
        Ok(start.elapsed())
    }

    /// Starts node `i`'s agent without waiting for it.
    pub fn spawn_agent(&self, i: usize) -> Result<Arc<Process>> {
        let node = self.node_at(i)?;
        let mut slot = lock(&self.agents[i]);
        if slot.as_ref().is_some_and(|p| p.is_running()) {
            return Err(KubeClusterError::Invalid(format!(
                "the agent on {} is already running",
                node.name
            )));
        }
        let state_dir = agent_state_dir(node);
        fs::create_dir_all(&state_dir).map_err(|source| KubeClusterError::Io {
            what: "creating agent state directory",
            path: state_dir.clone(),
            source,
        })?;
        // A stale address of an earlier agent must not be mistaken for this one's.
        let addr_file = state_dir.join("metrics-addr");
        match fs::remove_file(&addr_file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(KubeClusterError::Io {
                    what: "removing",
                    path: addr_file,
                    source: e,
                });
            }
            _ => {}
        }
        let mut cmd = node.netns.command(&self.agent_bin);
        cmd.arg("agent")
            .arg("--kubeconfig")
            .arg(self.api().kubeconfig_path())
            .args(["--node-name", &node.name])
            .arg("--socket")
            .arg(agent_socket(node))
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "json"])
            .args(&self.agent_args);
        for var in [
            "KUBECONFIG",
            "NODE_NAME",
            "NFTPOL_TABLE",
            "NFTPOL_SOCKET",
            "NFTPOL_STATE_DIR",
            "NFTPOL_METRICS_ADDR",
            "NFTPOL_LOG_LEVEL",
            "NFTPOL_LOG_FORMAT",
            "CNI_COMMAND",
        ] {
            cmd.env_remove(var);
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let process = node
            .netns
            .start(&format!("agent {} #{n}", node.name), cmd)?;
        tracing::debug!(node = %node.name, pid = process.pid(), "agent started");
        *slot = Some(process.clone());
        Ok(process)
    }

    /// The running (or last started) agent of node `i`.
    pub fn agent(&self, i: usize) -> Option<Arc<Process>> {
        self.agents.get(i).and_then(|m| lock(m).clone())
    }

    fn running_agent(&self, i: usize) -> Result<Arc<Process>> {
        let node = self.node_at(i)?;
        self.agent(i)
            .filter(|p| p.is_running())
            .ok_or_else(|| KubeClusterError::NoAgent {
                node: node.name.clone(),
            })
    }

    /// Waits until node `i`'s agent answers `/readyz` with 200; returns how long it waited.
    pub fn wait_agent_ready(&self, i: usize, timeout: Duration) -> Result<Duration> {
        let node = self.node_at(i)?;
        let start = Instant::now();
        let mut last = String::from("no metrics address yet");
        loop {
            let process = self.agent(i).ok_or_else(|| KubeClusterError::NoAgent {
                node: node.name.clone(),
            })?;
            if !process.is_running() {
                return Err(KubeClusterError::AgentExited {
                    node: node.name.clone(),
                    status: process
                        .exit_status()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "unknown status".into()),
                    log: format!("{}{}", process.stdout(), process.stderr()),
                });
            }
            if let Some(addr) = self.metrics_addr(i) {
                match http_get(&node.netns, addr, "/readyz") {
                    Ok((200, _)) => return Ok(start.elapsed()),
                    Ok((code, body)) => last = format!("{code} {}", body.trim()),
                    Err(e) => last = e,
                }
            }
            if start.elapsed() >= timeout {
                return Err(KubeClusterError::AgentNotReady {
                    node: node.name.clone(),
                    waited: start.elapsed(),
                    last,
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to node `i`'s agent (no shutdown code runs: the socket file stays behind, the
    /// table stays in the kernel); waits until it is gone.
    pub fn kill_agent(&self, i: usize) -> Result<()> {
        let process = self.running_agent(i)?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(process.pid()).unwrap_or(i32::MAX));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).map_err(|e| {
            KubeClusterError::Io {
                what: "killing the agent of",
                path: PathBuf::from(&self.cluster.node(i).name),
                source: io::Error::from(e),
            }
        })?;
        // Reaps it (the status is SIGKILL's).
        process.stop().map_err(|source| KubeClusterError::Io {
            what: "reaping the agent of",
            path: PathBuf::from(&self.cluster.node(i).name),
            source,
        })?;
        Ok(())
    }

    /// SIGTERM to node `i`'s agent, waiting for its exit (SIGKILL after a grace period).
    pub fn stop_agent(&self, i: usize) -> Result<Option<std::process::ExitStatus>> {
        let process = self.running_agent(i)?;
        process.stop().map_err(|source| KubeClusterError::Io {
            what: "stopping the agent of",
            path: PathBuf::from(&self.cluster.node(i).name),
            source,
        })
    }

    /// What node `i`'s current agent printed (JSON log lines on stderr).
    pub fn agent_log(&self, i: usize) -> String {
        self.agent(i)
            .map(|p| format!("{}{}", p.stdout(), p.stderr()))
            .unwrap_or_default()
    }

    /// The metrics address node `i`'s agent published, once it has.
    pub fn metrics_addr(&self, i: usize) -> Option<SocketAddr> {
        let node = self.cluster.nodes().get(i)?;
        fs::read_to_string(agent_state_dir(node).join("metrics-addr"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `GET path` on node `i`'s agent (its metrics address, inside the node): status and body.
    pub fn agent_get(&self, i: usize, path: &str) -> Result<(u16, String)> {
        let node = self.node_at(i)?;
        let addr = self.metrics_addr(i).ok_or_else(|| KubeClusterError::Http {
            node: node.name.clone(),
            path: path.to_string(),
            reason: "no metrics address published".into(),
        })?;
        http_get(&node.netns, addr, path).map_err(|reason| KubeClusterError::Http {
            node: node.name.clone(),
            path: path.to_string(),
            reason,
        })
    }

    /// Node `i`'s agent's `/metrics` text.
    pub fn metrics(&self, i: usize) -> Result<Metrics> {
        let (code, body) = self.agent_get(i, "/metrics")?;
        if code != 200 {
            return Err(KubeClusterError::Http {
                node: self.cluster.node(i).name.clone(),
                path: "/metrics".into(),
                reason: format!("status {code}"),
            });
        }
        Ok(Metrics(body))
    }

    /// Waits until `pred` holds for node `i`'s metrics; returns them.
    pub fn wait_metrics(
        &self,
        i: usize,
        timeout: Duration,
        pred: impl Fn(&Metrics) -> bool,
    ) -> Result<Metrics> {
        let start = Instant::now();
        loop {
            let m = self.metrics(i);
            if let Ok(m) = &m
                && pred(m)
            {
                return Ok(m.clone());
            }
            if start.elapsed() >= timeout {
                return Err(KubeClusterError::Invalid(format!(
                    "agent on {}: metrics did not reach the expected state within {timeout:?}; last: {}",
                    self.cluster.node(i).name,
                    match m {
                        Ok(m) => m.0,
                        Err(e) => e.to_string(),
                    }
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every running agent watches `count` objects of `kind` (`pod`, `namespace`,
    /// `node`, `networkpolicy`): they have seen the API server's state of that kind.
    pub fn wait_watched(&self, kind: &str, count: usize, timeout: Duration) -> Result<()> {
        let series = format!("nftpol_watched_objects{{kind=\"{kind}\"}}");
        for i in 0..self.cluster.nodes().len() {
            if self.agent(i).is_some_and(|p| p.is_running()) {
                self.wait_metrics(i, timeout, |m| m.value(&series) == Some(count as f64))?;
            }
        }
        Ok(())
    }

    // ---- the table ----

    /// `nft list table inet nftpol` in node `i` (None when there is no such table).
    pub fn table(&self, i: usize) -> Result<Option<String>> {
        let node = self.node_at(i)?;
        let out = node.netns.exec("nft", ["list", "table", "inet", TABLE])?;
        Ok(out.success().then_some(out.stdout))
    }

    /// `nft -a list table inet nftpol` (with handles) in node `i`.
    pub fn table_with_handles(&self, i: usize) -> Result<Option<String>> {
        let node = self.node_at(i)?;
        let out = node
            .netns
            .exec("nft", ["-a", "list", "table", "inet", TABLE])?;
        Ok(out.success().then_some(out.stdout))
    }

    // ---- API objects ----

    /// Creates or replaces a Namespace with these labels (the API server adds
    /// `kubernetes.io/metadata.name`).
    pub fn create_namespace<'a>(
        &self,
        name: &str,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Value> {
        let labels: BTreeMap<&str, &str> = labels.into_iter().collect();
        Ok(self.api().apply(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": name, "labels": labels },
        }))?)
    }

    /// Creates the Namespace unless it exists.
    pub fn ensure_namespace(&self, name: &str) -> Result<()> {
        if self.api().get(Kind::Namespace, None, name).is_some() {
            return Ok(());
        }
        match self.api().create(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": name },
        })) {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates or replaces any object (a NetworkPolicy, a Namespace, ...) on the API server,
    /// as `kubectl apply` would, without validation.
    pub fn apply(&self, object: Value) -> Result<Value> {
        Ok(self.api().apply(object)?)
    }

    /// Deletes a NetworkPolicy.
    pub fn delete_policy(&self, namespace: &str, name: &str) -> Result<Value> {
        Ok(self
            .api()
            .delete(Kind::NetworkPolicy, Some(namespace), name)?)
    }

    // ---- pods (the kubelet's part) ----

    /// Creates a pod like the kubelet: the Pod object (`Pending`), CNI ADD, then the status
    /// (`podIPs`, `Running`). The namespace is created if missing.
    pub fn add_pod(&self, spec: PodSpec) -> Result<Pod> {
        self.add_pod_prepared(spec, |_| Ok(()))
    }

    /// Like [`KubeCluster::add_pod`], running `prepare` in the pod's namespace before its CNI
    /// ADD (e.g. to start its servers first).
    pub fn add_pod_prepared(
        &self,
        spec: PodSpec,
        prepare: impl FnOnce(&Netns) -> Result<(), ClusterError>,
    ) -> Result<Pod> {
        let node = self.node_at(spec.node)?;
        self.ensure_namespace(&spec.namespace)?;
        let uid = self.next_uid();
        match self.api().create(pod_object(&spec, node, &uid)) {
            Ok(_) => {}
            // A retry after a failed ADD: the kubelet keeps the Pending object.
            Err(ApiError::AlreadyExists { .. })
                if self
                    .api()
                    .get(Kind::Pod, Some(&spec.namespace), &spec.name)
                    .is_some_and(|p| {
                        p["status"]["phase"] == "Pending" && p["spec"]["nodeName"] == node.name
                    }) => {}
            Err(e) => return Err(e.into()),
        }
        let pod = self.cluster.add_pod_prepared(spec, prepare)?;
        self.report_pod_status(&pod)?;
        Ok(pod)
    }

    /// Creates pods concurrently (one thread per node, each node's pods in order), as
    /// [`KubeCluster::add_pod`] does. Results in `specs` order.
    pub fn add_pods(&self, specs: impl IntoIterator<Item = PodSpec>) -> Result<Vec<Pod>> {
        let mut by_node: BTreeMap<usize, Vec<(usize, PodSpec)>> = BTreeMap::new();
        for (i, spec) in specs.into_iter().enumerate() {
            by_node.entry(spec.node).or_default().push((i, spec));
        }
        let mut results: Vec<(usize, Result<Pod>)> = thread::scope(|s| {
            let handles: Vec<_> = by_node
                .into_values()
                .map(|group| {
                    s.spawn(move || {
                        group
                            .into_iter()
                            .map(|(i, spec)| (i, self.add_pod(spec)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| match h.join() {
                    Ok(v) => v,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        });
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).collect()
    }

    /// The kubelet's status report after a successful ADD.
    fn report_pod_status(&self, pod: &Pod) -> Result<()> {
        let ips: Vec<Value> = pod
            .ips
            .iter()
            .map(|ip| json!({ "ip": ip.to_string() }))
            .collect();
        let host_ip = self.cluster.node(pod.node()).ipv4.to_string();
        self.api().patch(
            Kind::Pod,
            Some(pod.namespace()),
            pod.name(),
            json!({
                "status": {
                    "phase": "Running",
                    "hostIP": host_ip,
                    "hostIPs": [{ "ip": host_ip }],
                    "podIP": pod.ips.first().map(|ip| ip.to_string()),
                    "podIPs": ips,
                    "conditions": [{ "type": "Ready", "status": "True" }],
                }
            }),
        )?;
        Ok(())
    }

    /// Deletes a pod like the kubelet: CNI DEL (then its namespace goes), then the object.
    /// Returns the DEL error, if any, after deleting the object.
    pub fn delete_pod(&self, pod: &Pod) -> Result<()> {
        let del = self.cluster.delete_pod(pod);
        match self
            .api()
            .delete(Kind::Pod, Some(pod.namespace()), pod.name())
        {
            Ok(_) | Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(del?)
    }

    /// Deletes a Pod object that never got a network (after a failed ADD).
    pub fn delete_pod_object(&self, namespace: &str, name: &str) -> Result<()> {
        self.api().delete(Kind::Pod, Some(namespace), name)?;
        Ok(())
    }

    fn next_uid(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!(
            "{:08x}-0000-4000-8000-{:012x}",
            std::process::id(),
            n & 0xffff_ffff_ffff
        )
    }

    /// Everything useful for a failed test: topology, API objects, node tables.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut s = self.cluster.describe();
        {
            let api = &self.api;
            let _ = writeln!(
                s,
                "  API server {} (kubeconfig {})",
                api.url(),
                api.kubeconfig_path().display()
            );
            for kind in [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy] {
                for (ns, name, rv) in api.keys(kind) {
                    let _ = writeln!(s, "    {kind:?} {ns}/{name} rv {rv}");
                }
            }
            for e in api.events() {
                let _ = writeln!(
                    s,
                    "    Event {}: {}",
                    e.pointer("/reason").and_then(Value::as_str).unwrap_or("?"),
                    e.pointer("/note")
                        .or_else(|| e.pointer("/message"))
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                );
            }
        }
        for (i, node) in self.cluster.nodes().iter().enumerate() {
            let table = self
                .table(i)
                .ok()
                .flatten()
                .unwrap_or_else(|| "(no table)".into());
            let _ = writeln!(s, "  --- {} table inet {TABLE}\n{table}", node.name);
        }
        s
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("=== kube cluster at failure ===\n{}", self.describe());
        }
        // Agents first (SIGTERM, in parallel): they leave their tables and remove their
        // sockets, so the pods' CNI DEL during the cluster's teardown returns at once.
        thread::scope(|s| {
            for slot in &self.agents {
                if let Some(p) = lock(slot).clone() {
                    s.spawn(move || {
                        if let Err(e) = p.stop() {
                            tracing::warn!(agent = p.label(), error = %e, "cannot stop agent");
                        }
                    });
                }
            }
        });
        // The API server's shutdown wakes its accept loop by connecting to its own address,
        // which only exists inside the underlay: never let that happen from the host's
        // namespace (if entering the underlay fails, the server is leaked instead).
        let api = self.api.clone();
        if let Err(e) = self.cluster.underlay().run(|| api.shutdown()) {
            tracing::warn!(error = %e, "cannot stop the API server inside the underlay; leaving its threads");
            std::mem::forget(api);
        }
    }
}

/// The Pod object as the API server holds it before the kubelet started the sandbox.
fn pod_object(spec: &PodSpec, node: &Node, uid: &str) -> Value {
    let ports: Vec<Value> = spec
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
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": spec.namespace,
            "name": spec.name,
            "uid": uid,
            "labels": spec.labels,
        },
        "spec": {
            "nodeName": node.name,
            "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10", "ports": ports }],
        },
        "status": { "phase": "Pending", "hostIP": node.ipv4.to_string() },
    })
}

/// A `GET` over HTTP/1.0 from inside `netns` (so the answer is never chunked): status and
/// body.
fn http_get(
    netns: &Netns,
    addr: SocketAddr,
    path: &str,
) -> std::result::Result<(u16, String), String> {
    let path = path.to_string();
    netns
        .run(move || -> io::Result<Vec<u8>> {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.set_write_timeout(Some(Duration::from_secs(5)))?;
            write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
            let mut buf = Vec::new();
            stream.read_to_end(&mut buf)?;
            Ok(buf)
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{addr}: {e}"))
        .and_then(|buf| {
            let text = String::from_utf8_lossy(&buf).into_owned();
            let (head, body) = text
                .split_once("\r\n\r\n")
                .ok_or_else(|| format!("{addr}: no HTTP header in {text:?}"))?;
            let code = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("{addr}: bad status line in {head:?}"))?;
            Ok((code, body.to_string()))
        })
}

/// An agent's `/metrics` (Prometheus text format).
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics(pub String);

impl Metrics {
    /// The value of one series, written exactly as exposed: `name` or
    /// `name{label="value",...}` (labels in the agent's order).
    pub fn value(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
    }

    /// The sum over every series of a metric (`name` without labels).
    pub fn total(&self, name: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|line| {
                let rest = line.strip_prefix(name)?;
                let value = if rest.starts_with('{') {
                    rest.rsplit_once("} ")?.1
                } else {
                    rest.strip_prefix(' ')?
                };
                value.trim().parse::<f64>().ok()
            })
            .sum()
    }
}

/// The IPv4 address host-local will lease next on `node` (it hands out addresses round-robin
/// from the one after the last it leased, skipping the gateway and leased ones), so that a
/// test can aim traffic at a pod before it exists.
pub fn next_pod_ipv4(node: &Node) -> Ipv4Addr {
    let net = node.pod_cidr_v4;
    let dir = node.ipam_dir.join(crate::cluster::NETWORK_NAME);
    let first = u32::from(net.network()) + 2; // .1 is the gateway
    let last = u32::from(net.broadcast()) - 1;
    let last_reserved: Option<u32> = fs::read_to_string(dir.join("last_reserved_ip.0"))
        .ok()
        .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
        .map(u32::from)
        .filter(|ip| (first..=last).contains(ip));
    let leased = node.ipam_leases();
    let mut candidate = last_reserved.map_or(first, |ip| if ip >= last { first } else { ip + 1 });
    for _ in first..=last {
        let ip = Ipv4Addr::from(candidate);
        if !leased.contains(&IpAddr::V4(ip)) {
            return ip;
        }
        candidate = if candidate >= last {
            first
        } else {
            candidate + 1
        };
    }
    Ipv4Addr::from(first)
}

/// One probe of a [`ProbeLoop`].
#[derive(Debug, Clone)]
pub struct Attempt {
    pub start: Instant,
    pub end: Instant,
    pub outcome: Outcome,
    pub detail: Option<String>,
}

/// A background prober: probes one target back to back (with a pause between probes) and
/// records every attempt, so a test can show that a flow kept working (or stayed blocked)
/// throughout a window, e.g. an agent restart.
pub struct ProbeLoop {
    label: String,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<Vec<Attempt>>>,
}

/// What a [`ProbeLoop`] saw.
#[derive(Debug, Clone)]
pub struct ProbeLog {
    pub label: String,
    pub attempts: Vec<Attempt>,
}

impl ProbeLoop {
    /// Starts probing `to` from `from` with `proto`, each probe with `timeout`, `pause`
    /// between probes.
    pub fn start(
        from: &(impl Endpoint + ?Sized),
        proto: Proto,
        to: SocketAddr,
        timeout: Duration,
        pause: Duration,
    ) -> Result<ProbeLoop, NetnsError> {
        let label = format!("{} -> {proto} {to}", from.label());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let probe = Probe {
            proto,
            to,
            source: None,
            timeout,
        };
        let handle = from.netns().spawn(&format!("probe loop {to}"), move || {
            let mut attempts = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let start = Instant::now();
                let r = probe.run_here();
                attempts.push(Attempt {
                    start,
                    end: Instant::now(),
                    outcome: r.outcome,
                    detail: r.detail,
                });
                thread::sleep(pause);
            }
            attempts
        })?;
        Ok(ProbeLoop {
            label,
            stop,
            handle: Some(handle),
        })
    }

    /// Stops after the probe in flight and returns every attempt.
    pub fn stop(mut self) -> ProbeLog {
        self.finish()
    }

    fn finish(&mut self) -> ProbeLog {
        self.stop.store(true, Ordering::SeqCst);
        let attempts = match self.handle.take().map(|h| h.join()) {
            Some(Ok(a)) => a,
            Some(Err(_)) => {
                tracing::warn!(label = %self.label, "probe loop panicked");
                Vec::new()
            }
            None => Vec::new(),
        };
        ProbeLog {
            label: self.label.clone(),
            attempts,
        }
    }
}

impl Drop for ProbeLoop {
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.finish();
        }
    }
}

impl ProbeLog {
    /// Attempts with this outcome.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.attempts
            .iter()
            .filter(|a| a.outcome == outcome)
            .count()
    }

    /// Attempts with another outcome than `outcome`.
    pub fn other_than(&self, outcome: Outcome) -> Vec<&Attempt> {
        self.attempts
            .iter()
            .filter(|a| a.outcome != outcome)
            .collect()
    }

    /// Attempts that started within `[from, to]`.
    pub fn during(&self, from: Instant, to: Instant) -> usize {
        self.attempts
            .iter()
            .filter(|a| a.start >= from && a.start <= to)
            .count()
    }

    /// One line: attempts per outcome and the time covered.
    pub fn summary(&self) -> String {
        let span = match (self.attempts.first(), self.attempts.last()) {
            (Some(a), Some(b)) => b.end.saturating_duration_since(a.start),
            _ => Duration::ZERO,
        };
        format!(
            "{}: {} attempts over {:.2} s: {} connected, {} blocked, {} refused, {} unreachable",
            self.label,
            self.attempts.len(),
            span.as_secs_f64(),
            self.count(Outcome::Connected),
            self.count(Outcome::Blocked),
            self.count(Outcome::Refused),
            self.count(Outcome::Unreachable),
        )
    }
}

/// When a flow changed: see [`probe_until`].
#[derive(Debug, Clone, Copy)]
pub struct Transition {
    /// Start of the first probe that saw the wanted outcome.
    pub first: Instant,
    /// Start of the last probe before it (which did not see it), if any.
    pub previous: Option<Instant>,
    pub probes: usize,
}

impl Transition {
    /// Time from `t` to the first probe with the wanted outcome (an upper bound of when the
    /// change took effect), and to the probe before it (a lower bound), in milliseconds.
    pub fn since(&self, t: Instant) -> (f64, Option<f64>) {
        let ms = |x: Instant| x.saturating_duration_since(t).as_secs_f64() * 1e3;
        (ms(self.first), self.previous.map(ms))
    }
}

/// Probes `to` from `from` back to back (each probe with `probe_timeout`) until one sees
/// `want`, for at most `deadline`. Err carries the last probe's outcome and detail.
pub fn probe_until(
    from: &(impl Endpoint + ?Sized),
    proto: Proto,
    to: SocketAddr,
    want: Outcome,
    probe_timeout: Duration,
    deadline: Duration,
) -> std::result::Result<Transition, String> {
    let probe = Probe {
        proto,
        to,
        source: None,
        timeout: probe_timeout,
    };
    let label = format!("{} -> {proto} {to}", from.label());
    from.netns()
        .run(|| {
            let begin = Instant::now();
            let mut previous = None;
            let mut probes = 0;
            loop {
                let start = Instant::now();
                let r = probe.run_here();
                probes += 1;
                if r.outcome == want {
                    return Ok(Transition {
                        first: start,
                        previous,
                        probes,
                    });
                }
                if begin.elapsed() >= deadline {
                    return Err(format!(
                        "{label}: still {:?} ({}) after {probes} probes in {deadline:?}, wanted {want:?}",
                        r.outcome,
                        r.detail.unwrap_or_default()
                    ));
                }
                previous = Some(start);
                // Failures that return at once (refused, unreachable) would spin.
                if r.elapsed < Duration::from_millis(5) {
                    thread::sleep(Duration::from_millis(5));
                }
            }
        })
        .map_err(|e| format!("{label}: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_series_and_summed_by_name() {
        let m = Metrics(
            "# HELP x\n\
             nftpol_cni_requests_total{op=\"add\",result=\"ok\"} 3\n\
             nftpol_cni_requests_total{op=\"del\",result=\"ok\"} 2\n\
             nftpol_cni_requests_total_other 7\n\
             nftpol_ready 1\n"
                .into(),
        );
        assert_eq!(
            m.value("nftpol_cni_requests_total{op=\"add\",result=\"ok\"}"),
            Some(3.0)
        );
        assert_eq!(m.value("nftpol_ready"), Some(1.0));
        assert_eq!(m.value("nftpol_cni_requests_total"), None);
        assert_eq!(m.total("nftpol_cni_requests_total"), 5.0);
        assert_eq!(m.total("nftpol_missing"), 0.0);
    }
}
