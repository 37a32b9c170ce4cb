//! IPAM's Prometheus metrics: allocations and releases (counted by the gRPC adapter) and —
//! read from the datastore at scrape time, as `PoolStatus` reports it — capacity, allocated
//! addresses and utilisation per pool and per node.

use std::sync::{Arc, LazyLock};

use kino_telemetry::metrics::{counter_vec, gauge_vec, on_scrape};
use prometheus::{CounterVec, GaugeVec};

use crate::Ipam;

/// Counters of the address protocol.
pub(crate) struct AddressCounters {
    /// New allocations (a retried request that finds its address is not counted), by pool and
    /// family.
    pub(crate) allocations: CounterVec,
    /// Addresses released, by pool and family.
    pub(crate) releases: CounterVec,
}

pub(crate) static ADDRESSES: LazyLock<AddressCounters> = LazyLock::new(|| AddressCounters {
    allocations: counter_vec(
        "kino_ipam_allocations_total",
        "Endpoint addresses allocated (retries that find their address are not counted), by pool and family.",
        &["pool", "family"],
    ),
    releases: counter_vec(
        "kino_ipam_releases_total",
        "Endpoint addresses released, by pool and family.",
        &["pool", "family"],
    ),
});

struct UsageGauges {
    pool_capacity: GaugeVec,
    pool_allocated: GaugeVec,
    pool_utilisation: GaugeVec,
    pool_blocks: GaugeVec,
    pool_blocks_allocated: GaugeVec,
    node_capacity: GaugeVec,
    node_allocated: GaugeVec,
    node_utilisation: GaugeVec,
}

impl UsageGauges {
    fn reset(&self) {
        for gauge in [
            &self.pool_capacity,
            &self.pool_allocated,
            &self.pool_utilisation,
            &self.pool_blocks,
            &self.pool_blocks_allocated,
            &self.node_capacity,
            &self.node_allocated,
            &self.node_utilisation,
        ] {
            gauge.reset();
        }
    }
}

static USAGE: LazyLock<UsageGauges> = LazyLock::new(|| UsageGauges {
    pool_capacity: gauge_vec(
        "kino_ipam_pool_capacity_addresses",
        "Addresses the pool's CIDRs can hand out once carved into node blocks, by pool and family.",
        &["pool", "family"],
    ),
    pool_allocated: gauge_vec(
        "kino_ipam_pool_allocated_addresses",
        "Addresses allocated to endpoints, by pool and family.",
        &["pool", "family"],
    ),
    pool_utilisation: gauge_vec(
        "kino_ipam_pool_utilisation_ratio",
        "Allocated / capacity addresses of the pool (0 to 1), by pool and family.",
        &["pool", "family"],
    ),
    pool_blocks: gauge_vec(
        "kino_ipam_pool_node_blocks",
        "Node blocks the pool's CIDRs hold, by pool and family.",
        &["pool", "family"],
    ),
    pool_blocks_allocated: gauge_vec(
        "kino_ipam_pool_node_blocks_allocated",
        "Node blocks given to nodes, by pool and family.",
        &["pool", "family"],
    ),
    node_capacity: gauge_vec(
        "kino_ipam_node_capacity_addresses",
        "Addresses a node's blocks can hand out, by pool, node and family.",
        &["pool", "node", "family"],
    ),
    node_allocated: gauge_vec(
        "kino_ipam_node_allocated_addresses",
        "Addresses allocated on a node, by pool, node and family.",
        &["pool", "node", "family"],
    ),
    node_utilisation: gauge_vec(
        "kino_ipam_node_utilisation_ratio",
        "Allocated / capacity addresses of a node's blocks (0 to 1), by pool, node and family.",
        &["pool", "node", "family"],
    ),
});

fn ratio(allocated: u128, capacity: u128) -> f64 {
    if capacity == 0 {
        0.0
    } else {
        allocated as f64 / capacity as f64
    }
}

/// Reads pool and node utilisation into the gauges before every scrape.
pub fn install(ipam: Arc<Ipam>) {
    LazyLock::force(&ADDRESSES);
    on_scrape(move || {
        let ipam = ipam.clone();
        async move {
            let pools = match ipam.pool_status(None, None, false).await {
                Ok(pools) => pools,
                Err(error) => {
                    // Keep the last values: a datastore hiccup is not "empty pools".
                    tracing::warn!(%error, "reading pool utilisation for metrics");
                    return;
                }
            };
            let usage = &*USAGE;
            usage.reset();
            for pool in &pools {
                for f in &pool.families {
                    let labels = [pool.pool.as_str(), f.family.name()];
                    usage
                        .pool_capacity
                        .with_label_values(&labels)
                        .set(f.size as f64);
                    usage
                        .pool_allocated
                        .with_label_values(&labels)
                        .set(f.allocated as f64);
                    usage
                        .pool_utilisation
                        .with_label_values(&labels)
                        .set(ratio(f.allocated, f.size));
                    usage
                        .pool_blocks
                        .with_label_values(&labels)
                        .set(f.node_blocks_total as f64);
                    usage
                        .pool_blocks_allocated
                        .with_label_values(&labels)
                        .set(f.node_blocks_allocated as f64);
                }
                for n in &pool.nodes {
                    let labels = [pool.pool.as_str(), n.node.as_str(), n.family.name()];
                    usage
                        .node_capacity
                        .with_label_values(&labels)
                        .set(n.size as f64);
                    usage
                        .node_allocated
                        .with_label_values(&labels)
                        .set(n.allocated as f64);
                    usage
                        .node_utilisation
                        .with_label_values(&labels)
                        .set(ratio(n.allocated, n.size));
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::ratio;

    #[test]
    fn ratio_of_an_empty_pool_is_zero() {
        assert_eq!(ratio(0, 0), 0.0);
        assert_eq!(ratio(64, 256), 0.25);
        assert_eq!(ratio(1, u128::MAX), 1.0 / u128::MAX as f64);
    }
}
