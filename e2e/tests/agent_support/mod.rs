//! Shared by the end-to-end tests of the node agent (`agent_*.rs`, `e2e_*.rs`): building the
//! cluster of [`nftpol_e2e::kube_cluster`], policy objects, single probes with readable
//! failures, and figures printed in one greppable format.
//!
//! Every test asserts real traffic between network namespaces, with the agents running as
//! processes inside the nodes, learning the cluster from the test API server and asked by the
//! chained CNI plugin for every pod.

#![allow(dead_code)] // each test file uses part of it

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use nftpol_e2e::kube_cluster::{KubeCluster, KubeClusterBuilder};
use nftpol_e2e::{Endpoint, Outcome, Probe, Proto, probe_detailed};
use serde_json::{Value, json};

/// Bound on every wait for the agents (they react in milliseconds; the machine may be busy).
pub const WAIT: Duration = Duration::from_secs(20);
/// Timeout of a probe whose outcome is asserted (an expected-blocked probe costs this much).
pub const PROBE: Duration = Duration::from_secs(1);
/// Timeout of the probes that look for the moment a flow gets blocked (a connection that
/// takes longer under load would count as blocked).
pub const FAST_PROBE: Duration = Duration::from_millis(200);
/// Timeout of the probes that look for the moment a flow opens (a dropped SYN is never
/// answered; a local connection completes in well under a millisecond).
pub const CONNECT_PROBE: Duration = Duration::from_millis(20);

/// A 2-node cluster with agents, named after the test.
pub fn cluster(prefix: &str) -> KubeCluster {
    builder(prefix).build().unwrap_or_else(|e| panic!("{e}"))
}

/// The builder of [`cluster`], for tests that change something.
pub fn builder(prefix: &str) -> KubeClusterBuilder {
    nftpol_e2e::init_logging();
    KubeCluster::builder(prefix)
}

pub fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// A NetworkPolicy object.
pub fn policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "namespace": namespace, "name": name },
        "spec": spec,
    })
}

/// Every pod of `namespace` isolated for ingress, nothing allowed.
pub fn default_deny_ingress(namespace: &str) -> Value {
    policy(
        namespace,
        "default-deny-ingress",
        json!({ "podSelector": {}, "policyTypes": ["Ingress"] }),
    )
}

/// One probe; panics with the probe's detail when the outcome is not `want`.
pub fn expect(from: &(impl Endpoint + ?Sized), to: SocketAddr, proto: Proto, want: Outcome) {
    let r = probe_detailed(from.netns(), &Probe::new(proto, to.ip(), to.port(), PROBE));
    assert_eq!(
        r.outcome,
        want,
        "{} -> {proto} {to}: {:?} ({}), expected {want:?}",
        from.label(),
        r.outcome,
        r.detail.unwrap_or_default()
    );
}

/// Prints a measured figure as `FIGURE <name>: <value>`.
pub fn figure(name: &str, value: impl std::fmt::Display) {
    println!("FIGURE {name}: {value}");
}

/// Milliseconds since `t`.
pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Milliseconds from `a` to `b` (negative when `b` is earlier).
pub fn ms_between(a: Instant, b: Instant) -> f64 {
    if b >= a {
        (b - a).as_secs_f64() * 1e3
    } else {
        -((a - b).as_secs_f64() * 1e3)
    }
}

/// The lines of an `nft -a list table` that carry a handle (table, chains, sets, rules), with
/// counter values removed: equal before and after means nothing was deleted and re-created.
pub fn handles(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|l| l.contains("# handle "))
        .map(|l| {
            let mut out = Vec::new();
            let mut skip = false;
            for token in l.split_whitespace() {
                if skip {
                    skip = false;
                    continue;
                }
                if token == "packets" || token == "bytes" {
                    skip = true;
                }
                out.push(token);
            }
            out.join(" ")
        })
        .collect()
}

