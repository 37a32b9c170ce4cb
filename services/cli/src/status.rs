//! `kino status`: is every component of the suite up? One grpc.health.v1 check per
//! component (its own API service by name, so a different program on the port shows up),
//! plus the datastore's and the agent's own Status RPCs and the policy-compiler's
//! realization report (latest policy revision vs what the agents enforce).

mod agent_detail;
mod policy_detail;

use std::fmt::Write as _;
use std::time::Duration;

use futures::future::join_all;
use kino_api::datastore::StatusRequest;
use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_service_kit::{ClientTlsArgs, TracedChannel};
use serde::Serialize;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tracing::Instrument;

pub use agent_detail::{
    AgentComponentDetail, AgentDetail, DeviceDetail, describe_agent, render_agent_section,
};
pub use policy_detail::{PolicyDetail, describe_policy};

/// Where each component is reached (flags / env of `kino`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    /// The datastore-gateway.
    pub datastore: String,
    /// The IPAM service.
    pub ipam: String,
    /// The policy-compiler.
    pub policy: String,
    /// The agent's local API: `/path` or `unix:/path`.
    pub agent: String,
    /// The agent's flow observer.
    pub flows: String,
}

/// One component to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// Its name in the output, e.g. `datastore-gateway`.
    pub name: &'static str,
    /// Where it is reached, as a gRPC target.
    pub address: String,
    /// The gRPC service whose health is checked, e.g. `kino.ipam.v1.IpamService`.
    pub service: &'static str,
}

/// The components of the suite in start-up order.
pub fn components(targets: &Targets) -> Vec<Component> {
    vec![
        Component {
            name: "datastore-gateway",
            address: targets.datastore.clone(),
            service: kino_api::datastore::datastore_service_server::SERVICE_NAME,
        },
        Component {
            name: "ipam",
            address: targets.ipam.clone(),
            service: kino_api::ipam::ipam_service_server::SERVICE_NAME,
        },
        Component {
            name: "policy-compiler",
            address: targets.policy.clone(),
            service: kino_api::policy::policy_service_server::SERVICE_NAME,
        },
        Component {
            name: "agent",
            address: unix_target(&targets.agent),
            service: kino_api::agent::agent_service_server::SERVICE_NAME,
        },
        Component {
            name: "flow-observer",
            address: targets.flows.clone(),
            service: kino_api::flow::flow_service_server::SERVICE_NAME,
        },
    ]
}

/// A socket path given without a scheme (`/run/kino/agent.sock`) as a `unix:` target.
fn unix_target(text: &str) -> String {
    if text.starts_with('/') {
        format!("unix:{text}")
    } else {
        text.to_owned()
    }
}

/// What the health check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    /// The service answers and reports SERVING.
    Serving,
    /// The service reports NOT_SERVING (e.g. shutting down).
    NotServing,
    /// The health service answered UNKNOWN.
    Unknown,
    /// Something answers but does not know the service: another program on that address?
    ServiceUnknown,
    /// No connection could be made.
    Unreachable,
    /// No answer within the timeout.
    Timeout,
    /// The check failed otherwise (bad target, TLS, RPC error).
    Error,
}

impl Health {
    /// The word shown in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Serving => "SERVING",
            Health::NotServing => "NOT_SERVING",
            Health::Unknown => "UNKNOWN",
            Health::ServiceUnknown => "SERVICE_UNKNOWN",
            Health::Unreachable => "UNREACHABLE",
            Health::Timeout => "TIMEOUT",
            Health::Error => "ERROR",
        }
    }
}

/// The datastore's own report (its Status RPC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatastoreDetail {
    /// `embedded` or `etcd`.
    pub backend: String,
    /// The embedded file or the etcd endpoints.
    pub location: String,
    /// The current store revision.
    pub revision: i64,
    /// Watches can start at this revision or later.
    pub compact_revision: i64,
    /// Watch fan-out per kind.
    pub watches: Vec<WatchDetail>,
}

/// Client watches of one kind and the backend watches serving them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchDetail {
    /// The kind watched.
    pub kind: String,
    /// Client Watch streams open.
    pub subscribers: i64,
    /// Watches open on the backing store.
    pub backend_watches: i64,
}

