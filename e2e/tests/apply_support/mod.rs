//! The fixture shared by the kernel tests of `nftpol apply` (`apply_*.rs`): a small dual-stack
//! cluster with a fixed, documented shape, and helpers to apply policies written as Kubernetes
//! YAML and to check connectivity matrices against expectations written by hand.
//!
//! # The cluster
//!
//! Two nodes, three namespaces `x`, `y`, `z` with three pods `a`, `b`, `c` each, dual-stack,
//! and two external hosts on the node network. Pod `<ns>/<p>` runs on node
//! `(index(ns) + index(p)) % 2`:
//!
//! | pod | node | labels (besides `pod: <p>`) | named container ports |
//! |---|---|---|---|
//! | x/a | node-0 | tier: web | dns UDP 53 |
//! | x/b | node-1 | tier: db  | - |
//! | x/c | node-0 | -         | - |
//! | y/a | node-1 | -         | dns UDP 53 |
//! | y/b | node-0 | tier: web | dns UDP 5353 |
//! | y/c | node-1 | tier: db  | dns TCP 53 |
//! | z/a | node-0 | tier: db  | web TCP 80 |
//! | z/b | node-1 | -         | web TCP 81 |
//! | z/c | node-0 | tier: web | - |
//!
//! Namespace labels (besides `kubernetes.io/metadata.name`): `x` none, `y` `team: blue`, `z`
//! `team: red`. Hosts: `h0` 10.0.0.200 / fd00::200 and `h1` 10.0.0.201 / fd00::201 (both in the
//! nodes' 10.0.0.0/24 and fd00::/64). Nodes: `node-0` 10.0.0.1 / fd00::1, `node-1` 10.0.0.2 /
//! fd00::2. Every pod, host and node serves TCP 80, 81, 53, 999-1003 and UDP 53, 1000, 5353
//! (echo). So a refused probe can only mean a port is closed, and a
//! blocked one that something dropped the packets.

#![allow(dead_code)] // each test file uses part of it

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nftpol_e2e::apply::{ApplySummary, InputDir, Nftpol};
use nftpol_e2e::{Cell, Cluster, Family, Host, Matrix, MatrixResult, Outcome, Pod, PodSpec, Proto};
use serde_json::Value;

/// Probe timeout: every expected-blocked cell costs this much (in parallel).
pub const TIMEOUT: Duration = Duration::from_secs(1);

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const POD_NAMES: [&str; 3] = ["a", "b", "c"];

/// TCP ports every pod, host and node serves.
pub const TCP_PORTS: [u16; 8] = [80, 81, 53, 999, 1000, 1001, 1002, 1003];
/// UDP ports every pod, host and node serves.
pub const UDP_PORTS: [u16; 3] = [53, 1000, 5353];

pub const WEB: (Proto, u16) = (Proto::Tcp, 80);
pub const DNS: (Proto, u16) = (Proto::Udp, 53);

/// The node a pod runs on (see the table in the module docs).
pub fn node_of(key: &str) -> Option<usize> {
    let (ns, p) = key.split_once('/')?;
    let n = NAMESPACES.iter().position(|x| *x == ns)?;
    let k = POD_NAMES.iter().position(|x| *x == p)?;
    Some((n + k) % 2)
}

/// The `tier` label of a fixture pod.
pub fn tier(key: &str) -> Option<&'static str> {
    match key {
        "x/a" | "y/b" | "z/c" => Some("web"),
        "x/b" | "y/c" | "z/a" => Some("db"),
        _ => None,
    }
}

/// The `team` label of a fixture namespace.
pub fn team(ns: &str) -> Option<&'static str> {
    match ns {
        "y" => Some("blue"),
        "z" => Some("red"),
        _ => None,
    }
}

/// Named container ports of a fixture pod.
pub fn named_ports(key: &str) -> Vec<(&'static str, Proto, u16)> {
    match key {
        "x/a" | "y/a" => vec![("dns", Proto::Udp, 53)],
        "y/b" => vec![("dns", Proto::Udp, 5353)],
        "y/c" => vec![("dns", Proto::Tcp, 53)],
        "z/a" => vec![("web", Proto::Tcp, 80)],
        "z/b" => vec![("web", Proto::Tcp, 81)],
        _ => Vec::new(),
    }
}

/// The namespace of a row/column label (`x/a` -> `x`); nodes and hosts have none.
pub fn ns(key: &str) -> Option<&str> {
    key.split_once('/').map(|(n, _)| n)
}

/// Whether a label is a fixture pod.
pub fn is_pod(key: &str) -> bool {
    node_of(key).is_some()
}

/// Node index of a node label (`node-1` -> 1).
pub fn node_index(label: &str) -> Option<usize> {
    label.strip_prefix("node-")?.parse().ok()
}

/// The fixture: cluster, pods, hosts, the binary, and input directories.
pub struct Fixture {
    pub cluster: Cluster,
    pub pods: Vec<Pod>,
    pub hosts: Vec<Host>,
    pub nftpol: Nftpol,
    inputs: AtomicUsize,
}

