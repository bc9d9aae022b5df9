//! A small Kubernetes-like cluster out of network namespaces: nodes, pods, external hosts.
//!
//! This is the layout flannel's host-gw backend gives a real cluster, built from namespaces
//! with the real `bridge` and `host-local` CNI plugins so that packets take the paths they
//! take on real nodes: same-node pod traffic is bridged (and reaches the node's `inet`
//! forward hook through br_netfilter), cross-node pod traffic is routed out of one node and
//! into the other (the forward hook of both), traffic from the node itself leaves through its
//! output hook. See the crate docs for the address plan.
//!
//! Everything the cluster creates is removed when it is dropped, also on panic: pods get a
//! CNI DEL (as a runtime would), then every namespace and the state directory go.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{Map, Value, json};

use crate::cni::{self, Attachment, CniError, ConfList, Runtime};
use crate::netns::{self, Netns, NetnsError};
use crate::service::{self, Service, ServiceError};
use crate::traffic::{Endpoint, Proto, Server};

/// The conflist name (`name` in every plugin's stdin, host-local's lease directory).
pub const NETWORK_NAME: &str = "nftpol-e2e";
/// The bridge the `bridge` plugin makes in every node.
pub const BRIDGE: &str = "cni0";
/// The pod side interface.
pub const POD_IFNAME: &str = "eth0";
/// The most nodes a cluster may have (the address plan has room for this many).
pub const MAX_NODES: usize = 99;
/// The most external hosts.
pub const MAX_HOSTS: usize = 50;

/// Address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

/// Address plan: underlay IPv4 of node `i`.
pub fn node_ipv4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, octet(i + 1))
}

/// Address plan: underlay IPv6 of node `i`.
pub fn node_ipv6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, segment(i + 1))
}

/// Address plan: pod subnet of node `i`, IPv4.
pub fn pod_cidr_v4(i: usize) -> Ipv4Net {
    // A /24 with a valid prefix length cannot fail.
    Ipv4Net::new(Ipv4Addr::new(10, 244, octet(i), 0), 24).unwrap_or_default()
}

/// Address plan: pod subnet of node `i`, IPv6.
pub fn pod_cidr_v6(i: usize) -> Ipv6Net {
    Ipv6Net::new(
        Ipv6Addr::new(0xfd00, 0x10, 0x244, segment(i), 0, 0, 0, 0),
        64,
    )
    .unwrap_or_default()
}

/// Address plan: underlay addresses of external host `k`.
pub fn host_ipv4(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, octet(200 + k))
}

/// Address plan: underlay IPv6 of external host `k`.
pub fn host_ipv6(k: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, segment(0x200 + k))
}

/// Address plan: the Service IPv4 range (routed to `eth0` on nodes).
pub const SERVICE_CIDR_V4: &str = "10.96.0.0/16";
/// Address plan: the Service IPv6 range (routed to `eth0` on nodes).
pub const SERVICE_CIDR_V6: &str = "fd00:10:96::/112";

/// Address plan: the `n`th Service IP (`10.96.0.n`, `fd00:10:96::n`).
pub fn service_ip(family: Family, n: u16) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(10, 96, (n >> 8) as u8, (n & 0xff) as u8)),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, n)),
    }
}

fn octet(n: usize) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

fn segment(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Errors of cluster operations.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("pod {pod}: {source}")]
    Cni {
        pod: String,
        #[source]
        source: Box<CniError>,
    },
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("{0}")]
    Invalid(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("teardown left things behind:\n  {}", .0.join("\n  "))]
    Teardown(Vec<String>),
}

type Result<T, E = ClusterError> = std::result::Result<T, E>;

/// Builds a chained plugin's configuration for a node.
pub type PluginFn = Arc<dyn Fn(&Node) -> Value + Send + Sync>;

/// Configures a [`Cluster`]; see [`Cluster::builder`].
pub struct ClusterBuilder {
    prefix: String,
    nodes: usize,
    dual_stack: bool,
    chained: Vec<PluginFn>,
    bridge_options: Map<String, Value>,
    runtime: Runtime,
}

