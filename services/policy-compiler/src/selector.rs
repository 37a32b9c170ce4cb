//! Label selectors (Kubernetes' matchLabels + matchExpressions) over security labels.
//!
//! A selector key may carry a source (`k8s:app`); without one (or with `any:`) it matches
//! a label of that key from any source, like Cilium's `any:` source. `matchLabels` entries
//! are `In` requirements with one value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::labels::{CONTAINER_NAMESPACE_KEY, K8S_NAMESPACE_KEY, Labels, SOURCE_ANY};

/// The operator of a requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    /// Some label of the key has one of the values.
    In,
    /// No label of the key has any of the values (absent keys match).
    NotIn,
    /// Some label of the key exists.
    Exists,
    /// No label of the key exists.
    DoesNotExist,
}

impl Operator {
    /// The Kubernetes spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Operator::In => "In",
            Operator::NotIn => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
        }
    }
}

/// A selector key: an optional source and a key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SelectorKey {
    /// The source to match; `None` matches every source.
    pub source: Option<String>,
    /// The label key.
    pub key: String,
}

impl SelectorKey {
    /// Parses `key`, `source:key` or `any:key`.
    pub fn parse(text: &str) -> SelectorKey {
        match text.split_once(':') {
            Some((source, key)) if source == SOURCE_ANY => SelectorKey {
                source: None,
                key: key.to_owned(),
            },
            Some((source, key)) => SelectorKey {
                source: Some(source.to_owned()),
                key: key.to_owned(),
            },
            None => SelectorKey {
                source: None,
                key: text.to_owned(),
            },
        }
    }

    /// The values of the labels this key matches.
    fn values<'a>(&'a self, labels: &'a Labels) -> Box<dyn Iterator<Item = &'a str> + 'a> {
        match &self.source {
            None => Box::new(labels.values_of(&self.key)),
            Some(source) => Box::new(labels.get(source, &self.key).into_iter()),
        }
    }

    /// True when the key names the pod namespace label.
    pub fn is_namespace(&self) -> bool {
        self.key == K8S_NAMESPACE_KEY || self.key == CONTAINER_NAMESPACE_KEY
    }
}

impl fmt::Display for SelectorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{source}:{}", self.key),
            None => f.write_str(&self.key),
        }
    }
}

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    /// The key.
    pub key: SelectorKey,
    /// The operator.
    pub operator: Operator,
    /// The values (In / NotIn).
    pub values: BTreeSet<String>,
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        let mut values = self.key.values(labels);
        match self.operator {
            Operator::In => values.any(|v| self.values.contains(v)),
            Operator::NotIn => !values.any(|v| self.values.contains(v)),
            Operator::Exists => values.next().is_some(),
            Operator::DoesNotExist => values.next().is_none(),
        }
    }

    fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key.key).map(String::as_str);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => !value.is_some_and(|v| self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A label selector: every requirement must hold; no requirement selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    /// matchLabels as written (key text → value), kept for display and round trips.
    pub match_labels: BTreeMap<String, String>,
    /// matchExpressions, in order.
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    /// The selector matching everything.
    pub fn everything() -> Selector {
        Selector::default()
    }

    /// A selector of matchLabels only.
    pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Selector {
        Selector {
            match_labels: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Every requirement: matchLabels first, then matchExpressions.
    pub fn requirements(&self) -> impl Iterator<Item = Requirement> + '_ {
        self.match_labels
            .iter()
            .map(|(k, v)| Requirement {
                key: SelectorKey::parse(k),
                operator: Operator::In,
                values: BTreeSet::from([v.clone()]),
            })
            .chain(self.match_expressions.iter().cloned())
    }

    /// True when the selector has no requirement.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// True when a requirement is about the pod namespace label.
    pub fn names_namespace(&self) -> bool {
        self.requirements().any(|r| r.key.is_namespace())
    }

    /// True when every requirement holds for `labels`.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements().all(|r| r.matches(labels))
    }

    /// Matches a plain key → value map (a namespace's labels), ignoring key sources.
    pub fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements().all(|r| r.matches_map(labels))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("{}");
        }
        let mut parts = Vec::new();
        for r in self.requirements() {
            let values: Vec<&str> = r.values.iter().map(String::as_str).collect();
            parts.push(match r.operator {
                Operator::In if values.len() == 1 => format!("{}={}", r.key, values[0]),
                Operator::In | Operator::NotIn => {
                    format!("{} {} ({})", r.key, r.operator.as_str(), values.join(","))
                }
                Operator::Exists => r.key.to_string(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        write!(f, "{{{}}}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(text: &str) -> Labels {
        Labels::parse_list(text).unwrap()
    }

    #[test]
    fn sources_and_operators() {
        let web = labels("k8s:app=web,container:tier=front");
        assert!(Selector::labels([("app", "web")]).matches(&web));
        assert!(Selector::labels([("any:app", "web")]).matches(&web));
        assert!(Selector::labels([("k8s:app", "web")]).matches(&web));
        assert!(!Selector::labels([("container:app", "web")]).matches(&web));
        assert!(Selector::everything().matches(&web));
        let expr = |key: &str, operator, values: &[&str]| Selector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![Requirement {
                key: SelectorKey::parse(key),
                operator,
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
        };
        assert!(expr("app", Operator::In, &["db", "web"]).matches(&web));
        assert!(!expr("app", Operator::NotIn, &["web"]).matches(&web));
        assert!(expr("env", Operator::NotIn, &["prod"]).matches(&web));
        assert!(expr("tier", Operator::Exists, &[]).matches(&web));
        assert!(!expr("k8s:tier", Operator::Exists, &[]).matches(&web));
        assert!(expr("env", Operator::DoesNotExist, &[]).matches(&web));
        assert_eq!(
            expr("app", Operator::In, &["db", "web"]).to_string(),
            "{app In (db,web)}"
        );
    }
}