/// The status of one component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Its name, e.g. `ipam`.
    pub component: &'static str,
    /// Where it was checked.
    pub address: String,
    /// The gRPC service checked.
    pub service: &'static str,
    /// What the health check found.
    pub health: Health,
    /// One line of detail: the datastore's or agent's report, or why the check failed.
    pub detail: String,
    /// The datastore's report, for the datastore-gateway when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datastore: Option<DatastoreDetail>,
    /// The agent's report, for the agent when its Status RPC answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentDetail>,
    /// The policy realization, for the policy-compiler when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyDetail>,
}

/// The status of the whole suite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// True when every component is SERVING.
    pub healthy: bool,
    /// Each component, in start-up order.
    pub components: Vec<ComponentStatus>,
}

/// Checks every component concurrently, each within `timeout`.
pub async fn probe_all(
    components: &[Component],
    tls: &ClientTlsArgs,
    timeout: Duration,
) -> StatusReport {
    let statuses = join_all(components.iter().map(|component| {
        let span = tracing::info_span!("kino.status.probe", component = component.name);
        probe(component, tls, timeout).instrument(span)
    }))
    .await;
    StatusReport {
        healthy: statuses.iter().all(|s| s.health == Health::Serving),
        components: statuses,
    }
}

/// Checks one component within `timeout`.
pub async fn probe(
    component: &Component,
    tls: &ClientTlsArgs,
    timeout: Duration,
) -> ComponentStatus {
    let mut status = ComponentStatus {
        component: component.name,
        address: component.address.clone(),
        service: component.service,
        health: Health::Error,
        detail: String::new(),
        datastore: None,
        agent: None,
        policy: None,
    };
    let checked = tokio::time::timeout(timeout, async {
        let channel = match kino_service_kit::connect(&component.address, tls).await {
            Ok(channel) => channel,
            // The address is in its own column; keep only why.
            Err(kino_service_kit::ServiceError::Connect { detail, .. }) => {
                return (Health::Unreachable, detail, None);
            }
            Err(error) => return (Health::Error, error.to_string(), None),
        };
        let (health, detail) = check_health(channel.clone(), component.service).await;
        let report = match component.service {
            _ if health != Health::Serving => None,
            kino_api::datastore::datastore_service_server::SERVICE_NAME => {
                Some(Report::Datastore(datastore_status(channel).await))
            }
            kino_api::agent::agent_service_server::SERVICE_NAME => {
                Some(Report::Agent(agent_detail::agent_status(channel).await))
            }
            kino_api::policy::policy_service_server::SERVICE_NAME => {
                Some(Report::Policy(policy_detail::policy_status(channel).await))
            }
            _ => None,
        };
        (health, detail, report)
    })
    .await;
    match checked {
        Ok((health, detail, report)) => {
            status.health = health;
            status.detail = detail;
            match report {
                Some(Report::Datastore(Ok(report))) => {
                    status.detail = describe_datastore(&report);
                    status.datastore = Some(report);
                }
                Some(Report::Agent(Ok(report))) => {
                    status.detail = describe_agent(&report);
                    status.agent = Some(report);
                }
                Some(Report::Policy(Ok(report))) => {
                    status.detail = describe_policy(&report);
                    status.policy = Some(report);
                }
                Some(
                    Report::Datastore(Err(error))
                    | Report::Agent(Err(error))
                    | Report::Policy(Err(error)),
                ) => {
                    status.detail = error;
                }
                None => {}
            }
        }
        Err(_) => {
            status.health = Health::Timeout;
            status.detail = format!(
                "no answer within {:.1}s (raise --timeout if the service is just slow)",
                timeout.as_secs_f64()
            );
        }
    }
    status
}

/// A component's own report, beyond its health.
enum Report {
    Datastore(Result<DatastoreDetail, String>),
    Agent(Result<AgentDetail, String>),
    Policy(Result<PolicyDetail, String>),
}

