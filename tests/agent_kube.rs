//! The agent against a mock Kubernetes API server (tower-test) and the fake dataplane: what
//! reaches the "kernel", when, and in how many transactions. See `agent_support` for the
//! address plan. Packets are traced through the programmed table, so assertions read as "the
//! frontend can reach web on 8080, the intruder cannot".

mod agent_support;

use std::time::Duration;

use agent_support::*;
use nftpol::agent::engine::KernelWatch;
use nftpol::agent::{Agent, AgentConfig, AgentParts};
use nftpol::nft::model::Table;
use nftpol_cni::protocol::Request;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

struct Running {
    agent: Agent,
    api: MockApi,
    fake: SharedFake,
    links: FakeLinks,
    dir: tempfile::TempDir,
}

impl Running {
    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("nftpol.sock")
    }

    async fn ready(&self) {
        let h = self.agent.health().clone();
        eventually(WAIT, "agent ready", || h.ready().is_ok()).await;
    }

    /// Waits until the fake kernel holds exactly what `nftpol render` makes of `objects`.
    async fn converges_to(&self, objects: &[Value]) -> Table {
        let want = render(objects);
        let fake = self.fake.clone();
        let start = std::time::Instant::now();
        loop {
            let have = fake.table().map(|t| text(&t)).unwrap_or_default();
            if have == want {
                return fake.table().unwrap_or_else(|| Table::new(TABLE));
            }
            assert!(
                start.elapsed() < WAIT,
                "the table did not converge; have:\n{have}\nwant:\n{want}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn metrics(&self) -> String {
        self.agent.metrics().encode()
    }

    /// The metrics once they hold every line of `want` (or after [`WAIT`], for the caller's
    /// assertions to report): the engine counts a sync after the kernel took it, so a test
    /// that saw the table may read the counters a moment too early.
    async fn metrics_with(&self, want: &[&str]) -> String {
        let start = std::time::Instant::now();
        loop {
            let m = self.metrics();
            if want.iter().all(|w| m.contains(w)) || start.elapsed() >= WAIT {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn start_with(
    api: MockApi,
    client: kube::Client,
    fake: SharedFake,
    watch: KernelWatch,
) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let links = FakeLinks::default();
    let mut cfg = AgentConfig::new(NODE, dir.path());
    cfg.metrics_addr = "127.0.0.1:0".parse().expect("addr");
    cfg.debounce = Duration::from_millis(5);
    cfg.debounce_max = Duration::from_millis(50);
    cfg.resync_interval = Duration::from_secs(3600);
    cfg.kernel_watch = watch;
    cfg.kernel_poll_interval = Duration::from_millis(100);
    cfg.cni_ready_timeout = Duration::from_millis(500);
    let parts = AgentParts {
        client,
        dataplane: fake.factory(),
        links: Box::new(links.clone()),
    };
    let agent = Agent::start(cfg, parts, None).await.expect("agent starts");
    Running {
        agent,
        api,
        fake,
        links,
        dir,
    }
}

async fn start(objects: &[Value]) -> Running {
    let (api, client) = MockApi::start();
    api.apply_all(objects);
    start_with(api, client, SharedFake::new(), KernelWatch::Off).await
}

fn compile(objects: &[Value]) -> Table {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.json");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    std::fs::write(&path, serde_json::to_vec(&list).expect("json")).expect("write");
    nftpol::cli::compile(&nftpol::cli::Options {
        node: NODE.into(),
        paths: vec![path],
        table: TABLE.into(),
    })
    .expect("compile")
    .0
}

/// GET over plain HTTP/1.1; returns the status code and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

fn web_policy(port: u16) -> Value {
    allow_from("prod", "web-from-frontend", "web", "frontend", json!(port))
}

fn with(mut objects: Vec<Value>, more: &[Value]) -> Vec<Value> {
    objects.extend_from_slice(more);
    objects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_programmed_before_every_kind_synced_then_one_transaction_replaces_the_old_table()
 {
    // The table a previous agent left: web allowed from the intruder's app.
    let old_objects = with(
        standard_cluster(),
        &[allow_from("prod", "old", "web", "other", json!(8080))],
    );
    let old = compile(&old_objects);
    assert!(tcp_allowed(&old, "10.1.0.12", "10.1.0.10", 8080));

    let objects = with(standard_cluster(), &[web_policy(8080)]);
    let (api, client) = MockApi::start();
    api.apply_all(&objects);
    api.hold(Kind::Pod);
    let r = start_with(
        api,
        client,
        SharedFake::with_table(old.clone()),
        KernelWatch::Off,
    )
    .await;

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        r.fake.applied().is_empty(),
        "programmed before the pod cache synced"
    );
    assert_eq!(
        r.fake.table(),
        Some(old),
        "the old table must stay in force"
    );
    let (code, why) = http_get(r.agent.metrics_addr(), "/readyz").await;
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("not synced"), "{why}");
    let (code, _) = http_get(r.agent.metrics_addr(), "/healthz").await;
    assert_eq!(code, 200);

    r.api.release(Kind::Pod);
    let table = r.converges_to(&objects).await;
    assert_eq!(r.fake.applied().len(), 1, "exactly one transaction");
    assert!(tcp_allowed(&table, "10.1.0.11", "10.1.0.10", 8080));
    assert!(!tcp_allowed(&table, "10.1.0.12", "10.1.0.10", 8080));
    r.ready().await;
    let (code, _) = http_get(r.agent.metrics_addr(), "/readyz").await;
    assert_eq!(code, 200);
    let (code, metrics) = http_get(r.agent.metrics_addr(), "/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("nftpol_ready 1"), "{metrics}");
    assert!(
        metrics.contains("nftpol_watched_objects{kind=\"pod\"} 4"),
        "{metrics}"
    );
    // The bound address is published for scripts that start the agent on port 0.
    let published = std::fs::read_to_string(r.dir.path().join("metrics-addr")).expect("file");
    assert_eq!(published.trim(), r.agent.metrics_addr().to_string());
    r.agent.shutdown().await.expect("shutdown");
    // Fail-static: the table stays after shutdown.
    assert_eq!(text(&r.fake.table().expect("table")), render(&objects));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_add_update_and_delete_each_send_a_small_transaction() {
    let cluster = standard_cluster();
    let r = start(&cluster).await;
    r.converges_to(&cluster).await;
    r.ready().await;
    let base = r.fake.applied().len();

    r.api.apply(web_policy(8080));
    let table = r
        .converges_to(&with(cluster.clone(), &[web_policy(8080)]))
        .await;
    assert!(tcp_allowed(&table, "10.1.0.11", "10.1.0.10", 8080));
    assert!(!tcp_allowed(&table, "10.1.0.12", "10.1.0.10", 8080));
    let txs = r.fake.applied();
    assert_eq!(txs.len(), base + 1);
    let add = &txs[base];
    assert!(!add.replace && !add.create_table, "{:?}", add.stats());
    for c in &add.add_chains {
        assert!(
            c.name.contains("web"),
            "the add touched a chain unrelated to the policy: {}",
            c.name
        );
    }

    r.api.apply(web_policy(9090));
    let table = r
        .converges_to(&with(cluster.clone(), &[web_policy(9090)]))
        .await;
    assert!(tcp_allowed(&table, "10.1.0.11", "10.1.0.10", 9090));
    assert!(!tcp_allowed(&table, "10.1.0.11", "10.1.0.10", 8080));
    let txs = r.fake.applied();
    assert_eq!(txs.len(), base + 2);
    assert!(!txs[base + 1].replace);

    r.api
        .delete(Kind::NetworkPolicy, "prod", "web-from-frontend");
    let table = r.converges_to(&cluster).await;
    assert!(tcp_allowed(&table, "10.1.0.12", "10.1.0.10", 8080));
    let txs = r.fake.applied();
    assert_eq!(txs.len(), base + 3);
    let del = &txs[base + 2];
    assert!(
        !del.replace && !del.delete_chains.is_empty(),
        "{:?}",
        del.stats()
    );

    let m = r
        .metrics_with(&[
            "nftpol_enforcement_latency_seconds_count{kind=\"networkpolicy\"} 3",
            "nftpol_transactions_total{kind=\"incremental\"} 3",
        ])
        .await;
    assert!(
        m.contains("nftpol_enforcement_latency_seconds_count{kind=\"networkpolicy\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("nftpol_transactions_total{kind=\"incremental\"} 3"),
        "{m}"
    );
    r.agent.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_add_of_a_pod_the_watch_has_not_delivered_gets_it_from_the_api_server() {
    let objects = with(standard_cluster(), &[web_policy(8080)]);
    let (api, client) = MockApi::start();
    api.apply_all(&objects);
    // A new web pod: the API server has it, the watch is late.
    api.hide(Kind::Pod, "prod", "late");
    api.apply(pod("prod", "late", NODE, "web", None));
    let r = start_with(api, client, SharedFake::new(), KernelWatch::Off).await;
    r.converges_to(&objects).await;
    r.ready().await;

    let add = Request::Add(attachment(
        "c-late",
        "prod",
        "late",
        Some("veth-late"),
        &["10.1.0.13"],
    ));
    let resp = cni(&r.socket(), &add).await;
    assert!(resp.ok, "{resp:?}");
    assert!(
        r.api
            .requests()
            .iter()
            .any(|q| q.starts_with("GET /api/v1/namespaces/prod/pods/late")),
        "{:?}",
        r.api.requests()
    );
    // Answered only after the commit: the pod is isolated right now.
    let table = r.fake.table().expect("table");
    assert!(tcp_allowed(&table, "10.1.0.11", "10.1.0.13", 8080));
    assert!(!tcp_allowed(&table, "10.1.0.12", "10.1.0.13", 8080));
    assert!(
        table.chains.keys().any(|c| c.contains("veth-late")),
        "no anti-spoofing chain on the pod's veth"
    );

    // The watch still shows an old incarnation of `db-0` on another node; the new one,
    // bound to this node, is only in the API server so far.
    r.api
        .apply(pod("prod", "db-0", "node-b", "web", Some("10.2.0.30")));
    let metrics = r.agent.metrics().clone();
    eventually(WAIT, "old db-0 watched", || {
        // web, frontend, intruder, remote, late (from the GET) and db-0
        metrics
            .encode()
            .contains("nftpol_watched_objects{kind=\"pod\"} 6")
    })
    .await;
    r.api.hide(Kind::Pod, "prod", "db-0");
    r.api.apply(pod("prod", "db-0", NODE, "web", None));
    let add = Request::Add(attachment(
        "c-db",
        "prod",
        "db-0",
        Some("veth-db"),
        &["10.1.0.14"],
    ));
    let resp = cni(&r.socket(), &add).await;
    assert!(resp.ok, "{resp:?}");
    let table = r.fake.table().expect("table");
    assert!(!tcp_allowed(&table, "10.1.0.12", "10.1.0.14", 8080));
    assert!(tcp_allowed(&table, "10.1.0.11", "10.1.0.14", 8080));

    // A pod that exists nowhere: try again later.
    let ghost = Request::Add(attachment("c-x", "prod", "ghost", None, &["10.1.0.99"]));
    let resp = cni(&r.socket(), &ghost).await;
    let err = resp.error.expect("error");
    assert_eq!(err.code, 11);
    assert!(err.msg.contains("not found"), "{}", err.msg);
    r.agent.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_policy_update_posts_one_event_and_keeps_the_last_valid_version() {
    let objects = with(standard_cluster(), &[web_policy(8080)]);
    let r = start(&objects).await;
    r.converges_to(&objects).await;
    r.ready().await;

    let mut bad = web_policy(8080);
    bad["spec"]["ingress"][0]["ports"][0]["endPort"] = json!(80);
    r.api.apply(bad);
    let api = r.api.clone();
    eventually(WAIT, "a NetworkPolicyRejected event", || {
        !api.events().is_empty()
    })
    .await;
    let ev = &r.api.events()[0];
    assert_eq!(ev["reason"], "NetworkPolicyRejected");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["regarding"]["kind"], "NetworkPolicy");
    assert_eq!(ev["regarding"]["name"], "web-from-frontend");
    assert_eq!(ev["metadata"]["namespace"], "prod");
    let note = ev["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("spec.ingress[0].ports[0].endPort") && note.contains("last valid version"),
        "{note}"
    );
    // Still enforced as before.
    let table = r.fake.table().expect("table");
    assert!(tcp_allowed(&table, "10.1.0.11", "10.1.0.10", 8080));
    assert!(!tcp_allowed(&table, "10.1.0.12", "10.1.0.10", 8080));

    // A relist delivers the same invalid version again: no second event, and the last valid
    // version is not dropped as "deleted".
    let lists_before = list_requests(&r.api, "networkpolicies");
    r.api.expire_watches();
    let api = r.api.clone();
    eventually(WAIT, "the policy watch relisted", || {
        list_requests(&api, "networkpolicies") > lists_before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.api.events().len(), 1, "duplicate event");
    r.converges_to(&objects).await;
    let m = r
        .metrics_with(&[
            "nftpol_rejected_policies 1",
            "nftpol_invalid_objects_total{kind=\"networkpolicy\"} 2",
        ])
        .await;
    assert!(m.contains("nftpol_rejected_policies 1"), "{m}");
    assert!(
        m.contains("nftpol_invalid_objects_total{kind=\"networkpolicy\"} 2"),
        "{m}"
    );

    // Fixing the policy clears the rejection.
    r.api.apply(web_policy(9090));
    r.converges_to(&with(standard_cluster(), &[web_policy(9090)]))
        .await;
    assert!(
        r.metrics_with(&["nftpol_rejected_policies 0"])
            .await
            .contains("nftpol_rejected_policies 0")
    );
    r.agent.shutdown().await.expect("shutdown");
}

fn list_requests(api: &MockApi, resource: &str) -> usize {
    api.requests()
        .iter()
        .filter(|q| q.contains(resource) && !q.contains("watch=true"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_deleted_while_the_watch_was_down_are_forgotten_after_the_relist() {
    let objects = with(standard_cluster(), &[web_policy(8080)]);
    let r = start(&objects).await;
    r.converges_to(&objects).await;
    r.ready().await;
    r.api.expire_watches();
    r.api
        .delete(Kind::NetworkPolicy, "prod", "web-from-frontend");
    let table = r.converges_to(&standard_cluster()).await;
    assert!(tcp_allowed(&table, "10.1.0.12", "10.1.0.10", 8080));
    r.agent.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_apply_makes_the_next_sync_a_full_one() {
    let cluster = standard_cluster();
    let r = start(&cluster).await;
    r.converges_to(&cluster).await;
    r.ready().await;
    let dumps = r.fake.dumps();

    r.fake.state().fail_next = 1;
    r.api.apply(web_policy(8080));
    let objects = with(cluster, &[web_policy(8080)]);
    let table = r.converges_to(&objects).await;
    assert!(!tcp_allowed(&table, "10.1.0.12", "10.1.0.10", 8080));
    assert_eq!(r.fake.state().failed_applies, 1);
    assert!(
        r.fake.dumps() > dumps,
        "the recovery did not read the table back"
    );
    let m = r
        .metrics_with(&[
            "nftpol_transaction_failures_total{kind=\"incremental\"} 1",
            "nftpol_transactions_total{kind=\"full\"} 2",
        ])
        .await;
    assert!(
        m.contains("nftpol_transaction_failures_total{kind=\"incremental\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("nftpol_transactions_total{kind=\"full\"} 2"),
        "{m}"
    );
    r.ready().await;
    r.agent.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_deleted_or_altered_behind_the_agents_back_is_restored() {
    let objects = with(standard_cluster(), &[web_policy(8080)]);
    let (api, client) = MockApi::start();
    api.apply_all(&objects);
    let r = start_with(api, client, SharedFake::new(), KernelWatch::Poll).await;
    r.converges_to(&objects).await;
    r.ready().await;

    // Someone runs `nft delete table inet nftpol`.
    r.fake.state().fake = nftpol::dataplane::Fake::new();
    let started = std::time::Instant::now();
    r.converges_to(&objects).await;
    eprintln!("deleted table restored after {:?}", started.elapsed());

    // Someone flushes the ingress chain.
    r.fake
        .state()
        .fake
        .table_mut(TABLE)
        .and_then(|t| t.chains.get_mut("ingress"))
        .expect("ingress chain")
        .rules
        .clear();
    let table = r.converges_to(&objects).await;
    assert!(!tcp_allowed(&table, "10.1.0.12", "10.1.0.10", 8080));
    assert!(
        r.metrics_with(&["nftpol_kernel_drift_total 2"])
            .await
            .contains("nftpol_kernel_drift_total 2")
    );
    r.agent.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_refused_for_a_vanished_interface_is_answered_try_again_and_the_table_repaired() {
    let objects = with(standard_cluster(), &[web_policy(8080)]);
    let r = start(&objects).await;
    r.converges_to(&objects).await;
    r.ready().await;

    // The veth is gone by the time the agent programs it; an older kernel refuses the batch.
    r.links.remove("veth-gone");
    r.fake.state().missing_devices.insert("veth-gone".into());
    let add = Request::Add(attachment(
        "c-web",
        "prod",
        "web",
        Some("veth-gone"),
        &["10.1.0.10"],
    ));
    let resp = cni(&r.socket(), &add).await;
    assert_eq!(resp.error.as_ref().map(|e| e.code), Some(11), "{resp:?}");
    // The retry (a full sync) drops the stale attachment and programs the rest.
    let state = r.dir.path().join("attachments.json");
    eventually(WAIT, "the stale attachment dropped", || {
        std::fs::read_to_string(&state).is_ok_and(|s| !s.contains("veth-gone"))
    })
    .await;
    let table = r.converges_to(&objects).await;
    assert!(!table.chains.keys().any(|c| c.contains("veth-gone")));
    assert_eq!(r.fake.state().failed_applies, 1);
    r.ready().await;
    r.agent.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_that_keeps_refusing_is_retried_with_backoff_not_in_a_loop() {
    let cluster = standard_cluster();
    let r = start(&cluster).await;
    r.converges_to(&cluster).await;
    r.ready().await;

    r.fake.state().fail_next = usize::MAX;
    r.api.apply(web_policy(8080));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    // 0 ms, then retries after 200, 400 and 800 ms (the last at ~1.4 s).
    let attempts = r.fake.state().failed_applies;
    assert!((2..=5).contains(&attempts), "{attempts} attempts in 1.6 s");
    // A transient failure does not flip readiness at once.
    assert!(r.agent.health().ready().is_ok());

    r.fake.state().fail_next = 0;
    let table = r.converges_to(&with(cluster, &[web_policy(8080)])).await;
    assert!(!tcp_allowed(&table, "10.1.0.12", "10.1.0.10", 8080));
    r.agent.shutdown().await.expect("shutdown");
}