impl ClusterBuilder {
    /// Number of nodes (default 1).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// IPv6 pod subnets and underlay addresses too (default: IPv4 only).
    pub fn dual_stack(mut self, on: bool) -> Self {
        self.dual_stack = on;
        self
    }

    /// Chains a plugin after `bridge`, the same configuration on every node.
    pub fn chain_plugin(self, conf: Value) -> Self {
        self.chain_plugin_with(move |_| conf.clone())
    }

    /// Chains a plugin after `bridge` with a configuration made per node (e.g. to point at the
    /// node's agent socket).
    pub fn chain_plugin_with(mut self, f: impl Fn(&Node) -> Value + Send + Sync + 'static) -> Self {
        self.chained.push(Arc::new(f));
        self
    }

    /// Sets a key of the `bridge` plugin's configuration (e.g. `"hairpinMode"`).
    pub fn bridge_option(mut self, key: &str, value: Value) -> Self {
        self.bridge_options.insert(key.to_string(), value);
        self
    }

    /// Puts `dir` first in `CNI_PATH` (e.g. where our plugin binary is).
    pub fn cni_path_prepend(mut self, dir: impl Into<PathBuf>) -> Self {
        self.runtime.cni_path.insert(0, dir.into());
        self
    }

    /// Extra environment for every plugin invocation.
    pub fn cni_env(mut self, key: &str, value: &str) -> Self {
        self.runtime.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Deadline for one plugin invocation (default 30 s).
    pub fn cni_timeout(mut self, timeout: Duration) -> Self {
        self.runtime.timeout = timeout;
        self
    }

    /// Creates the underlay, the nodes and their routes. Removes leftovers of a crashed
    /// earlier run with the same prefix first.
    pub fn build(self) -> Result<Cluster> {
        netns::validate_prefix(&self.prefix)?;
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(ClusterError::Invalid(format!(
                "a cluster has 1 to {MAX_NODES} nodes, not {}",
                self.nodes
            )));
        }
        netns::cleanup_stale(&self.prefix);
        let base = netns::unique_name(&self.prefix, "");
        let state_dir = Path::new(netns::STATE_ROOT).join(&base);
        fs::create_dir_all(&state_dir).map_err(|source| ClusterError::Io {
            what: "creating state directory",
            path: state_dir.clone(),
            source,
        })?;
        let mut cluster = Cluster {
            underlay: Netns::create(&format!("{base}-ul"))?,
            base,
            state_dir,
            dual_stack: self.dual_stack,
            nodes: Vec::new(),
            pods: Mutex::new(Vec::new()),
            hosts: Mutex::new(Vec::new()),
            services: Mutex::new(Vec::new()),
            namespace_labels: Mutex::new(BTreeMap::new()),
            runtime: self.runtime,
            seq: AtomicUsize::new(0),
            torn_down: AtomicBool::new(false),
        };
        // From here on, an error drops `cluster`, which removes what exists so far.
        cluster.underlay.sysctls(&[
            ("net.bridge.bridge-nf-call-iptables", "0"),
            ("net.bridge.bridge-nf-call-ip6tables", "0"),
        ])?;
        cluster
            .underlay
            .ip_batch(&["link add br0 type bridge".into(), "link set br0 up".into()])?;
        for i in 0..self.nodes {
            let node = cluster.create_node(i, self.nodes)?;
            cluster.nodes.push(node);
        }
        for node in &cluster.nodes {
            let mut plugins = vec![bridge_conf(node, cluster.dual_stack, &self.bridge_options)];
            plugins.extend(self.chained.iter().map(|f| f(node)));
            node.set_conflist(ConfList {
                name: NETWORK_NAME.into(),
                cni_version: cni::CNI_VERSION.into(),
                plugins,
            })?;
        }
        tracing::info!(cluster = %cluster.base, nodes = self.nodes, dual_stack = cluster.dual_stack, "cluster up");
        Ok(cluster)
    }
}