async fn check_health(channel: TracedChannel, service: &str) -> (Health, String) {
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    match HealthClient::new(channel).check(request).await {
        Ok(response) => match response.into_inner().status() {
            ServingStatus::Serving => (Health::Serving, String::new()),
            ServingStatus::NotServing => (
                Health::NotServing,
                format!("{service} reports NOT_SERVING (shutting down or not ready)"),
            ),
            ServingStatus::Unknown | ServingStatus::ServiceUnknown => {
                (Health::Unknown, format!("{service} reports UNKNOWN health"))
            }
        },
        Err(status) if status.code() == tonic::Code::NotFound => (
            Health::ServiceUnknown,
            format!(
                "the server there does not serve {service}: is another program on this address?"
            ),
        ),
        Err(status) => (
            Health::Error,
            format!(
                "health check failed: {:?}: {}",
                status.code(),
                status.message()
            ),
        ),
    }
}

async fn datastore_status(channel: TracedChannel) -> Result<DatastoreDetail, String> {
    let response = DatastoreServiceClient::new(channel)
        .status(StatusRequest {})
        .await
        .map_err(|status| {
            format!(
                "serving, but its Status RPC failed: {:?}: {}",
                status.code(),
                status.message()
            )
        })?
        .into_inner();
    Ok(DatastoreDetail {
        backend: response.backend,
        location: response.location,
        revision: response.revision,
        compact_revision: response.compact_revision,
        watches: response
            .watches
            .into_iter()
            .map(|w| WatchDetail {
                kind: w.kind,
                subscribers: w.subscribers,
                backend_watches: w.backend_watches,
            })
            .collect(),
    })
}

/// One line: backend, location, revision and watch fan-out.
pub fn describe_datastore(report: &DatastoreDetail) -> String {
    let mut text = format!(
        "{} at {}, revision {}",
        report.backend, report.location, report.revision
    );
    if report.compact_revision > 0 {
        let _ = write!(text, " (compacted at {})", report.compact_revision);
    }
    let open: Vec<String> = report
        .watches
        .iter()
        .filter(|w| w.subscribers > 0 || w.backend_watches > 0)
        .map(|w| {
            format!(
                "{} {} on {}",
                w.kind,
                count(w.subscribers, "client", "clients"),
                count(w.backend_watches, "store watch", "store watches")
            )
        })
        .collect();
    if open.is_empty() {
        text.push_str(", no watches");
    } else {
        let _ = write!(text, ", watches: {}", open.join(", "));
    }
    text
}

