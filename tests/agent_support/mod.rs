//! Test fixtures for the agent: a mock Kubernetes API server behind `tower_test`, a fake
//! dataplane that tests can inspect, slow down, break and tamper with while the engine owns it,
//! fake network interfaces, object builders and a CNI client.
//!
//! Address plan used by the tests: node `node-a` owns pod range 10.1.0.0/24; namespace `prod`
//! holds `web` (10.1.0.10, app=web, local), `frontend` (10.1.0.11, app=frontend, local) and
//! `intruder` (10.1.0.12, app=other, local); `remote` (10.2.0.20, app=frontend) runs on
//! `node-b` (10.2.0.0/24).
#![allow(dead_code)] // each test file uses a different part of it

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::mpsc as fmpsc;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};

use nftpol::agent::attachments::Links;
use nftpol::dataplane::{ApplyReport, Dataplane, DataplaneError, Fake};
use nftpol::nft::model::Table;
use nftpol::nft::trace::{Packet, TraceHook, trace};
use nftpol::nft::transaction::Transaction;
use nftpol_cni::protocol::{Attachment, AttachmentId, Request, Response};

pub const NODE: &str = "node-a";
pub const TABLE: &str = "nftpol";

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ----- fake dataplane ------------------------------------------------------------------------

#[derive(Default)]
pub struct FakeState {
    pub fake: Fake,
    /// Applies wait this long before committing.
    pub delay: Duration,
    /// The next N applies fail (nothing is committed).
    pub fail_next: usize,
    /// Base chains on these devices are refused with ENOENT, as kernels before 6.16 do for
    /// devices that do not exist.
    pub missing_devices: HashSet<String>,
    pub dumps: usize,
    pub failed_applies: usize,
}

/// A [`Fake`] shared between the engine (which owns a clone) and the test.
#[derive(Clone, Default)]
pub struct SharedFake(pub Arc<Mutex<FakeState>>);

impl SharedFake {
    pub fn new() -> SharedFake {
        SharedFake::default()
    }

    pub fn with_table(t: Table) -> SharedFake {
        let s = SharedFake::default();
        s.state().fake = Fake::with_table(t);
        s
    }

    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn table(&self) -> Option<Table> {
        self.state().fake.table(TABLE).cloned()
    }

    pub fn applied(&self) -> Vec<Transaction> {
        self.state().fake.applied().to_vec()
    }

    pub fn dumps(&self) -> usize {
        self.state().dumps
    }

    /// A factory for the engine.
    pub fn factory(&self) -> nftpol::agent::engine::DataplaneFactory {
        let me = self.clone();
        Box::new(move || Ok(Box::new(me) as Box<dyn Dataplane>))
    }
}

impl Dataplane for SharedFake {
    fn apply(&mut self, tx: &Transaction) -> Result<ApplyReport, DataplaneError> {
        let delay = self.state().delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut s = self.state();
        if tx.is_empty() {
            return Ok(ApplyReport::default());
        }
        if s.fail_next > 0 {
            s.fail_next -= 1;
            s.failed_applies += 1;
            return Err(DataplaneError::Kernel {
                operation: "test: injected failure".into(),
                errno: libc::EINVAL,
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        for c in &tx.add_chains {
            if let Some(b) = &c.base
                && let nftpol::nft::model::Hook::Ingress { device } = &b.hook
                && s.missing_devices.contains(device)
            {
                s.failed_applies += 1;
                return Err(DataplaneError::Kernel {
                    operation: format!("add chain {}", c.name),
                    errno: libc::ENOENT,
                    source: std::io::Error::from_raw_os_error(libc::ENOENT),
                });
            }
        }
        s.fake.apply(tx)
    }

    fn dump(&mut self, table: &str) -> Result<Option<Table>, DataplaneError> {
        let mut s = self.state();
        s.dumps += 1;
        s.fake.dump(table)
    }
}

/// Interfaces that exist unless marked missing.
#[derive(Clone, Default)]
pub struct FakeLinks(pub Arc<Mutex<HashSet<String>>>);

impl FakeLinks {
    pub fn remove(&self, ifname: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ifname.to_string());
    }
}

impl Links for FakeLinks {
    fn exists(&self, ifname: &str) -> bool {
        !self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(ifname)
    }
}

// ----- what users care about: packets ---------------------------------------------------------

/// Whether a new TCP connection from `src` to `dst:port`, forwarded by the node, passes.
pub fn tcp_allowed(table: &Table, src: &str, dst: &str, port: u16) -> bool {
    trace(
        table,
        TraceHook::Forward,
        &Packet::tcp(ip(src), ip(dst), port),
    )
    .expect("trace")
    .accepted()
}

// ----- object builders (JSON as the API server sends it) --------------------------------------

pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": labels}})
}

pub fn node(name: &str, cidr: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name},
           "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
}

