//! The object store: etcd-like multi-version storage with one global resource version.
//!
//! kube-runtime's watcher is only correct if the server keeps etcd's promises: a paginated
//! list is one consistent snapshot, a watch from resource version N delivers every change
//! after N exactly once, and a version that is no longer available answers 410 Gone so the
//! client re-lists. This module keeps those promises with little memory:
//!
//! - current objects per kind in a `BTreeMap` ordered by (namespace, name), each stored once
//!   as serialized JSON (without `apiVersion`/`kind`, which are prepended when an object is
//!   sent alone, as kube-apiserver does; list items go out without them), plus the few
//!   fields selectors need;
//! - a history of changes (rv, kind, type, new object, previous object) sharing the same
//!   `Arc`s. A list "at" an older version N is the current map with every change after N
//!   undone, so pages of one list stay consistent while objects change, without copying;
//! - `compacted`: versions below it are gone (410), like etcd compaction.
//!
//! Objects are immutable once stored; a change stores a new `Arc<Obj>`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::kinds::{KIND_COUNT, Kind};
use super::meta;
use super::selector;

/// An error the API answers with a `Status` object (and the control API returns as is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 404 NotFound.
    #[error("{kind} {name:?} not found")]
    NotFound {
        kind: Kind,
        namespace: String,
        name: String,
    },
    /// 409 AlreadyExists.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        kind: Kind,
        namespace: String,
        name: String,
    },
    /// 409 Conflict (stale `resourceVersion` or failed precondition).
    #[error(
        "operation cannot be fulfilled on {kind} {name:?}: the object has been modified; please apply your changes to the latest version and try again ({detail})"
    )]
    Conflict {
        kind: Kind,
        namespace: String,
        name: String,
        detail: String,
    },
    /// 422 Invalid.
    #[error("{kind} {name:?} is invalid: {message}")]
    Invalid {
        kind: Kind,
        name: String,
        message: String,
    },
    /// 400 BadRequest.
    #[error("{message}")]
    BadRequest { message: String },
    /// 410 Expired: a resource version or continue token older than the retained history.
    #[error("{message}")]
    Gone { message: String },
    /// 504 Timeout: a resource version newer than the server's.
    #[error("too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion { requested: u64, current: u64 },
    /// 404 for a path that names no resource.
    #[error("the server could not find the requested resource ({path})")]
    NoSuchPath { path: String },
    /// 405 MethodNotAllowed.
    #[error("the server does not allow this method on the requested resource ({method} {path})")]
    MethodNotAllowed { method: String, path: String },
    /// 415 UnsupportedMediaType (e.g. JSON patch, server-side apply).
    #[error(
        "the body of the request was in an unknown format - accepted media types include: application/json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"
    )]
    UnsupportedMediaType { content_type: String },
    /// 413 RequestEntityTooLarge.
    #[error("request entity too large: {size} bytes (limit {limit})")]
    TooLarge { size: usize, limit: usize },
}

impl ApiError {
    /// HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } | ApiError::NoSuchPath { .. } => 404,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => 409,
            ApiError::Invalid { .. } => 422,
            ApiError::BadRequest { .. } => 400,
            ApiError::Gone { .. } => 410,
            ApiError::TooLargeResourceVersion { .. } => 504,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::UnsupportedMediaType { .. } => 415,
            ApiError::TooLarge { .. } => 413,
        }
    }

    /// `Status.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::NoSuchPath { .. } => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest { .. } => "BadRequest",
            ApiError::Gone { .. } => "Expired",
            ApiError::TooLargeResourceVersion { .. } => "Timeout",
            ApiError::MethodNotAllowed { .. } => "MethodNotAllowed",
            ApiError::UnsupportedMediaType { .. } => "UnsupportedMediaType",
            ApiError::TooLarge { .. } => "RequestEntityTooLarge",
        }
    }

    /// The `Status` object kube-apiserver would answer with.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let details = match self {
            ApiError::NotFound { kind, name, .. }
            | ApiError::AlreadyExists { kind, name, .. }
            | ApiError::Conflict { kind, name, .. }
            | ApiError::Invalid { kind, name, .. } => Some(json!({
                "name": name,
                "group": kind.group(),
                "kind": kind.plural(),
            })),
            ApiError::TooLargeResourceVersion { .. } => Some(json!({
                "causes": [{ "reason": "ResourceVersionTooLarge", "message": "Too large resource version" }],
                "retryAfterSeconds": 1,
            })),
            _ => None,
        };
        if let (Some(details), Value::Object(map)) = (details, &mut status) {
            map.insert("details".into(), details);
        }
        status
    }

    fn invalid(kind: Kind, name: &str, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            kind,
            name: name.to_string(),
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
        }
    }
}

