//! The engine with the real netlink dataplane in a throw-away network namespace: it programs
//! the table, and when someone deletes or flushes it with `nft`, nf_tables notifications make
//! the engine restore it within seconds (no polling: the periodic resync is an hour here).
//! Needs root; skips loudly otherwise. Address plan in `agent_support`.

mod agent_support;

use std::fs::File;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_support::*;
use nftpol::agent::attachments::{AttachmentStore, KernelLinks};
use nftpol::agent::engine::{
    self, AddReply, Change, CniCall, EngineConfig, EngineHandle, EngineParts, Input, KernelWatch,
    Object, WatchEvent,
};
use nftpol::agent::health::Health;
use nftpol::agent::metrics::{Metrics, ObjectKind};
use nftpol::core::convert::Converter;
use nftpol::dataplane::{Dataplane, Netlink};
use nftpol::nft::model::Table;
use nix::sched::{CloneFlags, setns};
use serde_json::{Value, json};

/// Restoring must take less than this.
const RESTORE_LIMIT: Duration = Duration::from_secs(3);

struct Netns {
    name: String,
}

impl Netns {
    fn create(test: &str) -> Option<Netns> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("!!!! SKIPPING {test}: needs root (network namespaces, nf_tables) !!!!");
            return None;
        }
        let name = format!("nftpol-agent-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name}");
        Some(Netns { name })
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `f` on a thread that entered the namespace (threads it spawns stay there).
    fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open netns");
            setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns")
    }

    /// Our table as the kernel has it.
    fn dump(&self) -> Option<Table> {
        self.inside(|| Netlink::new().expect("netlink").dump(TABLE).expect("dump"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn objects(port: u16) -> Vec<Value> {
    let mut c = standard_cluster();
    c.push(allow_from(
        "prod",
        "web-from-frontend",
        "web",
        "frontend",
        json!(port),
    ));
    c
}

fn convert(o: &Value, c: &mut Converter) -> Object {
    match o["kind"].as_str() {
        Some("Namespace") => Object::Namespace(
            c.namespace(&serde_json::from_value(o.clone()).expect("ns"))
                .expect("valid"),
        ),
        Some("Node") => Object::Node(
            c.node(&serde_json::from_value(o.clone()).expect("node"))
                .expect("valid"),
        ),
        Some("Pod") => Object::Pod(
            c.pod(&serde_json::from_value(o.clone()).expect("pod"))
                .expect("valid"),
        ),
        _ => Object::Policy(
            c.network_policy(&serde_json::from_value(o.clone()).expect("np"))
                .expect("valid"),
        ),
    }
}

async fn converges(ns: &Netns, want: &str, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let have = ns.dump().map(|t| text(&t)).unwrap_or_default();
        if have == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < RESTORE_LIMIT,
            "{what}: not converged after {RESTORE_LIMIT:?}; have:\n{have}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_restores_a_table_deleted_or_flushed_with_nft() {
    let Some(ns) = Netns::create("the_engine_restores_a_table_deleted_or_flushed_with_nft") else {
        return;
    };
    // A real veth for web, so its anti-spoofing chain hooks a real device.
    ns.run(&[
        "ip", "link", "add", "veth-web", "type", "veth", "peer", "name", "eth-web",
    ])
    .expect("veth");

    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(Duration::from_secs(3600), metrics.clone()));
    let mut cfg = EngineConfig::new(NODE);
    cfg.debounce = Duration::from_millis(5);
    cfg.resync_interval = Duration::from_secs(3600);
    cfg.kernel_watch = KernelWatch::Notify;
    let parts = EngineParts {
        dataplane: Box::new(|| Netlink::new().map(|n| Box::new(n) as Box<dyn Dataplane>)),
        links: Box::new(KernelLinks),
        store: AttachmentStore::in_memory(),
        metrics: metrics.clone(),
        health: health.clone(),
    };
    let engine: EngineHandle = ns.inside(move || engine::spawn(cfg, parts).expect("engine"));
    let tx = engine.sender();
    let send = |change: Change| {
        let tx = tx.clone();
        async move {
            tx.send(Input::Watch(WatchEvent::now(change)))
                .await
                .expect("engine alive")
        }
    };

    let mut conv = Converter::new();
    for o in objects(8080) {
        send(Change::Upsert(convert(&o, &mut conv))).await;
    }
    for k in ObjectKind::ALL {
        send(Change::Synced(k)).await;
    }
    converges(&ns, &render(&objects(8080)), "first sync").await;
    let table = ns.dump().expect("table");
    assert!(tcp_allowed(&table, "10.1.0.11", "10.1.0.10", 8080));
    assert!(!tcp_allowed(&table, "10.1.0.12", "10.1.0.10", 8080));

    // CNI ADD with one IPv4 on a real veth: the kernel accepts the anti-spoofing chain.
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    tx.send(Input::Cni(CniCall::Add {
        attachment: attachment("c-web", "prod", "web", Some("veth-web"), &["10.1.0.10"]),
        pod: None,
        reply: reply_tx,
    }))
    .await
    .expect("engine alive");
    match reply_rx.await.expect("reply") {
        AddReply::Done(r) => assert!(r.ok, "{r:?}"),
        AddReply::NeedPod => panic!("web is known"),
    }
    let listing = ns
        .run(&["nft", "list", "table", "inet", TABLE])
        .expect("nft list");
    assert!(
        listing.contains("hook ingress device \"veth-web\"")
            && listing.contains("ip saddr != 10.1.0.10"),
        "{listing}"
    );
    let want = text(&ns.dump().expect("table"));

    // Our own changes are not mistaken for tampering.
    let policy_9090 = objects(9090).pop().expect("policy");
    send(Change::Upsert(convert(&policy_9090, &mut conv))).await;
    let mut with_9090 = ns.dump().expect("table");
    let start = Instant::now();
    while tcp_allowed(&with_9090, "10.1.0.11", "10.1.0.10", 8080) {
        assert!(start.elapsed() < RESTORE_LIMIT, "policy update not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
        with_9090 = ns.dump().expect("table");
    }
    assert!(tcp_allowed(&with_9090, "10.1.0.11", "10.1.0.10", 9090));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        metrics.encode().contains("nftpol_kernel_drift_total 0"),
        "own commits counted as drift"
    );
    let want_9090 = text(&ns.dump().expect("table"));
    assert_ne!(want, want_9090);

    ns.run(&["nft", "delete", "table", "inet", TABLE])
        .expect("nft delete table");
    let took = converges(&ns, &want_9090, "deleted table").await;
    eprintln!("table deleted with nft was restored after {took:?}");

    ns.run(&["nft", "flush", "chain", "inet", TABLE, "ingress"])
        .expect("nft flush chain");
    let took = converges(&ns, &want_9090, "flushed chain").await;
    eprintln!("flushed ingress chain was restored after {took:?}");
    assert!(
        metrics.encode().contains("nftpol_kernel_drift_total 2"),
        "{}",
        metrics.encode()
    );

    engine.shutdown().await.expect("shutdown");
    // Fail-static: the table outlives the agent.
    assert_eq!(text(&ns.dump().expect("table after shutdown")), want_9090);
}