fn bridge_conf(node: &Node, dual_stack: bool, options: &Map<String, Value>) -> Value {
    let mut ranges = vec![json!([{ "subnet": node.pod_cidr_v4.to_string() }])];
    let mut routes = vec![json!({ "dst": "0.0.0.0/0" })];
    if let (Some(v6), true) = (node.pod_cidr_v6, dual_stack) {
        ranges.push(json!([{ "subnet": v6.to_string() }]));
        routes.push(json!({ "dst": "::/0" }));
    }
    let mut conf = json!({
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": true,
        "hairpinMode": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "dataDir": node.ipam_dir.display().to_string(),
            "ranges": ranges,
            "routes": routes,
        },
    });
    if let Value::Object(m) = &mut conf {
        for (k, v) in options {
            m.insert(k.clone(), v.clone());
        }
    }
    conf
}

/// A node: a namespace with a pod bridge, an underlay address and routes to the other
/// nodes' pod subnets.
pub struct Node {
    pub index: usize,
    /// The Kubernetes node name: `node-<index>`.
    pub name: String,
    pub netns: Netns,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub pod_cidr_v4: Ipv4Net,
    pub pod_cidr_v6: Option<Ipv6Net>,
    /// The node's state directory (its "/etc/cni/net.d" and host-local leases live here).
    pub state_dir: PathBuf,
    /// host-local's `dataDir`; leases are files `<ipam_dir>/nftpol-e2e/<ip>`.
    pub ipam_dir: PathBuf,
    conflist: Mutex<ConfList>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("netns", &self.netns)
            .field("ipv4", &self.ipv4)
            .finish()
    }
}

