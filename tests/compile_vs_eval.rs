//! The compiled tables, traced packet by packet, must agree with the reference evaluator.
//!
//! For a random cluster, every node's table is compiled; each probe is then walked through the
//! hooks it would cross on its way (egress on the source's node, ingress on the
//! destination's node, the input hook when a pod talks to its own node) and the combined
//! verdict is compared with `core::eval::verdict`, which is written straight from the spec.
//! Address plan: see `tests/common/strategy.rs`.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use common::strategy::{Probe, cluster_and_probes};
use nftpol::core::compile::{Compiler, Config};
use nftpol::core::eval::{self, Cluster, Endpoint, Reason};
use nftpol::nft::model::Table;
use nftpol::nft::trace::{TraceHook, trace};
use proptest::prelude::*;

/// Compiles the table of every node that appears in the cluster.
fn tables(c: &Cluster, inline_peer_limit: usize) -> BTreeMap<String, Table> {
    let mut nodes: Vec<String> = c.nodes.iter().map(|n| n.name.to_string()).collect();
    nodes.extend(
        c.pods
            .iter()
            .filter_map(|p| p.node_name.as_ref().map(|n| n.to_string())),
    );
    nodes.sort();
    nodes.dedup();
    nodes
        .into_iter()
        .map(|node| {
            let mut comp = Compiler::new(Config {
                inline_peer_limit,
                ..Config::new(node.as_str())
            });
            for ns in &c.namespaces {
                comp.upsert_namespace(ns.clone());
            }
            for n in &c.nodes {
                comp.upsert_node(n.clone());
            }
            for p in &c.pods {
                comp.upsert_pod(p.clone());
            }
            for p in &c.policies {
                comp.upsert_policy(p.clone());
            }
            comp.commit();
            let table = comp.table().cloned().expect("committed");
            (node, table)
        })
        .collect()
}

/// Node a packet's address lives on, if it is a pod or a node address.
fn home(c: &Cluster, ip: IpAddr) -> Option<String> {
    match c.endpoint(ip) {
        Endpoint::Pod(p) => p.node_name.as_ref().map(|n| n.to_string()),
        Endpoint::Node(n) => Some(n.name.to_string()),
        Endpoint::External => None,
    }
}

/// Walks a probe through every hook of every node it crosses; `Ok(true)` if all accept.
fn dataplane(c: &Cluster, tables: &BTreeMap<String, Table>, probe: &Probe) -> Result<bool, String> {
    let packet = probe.packet();
    let src_pod = matches!(c.endpoint(probe.src), Endpoint::Pod(_));
    let dst_is_node = matches!(c.endpoint(probe.dst), Endpoint::Node(_));
    let src_home = home(c, probe.src);
    let dst_home = home(c, probe.dst);
    let mut hops: Vec<(String, TraceHook)> = Vec::new();
    if src_pod && let Some(n) = &src_home {
        if dst_is_node && dst_home.as_ref() == Some(n) {
            hops.push((n.clone(), TraceHook::Input));
        } else {
            hops.push((n.clone(), TraceHook::Forward));
        }
    }
    if let Some(n) = &dst_home
        && !dst_is_node
        && !(src_pod && src_home.as_ref() == Some(n))
    {
        // Traffic from a node's own address leaves through its output hook, which nftpol
        // does not filter; everything else arriving for a pod is forwarded.
        if src_home.as_ref() != Some(n) || src_pod {
            hops.push((n.clone(), TraceHook::Forward));
        }
    }
    let mut log = String::new();
    for (node, hook) in hops {
        let t = trace(&tables[&node], hook, &packet).map_err(|e| format!("{node}: {e}"))?;
        log.push_str(&format!("--- {node} {hook:?}: {:?}\n{t}\n", t.verdict));
        if !t.accepted() {
            return Ok(false).inspect(|_| eprintln!("{log}"));
        }
    }
    Ok(true)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn compiled_tables_agree_with_the_reference_evaluator(
        (cluster, probes) in cluster_and_probes(20..=40),
        limit in prop_oneof![Just(256usize), Just(1usize)],
    ) {
        let tables = tables(&cluster, limit);
        for probe in &probes {
            let want = eval::verdict(&cluster, probe.src, probe.dst, probe.proto, probe.port);
            if matches!(want.reason, Reason::FamilyMismatch | Reason::FromLocalNode { .. }) {
                continue;
            }
            let got = dataplane(&cluster, &tables, probe).map_err(TestCaseError::fail)?;
            prop_assert_eq!(
                got,
                want.allowed,
                "probe {} (inline limit {}): evaluator says {}",
                probe,
                limit,
                want
            );
        }
    }
}
