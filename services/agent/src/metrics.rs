//! The agent's Prometheus metrics, all read at scrape time from state the agent keeps anyway:
//! endpoints by state and their policy-map entries (the endpoint manager), packets and drops
//! by reason (the datapath's per-endpoint per-CPU counters map, `kino_metrics`), and flows
//! seen and lost (the flow observer's counters, through [`FlowStats`]).

use std::sync::{Arc, LazyLock};

use kino_api::agent::{Endpoint, EndpointState};
use kino_api::types::{Direction, DropReason};
use kino_telemetry::metrics::{ScrapedCounterVec, gauge_vec, on_scrape, scraped_counter_vec};
use prometheus::GaugeVec;

use crate::endpoint::manager::EndpointManager;
use crate::flows::{FlowCounters, LostSource};

/// Flow observer totals, as the metrics read them.
pub trait FlowStats: Send + Sync {
    /// Flows observed since start.
    fn flows_seen(&self) -> u64;
    /// Events lost since start, by where they were lost.
    fn flows_lost(&self) -> Vec<(&'static str, u64)>;
}

impl FlowStats for FlowCounters {
    fn flows_seen(&self) -> u64 {
        FlowCounters::flows_seen(self)
    }

    fn flows_lost(&self) -> Vec<(&'static str, u64)> {
        [
            (LostSource::DatapathRing, "datapath_ring"),
            (LostSource::ObserverQueue, "observer_queue"),
            (LostSource::FlowRing, "flow_ring"),
        ]
        .into_iter()
        .map(|(source, name)| (name, self.lost(source)))
        .collect()
    }
}

struct AgentMetrics {
    endpoints: GaugeVec,
    policy_entries: GaugeVec,
    packets: ScrapedCounterVec,
    bytes: ScrapedCounterVec,
    drops: ScrapedCounterVec,
    flows_seen: ScrapedCounterVec,
    flows_lost: ScrapedCounterVec,
}

static METRICS: LazyLock<AgentMetrics> = LazyLock::new(|| AgentMetrics {
    endpoints: gauge_vec(
        "kino_agent_endpoints",
        "Endpoints on this node, by state (ready, not_ready, regenerating, …).",
        &["state"],
    ),
    policy_entries: gauge_vec(
        "kino_agent_policy_map_entries",
        "Entries in an endpoint's BPF policy map, by endpoint id and direction.",
        &["endpoint_id", "direction"],
    ),
    packets: scraped_counter_vec(
        "kino_agent_forwarded_packets_total",
        "Packets the datapath forwarded for this node's endpoints (egress: sent by a pod; ingress: delivered to one), summed over endpoints.",
        &["direction"],
    ),
    bytes: scraped_counter_vec(
        "kino_agent_forwarded_bytes_total",
        "Bytes the datapath forwarded for this node's endpoints, summed over endpoints.",
        &["direction"],
    ),
    drops: scraped_counter_vec(
        "kino_agent_drops_total",
        "Packets the datapath dropped for this node's endpoints, by reason and direction (from the per-endpoint counters map; an endpoint's counts go when it is deleted).",
        &["reason", "direction"],
    ),
    flows_seen: scraped_counter_vec(
        "kino_agent_flows_seen_total",
        "Flows the flow observer recorded since the agent started.",
        &[],
    ),
    flows_lost: scraped_counter_vec(
        "kino_agent_flows_lost_total",
        "Flow events lost since the agent started, by where (datapath_ring: the BPF ring buffer was full; observer_queue: undecodable; flow_ring: a following client read too slowly).",
        &["source"],
    ),
});

/// Label value of an enum name without its `PREFIX_`, in lower case (`ENDPOINT_STATE_READY`
/// → `ready`).
fn label(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

fn record_endpoints(metrics: &AgentMetrics, endpoints: &[Endpoint]) {
    metrics.endpoints.reset();
    metrics.policy_entries.reset();
    metrics.packets.reset();
    metrics.bytes.reset();
    metrics.drops.reset();
    // Every state is present, so a dashboard sees 0 rather than no series.
    for state in [
        EndpointState::WaitingForIdentity,
        EndpointState::NotReady,
        EndpointState::Regenerating,
        EndpointState::Restoring,
        EndpointState::Ready,
        EndpointState::Disconnecting,
        EndpointState::Invalid,
    ] {
        metrics
            .endpoints
            .with_label_values(&[&label(state.as_str_name(), "ENDPOINT_STATE_")])
            .set(0.0);
    }
    let (mut packets, mut bytes) = ([0u64; 2], [0u64; 2]);
    let mut drops: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for endpoint in endpoints {
        let state = EndpointState::try_from(endpoint.state).unwrap_or_default();
        metrics
            .endpoints
            .with_label_values(&[&label(state.as_str_name(), "ENDPOINT_STATE_")])
            .inc();
        let id = endpoint.id.to_string();
        if let Some(policy) = &endpoint.policy {
            for (direction, entries) in [
                ("ingress", policy.ingress_entries),
                ("egress", policy.egress_entries),
            ] {
                metrics
                    .policy_entries
                    .with_label_values(&[id.as_str(), direction])
                    .set(f64::from(entries));
            }
        }
        if let Some(counters) = &endpoint.counters {
            packets[0] += counters.ingress_packets;
            packets[1] += counters.egress_packets;
            bytes[0] += counters.ingress_bytes;
            bytes[1] += counters.egress_bytes;
            for drop in &counters.drops {
                let reason = DropReason::try_from(drop.reason).unwrap_or_default();
                let direction = Direction::try_from(drop.direction).unwrap_or_default();
                *drops
                    .entry((
                        label(reason.as_str_name(), "DROP_REASON_"),
                        label(direction.as_str_name(), "DIRECTION_"),
                    ))
                    .or_default() += drop.packets;
            }
        }
    }
    for (i, direction) in ["ingress", "egress"].into_iter().enumerate() {
        metrics.packets.set(&[direction], packets[i] as f64);
        metrics.bytes.set(&[direction], bytes[i] as f64);
    }
    for ((reason, direction), count) in drops {
        metrics.drops.set(&[&reason, &direction], count as f64);
    }
}

fn record_flows(metrics: &AgentMetrics, flows: &dyn FlowStats) {
    metrics.flows_seen.set(&[], flows.flows_seen() as f64);
    for (source, lost) in flows.flows_lost() {
        metrics.flows_lost.set(&[source], lost as f64);
    }
}

/// Reads the endpoints (with their datapath counters) and the flow observer's counters into
/// the metrics before every scrape.
pub fn install(manager: Arc<EndpointManager>, flows: Arc<dyn FlowStats>) {
    on_scrape(move || {
        let (manager, flows) = (manager.clone(), flows.clone());
        async move {
            let endpoints = manager.list().await;
            record_endpoints(&METRICS, &endpoints);
            record_flows(&METRICS, flows.as_ref());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use kino_api::agent::{DropCounter, EndpointCounters, EndpointPolicyStatus};

    struct FixedFlows;

    impl FlowStats for FixedFlows {
        fn flows_seen(&self) -> u64 {
            42
        }

        fn flows_lost(&self) -> Vec<(&'static str, u64)> {
            vec![("datapath_ring", 3)]
        }
    }

    #[tokio::test]
    async fn endpoints_drops_and_flows_are_rendered() {
        let endpoint = |id: u32, state: EndpointState, drops: Vec<DropCounter>| Endpoint {
            id,
            state: state as i32,
            policy: Some(EndpointPolicyStatus {
                ingress_entries: 2,
                egress_entries: 1,
                ..Default::default()
            }),
            counters: Some(EndpointCounters {
                ingress_packets: 10,
                ingress_bytes: 1000,
                egress_packets: 5,
                egress_bytes: 500,
                drops,
            }),
            ..Default::default()
        };
        let denied = |packets| DropCounter {
            reason: DropReason::PolicyDenied as i32,
            direction: Direction::Ingress as i32,
            packets,
            bytes: 0,
        };
        record_endpoints(
            &METRICS,
            &[
                endpoint(7, EndpointState::Ready, vec![denied(4)]),
                endpoint(8, EndpointState::Ready, vec![denied(1)]),
                endpoint(9, EndpointState::NotReady, vec![]),
            ],
        );
        record_flows(&METRICS, &FixedFlows);
        let text = kino_telemetry::metrics::render().await;
        for expected in [
            "kino_agent_endpoints{state=\"ready\"} 2",
            "kino_agent_endpoints{state=\"not_ready\"} 1",
            "kino_agent_endpoints{state=\"restoring\"} 0",
            "kino_agent_policy_map_entries{direction=\"ingress\",endpoint_id=\"7\"} 2",
            "kino_agent_forwarded_packets_total{direction=\"ingress\"} 30",
            "kino_agent_drops_total{direction=\"ingress\",reason=\"policy_denied\"} 5",
            "# TYPE kino_agent_drops_total counter",
            "kino_agent_flows_seen_total 42",
            "kino_agent_flows_lost_total{source=\"datapath_ring\"} 3",
        ] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
    }
}
