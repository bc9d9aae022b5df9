//! Serving one connection: routing Kubernetes API paths to the store, list pages, and watch
//! streams.
//!
//! Each connection has its own thread and handles one request at a time (HTTP/1.1
//! keep-alive, as hyper uses it). A watch occupies its connection until it ends; its thread
//! pulls changes from the shared history after its cursor, so a slow client only slows
//! itself and no per-watch queue can grow.

use std::io::BufReader;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::http::{self, HttpError, Request};
use super::kinds::{self, Kind};
use super::meta;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{ApiError, Change, ChangeType, Obj, Preconditions};
use super::{REQUEST_LOG_LIMIT, RequestRecord, Shared, Verb};

const JSON: &str = "application/json";
const AGGREGATED_DISCOVERY: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
/// Watch events per chunk (and per lock acquisition).
const WATCH_BATCH: usize = 1000;

/// What a path names.
#[derive(Debug)]
enum Target {
    Version,
    CoreVersions,
    GroupList,
    Group(String),
    Resources(String, String),
    Collection {
        kind: Kind,
        namespace: Option<String>,
    },
    Object {
        kind: Kind,
        namespace: Option<String>,
        name: String,
    },
}

fn route(path: &str) -> Option<Target> {
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| http::percent_decode(s, false))
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Some(Target::Version),
        ["api"] => return Some(Target::CoreVersions),
        ["apis"] => return Some(Target::GroupList),
        ["apis", group] => return Some(Target::Group((*group).to_string())),
        ["api", version] => return Some(Target::Resources(String::new(), (*version).to_string())),
        ["apis", group, version] => {
            return Some(Target::Resources(
                (*group).to_string(),
                (*version).to_string(),
            ));
        }
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let resource = |plural: &str| Kind::from_resource(group, version, plural);
    match rest {
        [plural] => Some(Target::Collection {
            kind: resource(plural)?,
            namespace: None,
        }),
        [plural, name] => {
            let kind = resource(plural)?;
            (!kind.namespaced()).then(|| Target::Object {
                kind,
                namespace: None,
                name: (*name).to_string(),
            })
        }
        ["namespaces", ns, plural] => {
            let kind = resource(plural)?;
            kind.namespaced().then(|| Target::Collection {
                kind,
                namespace: Some((*ns).to_string()),
            })
        }
        ["namespaces", ns, plural, name] => {
            let kind = resource(plural)?;
            kind.namespaced().then(|| Target::Object {
                kind,
                namespace: Some((*ns).to_string()),
                name: (*name).to_string(),
            })
        }
        _ => None,
    }
}

/// A response that is not a watch stream.
struct Reply {
    code: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Reply {
    fn json(code: u16, value: &Value) -> Self {
        Self {
            code,
            content_type: JSON,
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }

    fn bytes(code: u16, body: Vec<u8>) -> Self {
        Self {
            code,
            content_type: JSON,
            body,
        }
    }

    fn error(err: &ApiError) -> Self {
        Self::json(err.code(), &err.status())
    }
}

/// What to do with a request.
enum Action {
    Reply(Reply),
    Watch(WatchSpec),
}

/// Serves requests on one connection until the peer closes it, an I/O error occurs, or the
/// server stops.
pub(super) fn serve_connection(shared: &Arc<Shared>, stream: TcpStream) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(err) => {
            tracing::warn!(error = %err, "test API server: cannot clone a connection");
            return;
        }
    };
    let mut reader = BufReader::new(stream);
    while !shared.stopping() {
        let request = match http::read_request(&mut reader) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(HttpError::TooLarge { size, limit }) => {
                let reply = Reply::error(&ApiError::TooLarge { size, limit });
                let _ = http::write_response(
                    &mut writer,
                    reply.code,
                    reply.content_type,
                    &reply.body,
                    true,
                );
                return;
            }
            Err(HttpError::Io(err)) => {
                tracing::trace!(error = %err, "test API server: connection read ended");
                return;
            }
            Err(err) => {
                tracing::debug!(error = %err, "test API server: bad request");
                let reply = Reply::error(&ApiError::BadRequest {
                    message: err.to_string(),
                });
                let _ = http::write_response(
                    &mut writer,
                    reply.code,
                    reply.content_type,
                    &reply.body,
                    true,
                );
                return;
            }
        };
        match handle(shared, &request, &mut writer) {
            Ok(true) if !request.close => {}
            Ok(_) => return,
            Err(err) => {
                tracing::trace!(error = %err, "test API server: connection write ended");
                return;
            }
        }
    }
}

