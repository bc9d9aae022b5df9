//! An order-preserving JSON value.
//!
//! `install-cni` edits conflists that other components (flannel, kindnet, operators) wrote,
//! and the plugin sometimes rewrites a `prevResult` for another `cniVersion`. Both must keep
//! every key where it was, so that operators diffing `/etc/cni/net.d` see only our change.
//! `serde_json::Value` sorts object keys unless its `preserve_order` feature is on, and that
//! feature would leak into the whole workspace through feature unification, so this small
//! value type keeps objects as ordered key/value lists instead. Numbers stay
//! `serde_json::Number` (integers round-trip exactly; floats keep their value).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Number;

/// A JSON value whose objects keep their key order (and duplicate keys, as written).
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Json>),
    Object(Object),
}

/// A JSON object as an ordered list of members.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object(Vec<(String, Json)>);

impl Object {
    pub fn new() -> Self {
        Object(Vec::new())
    }

    /// The value of `key`; with duplicate keys the last one wins, as in Go's encoding/json
    /// (which every CNI runtime and plugin uses to read these files).
    pub fn get(&self, key: &str) -> Option<&Json> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        self.0
            .iter_mut()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Sets `key` in place if present (keeping its position), else appends it.
    pub fn insert(&mut self, key: &str, value: Json) {
        match self.get_mut(key) {
            Some(slot) => *slot = value,
            None => self.0.push((key.to_string(), value)),
        }
    }

    /// Sets `key` in place if present, else inserts it as the first member.
    pub fn insert_front(&mut self, key: &str, value: Json) {
        match self.get_mut(key) {
            Some(slot) => *slot = value,
            None => self.0.insert(0, (key.to_string(), value)),
        }
    }

    /// Removes every member named `key`; returns the last value.
    pub fn remove(&mut self, key: &str) -> Option<Json> {
        let mut removed = None;
        self.0.retain_mut(|(k, v)| {
            if k == key {
                removed = Some(std::mem::replace(v, Json::Null));
                false
            } else {
                true
            }
        });
        removed
    }

    pub fn push(&mut self, key: &str, value: Json) {
        self.0.push((key.to_string(), value));
    }
}

impl Json {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Json::Object(o) => Some(o),
            _ => None,
        }
    }

    pub fn as_object_mut(&mut self) -> Option<&mut Object> {
        match self {
            Json::Object(o) => Some(o),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Vec<Json>> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_array_mut(&mut self) -> Option<&mut Vec<Json>> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The JSON type name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }

    /// Serializes with `indent` as the indentation unit (empty: compact, one line).
    pub fn to_vec_indented(&self, indent: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::new();
        if indent.is_empty() {
            serde_json::to_writer(&mut out, self)?;
        } else {
            let formatter = serde_json::ser::PrettyFormatter::with_indent(indent);
            let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
            self.serialize(&mut ser)?;
        }
        Ok(out)
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(b) => serializer.serialize_bool(*b),
            Json::Number(n) => n.serialize(serializer),
            Json::String(s) => serializer.serialize_str(s),
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(obj) => {
                let mut map = serializer.serialize_map(Some(obj.0.len()))?;
                for (k, v) in &obj.0 {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        Number::from_f64(v)
            .map(Json::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        Json::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut obj = Object::new();
        while let Some((k, v)) = map.next_entry::<String, Json>()? {
            obj.push(&k, v);
        }
        Ok(Json::Object(obj))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_keep_key_order_through_a_round_trip() {
        let text = r#"{"zeta":1,"alpha":{"y":true,"b":null},"mid":[3,"x",-4,1.5]}"#;
        let v: Json = serde_json::from_str(text).unwrap();
        assert_eq!(v.to_vec_indented(b"").unwrap(), text.as_bytes());
    }

    #[test]
    fn pretty_printing_uses_the_given_indent() {
        let v: Json = serde_json::from_str(r#"{"a":[1],"b":{}}"#).unwrap();
        let tabs = String::from_utf8(v.to_vec_indented(b"\t").unwrap()).unwrap();
        assert_eq!(tabs, "{\n\t\"a\": [\n\t\t1\n\t],\n\t\"b\": {}\n}");
    }

    #[test]
    fn insert_keeps_position_and_remove_drops_duplicates() {
        let mut v: Json = serde_json::from_str(r#"{"a":1,"b":2,"a":3}"#).unwrap();
        let o = v.as_object_mut().unwrap();
        assert_eq!(o.get("a"), Some(&Json::Number(3.into())));
        o.insert("b", Json::Bool(false));
        o.insert_front("first", Json::Null);
        o.insert("last", Json::Null);
        assert_eq!(
            v.to_vec_indented(b"").unwrap(),
            br#"{"first":null,"a":1,"b":false,"a":3,"last":null}"#
        );
        let o = v.as_object_mut().unwrap();
        assert_eq!(o.remove("a"), Some(Json::Number(3.into())));
        assert_eq!(
            v.to_vec_indented(b"").unwrap(),
            br#"{"first":null,"b":false,"last":null}"#
        );
    }
}
