//! The test API server against a real kube-rs 5 client: what the nftpol agent will see.
//!
//! Every test talks to its own [`Server`] through the kubeconfig it writes, with the same
//! kube/k8s-openapi versions and features as the agent, and checks behaviour the agent
//! depends on: paginated lists that are one snapshot, watchers that go Init -> InitApply ->
//! InitDone -> Apply/Delete, resuming after dropped watches without re-listing, re-listing
//! after 410 Gone, selectors, Events, errors as `Status`.
//!
//! Fixtures: namespaces `ns-<k>`/`a`/`b`, nodes `node-a`/`node-b`, pods named after their
//! index, `app=<name>` labels unless stated. No root needed; nothing touches the host.
//!
//! `scale_150k_pods_10k_namespaces_10k_policies` is `#[ignore]`d (minutes in a debug build):
//! `cargo test --release -p nftpol-e2e --test apiserver -- --ignored --nocapture`.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Node, ObjectReference, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event as RecorderEvent, EventType, Recorder, Reporter};
use kube::runtime::{reflector, watcher};
use kube::{Api, Client, Config, Resource, ResourceExt};
use nftpol_e2e::apiserver::{ApiError, Kind, Server, Verb};
use serde_json::{Value, json};

const STEP: Duration = Duration::from_secs(10);

// ---- fixtures ----

fn namespace(name: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name } })
}

fn pod(ns: &str, name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "labels": { "app": name } },
        "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "busybox" }] },
        "status": { "phase": "Running", "podIP": "10.244.0.10" },
    })
}

fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
        "spec": { "podCIDR": "10.244.0.0/24" },
        "status": { "addresses": [{ "type": "InternalIP", "address": "10.0.0.1" }] },
    })
}

fn labelled_pod(ns: &str, name: &str, labels: Value) -> Value {
    let mut pod = pod(ns, name, "node-a");
    pod["metadata"]["labels"] = labels;
    pod
}

fn policy(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "podSelector": {}, "policyTypes": ["Ingress"] },
    })
}

fn start() -> Server {
    nftpol_e2e::init_logging();
    Server::start().expect("start the test API server")
}

/// A client configured only from the server's kubeconfig file, as the agent will be.
async fn client(server: &Server) -> Client {
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig_path()).expect("read the kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config from the kubeconfig");
    assert_eq!(
        config.cluster_url.to_string().trim_end_matches('/'),
        server.url()
    );
    Client::try_from(config).expect("client")
}

// ---- watcher helpers ----

/// A watcher driven by its own task, as in the agent (a kube watcher only makes progress
/// while polled: after InitDone it opens its watch on the next poll). Events queue up in a
/// channel; dropping this stops the watcher.
struct Events<K> {
    rx: tokio::sync::mpsc::UnboundedReceiver<Result<watcher::Event<K>, watcher::Error>>,
    task: tokio::task::JoinHandle<()>,
}

impl<K> Drop for Events<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn watch<K>(api: Api<K>, config: watcher::Config) -> Events<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut stream = watcher(api, config).boxed();
    let task = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    Events { rx, task }
}

fn key<K: ResourceExt>(obj: &K) -> String {
    match obj.namespace() {
        Some(ns) => format!("{ns}/{}", obj.name_any()),
        None => obj.name_any(),
    }
}

fn describe<K: ResourceExt>(event: &watcher::Event<K>) -> String {
    match event {
        watcher::Event::Init => "Init".into(),
        watcher::Event::InitApply(o) => format!("InitApply {}", key(o)),
        watcher::Event::InitDone => "InitDone".into(),
        watcher::Event::Apply(o) => format!("Apply {}", key(o)),
        watcher::Event::Delete(o) => format!("Delete {}", key(o)),
    }
}

/// The next `n` events (errors are collected separately), each within [`STEP`].
async fn take<K: ResourceExt>(
    stream: &mut Events<K>,
    n: usize,
) -> (Vec<watcher::Event<K>>, Vec<watcher::Error>) {
    let mut events = Vec::new();
    let mut errors = Vec::new();
    while events.len() < n {
        let item = tokio::time::timeout(STEP, stream.rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no watcher event within {STEP:?}; got {:?}, errors {errors:?}",
                    events.iter().map(describe).collect::<Vec<_>>()
                )
            })
            .expect("the watcher stream never ends");
        match item {
            Ok(event) => events.push(event),
            Err(err) => errors.push(err),
        }
    }
    (events, errors)
}

async fn expect_events<K: ResourceExt>(
    stream: &mut Events<K>,
    expected: &[&str],
) -> Vec<watcher::Event<K>> {
    let (events, errors) = take(stream, expected.len()).await;
    let got: Vec<String> = events.iter().map(describe).collect();
    assert_eq!(
        got, expected,
        "watcher events (errors on the way: {errors:?})"
    );
    assert!(errors.is_empty(), "unexpected watcher errors: {errors:?}");
    events
}

