//! Services (issue #14): the agent follows the cluster's `Service` records and keeps its
//! load balancer's maps equal to them ([`watch`], through [`model`]), and keeps an
//! unreachable route for each service CIDR of [`network`] ([`routes`]). The datapath side —
//! maps, Maglev tables, the socket programs — is `datapath::lb`.

pub mod model;
pub mod network;
pub mod routes;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use kino_service_kit::records::RecordClient;
use tokio::sync::{Mutex, watch as signal};

use crate::datapath::lb::LbState;
use crate::netlink::Netlink;

/// Starts following the services into `lb` and keeping the unreachable routes of the
/// service CIDRs (once `network` gives them), as background tasks of the current runtime; the routes' netlink
/// socket is opened here, in the caller's (the node's) network namespace. The receiver
/// turns true once the first complete list of services is programmed.
pub fn start(
    records: RecordClient,
    lb: Arc<Mutex<LbState>>,
    network: impl std::future::Future<Output = network::ServiceNetwork> + Send + 'static,
    interval: Duration,
) -> std::io::Result<signal::Receiver<bool>> {
    let netlink = Netlink::connect()?;
    let (synced, synced_rx) = signal::channel(false);
    tokio::spawn(watch::follow(records, lb, synced));
    // The routes wait for the service network (IPAM may answer later); the services don't.
    tokio::spawn(async move {
        let network = network.await;
        tracing::info!(cidrs = ?network.cidrs, "service network");
        routes::run(netlink, network.cidrs, interval).await;
    });
    Ok(synced_rx)
}

/// Loads the socket load balancer beside the datapath pinned in `pin_dir`, attaches it to
/// the cgroup v2 `cgroup` (the root), records the calling thread's network namespace (the
/// node's) as this node's, and adopts what the maps hold.
pub fn load_socket_lb(
    pin_dir: &std::path::Path,
    cgroup: &std::path::Path,
    config: crate::datapath::lb::LbConfig,
) -> Result<
    (
        crate::datapath::lb::SockLb,
        LbState,
        crate::datapath::lb::NetnsMap,
    ),
    String,
> {
    use crate::datapath::lb::{NetnsOwner, SockLb};
    let (mut sock, maps, mut netns) =
        SockLb::load(pin_dir, config.maglev_table_size).map_err(|e| e.to_string())?;
    let own = crate::netns::current_netns_cookie()
        .map_err(|e| format!("reading the node's network namespace cookie: {e}"))?;
    netns
        .insert(own, NetnsOwner::Node)
        .map_err(|e| e.to_string())?;
    let pins = sock.attach(cgroup).map_err(|e| e.to_string())?;
    tracing::info!(cgroup = %cgroup.display(), links = pins.len(), algorithm = %config.algorithm, maglev_table_size = config.maglev_table_size, "socket load balancing attached");
    let state = LbState::adopt(maps, config).map_err(|e| e.to_string())?;
    Ok((sock, state, netns))
}
