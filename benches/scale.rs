//! Scale benchmark: full compile and incremental commits on generated clusters.
//! Run with `cargo bench --bench scale`.

mod synth;

use std::time::Instant;

use nftpol::core::compile::{Compiler, Config};
use synth::{LOCAL_NODE, Spec, generate};

fn main() {
    for (label, spec) in [
        (
            "medium",
            Spec {
                pods: 10_000,
                namespaces: 1_000,
                policies: 1_000,
                local_pods: 110,
            },
        ),
        (
            "large",
            Spec {
                pods: 150_000,
                namespaces: 10_000,
                policies: 10_000,
                local_pods: 110,
            },
        ),
    ] {
        let g = generate(&spec);
        let t0 = Instant::now();
        let mut c = Compiler::new(Config::new(LOCAL_NODE));
        for ns in &g.namespaces {
            c.upsert_namespace(ns.clone());
        }
        for n in &g.nodes {
            c.upsert_node(n.clone());
        }
        for p in &g.pods {
            c.upsert_pod(p.clone());
        }
        for p in &g.policies {
            c.upsert_policy(p.clone());
        }
        let t1 = Instant::now();
        let tx = c.commit();
        let t2 = Instant::now();
        println!(
            "{label}: load {:?} commit {:?} stats {:?} tx {}",
            t1 - t0,
            t2 - t1,
            c.stats(),
            tx.stats()
        );
        // Incremental: a remote pod that some local pod's policy selects as a peer flips its
        // labels, leaving and re-entering the selectors.
        let mut pod = g
            .pods
            .iter()
            .filter(|p| p.node_name.as_deref() != Some(LOCAL_NODE))
            .find(|p| {
                let mut probe = (*p).clone();
                probe.labels = p.labels.with("tier", "other").with("app", "other");
                c.upsert_pod(probe);
                let changed = !c.commit().is_empty();
                c.upsert_pod((*p).clone());
                c.commit();
                changed
            })
            .unwrap()
            .clone();
        let original = pod.labels.clone();
        let mut times = vec![];
        for i in 0..200 {
            let labels = if i % 2 == 0 {
                original.with("tier", "other").with("app", "other")
            } else {
                original.clone()
            };
            pod.labels = labels;
            let s = Instant::now();
            c.upsert_pod(pod.clone());
            let tx = c.commit();
            times.push(s.elapsed());
            if i < 2 {
                println!("  incremental tx: {}", tx.stats());
            }
        }
        times.sort();
        println!(
            "  incremental commit p50 {:?} p99 {:?}",
            times[100], times[198]
        );
    }
}