pub fn pod(ns: &str, name: &str, node: &str, app: &str, pod_ip: Option<&str>) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}, "uid": format!("uid-{name}")},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x",
                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"phase": "Running"}});
    if let Some(a) = pod_ip {
        p["status"]["podIP"] = json!(a);
        p["status"]["podIPs"] = json!([{"ip": a}]);
    }
    p
}

/// Ingress to `app=<target>` from `app=<from>` on TCP `port`.
pub fn allow_from(ns: &str, name: &str, target: &str, from: &str, port: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": {"matchLabels": {"app": target}},
                 "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from}}}],
                              "ports": [{"protocol": "TCP", "port": port}]}]}})
}

/// The standard cluster of the address plan.
pub fn standard_cluster() -> Vec<Value> {
    vec![
        namespace("prod", json!({"team": "a"})),
        node(NODE, "10.1.0.0/24"),
        node("node-b", "10.2.0.0/24"),
        pod("prod", "web", NODE, "web", Some("10.1.0.10")),
        pod("prod", "frontend", NODE, "frontend", Some("10.1.0.11")),
        pod("prod", "intruder", NODE, "other", Some("10.1.0.12")),
        pod("prod", "remote", "node-b", "frontend", Some("10.2.0.20")),
    ]
}

/// What `nftpol render` prints for these objects (the file-driven path to the same compiler).
pub fn render(objects: &[Value]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cluster.json");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    std::fs::write(&path, serde_json::to_vec(&list).expect("json")).expect("write");
    nftpol::cli::render(&nftpol::cli::Options {
        node: NODE.into(),
        paths: vec![path],
        table: TABLE.into(),
    })
    .expect("render")
}

pub fn text(t: &Table) -> String {
    nftpol::nft::text::render(t)
}

// ----- CNI ------------------------------------------------------------------------------------

pub fn attachment(
    container: &str,
    ns: &str,
    name: &str,
    veth: Option<&str>,
    ips: &[&str],
) -> Attachment {
    Attachment {
        id: AttachmentId {
            container_id: container.into(),
            ifname: "eth0".into(),
        },
        namespace: ns.into(),
        name: name.into(),
        uid: None,
        netns: format!("/run/netns/{container}"),
        host_interface: veth.map(str::to_string),
        ips: ips.iter().map(|s| ip(s)).collect(),
    }
}

/// One request over the unix socket, as the plugin sends it.
pub async fn cni(socket: &Path, req: &Request) -> Response {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect to the agent socket");
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req).expect("json");
    line.push(b'\n');
    w.write_all(&line).await.expect("send request");
    let mut answer = String::new();
    BufReader::new(r)
        .read_line(&mut answer)
        .await
        .expect("read answer");
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("bad answer {answer:?}: {e}"))
}

// ----- mock API server ------------------------------------------------------------------------

type Body = BoxBody<Bytes, Infallible>;
type Handle = tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<Body>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    NetworkPolicy,
}

impl Kind {
    fn of(v: &Value) -> Kind {
        match v["kind"].as_str() {
            Some("Namespace") => Kind::Namespace,
            Some("Node") => Kind::Node,
            Some("Pod") => Kind::Pod,
            Some("NetworkPolicy") => Kind::NetworkPolicy,
            other => panic!("mock API: unsupported kind {other:?}"),
        }
    }

