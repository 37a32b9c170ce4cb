//! Every decoder of records read from the datastore (or from the compiler's stream, or the
//! agent's checkpoints): the first byte picks one, the rest is the encoded spec. A record
//! someone else wrote, or a corrupted one, must be refused with an error, never a panic.

use kino_api::datastore::Resource;
use kino_api::{agent as pba, policy as pbp, types as pbt};
use kino_ipam::persistence;
use kino_ipam::records::{Allocation, Claim, NodeBlocks, Pool};
use kino_policy_compiler::convert::policy_from_proto;
use kino_policy_compiler::identity::allocator::IdentityRecord;
use kino_policy_compiler::store;
use prost::Message;

use crate::Work;

/// The decoders, in the order the selector byte picks them.
const DECODERS: usize = 11;

fn resource(kind: &str, message: &str, value: &[u8]) -> Resource {
    Resource {
        kind: kind.into(),
        namespace: "ns".into(),
        name: "n".into(),
        spec: Some(prost_types::Any {
            type_url: format!("type.googleapis.com/{message}"),
            value: value.to_vec(),
        }),
        ..Default::default()
    }
}

/// Decodes `data[1..]` with decoder `data[0] % 11`.
pub fn decode(data: &[u8]) -> Work {
    let Some((&selector, spec)) = data.split_first() else {
        return Work::default();
    };
    match usize::from(selector) % DECODERS {
        0 => {
            let _ = persistence::decode::<Pool>(&resource("IPPool", "kino.ipam.v1.IPPool", spec));
        }
        1 => {
            let r = resource("NodeAllocation", "kino.ipam.v1.NodeAllocation", spec);
            let _ = persistence::decode::<NodeBlocks>(&r);
        }
        2 => {
            let r = resource("IPAllocation", "kino.ipam.v1.IPAllocation", spec);
            let _ = persistence::decode::<Allocation>(&r);
        }
        3 => {
            let r = resource("IPAllocation", "kino.ipam.v1.OwnerClaim", spec);
            let _ = persistence::decode::<Claim>(&r);
        }
        4 => {
            let r = resource("Policy", "kino.policy.v1.Policy", spec);
            if let Ok(stored) = store::decode::<pbp::Policy>(&r) {
                let _ = policy_from_proto(&stored.value);
            }
        }
        5 => {
            let r = resource("Identity", "kino.policy.v1.Identity", spec);
            if let Ok(stored) = store::decode::<pbp::Identity>(&r) {
                let _ = IdentityRecord::from_proto(&stored.value);
            }
        }
        6 => {
            let r = resource("Endpoint", "kino.agent.v1.Endpoint", spec);
            let _ = store::decode::<pba::Endpoint>(&r);
            // The agent's own checkpoint of an endpoint is the same message.
            let _ = pba::Endpoint::decode(spec);
        }
        7 => {
            let _ = store::decode::<pbt::Node>(&resource("Node", "kino.types.v1.Node", spec));
        }
        8 => {
            if let Ok(update) = pbp::EndpointPolicyUpdate::decode(spec) {
                let _ = kino_agent::endpoint::compiled_policy::policy_update_from_proto(&update, 1);
            }
        }
        9 => {
            if let Ok(entry) = pbp::IpCacheEntry::decode(spec) {
                let _ = kino_agent::endpoint::compiled_policy::ipcache_entry_from_proto(
                    &entry, "entry",
                );
            }
        }
        _ => {
            // The service kit's check of a spec's type, with a type URL from the input.
            let text = String::from_utf8_lossy(spec);
            let (message, value) = text.split_once('\n').unwrap_or((&text, ""));
            let r = resource("Node", message, value.as_bytes());
            let _ = kino_service_kit::records::spec_bytes(&r, "kino.types.v1.Node");
        }
    }
    Work { steps: 1, bound: 1 }
}