/// The packet count of the first `counter` in chain `chain` of an `nft list table` output.
pub fn chain_packets(listing: &str, chain: &str) -> Option<u64> {
    let mut inside = false;
    for line in listing.lines() {
        let t = line.trim();
        if t.starts_with("chain ") {
            inside = t
                .strip_prefix("chain ")
                .and_then(|r| r.split_whitespace().next())
                == Some(chain);
            continue;
        }
        if inside && let Some(rest) = t.split("counter packets ").nth(1) {
            return rest.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

#[test]
fn handle_lines_ignore_counters_and_chain_counters_are_found() {
    let a = "table inet nftpol { # handle 7\n\tchain np_x_p_ingress_0 { # handle 9\n\t\tcounter packets 3 bytes 180 accept # handle 10\n\t}\n}\n";
    let b = a.replace("packets 3 bytes 180", "packets 5 bytes 300");
    assert_eq!(handles(a), handles(&b));
    assert_eq!(handles(a).len(), 3);
    assert_ne!(handles(a), handles(&a.replace("handle 10", "handle 11")));
    assert_eq!(chain_packets(&b, "np_x_p_ingress_0"), Some(5));
    assert_eq!(chain_packets(&b, "np_other"), None);
}

/// Probes back to back until `to` answers; panics after [`WAIT`].
pub fn until_connected(
    from: &(impl Endpoint + ?Sized),
    proto: Proto,
    to: SocketAddr,
) -> nftpol_e2e::kube_cluster::Transition {
    nftpol_e2e::kube_cluster::probe_until(from, proto, to, Outcome::Connected, CONNECT_PROBE, WAIT)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Probes back to back until `to` is blocked; panics after [`WAIT`].
pub fn until_blocked(
    from: &(impl Endpoint + ?Sized),
    proto: Proto,
    to: SocketAddr,
) -> nftpol_e2e::kube_cluster::Transition {
    nftpol_e2e::kube_cluster::probe_until(from, proto, to, Outcome::Blocked, FAST_PROBE, WAIT)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `(upper, lower)` bound of a transition after `t`, formatted `"<= X ms (> Y ms)"`.
pub fn bracket(t: &nftpol_e2e::kube_cluster::Transition, since: Instant) -> String {
    match t.since(since) {
        (upper, Some(lower)) => format!("{upper:.1} (after {lower:.1})"),
        (upper, None) => format!("{upper:.1} (first probe)"),
    }
}

/// One expected cell: a probe and the outcome it must see.
pub struct Cell<'a> {
    pub from: &'a dyn Endpoint,
    pub proto: Proto,
    pub to: SocketAddr,
    /// A name for the destination in messages.
    pub what: &'a str,
    pub want: Outcome,
}

/// Shorthand for a [`Cell`].
pub fn cell<'a>(
    from: &'a dyn Endpoint,
    proto: Proto,
    to: SocketAddr,
    what: &'a str,
    want: Outcome,
) -> Cell<'a> {
    Cell {
        from,
        proto,
        to,
        what,
        want,
    }
}

/// Runs every cell's probe concurrently and panics listing every mismatch.
pub fn expect_all(title: &str, cells: &[Cell<'_>]) {
    let sources: Vec<&nftpol_e2e::Netns> = cells.iter().map(|c| c.from.netns()).collect();
    let probes: Vec<(usize, Probe)> = cells
        .iter()
        .enumerate()
        .map(|(i, c)| (i, Probe::new(c.proto, c.to.ip(), c.to.port(), PROBE)))
        .collect();
    let results = nftpol_e2e::run_probes(&sources, &probes);
    let mut report = String::new();
    let mut bad = 0;
    for (c, r) in cells.iter().zip(&results) {
        let mark = if r.outcome == c.want {
            "  "
        } else {
            bad += 1;
            "XX"
        };
        report.push_str(&format!(
            "{mark} {:<24} -> {:<28} {} {:<22} want {:<9} got {:?} {}\n",
            c.from.label(),
            c.what,
            c.proto,
            c.to.to_string(),
            format!("{:?}", c.want),
            r.outcome,
            r.detail.clone().unwrap_or_default()
        ));
    }
    println!("{title}:\n{report}");
    assert_eq!(bad, 0, "{title}: {bad} cells differ:\n{report}");
}