/// Handles one request; `Ok(false)` when the connection must be closed afterwards.
fn handle(shared: &Arc<Shared>, request: &Request, out: &mut TcpStream) -> std::io::Result<bool> {
    let target = route(&request.path);
    let resource = target
        .as_ref()
        .and_then(|t| verb_and_kind(&request.method, request, t));
    if let Some(key) = resource {
        *shared.lock().counters.entry(key).or_insert(0) += 1;
    }
    if !shared.wait_ready() {
        return Ok(false);
    }
    let action = match target {
        None => Action::Reply(Reply::error(&ApiError::NoSuchPath {
            path: request.path.clone(),
        })),
        Some(target) => dispatch(shared, request, target),
    };
    match action {
        Action::Reply(reply) => {
            record(shared, request, resource, reply.code);
            tracing::debug!(method = %request.method, path = %request.path, code = reply.code, "test API server");
            http::write_response(
                out,
                reply.code,
                reply.content_type,
                &reply.body,
                request.close,
            )?;
            Ok(true)
        }
        Action::Watch(spec) => {
            record(shared, request, resource, 200);
            tracing::debug!(path = %request.path, kind = %spec.kind, "test API server: watch");
            watch(shared, &spec, out)
        }
    }
}

fn record(shared: &Shared, request: &Request, resource: Option<(Verb, Kind)>, status: u16) {
    let mut state = shared.lock();
    if state.log.len() >= REQUEST_LOG_LIMIT {
        state.log.pop_front();
    }
    state.log.push_back(RequestRecord {
        method: request.method.clone(),
        path: request.path.clone(),
        query: request.query.clone(),
        resource,
        status,
    });
}

fn is_true(value: Option<&str>) -> bool {
    matches!(value, Some("true" | "1"))
}

fn verb_and_kind(method: &str, request: &Request, target: &Target) -> Option<(Verb, Kind)> {
    match (method, target) {
        ("GET", Target::Collection { kind, .. }) if is_true(request.param("watch")) => {
            Some((Verb::Watch, *kind))
        }
        ("GET", Target::Collection { kind, .. }) => Some((Verb::List, *kind)),
        ("POST", Target::Collection { kind, .. }) => Some((Verb::Create, *kind)),
        ("GET", Target::Object { kind, .. }) => Some((Verb::Get, *kind)),
        ("PUT", Target::Object { kind, .. }) => Some((Verb::Update, *kind)),
        ("PATCH", Target::Object { kind, .. }) => Some((Verb::Patch, *kind)),
        ("DELETE", Target::Object { kind, .. }) => Some((Verb::Delete, *kind)),
        _ => None,
    }
}

