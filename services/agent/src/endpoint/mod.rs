//! Endpoints in the kernel: the veth pair ([`veth`]), the datapath's map entries and the
//! programs on the lxc, created all or nothing and deleted idempotently. The endpoint manager
//! (IPAM, datastore, API) builds on [`create_endpoint`] and [`delete_endpoint`].
//!
//! Call both from the node's network namespace (the datapath attaches by interface name).

pub mod compiled_policy;
pub mod manager;
pub mod peers;
pub mod release;
pub mod state;
pub mod veth;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use crate::datapath::{
    ConntrackError, Datapath, DatapathError, EndpointEntry, IpPrefix, IpcacheEntry, IpcacheError,
    LxcAttachment, MapOpError, PolicyMapError,
};
use crate::netlink::NetlinkError;
use crate::netns::NetnsError;
pub use veth::{EndpointVeth, VethRequest, create_veth, delete_veth, list_lxcs, lxc_name};

/// Building or removing an endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The request cannot be carried out as given.
    #[error("invalid endpoint request: {0}")]
    InvalidRequest(String),
    /// The lxc for this container id and interface already exists.
    #[error("{lxc} already exists: the endpoint is already set up; delete it first to recreate it")]
    LxcExists {
        /// The lxc's name.
        lxc: String,
    },
    /// The pod's namespace already has an interface of the requested name.
    #[error("the network namespace {netns} already has an interface {ifname}")]
    PodInterfaceExists {
        /// The requested name.
        ifname: String,
        /// The pod's namespace.
        netns: PathBuf,
    },
    /// The pod side vanished from the pod's namespace while being configured.
    #[error("interface {ifname} vanished from network namespace {netns} during set-up")]
    PodInterfaceMissing {
        /// The requested name.
        ifname: String,
        /// The pod's namespace.
        netns: PathBuf,
    },
    /// The pod already has a default route (another plugin configured it?).
    #[error(
        "network namespace {netns} already has a default route; kino-cni must be the first plugin of the chain"
    )]
    PodHasDefaultRoute {
        /// The pod's namespace.
        netns: PathBuf,
    },
    /// The lxc vanished right after being created.
    #[error("{lxc} vanished during set-up; is something else deleting lxc devices?")]
    Vanished {
        /// The lxc's name.
        lxc: String,
    },
    /// No netlink socket could be opened inside the pod's namespace.
    #[error("cannot open a netlink socket in network namespace {netns}: {source}")]
    NetlinkSocket {
        /// The pod's namespace.
        netns: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A sysctl of the pod side could not be written (IPv6 turned off in the kernel?).
    #[error("cannot write {path}: {source}; does the kernel have IPv6?")]
    Sysctl {
        /// The /proc/sys path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Entering the pod's namespace failed (it does not exist, or no privilege).
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// Attaching or detaching the programs failed.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// Writing the endpoint's map entries failed.
    #[error(transparent)]
    Map(#[from] MapOpError),
    /// Writing the endpoint's ipcache entry failed.
    #[error(transparent)]
    Ipcache(#[from] IpcacheError),
    /// Clearing the endpoint's policy failed.
    #[error(transparent)]
    Policy(#[from] PolicyMapError),
    /// Removing the endpoint's connections from conntrack failed.
    #[error(transparent)]
    Conntrack(#[from] ConntrackError),
}

/// Deleting an endpoint met errors; every step was tried anyway.
#[derive(Debug, thiserror::Error)]
#[error("deleting endpoint {lxc} failed: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct TeardownError {
    /// The lxc's name.
    pub lxc: String,
    /// Every error met, in step order.
    pub errors: Vec<EndpointError>,
}

/// An endpoint to create in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// The agent's endpoint id (not 0).
    pub id: u32,
    /// Its security identity; 0 while unknown (peers then see it as "unknown cluster
    /// endpoint": only rules for every peer match it).
    pub identity: u32,
    /// Its veth pair and addresses.
    pub veth: VethRequest,
}

/// An endpoint as created in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointDatapath {
    /// The veth pair.
    pub veth: EndpointVeth,
    /// Its map entry.
    pub entry: EndpointEntry,
    /// Its programs (tc filters on the lxc).
    pub attachment: LxcAttachment,
}

/// Creates the endpoint's veth pair, writes its map entries (endpoint, a clean policy with
/// nothing enforced, its address in the ipcache with its identity), then attaches the
/// programs to its lxc (so the source check knows the endpoint before its first packet).
/// All or nothing: any failure undoes the steps before it.
pub async fn create_endpoint(
    netlink: &crate::netlink::Netlink,
    datapath: &mut Datapath,
    spec: &EndpointSpec,
) -> Result<EndpointDatapath, EndpointError> {
    if spec.id == 0 {
        return Err(EndpointError::InvalidRequest(
            "endpoint id 0 is reserved for unknown endpoints".to_owned(),
        ));
    }
    let veth = create_veth(netlink, &spec.veth).await?;
    let entry = EndpointEntry {
        id: spec.id,
        identity: spec.identity,
        ipv4: spec.veth.ipv4,
        ipv6: spec.veth.ipv6,
        lxc_ifindex: veth.lxc_ifindex,
        lxc_mac: veth.lxc_mac,
        pod_mac: veth.pod_mac,
    };
    let attached = match write_entries(datapath, &entry) {
        Ok(()) => match datapath
            .attach_endpoint(netlink, &veth.lxc_name, veth.lxc_ifindex)
            .await
        {
            Ok(attachment) => Ok(attachment),
            Err(e) => {
                remove_entries(datapath, &entry, &veth.lxc_name);
                Err(EndpointError::from(e))
            }
        },
        Err(e) => {
            remove_entries(datapath, &entry, &veth.lxc_name);
            Err(e)
        }
    };
    match attached {
        Ok(attachment) => Ok(EndpointDatapath {
            veth,
            entry,
            attachment,
        }),
        Err(e) => {
            if let Err(undo) = delete_veth(netlink, &veth.lxc_name).await {
                tracing::warn!(lxc = veth.lxc_name, error = %undo, "rolling back: cannot delete the lxc");
            }
            Err(e)
        }
    }
}

/// The addresses of an endpoint: its IPv4 and, if it has one, its IPv6.
pub fn endpoint_addresses(entry: &EndpointEntry) -> Vec<IpAddr> {
    let mut addresses = vec![IpAddr::from(entry.ipv4)];
    addresses.extend(entry.ipv6.map(IpAddr::from));
    addresses
}

/// The ipcache entries of an endpoint's addresses (a /32 and a /128).
fn ipcache_entries(entry: &EndpointEntry) -> Vec<IpcacheEntry> {
    endpoint_addresses(entry)
        .into_iter()
        .map(|ip| IpcacheEntry::new(IpPrefix::host(ip), entry.identity))
        .collect()
}

/// The endpoint's map entries, its policy reset (a previous holder of the id may have left
/// some) and its ipcache entries.
fn write_entries(datapath: &mut Datapath, entry: &EndpointEntry) -> Result<(), EndpointError> {
    datapath.policy_mut().clear(entry.id)?;
    datapath.maps_mut().upsert(entry)?;
    for ipcache in ipcache_entries(entry) {
        datapath.ipcache_mut().upsert(&ipcache)?;
    }
    Ok(())
}

/// Undoes [`write_entries`] as far as it got, logging what cannot be undone.
fn remove_entries(datapath: &mut Datapath, entry: &EndpointEntry, lxc: &str) {
    for ipcache in ipcache_entries(entry) {
        if let Err(undo) = datapath.ipcache_mut().remove(&ipcache.prefix) {
            tracing::warn!(lxc, error = %undo, "rolling back: cannot remove an ipcache entry");
        }
    }
    if let Err(undo) = datapath.maps_mut().remove_entry(entry) {
        tracing::warn!(lxc, error = %undo, "rolling back: cannot remove map entries");
    }
}

/// Deletes the endpoint whose host side is `lxc`: removes its map entries (those of its lxc,
/// and those of `ipv4` when given — the only way to find them once the lxc is gone), its
/// policy, its ipcache entries and the conntrack entries of its addresses, and deletes the
/// lxc (which takes its tc filters; TCX link pins of an older agent are removed). Idempotent;
/// works when the pod's namespace (and so the lxc) is already gone. Every step is tried even
/// if one fails.
pub async fn delete_endpoint(
    netlink: &crate::netlink::Netlink,
    datapath: &mut Datapath,
    lxc: &str,
    ipv4: Option<Ipv4Addr>,
) -> Result<(), TeardownError> {
    let addresses: Vec<IpAddr> = ipv4.map(IpAddr::from).into_iter().collect();
    delete_endpoint_with(netlink, datapath, lxc, &addresses).await
}

/// [`delete_endpoint`] given every address the endpoint had (IPv4 and IPv6, from its
/// record): also their ipcache entries go when its map entries are already gone.
pub async fn delete_endpoint_with(
    netlink: &crate::netlink::Netlink,
    datapath: &mut Datapath,
    lxc: &str,
    addresses: &[IpAddr],
) -> Result<(), TeardownError> {
    let mut errors: Vec<EndpointError> = Vec::new();
    if let Err(e) = datapath.detach_endpoint(lxc) {
        errors.push(e.into());
    }
    let link = match netlink.link_by_name(lxc).await {
        Ok(link) => link,
        Err(e) => {
            errors.push(e.into());
            None
        }
    };
    let mut found = Vec::new();
    if let Some(link) = &link {
        match datapath.maps().get_by_lxc(link.index) {
            Ok(Some(entry)) => found.push(entry),
            Ok(None) => {}
            Err(e) => errors.push(e.into()),
        }
    }
    for ip in addresses {
        match datapath.maps().get_ip(*ip) {
            Ok(Some(entry)) if !found.contains(&entry) => found.push(entry),
            Ok(_) => {}
            Err(e) => errors.push(e.into()),
        }
    }
    for entry in &found {
        if let Err(e) = datapath.maps_mut().remove_entry(entry) {
            errors.push(e.into());
        }
        if let Err(e) = datapath.policy_mut().clear(entry.id) {
            errors.push(e.into());
        }
    }
    // The addresses' ipcache entries (a /32 or /128 of a local endpoint; never a prefix
    // the compiler sent).
    let hosts = found
        .iter()
        .flat_map(endpoint_addresses)
        .chain(addresses.iter().copied());
    let hosts: Vec<IpAddr> = hosts.collect::<BTreeSet<_>>().into_iter().collect();
    for ip in &hosts {
        if let Err(e) = datapath.ipcache_mut().remove(&IpPrefix::host(*ip)) {
            errors.push(e.into());
        }
    }
    // Its connections, before its addresses can go to another pod (this node's ADDs wait
    // for the caller's lock): a reply or verdict cache must not carry over. Its map
    // entries are gone, so its own points make no new ones. The scan of the conntrack map
    // (tens of ms when it is full) runs on a blocking thread while the kernel unregisters
    // the lxc (which waits for RCU grace periods): a DEL pays the longer, not the sum.
    let purge = datapath.conntrack().try_clone().map(|mut conntrack| {
        let hosts = hosts.clone();
        tokio::task::spawn_blocking(move || conntrack.remove_addresses(&hosts))
    });
    if let Some(link) = link
        && let Err(e) = netlink.delete_link(link.index).await
    {
        errors.push(e.into());
    }
    match purge {
        Ok(task) => match task.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => errors.push(e.into()),
            Err(e) => errors.push(ConntrackError::task(&e).into()),
        },
        Err(e) => errors.push(e.into()),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(TeardownError {
            lxc: lxc.to_owned(),
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// The endpoint manager awaits these in tonic handlers, which need Send futures.
    #[test]
    fn endpoint_futures_are_send() {
        fn check(netlink: &crate::netlink::Netlink, datapath: &mut Datapath, spec: &EndpointSpec) {
            assert_send(&create_endpoint(netlink, datapath, spec));
        }
        fn check_delete(netlink: &crate::netlink::Netlink, datapath: &mut Datapath) {
            assert_send(&delete_endpoint(netlink, datapath, "lxc0", None));
        }
        let _ = (check, check_delete);
    }
}
