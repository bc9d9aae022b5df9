//! Label selectors, exactly as Kubernetes evaluates them.
//!
//! A [`Selector`] is the AND of its requirements; `matchLabels` entries become `In` with one
//! value. The empty selector matches everything. Selectors are kept in a canonical order so
//! that two spellings of the same selector compare equal: the compiler shares one resolved peer
//! group between all rules that use the same selector.

use std::collections::BTreeSet;
use std::fmt;

use super::cluster::{Labels, Str};

/// A selector operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Operator {
    /// Parses the API spelling; anything else is invalid.
    pub fn parse(s: &str) -> Option<Operator> {
        match s {
            "In" => Some(Operator::In),
            "NotIn" => Some(Operator::NotIn),
            "Exists" => Some(Operator::Exists),
            "DoesNotExist" => Some(Operator::DoesNotExist),
            _ => None,
        }
    }
}

/// One requirement on one label key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: Str,
    pub operator: Operator,
    /// Non-empty for In and NotIn, empty for Exists and DoesNotExist.
    pub values: BTreeSet<Str>,
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            // A pod without the key satisfies NotIn (as in Kubernetes).
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A label selector: all requirements must hold. Empty matches every object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches everything (`{}`).
    pub fn everything() -> Self {
        Selector::default()
    }

    /// Builds a selector from requirements, in canonical order and without duplicates.
    pub fn new(requirements: impl IntoIterator<Item = Requirement>) -> Self {
        let mut requirements: Vec<Requirement> = requirements.into_iter().collect();
        requirements.sort();
        requirements.dedup();
        Selector { requirements }
    }

    /// `matchLabels`-style selector.
    pub fn from_labels<K: Into<Str>, V: Into<Str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Selector::new(pairs.into_iter().map(|(k, v)| Requirement {
            key: k.into(),
            operator: Operator::In,
            values: BTreeSet::from([v.into()]),
        }))
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// The selector in `kubectl`'s string syntax, e.g. `app=web,tier in (a,b),!legacy`; the empty
/// selector prints as `{}`.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let values = || {
                r.values
                    .iter()
                    .map(|v| v.as_ref())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            match r.operator {
                Operator::In if r.values.len() == 1 => write!(f, "{}={}", r.key, values())?,
                Operator::In => write!(f, "{} in ({})", r.key, values())?,
                Operator::NotIn if r.values.len() == 1 => write!(f, "{}!={}", r.key, values())?,
                Operator::NotIn => write!(f, "{} notin ({})", r.key, values())?,
                Operator::Exists => write!(f, "{}", r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(key: &str, op: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator: op,
            values: values.iter().map(|v| Str::from(*v)).collect(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().map(|(k, v)| (*k, *v)))
    }

    #[test]
    fn empty_selector_matches_everything_including_unlabelled() {
        assert!(Selector::everything().matches(&Labels::empty()));
        assert!(Selector::everything().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn operators_follow_kubernetes_semantics() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let bare = Labels::empty();
        let cases = [
            (req("app", Operator::In, &["web", "api"]), true, false),
            (req("app", Operator::In, &["api"]), false, false),
            // NotIn matches objects without the key.
            (req("app", Operator::NotIn, &["api"]), true, true),
            (req("app", Operator::NotIn, &["web"]), false, true),
            (req("tier", Operator::Exists, &[]), true, false),
            (req("tier", Operator::DoesNotExist, &[]), false, true),
        ];
        for (r, on_web, on_bare) in cases {
            assert_eq!(r.matches(&web), on_web, "{r:?} on web");
            assert_eq!(r.matches(&bare), on_bare, "{r:?} on unlabelled");
        }
    }

    #[test]
    fn requirements_are_anded() {
        let s = Selector::new([
            req("app", Operator::In, &["web"]),
            req("tier", Operator::NotIn, &["back"]),
        ]);
        assert!(s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "back")])));
        assert!(!s.matches(&labels(&[("tier", "front")])));
    }

    #[test]
    fn equal_selectors_in_any_order_compare_equal() {
        let a = Selector::new([
            req("b", Operator::Exists, &[]),
            req("a", Operator::In, &["x"]),
        ]);
        let b = Selector::new([
            req("a", Operator::In, &["x"]),
            req("b", Operator::Exists, &[]),
        ]);
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "a=x,b");
    }

    #[test]
    fn display_uses_kubectl_syntax() {
        let s = Selector::new([
            req("app", Operator::In, &["a", "b"]),
            req("env", Operator::NotIn, &["dev"]),
            req("x", Operator::DoesNotExist, &[]),
        ]);
        assert_eq!(s.to_string(), "app in (a,b),env!=dev,!x");
        assert_eq!(Selector::everything().to_string(), "{}");
    }
}