fn dispatch(shared: &Arc<Shared>, request: &Request, target: Target) -> Action {
    let method = request.method.as_str();
    let aggregated = request
        .header("accept")
        .is_some_and(|a| a.contains("as=APIGroupDiscoveryList"));
    let not_found = || {
        Action::Reply(Reply::error(&ApiError::NoSuchPath {
            path: request.path.clone(),
        }))
    };
    let not_allowed = || {
        Action::Reply(Reply::error(&ApiError::MethodNotAllowed {
            method: method.to_string(),
            path: request.path.clone(),
        }))
    };
    let result = match (method, target) {
        ("GET", Target::Version) => Ok(Reply::json(200, &kinds::version_info())),
        ("GET", Target::CoreVersions | Target::GroupList) if aggregated => {
            let core = request.path.trim_end_matches('/') == "/api";
            let mut reply = Reply::json(200, &kinds::aggregated(core));
            reply.content_type = AGGREGATED_DISCOVERY;
            Ok(reply)
        }
        ("GET", Target::CoreVersions) => Ok(Reply::json(
            200,
            &kinds::core_versions(&shared.addr.to_string()),
        )),
        ("GET", Target::GroupList) => Ok(Reply::json(200, &kinds::group_list())),
        ("GET", Target::Group(group)) => match kinds::group(&group) {
            Some(doc) => Ok(Reply::json(200, &doc)),
            None => return not_found(),
        },
        ("GET", Target::Resources(group, version)) => {
            match kinds::resource_list(&group, &version) {
                Some(doc) => Ok(Reply::json(200, &doc)),
                None => return not_found(),
            }
        }
        ("GET", Target::Collection { kind, namespace }) if is_true(request.param("watch")) => {
            return match WatchSpec::parse(shared, kind, namespace, request) {
                Ok(spec) => Action::Watch(spec),
                Err(err) => Action::Reply(Reply::error(&err)),
            };
        }
        ("GET", Target::Collection { kind, namespace }) => {
            list(shared, kind, namespace.as_deref(), request)
        }
        ("POST", Target::Collection { kind, namespace }) => match namespace {
            Some(ns) => create(shared, kind, Some(&ns), request),
            None if !kind.namespaced() => create(shared, kind, None, request),
            None => return not_allowed(),
        },
        (
            "GET",
            Target::Object {
                kind,
                namespace,
                name,
            },
        ) => {
            let obj = shared
                .lock()
                .store
                .get(kind, namespace.as_deref().unwrap_or(""), &name);
            match obj {
                Some(obj) => Ok(Reply::bytes(200, typed(kind, &obj))),
                None => Err(ApiError::NotFound {
                    kind,
                    namespace: namespace.unwrap_or_default(),
                    name,
                }),
            }
        }
        (
            "PUT",
            Target::Object {
                kind,
                namespace,
                name,
            },
        ) => parse_body(request).and_then(|body| {
            let obj = {
                let mut state = shared.lock();
                state.store.replace(kind, namespace.as_deref(), &name, body)
            }?;
            shared.changed.notify_all();
            Ok(Reply::bytes(200, typed(kind, &obj)))
        }),
        (
            "PATCH",
            Target::Object {
                kind,
                namespace,
                name,
            },
        ) => patch(
            shared,
            kind,
            namespace.as_deref().unwrap_or(""),
            &name,
            request,
        ),
        (
            "DELETE",
            Target::Object {
                kind,
                namespace,
                name,
            },
        ) => delete(
            shared,
            kind,
            namespace.as_deref().unwrap_or(""),
            &name,
            request,
        ),
        _ => return not_allowed(),
    };
    Action::Reply(result.unwrap_or_else(|err| Reply::error(&err)))
}

/// A single object as sent alone: with `kind` and `apiVersion`.
fn typed(kind: Kind, obj: &Obj) -> Vec<u8> {
    let mut out = Vec::with_capacity(obj.json.len() + 64);
    obj.write_typed(kind, &mut out);
    out
}

fn parse_body(request: &Request) -> Result<Value, ApiError> {
    serde_json::from_slice(&request.body).map_err(|e| ApiError::BadRequest {
        message: format!("the request body is not valid JSON: {e}"),
    })
}

fn selectors(kind: Kind, request: &Request) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let bad = |message: String| ApiError::BadRequest { message };
    let labels = LabelSelector::parse(request.param("labelSelector").unwrap_or("")).map_err(bad)?;
    let fields =
        FieldSelector::parse(request.param("fieldSelector").unwrap_or(""), kind).map_err(bad)?;
    Ok((labels, fields))
}

