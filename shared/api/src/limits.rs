//! Limits of the kino APIs that both sides of a call need to know, defined once so a client
//! can refuse what the server would refuse before sending it:
//!
//! - sizes: the datastore's largest record and the policy-compiler's largest import, how
//!   many frontends and backends one service may have;
//! - names and labels, Kubernetes' own where it has one, checked where the input enters (the
//!   agent's CreateEndpoint / UpdateEndpointLabels, kino-cni's arguments, the
//!   policy-compiler's identities, selectors and documents). Without them a 100 KB label
//!   key, a 300-character pod name or an identity of 20 000 labels went through, and
//!   everything downstream (the datastore, the compiler's index, `kino identity list`) paid
//!   for it. Only lengths and counts are checked here; which characters a name may hold
//!   stays with each API.

use crate::quote::quote;

/// The datastore-gateway's default `--max-value-bytes`: the largest encoded resource spec it
/// stores (1 MiB, etcd's default request limit is 1.5 MiB). A gateway reports its actual
/// limit in `kino.datastore.v1.StatusResponse.max_value_bytes`.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// The largest `ImportPolicies` / `ValidatePolicies` request the policy-compiler reads
/// (16 MiB): many documents at once, each of which must also fit the datastore's value limit.
pub const MAX_POLICY_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Longest label name (the part after an optional `prefix/`), as Kubernetes.
pub const MAX_LABEL_NAME_LEN: usize = 63;
/// Longest label prefix (a DNS subdomain before the `/`), as Kubernetes.
pub const MAX_LABEL_PREFIX_LEN: usize = 253;
/// Longest label value, as Kubernetes.
pub const MAX_LABEL_VALUE_LEN: usize = 63;
/// Longest pod name (a DNS subdomain), as Kubernetes.
pub const MAX_POD_NAME_LEN: usize = 253;
/// Longest namespace name (a DNS label), as Kubernetes.
pub const MAX_NAMESPACE_LEN: usize = 63;
/// Most labels one security identity (one endpoint) may have.
pub const MAX_LABELS_PER_IDENTITY: usize = 256;

/// Most frontends one service (`kino.service.v1.Service`) may have: every port of every
/// address family of a ClusterIP, its NodePorts and external IPs fit with room to spare.
pub const MAX_SERVICE_FRONTENDS: usize = 64;
/// Most backends one service may have (Kubernetes' EndpointSlices hold 100 endpoints each;
/// a service past 1 000 is better split), which keeps its record far below the datastore's
/// value limit.
pub const MAX_SERVICE_BACKENDS: usize = 1000;

/// Source of the label the standalone agent derives from the pod's name.
pub const POD_LABEL_SOURCE: &str = "container";
/// Key of the label the standalone agent derives from the pod's name: its value is a pod
/// name, so it may be as long as one ([`MAX_POD_NAME_LEN`]), not only [`MAX_LABEL_VALUE_LEN`].
pub const POD_LABEL_KEY: &str = "pod";

/// An input beyond a limit: the field (as the API names it) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct LimitError {
    /// The field, as the API (or the CNI argument) names it.
    pub field: String,
    /// What is over which limit, with the caller's value quoted (cut to 128 bytes).
    pub problem: String,
}

impl LimitError {
    fn new(field: &str, problem: String) -> LimitError {
        LimitError {
            field: field.to_owned(),
            problem,
        }
    }
}

fn too_long(field: &str, what: &str, text: &str, max: usize) -> LimitError {
    LimitError::new(
        field,
        format!(
            "{what} {} is {} characters long; a {what} has at most {max} (Kubernetes' limit)",
            quote(text),
            text.len()
        ),
    )
}

/// A label key: `[prefix/]name`, the name at most 63 characters, the optional prefix (a DNS
/// subdomain) at most 253.
pub fn check_label_key(field: &str, key: &str) -> Result<(), LimitError> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.len() > MAX_LABEL_PREFIX_LEN {
            return Err(too_long(
                field,
                "label key prefix",
                prefix,
                MAX_LABEL_PREFIX_LEN,
            ));
        }
        if name.is_empty() {
            return Err(LimitError::new(
                field,
                format!(
                    "label key {} has a prefix but no name after the '/'",
                    quote(key)
                ),
            ));
        }
    }
    if name.len() > MAX_LABEL_NAME_LEN {
        return Err(too_long(field, "label name", name, MAX_LABEL_NAME_LEN));
    }
    Ok(())
}

