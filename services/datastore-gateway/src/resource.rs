//! Resource keys: the known kinds, name rules, and how a key maps onto a store key.

use kino_api::quote::quote;
use std::fmt;

/// Kinds the gateway stores (DESIGN §3). Anything else is refused, so a typo in a client
/// cannot silently create a new keyspace.
pub const KINDS: &[&str] = &[
    "Node",
    "NodeHealth",
    "IPPool",
    "NodeAllocation",
    "IPAllocation",
    "Identity",
    "Policy",
    "Endpoint",
    "IPCacheEntry",
    // Each agent's realized policy revision (kino.policy.v1.PolicyRealization).
    "PolicyRealization",
    // Load-balanced services (kino.service.v1, written by kino-ipam, watched by every
    // agent), and the claims that keep each frontend and frontend id unique.
    "Service",
    "ServiceFrontend",
    "ServiceFrontendId",
];

/// Longest name accepted (as Kubernetes' DNS subdomain names).
pub const MAX_NAME_LEN: usize = 253;
/// Longest namespace accepted (as Kubernetes namespaces).
pub const MAX_NAMESPACE_LEN: usize = 63;

/// A request field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidField {
    /// The field's name as in the API (e.g. `resource.name`).
    pub field: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl InvalidField {
    /// A new validation error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A validated (kind, namespace, name).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceKey {
    kind: String,
    namespace: String,
    name: String,
}

impl ResourceKey {
    /// Validates the three parts; `field` prefixes error field names (e.g. "key").
    pub fn new(field: &str, kind: &str, namespace: &str, name: &str) -> Result<Self, InvalidField> {
        validate_kind(&format!("{field}.kind"), kind)?;
        validate_namespace(&format!("{field}.namespace"), namespace)?;
        validate_name(&format!("{field}.name"), name, MAX_NAME_LEN)?;
        Ok(ResourceKey {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    /// Parses a store key written by [`ResourceKey::store_key`].
    pub fn from_store_key(key: &str) -> Option<Self> {
        let mut parts = key.splitn(3, '/');
        let (kind, namespace, name) = (parts.next()?, parts.next()?, parts.next()?);
        Some(ResourceKey {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    /// The kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The namespace (empty when cluster-scoped).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key in the store: `<kind>/<namespace>/<name>`.
    pub fn store_key(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {:?}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Selects resources of one kind by namespace and name prefix; used by List and Watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    kind: String,
    namespace: String,
    name_prefix: String,
}

impl Selector {
    /// Validates a selector; empty namespace means all namespaces.
    pub fn new(kind: &str, namespace: &str, name_prefix: &str) -> Result<Self, InvalidField> {
        validate_kind("kind", kind)?;
        validate_namespace("namespace", namespace)?;
        if name_prefix.len() > MAX_NAME_LEN || !name_prefix.chars().all(is_name_char) {
            return Err(InvalidField::new(
                "name_prefix",
                format!(
                    "{} can only hold letters, digits, '.', '_', ':' and '-' (at most {MAX_NAME_LEN})",
                    quote(name_prefix)
                ),
            ));
        }
        Ok(Selector {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name_prefix: name_prefix.to_string(),
        })
    }

    /// The kind selected.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Longest store-key prefix that covers every selected key.
    pub fn store_prefix(&self) -> String {
        if self.namespace.is_empty() {
            format!("{}/", self.kind)
        } else {
            format!("{}/{}/{}", self.kind, self.namespace, self.name_prefix)
        }
    }

    /// Store prefix of the whole kind (what one shared watch covers).
    pub fn kind_prefix(&self) -> String {
        format!("{}/", self.kind)
    }

    /// Whether a store key is selected.
    pub fn matches(&self, store_key: &str) -> bool {
        if !store_key.starts_with(&self.store_prefix()) {
            return false;
        }
        if self.namespace.is_empty() && !self.name_prefix.is_empty() {
            return ResourceKey::from_store_key(store_key)
                .is_some_and(|k| k.name.starts_with(&self.name_prefix));
        }
        true
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')
}

fn validate_kind(field: &str, kind: &str) -> Result<(), InvalidField> {
    if KINDS.contains(&kind) {
        return Ok(());
    }
    let reason = if kind.is_empty() {
        format!("kind is required; one of {}", KINDS.join(", "))
    } else {
        format!("unknown kind {}; one of {}", quote(kind), KINDS.join(", "))
    };
    Err(InvalidField::new(field, reason))
}

fn validate_namespace(field: &str, namespace: &str) -> Result<(), InvalidField> {
    if namespace.is_empty() {
        return Ok(());
    }
    validate_name(field, namespace, MAX_NAMESPACE_LEN)
}

fn validate_name(field: &str, name: &str, max: usize) -> Result<(), InvalidField> {
    let rule = format!(
        "1 to {max} characters from letters, digits, '.', '_', ':' and '-', starting and ending with a letter or digit (write a CIDR as 10.0.0.0-24)"
    );
    let ok_ends = name
        .chars()
        .next()
        .zip(name.chars().last())
        .is_some_and(|(a, b)| a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > max || !ok_ends || !name.chars().all(is_name_char) {
        return Err(InvalidField::new(
            field,
            format!("{} is not valid: {rule}", quote(name)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_the_store_key() {
        let key = ResourceKey::new("key", "Endpoint", "default", "web-1").unwrap();
        assert_eq!(key.store_key(), "Endpoint/default/web-1");
        assert_eq!(ResourceKey::from_store_key(&key.store_key()), Some(key));
        let cluster = ResourceKey::new("key", "IPAllocation", "", "fd00::a").unwrap();
        assert_eq!(
            ResourceKey::from_store_key(&cluster.store_key()),
            Some(cluster)
        );
    }

    #[test]
    fn bad_keys_name_the_field() {
        let e = ResourceKey::new("key", "Pod", "", "x").unwrap_err();
        assert_eq!(e.field, "key.kind");
        assert!(e.reason.contains("unknown kind \"Pod\""), "{e}");
        let e = ResourceKey::new("key", "Node", "", "10.0.0.0/24").unwrap_err();
        assert_eq!(e.field, "key.name");
        let e = ResourceKey::new("key", "Node", "", "").unwrap_err();
        assert_eq!(e.field, "key.name");
        let e = ResourceKey::new("key", "Node", "-x", "a").unwrap_err();
        assert_eq!(e.field, "key.namespace");
        assert!(ResourceKey::new("key", "Node", "", &"a".repeat(254)).is_err());
        assert!(ResourceKey::new("key", "Node", "", &"a".repeat(253)).is_ok());
    }

    #[test]
    fn selectors_match_namespace_and_name_prefix() {
        let all = Selector::new("Endpoint", "", "").unwrap();
        assert!(all.matches("Endpoint/a/x"));
        assert!(!all.matches("EndpointX/a/x"));
        let by_name = Selector::new("Endpoint", "", "web").unwrap();
        assert!(by_name.matches("Endpoint/a/web-1"));
        assert!(!by_name.matches("Endpoint/web/db"));
        let by_ns = Selector::new("Endpoint", "a", "we").unwrap();
        assert!(by_ns.matches("Endpoint/a/web"));
        assert!(!by_ns.matches("Endpoint/ab/web"));
        assert!(Selector::new("Endpoint", "", "a/b").is_err());
    }
}
