//! The CNI server over a real unix socket, with the engine and the fake dataplane: ADD answers
//! only after the commit, DEL is idempotent, CHECK reads the live table, STATUS follows
//! readiness, GC forgets stale attachments, attachments survive restarts. Objects are fed to
//! the engine directly, as the watchers would (address plan in `agent_support`).

mod agent_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_support::*;
use nftpol::agent::attachments::AttachmentStore;
use nftpol::agent::cni::{CniContext, CniServer};
use nftpol::agent::engine::{
    self, Change, EngineConfig, EngineHandle, EngineParts, Input, KernelWatch, Object, WatchEvent,
};
use nftpol::agent::health::Health;
use nftpol::agent::metrics::{Metrics, ObjectKind};
use nftpol::core::convert::Converter;
use nftpol_cni::protocol::{AttachmentId, Request};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

struct Agent {
    engine: Option<EngineHandle>,
    tx: mpsc::Sender<Input>,
    fake: SharedFake,
    links: FakeLinks,
    health: Arc<Health>,
    socket: PathBuf,
    cancel: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Agent {
    async fn start(dir: &Path, fake: SharedFake, links: FakeLinks) -> Agent {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new(Duration::from_secs(3600), metrics.clone()));
        let mut cfg = EngineConfig::new(NODE);
        cfg.debounce = Duration::from_millis(5);
        cfg.kernel_watch = KernelWatch::Off;
        let engine = engine::spawn(
            cfg,
            EngineParts {
                dataplane: fake.factory(),
                links: Box::new(links.clone()),
                store: AttachmentStore::load(dir).expect("state"),
                metrics: metrics.clone(),
                health: health.clone(),
            },
        )
        .expect("engine");
        let tx = engine.sender();
        let socket = dir.join("sock").join("nftpol.sock");
        let server = CniServer::bind(&socket).expect("bind");
        let cancel = CancellationToken::new();
        let server = tokio::spawn(server.serve(
            CniContext {
                engine: tx.clone(),
                health: health.clone(),
                metrics,
                pods: None,
                ready_timeout: Duration::from_millis(300),
            },
            cancel.clone(),
        ));
        Agent {
            engine: Some(engine),
            tx,
            fake,
            links,
            health,
            socket,
            cancel,
            server,
        }
    }

    /// Feeds objects as watch events (without marking the caches synced).
    async fn feed(&self, objects: &[Value]) {
        let mut c = Converter::new();
        for o in objects {
            let obj = match o["kind"].as_str() {
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
                Some("NetworkPolicy") => Object::Policy(
                    c.network_policy(&serde_json::from_value(o.clone()).expect("np"))
                        .expect("valid"),
                ),
                other => panic!("kind {other:?}"),
            };
            self.send(Change::Upsert(obj)).await;
        }
    }

    async fn synced(&self) {
        for k in ObjectKind::ALL {
            self.send(Change::Synced(k)).await;
        }
    }

    async fn send(&self, change: Change) {
        self.tx
            .send(Input::Watch(WatchEvent::now(change)))
            .await
            .expect("engine alive");
    }

    async fn ready(&self) {
        let h = self.health.clone();
        eventually(WAIT, "ready", || h.ready().is_ok()).await;
    }

    async fn stop(mut self) {
        self.cancel.cancel();
        let _ = self.server.await;
        if let Some(e) = self.engine.take() {
            e.shutdown().await.expect("engine stops");
        }
    }

    fn table(&self) -> nftpol::nft::model::Table {
        self.fake.table().expect("table")
    }
}

fn cluster() -> Vec<Value> {
    let mut c = standard_cluster();
    c.push(allow_from(
        "prod",
        "web-from-frontend",
        "web",
        "frontend",
        json!(8080),
    ));
    c
}

async fn ready_agent(dir: &Path) -> Agent {
    let a = Agent::start(dir, SharedFake::new(), FakeLinks::default()).await;
    a.feed(&cluster()).await;
    a.synced().await;
    a.ready().await;
    a
}

fn has_chain(t: &nftpol::nft::model::Table, veth: &str) -> bool {
    t.chains.keys().any(|c| c.contains(veth))
}

