//! Owners of addresses (one network attachment of one container) and the datastore names of
//! their claims.

use std::fmt;

use ring::digest::{SHA256, digest};

use crate::error::InvalidField;
use crate::prefix::Family;
use kino_api::quote::quote;

/// Longest container id or interface name accepted.
const MAX_ID_LEN: usize = 1024;
/// Name prefix of owner-claim records (after it: family, ':', hash).
pub const CLAIM_PREFIX: &str = "owner:";

/// Who holds an address: the key is (container_id, ifname); the pod is informational.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// Container (sandbox) id given by the runtime.
    pub container_id: String,
    /// Interface name inside the container.
    pub ifname: String,
    /// Pod namespace; may be empty.
    pub pod_namespace: String,
    /// Pod name; may be empty.
    pub pod_name: String,
}

/// The identity of an owner: container id and interface name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerKey {
    /// Container id.
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

impl Owner {
    /// Checks the required fields; `field` prefixes error field names (e.g. "owner").
    pub fn validate(field: &str, owner: Owner) -> Result<Owner, InvalidField> {
        check_id(
            &format!("{field}.container_id"),
            "container id",
            &owner.container_id,
        )?;
        check_id(&format!("{field}.ifname"), "interface name", &owner.ifname)?;
        Ok(owner)
    }

    /// The owner's identity.
    pub fn key(&self) -> OwnerKey {
        OwnerKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }

    /// Whether both are the same owner (same container id and interface).
    pub fn same(&self, other: &Owner) -> bool {
        self.container_id == other.container_id && self.ifname == other.ifname
    }

    /// The datastore name of this owner's claim in `family`:
    /// `owner:<v4|v6>:<hex SHA-256 of container_id NUL ifname>`.
    pub fn claim_name(&self, family: Family) -> String {
        self.key().claim_name(family)
    }
}

impl OwnerKey {
    /// See [`Owner::claim_name`].
    pub fn claim_name(&self, family: Family) -> String {
        let mut input = Vec::with_capacity(self.container_id.len() + self.ifname.len() + 1);
        input.extend_from_slice(self.container_id.as_bytes());
        input.push(0);
        input.extend_from_slice(self.ifname.as_bytes());
        let hash = digest(&SHA256, &input);
        let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{CLAIM_PREFIX}{}:{hex}", family.short())
    }
}

impl fmt::Display for Owner {
    /// `container 0123456789ab ifname eth0 (pod ns/name)`: what an operator needs to find it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "container {} ifname {}", self.container_id, self.ifname)?;
        if !self.pod_name.is_empty() {
            if self.pod_namespace.is_empty() {
                write!(f, " (pod {})", self.pod_name)?;
            } else {
                write!(f, " (pod {}/{})", self.pod_namespace, self.pod_name)?;
            }
        }
        Ok(())
    }
}

fn check_id(field: &str, what: &str, value: &str) -> Result<(), InvalidField> {
    if value.is_empty() {
        return Err(InvalidField::new(field, format!("the {what} is required")));
    }
    if value.len() > MAX_ID_LEN {
        return Err(InvalidField::new(
            field,
            format!("the {what} is longer than {MAX_ID_LEN} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidField::new(
            field,
            format!("the {what} {} contains control characters", quote(value)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(c: &str, i: &str) -> Owner {
        Owner {
            container_id: c.into(),
            ifname: i.into(),
            ..Owner::default()
        }
    }

    #[test]
    fn claim_names_are_stable_distinct_datastore_names() {
        let a = owner("abc", "eth0").claim_name(Family::V4);
        assert_eq!(a, owner("abc", "eth0").claim_name(Family::V4));
        assert!(a.starts_with("owner:v4:") && a.len() == 9 + 64, "{a}");
        assert_ne!(a, owner("abc", "eth0").claim_name(Family::V6));
        assert_ne!(a, owner("abce", "th0").claim_name(Family::V4));
        assert_ne!(a, owner("abc", "eth1").claim_name(Family::V4));
    }

    #[test]
    fn validation_names_the_field() {
        let e = Owner::validate("owner", owner("", "eth0")).unwrap_err();
        assert_eq!(e.field, "owner.container_id");
        let e = Owner::validate("owner", owner("c", "")).unwrap_err();
        assert_eq!(e.field, "owner.ifname");
        assert!(Owner::validate("owner", owner("c", "eth0")).is_ok());
    }

    #[test]
    fn display_shows_the_pod() {
        let mut o = owner("c1", "eth0");
        o.pod_namespace = "ns".into();
        o.pod_name = "web".into();
        assert_eq!(o.to_string(), "container c1 ifname eth0 (pod ns/web)");
    }
}
