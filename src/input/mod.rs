//! Kubernetes objects from YAML and JSON files, for `nftpol render` and `nftpol apply`.
//!
//! The CLI works on the same objects the agent watches, but read from files: manifests as
//! users write them (multi-document YAML), or cluster dumps (`kubectl get ... -o yaml|json`,
//! which are `kind: List` or `PodList`-style documents). This module finds the files, splits
//! and parses them, picks out the four kinds nftpol reads, and converts each through
//! [`crate::core::convert`], so a file is accepted exactly when the agent would accept the
//! same objects from the API server.
//!
//! Rules:
//! - Paths are files or directories. Directories are read recursively, files ending `.yaml`,
//!   `.yml` or `.json` only, in sorted order; entries whose names start with `.` are skipped
//!   (this also keeps the `..data` links of a mounted ConfigMap from being read twice). A file
//!   named twice is read once.
//! - A `.json` file is one JSON document; any other file is a YAML stream (`---`-separated).
//!   Empty documents are fine.
//! - Kinds read: v1 `Namespace`, `Pod`, `Node` and networking.k8s.io/v1 `NetworkPolicy`,
//!   alone or inside `kind: List` / `*List` documents (whose items may leave out `kind` and
//!   `apiVersion`, as API list responses do). Anything else is skipped with a warning.
//! - A namespaced object without `metadata.namespace` is in `default`.
//! - Two objects of the same kind and name (and namespace) are an error naming both places.
//!
//! Errors: loading does not stop at the first problem: every file is read and every problem
//! collected, then reported together ([`InputError::Many`] when there are several), so a user
//! fixes a directory of manifests in one pass. There is never a partial result. Each message
//! is complete on its own (file, document, object, field, what is wrong); error values carry
//! no `source()` chain, so printing a chain does not repeat the cause.
//!
//! Order: objects come out in input order (paths as given, directory entries sorted, documents
//! and list items in file order), so the same input always gives the same [`Loaded`].

mod de;
mod documents;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::networking::v1 as netv1;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::core::cluster::{Namespace, Node, Pod};
use crate::core::convert::{ConvertError, Converter, DEFAULT_NAMESPACE, printable};
use crate::core::policy::NetworkPolicy;
use documents::{Format, SyntaxError};

/// Everything read from the input files, in input order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    pub policies: Vec<NetworkPolicy>,
    /// Objects skipped (unknown kinds) and similar notices, one line each, naming the file.
    pub warnings: Vec<String>,
}

/// Where something is in the input: file, document, list item, position.
///
/// Displays as `dir/policies.yaml:12:3: document 2: items[4]`, leaving out what is unknown or
/// obvious (the document number of a single-document file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based document number, when the file holds several documents.
    pub document: Option<usize>,
    /// Indexes into `items` of (nested) lists, outermost first.
    pub items: Vec<usize>,
    /// 1-based line and column, for syntax errors.
    pub position: Option<(u64, u64)>,
}

impl Origin {
    fn file(file: &Path) -> Self {
        Origin {
            file: file.to_path_buf(),
            document: None,
            items: Vec::new(),
            position: None,
        }
    }

    fn item(&self, i: usize) -> Self {
        let mut o = self.clone();
        o.items.push(i);
        o
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(n) = self.document {
            write!(f, ": document {n}")?;
        }
        for (depth, i) in self.items.iter().enumerate() {
            let sep = if depth == 0 { ": " } else { "." };
            write!(f, "{sep}items[{i}]")?;
        }
        Ok(())
    }
}

/// A problem with the input. Every message names the file and, where there is one, the
/// document, the object and the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    #[error("{}: cannot read: {error}", .path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: not UTF-8 text", .path.display())]
    NotUtf8 { path: PathBuf },
    /// The YAML or JSON parser rejected a document.
    #[error("{origin}: invalid {format}: {message}")]
    Syntax {
        origin: Box<Origin>,
        format: &'static str,
        message: String,
    },
    #[error(
        "{origin}: not a Kubernetes object: expected a mapping with apiVersion and kind, found {found}"
    )]
    NotAnObject {
        origin: Box<Origin>,
        found: &'static str,
    },
    /// `apiVersion`, `kind` or a list's `items` is missing or has the wrong type.
    #[error("{origin}: {} {object}: {field}: {problem}", .kind.as_deref().unwrap_or("object"))]
    Header {
        origin: Box<Origin>,
        kind: Option<String>,
        object: String,
        field: &'static str,
        problem: &'static str,
    },
    /// The object does not fit the Kubernetes schema of its kind (e.g. a string where a
    /// number belongs).
    #[error("{origin}: {kind} {object}: {}", field_message(.field, .message))]
    Schema {
        origin: Box<Origin>,
        kind: &'static str,
        object: String,
        /// Field path, e.g. `spec.ingress[0].ports[0].port`; empty for the whole object.
        field: String,
        message: String,
    },
    /// The object fits the schema but breaks a rule of the API (see [`ConvertError`]).
    #[error("{origin}: {error}")]
    Convert {
        origin: Box<Origin>,
        error: Box<ConvertError>,
    },
    #[error("{origin}: {kind} {object}: metadata.name: duplicate object, first defined at {first}")]
    Duplicate {
        origin: Box<Origin>,
        first: Box<Origin>,
        kind: &'static str,
        object: String,
    },
    /// Several problems, in input order, one per line.
    #[error("{} problems in the input:\n{}", .0.len(), lines(.0))]
    Many(Vec<InputError>),
}

