//! Label and field selectors as the API server parses them from `labelSelector=` and
//! `fieldSelector=` query parameters.
//!
//! The agent may watch only the pods of its node (`fieldSelector=spec.nodeName=<node>`) and
//! tests may filter by labels, so the test API server has to filter lists and watches the way
//! kube-apiserver does, including the "in"/"notin" set syntax and the rule that `!=` and `notin`
//! also match objects that lack the label.

use super::Kind;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    /// `key=value` or `key==value`.
    Eq(String, String),
    /// `key!=value`: also true when the label is absent.
    NotEq(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)`: also true when the label is absent.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    NotExists(String),
}

/// A parsed label selector: every requirement must hold. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<LabelReq>);

impl LabelSelector {
    /// Parses the `labelSelector` syntax; the error says which requirement is wrong.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_top_level(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(term)?);
        }
        Ok(Self(reqs))
    }

    /// Whether an object whose label values `get` returns satisfies every requirement.
    pub(crate) fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|req| match req {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|have| vs.iter().any(|v| v == have)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|have| vs.iter().all(|v| v != have)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Splits on commas that are not inside `( )`.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(term: &str) -> Result<LabelReq, String> {
    if let Some(open) = term.find('(') {
        let inner = term[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| format!("unable to parse requirement {term:?}: missing ')'"))?;
        let mut head = term[..open].split_whitespace();
        let (Some(key), Some(op), None) = (head.next(), head.next(), head.next()) else {
            return Err(format!(
                "unable to parse requirement {term:?}: expected `key in (...)` or `key notin (...)`"
            ));
        };
        let key = valid_key(key, term)?;
        let values = inner
            .split(',')
            .map(|v| valid_value(v.trim(), term))
            .collect::<Result<Vec<_>, _>>()?;
        return match op {
            "in" => Ok(LabelReq::In(key, values)),
            "notin" => Ok(LabelReq::NotIn(key, values)),
            other => Err(format!(
                "unable to parse requirement {term:?}: unknown operator {other:?}"
            )),
        };
    }
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelReq::NotExists(valid_key(key.trim(), term)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(LabelReq::NotEq(
            valid_key(k.trim(), term)?,
            valid_value(v.trim(), term)?,
        ));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(LabelReq::Eq(
            valid_key(k.trim(), term)?,
            valid_value(v.trim(), term)?,
        ));
    }
    Ok(LabelReq::Exists(valid_key(term, term)?))
}

fn valid_key(key: &str, term: &str) -> Result<String, String> {
    let ok = !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(key.to_string())
    } else {
        Err(format!(
            "unable to parse requirement {term:?}: invalid label key {key:?}"
        ))
    }
}

fn valid_value(value: &str, term: &str) -> Result<String, String> {
    let ok = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!(
            "unable to parse requirement {term:?}: invalid label value {value:?}"
        ))
    }
}

/// Checks a label as kube-apiserver validates object labels: the key is an optional DNS
/// subdomain prefix and `/` then a name of at most 63 characters (alphanumerics, `-`, `_`,
/// `.`, starting and ending alphanumeric); the value is empty or such a name.
pub(crate) fn validate_label(key: &str, value: &str) -> Result<(), String> {
    fn qualified_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && name
                .as_bytes()
                .first()
                .is_some_and(u8::is_ascii_alphanumeric)
            && name
                .as_bytes()
                .last()
                .is_some_and(u8::is_ascii_alphanumeric)
    }
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    if !prefix_ok || !qualified_name(name) {
        return Err(format!(
            "metadata.labels: Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (an optional prefix is a DNS subdomain)"
        ));
    }
    if !value.is_empty() && !qualified_name(value) {
        return Err(format!(
            "metadata.labels: Invalid value: {value:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// Which indexed field a field selector term reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
    /// Index into the kind's [`Kind::fields`].
    Indexed(usize),
}

/// A parsed field selector: `field=value`, `field==value`, `field!=value`, comma-separated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<(Field, bool, String)>);

impl FieldSelector {
    /// Parses a field selector for `kind`; like kube-apiserver, fields the kind does not index
    /// are an error ("field label not supported").
    pub(crate) fn parse(text: &str, kind: Kind) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in text.split(',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (path, equal, value) = if let Some((p, v)) = term.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (p, true, v)
            } else {
                return Err(format!(
                    "invalid field selector term {term:?}: expected field=value"
                ));
            };
            let path = path.trim();
            let field = match path {
                "metadata.name" => Field::Name,
                "metadata.namespace" => Field::Namespace,
                _ => kind
                    .fields()
                    .iter()
                    .position(|(p, _)| *p == path)
                    .map(Field::Indexed)
                    .ok_or_else(|| {
                        format!(
                            "field label not supported: {path} (kind {}; supported: metadata.name, metadata.namespace{})",
                            kind.kind_name(),
                            kind.fields()
                                .iter()
                                .map(|(p, _)| format!(", {p}"))
                                .collect::<String>()
                        )
                    })?,
            };
            terms.push((field, equal, value.trim().to_string()));
        }
        Ok(Self(terms))
    }

    /// Whether an object with this namespace, name and indexed field values (`field(i)`:
    /// the value of [`Kind::fields`]`[i]`) matches.
    pub(crate) fn matches<'a>(
        &self,
        namespace: &str,
        name: &str,
        field: impl Fn(usize) -> &'a str,
    ) -> bool {
        self.0.iter().all(|(f, equal, value)| {
            let have = match f {
                Field::Name => name,
                Field::Namespace => namespace,
                Field::Indexed(i) => field(*i),
            };
            (have == value) == *equal
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(selector: &str, pairs: &[(&str, &str)]) -> bool {
        LabelSelector::parse(selector)
            .unwrap_or_else(|e| panic!("{selector}: {e}"))
            .matches(|key| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v))
    }

    #[test]
    fn not_equal_and_notin_match_objects_without_the_label() {
        assert!(matches("app!=web", &[]));
        assert!(matches("app notin (web, db)", &[("tier", "x")]));
        assert!(!matches("app notin (web,db)", &[("app", "db")]));
        assert!(!matches("app!=web", &[("app", "web")]));
    }

    #[test]
    fn in_exists_and_not_exists_follow_the_kubernetes_syntax() {
        assert!(matches(
            "app in (web,db),tier",
            &[("app", "db"), ("tier", "")]
        ));
        assert!(!matches("app in (web,db),tier", &[("app", "db")]));
        assert!(matches("!canary", &[("app", "db")]));
        assert!(!matches("!canary", &[("canary", "true")]));
        assert!(matches("app==web", &[("app", "web")]));
        assert!(matches("", &[]));
    }

    #[test]
    fn malformed_selectors_are_rejected_with_the_term() {
        for bad in [
            "app in web",
            "app in (web",
            "a b",
            "app=we b",
            "app maybe (x)",
        ] {
            let err = LabelSelector::parse(bad).expect_err(bad);
            assert!(err.contains("unable to parse requirement"), "{bad}: {err}");
        }
    }

    #[test]
    fn labels_are_validated_like_the_api_server_does() {
        for (key, value) in [
            ("app", "web"),
            ("example.com/tier", ""),
            ("a_b.c-d", "X.y_z-1"),
        ] {
            assert_eq!(validate_label(key, value), Ok(()), "{key}={value}");
        }
        let long = "x".repeat(64);
        for (key, value) in [
            ("", "x"),
            ("-app", "x"),
            ("Example.com/app", "x"),
            ("app", "-x"),
            ("app", "has space"),
            ("app", long.as_str()),
        ] {
            assert!(validate_label(key, value).is_err(), "{key}={value}");
        }
    }

    #[test]
    fn field_selectors_only_accept_fields_the_kind_indexes() {
        let sel = FieldSelector::parse(
            "spec.nodeName=node-a,metadata.namespace!=kube-system",
            Kind::Pod,
        )
        .expect("pod selector");
        let on = |node: &'static str| move |i: usize| if i == 0 { node } else { "" };
        assert!(sel.matches("default", "p", on("node-a")));
        assert!(!sel.matches("kube-system", "p", on("node-a")));
        assert!(!sel.matches("default", "p", on("node-b")));
        let err = FieldSelector::parse("spec.nodeName=x", Kind::NetworkPolicy).expect_err("netpol");
        assert!(
            err.contains("field label not supported: spec.nodeName"),
            "{err}"
        );
    }
}
