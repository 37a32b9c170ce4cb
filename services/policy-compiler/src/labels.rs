//! Security labels: `source:key=value`, as Cilium writes them (`k8s:app=web`,
//! `container:namespace=default`, `reserved:host`), and the sorted sets identities stand for.

use std::collections::BTreeMap;
use std::fmt;

/// Source of a label given without one.
pub const SOURCE_UNSPEC: &str = "unspec";
/// Source of reserved identities' labels.
pub const SOURCE_RESERVED: &str = "reserved";
/// Source of CIDR identities' labels.
pub const SOURCE_CIDR: &str = "cidr";
/// In a selector, matches every source.
pub const SOURCE_ANY: &str = "any";

/// The Kubernetes label holding a pod's namespace (source `k8s`).
pub const K8S_NAMESPACE_KEY: &str = "io.kubernetes.pod.namespace";
/// The standalone (agent-derived) label holding a pod's namespace (source `container`).
pub const CONTAINER_NAMESPACE_KEY: &str = "namespace";
/// Prefix of the labels carrying the labels of a pod's namespace (as Cilium adds them).
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// The namespace label Kubernetes puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// One security label.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    /// Where it comes from (`k8s`, `container`, `reserved`, `cidr`, `unspec`).
    pub source: String,
    /// The key.
    pub key: String,
    /// The value (may be empty).
    pub value: String,
}

impl Label {
    /// A label; an empty source is read as `unspec`.
    pub fn new(source: &str, key: &str, value: &str) -> Label {
        Label {
            source: if source.is_empty() {
                SOURCE_UNSPEC.to_owned()
            } else {
                source.to_owned()
            },
            key: key.to_owned(),
            value: value.to_owned(),
        }
    }

    /// Parses `source:key=value`, `key=value` (source `unspec`) or `source:key`.
    pub fn parse(text: &str) -> Result<Label, String> {
        let (head, value) = match text.split_once('=') {
            Some((head, value)) => (head, value),
            None => (text, ""),
        };
        let (source, key) = match head.split_once(':') {
            Some((source, key)) => (source, key),
            None => ("", head),
        };
        if key.is_empty() {
            return Err(format!(
                "{text:?} is not a label (SOURCE:KEY=VALUE, KEY=VALUE)"
            ));
        }
        Ok(Label::new(source, key, value))
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.source, self.key)
        } else {
            write!(f, "{}:{}={}", self.source, self.key, self.value)
        }
    }
}

/// A set of labels: at most one value per (source, key), sorted by source then key.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(BTreeMap<(String, String), String>);

impl Labels {
    /// The empty set.
    pub fn new() -> Labels {
        Labels::default()
    }

    /// Adds (or replaces) a label.
    pub fn insert(&mut self, label: Label) {
        self.0.insert((label.source, label.key), label.value);
    }

    /// The labels, sorted.
    pub fn iter(&self) -> impl Iterator<Item = Label> + '_ {
        self.0.iter().map(|((source, key), value)| Label {
            source: source.clone(),
            key: key.clone(),
            value: value.clone(),
        })
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Values of `key` under any source.
    pub fn values_of<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |((_, k), _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `source:key`.
    pub fn get(&self, source: &str, key: &str) -> Option<&str> {
        self.0
            .get(&(source.to_owned(), key.to_owned()))
            .map(String::as_str)
    }

    /// The pod namespace these labels belong to: `io.kubernetes.pod.namespace` (any source),
    /// else `namespace` (any source: the agent writes `container:namespace`).
    pub fn namespace(&self) -> Option<&str> {
        self.values_of(K8S_NAMESPACE_KEY)
            .next()
            .or_else(|| self.values_of(CONTAINER_NAMESPACE_KEY).next())
    }

    /// The labels of the pod's namespace, as a Kubernetes namespaceSelector sees them:
    /// `kubernetes.io/metadata.name=<namespace>` plus every `io.cilium.k8s.namespace.labels.K=V`
    /// as `K=V`.
    pub fn namespace_labels(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for ((_, key), value) in &self.0 {
            if let Some(k) = key.strip_prefix(NAMESPACE_LABELS_PREFIX) {
                out.insert(k.to_owned(), value.clone());
            }
        }
        if let Some(ns) = self.namespace() {
            out.insert(NAMESPACE_NAME_LABEL.to_owned(), ns.to_owned());
        }
        out
    }

    /// The canonical text of the set: `source:key=value` sorted, one per line. Equal sets
    /// have equal texts; identities are indexed by its hash.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        for ((source, key), value) in &self.0 {
            out.push_str(source);
            out.push(':');
            out.push_str(key);
            out.push('=');
            out.push_str(value);
            out.push('\n');
        }
        out
    }

    /// Parses labels written `source:key=value`, separated by commas or spaces.
    pub fn parse_list(text: &str) -> Result<Labels, String> {
        let mut labels = Labels::new();
        for item in text.split([',', ' ']).filter(|s| !s.is_empty()) {
            labels.insert(Label::parse(item)?);
        }
        Ok(labels)
    }
}

impl FromIterator<Label> for Labels {
    fn from_iter<T: IntoIterator<Item = Label>>(iter: T) -> Self {
        let mut labels = Labels::new();
        for label in iter {
            labels.insert(label);
        }
        labels
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for label in self.iter() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{label}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let l = Label::parse("k8s:app=web").unwrap();
        assert_eq!(
            (l.source.as_str(), l.key.as_str(), l.value.as_str()),
            ("k8s", "app", "web")
        );
        assert_eq!(Label::parse("app=web").unwrap().source, "unspec");
        assert_eq!(
            Label::parse("reserved:host").unwrap().to_string(),
            "reserved:host"
        );
        assert!(Label::parse("=x").is_err());
        let set = Labels::parse_list("k8s:b=2, container:a=1").unwrap();
        assert_eq!(set.to_string(), "container:a=1,k8s:b=2");
        assert_eq!(set.canonical(), "container:a=1\nk8s:b=2\n");
    }

    #[test]
    fn namespace_and_namespace_labels() {
        let set = Labels::parse_list(
            "container:namespace=blue,k8s:io.cilium.k8s.namespace.labels.team=x",
        )
        .unwrap();
        assert_eq!(set.namespace(), Some("blue"));
        let ns = set.namespace_labels();
        assert_eq!(ns.get("team").map(String::as_str), Some("x"));
        assert_eq!(
            ns.get(NAMESPACE_NAME_LABEL).map(String::as_str),
            Some("blue")
        );
        let k8s =
            Labels::parse_list("k8s:io.kubernetes.pod.namespace=red,container:namespace=blue")
                .unwrap();
        assert_eq!(k8s.namespace(), Some("red"));
    }
}
