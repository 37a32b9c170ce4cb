//! Selectors as the compiler matches them against identities: the subject of a rule
//! (the endpoints it applies to) and its peers (endpoints, NetworkPolicy pod / namespace
//! selectors, CIDRs minus exceptions, entities).

use crate::cidr::Cidr;
use crate::identity::{self, IdentityClass, IdentityInfo};
use crate::labels::Labels;
use crate::policy::model::{CidrRule, Entity};
use crate::selector::Selector;

/// A subject selector: endpoint identities matching `selector` (in `namespace` if set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The selector.
    pub selector: Selector,
    /// The policy's namespace for namespaced policies.
    pub namespace: Option<String>,
}

impl Subject {
    /// True when the subject selects `info`.
    pub fn matches(&self, info: &IdentityInfo) -> bool {
        info.is_endpoint()
            && in_namespace(&self.namespace, &info.labels)
            && self.selector.matches(&info.labels)
    }
}

fn in_namespace(namespace: &Option<String>, labels: &Labels) -> bool {
    namespace
        .as_deref()
        .is_none_or(|ns| labels.namespace() == Some(ns))
}

/// A peer selector: a set of remote identities, cached with its matches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerSelector {
    /// Kinocilium fromEndpoints / toEndpoints.
    Endpoints {
        /// The selector.
        selector: Selector,
        /// Implicit namespace (namespaced policy, selector without a namespace label).
        namespace: Option<String>,
    },
    /// A NetworkPolicy peer with podSelector and / or namespaceSelector.
    K8s {
        /// podSelector.
        pod: Option<Selector>,
        /// namespaceSelector.
        namespace_selector: Option<Selector>,
        /// The policy's namespace (pods' namespace when namespaceSelector is absent).
        policy_namespace: String,
    },
    /// A CIDR minus exceptions (fromCIDR, fromCIDRSet, ipBlock).
    Cidr(CidrRule),
    /// An entity other than `all`.
    Entity(Entity),
}

impl PeerSelector {
    /// True when the selector matches `info`.
    pub fn matches(&self, info: &IdentityInfo) -> bool {
        match self {
            PeerSelector::Endpoints {
                selector,
                namespace,
            } => {
                info.is_endpoint()
                    && in_namespace(namespace, &info.labels)
                    && selector.matches(&info.labels)
            }
            PeerSelector::K8s {
                pod,
                namespace_selector,
                policy_namespace,
            } => {
                info.is_endpoint()
                    && match namespace_selector {
                        Some(ns) => ns.matches_map(&info.labels.namespace_labels()),
                        None => info.labels.namespace() == Some(policy_namespace.as_str()),
                    }
                    && pod.as_ref().is_none_or(|p| p.matches(&info.labels))
            }
            PeerSelector::Cidr(rule) => match &info.class {
                IdentityClass::Cidr(prefix) => {
                    rule.cidr.covers(prefix) && !rule.except.iter().any(|e| e.covers(prefix))
                }
                _ => false,
            },
            PeerSelector::Entity(entity) => match entity {
                Entity::Host => info.id == identity::HOST,
                Entity::RemoteNode => info.id == identity::REMOTE_NODE,
                Entity::World => {
                    info.id == identity::WORLD || matches!(info.class, IdentityClass::Cidr(_))
                }
                Entity::Cluster => {
                    info.is_endpoint()
                        || matches!(
                            info.id,
                            identity::HOST
                                | identity::UNMANAGED
                                | identity::HEALTH
                                | identity::INIT
                                | identity::REMOTE_NODE
                        )
                }
                Entity::All => true,
            },
        }
    }

    /// The prefixes the selector names (they get CIDR identities).
    pub(super) fn prefixes(&self) -> Vec<Cidr> {
        match self {
            PeerSelector::Cidr(rule) => std::iter::once(rule.cidr)
                .chain(rule.except.iter().copied())
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The entity selectors: with the CIDR selectors, the only selectors that can match a CIDR
/// identity (endpoint and NetworkPolicy selectors match endpoint identities only).
pub(super) fn entity_selectors() -> [PeerSelector; 5] {
    [
        Entity::Host,
        Entity::RemoteNode,
        Entity::World,
        Entity::Cluster,
        Entity::All,
    ]
    .map(PeerSelector::Entity)
}
