//! What the load balancer's maps hold, frontend by frontend (`kino bpf lb list`, as
//! `cilium bpf lb list`): read back from the maps themselves — not from what the agent
//! meant to write — so the listing shows what the socket programs will actually use.

use crate::datapath::abi::LB_BACKEND_ACTIVE;
use crate::datapath::lb::maps::{L4Addr, LbMaps};
use crate::datapath::map_access::MapOpError;

/// One frontend and its backends as the maps hold them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendListing {
    /// VIP:port/protocol.
    pub address: L4Addr,
    /// The frontend id (the reverse-NAT index).
    pub id: u32,
    /// Its backends: those in slots in slot order, then those without a slot.
    pub backends: Vec<BackendListing>,
}

/// One backend of a frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendListing {
    /// The backend id (one backend of one frontend).
    pub id: u32,
    /// Its address:port/protocol.
    pub address: L4Addr,
    /// Its slot (1..count), 0 when it has none (it takes no new connections).
    pub slot: u32,
    /// Its weight (from the slots' cumulative weights), 0 without a slot.
    pub weight: u32,
    /// ACTIVE (takes new connections) rather than terminating.
    pub active: bool,
}

/// Every frontend of `maps`, in address order.
pub fn list(maps: &LbMaps) -> Result<Vec<FrontendListing>, MapOpError> {
    let slots = maps.slots()?;
    let backends = maps.backends()?;
    let mut listing = Vec::new();
    for (address, frontend) in maps.frontends()? {
        let mut rows = Vec::new();
        let mut previous_end = 0;
        for (_, slot, value) in slots.iter().filter(|(f, _, _)| *f == frontend.id) {
            let weight = value.weight_end.saturating_sub(previous_end);
            previous_end = value.weight_end;
            if let Some(row) = backend_row(&backends, value.backend_id, *slot, weight) {
                rows.push(row);
            }
        }
        let slotless: Vec<u32> = backends
            .iter()
            .filter(|(id, b)| b.frontend_id == frontend.id && !rows.iter().any(|r| r.id == *id))
            .map(|(id, _)| *id)
            .collect();
        rows.extend(
            slotless
                .into_iter()
                .filter_map(|id| backend_row(&backends, id, 0, 0)),
        );
        listing.push(FrontendListing {
            address,
            id: frontend.id,
            backends: rows,
        });
    }
    Ok(listing)
}

fn backend_row(
    backends: &[(u32, crate::datapath::abi::LbBackendRaw)],
    id: u32,
    slot: u32,
    weight: u32,
) -> Option<BackendListing> {
    let (_, raw) = backends.iter().find(|(b, _)| *b == id)?;
    Some(BackendListing {
        id,
        address: L4Addr::of_backend(raw)?,
        slot,
        weight,
        active: raw.state == LB_BACKEND_ACTIVE,
    })
}