impl Fixture {
    /// Builds the cluster described in the module docs. `prefix` names the test's namespaces.
    pub fn new(prefix: &str) -> Fixture {
        nftpol_e2e::init_logging();
        let nftpol = Nftpol::locate().unwrap_or_else(|e| panic!("{e}"));
        let cluster = Cluster::builder(prefix)
            .nodes(2)
            .dual_stack(true)
            .build()
            .unwrap();
        let mut specs = Vec::new();
        for ns in NAMESPACES {
            if let Some(team) = team(ns) {
                cluster.set_namespace_labels(ns, [("team", team)]);
            }
            for p in POD_NAMES {
                let key = format!("{ns}/{p}");
                let mut spec = PodSpec::new(ns, p)
                    .on(node_of(&key).unwrap())
                    .label("pod", p);
                if let Some(t) = tier(&key) {
                    spec = spec.label("tier", t);
                }
                for (name, proto, port) in named_ports(&key) {
                    spec = spec.port(name, proto, port);
                }
                specs.push(spec);
            }
        }
        let pods = cluster.add_pods(specs).unwrap();
        let hosts: Vec<Host> = ["h0", "h1"]
            .iter()
            .map(|h| cluster.add_host(h).unwrap())
            .collect();
        for netns in pods
            .iter()
            .map(|p| &p.netns)
            .chain(hosts.iter().map(|h| &h.netns))
            .chain(cluster.nodes().iter().map(|n| &n.netns))
        {
            for port in TCP_PORTS {
                netns.serve(Proto::Tcp, port).unwrap();
            }
            for port in UDP_PORTS {
                netns.serve(Proto::Udp, port).unwrap();
            }
        }
        Fixture {
            cluster,
            pods,
            hosts,
            nftpol,
            inputs: AtomicUsize::new(0),
        }
    }

