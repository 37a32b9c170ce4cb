//! The pods' network namespaces for the socket load balancer (issue #14): the socket
//! programs of every node of the machine run for every socket, and each translates only
//! sockets of namespaces its node recorded in `kino_lb_netns`. The manager records a pod's
//! namespace (by its cookie) when it creates or restores the endpoint and forgets it when it
//! deletes it; namespaces of endpoints not restored are forgotten at start-up. A namespace
//! that cannot be recorded (it is gone) is logged: its pod cannot be running.

use kino_api::agent::Endpoint;

use super::{EndpointManager, ipv4_of, ipv6_of};
use crate::datapath::lb::{NetnsMap, NetnsOwner};

impl EndpointManager {
    /// Turns socket load balancing on for this node's pods: their namespaces go into
    /// `netns` from now on (call before [`EndpointManager::restore`]).
    pub fn scope_sockets(&self, netns: NetnsMap) {
        *self.lb_netns.lock().unwrap_or_else(|p| p.into_inner()) = Some(netns);
    }

    /// Records the namespace of `endpoint` (best effort: logged when it fails).
    pub(super) fn record_netns(&self, endpoint: &Endpoint) {
        let mut guard = self.lb_netns.lock().unwrap_or_else(|p| p.into_inner());
        let Some(map) = guard.as_mut() else {
            return;
        };
        let Some(networking) = endpoint.networking.as_ref() else {
            return;
        };
        let Some(ipv4) = ipv4_of(endpoint) else {
            return;
        };
        let path = std::path::Path::new(&networking.netns_path);
        let owner = NetnsOwner::Pod {
            endpoint_id: endpoint.id,
            identity: endpoint.identity,
            ipv4,
            ipv6: ipv6_of(endpoint),
        };
        let recorded = crate::netns::netns_cookie(path)
            .map_err(|e| e.to_string())
            .and_then(|cookie| map.insert(cookie, owner).map_err(|e| e.to_string()));
        if let Err(error) = recorded {
            tracing::warn!(id = endpoint.id, netns = %networking.netns_path, %error, "cannot record the pod's network namespace: its connects to services are not translated");
        }
    }

    /// Forgets the namespaces of endpoint `id`.
    pub(super) fn forget_netns(&self, id: u32) {
        let mut guard = self.lb_netns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(map) = guard.as_mut()
            && let Err(error) = map.remove_endpoint(id)
        {
            tracing::warn!(id, %error, "cannot forget the pod's network namespace");
        }
    }

    /// After a restart: records the adopted endpoints' namespaces and forgets every pod
    /// namespace of an endpoint that was not adopted.
    pub(super) fn record_restored_netns(&self, adopted: &[Endpoint]) {
        let stale: Vec<u32> = {
            let guard = self.lb_netns.lock().unwrap_or_else(|p| p.into_inner());
            let Some(map) = guard.as_ref() else {
                return;
            };
            match map.entries() {
                Ok(entries) => entries
                    .into_iter()
                    .filter_map(|(_, owner)| match owner {
                        NetnsOwner::Pod { endpoint_id, .. }
                            if !adopted.iter().any(|e| e.id == endpoint_id) =>
                        {
                            Some(endpoint_id)
                        }
                        _ => None,
                    })
                    .collect(),
                Err(error) => {
                    tracing::warn!(%error, "cannot list the recorded network namespaces");
                    Vec::new()
                }
            }
        };
        for id in stale {
            self.forget_netns(id);
        }
        for endpoint in adopted {
            self.record_netns(endpoint);
        }
    }
}