fn matches(labels: &LabelSelector, fields: &FieldSelector, obj: &Obj) -> bool {
    (labels.is_empty() || labels.matches(|key| obj.label(key)))
        && (fields.is_empty() || fields.matches(&obj.namespace, &obj.name, |i| obj.field(i)))
}

fn parse_rv(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| ApiError::BadRequest {
        message: format!("resourceVersion: Invalid value: {text:?}: must be an integer"),
    })
}

fn non_empty<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.param(name).filter(|v| !v.is_empty())
}

fn list(
    shared: &Shared,
    kind: Kind,
    namespace: Option<&str>,
    request: &Request,
) -> Result<Reply, ApiError> {
    let (labels, fields) = selectors(kind, request)?;
    let limit = match non_empty(request, "limit") {
        None => None,
        Some(text) => {
            let limit: usize = text.parse().map_err(|_| ApiError::BadRequest {
                message: format!("limit: Invalid value: {text:?}"),
            })?;
            (limit > 0).then_some(limit)
        }
    };
    let continue_token = non_empty(request, "continue");
    let rv = non_empty(request, "resourceVersion");
    let rv_match = non_empty(request, "resourceVersionMatch");
    let bad = |message: &str| ApiError::BadRequest {
        message: message.to_string(),
    };
    if continue_token.is_some() && rv.is_some() {
        return Err(bad(
            "specifying resource version is not allowed when using continue",
        ));
    }
    if rv_match.is_some() && rv.is_none() {
        return Err(bad(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
        ));
    }
    let exact = match rv_match {
        None => None,
        Some("Exact") => Some(true),
        Some("NotOlderThan") => Some(false),
        Some(other) => {
            return Err(ApiError::BadRequest {
                message: format!(
                    "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                ),
            });
        }
    };
    let filter = |obj: &Obj| matches(&labels, &fields, obj);

    let (at, page) = {
        let state = shared.lock();
        let store = &state.store;
        let current = store.resource_version();
        let (at, after) = if let Some(token) = continue_token {
            let (at, ns, name) = meta::decode_continue(token)
                .ok_or_else(|| bad("continue key is not valid: not a token of this server"))?;
            if at < store.compacted() {
                return Err(ApiError::Gone {
                    message: "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
                });
            }
            (at, Some((ns, name)))
        } else {
            let at = match rv {
                None | Some("0") if exact != Some(true) => current,
                None | Some("0") => {
                    return Err(bad(
                        "resourceVersionMatch: Forbidden: resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
                    ));
                }
                Some(text) => {
                    let requested = parse_rv(text)?;
                    if requested > current {
                        return Err(ApiError::TooLargeResourceVersion { requested, current });
                    }
                    // Legacy semantics: a version with a limit is exact, without is "not older than".
                    if exact.unwrap_or(limit.is_some()) {
                        requested
                    } else {
                        current
                    }
                }
            };
            (at, None)
        };
        let after_ref = after
            .as_ref()
            .map(|(ns, name)| (ns.as_str(), name.as_str()));
        let page = store.page(kind, namespace, at, after_ref, limit, &filter)?;
        (at, page)
    };

    let size: usize = page.items.iter().map(|o| o.json.len() + 1).sum();
    let mut body = Vec::with_capacity(size + 256);
    body.extend_from_slice(b"{\"kind\":\"");
    body.extend_from_slice(kind.kind_name().as_bytes());
    body.extend_from_slice(b"List\",\"apiVersion\":\"");
    body.extend_from_slice(kind.api_version().as_bytes());
    body.extend_from_slice(b"\",\"metadata\":");
    let mut list_meta = json!({ "resourceVersion": at.to_string() });
    if let (Some((ns, name)), Value::Object(map)) = (&page.more_after, &mut list_meta) {
        map.insert(
            "continue".into(),
            json!(meta::encode_continue(at, ns, name)),
        );
    }
    body.extend_from_slice(list_meta.to_string().as_bytes());
    body.extend_from_slice(b",\"items\":[");
    for (i, obj) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&obj.json);
    }
    body.extend_from_slice(b"]}");
    Ok(Reply::bytes(200, body))
}