    fn list_kind(self) -> &'static str {
        match self {
            Kind::Namespace => "NamespaceList",
            Kind::Node => "NodeList",
            Kind::Pod => "PodList",
            Kind::NetworkPolicy => "NetworkPolicyList",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            _ => "v1",
        }
    }
}

type Key = (Kind, String, String);
type FrameSender = fmpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;

#[derive(Default)]
struct ApiState {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change: (resourceVersion, kind, watch event).
    log: Vec<(u64, Kind, Value)>,
    /// Oldest resourceVersion a watch may resume from (older: 410 Gone).
    oldest_rv: u64,
    watchers: Vec<(Kind, FrameSender)>,
    held_lists: HashSet<Kind>,
    parked: Vec<(Kind, tower_test::mock::SendResponse<http::Response<Body>>)>,
    /// Objects served by GET but left out of lists and watches (the watch is "late").
    hidden: HashSet<Key>,
    /// Events POSTed (events.k8s.io/v1).
    pub events: Vec<Value>,
    /// "METHOD path?query" of every request.
    pub requests: Vec<String>,
}

/// A small in-memory API server: lists, watches (streamed), GET of pods, Event creation.
#[derive(Clone, Default)]
pub struct MockApi(Arc<Mutex<ApiState>>);

impl MockApi {
    /// A client talking to a new mock server.
    pub fn start() -> (MockApi, kube::Client) {
        let (service, handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<Body>>();
        let api = MockApi::default();
        tokio::spawn(api.clone().serve(handle));
        (api, kube::Client::new(service, "default"))
    }

    fn state(&self) -> MutexGuard<'_, ApiState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates or updates objects (bumping resourceVersion, notifying watches).
    pub fn apply_all(&self, objects: &[Value]) {
        for o in objects {
            self.apply(o.clone());
        }
    }

    pub fn apply(&self, mut obj: Value) {
        let kind = Kind::of(&obj);
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = obj["metadata"]["name"].as_str().expect("name").to_string();
        let mut s = self.state();
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{name}"));
        }
        let key = (kind, ns, name);
        let ty = if s.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.objects.insert(key.clone(), obj.clone());
        if !s.hidden.contains(&key) {
            s.publish(rv, kind, json!({"type": ty, "object": obj}));
        }
    }

    pub fn delete(&self, kind: Kind, ns: &str, name: &str) {
        let mut s = self.state();
        let key = (kind, ns.to_string(), name.to_string());
        let Some(mut obj) = s.objects.remove(&key) else {
            return;
        };
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if !s.hidden.contains(&key) {
            s.publish(rv, kind, json!({"type": "DELETED", "object": obj}));
        }
    }

    /// Lists of `kind` are not answered until [`MockApi::release`].
    pub fn hold(&self, kind: Kind) {
        self.state().held_lists.insert(kind);
    }

    pub fn release(&self, kind: Kind) {
        let mut s = self.state();
        s.held_lists.remove(&kind);
        let parked = std::mem::take(&mut s.parked);
        for (k, send) in parked {
            if k == kind {
                let body = s.list_body(k);
                send.send_response(ok(body));
            } else {
                s.parked.push((k, send));
            }
        }
    }

    /// The object exists (GET finds it) but lists and watches do not show it.
    pub fn hide(&self, kind: Kind, ns: &str, name: &str) {
        self.state()
            .hidden
            .insert((kind, ns.to_string(), name.to_string()));
    }

    /// Ends every watch and forgets the history, so watchers must relist (410 Gone).
    pub fn expire_watches(&self) {
        let mut s = self.state();
        s.oldest_rv = s.rv + 1;
        s.watchers.clear();
    }

