//! Reads policy documents: YAML or JSON text with one or many documents (YAML `---`
//! separators, a JSON array, or a Kubernetes `List`), each a KinoNetworkPolicy /
//! KinoClusterwideNetworkPolicy (or Cilium's CiliumNetworkPolicy spellings) or a Kubernetes
//! NetworkPolicy. Every error is collected with the path of the bad field; unknown fields
//! are errors (a typo must not silently widen a policy).
//!
//! This file holds the entry points and the document envelope (apiVersion, kind, metadata);
//! `documents.rs` cuts the text into documents, `kino.rs` and `k8s.rs` read each kind's
//! spec, `fields.rs` the selectors, ports and CIDR blocks both kinds use.

mod documents;
mod fields;
mod k8s;
mod kino;

use std::collections::BTreeMap;

use kino_api::quote::{MAX_ECHO_BYTES, quote};
use serde_json::{Map, Value};

use crate::policy::bounds;
use crate::policy::model::{K8sPolicy, Policy, PolicyKey, PolicyKind, PolicySpec};
use crate::policy::validate::{self, scalar_text, show};
use crate::policy::{DocumentError, ParseOutcome};
use documents::{RawDocument, looks_like_json, split_documents};

/// Namespace of namespaced documents that name none, when the request gives none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The caller went away: the parse stopped before the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancelled {
    /// Documents read (parsed or validated) before it stopped.
    pub documents_done: usize,
}

/// Parses and validates every document of `text`. Documents without a namespace get
/// `default_namespace` ("" = "default").
pub fn parse_documents(text: &str, default_namespace: &str) -> ParseOutcome {
    match parse_documents_until(text, default_namespace, &mut |_| true) {
        Ok(outcome) => outcome,
        Err(_) => unreachable!("a parse that always keeps going is never cancelled"),
    }
}

/// [`parse_documents`], asking `keep_going(documents done so far)` before each step (each
/// document's parse and its validation): once it answers false the parse stops and returns
/// [`Cancelled`]. The text's size and nesting are checked first ([`bounds`]), so no
/// single step costs more than linear time in a text of at most 1 MiB.
///
/// [`bounds`]: crate::policy::bounds
pub fn parse_documents_until(
    text: &str,
    default_namespace: &str,
    keep_going: &mut dyn FnMut(usize) -> bool,
) -> Result<ParseOutcome, Cancelled> {
    let mut outcome = ParseOutcome::default();
    if let Err(error) = bounds::check(text, looks_like_json(text)) {
        outcome.errors.push(error.into_document_error());
        return Ok(outcome);
    }
    let default_namespace = if default_namespace.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        default_namespace
    };
    if let Err(message) = validate::check_name("namespace", default_namespace)
        .and_then(|()| validate::namespace_limit(default_namespace))
    {
        outcome.errors.push(DocumentError {
            document: 0,
            policy: None,
            path: String::new(),
            message: format!("default namespace: {message}"),
            line: 0,
        });
        return Ok(outcome);
    }
    let documents = match split_documents(text, keep_going)? {
        Ok(documents) => documents,
        Err(error) => {
            outcome.errors.push(error);
            return Ok(outcome);
        }
    };
    if documents.is_empty() {
        outcome.errors.push(DocumentError {
            document: 0,
            policy: None,
            path: String::new(),
            message: "no policy document in the text".into(),
            line: 0,
        });
    }
    let parsed = documents.len();
    for (index, document) in documents.into_iter().enumerate() {
        if !keep_going(parsed + index) {
            return Err(Cancelled {
                documents_done: parsed + index,
            });
        }
        let mut reader = Reader {
            document: index,
            policy: None,
            errors: Vec::new(),
            first_line: document.first_line,
        };
        let policy = reader.policy(&document, default_namespace);
        if reader.errors.is_empty() {
            if let Some(policy) = policy {
                outcome.policies.push(policy);
            }
        } else {
            outcome.errors.extend(reader.errors);
        }
    }
    Ok(outcome)
}

/// Walks one document, collecting errors.
struct Reader {
    document: usize,
    policy: Option<PolicyKey>,
    errors: Vec<DocumentError>,
    first_line: u32,
}

