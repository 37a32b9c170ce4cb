//! An unreachable route for each service CIDR in the node's namespace: a packet to a service
//! address that escaped translation (a socket the node does not translate, a service
//! without a frontend there) gets "unreachable" here instead of leaving by a default route.
//! Reconciled like the routes to other nodes' pods: installed at start, repaired every
//! `interval` when deleted behind the agent's back, and those of CIDRs no longer wanted
//! removed.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use crate::netlink::{Netlink, NetlinkError};

/// Makes the agent's unreachable routes exactly `wanted`; returns (installed, removed).
pub async fn reconcile(
    netlink: &Netlink,
    wanted: &BTreeSet<(IpAddr, u8)>,
) -> Result<(usize, usize), Vec<NetlinkError>> {
    let current: BTreeSet<(IpAddr, u8)> = netlink
        .unreachable_routes()
        .await
        .map_err(|e| vec![e])?
        .into_iter()
        .collect();
    let mut errors = Vec::new();
    let (mut installed, mut removed) = (0, 0);
    for (destination, len) in current.difference(wanted) {
        match netlink.delete_unreachable_route(*destination, *len).await {
            Ok(_) => removed += 1,
            Err(e) => errors.push(e),
        }
    }
    for (destination, len) in wanted.difference(&current) {
        match netlink.replace_unreachable_route(*destination, *len).await {
            Ok(()) => installed += 1,
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok((installed, removed))
    } else {
        Err(errors)
    }
}

/// Keeps the unreachable routes of `cidrs` until the task is dropped.
pub async fn run(netlink: Netlink, cidrs: Vec<(IpAddr, u8)>, interval: Duration) {
    let wanted: BTreeSet<(IpAddr, u8)> = cidrs.into_iter().collect();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match reconcile(&netlink, &wanted).await {
            Ok((0, 0)) => {}
            Ok((installed, removed)) => {
                tracing::info!(installed, removed, cidrs = ?wanted, "unreachable routes of the service CIDRs reconciled");
            }
            Err(errors) => {
                for error in errors {
                    tracing::warn!(%error, "an unreachable route of a service CIDR could not be reconciled; retrying");
                }
            }
        }
    }
}