/// One stored object version. Kept compact (four heap blocks besides the shared
/// namespace): 150 000 pods must fit comfortably.
#[derive(Debug)]
pub(crate) struct Obj {
    /// Interned: shared by every object of the namespace.
    pub(crate) namespace: Arc<str>,
    /// Shared with the map key and the object's other versions.
    pub(crate) name: Arc<str>,
    pub(crate) rv: u64,
    /// Labels as `key\0value\0key\0value` (label syntax excludes NUL).
    labels: Box<str>,
    /// Values of [`Kind::fields`], in that order, NUL-separated.
    fields: Box<str>,
    /// The object as a JSON object without `apiVersion`/`kind` (never empty: it has metadata).
    pub(crate) json: Box<[u8]>,
}

impl Obj {
    /// Appends the object with `kind` and `apiVersion` first, as sent alone (GET, watch).
    pub(crate) fn write_typed(&self, kind: Kind, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"kind\":\"");
        out.extend_from_slice(kind.kind_name().as_bytes());
        out.extend_from_slice(b"\",\"apiVersion\":\"");
        out.extend_from_slice(kind.api_version().as_bytes());
        out.extend_from_slice(b"\",");
        // json is a non-empty object (it always has metadata): skip its '{'.
        out.extend_from_slice(self.json.get(1..).unwrap_or_default());
    }

    /// The object as a JSON value with `apiVersion` and `kind`.
    pub(crate) fn to_value(&self, kind: Kind) -> Value {
        let mut value: Value = serde_json::from_slice(&self.json).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut value {
            map.insert("apiVersion".into(), json!(kind.api_version()));
            map.insert("kind".into(), json!(kind.kind_name()));
        }
        value
    }

    fn key(&self) -> Key {
        (self.namespace.clone(), self.name.clone())
    }

    /// The value of a label.
    pub(crate) fn label(&self, key: &str) -> Option<&str> {
        let mut parts = self.labels.split('\0');
        while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
            if k == key {
                return Some(v);
            }
        }
        None
    }

    /// The value of the kind's `i`-th indexed field ([`Kind::fields`]).
    pub(crate) fn field(&self, i: usize) -> &str {
        self.fields.split('\0').nth(i).unwrap_or("")
    }
}

type Key = (Arc<str>, Arc<str>);

