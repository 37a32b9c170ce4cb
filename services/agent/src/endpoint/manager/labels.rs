//! Label changes at run time (`kino endpoint labels`, Cilium's `cilium endpoint labels`) and
//! the identity bookkeeping around them: the endpoint's new identity is allocated, its
//! compiled policy fetched and written to the datapath before the call returns (no window
//! where the endpoint runs with no policy), the datapath's endpoint entries and ipcache
//! switched to the new identity, the record re-published so the compiler and other nodes
//! follow, and the old identity released.

use std::collections::BTreeMap;
use std::net::IpAddr;

use kino_api::agent::Endpoint;
use kino_api::policy::EndpointPolicyUpdate;
use kino_api::types::{Label, Labels};

use super::inspect::with_counters;
use super::{EndpointManager, IdentityPolicy, Inner, ManagerError};
use crate::datapath::{EntryChange, IpPrefix, IpcacheEntry};
use crate::endpoint::compiled_policy::policy_update_from_proto;

/// Label sources an operator may not set: the compiler gives them meaning of its own.
const PROTECTED_SOURCES: &[&str] = &["reserved", "cidr"];

/// The result of [`EndpointManager::update_labels`].
#[derive(Debug, Clone)]
pub struct LabelsUpdated {
    /// The endpoint after the change (with counters).
    pub endpoint: Endpoint,
    /// Its identity before the change.
    pub previous_identity: u32,
}

/// Applies `add` and `delete` to `current`. `delete` names `key` (any source) or
/// `source:key`; a label added without a source gets `container`. Errors name the label
/// and leave nothing changed.
pub fn edit_labels(
    endpoint_id: u32,
    current: &Labels,
    add: &[Label],
    delete: &[String],
) -> Result<Labels, ManagerError> {
    let mut labels: BTreeMap<(String, String), String> = current
        .labels
        .iter()
        .map(|l| ((source_of(l).to_owned(), l.key.clone()), l.value.clone()))
        .collect();
    for name in delete {
        let name = name.trim();
        let (source, key) = match name.split_once(':') {
            Some((source, key)) => (Some(source), key),
            None => (None, name),
        };
        if key.is_empty() || key.contains('=') {
            return Err(ManagerError::Invalid(format!(
                "delete {name:?}: name a label as KEY or SOURCE:KEY (no value)"
            )));
        }
        if add.iter().any(|l| l.key == key) {
            return Err(ManagerError::Invalid(format!(
                "label {key:?} is both added and deleted; give it once"
            )));
        }
        let before = labels.len();
        labels.retain(|(s, k), _| !(k == key && source.is_none_or(|want| want == s)));
        if labels.len() == before {
            return Err(ManagerError::Invalid(format!(
                "endpoint {endpoint_id} has no label {name:?}; its labels are {}",
                describe(current)
            )));
        }
    }
    for label in add {
        if label.key.is_empty()
            || label.key.contains(['=', ':'])
            || label.key.contains(char::is_whitespace)
        {
            return Err(ManagerError::Invalid(format!(
                "add: {:?} is not a label key; write KEY=VALUE or SOURCE:KEY=VALUE",
                label.key
            )));
        }
        let source = if label.source.is_empty() {
            "container"
        } else {
            label.source.as_str()
        };
        if PROTECTED_SOURCES.contains(&source) {
            return Err(ManagerError::Invalid(format!(
                "add {source}:{}: {source} labels are given by Kinocilium itself; use another source (container, k8s)",
                label.key
            )));
        }
        labels.insert((source.to_owned(), label.key.clone()), label.value.clone());
    }
    Ok(Labels {
        labels: labels
            .into_iter()
            .map(|((source, key), value)| Label { key, value, source })
            .collect(),
    })
}

fn source_of(label: &Label) -> &str {
    if label.source.is_empty() {
        "unspec"
    } else {
        &label.source
    }
}