fn count(n: i64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl StatusReport {
    /// The human table: COMPONENT, ADDRESS, HEALTH, DETAIL, the agent's report when it gave
    /// one, then a summary line.
    pub fn render_table(&self) -> String {
        let headers = ["COMPONENT", "ADDRESS", "HEALTH", "DETAIL"];
        let rows: Vec<[&str; 4]> = self
            .components
            .iter()
            .map(|c| {
                [
                    c.component,
                    c.address.as_str(),
                    c.health.as_str(),
                    c.detail.as_str(),
                ]
            })
            .collect();
        let width = |column: usize| {
            rows.iter()
                .map(|row| row[column].len())
                .chain([headers[column].len()])
                .max()
                .unwrap_or(0)
        };
        let widths = [width(0), width(1), width(2)];
        let mut out = String::new();
        for row in std::iter::once(headers).chain(rows.iter().copied()) {
            let line = format!(
                "{:w0$}   {:w1$}   {:w2$}   {}",
                row[0],
                row[1],
                row[2],
                row[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
        let latest = self
            .components
            .iter()
            .find_map(|c| c.policy.as_ref())
            .map(|p| p.latest_revision);
        for agent in self.components.iter().filter_map(|c| c.agent.as_ref()) {
            out.push('\n');
            out.push_str(&render_agent_section(agent, latest));
        }
        for policy in self.components.iter().filter_map(|c| c.policy.as_ref()) {
            for behind in &policy.behind {
                let _ = writeln!(out, "behind: {behind}");
            }
        }
        let serving = self
            .components
            .iter()
            .filter(|c| c.health == Health::Serving)
            .count();
        let _ = writeln!(
            out,
            "\n{serving}/{} components SERVING",
            self.components.len()
        );
        out
    }

    /// The same report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(component: &'static str, health: Health, detail: &str) -> ComponentStatus {
        ComponentStatus {
            component,
            address: "127.0.0.1:7402".into(),
            service: "kino.ipam.v1.IpamService",
            health,
            detail: detail.into(),
            datastore: None,
            agent: None,
            policy: None,
        }
    }

    #[test]
    fn agent_socket_paths_become_unix_targets() {
        let targets = Targets {
            datastore: "127.0.0.1:7401".into(),
            ipam: ":7402".into(),
            policy: "127.0.0.1:7403".into(),
            agent: "/run/kino/agent.sock".into(),
            flows: "127.0.0.1:7404".into(),
        };
        let list = components(&targets);
        assert_eq!(list.len(), 5);
        assert_eq!(list[3].address, "unix:/run/kino/agent.sock");
        assert_eq!(list[3].service, "kino.agent.v1.AgentService");
        assert_eq!(unix_target("unix:/x.sock"), "unix:/x.sock");
    }

    #[test]
    fn table_aligns_columns_and_counts() {
        let report = StatusReport {
            healthy: false,
            components: vec![
                status("ipam", Health::Serving, ""),
                status("policy-compiler", Health::Unreachable, "connection refused"),
            ],
        };
        let table = report.render_table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("COMPONENT         "), "{table}");
        let health_column = lines[0].find("HEALTH").expect("header");
        assert_eq!(lines[1].find("SERVING"), Some(health_column), "{table}");
        assert_eq!(lines[2].find("UNREACHABLE"), Some(health_column), "{table}");
        assert!(lines[2].ends_with("connection refused"), "{table}");
        assert!(table.ends_with("1/2 components SERVING\n"), "{table}");
    }

    #[test]
    fn table_shows_the_agent_report_before_the_summary() {
        let mut agent = status("agent", Health::Serving, "");
        let detail = AgentDetail::from(agent_detail::tests::sample_status());
        agent.detail = describe_agent(&detail);
        agent.agent = Some(detail);
        let report = StatusReport {
            healthy: true,
            components: vec![agent],
        };
        let table = report.render_table();
        assert!(
            table.contains("SERVING   node node-1, ready, 2 endpoints, tunnel routing\n"),
            "{table}"
        );
        assert!(
            table.contains("\n\nAgent on node node-1:\n  ready:              yes\n"),
            "{table}"
        );
        assert!(table.ends_with("\n1/1 components SERVING\n"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("JSON");
        assert_eq!(json["components"][0]["agent"]["nodeName"], "node-1");
        assert_eq!(json["components"][0]["agent"]["endpointCount"], 2);
        assert_eq!(
            json["components"][0]["agent"]["devices"][0]["name"],
            "kino_host"
        );
    }

    #[test]
    fn json_has_the_same_content() {
        let report = StatusReport {
            healthy: true,
            components: vec![status("ipam", Health::Serving, "")],
        };
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({"healthy": true, "components": [{
                "component": "ipam", "address": "127.0.0.1:7402",
                "service": "kino.ipam.v1.IpamService", "health": "SERVING", "detail": ""
            }]})
        );
    }

    #[test]
    fn datastore_detail_reads_like_a_sentence() {
        let mut report = DatastoreDetail {
            backend: "etcd".into(),
            location: "http://127.0.0.1:2379".into(),
            revision: 42,
            compact_revision: 0,
            watches: vec![],
        };
        assert_eq!(
            describe_datastore(&report),
            "etcd at http://127.0.0.1:2379, revision 42, no watches"
        );
        report.compact_revision = 7;
        report.watches = vec![
            WatchDetail {
                kind: "Endpoint".into(),
                subscribers: 3,
                backend_watches: 1,
            },
            WatchDetail {
                kind: "Node".into(),
                subscribers: 0,
                backend_watches: 0,
            },
        ];
        assert_eq!(
            describe_datastore(&report),
            "etcd at http://127.0.0.1:2379, revision 42 (compacted at 7), watches: Endpoint 3 clients on 1 store watch"
        );
    }
}