fn key_of(namespace: &str, name: &str) -> Key {
    (Arc::from(namespace), Arc::from(name))
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One entry of the history: the object after the change (for a deletion: the last state
/// with the deletion's resource version) and before it.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) rv: u64,
    pub(crate) kind: Kind,
    pub(crate) ty: ChangeType,
    pub(crate) obj: Arc<Obj>,
    pub(crate) prev: Option<Arc<Obj>>,
}

/// A page of a list: items, and the last key when more items follow.
pub(crate) struct Page {
    pub(crate) items: Vec<Arc<Obj>>,
    pub(crate) more_after: Option<(String, String)>,
}

/// Preconditions of a delete (`DeleteOptions.preconditions`).
#[derive(Debug, Default, Clone)]
pub(crate) struct Preconditions {
    pub(crate) uid: Option<String>,
    pub(crate) resource_version: Option<String>,
}

/// The multi-version store. Not thread-safe by itself: the server keeps it under a mutex.
pub(crate) struct Store {
    rv: u64,
    objects: [BTreeMap<Key, Arc<Obj>>; KIND_COUNT],
    /// Interned namespace names.
    namespaces: HashSet<Arc<str>>,
    history: VecDeque<Change>,
    history_limit: usize,
    /// Requests at a resource version below this answer 410.
    compacted: u64,
    /// Highest resource version of a change dropped from the history: a live watch that has
    /// not seen it yet has lost events.
    dropped_upto: u64,
}

impl Store {
    pub(crate) fn new(history_limit: usize) -> Self {
        Self {
            // etcd starts at 1; clients treat "0" as "any".
            rv: 1,
            objects: Default::default(),
            namespaces: HashSet::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            dropped_upto: 0,
        }
    }

    pub(crate) fn resource_version(&self) -> u64 {
        self.rv
    }

    pub(crate) fn compacted(&self) -> u64 {
        self.compacted
    }

    /// (objects, bytes of their JSON, changes in the history).
    pub(crate) fn sizes(&self) -> (usize, usize, usize) {
        let objects = self.objects.iter().map(BTreeMap::len).sum();
        let bytes = self
            .objects
            .iter()
            .flat_map(BTreeMap::values)
            .map(|o| o.json.len())
            .sum();
        (objects, bytes, self.history.len())
    }

    pub(crate) fn count(&self, kind: Kind) -> usize {
        self.objects[kind.index()].len()
    }

    pub(crate) fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Arc<Obj>> {
        self.objects[kind.index()]
            .get(&key_of(namespace, name))
            .cloned()
    }

    /// Current objects of a kind, in one namespace or all.
    pub(crate) fn current(&self, kind: Kind, namespace: Option<&str>) -> Vec<Arc<Obj>> {
        let map = &self.objects[kind.index()];
        match namespace {
            None => map.values().cloned().collect(),
            Some(ns) => map
                .range(key_of(ns, "")..)
                .take_while(|((n, _), _)| &**n == ns)
                .map(|(_, o)| o.clone())
                .collect(),
        }
    }

    /// Makes every resource version issued so far too old (410 for watches and lists at it),
    /// as if etcd compacted at a new revision. Open watches that are up to date go on.
    pub(crate) fn expire_history(&mut self) {
        if let Some(last) = self.history.back() {
            self.dropped_upto = self.dropped_upto.max(last.rv);
        }
        self.history.clear();
        // Like a write to some other resource: a fresh list gets a version that is valid.
        self.rv += 1;
        self.compacted = self.rv;
    }

    /// Whether a new watch or a list at `rv` can be served (`rv >= compacted`).
    pub(crate) fn check_not_compacted(&self, rv: u64) -> Result<(), ApiError> {
        if rv < self.compacted {
            return Err(ApiError::Gone {
                message: format!("too old resource version: {rv} ({})", self.compacted),
            });
        }
        Ok(())
    }

    /// A page of the list of `kind` in `namespace` (or all) as it was at resource version
    /// `at` (which must be retained), after key `after`, with at most `limit` items that pass
    /// `filter`.
    pub(crate) fn page(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        at: u64,
        after: Option<(&str, &str)>,
        limit: Option<usize>,
        filter: &dyn Fn(&Obj) -> bool,
    ) -> Result<Page, ApiError> {
        self.check_not_compacted(at)?;
        if at > self.rv {
            return Err(ApiError::TooLargeResourceVersion {
                requested: at,
                current: self.rv,
            });
        }
        let in_scope = |obj: &Obj| namespace.is_none_or(|ns| &*obj.namespace == ns);
        // Undo the changes after `at`: key -> state at `at` (None: did not exist).
        let mut overrides: BTreeMap<Key, Option<Arc<Obj>>> = BTreeMap::new();
        let first = self.history.partition_point(|c| c.rv <= at);
        for change in self.history.range(first..) {
            if change.kind == kind && in_scope(&change.obj) {
                overrides
                    .entry(change.obj.key())
                    .or_insert_with(|| change.prev.clone());
            }
        }
        let start: Bound<Key> = match (after, namespace) {
            (Some((ns, name)), _) => Bound::Excluded(key_of(ns, name)),
            (None, Some(ns)) => Bound::Included(key_of(ns, "")),
            (None, None) => Bound::Unbounded,
        };
        let bounds = (start, Bound::<Key>::Unbounded);
        let mut current = self.objects[kind.index()]
            .range::<Key, _>(bounds.clone())
            .take_while(|((ns, _), _)| namespace.is_none_or(|want| &**ns == want))
            .peekable();
        let mut undone = overrides.range::<Key, _>(bounds).peekable();

        let limit = limit.unwrap_or(usize::MAX);
        let mut items: Vec<Arc<Obj>> = Vec::new();
        loop {
            let next: Option<Option<&Arc<Obj>>> = match (current.peek(), undone.peek()) {
                (None, None) => break,
                (Some(_), None) => current.next().map(|(_, o)| Some(o)),
                (None, Some(_)) => undone.next().map(|(_, o)| o.as_ref()),
                (Some((ck, _)), Some((uk, _))) => {
                    if ck < uk {
                        current.next().map(|(_, o)| Some(o))
                    } else {
                        if ck == uk {
                            current.next();
                        }
                        undone.next().map(|(_, o)| o.as_ref())
                    }
                }
            };
            let Some(Some(obj)) = next else { continue };
            if !filter(obj) {
                continue;
            }
            if items.len() == limit {
                // One more matching item exists: the caller returns a continue token.
                let last = items
                    .last()
                    .map(|o| (o.namespace.to_string(), o.name.to_string()));
                return Ok(Page {
                    items,
                    more_after: last,
                });
            }
            items.push(obj.clone());
        }
        Ok(Page {
            items,
            more_after: None,
        })
    }

    /// Changes of `kind` (in `namespace` or all) after `cursor`, at most `max` of them, and
    /// the cursor to continue from. `Err(())` when changes after `cursor` were dropped.
    pub(crate) fn changes_after(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        cursor: u64,
        max: usize,
    ) -> Result<(Vec<Change>, u64), u64> {
        if cursor < self.dropped_upto {
            return Err(self.compacted);
        }
        let first = self.history.partition_point(|c| c.rv <= cursor);
        let mut out = Vec::new();
        for change in self.history.range(first..) {
            if change.kind != kind || namespace.is_some_and(|ns| &*change.obj.namespace != ns) {
                continue;
            }
            if out.len() == max {
                return Ok((out, change.rv - 1));
            }
            out.push(change.clone());
        }
        Ok((out, self.rv))
    }

    fn intern(&mut self, namespace: &str) -> Arc<str> {
        if let Some(ns) = self.namespaces.get(namespace) {
            return ns.clone();
        }
        let ns: Arc<str> = Arc::from(namespace);
        self.namespaces.insert(ns.clone());
        ns
    }

    fn record(&mut self, change: Change) {
        self.history.push_back(change);
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.dropped_upto = self.dropped_upto.max(old.rv);
                self.compacted = self.compacted.max(old.rv);
            }
        }
    }

    /// Creates an object. `url_namespace` is the namespace of the request path (the object's
    /// own `metadata.namespace` must agree or be empty).
    pub(crate) fn create(
        &mut self,
        kind: Kind,
        url_namespace: Option<&str>,
        body: Value,
    ) -> Result<Arc<Obj>, ApiError> {
        let mut map = into_object(kind, body)?;
        let mut meta = take_metadata(&mut map);
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    let name = format!("{prefix}{}", meta::name_suffix());
                    meta.insert("name".into(), json!(name));
                    name
                }
                _ => {
                    return Err(ApiError::invalid(
                        kind,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            },
        };
        let namespace = resolve_namespace(kind, &name, url_namespace, &mut meta)?;
        validate_name(kind, &name)?;
        if !namespace.is_empty() {
            validate_name(Kind::Namespace, &namespace).map_err(|_| {
                ApiError::invalid(
                    kind,
                    &name,
                    format!("metadata.namespace: Invalid value: {namespace:?}"),
                )
            })?;
        }
        if self.get(kind, &namespace, &name).is_some() {
            return Err(ApiError::AlreadyExists {
                kind,
                namespace,
                name,
            });
        }
        meta.insert("uid".into(), json!(meta::new_uid()));
        meta.insert("creationTimestamp".into(), json!(meta::rfc3339_now()));
        for field in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
            meta.remove(field);
        }
        map.insert("metadata".into(), Value::Object(meta));
        apply_defaults(kind, &name, &mut map);
        let rv = self.rv + 1;
        let namespace = self.intern(&namespace);
        let obj = Arc::new(build(kind, map, rv, namespace, Arc::from(name))?);
        self.rv = rv;
        self.objects[kind.index()].insert(obj.key(), obj.clone());
        self.record(Change {
            rv,
            kind,
            ty: ChangeType::Added,
            obj: obj.clone(),
            prev: None,
        });
        Ok(obj)
    }

    /// Replaces an object (PUT). A non-empty `metadata.resourceVersion` in the body must be
    /// the current one. `uid` and `creationTimestamp` are kept. An update that changes nothing
    /// keeps the resource version and records no change, like kube-apiserver.
    pub(crate) fn replace(
        &mut self,
        kind: Kind,
        url_namespace: Option<&str>,
        url_name: &str,
        body: Value,
    ) -> Result<Arc<Obj>, ApiError> {
        let mut map = into_object(kind, body)?;
        let mut meta = take_metadata(&mut map);
        match meta.get("name").and_then(Value::as_str) {
            Some(name) if name != url_name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({name}) does not match the name on the URL ({url_name})"
                )));
            }
            _ => {
                meta.insert("name".into(), json!(url_name));
            }
        }
        let namespace = resolve_namespace(kind, url_name, url_namespace, &mut meta)?;
        let old = self
            .get(kind, &namespace, url_name)
            .ok_or_else(|| ApiError::NotFound {
                kind,
                namespace: namespace.clone(),
                name: url_name.to_string(),
            })?;
        if let Some(rv) = meta.get("resourceVersion").and_then(Value::as_str)
            && !rv.is_empty()
            && rv != old.rv.to_string()
        {
            return Err(ApiError::Conflict {
                kind,
                namespace,
                name: url_name.to_string(),
                detail: format!("resourceVersion {rv} is not the current {}", old.rv),
            });
        }
        map.insert("metadata".into(), Value::Object(meta));
        self.write_update(kind, &old, map)
    }

    /// Applies a JSON merge patch to an object. A `metadata.resourceVersion` in the patch is a
    /// precondition, as in kube-apiserver.
    pub(crate) fn patch(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<Arc<Obj>, ApiError> {
        let old = self
            .get(kind, namespace, name)
            .ok_or_else(|| ApiError::NotFound {
                kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
            })?;
        if !patch.is_object() {
            return Err(ApiError::bad_request("a merge patch must be a JSON object"));
        }
        if let Some(rv) = patch
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && rv != old.rv.to_string()
        {
            return Err(ApiError::Conflict {
                kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
                detail: format!("resourceVersion {rv} is not the current {}", old.rv),
            });
        }
        let mut value = old.to_value(kind);
        meta::merge_patch(&mut value, patch);
        let map = into_object(kind, value)?;
        let field = |f: &str| {
            map.get("metadata")
                .and_then(|m| m.get(f))
                .and_then(Value::as_str)
        };
        if field("name") != Some(name) || field("namespace").unwrap_or("") != namespace {
            return Err(ApiError::invalid(
                kind,
                name,
                "metadata.name, metadata.namespace: a patch may not change them",
            ));
        }
        self.write_update(kind, &old, map)
    }

    fn write_update(
        &mut self,
        kind: Kind,
        old: &Arc<Obj>,
        mut map: Map<String, Value>,
    ) -> Result<Arc<Obj>, ApiError> {
        let old_value: Value = serde_json::from_slice(&old.json).unwrap_or(Value::Null);
        let mut meta = take_metadata(&mut map);
        for field in ["uid", "creationTimestamp"] {
            match old_value.pointer(&format!("/metadata/{field}")) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        meta.insert("resourceVersion".into(), json!(old.rv.to_string()));
        map.insert("metadata".into(), Value::Object(meta));
        apply_defaults(kind, &old.name, &mut map);
        if Value::Object(map.clone()) == old_value {
            return Ok(old.clone());
        }
        let rv = self.rv + 1;
        let obj = Arc::new(build(
            kind,
            map,
            rv,
            old.namespace.clone(),
            old.name.clone(),
        )?);
        self.rv = rv;
        self.objects[kind.index()].insert(obj.key(), obj.clone());
        self.record(Change {
            rv,
            kind,
            ty: ChangeType::Modified,
            obj: obj.clone(),
            prev: Some(old.clone()),
        });
        Ok(obj)
    }

    /// Deletes an object at once (no graceful deletion, no finalizers) and returns its last
    /// state carrying the deletion's resource version.
    pub(crate) fn delete(
        &mut self,
        kind: Kind,
        namespace: &str,
        name: &str,
        preconditions: &Preconditions,
    ) -> Result<Arc<Obj>, ApiError> {
        let key = key_of(namespace, name);
        let old = self.objects[kind.index()]
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::NotFound {
                kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
            })?;
        let mut value: Value = serde_json::from_slice(&old.json).unwrap_or(Value::Null);
        let conflict = |detail: String| ApiError::Conflict {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
            detail,
        };
        if let Some(rv) = &preconditions.resource_version
            && *rv != old.rv.to_string()
        {
            return Err(conflict(format!(
                "precondition failed: resourceVersion {rv}, current {}",
                old.rv
            )));
        }
        if let Some(uid) = &preconditions.uid {
            let have = value.pointer("/metadata/uid").and_then(Value::as_str);
            if have != Some(uid.as_str()) {
                return Err(conflict(format!(
                    "precondition failed: uid {uid}, current {}",
                    have.unwrap_or("")
                )));
            }
        }
        let rv = self.rv + 1;
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        let map = into_object(kind, value)?;
        let obj = Arc::new(build(
            kind,
            map,
            rv,
            old.namespace.clone(),
            old.name.clone(),
        )?);
        self.rv = rv;
        self.objects[kind.index()].remove(&key);
        self.record(Change {
            rv,
            kind,
            ty: ChangeType::Deleted,
            obj: obj.clone(),
            prev: Some(old),
        });
        Ok(obj)
    }
}

