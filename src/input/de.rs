//! Typed deserialisation from a parsed document that remembers where it failed.
//!
//! Documents are parsed once into a `serde_json::Value` (YAML and JSON alike) so that the
//! loader can look at `apiVersion`, `kind` and `items` before choosing a type. Deserialising
//! that value into a k8s-openapi type with `serde_json::from_value` would lose the position of
//! a type error ("invalid type: string, expected i32" - but where?). This deserializer walks
//! the value itself and records the field path on the way back up, so schema errors read
//! `spec.ingress[0].ports[0].endPort: invalid type: ...`, spelt as Kubernetes spells paths.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde_json::{Map, Value};

use crate::core::convert::printable;

/// A deserialisation error and the path of the value it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// Innermost segment first (segments are added while the error travels up).
    path: Vec<Segment>,
    message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// A struct field: `.name`.
    Field(String),
    /// A map entry (labels, annotations): `[key]`.
    Key(String),
    /// A list element: `[3]`.
    Index(usize),
}

impl FieldError {
    fn within(mut self, segment: Segment) -> Self {
        self.path.push(segment);
        self
    }

    /// The field path, e.g. `spec.containers[0].ports[1].containerPort`; empty for the
    /// document itself.
    pub(crate) fn path(&self) -> String {
        let mut out = String::new();
        for segment in self.path.iter().rev() {
            match segment {
                Segment::Field(name) if out.is_empty() => out.push_str(name),
                Segment::Field(name) => {
                    out.push('.');
                    out.push_str(name);
                }
                Segment::Key(key) => {
                    out.push('[');
                    out.push_str(&printable(key));
                    out.push(']');
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path();
        if path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{path}: {}", self.message)
        }
    }
}

impl std::error::Error for FieldError {}

impl de::Error for FieldError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        FieldError {
            path: Vec::new(),
            message: msg.to_string(),
        }
    }
}

/// Deserialises `T` from `value`, naming the failing field.
pub(crate) fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, FieldError> {
    T::deserialize(ValueDeserializer(value))
}

struct ValueDeserializer<'a>(&'a Value);

impl<'de> de::Deserializer<'de> for ValueDeserializer<'_> {
    type Error = FieldError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else if let Some(f) = n.as_f64() {
                    visitor.visit_f64(f)
                } else {
                    Err(de::Error::custom(format!("unsupported number {n}")))
                }
            }
            Value::String(s) => visitor.visit_str(s),
            Value::Array(items) => visitor.visit_seq(Seq {
                items: items.iter().enumerate(),
            }),
            Value::Object(map) => visitor.visit_map(Entries::new(map, false)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, FieldError> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, FieldError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FieldError> {
        match self.0 {
            Value::Object(map) => visitor.visit_map(Entries::new(map, true)),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, FieldError> {
        match self.0 {
            // Unit variants; k8s-openapi has no other enums in its wire format.
            Value::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            _ => self.deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

struct Seq<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Value>>,
}

impl<'de> SeqAccess<'de> for Seq<'_> {
    type Error = FieldError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, FieldError> {
        match self.items.next() {
            None => Ok(None),
            Some((i, value)) => seed
                .deserialize(ValueDeserializer(value))
                .map(Some)
                .map_err(|e| e.within(Segment::Index(i))),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Entries<'a> {
    entries: serde_json::map::Iter<'a>,
    /// The value of the key last returned by `next_key_seed`.
    pending: Option<(&'a str, &'a Value)>,
    /// Struct fields print as `.name`, map keys as `[key]`.
    struct_fields: bool,
}

impl<'a> Entries<'a> {
    fn new(map: &'a Map<String, Value>, struct_fields: bool) -> Self {
        Entries {
            entries: map.iter(),
            pending: None,
            struct_fields,
        }
    }
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = FieldError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, FieldError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.pending = Some((key, value));
        let key_de: de::value::StrDeserializer<'_, FieldError> = key.as_str().into_deserializer();
        seed.deserialize(key_de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, FieldError> {
        let Some((key, value)) = self.pending.take() else {
            return Err(de::Error::custom("value requested before its key"));
        };
        let segment = if self.struct_fields {
            Segment::Field(key.to_string())
        } else {
            Segment::Key(key.to_string())
        };
        seed.deserialize(ValueDeserializer(value))
            .map_err(|e| e.within(segment))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use serde_json::json;

    #[test]
    fn schema_errors_name_the_field() {
        let cases = [
            (
                json!({"spec": {"ingress": [{}, {"ports": [{"port": 80, "endPort": "x"}]}]}}),
                "spec.ingress[1].ports[0].endPort: invalid type: string \"x\", expected i32",
            ),
            (
                json!({"spec": {"podSelector": []}}),
                "spec.podSelector: invalid type: sequence, expected LabelSelector",
            ),
            (
                json!({"metadata": {"labels": {"app": 1}}}),
                "metadata.labels[app]: invalid type: integer `1`, expected a string",
            ),
            (
                json!({"spec": {"ingress": [{"ports": [{"port": 4294967296u64}]}]}}),
                "spec.ingress[0].ports[0].port: invalid value: integer `4294967296`, expected a 32-bit integer",
            ),
            (
                json!("policy"),
                "invalid type: string \"policy\", expected NetworkPolicy",
            ),
        ];
        for (value, want) in cases {
            let err = from_value::<NetworkPolicy>(&value).unwrap_err();
            assert_eq!(err.to_string(), want, "{value}");
        }
    }

    #[test]
    fn valid_values_deserialise_like_serde_json() {
        let value = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "labels": {"app": "web"}, "creationTimestamp": null},
            "spec": {"containers": [{"name": "web", "ports": [{"containerPort": 80, "name": "http"}]}],
                     "hostNetwork": false},
            "status": {"podIPs": [{"ip": "10.0.0.1"}], "phase": "Running"},
        });
        let ours: Pod = from_value(&value).unwrap();
        let theirs: Pod = serde_json::from_value(value).unwrap();
        assert_eq!(ours, theirs);
    }
}