    pub fn events(&self) -> Vec<Value> {
        self.state().events.clone()
    }

    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    async fn serve(self, mut handle: Handle) {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let path = parts.uri.path().to_string();
            let query: HashMap<String, String> = parts
                .uri
                .query()
                .unwrap_or("")
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            self.state().requests.push(format!(
                "{} {}?{}",
                parts.method,
                path,
                parts.uri.query().unwrap_or("")
            ));
            let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
            let collection = match segs.as_slice() {
                ["api", "v1", "pods"] => Some(Kind::Pod),
                ["api", "v1", "namespaces"] => Some(Kind::Namespace),
                ["api", "v1", "nodes"] => Some(Kind::Node),
                ["apis", "networking.k8s.io", "v1", "networkpolicies"] => Some(Kind::NetworkPolicy),
                _ => None,
            };
            if let Some(kind) = collection {
                let watch = query.get("watch").is_some_and(|v| v == "true" || v == "1");
                if watch {
                    let from: u64 = query
                        .get("resourceVersion")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    send.send_response(self.watch(kind, from));
                } else {
                    let mut s = self.state();
                    if s.held_lists.contains(&kind) {
                        s.parked.push((kind, send));
                    } else {
                        let body = s.list_body(kind);
                        send.send_response(ok(body));
                    }
                }
                continue;
            }
            match segs.as_slice() {
                ["api", "v1", "namespaces", ns, "pods", name]
                    if parts.method == http::Method::GET =>
                {
                    let key = (Kind::Pod, ns.to_string(), name.to_string());
                    let found = self.state().objects.get(&key).cloned();
                    match found {
                        Some(p) => send.send_response(ok(p)),
                        None => send.send_response(status(
                            404,
                            "NotFound",
                            &format!("pods \"{name}\" not found"),
                        )),
                    }
                }
                ["apis", "events.k8s.io", "v1", "namespaces", _ns, "events"]
                    if parts.method == http::Method::POST =>
                {
                    let bytes = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let ev: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    self.state().events.push(ev.clone());
                    let mut r = ok(ev);
                    *r.status_mut() = http::StatusCode::CREATED;
                    send.send_response(r);
                }
                _ => send.send_response(status(
                    404,
                    "NotFound",
                    &format!("mock API: no route for {path}"),
                )),
            }
        }
    }

    fn watch(&self, kind: Kind, from: u64) -> http::Response<Body> {
        let mut s = self.state();
        let (tx, rx) = fmpsc::unbounded();
        if from < s.oldest_rv {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "reason": "Expired", "code": 410,
                "message": "too old resource version"}});
            let _ = tx.unbounded_send(Ok(frame(&gone)));
            drop(tx);
        } else {
            for (rv, k, ev) in &s.log {
                if *k == kind && *rv > from {
                    let _ = tx.unbounded_send(Ok(frame(ev)));
                }
            }
            s.watchers.push((kind, tx));
        }
        let mut r = http::Response::new(StreamBody::new(rx).boxed());
        *r.status_mut() = http::StatusCode::OK;
        r
    }
}

impl ApiState {
    fn publish(&mut self, rv: u64, kind: Kind, ev: Value) {
        self.log.push((rv, kind, ev.clone()));
        self.watchers
            .retain(|(k, tx)| *k != kind || tx.unbounded_send(Ok(frame(&ev))).is_ok());
    }

    fn list_body(&self, kind: Kind) -> Value {
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(k, _)| k.0 == kind && !self.hidden.contains(*k))
            .map(|(_, v)| v.clone())
            .collect();
        json!({"apiVersion": kind.api_version(), "kind": kind.list_kind(),
               "metadata": {"resourceVersion": self.rv.to_string()}, "items": items})
    }
}

fn frame(ev: &Value) -> Frame<Bytes> {
    let mut line = serde_json::to_vec(ev).unwrap_or_default();
    line.push(b'\n');
    Frame::data(Bytes::from(line))
}

fn ok(v: Value) -> http::Response<Body> {
    let bytes = serde_json::to_vec(&v).unwrap_or_default();
    http::Response::new(Full::new(Bytes::from(bytes)).boxed())
}

fn status(code: u16, reason: &str, message: &str) -> http::Response<Body> {
    let mut r = ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "reason": reason, "message": message, "code": code}));
    *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::NOT_FOUND);
    r
}