impl Node {
    /// The node's addresses (IPv4 first).
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut v = vec![IpAddr::V4(self.ipv4)];
        v.extend(self.ipv6.map(IpAddr::V6));
        v
    }

    /// The bridge's address in the pod subnet of `family` (the pods' gateway).
    pub fn gateway(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => Some(IpAddr::V4(
                u32::from(self.pod_cidr_v4.network()).wrapping_add(1).into(),
            )),
            Family::V6 => self
                .pod_cidr_v6
                .map(|n| IpAddr::V6(u128::from(n.network()).wrapping_add(1).into())),
        }
    }

    /// The conflist new pods on this node get.
    pub fn conflist(&self) -> ConfList {
        self.conflist
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `<state_dir>/net.d/10-nftpol-e2e.conflist`: the conflist as a runtime would read it.
    pub fn conflist_path(&self) -> PathBuf {
        self.state_dir.join("net.d").join("10-nftpol-e2e.conflist")
    }

    /// Replaces the conflist for pods created from now on (existing pods keep the one they
    /// were added with, for CHECK and DEL, as runtimes do) and rewrites the file.
    pub fn set_conflist(&self, conf: ConfList) -> Result<()> {
        let path = self.conflist_path();
        let io_err = |source| ClusterError::Io {
            what: "writing conflist",
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        let text = serde_json::to_string_pretty(&conf.to_json())
            .map_err(|e| io_err(std::io::Error::other(e)))?;
        fs::write(&path, text).map_err(io_err)?;
        *self.conflist.lock().unwrap_or_else(|e| e.into_inner()) = conf;
        Ok(())
    }

    /// Addresses host-local has leased on this node (one file per address).
    pub fn ipam_leases(&self) -> Vec<IpAddr> {
        let dir = self.ipam_dir.join(NETWORK_NAME);
        let mut v: Vec<IpAddr> = fs::read_dir(dir)
            .map(|it| {
                it.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Whether an interface exists in the node's namespace.
    pub fn has_link(&self, name: &str) -> bool {
        self.netns.ip(&["link", "show", "dev", name]).is_ok()
    }

    /// `nft list ruleset` of the node.
    pub fn ruleset(&self) -> Result<String> {
        Ok(self.netns.ruleset()?)
    }
}

impl Endpoint for Node {
    fn netns(&self) -> &Netns {
        &self.netns
    }
    fn label(&self) -> String {
        self.name.clone()
    }
}

/// What a pod should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    /// Index of the node it runs on.
    pub node: usize,
    pub labels: BTreeMap<String, String>,
    /// Named container ports (for named-port policies): name, protocol, port.
    pub ports: Vec<(String, Proto, u16)>,
}

impl PodSpec {
    pub fn new(namespace: &str, name: &str) -> PodSpec {
        PodSpec {
            namespace: namespace.to_string(),
            name: name.to_string(),
            node: 0,
            labels: BTreeMap::new(),
            ports: Vec::new(),
        }
    }

    /// Runs on node `index`.
    pub fn on(mut self, node: usize) -> PodSpec {
        self.node = node;
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> PodSpec {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// A named container port.
    pub fn port(mut self, name: &str, proto: Proto, port: u16) -> PodSpec {
        self.ports.push((name.to_string(), proto, port));
        self
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A running pod: its namespace, addresses and CNI attachment. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pod {
    pub spec: PodSpec,
    /// The node's Kubernetes name.
    pub node_name: String,
    pub netns: Netns,
    pub container_id: String,
    /// Pod addresses from the CNI result (IPv4 first when dual-stack).
    pub ips: Vec<IpAddr>,
    /// The host-side veth in the node namespace, from the CNI result.
    pub host_veth: String,
    /// The cached CNI ADD result.
    pub result: Value,
}

impl Pod {
    pub fn namespace(&self) -> &str {
        &self.spec.namespace
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        self.spec.key()
    }

    pub fn node(&self) -> usize {
        self.spec.node
    }

    pub fn ip(&self, family: Family) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| Family::of(*ip) == family)
    }

    pub fn ipv4(&self) -> Option<IpAddr> {
        self.ip(Family::V4)
    }

    pub fn ipv6(&self) -> Option<IpAddr> {
        self.ip(Family::V6)
    }

    /// Starts an echo server (see [`Netns::serve`]).
    pub fn serve(&self, proto: Proto, port: u16) -> Result<Arc<Server>> {
        Ok(self.netns.serve(proto, port)?)
    }

    /// Starts servers for every protocol and port given.
    pub fn serve_all(&self, services: &[(Proto, u16)]) -> Result<Vec<Arc<Server>>> {
        services
            .iter()
            .map(|(p, port)| self.serve(*p, *port))
            .collect()
    }

    fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.container_id.clone(),
            netns_path: self.netns.path().to_path_buf(),
            ifname: POD_IFNAME.to_string(),
            pod_namespace: self.spec.namespace.clone(),
            pod_name: self.spec.name.clone(),
        }
    }
}

impl Endpoint for Pod {
    fn netns(&self) -> &Netns {
        &self.netns
    }
    fn label(&self) -> String {
        self.key()
    }
}

/// A machine outside the cluster on the node network (for ipBlock tests): routes to every
/// pod subnet via the owning node.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub netns: Netns,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
}

impl Host {
    pub fn ip(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => Some(IpAddr::V4(self.ipv4)),
            Family::V6 => self.ipv6.map(IpAddr::V6),
        }
    }
}

impl Endpoint for Host {
    fn netns(&self) -> &Netns {
        &self.netns
    }
    fn label(&self) -> String {
        self.name.clone()
    }
}

struct PodState {
    pod: Pod,
    conflist: ConfList,
}

/// The cluster; see the crate docs.
pub struct Cluster {
    base: String,
    state_dir: PathBuf,
    dual_stack: bool,
    underlay: Netns,
    nodes: Vec<Node>,
    pods: Mutex<Vec<PodState>>,
    hosts: Mutex<Vec<Host>>,
    services: Mutex<Vec<Service>>,
    namespace_labels: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    runtime: Runtime,
    seq: AtomicUsize,
    torn_down: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cluster {
    /// Starts configuring a cluster whose namespaces are named `<prefix>-<pid>-<seq>-...`.
    /// Use the test's name as prefix (lowercase letters, digits, `-`).
    pub fn builder(prefix: &str) -> ClusterBuilder {
        ClusterBuilder {
            prefix: prefix.to_string(),
            nodes: 1,
            dual_stack: false,
            chained: Vec::new(),
            bridge_options: Map::new(),
            runtime: Runtime::default(),
        }
    }

    fn create_node(&self, i: usize, count: usize) -> Result<Node> {
        let name = format!("node-{i}");
        let netns = Netns::create(&format!("{}-n{i}", self.base))?;
        let state_dir = self.state_dir.join(&name);
        let node = Node {
            index: i,
            name,
            netns,
            ipv4: node_ipv4(i),
            ipv6: self.dual_stack.then(|| node_ipv6(i)),
            pod_cidr_v4: pod_cidr_v4(i),
            pod_cidr_v6: self.dual_stack.then(|| pod_cidr_v6(i)),
            ipam_dir: state_dir.join("ipam"),
            state_dir,
            conflist: Mutex::new(ConfList {
                name: NETWORK_NAME.into(),
                cni_version: cni::CNI_VERSION.into(),
                plugins: Vec::new(),
            }),
        };
        node.netns.sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.bridge.bridge-nf-call-iptables", "1"),
            ("net.bridge.bridge-nf-call-ip6tables", "1"),
        ])?;
        let mut lines = vec![
            format!(
                "link add eth0 type veth peer name n{i} netns {}",
                self.underlay.name()
            ),
            format!("addr add {}/24 dev eth0", node.ipv4),
        ];
        if let Some(v6) = node.ipv6 {
            lines.push(format!("addr add {v6}/64 dev eth0 nodad"));
        }
        lines.push("link set eth0 up".into());
        // Like a node's default route: the node's own connections to ClusterIPs need some
        // route before the output hook's DNAT picks the real one.
        lines.push(format!("route add {SERVICE_CIDR_V4} dev eth0"));
        if self.dual_stack {
            lines.push(format!("route add {SERVICE_CIDR_V6} dev eth0"));
        }
        for j in (0..count).filter(|j| *j != i) {
            lines.push(format!("route add {} via {}", pod_cidr_v4(j), node_ipv4(j)));
            if self.dual_stack {
                lines.push(format!("route add {} via {}", pod_cidr_v6(j), node_ipv6(j)));
            }
        }
        node.netns.ip_batch(&lines)?;
        self.underlay
            .ip(&["link", "set", &format!("n{i}"), "master", "br0", "up"])?;
        Ok(node)
    }

    /// The unique base of every name this cluster uses (`<prefix>-<pid>-<seq>`).
    pub fn base_name(&self) -> &str {
        &self.base
    }

    /// `/run/nftpol-e2e/<base>`: node state (conflists, leases). Removed on teardown.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn dual_stack(&self) -> bool {
        self.dual_stack
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i`.
    ///
    /// # Panics
    /// When there is no such node (a bug in the test).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// The namespace holding the underlay bridge `br0` the nodes are plugged into.
    pub fn underlay(&self) -> &Netns {
        &self.underlay
    }

    /// The CNI runtime settings (plugin path, environment, deadline).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Creates a pod as a container runtime would: a namespace, then CNI ADD of the node's
    /// conflist. When ADD fails, the runtime's cleanup follows (DEL of the whole list without
    /// a cached result, namespace removed) and the plugin's error is returned.
    pub fn add_pod(&self, spec: PodSpec) -> Result<Pod> {
        self.add_pod_prepared(spec, |_| Ok(()))
    }

    /// Like [`Cluster::add_pod`], but runs `prepare` on the pod's namespace after it is created
    /// and before CNI ADD, as a runtime starts the sandbox before its network: e.g. to start
    /// the pod's servers first, so that any moment of reachability during the ADD would show.
    /// When `prepare` fails, the namespace is removed and its error returned.
    pub fn add_pod_prepared(
        &self,
        spec: PodSpec,
        prepare: impl FnOnce(&Netns) -> Result<()>,
    ) -> Result<Pod> {
        let node = self.nodes.get(spec.node).ok_or_else(|| {
            ClusterError::Invalid(format!(
                "pod {}: no node {} (cluster has {})",
                spec.key(),
                spec.node,
                self.nodes.len()
            ))
        })?;
        if spec.namespace.is_empty() || spec.name.is_empty() {
            return Err(ClusterError::Invalid(
                "pods need a namespace and a name".into(),
            ));
        }
        if lock(&self.pods)
            .iter()
            .any(|p| p.pod.spec.key() == spec.key())
        {
            return Err(ClusterError::Invalid(format!("pod {} exists", spec.key())));
        }
        let k = self.seq.fetch_add(1, Ordering::Relaxed);
        let netns = Netns::create(&format!("{}-p{k}", self.base))?;
        if let Err(e) = prepare(&netns) {
            if let Err(del) = netns.delete() {
                tracing::warn!(pod = %spec.key(), error = %del, "cannot remove namespace of unprepared pod");
            }
            return Err(e);
        }
        let container_id = format!(
            "{:016x}{:016x}{:032x}",
            std::process::id(),
            base_seq(&self.base),
            k
        );
        let conflist = node.conflist();
        let att = Attachment {
            container_id: container_id.clone(),
            netns_path: netns.path().to_path_buf(),
            ifname: POD_IFNAME.into(),
            pod_namespace: spec.namespace.clone(),
            pod_name: spec.name.clone(),
        };
        let cni_err = |source| ClusterError::Cni {
            pod: spec.key(),
            source: Box::new(source),
        };
        let cleanup = |cached: Option<&Value>| {
            if let Err(del) = self.runtime.del(&node.netns, &conflist, &att, cached) {
                tracing::warn!(pod = %spec.key(), error = %del, "cleanup DEL after failed ADD failed");
            }
            if let Err(del) = netns.delete() {
                tracing::warn!(pod = %spec.key(), error = %del, "cannot remove namespace of failed pod");
            }
        };
        let result = match self.runtime.add(&node.netns, &conflist, &att) {
            Ok(r) => r,
            Err(e) => {
                cleanup(None);
                return Err(cni_err(e));
            }
        };
        let info = match cni::parse_result(&result, POD_IFNAME, BRIDGE) {
            Ok(info) => info,
            Err(e) => {
                cleanup(Some(&result));
                return Err(cni_err(e));
            }
        };
        let mut ips = info.ips;
        ips.sort_by_key(|ip| ip.is_ipv6());
        let pod = Pod {
            spec,
            node_name: node.name.clone(),
            netns,
            container_id,
            ips,
            host_veth: info.host_veth,
            result,
        };
        tracing::debug!(pod = %pod.key(), node = %pod.node_name, ips = ?pod.ips, veth = %pod.host_veth, "pod up");
        lock(&self.pods).push(PodState {
            pod: pod.clone(),
            conflist,
        });
        Ok(pod)
    }

    /// Creates pods concurrently (one thread per node; pods of one node in order, as the
    /// bridge plugin sets up the node's bridge on the first). Returns them in `specs` order.
    pub fn add_pods(&self, specs: impl IntoIterator<Item = PodSpec>) -> Result<Vec<Pod>> {
        let specs: Vec<PodSpec> = specs.into_iter().collect();
        let mut by_node: BTreeMap<usize, Vec<(usize, PodSpec)>> = BTreeMap::new();
        for (i, spec) in specs.into_iter().enumerate() {
            by_node.entry(spec.node).or_default().push((i, spec));
        }
        let results: Vec<(usize, Result<Pod>)> = std::thread::scope(|s| {
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
        let mut results = results;
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).collect()
    }

    /// CNI CHECK of a pod with its cached result.
    pub fn check_pod(&self, pod: &Pod) -> Result<()> {
        let conflist = lock(&self.pods)
            .iter()
            .find(|p| p.pod.container_id == pod.container_id)
            .map(|p| p.conflist.clone())
            .ok_or_else(|| ClusterError::Invalid(format!("pod {} is not running", pod.key())))?;
        let node = self.node_of(pod)?;
        self.runtime
            .check(&node.netns, &conflist, &pod.attachment(), &pod.result)
            .map_err(|source| ClusterError::Cni {
                pod: pod.key(),
                source: Box::new(source),
            })
    }

    fn node_of(&self, pod: &Pod) -> Result<&Node> {
        self.nodes
            .get(pod.spec.node)
            .ok_or_else(|| ClusterError::Invalid(format!("pod {}: no node", pod.key())))
    }

    /// Deletes a pod as a runtime would: CNI DEL (reverse order, cached result), then its
    /// namespace (stopping its servers). The namespace goes even when DEL fails; the DEL
    /// error is returned.
    pub fn delete_pod(&self, pod: &Pod) -> Result<()> {
        let state = {
            let mut pods = lock(&self.pods);
            let i = pods
                .iter()
                .position(|p| p.pod.container_id == pod.container_id)
                .ok_or_else(|| {
                    ClusterError::Invalid(format!("pod {} is not running", pod.key()))
                })?;
            pods.remove(i)
        };
        self.teardown_pod(&state)
    }

    fn teardown_pod(&self, state: &PodState) -> Result<()> {
        let pod = &state.pod;
        let node = self.node_of(pod)?;
        let del = self
            .runtime
            .del(
                &node.netns,
                &state.conflist,
                &pod.attachment(),
                Some(&pod.result),
            )
            .map_err(|source| ClusterError::Cni {
                pod: pod.key(),
                source: Box::new(source),
            });
        pod.netns.delete()?;
        tracing::debug!(pod = %pod.key(), "pod deleted");
        del
    }

    /// The running pods, in creation order.
    pub fn pods(&self) -> Vec<Pod> {
        lock(&self.pods).iter().map(|p| p.pod.clone()).collect()
    }

    /// The running pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        lock(&self.pods)
            .iter()
            .find(|p| p.pod.spec.namespace == namespace && p.pod.spec.name == name)
            .map(|p| p.pod.clone())
    }

    /// Adds an external host on the node network, with routes to every pod subnet.
    pub fn add_host(&self, name: &str) -> Result<Host> {
        let mut hosts = lock(&self.hosts);
        let k = hosts.len();
        if k >= MAX_HOSTS {
            return Err(ClusterError::Invalid(format!("at most {MAX_HOSTS} hosts")));
        }
        let netns = Netns::create(&format!("{}-h{k}", self.base))?;
        let host = Host {
            name: name.to_string(),
            netns,
            ipv4: host_ipv4(k),
            ipv6: self.dual_stack.then(|| host_ipv6(k)),
        };
        let mut lines = vec![
            format!(
                "link add eth0 type veth peer name h{k} netns {}",
                self.underlay.name()
            ),
            format!("addr add {}/24 dev eth0", host.ipv4),
        ];
        if let Some(v6) = host.ipv6 {
            lines.push(format!("addr add {v6}/64 dev eth0 nodad"));
        }
        lines.push("link set eth0 up".into());
        for node in &self.nodes {
            lines.push(format!("route add {} via {}", node.pod_cidr_v4, node.ipv4));
            if let (Some(net), Some(via)) = (node.pod_cidr_v6, node.ipv6) {
                lines.push(format!("route add {net} via {via}"));
            }
        }
        host.netns.ip_batch(&lines)?;
        self.underlay
            .ip(&["link", "set", &format!("h{k}"), "master", "br0", "up"])?;
        hosts.push(host.clone());
        Ok(host)
    }

    pub fn hosts(&self) -> Vec<Host> {
        lock(&self.hosts).clone()
    }

    /// Adds a Service and re-installs the Service table (`table inet e2e_svc`) on every node.
    pub fn add_service(&self, svc: Service) -> Result<()> {
        let mut services = lock(&self.services);
        let mut next = services.clone();
        next.push(svc);
        for node in &self.nodes {
            service::install(&node.netns, &next)?;
        }
        *services = next;
        Ok(())
    }

    pub fn services(&self) -> Vec<Service> {
        lock(&self.services).clone()
    }

    /// Sets a namespace's labels (for [`Cluster::kube_objects`]);
    /// `kubernetes.io/metadata.name` is always added.
    pub fn set_namespace_labels<'a>(
        &self,
        namespace: &str,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        lock(&self.namespace_labels).insert(
            namespace.to_string(),
            labels
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }

    pub(crate) fn namespace_labels(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        lock(&self.namespace_labels).clone()
    }

    /// Names of every namespace the cluster currently owns.
    pub fn netns_names(&self) -> Vec<String> {
        let mut v = vec![self.underlay.name().to_string()];
        v.extend(self.nodes.iter().map(|n| n.netns.name().to_string()));
        v.extend(
            lock(&self.pods)
                .iter()
                .map(|p| p.pod.netns.name().to_string()),
        );
        v.extend(lock(&self.hosts).iter().map(|h| h.netns.name().to_string()));
        v
    }

    /// A readable description of the topology: namespaces, addresses, pods, hosts, Services.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "cluster {} ({} nodes, {})",
            self.base,
            self.nodes.len(),
            if self.dual_stack {
                "dual-stack"
            } else {
                "IPv4"
            }
        );
        let _ = writeln!(s, "  underlay: netns {} (bridge br0)", self.underlay.name());
        let pods = self.pods();
        let join = |ips: &[IpAddr]| {
            ips.iter()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        for node in &self.nodes {
            let mut cidrs = node.pod_cidr_v4.to_string();
            if let Some(v6) = node.pod_cidr_v6 {
                let _ = write!(cidrs, " {v6}");
            }
            let _ = writeln!(
                s,
                "  {}: netns {}, eth0 {}, pods {cidrs} on {BRIDGE}",
                node.name,
                node.netns.name(),
                join(&node.ips()),
            );
            for pod in pods.iter().filter(|p| p.node() == node.index) {
                let _ = writeln!(
                    s,
                    "    pod {}: netns {}, {} (host veth {})",
                    pod.key(),
                    pod.netns.name(),
                    join(&pod.ips),
                    pod.host_veth
                );
            }
        }
        for host in self.hosts() {
            let mut ips = vec![IpAddr::V4(host.ipv4)];
            ips.extend(host.ipv6.map(IpAddr::V6));
            let _ = writeln!(
                s,
                "  host {}: netns {}, eth0 {}",
                host.name,
                host.netns.name(),
                join(&ips)
            );
        }
        for svc in self.services() {
            let backends = svc
                .backends
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                s,
                "  service {}: {} {} port {} -> {backends}",
                svc.name, svc.proto, svc.cluster_ip, svc.port
            );
        }
        s
    }

    /// Tears everything down and reports what could not be removed (dropping the cluster
    /// does the same but can only log).
    pub fn shutdown(self) -> Result<()> {
        let errors = self.teardown();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ClusterError::Teardown(errors))
        }
    }

    fn teardown(&self) -> Vec<String> {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return Vec::new();
        }
        let pods = std::mem::take(&mut *lock(&self.pods));
        for state in &pods {
            state.pod.netns.signal_stop_servers();
        }
        // Like add_pods: nodes in parallel, each node's pods in reverse creation order.
        let mut errors: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .nodes
                .iter()
                .map(|node| {
                    let pods = &pods;
                    s.spawn(move || {
                        pods.iter()
                            .rev()
                            .filter(|p| p.pod.node() == node.index)
                            .filter_map(|p| self.teardown_pod(p).err())
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join()
                        .unwrap_or_else(|_| vec!["pod teardown thread panicked".to_string()])
                })
                .collect()
        });
        let hosts = std::mem::take(&mut *lock(&self.hosts));
        for host in &hosts {
            if let Err(e) = host.netns.delete() {
                errors.push(e.to_string());
            }
        }
        for node in &self.nodes {
            if let Err(e) = node.netns.delete() {
                errors.push(e.to_string());
            }
        }
        if let Err(e) = self.underlay.delete() {
            errors.push(e.to_string());
        }
        match fs::remove_dir_all(&self.state_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                errors.push(format!("removing {}: {e}", self.state_dir.display()));
            }
            _ => {}
        }
        tracing::info!(cluster = %self.base, errors = errors.len(), "cluster torn down");
        errors
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for e in self.teardown() {
            tracing::warn!(cluster = %self.base, error = %e, "teardown");
        }
    }
}

/// The `<seq>` of a base name, for container ids.
fn base_seq(base: &str) -> u64 {
    base.rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Cluster>();
        shareable::<Pod>();
        shareable::<Node>();
        shareable::<Netns>();
    }

    #[test]
    fn address_plan() {
        assert_eq!(node_ipv4(0).to_string(), "10.0.0.1");
        assert_eq!(node_ipv6(1).to_string(), "fd00::2");
        assert_eq!(pod_cidr_v4(1).to_string(), "10.244.1.0/24");
        assert_eq!(pod_cidr_v6(1).to_string(), "fd00:10:244:1::/64");
        assert_eq!(host_ipv4(0).to_string(), "10.0.0.200");
        assert_eq!(service_ip(Family::V4, 10).to_string(), "10.96.0.10");
        assert_eq!(service_ip(Family::V6, 0x10).to_string(), "fd00:10:96::10");
    }
}