/// `path.field`; a field name from the caller (an unknown key, a label key) is cut to
/// [`MAX_ECHO_BYTES`] so an error path never repeats a huge key.
fn join(path: &str, field: &str) -> String {
    let field = if field.len() > MAX_ECHO_BYTES {
        let mut end = MAX_ECHO_BYTES;
        while !field.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…({} bytes)", &field[..end], field.len())
    } else {
        field.to_owned()
    };
    if path.is_empty() {
        field
    } else {
        format!("{path}.{field}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

impl Reader {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(DocumentError {
            document: self.document,
            policy: self.policy.clone(),
            path: path.to_owned(),
            message: message.into(),
            line: 0,
        });
    }

    /// The mapping at `path`, checking that only `allowed` fields are present.
    fn mapping<'v>(
        &mut self,
        value: &'v Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Value::Object(map) = value else {
            self.error(path, format!("{} is not a mapping", show(value)));
            return None;
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                self.error(
                    &join(path, key),
                    format!("unknown field; expected one of {}", allowed.join(", ")),
                );
            }
        }
        Some(map)
    }

    /// The list at `map[field]` (absent or null = empty).
    fn list<'v>(&mut self, map: &'v Map<String, Value>, field: &str, path: &str) -> &'v [Value] {
        match map.get(field) {
            None | Some(Value::Null) => &[],
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.error(&join(path, field), format!("{} is not a list", show(other)));
                &[]
            }
        }
    }

    fn string(&mut self, map: &Map<String, Value>, field: &str, path: &str) -> Option<String> {
        match map.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.error(
                    &join(path, field),
                    format!("{} is not a string", show(other)),
                );
                None
            }
        }
    }

    fn policy(&mut self, document: &RawDocument, default_namespace: &str) -> Option<Policy> {
        let _ = self.first_line;
        let root = self.mapping(
            &document.value,
            "",
            &["apiVersion", "kind", "metadata", "spec", "specs", "status"],
        )?;
        let api_version = self.string(root, "apiVersion", "").unwrap_or_default();
        let kind_text = self.string(root, "kind", "").unwrap_or_default();
        let (kind, cluster_wide) = match (api_version.as_str(), kind_text.as_str()) {
            ("kino.io/v1", "KinoNetworkPolicy") | ("cilium.io/v2", "CiliumNetworkPolicy") => {
                (PolicyKind::Kino, false)
            }
            ("kino.io/v1", "KinoClusterwideNetworkPolicy")
            | ("cilium.io/v2", "CiliumClusterwideNetworkPolicy") => (PolicyKind::Kino, true),
            ("networking.k8s.io/v1", "NetworkPolicy") => (PolicyKind::K8s, false),
            (_, "") => {
                self.error(
                    "kind",
                    "kind is required: KinoNetworkPolicy, KinoClusterwideNetworkPolicy or NetworkPolicy",
                );
                return None;
            }
            _ => {
                self.error(
                    "kind",
                    format!(
                        "{api_version}/{kind_text} is not a policy kind: use kino.io/v1 KinoNetworkPolicy or KinoClusterwideNetworkPolicy (cilium.io/v2 CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy), or networking.k8s.io/v1 NetworkPolicy"
                    ),
                );
                return None;
            }
        };
        let empty = Value::Object(Map::new());
        let metadata_value = root.get("metadata").unwrap_or(&empty);
        let Value::Object(metadata) = metadata_value else {
            self.error(
                "metadata",
                format!("{} is not a mapping", show(metadata_value)),
            );
            return None;
        };
        let name = self
            .string(metadata, "name", "metadata")
            .unwrap_or_default();
        if let Err(message) = validate::check_name("name", &name) {
            self.error("metadata.name", message);
        }
        let namespace = match self.string(metadata, "namespace", "metadata") {
            Some(ns) if cluster_wide && !ns.is_empty() => {
                self.error(
                    "metadata.namespace",
                    format!("{}: a cluster-wide policy has no namespace", quote(&ns)),
                );
                String::new()
            }
            _ if cluster_wide => String::new(),
            Some(ns) if !ns.is_empty() => {
                if let Err(message) = validate::check_name("namespace", &ns)
                    .and_then(|()| validate::namespace_limit(&ns))
                {
                    self.error("metadata.namespace", message);
                }
                ns
            }
            _ => default_namespace.to_owned(),
        };
        self.policy = Some(PolicyKey {
            namespace: namespace.clone(),
            name: name.clone(),
        });
        let mut metadata_labels = BTreeMap::new();
        if let Some(labels) = metadata.get("labels").filter(|v| !v.is_null()) {
            metadata_labels = self.string_map(labels, "metadata.labels");
        }
        let spec = match kind {
            PolicyKind::Kino => PolicySpec::Kino(self.kino(root)),
            PolicyKind::K8s => {
                if root.contains_key("specs") {
                    self.error("specs", "a NetworkPolicy has one spec");
                }
                match root.get("spec") {
                    Some(spec) => PolicySpec::K8s(self.k8s(spec)),
                    None => {
                        self.error("spec", "spec is required");
                        PolicySpec::K8s(K8sPolicy::default())
                    }
                }
            }
        };
        Some(Policy {
            key: PolicyKey { namespace, name },
            kind,
            metadata_labels,
            source: document.source.clone(),
            format: document.format,
            spec,
        })
    }

    fn string_map(&mut self, value: &Value, path: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Value::Object(map) = value else {
            self.error(path, format!("{} is not a mapping", show(value)));
            return out;
        };
        for (key, value) in map {
            match value {
                Value::Null => {
                    out.insert(key.clone(), String::new());
                }
                value => match scalar_text(value) {
                    Some(text) => {
                        out.insert(key.clone(), text);
                    }
                    None => {
                        self.error(&join(path, key), format!("{} is not a string", show(value)))
                    }
                },
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