/// The body as a JSON object, checking `apiVersion`/`kind` when present and removing them
/// (they are not stored).
fn into_object(kind: Kind, body: Value) -> Result<Map<String, Value>, ApiError> {
    let Value::Object(mut map) = body else {
        return Err(ApiError::bad_request(format!(
            "the body of a {} must be a JSON object",
            kind.kind_name()
        )));
    };
    for (field, want) in [
        ("apiVersion", kind.api_version()),
        ("kind", kind.kind_name()),
    ] {
        match map.remove(field) {
            None => {}
            Some(Value::String(s)) if s == want || s.is_empty() => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "{field} {other} does not match the resource {kind} ({} {})",
                    kind.api_version(),
                    kind.kind_name()
                )));
            }
        }
    }
    if !map.get("metadata").is_none_or(Value::is_object) {
        return Err(ApiError::bad_request("metadata must be a JSON object"));
    }
    Ok(map)
}

/// Takes `metadata` out of an object (empty when absent); put it back with
/// `map.insert("metadata", Value::Object(meta))`.
fn take_metadata(map: &mut Map<String, Value>) -> Map<String, Value> {
    match map.remove("metadata") {
        Some(Value::Object(meta)) => meta,
        _ => Map::new(),
    }
}

fn resolve_namespace(
    kind: Kind,
    name: &str,
    url_namespace: Option<&str>,
    meta: &mut Map<String, Value>,
) -> Result<String, ApiError> {
    let body_ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    if !kind.namespaced() {
        meta.remove("namespace");
        return Ok(String::new());
    }
    let namespace = match (url_namespace, body_ns) {
        (Some(url), Some(body)) if url != body => {
            return Err(ApiError::bad_request(format!(
                "the namespace of the provided object ({body}) does not match the namespace sent on the request ({url})"
            )));
        }
        (Some(url), _) => url.to_string(),
        (None, Some(body)) => body,
        (None, None) => {
            return Err(ApiError::invalid(
                kind,
                name,
                "metadata.namespace: Required value",
            ));
        }
    };
    meta.insert("namespace".into(), json!(namespace));
    Ok(namespace)
}

