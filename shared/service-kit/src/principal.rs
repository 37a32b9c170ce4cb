//! Who is calling: the role and name a client certificate carries, or the transport that
//! vouches for the caller instead (a private unix socket, an explicitly insecure listener).
//!
//! Identities follow the Kubernetes API server's client-certificate convention: the Subject's
//! Organization (O) is the **role**, the Common Name (CN) the **name**. An agent's CN is
//! `kino-agent:<node>` (as Kubernetes' `system:node:<node>`), so the gateway and IPAM can
//! hold an agent to its own node's records.

use std::fmt;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Prefix of an agent certificate's CN; the rest is its node's name.
pub const AGENT_NAME_PREFIX: &str = "kino-agent:";

/// What a caller may be trusted with, from its certificate's Subject O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A node's kino-agent (CN `kino-agent:<node>`).
    Agent,
    /// kino-ipam.
    Ipam,
    /// kino-policy-compiler.
    PolicyCompiler,
    /// kino-datastore-gateway (calls nothing today; has a certificate to serve with).
    DatastoreGateway,
    /// The Kubernetes operator (node deletion, pools, policies from the API server).
    Operator,
    /// kino-flow-relay: reads every node's flows (the agents' flow observers) to serve them
    /// for the whole cluster; reads records (Node) to find the nodes. Writes nothing.
    FlowRelay,
    /// The operator's CLI: may call every method a service lists.
    Admin,
}

impl Role {
    /// Every role, in the order the docs list them.
    pub const ALL: [Role; 7] = [
        Role::Agent,
        Role::Ipam,
        Role::PolicyCompiler,
        Role::DatastoreGateway,
        Role::Operator,
        Role::FlowRelay,
        Role::Admin,
    ];

    /// The Subject O value naming this role (also the file stem `kino pki init` uses).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Ipam => "ipam",
            Role::PolicyCompiler => "policy-compiler",
            Role::DatastoreGateway => "datastore-gateway",
            Role::Operator => "operator",
            Role::FlowRelay => "flow-relay",
            Role::Admin => "admin",
        }
    }

    /// The role an Organization value names, if any.
    pub fn from_organization(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Role::from_organization(text).ok_or_else(|| {
            let known: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
            format!("{text:?} is not a role; one of {}", known.join(", "))
        })
    }
}

/// The identity in a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Subject CN (empty if the certificate has none).
    pub name: String,
    /// The first Subject O that names a role; `None` if no O does.
    pub role: Option<Role>,
    /// Every Subject O, for messages about certificates without a known role.
    pub organizations: Vec<String>,
}

impl Principal {
    /// Reads the Subject of a DER certificate (already verified against the CA by rustls).
    pub fn from_certificate(der: &CertificateDer<'_>) -> Result<Principal, String> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("the client certificate cannot be parsed: {e}"))?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        let organizations: Vec<String> = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok())
            .map(str::to_owned)
            .collect();
        let role = organizations
            .iter()
            .find_map(|o| Role::from_organization(o));
        Ok(Principal {
            name,
            role,
            organizations,
        })
    }

    /// The node an agent certificate names (`kino-agent:<node>`); `None` for other roles.
    pub fn node(&self) -> Option<&str> {
        if self.role != Some(Role::Agent) {
            return None;
        }
        self.name
            .strip_prefix(AGENT_NAME_PREFIX)
            .filter(|node| !node.is_empty())
    }
}

/// The caller of one request, as the authorization layer established it. Handlers that
/// authorize by request content (the gateway's per-kind rules, IPAM's node scoping) read it
/// from the request's extensions with [`Caller::of`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A TLS client with a certificate the cluster CA signed.
    Certificate(Principal),
    /// A peer on a unix socket: the socket's mode (0600) admitted only its owner (or root),
    /// who gets the admin role.
    LocalSocket {
        /// The peer's uid, when the kernel reported it.
        uid: Option<u32>,
    },
    /// A plaintext TCP listener the operator started with `--insecure`: no identity, no
    /// authorization (every caller is admin).
    Insecure,
    /// The service is called in-process (tests embedding it without `serve`): no transport,
    /// nothing to authorize.
    InProcess,
}

