//! The parsed form of policy documents: a Kinocilium policy (CiliumNetworkPolicy's shape)
//! or a Kubernetes NetworkPolicy. Field paths (`spec.ingress[0]`) are kept on every rule so
//! compiled entries and traces can point back at what the user wrote.

use std::collections::BTreeMap;
use std::fmt;

use crate::cidr::Cidr;
use crate::selector::Selector;

/// Which document kind a policy is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    /// KinoNetworkPolicy / KinoClusterwideNetworkPolicy (and Cilium's spellings).
    Kino,
    /// networking.k8s.io/v1 NetworkPolicy.
    K8s,
}

/// The text format of a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

/// A traffic direction, seen from the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Into the endpoint.
    Ingress,
    /// Out of the endpoint.
    Egress,
}

impl Direction {
    /// Both directions.
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// Lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// An L4 protocol of a port rule; `Any` is Cilium's ANY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// Every protocol (with a port: TCP, UDP and SCTP on it).
    Any,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// ICMP (IPv4).
    Icmp,
    /// ICMPv6.
    Icmpv6,
}

impl Protocol {
    /// The IANA number (0 for Any), the byte the datapath uses.
    pub fn number(&self) -> u8 {
        match self {
            Protocol::Any => 0,
            Protocol::Icmp => 1,
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmpv6 => 58,
            Protocol::Sctp => 132,
        }
    }

    /// From an IANA number.
    pub fn from_number(n: u8) -> Option<Protocol> {
        Some(match n {
            0 => Protocol::Any,
            1 => Protocol::Icmp,
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            58 => Protocol::Icmpv6,
            132 => Protocol::Sctp,
            _ => return None,
        })
    }

    /// The document spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Any => "ANY",
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Icmp => "ICMP",
            Protocol::Icmpv6 => "ICMPv6",
        }
    }

    /// True for protocols with ports.
    pub fn has_ports(&self) -> bool {
        matches!(
            self,
            Protocol::Tcp | Protocol::Udp | Protocol::Sctp | Protocol::Any
        )
    }
}

/// One port (or range) and protocol; port 0 means every port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRule {
    /// First port; 0 = every port.
    pub port: u16,
    /// Last port of a range, 0 for a single port.
    pub end_port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

impl fmt::Display for PortRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.end_port) {
            (0, _) => write!(f, "*/{}", self.protocol.as_str()),
            (p, 0) => write!(f, "{p}/{}", self.protocol.as_str()),
            (p, e) => write!(f, "{p}-{e}/{}", self.protocol.as_str()),
        }
    }
}

/// A CIDR minus exceptions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CidrRule {
    /// The CIDR.
    pub cidr: Cidr,
    /// Prefixes inside it that are excluded.
    pub except: Vec<Cidr>,
}

impl CidrRule {
    /// True when `ip` is in the CIDR and in none of the exceptions.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// A peer group named by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    /// The local node.
    Host,
    /// Other nodes.
    RemoteNode,
    /// Outside the cluster.
    World,
    /// Every endpoint and node of the cluster.
    Cluster,
    /// Everything.
    All,
}

impl Entity {
    /// The document spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Entity::Host => "host",
            Entity::RemoteNode => "remote-node",
            Entity::World => "world",
            Entity::Cluster => "cluster",
            Entity::All => "all",
        }
    }
}

/// One ingress / ingressDeny / egress / egressDeny rule of a Kinocilium policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerRule {
    /// fromEndpoints / toEndpoints.
    pub endpoints: Vec<Selector>,
    /// fromCIDR / toCIDR.
    pub cidrs: Vec<Cidr>,
    /// fromCIDRSet / toCIDRSet.
    pub cidr_sets: Vec<CidrRule>,
    /// fromEntities / toEntities.
    pub entities: Vec<Entity>,
    /// toPorts[].ports[] flattened; empty = every port and protocol.
    pub ports: Vec<PortRule>,
}

impl PeerRule {
    /// True when no peer field is set.
    pub fn has_no_peer(&self) -> bool {
        self.endpoints.is_empty()
            && self.cidrs.is_empty()
            && self.cidr_sets.is_empty()
            && self.entities.is_empty()
    }
}

/// Whether a rule turns on default deny per direction (Cilium's enableDefaultDeny); `None`
/// is the default (true).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DefaultDeny {
    /// Ingress.
    pub ingress: Option<bool>,
    /// Egress.
    pub egress: Option<bool>,
}

/// One rule of a Kinocilium policy (`spec` or an entry of `specs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KinoRule {
    /// Its path in the document (`spec`, `specs[1]`).
    pub path: String,
    /// The endpoints it applies to.
    pub endpoint_selector: Selector,
    /// Allowed ingress.
    pub ingress: Vec<PeerRule>,
    /// Denied ingress.
    pub ingress_deny: Vec<PeerRule>,
    /// Allowed egress.
    pub egress: Vec<PeerRule>,
    /// Denied egress.
    pub egress_deny: Vec<PeerRule>,
    /// enableDefaultDeny.
    pub default_deny: DefaultDeny,
    /// Free text.
    pub description: String,
}

/// A Kinocilium policy: its rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KinoPolicy {
    /// `spec` then `specs`, in document order.
    pub rules: Vec<KinoRule>,
}

/// A from / to entry of a Kubernetes NetworkPolicy rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum K8sPeer {
    /// podSelector and / or namespaceSelector (at least one is set).
    Selectors {
        /// podSelector.
        pod: Option<Selector>,
        /// namespaceSelector.
        namespace: Option<Selector>,
    },
    /// ipBlock.
    IpBlock(CidrRule),
}

/// One ingress or egress rule of a Kubernetes NetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct K8sRule {
    /// from / to; empty = every peer.
    pub peers: Vec<K8sPeer>,
    /// ports; empty = every port.
    pub ports: Vec<PortRule>,
}

/// A Kubernetes NetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct K8sPolicy {
    /// podSelector.
    pub pod_selector: Selector,
    /// ingress rules.
    pub ingress: Vec<K8sRule>,
    /// egress rules.
    pub egress: Vec<K8sRule>,
    /// policyTypes contains Ingress.
    pub ingress_type: bool,
    /// policyTypes contains Egress.
    pub egress_type: bool,
}

/// The parsed form of a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySpec {
    /// A Kinocilium policy.
    Kino(KinoPolicy),
    /// A Kubernetes NetworkPolicy.
    K8s(K8sPolicy),
}

/// Where a policy is stored: namespace ("" = cluster-wide) and name.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// Namespace; empty for cluster-wide.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// One policy document, parsed and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Namespace and name.
    pub key: PolicyKey,
    /// Document kind.
    pub kind: PolicyKind,
    /// metadata.labels.
    pub metadata_labels: BTreeMap<String, String>,
    /// The document's text.
    pub source: String,
    /// Its format.
    pub format: SourceFormat,
    /// The parsed form.
    pub spec: PolicySpec,
}

/// Names one rule of one policy: what compiled entries and traces point back at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    /// The policy.
    pub policy: PolicyKey,
    /// Its kind.
    pub kind: PolicyKind,
    /// Path of the rule in the document (`spec.ingressDeny[0]`).
    pub path: String,
    /// Its direction.
    pub direction: Direction,
    /// True for a deny rule.
    pub deny: bool,
    /// The rule's description.
    pub description: String,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.policy, self.path)?;
        if !self.description.is_empty() {
            write!(f, " ({})", self.description)?;
        }
        Ok(())
    }
}