fn id(container: &str) -> AttachmentId {
    AttachmentId {
        container_id: container.into(),
        ifname: "eth0".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_answers_only_after_the_kernel_committed_and_reports_failures_as_try_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = ready_agent(dir.path()).await;

    a.fake.state().delay = Duration::from_millis(300);
    let started = Instant::now();
    let add = Request::Add(attachment(
        "c-fe",
        "prod",
        "frontend",
        Some("veth-fe"),
        &["10.1.0.11"],
    ));
    let resp = cni(&a.socket, &add).await;
    assert!(resp.ok, "{resp:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // At the moment of the answer the kernel already holds the anti-spoofing chain.
    assert!(has_chain(&a.table(), "veth-fe"));
    a.fake.state().delay = Duration::ZERO;

    a.fake.state().fail_next = 1;
    let add = Request::Add(attachment(
        "c-web",
        "prod",
        "web",
        Some("veth-web"),
        &["10.1.0.10"],
    ));
    let resp = cni(&a.socket, &add).await;
    let err = resp.error.expect("an error");
    assert_eq!(err.code, 11);
    assert!(err.details.contains("injected failure"), "{}", err.details);
    // The engine retries with a full sync; a repeated ADD then succeeds.
    let fake = a.fake.clone();
    eventually(WAIT, "the retry programs veth-web", || {
        fake.table().is_some_and(|t| has_chain(&t, "veth-web"))
    })
    .await;
    assert!(cni(&a.socket, &add).await.ok);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_is_idempotent_and_identifies_attachments_by_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = ready_agent(dir.path()).await;

    let unknown = Request::Del(attachment("nope", "prod", "web", None, &[]));
    assert!(cni(&a.socket, &unknown).await.ok);

    let add = Request::Add(attachment(
        "c-web",
        "prod",
        "web",
        Some("veth-web"),
        &["10.1.0.10"],
    ));
    assert!(cni(&a.socket, &add).await.ok);
    assert!(has_chain(&a.table(), "veth-web"));
    // A DEL of an older sandbox of the same pod leaves the current one alone.
    let old = Request::Del(attachment(
        "c-web-old",
        "prod",
        "web",
        Some("veth-old"),
        &[],
    ));
    assert!(cni(&a.socket, &old).await.ok);
    assert!(has_chain(&a.table(), "veth-web"));
    // DEL may come without pod names (runtime retrying teardown).
    let del = Request::Del(attachment("c-web", "", "", None, &[]));
    assert!(cni(&a.socket, &del).await.ok);
    assert!(!has_chain(&a.table(), "veth-web"));
    assert!(cni(&a.socket, &del).await.ok);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reads_the_live_table_and_detects_a_missing_element() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = ready_agent(dir.path()).await;
    let att = attachment("c-web", "prod", "web", Some("veth-web"), &["10.1.0.10"]);
    assert!(cni(&a.socket, &Request::Add(att.clone())).await.ok);
    assert!(cni(&a.socket, &Request::Check(att.clone())).await.ok);

    // Someone deletes web's entry from the ingress dispatch map.
    {
        let mut s = a.fake.state();
        let t = s.fake.table_mut(TABLE).expect("table");
        let map = t.sets.get_mut("ingress_pods_v4").expect("dispatch map");
        assert_eq!(
            map.elements.len(),
            1,
            "web is the only ingress-isolated pod"
        );
        map.elements.clear();
    }
    let resp = cni(&a.socket, &Request::Check(att.clone())).await;
    let err = resp.error.expect("CHECK must fail");
    assert_eq!(err.code, 100);
    assert!(err.msg.contains("missing from the kernel"), "{}", err.msg);
    assert!(err.details.contains("ingress_pods_v4"), "{}", err.details);
    // The failed CHECK also schedules a repair.
    let fake = a.fake.clone();
    eventually(WAIT, "the dispatch entry restored", || {
        fake.table().is_some_and(|t| {
            t.sets
                .get("ingress_pods_v4")
                .is_some_and(|m| m.elements.len() == 1)
        })
    })
    .await;
    assert!(cni(&a.socket, &Request::Check(att)).await.ok);

    let stranger = attachment("c-x", "prod", "web", None, &[]);
    let resp = cni(&a.socket, &Request::Check(stranger)).await;
    assert_eq!(resp.error.map(|e| e.code), Some(3));
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_add_wait_for_readiness() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Agent::start(dir.path(), SharedFake::new(), FakeLinks::default()).await;
    a.feed(&cluster()).await;

    let status = cni(&a.socket, &Request::Status).await;
    assert_eq!(
        status.error.as_ref().map(|e| e.code),
        Some(50),
        "{status:?}"
    );
    // Not ready within the bound (300 ms here): try again later, nothing programmed.
    let add = Request::Add(attachment(
        "c-web",
        "prod",
        "web",
        Some("veth-web"),
        &["10.1.0.10"],
    ));
    let resp = cni(&a.socket, &add).await;
    assert_eq!(resp.error.as_ref().map(|e| e.code), Some(11), "{resp:?}");
    assert!(a.fake.applied().is_empty());

    // An ADD that arrives shortly before the caches sync is held, then served.
    let socket = a.socket.clone();
    let pending = tokio::spawn(async move { cni(&socket, &add).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.synced().await;
    let resp = pending.await.expect("task");
    assert!(resp.ok, "{resp:?}");
    assert!(has_chain(&a.table(), "veth-web"));
    assert!(cni(&a.socket, &Request::Status).await.ok);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_forgets_attachments_not_in_the_valid_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = ready_agent(dir.path()).await;
    for (c, pod, veth, ip) in [
        ("c-web", "web", "veth-web", "10.1.0.10"),
        ("c-fe", "frontend", "veth-fe", "10.1.0.11"),
    ] {
        let add = Request::Add(attachment(c, "prod", pod, Some(veth), &[ip]));
        assert!(cni(&a.socket, &add).await.ok);
    }
    let gc = Request::Gc {
        valid: vec![id("c-web")],
    };
    assert!(cni(&a.socket, &gc).await.ok);
    let t = a.table();
    assert!(has_chain(&t, "veth-web"));
    assert!(!has_chain(&t, "veth-fe"));
    let state = std::fs::read_to_string(dir.path().join("attachments.json")).expect("state");
    assert!(
        state.contains("c-web") && !state.contains("c-fe"),
        "{state}"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_survive_a_restart_and_vanished_interfaces_are_dropped_on_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = ready_agent(dir.path()).await;
    let add = Request::Add(attachment(
        "c-web",
        "prod",
        "web",
        Some("veth-web"),
        &["10.1.0.10"],
    ));
    assert!(cni(&a.socket, &add).await.ok);
    let fake = a.fake.clone();
    let before = fake.applied().len();
    a.stop().await;
    assert!(
        has_chain(&fake.table().expect("table"), "veth-web"),
        "fail-static"
    );

    // Restart: same kernel, same state directory. The kernel already holds the desired
    // table, so the first sync sends nothing; anti-spoofing stays.
    let b = Agent::start(dir.path(), fake.clone(), FakeLinks::default()).await;
    b.feed(&cluster()).await;
    b.synced().await;
    b.ready().await;
    assert_eq!(
        fake.applied().len(),
        before,
        "a restart must not change the table"
    );
    assert!(has_chain(&b.table(), "veth-web"));
    b.stop().await;

    // Restart after the pod's veth vanished: the attachment is dropped.
    let links = FakeLinks::default();
    links.remove("veth-web");
    let c = Agent::start(dir.path(), fake.clone(), links).await;
    c.feed(&cluster()).await;
    c.synced().await;
    c.ready().await;
    assert!(!has_chain(&c.table(), "veth-web"));
    let _ = &c.links;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_replaces_a_stale_one_is_private_and_goes_away_on_shutdown() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sock").join("nftpol.sock");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    // A previous agent died and left its socket file behind.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
    assert!(std::os::unix::net::UnixStream::connect(&path).is_err());

    let a = ready_agent(dir.path()).await;
    assert_eq!(a.socket, path);
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(cni(&a.socket, &Request::Status).await.ok);

    // Garbage gets a decode error, not a hang.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(&path)
        .await
        .expect("connect");
    s.write_all(b"{\"op\":\"fly\"}\n").await.expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.expect("read");
    assert!(answer.contains("\"code\":6"), "{answer}");

    a.stop().await;
    assert!(!path.exists(), "the socket must be removed on shutdown");
}