fn field_message(field: &str, message: &str) -> String {
    if field.is_empty() {
        message.to_string()
    } else {
        format!("{field}: {message}")
    }
}

fn lines(errors: &[InputError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl InputError {
    /// The individual problems (one for anything but [`InputError::Many`]).
    pub fn problems(&self) -> Vec<&InputError> {
        match self {
            InputError::Many(all) => all.iter().collect(),
            one => vec![one],
        }
    }
}

/// Reads every object from `paths` (files or directories). See the module documentation for
/// the rules.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, InputError> {
    let mut loader = Loader::default();
    for path in paths {
        loader.path(path);
    }
    loader.finish()
}

#[derive(Default)]
struct Loader {
    converter: Converter,
    loaded: Loaded,
    errors: Vec<InputError>,
    /// Canonical paths of files already read.
    files: HashSet<PathBuf>,
    /// (kind, object) -> where it was first defined.
    objects: HashMap<(&'static str, String), Origin>,
}

impl Loader {
    fn finish(mut self) -> Result<Loaded, InputError> {
        tracing::debug!(
            namespaces = self.loaded.namespaces.len(),
            pods = self.loaded.pods.len(),
            nodes = self.loaded.nodes.len(),
            policies = self.loaded.policies.len(),
            warnings = self.loaded.warnings.len(),
            errors = self.errors.len(),
            "input loaded"
        );
        match self.errors.len() {
            0 => Ok(self.loaded),
            1 => Err(self.errors.remove(0)),
            _ => Err(InputError::Many(self.errors)),
        }
    }

    fn warn(&mut self, message: String) {
        tracing::warn!("{message}");
        self.loaded.warnings.push(message);
    }

    fn path(&mut self, path: &Path) {
        match fs::metadata(path) {
            Err(error) => self.errors.push(InputError::Read {
                path: path.to_path_buf(),
                error,
            }),
            Ok(meta) if meta.is_dir() => {
                let mut files = Vec::new();
                let mut visited = HashSet::new();
                self.walk(path, &mut files, &mut visited);
                if files.is_empty() {
                    self.warn(format!(
                        "{}: no .yaml, .yml or .json files in this directory",
                        path.display()
                    ));
                }
                for file in files {
                    self.file(&file);
                }
            }
            Ok(_) => self.file(path),
        }
    }

    /// Collects manifest files under `dir`, depth first, entries sorted by name.
    fn walk(&mut self, dir: &Path, files: &mut Vec<PathBuf>, visited: &mut HashSet<PathBuf>) {
        // Symlinked directories may loop back.
        if let Ok(canonical) = fs::canonicalize(dir)
            && !visited.insert(canonical)
        {
            return;
        }
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) => {
                self.errors.push(InputError::Read {
                    path: dir.to_path_buf(),
                    error,
                });
                return;
            }
        };
        let mut names = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => names.push(entry.file_name()),
                Err(error) => self.errors.push(InputError::Read {
                    path: dir.to_path_buf(),
                    error,
                }),
            }
        }
        names.sort();
        for name in names {
            if name.as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let path = dir.join(&name);
            match fs::metadata(&path) {
                Err(error) => self.errors.push(InputError::Read { path, error }),
                Ok(meta) if meta.is_dir() => self.walk(&path, files, visited),
                Ok(_) => {
                    let manifest = path.extension().is_some_and(|e| {
                        ["yaml", "yml", "json"]
                            .iter()
                            .any(|x| e.eq_ignore_ascii_case(x))
                    });
                    if manifest {
                        files.push(path);
                    }
                }
            }
        }
    }

    fn file(&mut self, path: &Path) {
        if let Ok(canonical) = fs::canonicalize(path)
            && !self.files.insert(canonical)
        {
            tracing::debug!(file = %path.display(), "already read");
            return;
        }
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) => {
                self.errors.push(InputError::Read {
                    path: path.to_path_buf(),
                    error,
                });
                return;
            }
        };
        let Ok(text) = String::from_utf8(bytes) else {
            self.errors.push(InputError::NotUtf8 {
                path: path.to_path_buf(),
            });
            return;
        };
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        if json {
            self.json_file(path, &text);
            return;
        }
        let format = Format::Yaml;
        let (docs, count) = documents::parse(&text, format);
        for doc in docs {
            match doc {
                Err(SyntaxError {
                    document,
                    position,
                    message,
                }) => {
                    let mut origin = Origin::file(path);
                    origin.document = (count > 1).then_some(document);
                    origin.position = position;
                    self.errors.push(InputError::Syntax {
                        origin: Box::new(origin),
                        format: format.name(),
                        message,
                    });
                }
                Ok(doc) => {
                    if let Some(value) = doc.value {
                        let mut origin = Origin::file(path);
                        origin.document = (count > 1).then_some(doc.number);
                        self.object(&origin, &value, None);
                    }
                }
            }
        }
    }

    /// A JSON file, streamed: the items of a (possibly huge) `kind: List` are converted one at a
    /// time as the parser reaches them, so memory holds the trimmed objects, not the document.
    fn json_file(&mut self, path: &Path, text: &str) {
        let origin = Origin::file(path);
        if text.trim().is_empty() {
            return;
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let result = serde::de::DeserializeSeed::deserialize(
            stream::TopLevel {
                loader: self,
                origin: &origin,
            },
            &mut de,
        )
        .and_then(|top| de.end().map(|()| top));
        match result {
            Ok(top) => self.json_top_level(&origin, top),
            Err(e) => {
                let full = e.to_string();
                let suffix = format!(" at line {} column {}", e.line(), e.column());
                let mut origin = origin;
                origin.position = (e.line() > 0).then(|| (e.line() as u64, e.column() as u64));
                self.errors.push(InputError::Syntax {
                    origin: Box::new(origin),
                    format: Format::Json.name(),
                    message: full.strip_suffix(&suffix).unwrap_or(&full).to_string(),
                });
            }
        }
    }

    /// What remains of a streamed JSON document: a single object, or a list whose items that
    /// did not name their own kind still wait for the list's.
    fn json_top_level(&mut self, origin: &Origin, top: stream::Top) {
        let stream::Top {
            map,
            items,
            pending,
        } = top;
        if !items {
            match pending.into_iter().next() {
                // Not an object at all (`null` is an empty document).
                Some((_, Value::Null)) => {}
                Some((_, other)) => self.object(origin, &other, None),
                None => self.object(origin, &Value::Object(map), None),
            }
            return;
        }
        let value = Value::Object(map);
        let Value::Object(map) = &value else {
            return;
        };
        let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
        let api_version = map
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !(kind == "List" || kind.ends_with("List")) {
            self.errors.push(InputError::Header {
                origin: Box::new(origin.clone()),
                kind: (!kind.is_empty()).then(|| kind.to_string()),
                object: object_name(map, None),
                field: "kind",
                problem: "a document with items must be a List",
            });
            return;
        }
        let item_kind = kind.strip_suffix("List").unwrap_or_default();
        for (i, item) in pending {
            self.object(&origin.item(i), &item, Some((item_kind, api_version)));
        }
    }

    /// One object or list. `inherited` is (kind, apiVersion) for items of a list, used when
    /// the item does not say.
    fn object(&mut self, origin: &Origin, value: &Value, inherited: Option<(&str, &str)>) {
        let Value::Object(map) = value else {
            self.errors.push(InputError::NotAnObject {
                origin: Box::new(origin.clone()),
                found: type_name(value),
            });
            return;
        };
        let header_error = |kind: Option<&str>, field, problem| InputError::Header {
            origin: Box::new(origin.clone()),
            kind: kind.map(str::to_string),
            object: object_name(map, None),
            field,
            problem,
        };
        let kind = match map.get("kind") {
            None | Some(Value::Null) => match inherited {
                Some((kind, _)) if !kind.is_empty() => kind,
                _ => {
                    self.errors.push(header_error(None, "kind", "required"));
                    return;
                }
            },
            Some(Value::String(kind)) if !kind.is_empty() => kind.as_str(),
            Some(_) => {
                self.errors
                    .push(header_error(None, "kind", "must be a non-empty string"));
                return;
            }
        };
        let api_version = match map.get("apiVersion") {
            None | Some(Value::Null) => match inherited {
                Some((_, api_version)) => api_version,
                None => {
                    self.errors
                        .push(header_error(Some(kind), "apiVersion", "required"));
                    return;
                }
            },
            Some(Value::String(v)) if !v.is_empty() => v.as_str(),
            Some(_) => {
                self.errors.push(header_error(
                    Some(kind),
                    "apiVersion",
                    "must be a non-empty string",
                ));
                return;
            }
        };

        if kind == "List" || (kind.ends_with("List") && map.contains_key("items")) {
            let items = match map.get("items") {
                None | Some(Value::Null) => &[][..],
                Some(Value::Array(items)) => items.as_slice(),
                Some(_) => {
                    self.errors
                        .push(header_error(Some(kind), "items", "must be a list"));
                    return;
                }
            };
            // `PodList` items may leave out `kind: Pod`; `List` items must say what they are.
            let item_kind = kind.strip_suffix("List").unwrap_or_default();
            for (i, item) in items.iter().enumerate() {
                self.object(&origin.item(i), item, Some((item_kind, api_version)));
            }
            return;
        }

        match (api_version, kind) {
            ("v1", "Namespace") => {
                let converted = self
                    .typed::<corev1::Namespace>(origin, "Namespace", map, value)
                    .and_then(|ns| self.convert(origin, |c| c.namespace(&ns)));
                if let Some(ns) = converted
                    && self.first_definition(origin, "Namespace", ns.name.to_string())
                {
                    self.loaded.namespaces.push(ns);
                }
            }
            ("v1", "Pod") => {
                let converted = self
                    .typed::<corev1::Pod>(origin, "Pod", map, value)
                    .and_then(|pod| self.convert(origin, |c| c.pod(&pod)));
                if let Some(pod) = converted
                    && self.first_definition(origin, "Pod", pod.key().to_string())
                {
                    self.loaded.pods.push(pod);
                }
            }
            ("v1", "Node") => {
                let converted = self
                    .typed::<corev1::Node>(origin, "Node", map, value)
                    .and_then(|node| self.convert(origin, |c| c.node(&node)));
                if let Some(node) = converted
                    && self.first_definition(origin, "Node", node.name.to_string())
                {
                    self.loaded.nodes.push(node);
                }
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                let converted = self
                    .typed::<netv1::NetworkPolicy>(origin, "NetworkPolicy", map, value)
                    .and_then(|np| self.convert(origin, |c| c.network_policy(&np)));
                if let Some(np) = converted
                    && self.first_definition(origin, "NetworkPolicy", np.key().to_string())
                {
                    self.loaded.policies.push(np);
                }
            }
            _ => {
                let object = object_name(map, None);
                self.warn(format!(
                    "{origin}: skipping {api_version} {kind} {object}: nftpol reads only v1 \
                     Namespace, Pod and Node, and networking.k8s.io/v1 NetworkPolicy"
                ));
            }
        }
    }

    fn typed<T: DeserializeOwned>(
        &mut self,
        origin: &Origin,
        kind: &'static str,
        map: &Map<String, Value>,
        value: &Value,
    ) -> Option<T> {
        match de::from_value::<T>(value) {
            Ok(object) => Some(object),
            Err(e) => {
                let namespaced = matches!(kind, "Pod" | "NetworkPolicy");
                self.errors.push(InputError::Schema {
                    origin: Box::new(origin.clone()),
                    kind,
                    object: object_name(map, namespaced.then_some(DEFAULT_NAMESPACE)),
                    field: e.path(),
                    message: e.message().to_string(),
                });
                None
            }
        }
    }

    fn convert<T>(
        &mut self,
        origin: &Origin,
        f: impl FnOnce(&mut Converter) -> Result<T, ConvertError>,
    ) -> Option<T> {
        match f(&mut self.converter) {
            Ok(object) => Some(object),
            Err(error) => {
                self.errors.push(InputError::Convert {
                    origin: Box::new(origin.clone()),
                    error: Box::new(error),
                });
                None
            }
        }
    }

    /// Records where `kind object` is defined; false (and an error) if it already was.
    fn first_definition(&mut self, origin: &Origin, kind: &'static str, object: String) -> bool {
        match self.objects.entry((kind, object)) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(origin.clone());
                true
            }
            std::collections::hash_map::Entry::Occupied(first) => {
                let ((kind, object), first) = (first.key().clone(), first.get().clone());
                self.errors.push(InputError::Duplicate {
                    origin: Box::new(origin.clone()),
                    first: Box::new(first),
                    kind,
                    object,
                });
                false
            }
        }
    }
}

