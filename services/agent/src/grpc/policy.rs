//! Conversions between the policy messages of `kino.policy.v1` / `kino.agent.v1` and the
//! datapath's domain types: compiled keys and updates in (what the policy sync receives from
//! `WatchEndpointPolicy`), map dumps out (`ListBpfPolicy`, `ListBpfIpcache`,
//! `ListBpfConntrack`).

use std::collections::BTreeMap;

use kino_api::agent::{BpfConntrackEntry, BpfIpcacheEntry, BpfPolicyEntry};
use kino_api::policy::{
    EndpointPolicyUpdate, IpCacheEntry as PbIpcacheEntry, PolicyMapEntry, PolicyMapKey,
    policy_map_key::Remote,
};
use kino_api::types::{
    Direction as PbDirection, IpFamily, PolicyEnforcement, PolicyVerdict, Protocol,
};

use crate::datapath::ipcache::IPCACHE_F_TUNNEL_IPV6;
use crate::datapath::{
    CtEntry, Direction, Enforcement, EntryChange, IpPrefix, IpcacheEntry, PolicyEntryInfo,
    PolicyKey, PolicyUpdate, Verdict,
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

fn verdict_to_proto(verdict: Verdict) -> PolicyVerdict {
    match verdict {
        Verdict::Allow => PolicyVerdict::Allow,
        Verdict::Deny => PolicyVerdict::Deny,
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

/// A policy entry dump.
pub fn bpf_policy_entry(entry: &PolicyEntryInfo) -> BpfPolicyEntry {
    BpfPolicyEntry {
        key: Some(policy_key_to_proto(&entry.key)),
        verdict: verdict_to_proto(entry.verdict) as i32,
        packets: entry.packets,
        bytes: entry.bytes,
    }
}

/// An ipcache entry dump.
pub fn bpf_ipcache_entry(entry: &IpcacheEntry) -> BpfIpcacheEntry {
    BpfIpcacheEntry {
        prefix: entry.prefix.to_string(),
        identity: entry.identity,
        tunnel_endpoint: entry
            .tunnel_endpoint
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        flags: match entry.tunnel_endpoint {
            Some(ip) if ip.is_ipv6() => IPCACHE_F_TUNNEL_IPV6,
            _ => 0,
        },
    }
}

/// A conntrack entry dump.
pub fn bpf_conntrack_entry(entry: &CtEntry) -> BpfConntrackEntry {
    use crate::datapath::conntrack::{CT_F_RX_CLOSING, CT_F_SEEN_NON_SYN, CT_F_TX_CLOSING};
    BpfConntrackEntry {
        family: if entry.source.is_ipv4() {
            IpFamily::Ipv4
        } else {
            IpFamily::Ipv6
        } as i32,
        protocol: Protocol::try_from(i32::from(entry.protocol))
            .map_or(i32::from(entry.protocol), |p| p as i32),
        source_address: entry.source.to_string(),
        source_port: u32::from(entry.source_port),
        destination_address: entry.destination.to_string(),
        destination_port: u32::from(entry.destination_port),
        direction: match entry.direction {
            Direction::Ingress => PbDirection::Ingress,
            Direction::Egress => PbDirection::Egress,
        } as i32,
        expires_in: Some(prost_types::Duration {
            seconds: entry.expires_in.as_secs() as i64,
            nanos: 0,
        }),
        rx_packets: entry.rx_packets,
        rx_bytes: entry.rx_bytes,
        tx_packets: entry.tx_packets,
        tx_bytes: entry.tx_bytes,
        rx_closing: entry.flags & CT_F_RX_CLOSING != 0,
        tx_closing: entry.flags & CT_F_TX_CLOSING != 0,
        seen_non_syn: entry.flags & CT_F_SEEN_NON_SYN != 0,
        source_identity: entry.source_identity,
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(bpf_ipcache_entry(&entry).prefix, "192.0.2.0/24");
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