fn create(
    shared: &Shared,
    kind: Kind,
    namespace: Option<&str>,
    request: &Request,
) -> Result<Reply, ApiError> {
    let body = parse_body(request)?;
    let obj = {
        let mut state = shared.lock();
        state.store.create(kind, namespace, body)
    }?;
    shared.changed.notify_all();
    Ok(Reply::bytes(201, typed(kind, &obj)))
}

fn patch(
    shared: &Shared,
    kind: Kind,
    namespace: &str,
    name: &str,
    request: &Request,
) -> Result<Reply, ApiError> {
    let content_type = request.header("content-type").unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if !matches!(
        media,
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        return Err(ApiError::UnsupportedMediaType {
            content_type: content_type.to_string(),
        });
    }
    let patch = parse_body(request)?;
    let obj = {
        let mut state = shared.lock();
        state.store.patch(kind, namespace, name, &patch)
    }?;
    shared.changed.notify_all();
    Ok(Reply::bytes(200, typed(kind, &obj)))
}

fn delete(
    shared: &Shared,
    kind: Kind,
    namespace: &str,
    name: &str,
    request: &Request,
) -> Result<Reply, ApiError> {
    let mut preconditions = Preconditions::default();
    if !request.body.is_empty() {
        let options = parse_body(request)?;
        let get = |field: &str| {
            options
                .pointer(&format!("/preconditions/{field}"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        preconditions.uid = get("uid");
        preconditions.resource_version = get("resourceVersion");
    }
    let obj = {
        let mut state = shared.lock();
        state.store.delete(kind, namespace, name, &preconditions)
    }?;
    shared.changed.notify_all();
    // kube-apiserver returns the object for pods and namespaces, a Status for the others.
    if matches!(kind, Kind::Pod | Kind::Namespace) {
        return Ok(Reply::bytes(200, typed(kind, &obj)));
    }
    let uid = obj
        .to_value(kind)
        .pointer("/metadata/uid")
        .cloned()
        .unwrap_or(Value::Null);
    Ok(Reply::json(
        200,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": { "name": name, "group": kind.group(), "kind": kind.plural(), "uid": uid },
        }),
    ))
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Send the current objects as ADDED first.
    Initial,
    /// Changes after this resource version.
    After(u64),
}

/// A validated watch request.
struct WatchSpec {
    kind: Kind,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    start: Start,
    /// `sendInitialEvents=true`: end the initial events with an annotated BOOKMARK.
    initial_events_end: bool,
    bookmarks: bool,
    timeout: Duration,
}

impl WatchSpec {
    fn parse(
        shared: &Shared,
        kind: Kind,
        namespace: Option<String>,
        request: &Request,
    ) -> Result<Self, ApiError> {
        let (labels, fields) = selectors(kind, request)?;
        let bookmarks = is_true(request.param("allowWatchBookmarks"));
        let send_initial = request
            .param("sendInitialEvents")
            .map(|v| v == "true" || v == "1");
        let rv = non_empty(request, "resourceVersion");
        let rv_match = non_empty(request, "resourceVersionMatch");
        let invalid = |message: &str| ApiError::Invalid {
            kind,
            name: String::new(),
            message: message.to_string(),
        };
        match (send_initial, rv_match) {
            (None, Some(_)) => {
                return Err(invalid(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
            (Some(_), Some(m)) if m != "NotOlderThan" => {
                return Err(invalid(
                    "resourceVersionMatch: Unsupported value: sendInitialEvents requires resourceVersionMatch=NotOlderThan",
                ));
            }
            (Some(_), None) => {
                return Err(invalid(
                    "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            (Some(true), _) if !bookmarks => {
                return Err(invalid(
                    "allowWatchBookmarks: Required value: sendInitialEvents requires setting allowWatchBookmarks to true",
                ));
            }
            _ => {}
        }
        let start = match (send_initial, rv) {
            (Some(true), _) | (None | Some(false), None | Some("0")) => Start::Initial,
            (_, Some(text)) => Start::After(parse_rv(text)?),
        };
        let timeout = match non_empty(request, "timeoutSeconds") {
            None => shared.default_watch_timeout,
            Some(text) => Duration::from_secs(text.parse().map_err(|_| ApiError::BadRequest {
                message: format!("timeoutSeconds: Invalid value: {text:?}"),
            })?),
        };
        Ok(Self {
            kind,
            namespace,
            labels,
            fields,
            start,
            initial_events_end: send_initial == Some(true),
            bookmarks,
            timeout,
        })
    }

    fn matches(&self, obj: &Obj) -> bool {
        matches(&self.labels, &self.fields, obj)
    }

    /// The watch event type a change becomes for this watch, if any.
    fn event_type(&self, change: &Change) -> Option<&'static str> {
        let now = self.matches(&change.obj);
        let before = change
            .prev
            .as_deref()
            .is_some_and(|prev| self.matches(prev));
        match change.ty {
            ChangeType::Added => now.then_some("ADDED"),
            ChangeType::Deleted => before.then_some("DELETED"),
            ChangeType::Modified => match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            },
        }
    }
}

fn push_event(out: &mut Vec<u8>, ty: &str, kind: Kind, obj: &Obj) {
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(ty.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    obj.write_typed(kind, out);
    out.extend_from_slice(b"}\n");
}

fn push_bookmark(out: &mut Vec<u8>, kind: Kind, rv: u64, initial_end: bool) {
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if initial_end && let Value::Object(map) = &mut metadata {
        map.insert(
            "annotations".into(),
            json!({ "k8s.io/initial-events-end": "true" }),
        );
    }
    let event = json!({
        "type": "BOOKMARK",
        "object": { "kind": kind.kind_name(), "apiVersion": kind.api_version(), "metadata": metadata },
    });
    out.extend_from_slice(event.to_string().as_bytes());
    out.push(b'\n');
}

fn push_gone(out: &mut Vec<u8>, rv: u64, compacted: u64) {
    let status = ApiError::Gone {
        message: format!("too old resource version: {rv} ({compacted})"),
    }
    .status();
    out.extend_from_slice(
        json!({ "type": "ERROR", "object": status })
            .to_string()
            .as_bytes(),
    );
    out.push(b'\n');
}

/// Counts an open watch for as long as it lives.
struct OpenWatch<'a> {
    shared: &'a Shared,
    kind: Kind,
}

impl<'a> OpenWatch<'a> {
    fn new(shared: &'a Shared, kind: Kind) -> Self {
        shared.lock().open_watches[kind.index()] += 1;
        Self { shared, kind }
    }
}

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let count = &mut state.open_watches[self.kind.index()];
        *count = count.saturating_sub(1);
    }
}

/// What woke a watch up.
enum Wake {
    /// Changes after the cursor and the next cursor, or the compacted version when some of
    /// them are lost.
    Changes(Result<(Vec<Change>, u64), u64>),
    Bookmark,
    End,
}

/// Streams a watch until its timeout, `close_watches`, a lost history or a write error.
/// `Ok(true)`: ended cleanly, the connection can serve another request.
fn watch(shared: &Shared, spec: &WatchSpec, out: &mut TcpStream) -> std::io::Result<bool> {
    let kind = spec.kind;
    let namespace = spec.namespace.as_deref();
    let _open = OpenWatch::new(shared, kind);
    let started = Instant::now();
    let deadline = started + spec.timeout;
    let (generation, mut cursor, initial) = {
        let state = shared.lock();
        let current = state.store.resource_version();
        match spec.start {
            Start::Initial => (
                state.watch_generation,
                current,
                state.store.current(kind, namespace),
            ),
            Start::After(rv) => {
                if rv < state.store.compacted() {
                    let compacted = state.store.compacted();
                    drop(state);
                    let mut buf = Vec::new();
                    push_gone(&mut buf, rv, compacted);
                    http::start_chunked(out, 200, JSON)?;
                    http::write_chunk(out, &buf)?;
                    http::finish_chunked(out)?;
                    return Ok(true);
                }
                (state.watch_generation, rv, Vec::new())
            }
        }
    };
    http::start_chunked(out, 200, JSON)?;
    let mut buf = Vec::new();
    for chunk in initial.chunks(WATCH_BATCH) {
        buf.clear();
        for obj in chunk.iter().filter(|o| spec.matches(o)) {
            push_event(&mut buf, "ADDED", kind, obj);
        }
        http::write_chunk(out, &buf)?;
    }
    if spec.initial_events_end {
        buf.clear();
        push_bookmark(&mut buf, kind, cursor, true);
        http::write_chunk(out, &buf)?;
    }
    drop(initial);
    let mut next_bookmark = Instant::now() + shared.bookmark_interval;
    loop {
        let wake = {
            let mut state = shared.lock();
            loop {
                if shared.stopping() {
                    return Ok(false);
                }
                if state.watch_generation != generation {
                    break Wake::End;
                }
                let now = Instant::now();
                if now >= deadline {
                    break Wake::End;
                }
                if !state.paused {
                    if state.store.resource_version() > cursor {
                        break Wake::Changes(state.store.changes_after(
                            kind,
                            namespace,
                            cursor,
                            WATCH_BATCH,
                        ));
                    }
                    if spec.bookmarks && now >= next_bookmark {
                        break Wake::Bookmark;
                    }
                }
                let until = if spec.bookmarks && !state.paused {
                    deadline.min(next_bookmark)
                } else {
                    deadline
                };
                state = shared.wait(state, until - now);
            }
        };
        buf.clear();
        match wake {
            Wake::End => {
                http::finish_chunked(out)?;
                return Ok(true);
            }
            Wake::Bookmark => {
                push_bookmark(&mut buf, kind, cursor, false);
                next_bookmark = Instant::now() + shared.bookmark_interval;
            }
            Wake::Changes(Ok((changes, new_cursor))) => {
                for change in &changes {
                    if let Some(ty) = spec.event_type(change) {
                        push_event(&mut buf, ty, kind, &change.obj);
                    }
                }
                cursor = new_cursor;
            }
            Wake::Changes(Err(compacted)) => {
                push_gone(&mut buf, cursor, compacted);
                http::write_chunk(out, &buf)?;
                http::finish_chunked(out)?;
                return Ok(true);
            }
        }
        http::write_chunk(out, &buf)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_collections_objects_and_discovery() {
        assert!(matches!(
            route("/api/v1/pods"),
            Some(Target::Collection {
                kind: Kind::Pod,
                namespace: None
            })
        ));
        assert!(matches!(
            route("/api/v1/namespaces/x/pods/p"),
            Some(Target::Object { kind: Kind::Pod, namespace: Some(ns), name }) if ns == "x" && name == "p"
        ));
        // The namespace object itself, not a collection inside it.
        assert!(matches!(
            route("/api/v1/namespaces/x"),
            Some(Target::Object { kind: Kind::Namespace, namespace: None, name }) if name == "x"
        ));
        assert!(matches!(
            route("/apis/networking.k8s.io/v1/namespaces/x/networkpolicies"),
            Some(Target::Collection {
                kind: Kind::NetworkPolicy,
                namespace: Some(_)
            })
        ));
        assert!(matches!(
            route("/apis/events.k8s.io/v1/events"),
            Some(Target::Collection {
                kind: Kind::Event,
                ..
            })
        ));
        assert!(
            matches!(route("/apis/networking.k8s.io/v1"), Some(Target::Resources(g, v)) if g == "networking.k8s.io" && v == "v1")
        );
        // Cluster-scoped kinds have no namespaced path; namespaced kinds no cluster object path.
        assert!(route("/api/v1/namespaces/x/nodes").is_none());
        assert!(route("/api/v1/pods/p").is_none());
        assert!(route("/api/v1/services").is_none());
    }
}
