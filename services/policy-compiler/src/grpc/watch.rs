//! WatchEndpointPolicy on the wire: the stream's messages ([`crate::stream`]) and the
//! ipcache entries they carry → `kino.policy.v1`. The stream itself is domain code; only
//! this adapter knows the proto form, so the domain never imports the API layer.

use kino_api::policy as pb;
use kino_api::types as pbt;

use crate::convert::{enforcement_to_proto, map_entry_to_proto, map_key_to_proto};
use crate::ipcache::{EndpointRef, IpcacheEntry, IpcacheSource};
use crate::stream::{PolicyUpdate, StreamMessage};

/// An ipcache entry → proto.
pub fn ipcache_to_proto(e: &IpcacheEntry) -> pb::IpCacheEntry {
    pb::IpCacheEntry {
        prefix: e.prefix.to_string(),
        identity: e.identity,
        host_ip: e.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        node_name: e.node_name.clone(),
        endpoint: e.endpoint.as_ref().map(endpoint_ref_to_proto),
        source: match e.source {
            IpcacheSource::Endpoint => pb::IpCacheSource::Endpoint,
            IpcacheSource::Node => pb::IpCacheSource::Node,
            IpcacheSource::PolicyCidr => pb::IpCacheSource::PolicyCidr,
            IpcacheSource::Reserved => pb::IpCacheSource::Reserved,
            IpcacheSource::PodCidr => pb::IpCacheSource::PodCidr,
        } as i32,
    }
}

fn endpoint_ref_to_proto(r: &EndpointRef) -> pbt::EndpointRef {
    pbt::EndpointRef {
        node_name: r.node_name.clone(),
        endpoint_id: r.endpoint_id,
        container_id: r.container_id.clone(),
        ifname: r.ifname.clone(),
        pod: r.pod.as_ref().map(|(ns, name)| pbt::PodRef {
            namespace: ns.clone(),
            name: name.clone(),
        }),
    }
}

fn update_to_proto(u: &PolicyUpdate) -> pb::EndpointPolicyUpdate {
    pb::EndpointPolicyUpdate {
        identity: u.identity,
        removed: u.removed,
        replace: u.replace,
        enforcement: (!u.removed).then(|| enforcement_to_proto(u.enforcement)),
        upserts: u
            .upserts
            .iter()
            .map(|(k, e)| map_entry_to_proto(k, e))
            .collect(),
        deletes: u.deletes.iter().map(map_key_to_proto).collect(),
    }
}

/// A stream message → proto.
pub fn stream_message_to_proto(m: &StreamMessage, epoch: &str) -> pb::WatchEndpointPolicyResponse {
    pb::WatchEndpointPolicyResponse {
        revision: m.revision,
        reset: m.reset,
        synced: m.synced,
        policy_updates: m.policy_updates.iter().map(update_to_proto).collect(),
        ipcache_deletes: m.ipcache_deletes.iter().map(|p| p.to_string()).collect(),
        ipcache_upserts: m.ipcache_upserts.iter().map(ipcache_to_proto).collect(),
        epoch: epoch.to_owned(),
    }
}