/// Polls `condition` (every 20 ms, without blocking the runtime) until it holds.
async fn eventually(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn api_status<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected an API error Status, got {other:?}"),
    }
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {STEP:?}"))
}

// ---- lists and single objects ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paginated_list_is_one_snapshot_even_while_objects_change() {
    let server = start();
    let mut originals = BTreeSet::new();
    server
        .create_all((0..1234).map(|i| {
            let (ns, name) = (format!("ns-{}", i % 7), format!("pod-{i:04}"));
            originals.insert(format!("{ns}/{name}"));
            pod(&ns, &name, "node-a")
        }))
        .expect("seed pods");
    let pods: Api<Pod> = Api::all(client(&server).await);

    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut first_rv: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut params = ListParams::default().limit(100);
        if let Some(token) = &token {
            params = params.continue_token(token);
        }
        let page = within("a page", pods.list(&params))
            .await
            .expect("list page");
        pages += 1;
        let rv = page
            .metadata
            .resource_version
            .clone()
            .expect("list resourceVersion");
        assert_eq!(
            first_rv.get_or_insert(rv.clone()),
            &rv,
            "all pages are read at one version"
        );
        seen.extend(page.items);
        if pages == 1 {
            // All three objects sort after the first page (ns-0 ...).
            server
                .delete(Kind::Pod, Some("ns-6"), "pod-1231")
                .expect("delete");
            server
                .create(pod("ns-6", "pod-9999", "node-a"))
                .expect("create");
            server
                .patch(
                    Kind::Pod,
                    Some("ns-5"),
                    "pod-1230",
                    json!({"metadata": {"labels": {"changed": "yes"}}}),
                )
                .expect("patch");
        }
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 13, "1234 pods in pages of 100");
    let names: BTreeSet<String> = seen.iter().map(key).collect();
    assert_eq!(seen.len(), 1234, "no duplicates");
    assert_eq!(
        names, originals,
        "the snapshot of the first page, not the changes made meanwhile"
    );
    let list_rv: u64 = first_rv
        .as_deref()
        .unwrap_or("")
        .parse()
        .expect("numeric resourceVersion");
    for pod in &seen {
        let rv: u64 = pod
            .resource_version()
            .expect("item resourceVersion")
            .parse()
            .expect("numeric");
        assert!(
            rv <= list_rv,
            "{} has version {rv}, newer than the list's {list_rv}",
            key(pod)
        );
        assert!(
            pod.uid().is_some() && pod.creation_timestamp().is_some(),
            "{} lacks uid/creationTimestamp",
            key(pod)
        );
    }
    let patched = seen
        .iter()
        .find(|p| key(*p) == "ns-5/pod-1230")
        .expect("patched pod listed");
    assert!(
        !patched.labels().contains_key("changed"),
        "listed in its state at the list's version"
    );

    let now = pods.list(&ListParams::default()).await.expect("fresh list");
    let now_names: BTreeSet<String> = now.items.iter().map(key).collect();
    assert!(now_names.contains("ns-6/pod-9999") && !now_names.contains("ns-6/pod-1231"));
    assert_eq!(server.requests(Verb::List, Kind::Pod), 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_create_update_patch_delete_and_errors_are_what_kube_expects() {
    let server = start();
    server.create(pod("a", "p", "node-a")).expect("seed");
    let client = client(&server).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "a");

    let got = pods.get("p").await.expect("get");
    let stored = server.get(Kind::Pod, Some("a"), "p").expect("stored");
    assert_eq!(
        got.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("node-a")
    );
    assert_eq!(got.uid().as_deref(), stored["metadata"]["uid"].as_str());
    assert_eq!(
        got.resource_version().as_deref(),
        stored["metadata"]["resourceVersion"].as_str()
    );
    assert_eq!(
        got.status.as_ref().and_then(|s| s.pod_ip.as_deref()),
        Some("10.244.0.10")
    );

    assert_eq!(
        api_status(pods.get("missing").await),
        (404, "NotFound".into())
    );
    assert!(pods.get_opt("missing").await.expect("get_opt").is_none());
    assert_eq!(server.requests(Verb::Get, Kind::Pod), 3);

    // Namespaces get the kubernetes.io/metadata.name label NamespaceSelectors rely on.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(namespace("new")).expect("namespace");
    let created = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    assert_eq!(
        created
            .labels()
            .get("kubernetes.io/metadata.name")
            .map(String::as_str),
        Some("new")
    );
    assert_eq!(
        api_status(namespaces.create(&PostParams::default(), &ns).await),
        (409, "AlreadyExists".into())
    );

    // Optimistic concurrency: a replace with a stale resourceVersion conflicts.
    let mut stale = pods.get("p").await.expect("get");
    let patched = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(patched.labels().get("x").map(String::as_str), Some("1"));
    assert_ne!(patched.resource_version(), stale.resource_version());
    stale.labels_mut().insert("y".into(), "2".into());
    assert_eq!(
        api_status(pods.replace("p", &PostParams::default(), &stale).await),
        (409, "Conflict".into())
    );
    let mut fresh = pods.get("p").await.expect("get");
    fresh.labels_mut().insert("y".into(), "2".into());
    let replaced = pods
        .replace("p", &PostParams::default(), &fresh)
        .await
        .expect("replace");
    assert_eq!(replaced.uid(), got.uid(), "uid survives updates");
    assert_eq!(
        server.get(Kind::Pod, Some("a"), "p").expect("stored")["metadata"]["labels"]["y"],
        "2"
    );

    // JSON patch is not supported: an honest 415 rather than a silent no-op.
    let json_patch = http::Request::patch("/api/v1/namespaces/a/pods/p")
        .header("Content-Type", "application/json-patch+json")
        .body(br#"[{"op":"add","path":"/metadata/labels/z","value":"3"}]"#.to_vec())
        .expect("request");
    assert_eq!(api_status(client.request_text(json_patch).await).0, 415);
    pods.delete("p", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(server.get(Kind::Pod, Some("a"), "p").is_none());
    assert_eq!(
        api_status(pods.delete("p", &DeleteParams::default()).await),
        (404, "NotFound".into())
    );

    // Errors of the control API are the same Status errors.
    assert!(matches!(
        server.create(namespace("new")),
        Err(ApiError::AlreadyExists { .. })
    ));
    assert!(matches!(
        server.create(namespace("Bad_Name")),
        Err(ApiError::Invalid { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_filter_lists_like_the_api_server() {
    let server = start();
    server
        .create_all([
            labelled_pod("a", "web", json!({"app": "web", "tier": "front"})),
            labelled_pod("a", "db", json!({"app": "db", "tier": "back"})),
            labelled_pod("a", "cache", json!({"app": "cache"})),
            labelled_pod("b", "web", json!({"app": "web"})),
            pod("b", "other-node", "node-b"),
        ])
        .expect("seed");
    let pods: Api<Pod> = Api::all(client(&server).await);
    let names = |list: kube::core::ObjectList<Pod>| list.items.iter().map(key).collect::<Vec<_>>();

    let cases = [
        ("app in (web,db),tier!=back", vec!["a/web", "b/web"]),
        ("app notin (web)", vec!["a/cache", "a/db", "b/other-node"]),
        ("tier", vec!["a/db", "a/web"]),
        ("!tier,app=web", vec!["b/web"]),
    ];
    for (selector, expected) in cases {
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .expect(selector);
        assert_eq!(names(list), expected, "labelSelector {selector}");
    }
    let on_b = pods
        .list(&ListParams::default().fields("spec.nodeName=node-b"))
        .await
        .expect("fields");
    assert_eq!(names(on_b), ["b/other-node"]);
    let not_b_in_a = pods
        .list(
            &ListParams::default()
                .fields("spec.nodeName!=node-b,metadata.namespace=a")
                .limit(1),
        )
        .await
        .expect("fields with limit");
    assert_eq!(names(not_b_in_a.clone()), ["a/cache"]);
    assert!(
        not_b_in_a.metadata.continue_.is_some(),
        "more matches follow"
    );

    assert_eq!(
        api_status(pods.list(&ListParams::default().fields("spec.foo=x")).await).0,
        400
    );
    assert_eq!(
        api_status(pods.list(&ListParams::default().labels("app in web")).await).0,
        400
    );
}

// ---- watchers ----

/// Init/InitApply/InitDone from one list, then Apply and Delete from one watch.
async fn watcher_lifecycle<K>(
    server: &Server,
    api: Api<K>,
    kind: Kind,
    object: fn(&str) -> Value,
    prefix: &str,
) where
    K: Resource + ResourceExt + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    server.create_all([object("a"), object("b")]).expect("seed");
    let mut events = watch(api, watcher::Config::default());
    expect_events(
        &mut events,
        &[
            "Init",
            &format!("InitApply {prefix}a"),
            &format!("InitApply {prefix}b"),
            "InitDone",
        ],
    )
    .await;
    server.create(object("c")).expect("create");
    let ns = kind.namespaced().then_some("w");
    server
        .patch(
            kind,
            ns,
            "c",
            json!({"metadata": {"labels": {"patched": "yes"}}}),
        )
        .expect("patch");
    server.delete(kind, ns, "a").expect("delete");
    let got = expect_events(
        &mut events,
        &[
            &format!("Apply {prefix}c"),
            &format!("Apply {prefix}c"),
            &format!("Delete {prefix}a"),
        ],
    )
    .await;
    let watcher::Event::Apply(patched) = &got[1] else {
        unreachable!("checked above")
    };
    assert_eq!(
        patched.labels().get("patched").map(String::as_str),
        Some("yes")
    );
    assert_eq!(server.requests(Verb::List, kind), 1, "one list");
    assert_eq!(server.requests(Verb::Watch, kind), 1, "then one watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_of_pods_nodes_namespaces_and_policies_list_once_then_follow_changes() {
    let server = start();
    let client = client(&server).await;
    watcher_lifecycle::<Pod>(
        &server,
        Api::all(client.clone()),
        Kind::Pod,
        |n| pod("w", n, "node-a"),
        "w/",
    )
    .await;
    watcher_lifecycle::<Node>(&server, Api::all(client.clone()), Kind::Node, node, "").await;
    watcher_lifecycle::<Namespace>(
        &server,
        Api::all(client.clone()),
        Kind::Namespace,
        namespace,
        "",
    )
    .await;
    watcher_lifecycle::<NetworkPolicy>(
        &server,
        Api::namespaced(client, "w"),
        Kind::NetworkPolicy,
        |n| policy("w", n),
        "w/",
    )
    .await;
}

/// The requests kube-runtime 5's default watcher makes, which the server must answer right:
/// a most-recent LIST in pages of 500, then a WATCH from the list's version with bookmarks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_watcher_lists_in_pages_of_500_then_watches_from_the_list_version() {
    let server = start();
    server
        .create_all((0..501).map(|i| pod("w", &format!("p-{i:03}"), "node-a")))
        .expect("seed");
    let list_rv = server.resource_version().to_string();
    let mut events = watch(
        Api::<Pod>::all(client(&server).await),
        watcher::Config::default(),
    );
    let (got, _) = take(&mut events, 503).await;
    assert_eq!(describe(&got[502]), "InitDone");
    eventually("the watch to be open", STEP, || {
        server.open_watches(Kind::Pod) == 1
    })
    .await;
    let pairs = |q: &[(String, String)]| {
        q.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
    };
    let log: Vec<Vec<String>> = server
        .request_log()
        .iter()
        .filter(|r| r.path == "/api/v1/pods")
        .map(|r| pairs(&r.query))
        .collect();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[0], ["limit=500"]);
    assert_eq!(log[1][0], "limit=500");
    assert!(log[1][1].starts_with("continue="), "{log:?}");
    assert_eq!(
        log[2],
        [
            "watch=true",
            "timeoutSeconds=290",
            "allowWatchBookmarks=true",
            &format!("resourceVersion={list_rv}")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflector_converges_while_objects_change_concurrently() {
    let server = Arc::new(start());
    server
        .create_all((0..200).map(|i| pod(&format!("ns-{}", i % 5), &format!("p-{i}"), "node-a")))
        .expect("seed");
    let (reader, writer) = reflector::store::<Pod>();
    let stream = reflector(
        writer,
        watcher(
            Api::all(client(&server).await),
            watcher::Config::default().page_size(50),
        ),
    );
    let driver = tokio::spawn(stream.for_each(|_| async {}));
    within("reflector ready", reader.wait_until_ready())
        .await
        .expect("ready");

    // Deterministic pseudo-random creates, patches and deletes from another thread.
    let mutator = server.clone();
    tokio::task::spawn_blocking(move || {
        let mut x: u64 = 12345;
        for step in 0..600 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let i = (x >> 33) % 300;
            let (ns, name) = (format!("ns-{}", i % 5), format!("p-{i}"));
            let result = match step % 3 {
                0 => mutator.apply(pod(&ns, &name, "node-a")).map(drop),
                1 => mutator
                    .patch(
                        Kind::Pod,
                        Some(&ns),
                        &name,
                        json!({"metadata": {"labels": {"step": step.to_string()}}}),
                    )
                    .map(drop),
                _ => mutator.delete(Kind::Pod, Some(&ns), &name).map(drop),
            };
            if let Err(err) = result {
                assert!(matches!(err, ApiError::NotFound { .. }), "{err}");
            }
        }
    })
    .await
    .expect("mutator thread");
    let want = server.keys(Kind::Pod);
    eventually(
        "the reflector store to equal the server's pods",
        STEP,
        || {
            let mut have: Vec<(String, String, String)> = reader
                .state()
                .iter()
                .map(|p| {
                    (
                        p.namespace().unwrap_or_default(),
                        p.name_any(),
                        p.resource_version().unwrap_or_default(),
                    )
                })
                .collect();
            have.sort();
            have == want
        },
    )
    .await;
    assert_eq!(
        server.requests(Verb::List, Kind::Pod),
        4,
        "200 pods in pages of 50, listed once"
    );
    driver.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_close_watches_the_watcher_resumes_without_losing_events_or_relisting() {
    let server = start();
    server
        .create_all(["a", "b", "c"].map(|n| pod("w", n, "node-a")))
        .expect("seed");
    let mut events = watch(
        Api::<Pod>::all(client(&server).await),
        watcher::Config::default(),
    );
    expect_events(
        &mut events,
        &[
            "Init",
            "InitApply w/a",
            "InitApply w/b",
            "InitApply w/c",
            "InitDone",
        ],
    )
    .await;
    eventually("the watch to be open", STEP, || {
        server.open_watches(Kind::Pod) == 1
    })
    .await;

    // Changes land while no watch is open: the new watch must deliver them from its version.
    server.pause();
    server.close_watches();
    server.create(pod("w", "d", "node-a")).expect("create");
    server.delete(Kind::Pod, Some("w"), "a").expect("delete");
    server
        .patch(
            Kind::Pod,
            Some("w"),
            "b",
            json!({"metadata": {"labels": {"x": "y"}}}),
        )
        .expect("patch");
    eventually("the old watch to end", STEP, || {
        server.open_watches(Kind::Pod) == 0
    })
    .await;
    server.resume();
    expect_events(&mut events, &["Apply w/d", "Delete w/a", "Apply w/b"]).await;
    assert_eq!(
        server.requests(Verb::List, Kind::Pod),
        1,
        "resumed, not re-listed"
    );
    assert_eq!(server.requests(Verb::Watch, Kind::Pod), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_resumes_the_watch_from_its_version() {
    let server = start();
    server
        .create_all(["a", "b"].map(|n| pod("w", n, "node-a")))
        .expect("seed");
    let mut events = watch(
        Api::<Pod>::all(client(&server).await),
        watcher::Config::default(),
    );
    expect_events(
        &mut events,
        &["Init", "InitApply w/a", "InitApply w/b", "InitDone"],
    )
    .await;
    eventually("the watch to be open", STEP, || {
        server.open_watches(Kind::Pod) == 1
    })
    .await;
    server.pause();
    server.drop_connections();
    server.create(pod("w", "c", "node-a")).expect("create");
    server.delete(Kind::Pod, Some("w"), "b").expect("delete");
    server.resume();
    // A cut mid-stream may surface as a watcher error first; the events must still all come.
    let (got, _errors) = take(&mut events, 2).await;
    assert_eq!(
        got.iter().map(describe).collect::<Vec<_>>(),
        ["Apply w/c", "Delete w/b"]
    );
    assert_eq!(
        server.requests(Verb::List, Kind::Pod),
        1,
        "resumed, not re-listed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_history_makes_the_watcher_relist_and_converge() {
    let server = start();
    server
        .create_all(["a", "b"].map(|n| pod("w", n, "node-a")))
        .expect("seed");
    let mut events = watch(
        Api::<Pod>::all(client(&server).await),
        watcher::Config::default(),
    );
    expect_events(
        &mut events,
        &["Init", "InitApply w/a", "InitApply w/b", "InitDone"],
    )
    .await;
    eventually("the watch to be open", STEP, || {
        server.open_watches(Kind::Pod) == 1
    })
    .await;

    server.pause();
    server.close_watches();
    server.create(pod("w", "c", "node-a")).expect("create");
    server.delete(Kind::Pod, Some("w"), "a").expect("delete");
    server.expire_history();
    server.resume();
    // The resumed watch gets an ERROR 410 event; the watcher reports it and re-lists.
    let (got, errors) = take(&mut events, 4).await;
    assert_eq!(
        got.iter().map(describe).collect::<Vec<_>>(),
        ["Init", "InitApply w/b", "InitApply w/c", "InitDone"]
    );
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, watcher::Error::WatchError(s) if s.code == 410)),
        "a 410 watch error before the re-list, got {errors:?}"
    );
    assert_eq!(server.requests(Verb::List, Kind::Pod), 2, "re-listed once");
    server
        .create(pod("w", "d", "node-a"))
        .expect("create after the re-list");
    expect_events(&mut events, &["Apply w/d"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_falls_behind_a_compacted_history_relists() {
    nftpol_e2e::init_logging();
    let server = Server::builder().history_limit(10).start().expect("server");
    server
        .create_all(["a", "b"].map(|n| pod("w", n, "node-a")))
        .expect("seed");
    let mut events = watch(
        Api::<Pod>::all(client(&server).await),
        watcher::Config::default(),
    );
    expect_events(
        &mut events,
        &["Init", "InitApply w/a", "InitApply w/b", "InitDone"],
    )
    .await;
    eventually("the watch to be open", STEP, || {
        server.open_watches(Kind::Pod) == 1
    })
    .await;
    // The open watch sends nothing while paused; meanwhile 20 changes push the first ones
    // out of a 10-change history, so the watch cannot continue.
    server.pause();
    server
        .create_all((0..20).map(|i| pod("w", &format!("n-{i:02}"), "node-a")))
        .expect("burst");
    server.resume();
    let (got, errors) = take(&mut events, 24).await;
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, watcher::Error::WatchError(s) if s.code == 410)),
        "410 on the open watch, got {errors:?}"
    );
    assert_eq!(describe(&got[0]), "Init");
    assert_eq!(describe(&got[23]), "InitDone");
    assert_eq!(server.requests(Verb::List, Kind::Pod), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_selector_watch_sees_only_its_nodes_pods() {
    let server = start();
    server
        .create_all([
            pod("a", "on-a", "node-a"),
            pod("a", "on-b", "node-b"),
            pod("b", "on-a-2", "node-a"),
        ])
        .expect("seed");
    let config = watcher::Config::default().fields("spec.nodeName=node-a");
    let mut events = watch(Api::<Pod>::all(client(&server).await), config);
    expect_events(
        &mut events,
        &["Init", "InitApply a/on-a", "InitApply b/on-a-2", "InitDone"],
    )
    .await;
    server
        .create(pod("a", "new-on-b", "node-b"))
        .expect("create on b");
    server
        .delete(Kind::Pod, Some("a"), "on-b")
        .expect("delete on b");
    server
        .create(pod("a", "new-on-a", "node-a"))
        .expect("create on a");
    server
        .delete(Kind::Pod, Some("a"), "on-a")
        .expect("delete on a");
    // An object that stops matching leaves the watch as a deletion.
    server
        .patch(
            Kind::Pod,
            Some("b"),
            "on-a-2",
            json!({"spec": {"nodeName": "node-b"}}),
        )
        .expect("move");
    expect_events(
        &mut events,
        &["Apply a/new-on-a", "Delete a/on-a", "Delete b/on-a-2"],
    )
    .await;
    let watch_query = server
        .request_log()
        .into_iter()
        .find(|r| r.resource == Some((Verb::Watch, Kind::Pod)))
        .expect("a watch request");
    assert!(
        watch_query
            .query
            .contains(&("fieldSelector".into(), "spec.nodeName=node-a".into())),
        "{watch_query}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_list_watcher_needs_no_list_call() {
    let server = start();
    server
        .create_all(["a", "b"].map(|n| pod("w", n, "node-a")))
        .expect("seed");
    let config = watcher::Config::default().streaming_lists();
    let mut events = watch(Api::<Pod>::all(client(&server).await), config);
    expect_events(
        &mut events,
        &["Init", "InitApply w/a", "InitApply w/b", "InitDone"],
    )
    .await;
    server.create(pod("w", "c", "node-a")).expect("create");
    expect_events(&mut events, &["Apply w/c"]).await;
    assert_eq!(server.requests(Verb::List, Kind::Pod), 0);
    assert_eq!(server.requests(Verb::Watch, Kind::Pod), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_answer_410_for_watches_and_continue_tokens() {
    let server = start();
    server
        .create_all(["a", "b", "c"].map(|n| pod("w", n, "node-a")))
        .expect("seed");
    let pods: Api<Pod> = Api::all(client(&server).await);
    let first = pods
        .list(&ListParams::default().limit(1))
        .await
        .expect("first page");
    let token = first.metadata.continue_.clone().expect("continue token");
    let old_rv = first.metadata.resource_version.clone().expect("rv");
    server.expire_history();

    assert_eq!(
        api_status(
            pods.list(&ListParams::default().limit(1).continue_token(&token))
                .await
        ),
        (410, "Expired".into())
    );
    // A watch from a compacted version: HTTP 200, then one ERROR event with a 410 Status.
    let mut stream = pods
        .watch(&WatchParams::default(), &old_rv)
        .await
        .expect("watch starts")
        .boxed();
    match within("the error event", stream.try_next()).await {
        Ok(Some(WatchEvent::Error(status))) => {
            assert_eq!(
                (status.code, status.reason.as_str()),
                (410, "Expired"),
                "{status:?}"
            );
        }
        other => panic!("expected an ERROR 410 event, got {other:?}"),
    }
    // The current version is fine.
    let fresh = pods.list(&ListParams::default()).await.expect("fresh list");
    assert_eq!(fresh.items.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_end_at_their_timeout_and_carry_bookmarks() {
    nftpol_e2e::init_logging();
    let server = Server::builder()
        .bookmark_interval(Duration::from_millis(100))
        .start()
        .expect("server");
    let pods: Api<Pod> = Api::all(client(&server).await);
    let rv = pods
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let started = Instant::now();
    let stream = pods
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .expect("watch");
    let events: Vec<_> = within("a 1 s watch", stream.collect::<Vec<_>>()).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(1), "ended after {elapsed:?}");
    let bookmarks = events
        .iter()
        .filter(|e| matches!(e, Ok(WatchEvent::Bookmark(_))))
        .count();
    assert!(
        bookmarks >= 3,
        "bookmarks every 100 ms, got {bookmarks} in {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_the_recorder_and_the_core_api_are_recorded() {
    let server = start();
    server.create(pod("a", "p", "node-a")).expect("seed");
    let client = client(&server).await;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "nftpol-agent".into(),
            instance: Some("node-a".into()),
        },
    );
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some("a".into()),
        name: Some("p".into()),
        ..Default::default()
    };
    let event = RecorderEvent {
        type_: EventType::Warning,
        reason: "PolicyRejected".into(),
        note: Some("policy a/deny has an invalid port".into()),
        action: "Sync".into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await.expect("publish");
    recorder
        .publish(&event, &reference)
        .await
        .expect("publish again (series)");

    let core: Api<CoreEvent> = Api::namespaced(client, "a");
    let core_event: CoreEvent = serde_json::from_value(json!({
        "metadata": { "name": "p.1", "namespace": "a" },
        "involvedObject": { "kind": "Pod", "name": "p", "namespace": "a" },
        "reason": "Programmed", "message": "table inet nftpol updated", "type": "Normal",
    }))
    .expect("core event");
    core.create(&PostParams::default(), &core_event)
        .await
        .expect("create core event");

    let events = server.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    let core = &events[0];
    assert_eq!(
        (core["apiVersion"].as_str(), core["reason"].as_str()),
        (Some("v1"), Some("Programmed"))
    );
    let recorded = &events[1];
    assert_eq!(recorded["apiVersion"], "events.k8s.io/v1");
    assert_eq!(recorded["reason"], "PolicyRejected");
    assert_eq!(recorded["note"], "policy a/deny has an invalid port");
    assert_eq!(recorded["regarding"]["name"], "p");
    assert_eq!(recorded["reportingController"], "nftpol-agent");
    assert_eq!(
        recorded["series"]["count"], 2,
        "the repeat patched the series"
    );
    assert_eq!(server.requests(Verb::Create, Kind::Event), 1);
    assert_eq!(server.requests(Verb::Patch, Kind::Event), 1);
    assert_eq!(server.requests(Verb::Create, Kind::CoreEvent), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_pause_stall_responses() {
    let server = start();
    server.create(pod("a", "p", "node-a")).expect("seed");
    let pods: Api<Pod> = Api::namespaced(client(&server).await, "a");
    pods.get("p").await.expect("warm up the connection");

    server.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    pods.get("p").await.expect("get");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    server.set_latency(Duration::ZERO);

    server.pause();
    let stalled = tokio::time::timeout(Duration::from_millis(500), pods.get("p")).await;
    assert!(stalled.is_err(), "no answer while paused");
    server.resume();
    within("a get after resume", pods.get("p"))
        .await
        .expect("get after resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_the_served_resources() {
    let server = start();
    let client = client(&server).await;
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "35")
    );
    for discovery in [
        kube::Discovery::new(client.clone())
            .run()
            .await
            .expect("legacy discovery"),
        kube::Discovery::new(client.clone())
            .run_aggregated()
            .await
            .expect("aggregated discovery"),
    ] {
        for (group, version, kind, plural) in [
            ("", "v1", "Pod", "pods"),
            ("", "v1", "Namespace", "namespaces"),
            (
                "networking.k8s.io",
                "v1",
                "NetworkPolicy",
                "networkpolicies",
            ),
            ("events.k8s.io", "v1", "Event", "events"),
        ] {
            let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
            let (resource, caps) = discovery
                .resolve_gvk(&gvk)
                .unwrap_or_else(|| panic!("{gvk:?} discovered"));
            assert_eq!(resource.plural, plural);
            assert_eq!(
                caps.scope == kube::discovery::Scope::Namespaced,
                kind != "Namespace",
                "{kind}"
            );
        }
    }
}

#[test]
fn shutdown_stops_serving_and_removes_the_kubeconfig() {
    let server = start();
    let path = server.kubeconfig_path().to_path_buf();
    assert!(path.is_file());
    let addr = server.addr();
    server.shutdown();
    assert!(!path.exists(), "kubeconfig removed");
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
        "port closed"
    );
}

// ---- scale ----

fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A pod as a cluster would have it (~1 KiB of JSON).
fn realistic_pod(i: usize) -> Value {
    let ns = format!("tenant-{}", i % 10_000);
    let name = format!("app-{}-7d9c6b5f4-{:05}", i % 50, i);
    let tier = ["web", "api", "db"][i % 3];
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns,
            "labels": { "app": format!("app-{}", i % 50), "tier": tier, "pod-template-hash": "7d9c6b5f4" },
            "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("app-{}-7d9c6b5f4", i % 50),
                "uid": "3c0e7a7e-5b7c-4f51-9d3c-6a4c8f1f2e10", "controller": true, "blockOwnerDeletion": true }],
        },
        "spec": {
            "nodeName": format!("node-{}", i % 100),
            "containers": [{ "name": "app", "image": "registry.example.com/app:1.2.3",
                "ports": [{ "name": "http", "containerPort": 8080, "protocol": "TCP" }, { "name": "metrics", "containerPort": 9090, "protocol": "TCP" }],
                "resources": { "requests": { "cpu": "100m", "memory": "128Mi" } } }],
            "serviceAccountName": "default", "restartPolicy": "Always",
        },
        "status": {
            "phase": "Running",
            "podIP": format!("10.{}.{}.{}", 64 + i / 65_536, (i / 256) % 256, i % 256),
            "podIPs": [{ "ip": format!("10.{}.{}.{}", 64 + i / 65_536, (i / 256) % 256, i % 256) }],
            "hostIP": format!("10.0.{}.{}", (i % 100) / 256, i % 100),
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scale figures: run with --release -- --ignored --nocapture"]
async fn scale_150k_pods_10k_namespaces_10k_policies() {
    let (rss_before, _) = rss_kib();
    let server = start();
    let started = Instant::now();
    server
        .create_all((0..10_000).map(|i| namespace(&format!("tenant-{i}"))))
        .expect("namespaces");
    server
        .create_all((0..10_000).map(|i| policy(&format!("tenant-{i}"), "default-deny")))
        .expect("policies");
    server
        .create_all((0..150_000).map(realistic_pod))
        .expect("pods");
    let load = started.elapsed();
    let (rss_loaded, _) = rss_kib();
    let stats = server.stats();
    println!(
        "load: {} objects in {load:.2?}; RSS {} MiB -> {} MiB (+{} MiB; stored JSON {} MiB, {} B/object; history {} changes)",
        stats.objects,
        rss_before / 1024,
        rss_loaded / 1024,
        (rss_loaded - rss_before) / 1024,
        stats.json_bytes >> 20,
        stats.json_bytes / stats.objects,
        stats.history,
    );

    let client = client(&server).await;
    // Pages of 500 through a plain keep-alive HTTP client: what the server costs.
    let started = Instant::now();
    let (pages, bytes) = raw_paginated_list(server.addr(), "/api/v1/pods", 500);
    println!(
        "server: {pages} pages of 500 pods, {} MiB, in {:.2?} (plain HTTP client, no decoding)",
        bytes >> 20,
        started.elapsed()
    );

    // Typed list through kube, pages of 500.
    let pods: Api<Pod> = Api::all(client.clone());
    let started = Instant::now();
    let (mut token, mut count) = (None::<String>, 0);
    loop {
        let mut params = ListParams::default().limit(500);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = pods.list(&params).await.expect("page");
        count += page.items.len();
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(count, 150_000);
    println!(
        "kube Api<Pod>::list: {count} pods in pages of 500 in {:.2?}",
        started.elapsed()
    );

    // The agent's path: reflectors over all three kinds until ready.
    let started = Instant::now();
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let (ns_store, ns_writer) = reflector::store::<Namespace>();
    let (np_store, np_writer) = reflector::store::<NetworkPolicy>();
    let drivers = [
        tokio::spawn(
            reflector(
                pod_writer,
                watcher(Api::all(client.clone()), watcher::Config::default()),
            )
            .for_each(|_| async {}),
        ),
        tokio::spawn(
            reflector(
                ns_writer,
                watcher(Api::all(client.clone()), watcher::Config::default()),
            )
            .for_each(|_| async {}),
        ),
        tokio::spawn(
            reflector(
                np_writer,
                watcher(Api::all(client.clone()), watcher::Config::default()),
            )
            .for_each(|_| async {}),
        ),
    ];
    let ready = async {
        pod_store.wait_until_ready().await.expect("pods ready");
        ns_store.wait_until_ready().await.expect("namespaces ready");
        np_store.wait_until_ready().await.expect("policies ready");
    };
    tokio::time::timeout(Duration::from_secs(600), ready)
        .await
        .expect("reflectors ready in time");
    assert_eq!(
        (
            pod_store.state().len(),
            ns_store.state().len(),
            np_store.state().len()
        ),
        (150_000, 10_000, 10_000)
    );
    println!(
        "reflectors (pods, namespaces, policies) ready in {:.2?}",
        started.elapsed()
    );
    let started = Instant::now();
    server.create(realistic_pod(150_000)).expect("one more pod");
    eventually(
        "the new pod in the reflector",
        Duration::from_secs(10),
        || pod_store.state().len() == 150_001,
    )
    .await;
    println!(
        "a change reached the reflector in {:.2?}",
        started.elapsed()
    );
    let (rss_end, peak) = rss_kib();
    println!(
        "RSS at the end {} MiB, peak {} MiB (server + client caches in one process)",
        rss_end / 1024,
        peak / 1024
    );
    println!("requests: {:?}", server.request_counts());
    for d in drivers {
        d.abort();
    }
}

/// Lists `path` in pages of `limit` over one keep-alive connection with std only; returns
/// (pages, body bytes). Reads only the continue token of each page.
fn raw_paginated_list(addr: std::net::SocketAddr, path: &str, limit: usize) -> (usize, usize) {
    use std::io::{BufRead, BufReader, Read, Write};
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let (mut token, mut pages, mut bytes) = (String::new(), 0, 0);
    loop {
        let mut target = format!("{path}?limit={limit}");
        if !token.is_empty() {
            target.push_str(&format!("&continue={token}"));
        }
        // One write: several small ones would meet Nagle + delayed ACK (40 ms each).
        let request = format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n");
        writer.write_all(request.as_bytes()).expect("send");
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            if line.trim().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        pages += 1;
        bytes += length;
        let head = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        token = match head.split_once("\"continue\":\"") {
            Some((_, rest)) => rest.split('"').next().unwrap_or_default().to_string(),
            None => return (pages, bytes),
        };
    }
}