/// Names must be DNS-1123 subdomains (namespaces: labels), which also keeps them safe in
/// URL paths.
fn validate_name(kind: Kind, name: &str) -> Result<(), ApiError> {
    let label = kind == Kind::Namespace;
    let max = if label { 63 } else { 253 };
    let ok = !name.is_empty()
        && name.len() <= max
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (!label && b == b'.')
        })
        && name
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_alphanumeric)
        && name
            .as_bytes()
            .last()
            .is_some_and(u8::is_ascii_alphanumeric);
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            kind,
            name,
            format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 {} must consist of lower case alphanumeric characters{}, and must start and end with an alphanumeric character",
                if label { "label" } else { "subdomain" },
                if label { " or '-'" } else { ", '-' or '.'" }
            ),
        ))
    }
}

/// Defaults kube-apiserver adds that policy semantics depend on.
fn apply_defaults(kind: Kind, name: &str, map: &mut Map<String, Value>) {
    if kind != Kind::Namespace {
        return;
    }
    // NamespaceSelectors rely on this label; the API server sets it on every namespace.
    let mut meta = take_metadata(map);
    let labels = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(labels) = labels {
        labels.insert("kubernetes.io/metadata.name".into(), json!(name));
    }
    map.insert("metadata".into(), Value::Object(meta));
    let spec = map
        .entry("spec")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(spec) = spec {
        spec.entry("finalizers")
            .or_insert_with(|| json!(["kubernetes"]));
    }
    let status = map
        .entry("status")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(status) = status {
        status.entry("phase").or_insert_with(|| json!("Active"));
    }
}