/// A label value: at most 63 characters.
pub fn check_label_value(field: &str, value: &str) -> Result<(), LimitError> {
    if value.len() > MAX_LABEL_VALUE_LEN {
        return Err(too_long(field, "label value", value, MAX_LABEL_VALUE_LEN));
    }
    Ok(())
}

/// One label `source:key=value`: the key and the value within their limits; the agent's
/// `container:pod` label may carry a whole pod name.
pub fn check_label(field: &str, source: &str, key: &str, value: &str) -> Result<(), LimitError> {
    check_label_key(&format!("{field}.key"), key)?;
    if source == POD_LABEL_SOURCE && key == POD_LABEL_KEY {
        return check_pod_name(&format!("{field}.value"), value);
    }
    check_label_value(&format!("{field}.value"), value)
}

/// The number of labels of one identity (endpoint): at most 256.
pub fn check_label_count(field: &str, count: usize) -> Result<(), LimitError> {
    if count > MAX_LABELS_PER_IDENTITY {
        return Err(LimitError::new(
            field,
            format!("{count} labels; an endpoint (identity) has at most {MAX_LABELS_PER_IDENTITY}"),
        ));
    }
    Ok(())
}

/// A label set as the APIs carry it: the count, then every label (`field[i]`).
pub fn check_labels(field: &str, labels: &crate::types::Labels) -> Result<(), LimitError> {
    check_label_count(field, labels.labels.len())?;
    for (i, label) in labels.labels.iter().enumerate() {
        check_label(
            &format!("{field}[{i}]"),
            &label.source,
            &label.key,
            &label.value,
        )?;
    }
    Ok(())
}

/// A pod name: at most 253 characters.
pub fn check_pod_name(field: &str, name: &str) -> Result<(), LimitError> {
    if name.len() > MAX_POD_NAME_LEN {
        return Err(too_long(field, "pod name", name, MAX_POD_NAME_LEN));
    }
    Ok(())
}

/// A namespace name: at most 63 characters.
pub fn check_namespace(field: &str, name: &str) -> Result<(), LimitError> {
    if name.len() > MAX_NAMESPACE_LEN {
        return Err(too_long(field, "namespace", name, MAX_NAMESPACE_LEN));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Label, Labels};

    #[test]
    fn kubernetes_limits_are_the_edges() {
        assert!(check_label_key("k", &"a".repeat(63)).is_ok());
        assert!(check_label_key("k", &"a".repeat(64)).is_err());
        let prefixed = format!("{}/{}", "p".repeat(253), "n".repeat(63));
        assert!(check_label_key("k", &prefixed).is_ok());
        let long_prefix = format!("{}/n", "p".repeat(254));
        assert!(check_label_key("k", &long_prefix).is_err());
        assert!(check_label_key("k", "example.com/").is_err());
        assert!(check_label_value("v", &"v".repeat(63)).is_ok());
        assert!(check_label_value("v", &"v".repeat(64)).is_err());
        assert!(check_pod_name("p", &"p".repeat(253)).is_ok());
        assert!(check_pod_name("p", &"p".repeat(254)).is_err());
        assert!(check_namespace("n", &"n".repeat(63)).is_ok());
        assert!(check_namespace("n", &"n".repeat(64)).is_err());
        assert!(check_label_count("l", 256).is_ok());
        assert!(check_label_count("l", 257).is_err());
    }

    #[test]
    fn errors_name_the_field_and_the_limit_and_cut_the_input() {
        let key = "k".repeat(100_000);
        let error = check_label_key("labels[3].key", &key).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("labels[3].key: label name \"kkk"),
            "{message}"
        );
        assert!(message.contains("100000 characters long"), "{message}");
        assert!(message.contains("at most 63"), "{message}");
        assert!(message.len() < 400, "{} bytes: {message}", message.len());
    }

    #[test]
    fn the_pod_label_may_hold_a_whole_pod_name() {
        let name = "p".repeat(200);
        assert!(check_label("l", POD_LABEL_SOURCE, POD_LABEL_KEY, &name).is_ok());
        assert!(check_label("l", "k8s", "app", &name).is_err());
        let labels = Labels {
            labels: (0..257)
                .map(|i| Label {
                    key: format!("k{i}"),
                    value: String::new(),
                    source: "k8s".into(),
                })
                .collect(),
        };
        let error = check_labels("labels", &labels).unwrap_err();
        assert_eq!(error.field, "labels");
        assert!(error.problem.contains("at most 256"), "{error}");
    }
}
