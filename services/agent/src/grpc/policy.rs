//! The datapath's map contents as `kino.agent.v1` answers show them: `ListBpfPolicy`,
//! `ListBpfIpcache`, `ListBpfConntrack` and `ListBpfLoadBalancer` rows. (The compiled policy coming in is converted
//! below the manager, in `endpoint::compiled_policy`.)

use kino_api::agent::{
    BpfConntrackEntry, BpfIpcacheEntry, BpfLbBackend, BpfLbFrontend, BpfPolicyEntry,
};
use kino_api::service::BackendState;
use kino_api::types::{Direction as PbDirection, IpFamily, PolicyVerdict, Protocol};

use crate::datapath::ipcache::IPCACHE_F_TUNNEL_IPV6;
use crate::datapath::lb::L4Protocol;
use crate::datapath::lb::listing::FrontendListing;
use crate::datapath::{CtEntry, Direction, IpcacheEntry, PolicyEntryInfo, Verdict};
use crate::endpoint::compiled_policy::policy_key_to_proto;

fn verdict_to_proto(verdict: Verdict) -> PolicyVerdict {
    match verdict {
        Verdict::Allow => PolicyVerdict::Allow,
        Verdict::Deny => PolicyVerdict::Deny,
    }
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

/// A frontend of the load balancer's maps as a `ListBpfLoadBalancer` row.
pub fn bpf_lb_frontend(frontend: &FrontendListing) -> BpfLbFrontend {
    let protocol = |p: L4Protocol| match p {
        L4Protocol::Tcp => Protocol::Tcp,
        L4Protocol::Udp => Protocol::Udp,
    } as i32;
    BpfLbFrontend {
        frontend_id: frontend.id,
        frontend_address: frontend.address.ip.to_string(),
        frontend_port: u32::from(frontend.address.port),
        protocol: protocol(frontend.address.protocol),
        backends: frontend
            .backends
            .iter()
            .map(|b| BpfLbBackend {
                backend_id: b.id,
                address: b.address.ip.to_string(),
                port: u32::from(b.address.port),
                slot: b.slot,
                weight: b.weight,
                state: if b.active {
                    BackendState::Active
                } else {
                    BackendState::Terminating
                } as i32,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipcache_dumps_show_the_prefix() {
        let entry = IpcacheEntry::new("192.0.2.0/24".parse().expect("prefix"), 16_777_217);
        let dump = bpf_ipcache_entry(&entry);
        assert_eq!(dump.prefix, "192.0.2.0/24");
        assert_eq!(dump.identity, 16_777_217);
    }
}
