//! Profiling aid: builds the large generated cluster's table once (no kernel).
mod synth;
use nftpol::core::compile::{Compiler, Config};
use std::time::Instant;
fn main() {
    let g = synth::generate(&synth::Spec {
        pods: 150_000,
        namespaces: 10_000,
        policies: 10_000,
        local_pods: 110,
    });
    if let Some(path) = std::env::var_os("NFTPOL_BENCH_JSON_OUT") {
        let list = synth::to_kube_list(&g);
        std::fs::write(path, serde_json::to_vec(&list).unwrap_or_default()).unwrap_or_default();
        return;
    }
    let t = Instant::now();
    let mut c = Compiler::new(Config::new(synth::LOCAL_NODE));
    for ns in &g.namespaces {
        c.upsert_namespace(ns.clone());
    }
    for n in &g.nodes {
        c.upsert_node(n.clone());
    }
    let tc = Instant::now();
    let clones: Vec<_> = g.pods.to_vec();
    println!("clone only {:?}", tc.elapsed());
    drop(clones);
    let t1 = Instant::now();
    for p in g.pods.iter() {
        c.upsert_pod(p.clone());
    }
    let t2 = Instant::now();
    for p in &g.policies {
        c.upsert_policy(p.clone());
    }
    let t3 = Instant::now();
    c.commit();
    let t4 = Instant::now();
    println!(
        "ns+nodes {:?} pods {:?} policies {:?} commit {:?}",
        t1 - t,
        t2 - t1,
        t3 - t2,
        t4 - t3
    );
}