fn describe(labels: &Labels) -> String {
    if labels.labels.is_empty() {
        return "(none)".into();
    }
    labels
        .labels
        .iter()
        .map(|l| {
            if l.value.is_empty() {
                format!("{}:{}", source_of(l), l.key)
            } else {
                format!("{}:{}={}", source_of(l), l.key, l.value)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The addresses of an endpoint, as the record holds them.
fn addresses(endpoint: &Endpoint) -> Vec<IpAddr> {
    let Some(addressing) = endpoint
        .networking
        .as_ref()
        .and_then(|n| n.addressing.as_ref())
    else {
        return Vec::new();
    };
    [&addressing.ipv4, &addressing.ipv6]
        .into_iter()
        .filter_map(|a| a.parse().ok())
        .collect()
}

impl EndpointManager {
    /// `kino endpoint labels`: changes an endpoint's labels; the endpoint gets the identity
    /// of its new label set, and that identity's policy is in the datapath when this
    /// returns. An unchanged label set changes nothing.
    pub async fn update_labels(
        &self,
        id: u32,
        add: &[Label],
        delete: &[String],
    ) -> Result<LabelsUpdated, ManagerError> {
        let current = self
            .inner
            .lock()
            .await
            .endpoints
            .get(&id)
            .cloned()
            .ok_or_else(|| {
                ManagerError::NotFound(format!(
                    "no endpoint {id} on node {}; `kino endpoint list` shows them",
                    self.config.node
                ))
            })?;
        let old_labels = current.labels.clone().unwrap_or_default();
        let labels = edit_labels(id, &old_labels, add, delete)?;
        let previous_identity = current.identity;
        if labels == old_labels {
            let inner = self.inner.lock().await;
            return Ok(LabelsUpdated {
                endpoint: with_counters(&inner.datapath, &current),
                previous_identity,
            });
        }
        let identity = self.identity_of(&labels).await?;
        let policy = self.policy_of(identity).await?;

        let mut guard = self.inner.lock().await;
        let inner = &mut *guard;
        let Some(endpoint) = inner.endpoints.get(&id).cloned() else {
            return Err(ManagerError::NotFound(format!(
                "endpoint {id} was deleted while its labels were being changed"
            )));
        };
        if endpoint.labels.as_ref() != Some(&old_labels) || endpoint.identity != previous_identity {
            return Err(ManagerError::Invalid(format!(
                "endpoint {id}'s labels changed concurrently; run the command again"
            )));
        }
        let mut updated = endpoint.clone();
        updated.labels = Some(labels);
        updated.identity = identity;
        // The record first: if the datastore refuses, nothing has changed.
        self.publish(&updated).await?;
        if let Err(e) = self.switch_identity(inner, &updated, policy.as_ref()) {
            // Put the datapath and the record back as they were.
            if let Err(undo) = self.switch_identity(inner, &endpoint, None) {
                tracing::warn!(id, error = %undo, "restoring the endpoint's old identity in the datapath");
            }
            if let Err(undo) = self.publish(&endpoint).await {
                tracing::warn!(id, error = %undo, "restoring the endpoint's old record");
            }
            return Err(e);
        }
        if let Some(policy) = policy
            && !inner.identity_policies.contains_key(&identity)
        {
            inner.identity_policies.insert(identity, policy);
        }
        if let Err(e) = self.state.save(&updated) {
            tracing::warn!(id, error = %e, "checkpointing the new labels");
        }
        inner.endpoints.insert(id, updated.clone());
        let endpoint = with_counters(&inner.datapath, &updated);
        drop(guard);
        tracing::info!(id, previous_identity, identity, "endpoint labels changed");
        if previous_identity != identity {
            self.release_identity(previous_identity).await;
        }
        Ok(LabelsUpdated {
            endpoint,
            previous_identity,
        })
    }

    /// The identity of a label set (0 for no labels: nothing can select it).
    pub(super) async fn identity_of(&self, labels: &Labels) -> Result<u32, ManagerError> {
        if labels.labels.is_empty() {
            return Ok(0);
        }
        Ok(self.peers.identities.allocate(labels.clone()).await?)
    }

    /// The compiled policy of `identity` for an endpoint about to get it: the streamed one
    /// if a local endpoint already has the identity (the stream keeps it current), else
    /// fetched from the compiler now. None for identity 0.
    pub(super) async fn policy_of(
        &self,
        identity: u32,
    ) -> Result<Option<IdentityPolicy>, ManagerError> {
        if identity == 0 {
            return Ok(None);
        }
        {
            let inner = self.inner.lock().await;
            if inner.endpoints.values().any(|e| e.identity == identity)
                && let Some(policy) = inner.identity_policies.get(&identity)
            {
                return Ok(Some(policy.clone()));
            }
        }
        let compiled = self.peers.policies.endpoint_policy(identity).await?;
        let update = EndpointPolicyUpdate {
            identity,
            removed: false,
            replace: true,
            enforcement: compiled.enforcement,
            upserts: compiled.entries,
            deletes: Vec::new(),
        };
        let converted = policy_update_from_proto(&update, compiled.revision)
            .map_err(|e| {
                ManagerError::Internal(format!(
                    "the policy-compiler's policy for identity {identity}: {e}"
                ))
            })?
            .ok_or_else(|| ManagerError::Internal("policy update without a policy".into()))?;
        let EntryChange::Replace(entries) = converted.entries else {
            return Err(ManagerError::Internal("a full policy must replace".into()));
        };
        Ok(Some(IdentityPolicy {
            enforcement: converted.enforcement,
            entries,
            revision: converted.revision,
            streamed: false,
        }))
    }

    /// Makes sure the streamed-policy cache has `identity`'s policy before an endpoint with
    /// it is created, so the endpoint starts enforced (no default-allow window while the
    /// stream catches up).
    pub(super) async fn prefetch_policy(&self, identity: u32) -> Result<(), ManagerError> {
        let Some(policy) = self.policy_of(identity).await? else {
            return Ok(());
        };
        let mut inner = self.inner.lock().await;
        let known = inner.endpoints.values().any(|e| e.identity == identity);
        if !known {
            inner.identity_policies.insert(identity, policy);
        }
        Ok(())
    }

    /// Points the datapath at the endpoint's identity: its endpoint entries, the ipcache
    /// entries of its addresses, and its policy (the given one, else cleared).
    fn switch_identity(
        &self,
        inner: &mut Inner,
        endpoint: &Endpoint,
        policy: Option<&IdentityPolicy>,
    ) -> Result<(), ManagerError> {
        let ifindex = endpoint
            .networking
            .as_ref()
            .map(|n| n.interface_index)
            .unwrap_or_default();
        let datapath = &mut inner.datapath;
        let mut entry = datapath
            .maps()
            .get_by_lxc(ifindex)
            .map_err(super::kernel)?
            .ok_or_else(|| {
                // The agent wrote it at create and only removes it at delete.
                ManagerError::Internal(format!(
                    "endpoint {}: the datapath has no entry for its lxc #{ifindex}",
                    endpoint.id
                ))
            })?;
        entry.identity = endpoint.identity;
        datapath.maps_mut().upsert(&entry).map_err(super::kernel)?;
        for address in addresses(endpoint) {
            datapath
                .ipcache_mut()
                .upsert(&IpcacheEntry::new(
                    IpPrefix::host(address),
                    endpoint.identity,
                ))
                .map_err(super::kernel)?;
        }
        match policy {
            Some(policy) => datapath
                .policy_mut()
                .apply(endpoint.id, &policy.update())
                .map(|_| ())
                .map_err(super::kernel),
            None => datapath
                .policy_mut()
                .clear(endpoint.id)
                .map(|_| ())
                .map_err(super::kernel),
        }
    }

    /// Tells the compiler this node no longer uses `identity` (it is deleted after its
    /// grace period if no endpoint anywhere has it). Best effort: the compiler's GC finds
    /// unused identities by itself.
    pub(super) async fn release_identity(&self, identity: u32) {
        if identity == 0 {
            return;
        }
        let in_use = self
            .inner
            .lock()
            .await
            .endpoints
            .values()
            .any(|e| e.identity == identity);
        if in_use {
            return;
        }
        if let Err(e) = self.peers.identities.release(identity).await {
            tracing::warn!(identity, error = %e, "releasing an identity; the compiler's GC will");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(source: &str, key: &str, value: &str) -> Label {
        Label {
            key: key.into(),
            value: value.into(),
            source: source.into(),
        }
    }

    fn current() -> Labels {
        Labels {
            labels: vec![
                label("container", "namespace", "default"),
                label("container", "pod", "web"),
                label("k8s", "app", "web"),
            ],
        }
    }

    #[test]
    fn adds_replace_values_and_default_to_container() {
        let out = edit_labels(
            1,
            &current(),
            &[label("", "tier", "front"), label("k8s", "app", "api")],
            &[],
        )
        .unwrap();
        assert!(out.labels.contains(&label("container", "tier", "front")));
        assert!(out.labels.contains(&label("k8s", "app", "api")));
        assert!(!out.labels.contains(&label("k8s", "app", "web")));
        assert_eq!(out.labels.len(), 4);
        let keys: Vec<_> = out
            .labels
            .iter()
            .map(|l| (l.source.clone(), l.key.clone()))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "sorted by source then key");
    }

    #[test]
    fn deletes_by_key_or_source_and_key() {
        let out = edit_labels(1, &current(), &[], &["app".into()]).unwrap();
        assert_eq!(out.labels.len(), 2);
        let out = edit_labels(1, &current(), &[], &["container:pod".into()]).unwrap();
        assert!(!out.labels.iter().any(|l| l.key == "pod"));
        let err = edit_labels(1, &current(), &[], &["k8s:pod".into()]).unwrap_err();
        assert!(
            err.to_string().contains("has no label \"k8s:pod\""),
            "{err}"
        );
    }

    #[test]
    fn refuses_bad_input_naming_it() {
        let err = edit_labels(7, &current(), &[], &["nope".into()]).unwrap_err();
        assert!(
            err.to_string().contains("endpoint 7 has no label \"nope\""),
            "{err}"
        );
        let err = edit_labels(7, &current(), &[label("reserved", "host", "")], &[]).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
        let err =
            edit_labels(7, &current(), &[label("", "app", "x")], &["app".into()]).unwrap_err();
        assert!(err.to_string().contains("both added and deleted"), "{err}");
        let err = edit_labels(7, &current(), &[], &["app=web".into()]).unwrap_err();
        assert!(err.to_string().contains("KEY or SOURCE:KEY"), "{err}");
    }
}