/// Serializes an object for storage at resource version `rv`, extracting what selectors
/// need. `namespace` and `name` are the (validated) ones of the metadata.
fn build(
    kind: Kind,
    mut map: Map<String, Value>,
    rv: u64,
    namespace: Arc<str>,
    name: Arc<str>,
) -> Result<Obj, ApiError> {
    let mut meta = take_metadata(&mut map);
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    let mut labels = String::new();
    match meta.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (key, value) in map {
                let Value::String(value) = value else {
                    return Err(ApiError::invalid(
                        kind,
                        &name,
                        format!("metadata.labels: Invalid value: {key}: {value}: must be a string"),
                    ));
                };
                selector::validate_label(key, value)
                    .map_err(|message| ApiError::invalid(kind, &name, message))?;
                if !labels.is_empty() {
                    labels.push('\0');
                }
                labels.push_str(key);
                labels.push('\0');
                labels.push_str(value);
            }
        }
        Some(other) => {
            return Err(ApiError::invalid(
                kind,
                &name,
                format!("metadata.labels: Invalid value: {other}: must be an object"),
            ));
        }
    }
    // metadata first, as kube-apiserver writes objects (whatever the map's key order).
    let mut ordered = Map::new();
    ordered.insert("metadata".into(), Value::Object(meta));
    ordered.extend(map);
    let value = Value::Object(ordered);
    let mut fields = String::new();
    for (i, (path, default)) in kind.fields().iter().enumerate() {
        let pointer = format!("/{}", path.replace('.', "/"));
        let text = match value.pointer(&pointer) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => (*default).to_string(),
        };
        if text.contains('\0') {
            return Err(ApiError::invalid(
                kind,
                &name,
                format!("{path}: Invalid value: contains a NUL character"),
            ));
        }
        if i > 0 {
            fields.push('\0');
        }
        fields.push_str(&text);
    }
    let json = serde_json::to_vec(&value)
        .map_err(|e| ApiError::bad_request(format!("cannot serialize object: {e}")))?;
    Ok(Obj {
        namespace,
        name,
        rv,
        labels: labels.into_boxed_str(),
        fields: fields.into_boxed_str(),
        json: json.into_boxed_slice(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": {"nodeName": "n1"}})
    }

    fn names(page: &Page) -> Vec<String> {
        page.items
            .iter()
            .map(|o| format!("{}/{}", o.namespace, o.name))
            .collect()
    }

    #[test]
    fn a_list_at_an_old_version_undoes_later_changes() {
        let mut store = Store::new(1000);
        for name in ["a", "b", "c"] {
            store
                .create(Kind::Pod, None, pod("x", name))
                .expect("create");
        }
        let at = store.resource_version();
        store
            .delete(Kind::Pod, "x", "a", &Preconditions::default())
            .expect("delete");
        store
            .create(Kind::Pod, None, pod("x", "d"))
            .expect("create");
        store
            .patch(
                Kind::Pod,
                "x",
                "b",
                &json!({"metadata": {"labels": {"new": "yes"}}}),
            )
            .expect("patch");
        let all = |_: &Obj| true;
        let old = store
            .page(Kind::Pod, None, at, None, None, &all)
            .expect("old page");
        assert_eq!(names(&old), ["x/a", "x/b", "x/c"]);
        assert!(old.items.iter().all(|o| o.rv <= at), "old versions only");
        let now = store
            .page(Kind::Pod, None, store.resource_version(), None, None, &all)
            .expect("current page");
        assert_eq!(names(&now), ["x/b", "x/c", "x/d"]);
        assert_eq!(now.items[0].label("new"), Some("yes"));
    }

    #[test]
    fn pages_continue_after_the_last_key_and_report_more_only_when_there_is_more() {
        let mut store = Store::new(1000);
        for name in ["a", "b", "c", "d"] {
            store
                .create(Kind::Pod, None, pod("x", name))
                .expect("create");
        }
        let rv = store.resource_version();
        let all = |_: &Obj| true;
        let first = store
            .page(Kind::Pod, None, rv, None, Some(2), &all)
            .expect("page 1");
        assert_eq!(names(&first), ["x/a", "x/b"]);
        let (ns, name) = first.more_after.clone().expect("more");
        let second = store
            .page(Kind::Pod, None, rv, Some((&ns, &name)), Some(2), &all)
            .expect("page 2");
        assert_eq!(names(&second), ["x/c", "x/d"]);
        assert!(second.more_after.is_none());
    }

    #[test]
    fn expired_history_makes_old_versions_gone_but_not_the_new_current_one() {
        let mut store = Store::new(1000);
        store
            .create(Kind::Pod, None, pod("x", "a"))
            .expect("create");
        let old = store.resource_version();
        store.expire_history();
        let all = |_: &Obj| true;
        let err = store.page(Kind::Pod, None, old, None, None, &all).err();
        assert_eq!(err.map(|e| e.code()), Some(410));
        assert!(store.changes_after(Kind::Pod, None, old - 1, 10).is_err());
        let now = store.resource_version();
        assert_eq!(
            store
                .page(Kind::Pod, None, now, None, None, &all)
                .map(|p| p.items.len()),
            Ok(1)
        );
    }

    #[test]
    fn a_no_op_update_keeps_the_resource_version_and_records_nothing() {
        let mut store = Store::new(1000);
        let created = store
            .create(Kind::Pod, None, pod("x", "a"))
            .expect("create");
        let same = store
            .replace(Kind::Pod, Some("x"), "a", pod("x", "a"))
            .expect("replace");
        assert_eq!(same.rv, created.rv);
        let (changes, _) = store
            .changes_after(Kind::Pod, None, created.rv, 10)
            .expect("changes");
        assert!(changes.is_empty());
    }
}
