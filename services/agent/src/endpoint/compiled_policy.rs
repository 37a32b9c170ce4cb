//! The compiled policy as the policy-compiler sends it (`kino.policy.v1`: policy-map keys
//! and entries, `EndpointPolicyUpdate`s, ipcache entries) turned into the datapath's types,
//! and compiled keys back into their proto form. The endpoint manager applies what
//! `WatchEndpointPolicy` streams and what `GetEndpointPolicy` answers; the agent's gRPC
//! adapter shows the keys of its map dumps. It sits below the manager (not in the gRPC layer)
//! because the manager is its main user and must not import the gRPC layer; every fallible
//! conversion names the field it refuses, so a stream the datapath cannot represent is
//! reported precisely.

use std::collections::BTreeMap;

use kino_api::policy::{
    EndpointPolicyUpdate, IpCacheEntry as PbIpcacheEntry, PolicyMapEntry, PolicyMapKey,
    policy_map_key::Remote,
};
use kino_api::types::{Direction as PbDirection, PolicyEnforcement, PolicyVerdict};

use crate::datapath::{
    Direction, Enforcement, EntryChange, IpPrefix, IpcacheEntry, PolicyKey, PolicyUpdate, Verdict,
};

/// A message the datapath cannot represent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConversionError {
    /// The field, e.g. `upserts[3].key.port`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

