//! Scale benchmark of the core and the dataplane on generated clusters (see `synth`).
//!
//! For a medium cluster (10 000 pods, 1 000 policies) and a large one (150 000 pods, 10 000
//! policies), both with 110 pods on the node under test, it prints:
//! - full render + apply: compile the snapshot into the node's table, then program it through
//!   netlink into a fresh network namespace; and `nft -f` of the same rendered text into
//!   another fresh namespace. Two ratios: the kernel step alone (netlink apply vs `nft -f`),
//!   and the whole path from objects (compile + netlink vs compile + render text + `nft -f`);
//! - incremental: a remote pod leaving and re-entering the selectors of local pods' policies,
//!   from the input change to the committed transaction (compile + netlink), p50/p99, and how
//!   much cheaper it is than the full apply;
//! - peak memory of `nftpol render` on the large cluster written as a JSON List file.
//!
//! Run as root: `cargo bench --bench scale`. Without root the kernel parts are skipped.

mod synth;

#[path = "../tests/dataplane_netns/mod.rs"]
mod netns;

use std::time::{Duration, Instant};

use nftpol::core::cluster::Pod;
use nftpol::core::compile::{Compiler, Config};
use nftpol::dataplane::{Dataplane, Netlink};
use nftpol::nft::text::render;
use synth::{Generated, LOCAL_NODE, Spec, generate};

fn compiler(g: &Generated) -> Compiler {
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
    c
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sorts the samples and returns the middle one.
fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A remote pod that some local pod's policy uses as a peer.
fn peer_pod(g: &Generated, c: &mut Compiler) -> Pod {
    let found = g
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
        });
    match found {
        Some(p) => p.clone(),
        None => panic!("no remote pod is a peer of a local pod"),
    }
}

fn main() {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("!!!! not root: kernel figures (apply, nft -f, incremental) are skipped !!!!");
    }
    let cases = [
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
    ];
    for (label, spec) in cases {
        println!(
            "== {label}: {} pods, {} namespaces, {} policies, {} local pods",
            spec.pods, spec.namespaces, spec.policies, spec.local_pods
        );
        let g = generate(&spec);

        // Full render + apply, three times; medians.
        let mut compile_t = Vec::new();
        let mut apply_t = Vec::new();
        let mut nft_t = Vec::new();
        let mut text_t = Vec::new();
        let mut stats = None;
        for _ in 0..3 {
            let t0 = Instant::now();
            let mut c = compiler(&g);
            let tx = c.commit();
            let compiled = t0.elapsed();
            compile_t.push(compiled);
            stats = Some((c.stats(), tx.stats()));
            if !root {
                continue;
            }
            let tt = Instant::now();
            let text = render(c.table().expect("committed"));
            text_t.push(tt.elapsed());
            {
                let Some(_ns) = netns::Netns::enter("scale-apply") else {
                    continue;
                };
                let t1 = Instant::now();
                let mut dp = Netlink::new().expect("netlink");
                dp.apply(&tx).expect("full apply");
                apply_t.push(t1.elapsed());
            }
            {
                let Some(ns) = netns::Netns::enter("scale-nft") else {
                    continue;
                };
                let path = std::env::temp_dir().join(format!("nftpol-scale-{label}.nft"));
                std::fs::write(&path, &text).expect("write text");
                let t2 = Instant::now();
                let out = std::process::Command::new("nft")
                    .arg("-f")
                    .arg(&path)
                    .output()
                    .expect("run nft");
                nft_t.push(t2.elapsed());
                assert!(
                    out.status.success(),
                    "nft -f failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let _ = std::fs::remove_file(&path);
                drop(ns);
            }
        }
        let (cs, ts) = stats.expect("ran");
        println!(
            "   table: {} elements, {} rules, {} chains, {} sets; {} isolated local pods, {} peer groups",
            cs.elements, cs.rules, cs.chains, cs.sets, cs.isolated_pods, cs.peer_groups
        );
        println!("   first transaction: {ts}");
        let compile_med = median(&mut compile_t);
        println!("   compile (objects -> table): {:.1} ms", ms(compile_med));
        if !apply_t.is_empty() {
            let apply_med = median(&mut apply_t);
            let nft_med = median(&mut nft_t);
            let text_med = median(&mut text_t);
            let full = compile_med + apply_med;
            let via_nft = compile_med + text_med + nft_med;
            println!(
                "   kernel step: netlink apply {:.1} ms, nft -f of the same text {:.1} ms; nft -f / netlink = {:.2}x",
                ms(apply_med),
                ms(nft_med),
                nft_med.as_secs_f64() / apply_med.as_secs_f64()
            );
            println!(
                "   from objects: compile + netlink (full render + apply) {:.1} ms; compile + text {:.1} ms + nft -f = {:.1} ms; ratio {:.2}x",
                ms(full),
                ms(text_med),
                ms(via_nft),
                via_nft.as_secs_f64() / full.as_secs_f64()
            );

            // Incremental: a peer pod leaves and re-enters selectors.
            let Some(_ns) = netns::Netns::enter("scale-inc") else {
                continue;
            };
            let mut c = compiler(&g);
            let mut dp = Netlink::new().expect("netlink");
            dp.apply(&c.commit()).expect("initial apply");
            let pod = peer_pod(&g, &mut c);
            let original = pod.labels.clone();
            let mut times = Vec::new();
            for i in 0..400 {
                let mut p = pod.clone();
                p.labels = if i % 2 == 0 {
                    original.with("tier", "other").with("app", "other")
                } else {
                    original.clone()
                };
                let s = Instant::now();
                c.upsert_pod(p);
                let tx = c.commit();
                dp.apply(&tx).expect("incremental apply");
                times.push(s.elapsed());
            }
            times.sort();
            let p50 = percentile(&times, 0.5);
            let p99 = percentile(&times, 0.99);
            println!(
                "   incremental (pod leaves/enters selectors, change -> committed): p50 {:.3} ms, p99 {:.3} ms; full/incremental = {:.0}x",
                ms(p50),
                ms(p99),
                full.as_secs_f64() / p50.as_secs_f64()
            );
        }
        if label == "large" {
            render_memory(&g);
        }
    }
}

/// Peak RSS of `nftpol render` on the generated cluster as one JSON List file.
fn render_memory(g: &Generated) {
    let dir = std::env::temp_dir().join(format!("nftpol-scale-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("cluster.json");
    let list = synth::to_kube_list(g);
    if let Err(e) = std::fs::write(&path, serde_json::to_vec(&list).unwrap_or_default()) {
        eprintln!("cannot write {}: {e}", path.display());
        return;
    }
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    // GNU time reports the peak RSS of exactly this process.
    let t = Instant::now();
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(env!("CARGO_BIN_EXE_nftpol"))
        .args(["render", "--node", LOCAL_NODE, "-f"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .output();
    let elapsed = t.elapsed();
    match out {
        Ok(o) if o.status.success() => {
            let stderr = String::from_utf8_lossy(&o.stderr);
            let kib: f64 = stderr
                .lines()
                .last()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(f64::NAN);
            println!(
                "   nftpol render of a {:.0} MB JSON List: {:.1} s, peak RSS {:.0} MiB",
                size as f64 / 1e6,
                elapsed.as_secs_f64(),
                kib / 1024.0
            );
        }
        Ok(o) => eprintln!(
            "render failed (is GNU time installed?): {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("cannot run /usr/bin/time: {e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