/// `namespace/name` (or `name`) as far as the metadata says, for messages about objects that
/// could not be read completely.
fn object_name(map: &Map<String, Value>, default_namespace: Option<&str>) -> String {
    let meta = map.get("metadata").and_then(Value::as_object);
    let field = |f: &str| {
        meta.and_then(|m| m.get(f))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let name = field("name").unwrap_or("<unnamed>");
    let full = match field("namespace").or(default_namespace) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    };
    printable(&full).into_owned()
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Streaming deserialisation of one JSON document: every field but `items` is kept; each
/// element of `items` is handed to the loader as soon as it is parsed.
mod stream {
    use std::fmt;

    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Value};

    use super::{Loader, Origin};

    pub(super) struct Top {
        /// The document's fields other than `items`.
        pub map: Map<String, Value>,
        /// Whether it had an `items` array.
        pub items: bool,
        /// Items that did not say their kind or apiVersion, with their index: they inherit the
        /// list's, known only once the whole document is read.
        pub pending: Vec<(usize, Value)>,
    }

    pub(super) struct TopLevel<'a> {
        pub loader: &'a mut Loader,
        pub origin: &'a Origin,
    }

    impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
        type Value = Top;

        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Top, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for TopLevel<'_> {
        type Value = Top;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a Kubernetes object or List")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Top, A::Error> {
            let mut top = Top {
                map: Map::new(),
                items: false,
                pending: Vec::new(),
            };
            while let Some(key) = access.next_key::<String>()? {
                if key == "items" {
                    top.items = true;
                    access.next_value_seed(Items {
                        loader: &mut *self.loader,
                        origin: self.origin,
                        pending: &mut top.pending,
                    })?;
                } else {
                    let value: Value = access.next_value()?;
                    top.map.insert(key, value);
                }
            }
            Ok(top)
        }

        // Anything but an object: kept as is, reported by the loader.
        fn visit_seq<A: SeqAccess<'de>>(self, access: A) -> Result<Top, A::Error> {
            let value = Value::deserialize_from_seq(access)?;
            Ok(Top::other(value))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Top, E> {
            Ok(Top::other(Value::String(v.to_string())))
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Top, E> {
            Ok(Top::other(Value::Bool(v)))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Top, E> {
            Ok(Top::other(Value::from(v)))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Top, E> {
            Ok(Top::other(Value::from(v)))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Top, E> {
            Ok(Top::other(Value::from(v)))
        }

        fn visit_unit<E: de::Error>(self) -> Result<Top, E> {
            Ok(Top::other(Value::Null))
        }
    }

    impl Top {
        /// A document that is not an object; the loader reports it.
        fn other(value: Value) -> Top {
            Top {
                map: Map::new(),
                items: false,
                pending: vec![(usize::MAX, value)],
            }
        }
    }

    trait FromSeq {
        fn deserialize_from_seq<'de, A: SeqAccess<'de>>(access: A) -> Result<Value, A::Error>;
    }

    impl FromSeq for Value {
        fn deserialize_from_seq<'de, A: SeqAccess<'de>>(mut access: A) -> Result<Value, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = access.next_element::<Value>()? {
                out.push(v);
            }
            Ok(Value::Array(out))
        }
    }

    struct Items<'a> {
        loader: &'a mut Loader,
        origin: &'a Origin,
        pending: &'a mut Vec<(usize, Value)>,
    }

    impl<'de> DeserializeSeed<'de> for Items<'_> {
        type Value = ();

        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Items<'_> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of Kubernetes objects in `items`")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<(), A::Error> {
            let mut i = 0;
            while let Some(item) = access.next_element::<Value>()? {
                let complete = item.as_object().is_some_and(|m| {
                    m.get("kind")
                        .and_then(Value::as_str)
                        .is_some_and(|k| !k.is_empty())
                        && m.get("apiVersion")
                            .and_then(Value::as_str)
                            .is_some_and(|v| !v.is_empty())
                });
                if complete {
                    self.loader.object(&self.origin.item(i), &item, None);
                } else {
                    self.pending.push((i, item));
                }
                i += 1;
            }
            Ok(())
        }

        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }

        fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
            Err(de::Error::custom("items: must be a list"))
        }
    }
}