fn error(field: impl Into<String>, problem: impl Into<String>) -> ConversionError {
    ConversionError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// A compiled key. Remote CIDRs are refused: the compiler gives CIDRs identities through the
/// ipcache and never sends them as keys.
pub fn policy_key_from_proto(
    key: &PolicyMapKey,
    field: &str,
) -> Result<PolicyKey, ConversionError> {
    let direction = match PbDirection::try_from(key.direction) {
        Ok(PbDirection::Ingress) => Direction::Ingress,
        Ok(PbDirection::Egress) => Direction::Egress,
        _ => {
            return Err(error(
                format!("{field}.direction"),
                "must be INGRESS or EGRESS",
            ));
        }
    };
    let remote_identity = match &key.remote {
        None => 0,
        Some(Remote::RemoteIdentity(id)) => *id,
        Some(Remote::RemoteCidr(cidr)) => {
            return Err(error(
                format!("{field}.remote_cidr"),
                format!(
                    "{cidr}: the datapath matches identities only; give the CIDR an identity in the ipcache"
                ),
            ));
        }
    };
    let protocol = u8::try_from(key.protocol).map_err(|_| {
        error(
            format!("{field}.protocol"),
            format!("{} is not an IP protocol number", key.protocol),
        )
    })?;
    let port = u16::try_from(key.port).map_err(|_| {
        error(
            format!("{field}.port"),
            format!("{} is above 65535", key.port),
        )
    })?;
    let end_port = u16::try_from(key.end_port).map_err(|_| {
        error(
            format!("{field}.end_port"),
            format!("{} is above 65535", key.end_port),
        )
    })?;
    let key = PolicyKey {
        direction,
        remote_identity,
        protocol,
        port,
        end_port,
    };
    key.validate().map_err(|problem| error(field, problem))?;
    Ok(key)
}

/// The proto form of a compiled key.
pub fn policy_key_to_proto(key: &PolicyKey) -> PolicyMapKey {
    PolicyMapKey {
        direction: match key.direction {
            Direction::Ingress => PbDirection::Ingress,
            Direction::Egress => PbDirection::Egress,
        } as i32,
        remote: Some(Remote::RemoteIdentity(key.remote_identity)),
        protocol: i32::from(key.protocol),
        port: u32::from(key.port),
        end_port: u32::from(key.end_port),
    }
}

fn verdict_from_proto(verdict: i32, field: &str) -> Result<Verdict, ConversionError> {
    match PolicyVerdict::try_from(verdict) {
        Ok(PolicyVerdict::Allow) => Ok(Verdict::Allow),
        Ok(PolicyVerdict::Deny) => Ok(Verdict::Deny),
        _ => Err(error(field, "must be ALLOW or DENY")),
    }
}

/// One compiled entry.
pub fn policy_entry_from_proto(
    entry: &PolicyMapEntry,
    field: &str,
) -> Result<(PolicyKey, Verdict), ConversionError> {
    let key = entry
        .key
        .as_ref()
        .ok_or_else(|| error(format!("{field}.key"), "is required"))?;
    Ok((
        policy_key_from_proto(key, &format!("{field}.key"))?,
        verdict_from_proto(entry.verdict, &format!("{field}.verdict"))?,
    ))
}

/// Enforcement from the proto (absent = nothing enforced).
pub fn enforcement_from_proto(enforcement: Option<&PolicyEnforcement>) -> Enforcement {
    enforcement.map_or_else(Enforcement::default, |e| Enforcement {
        ingress: e.ingress,
        egress: e.egress,
    })
}

/// The datapath update of one `EndpointPolicyUpdate` at `revision`. `None` when the
/// identity was removed (the caller clears or re-targets its endpoints).
pub fn policy_update_from_proto(
    update: &EndpointPolicyUpdate,
    revision: i64,
) -> Result<Option<PolicyUpdate>, ConversionError> {
    if update.removed {
        return Ok(None);
    }
    let upserts = update
        .upserts
        .iter()
        .enumerate()
        .map(|(i, e)| policy_entry_from_proto(e, &format!("upserts[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let entries = if update.replace {
        let mut all = BTreeMap::new();
        for (key, verdict) in upserts {
            all.insert(key, verdict);
        }
        EntryChange::Replace(all)
    } else {
        let deletes = update
            .deletes
            .iter()
            .enumerate()
            .map(|(i, k)| policy_key_from_proto(k, &format!("deletes[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        EntryChange::Delta { upserts, deletes }
    };
    Ok(Some(PolicyUpdate {
        enforcement: enforcement_from_proto(update.enforcement.as_ref()),
        revision,
        entries,
    }))
}

/// An ipcache entry from the compiler's stream.
pub fn ipcache_entry_from_proto(
    entry: &PbIpcacheEntry,
    field: &str,
) -> Result<IpcacheEntry, ConversionError> {
    let prefix: IpPrefix = entry
        .prefix
        .parse()
        .map_err(|problem: String| error(format!("{field}.prefix"), problem))?;
    let tunnel_endpoint = match entry.host_ip.as_str() {
        "" => None,
        ip => Some(ip.parse().map_err(|e| {
            error(
                format!("{field}.host_ip"),
                format!("{ip:?} is not an IP address: {e}"),
            )
        })?),
    };
    Ok(IpcacheEntry {
        prefix,
        identity: entry.identity,
        tunnel_endpoint,
    })
}

#[cfg(test)]
mod tests {
    use kino_api::types::Protocol;

    use super::*;

    fn key(
        direction: PbDirection,
        remote: u32,
        protocol: Protocol,
        port: u32,
        end: u32,
    ) -> PolicyMapKey {
        PolicyMapKey {
            direction: direction as i32,
            remote: Some(Remote::RemoteIdentity(remote)),
            protocol: protocol as i32,
            port,
            end_port: end,
        }
    }

    #[test]
    fn keys_round_trip() {
        for pb in [
            key(PbDirection::Ingress, 300, Protocol::Tcp, 80, 0),
            key(PbDirection::Egress, 0, Protocol::Udp, 1000, 2000),
            key(PbDirection::Egress, 16_777_217, Protocol::Unspecified, 0, 0),
        ] {
            let domain = policy_key_from_proto(&pb, "key").expect("valid");
            assert_eq!(policy_key_to_proto(&domain), pb);
        }
        let no_remote = PolicyMapKey {
            remote: None,
            ..key(PbDirection::Ingress, 0, Protocol::Tcp, 80, 0)
        };
        assert_eq!(
            policy_key_from_proto(&no_remote, "k")
                .expect("wildcard")
                .remote_identity,
            0
        );
    }

    #[test]
    fn bad_keys_name_their_field() {
        let cidr = PolicyMapKey {
            remote: Some(Remote::RemoteCidr("10.0.0.0/8".into())),
            ..key(PbDirection::Ingress, 0, Protocol::Tcp, 80, 0)
        };
        let e = policy_key_from_proto(&cidr, "upserts[2].key").expect_err("cidr");
        assert_eq!(e.field, "upserts[2].key.remote_cidr");
        let e = policy_key_from_proto(&key(PbDirection::Unspecified, 0, Protocol::Tcp, 80, 0), "k")
            .expect_err("direction");
        assert_eq!(e.field, "k.direction");
        let e = policy_key_from_proto(&key(PbDirection::Ingress, 0, Protocol::Tcp, 70_000, 0), "k")
            .expect_err("port");
        assert_eq!(e.field, "k.port");
        assert!(
            policy_key_from_proto(
                &key(PbDirection::Ingress, 0, Protocol::Unspecified, 80, 0),
                "k"
            )
            .is_err()
        );
    }

    #[test]
    fn updates_become_deltas_or_replacements() {
        let entry = |port, verdict: PolicyVerdict| PolicyMapEntry {
            key: Some(key(PbDirection::Ingress, 300, Protocol::Tcp, port, 0)),
            verdict: verdict as i32,
            derived_from: vec![],
        };
        let mut update = EndpointPolicyUpdate {
            identity: 300,
            removed: false,
            replace: false,
            enforcement: Some(PolicyEnforcement {
                ingress: true,
                egress: false,
            }),
            upserts: vec![
                entry(80, PolicyVerdict::Allow),
                entry(81, PolicyVerdict::Deny),
            ],
            deletes: vec![key(PbDirection::Ingress, 300, Protocol::Tcp, 22, 0)],
        };
        let delta = policy_update_from_proto(&update, 9)
            .expect("valid")
            .expect("not removed");
        assert_eq!(delta.revision, 9);
        assert!(delta.enforcement.ingress && !delta.enforcement.egress);
        let EntryChange::Delta { upserts, deletes } = &delta.entries else {
            panic!("a delta");
        };
        assert_eq!(upserts.len(), 2);
        assert_eq!(upserts[1].1, Verdict::Deny);
        assert_eq!(deletes.len(), 1);
        update.replace = true;
        let replace = policy_update_from_proto(&update, 9)
            .expect("valid")
            .expect("not removed");
        assert!(matches!(&replace.entries, EntryChange::Replace(all) if all.len() == 2));
        update.upserts[0].verdict = PolicyVerdict::Unspecified as i32;
        let e = policy_update_from_proto(&update, 9).expect_err("no verdict");
        assert_eq!(e.field, "upserts[0].verdict");
        update.removed = true;
        assert_eq!(policy_update_from_proto(&update, 9), Ok(None));
    }

    #[test]
    fn ipcache_entries_convert() {
        let pb = PbIpcacheEntry {
            prefix: "192.0.2.0/24".into(),
            identity: 16_777_217,
            host_ip: String::new(),
            ..Default::default()
        };
        let entry = ipcache_entry_from_proto(&pb, "ipcache_upserts[0]").expect("valid");
        assert_eq!(entry.prefix.to_string(), "192.0.2.0/24");
        let bad = PbIpcacheEntry {
            prefix: "192.0.2.1/24".into(),
            ..pb
        };
        assert_eq!(
            ipcache_entry_from_proto(&bad, "ipcache_upserts[0]")
                .expect_err("host bits")
                .field,
            "ipcache_upserts[0].prefix"
        );
    }
}