impl Caller {
    /// The caller the authorization layer put on this request; [`Caller::InProcess`] when the
    /// service is not behind [`crate::serve`].
    pub fn of(extensions: &http::Extensions) -> Caller {
        extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::InProcess)
    }

    /// The caller's role; the transports that vouch for the caller themselves give admin.
    pub fn role(&self) -> Option<Role> {
        match self {
            Caller::Certificate(principal) => principal.role,
            Caller::LocalSocket { .. } | Caller::Insecure | Caller::InProcess => Some(Role::Admin),
        }
    }

    /// Whether the caller may do anything.
    pub fn is_admin(&self) -> bool {
        self.role() == Some(Role::Admin)
    }

    /// The agent's node, for an agent certificate.
    pub fn node(&self) -> Option<&str> {
        match self {
            Caller::Certificate(principal) => principal.node(),
            _ => None,
        }
    }

    /// A stable name for this identity (a lease's granter is remembered by it).
    pub fn name(&self) -> String {
        match self {
            Caller::Certificate(principal) => principal.name.clone(),
            Caller::LocalSocket { uid: Some(uid) } => format!("unix-socket-peer:uid={uid}"),
            Caller::LocalSocket { uid: None } => "unix-socket-peer".to_owned(),
            Caller::Insecure => "insecure-listener".to_owned(),
            Caller::InProcess => "in-process".to_owned(),
        }
    }

    /// Checks that an agent acts only for its own node; other roles pass. `what` names the
    /// request field for the message, e.g. `node "n2" of AllocateNodeCidrs`.
    pub fn check_node(&self, node: &str, what: &str) -> Result<(), String> {
        if self.role() != Some(Role::Agent) {
            return Ok(());
        }
        match self.node() {
            Some(own) if own == node => Ok(()),
            Some(own) => Err(format!(
                "{self} may act only for its own node {own:?}, not for {what}"
            )),
            None => Err(format!(
                "{self} names no node: an agent certificate's CN must be {AGENT_NAME_PREFIX}<node> (reissue it with `kino pki issue agent --node <node>`)"
            )),
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Certificate(Principal {
                name,
                role: Some(role),
                ..
            }) => write!(f, "caller {name:?} (role {role})"),
            Caller::Certificate(Principal {
                name,
                role: None,
                organizations,
            }) => write!(
                f,
                "caller {name:?} (organization {organizations:?} names no kino role)"
            ),
            other => write!(f, "caller {:?} (role admin)", other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(name: &str, role: Option<Role>) -> Caller {
        Caller::Certificate(Principal {
            name: name.to_owned(),
            role,
            organizations: role.map(|r| r.as_str().to_owned()).into_iter().collect(),
        })
    }

    #[test]
    fn roles_round_trip_through_their_organization() {
        for role in Role::ALL {
            assert_eq!(Role::from_organization(role.as_str()), Some(role));
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        let error = "root".parse::<Role>().expect_err("not a role");
        assert!(error.contains("policy-compiler"), "{error}");
    }

    #[test]
    fn an_agent_is_held_to_its_node() {
        let agent = principal("kino-agent:n1", Some(Role::Agent));
        assert_eq!(agent.node(), Some("n1"));
        assert!(agent.check_node("n1", "node \"n1\"").is_ok());
        let error = agent
            .check_node("n2", "node \"n2\" of Gc")
            .expect_err("another node");
        assert!(
            error.contains("kino-agent:n1") && error.contains("n2"),
            "{error}"
        );

        let nameless = principal("agent", Some(Role::Agent));
        let error = nameless.check_node("n1", "x").expect_err("no node");
        assert!(error.contains("kino-agent:<node>"), "{error}");

        let ipam = principal("ipam", Some(Role::Ipam));
        assert_eq!(ipam.node(), None);
        assert!(ipam.check_node("any", "x").is_ok());
    }

    #[test]
    fn transports_that_vouch_for_the_caller_give_admin() {
        assert!(Caller::LocalSocket { uid: Some(0) }.is_admin());
        assert!(Caller::Insecure.is_admin());
        assert!(Caller::of(&http::Extensions::new()).is_admin());
        assert!(!principal("x", None).is_admin());
        assert_eq!(principal("x", None).role(), None);
    }
}
