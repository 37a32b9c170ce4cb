//! The cluster around this node: how its pods reach other nodes' pods (DESIGN §6).
//!
//! - [`config`]: the routing mode (`tunnel`, the default, or `native`), the node's own
//!   underlay addresses (configured, or found on its links) and what this node publishes in
//!   its Node record for the others.
//! - [`nodes`]: every other node, from the datastore's Node records (list, then watch).
//!   Only the records count, never their agents' liveness: a node whose agent is down keeps
//!   its routes everywhere (cilium#9422); only a deleted record (`kino node delete`) removes
//!   them (cilium#5421).
//! - [`routes`]: the routes those nodes need here — remote pod CIDRs into `kino_vxlan` with
//!   the tunnel MTU (tunnel mode) or via the node's underlay address (native mode) — kept
//!   equal to what the kernel holds by a reconciler that also repairs routes deleted or
//!   changed behind the agent's back or while it was down (cilium#28137).
//! - [`masquerade`]: traffic from this node's pods to outside the cluster leaves with the
//!   node's address (nftables; `--masquerade=false` turns it off).

pub mod config;
pub mod masquerade;
pub mod nodes;
pub mod routes;

use std::time::Duration;

use kino_service_kit::records::RecordClient;
use tokio::sync::watch;

use crate::netlink::Netlink;

/// Starts following the other nodes (`me` excluded) and keeping the routes (and, when
/// `masquerade` is given, the masquerading) they need, as background tasks of the current
/// runtime. The routes' netlink socket is opened here, in the caller's (the node's)
/// network namespace.
pub fn start(
    records: RecordClient,
    me: &str,
    local: routes::LocalRouting,
    masquerade: Option<masquerade::MasqueradeSpec>,
    interval: Duration,
    devices: Option<routes::DeviceKeeper>,
) -> std::io::Result<watch::Receiver<Option<nodes::PeerNodes>>> {
    let netlink = Netlink::connect()?;
    let (publish, peers) = watch::channel(None);
    tokio::spawn(nodes::follow(records, me.to_owned(), publish));
    tokio::spawn(routes::run(
        netlink,
        local,
        peers.clone(),
        interval,
        devices,
    ));
    match masquerade {
        Some(spec) => {
            tokio::spawn(masquerade::run(spec, peers.clone(), interval));
        }
        None => {
            if let Err(e) = masquerade::remove() {
                tracing::warn!(error = %e, "cannot remove the masquerading table of an earlier run");
            }
        }
    }
    Ok(peers)
}