    /// The pod `ns/name`.
    pub fn pod(&self, key: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.key() == key)
            .unwrap_or_else(|| panic!("no pod {key}"))
    }

    /// The cluster snapshot (`kube_objects`) as JSON.
    pub fn objects(&self) -> Value {
        self.cluster.kube_objects()
    }

    /// A fresh input directory holding `objects` as `cluster.json` and `policies` (YAML) as
    /// `policies.yaml`.
    pub fn input(&self, objects: &Value, policies: &str) -> InputDir {
        let n = self.inputs.fetch_add(1, Ordering::Relaxed);
        let dir = InputDir::new(&self.cluster, &format!("in{n}")).unwrap();
        dir.write_json("cluster.json", objects).unwrap();
        dir.write("policies.yaml", policies).unwrap();
        dir
    }

    /// Writes the snapshot and `policies`, runs `nftpol apply` on both nodes and returns the
    /// summaries (node order).
    pub fn apply(&self, policies: &str) -> Vec<ApplySummary> {
        self.apply_objects(&self.objects(), policies)
    }

    /// Like [`Fixture::apply`] with an edited snapshot.
    pub fn apply_objects(&self, objects: &Value, policies: &str) -> Vec<ApplySummary> {
        let dir = self.input(objects, policies);
        self.nftpol
            .apply_all(&self.cluster, dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Rows: every pod, both nodes, both hosts. Columns: every pod address, IPv4 then IPv6.
    pub fn full_matrix(&self) -> Matrix {
        self.all_rows()
            .pod_cols(&self.pods, Family::V4)
            .pod_cols(&self.pods, Family::V6)
    }

    /// Matrices from the rows of `rows` to both addresses of every node and host: the `tcp`
    /// ports to nodes and hosts, the `udp` ports to hosts only. (The harness's UDP echo server
    /// answers from the address routing picks; a node answering one of its own pods picks its
    /// bridge address, which the pod's connected socket ignores, so UDP to a node's address
    /// cannot be probed from its own pods.) Column labels are `node-0`, `h0`, ...
    pub fn outside(&self, rows: Matrix, tcp: &[u16], udp: &[u16]) -> Vec<Matrix> {
        let mut to_all = rows.clone();
        for node in self.cluster.nodes() {
            for ip in node.ips() {
                to_all = to_all.col(node.name.clone(), ip);
            }
        }
        let mut to_hosts = rows;
        for host in &self.hosts {
            for family in [Family::V4, Family::V6] {
                if let Some(ip) = host.ip(family) {
                    to_all = to_all.col(host.name.clone(), ip);
                    to_hosts = to_hosts.col(host.name.clone(), ip);
                }
            }
        }
        let mut out = Vec::new();
        if !tcp.is_empty() {
            out.push(tcp.iter().fold(to_all, |m, p| m.case(Proto::Tcp, *p)));
        }
        if !udp.is_empty() {
            out.push(udp.iter().fold(to_hosts, |m, p| m.case(Proto::Udp, *p)));
        }
        out
    }

    /// Every pod, both nodes and both hosts as rows, no columns yet.
    pub fn all_rows(&self) -> Matrix {
        Matrix::new(TIMEOUT)
            .rows(&self.pods)
            .rows(self.cluster.nodes())
            .rows(&self.hosts)
    }
}

/// Runs matrices concurrently (each is a few hundred probes that mostly wait).
pub fn run_all(matrices: Vec<Matrix>) -> Vec<MatrixResult> {
    std::thread::scope(|s| {
        let handles: Vec<_> = matrices.iter().map(|m| s.spawn(move || m.run())).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// [`check`] of every result, named `name` and its index.
#[track_caller]
pub fn check_all(name: &str, results: &[MatrixResult], expected: impl Fn(&Cell) -> Outcome) {
    for (i, r) in results.iter().enumerate() {
        check(&format!("{name} [{i}]"), r, &expected);
    }
}

/// Asserts `result` against `expected` and that every blocked cell was a silent drop: the
/// probe waited out its whole timeout (no reset, no ICMP error came back early).
#[track_caller]
pub fn check(name: &str, result: &MatrixResult, expected: impl Fn(&Cell) -> Outcome) {
    if let Err(report) = result.check(&expected) {
        panic!("{name}:\n{report}");
    }
    assert_silent_drops(name, result);
    eprintln!(
        "{name}: {} cells as expected in {:?}",
        result.cells().count(),
        result.elapsed
    );
}

/// Every blocked cell took the full timeout and failed by a timeout: the packets were dropped
/// without an answer (never a reset, a port unreachable or any other ICMP error).
#[track_caller]
pub fn assert_silent_drops(name: &str, result: &MatrixResult) {
    let mut bad = Vec::new();
    for (cell, r) in result.cells() {
        if r.outcome != Outcome::Blocked {
            continue;
        }
        let detail = r.detail.as_deref().unwrap_or("");
        if r.elapsed < TIMEOUT.mul_f64(0.95) || !is_timeout(detail) {
            bad.push(format!(
                "  {} -> {} ({}) {}/{}: blocked after {:?}: {detail}",
                cell.from, cell.to, cell.to_ip, cell.proto, cell.port, r.elapsed
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{name}: blocked cells that were not silent drops (answered early or failed otherwise):\n{}",
        bad.join("\n")
    );
}

/// Whether a blocked probe's detail says it gave up waiting: a TCP connect that timed out
/// (not one that completed and then lost its data), or a UDP/ICMP echo that never came (the
/// ICMP probe's last receive runs out as EAGAIN).
pub fn is_timeout(detail: &str) -> bool {
    (detail.starts_with("connect:") && detail.contains("timed out"))
        || (detail.starts_with("receive echo reply:") && detail.contains("(os error 11)"))
        || detail.contains("before the timeout")
}

/// Expectations in the terms of the NetworkPolicy spec, for a scenario that says, per
/// direction, which connections its policies allow.
///
/// `ingress(from, to, family, proto, port)` answers for a destination pod `to`: true when `to`
/// is not isolated for ingress or a policy allows the connection. `egress` likewise for a
/// source pod `from`. Labels are `ns/pod`, `node-i`, `h0`/`h1`. The rules the spec adds on
/// top are applied here once: a pod always reaches itself, traffic from a pod's own node is
/// always allowed into it, nodes and hosts have no policy of their own.
pub struct Spec<'a> {
    pub ingress: &'a dyn Fn(&str, &str, Family, Proto, u16) -> bool,
    pub egress: &'a dyn Fn(&str, &str, Family, Proto, u16) -> bool,
}

/// Nothing isolated.
pub fn open(_: &str, _: &str, _: Family, _: Proto, _: u16) -> bool {
    true
}

impl Spec<'_> {
    pub fn outcome(&self, c: &Cell) -> Outcome {
        let family = Family::of(c.to_ip);
        if c.from == c.to && is_pod(c.from) {
            return Outcome::Connected;
        }
        let egress_ok = !is_pod(c.from) || (self.egress)(c.from, c.to, family, c.proto, c.port);
        let from_own_node = node_index(c.from).is_some() && node_index(c.from) == node_of(c.to);
        let ingress_ok =
            !is_pod(c.to) || from_own_node || (self.ingress)(c.from, c.to, family, c.proto, c.port);
        Outcome::from(egress_ok && ingress_ok)
    }
}

/// Labels of the fixture pods in one namespace.
pub fn pods_in(namespace: &str) -> Vec<String> {
    POD_NAMES
        .iter()
        .map(|p| format!("{namespace}/{p}"))
        .collect()
}

/// Counter values of the rules of a chain in `nft list` output whose comment contains
/// `comment`: (packets, bytes) summed.
pub fn counter_of(listing: &str, comment: &str) -> (u64, u64) {
    let mut total = (0, 0);
    for line in listing.lines().filter(|l| l.contains(comment)) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for w in words.windows(2) {
            match w {
                ["packets", n] => total.0 += n.parse::<u64>().unwrap_or(0),
                ["bytes", n] => total.1 += n.parse::<u64>().unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// The address of a fixture pod in a family.
pub fn ip(fx: &Fixture, key: &str, family: Family) -> IpAddr {
    fx.pod(key).ip(family).unwrap()
}

/// Summaries by node name.
pub fn by_node(summaries: &[ApplySummary]) -> BTreeMap<String, ApplySummary> {
    summaries
        .iter()
        .map(|s| (s.node.clone(), s.clone()))
        .collect()
}
