//! The `kino.flow.v1` gRPC adapter (the flow observer): validates requests into
//! [`FlowQuery`]s (a malformed filter is `INVALID_ARGUMENT` naming the field and value),
//! streams the observer's flows and lost-event reports as `GetFlowsResponse`s, and reports
//! its status. The logic lives in [`crate::flows`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use kino_api::flow as pb;
use kino_api::flow::flow_service_server::{FlowService, FlowServiceServer};
use kino_api::flow::{
    GetFlowsRequest, GetFlowsResponse, ServerStatusRequest, ServerStatusResponse,
};
use kino_api::types as pbt;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::datapath::Direction;
use crate::datapath::events::{MatchType, ObservationPoint};
use crate::flows::filter::{
    Cidr, FilterError, FlowFilter, FlowSelection, IpVersion, LabelSelector, NamePattern,
    PodPattern, SideFilter,
};
use crate::flows::flow::{Flow, L4, Label, Peer};
use crate::flows::{FlowObserver, FlowQuery, LostSource, Observed};

/// Fully-qualified gRPC service name, for health checks.
pub const SERVICE_NAME: &str = kino_api::flow::flow_service_server::SERVICE_NAME;

/// The stream of flows sent to one `GetFlows` client.
pub type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

/// The `kino.flow.v1.FlowService` implementation.
#[derive(Debug, Clone)]
pub struct FlowGrpc {
    observer: Arc<FlowObserver>,
}

impl FlowGrpc {
    /// The service over an observer.
    pub fn new(observer: Arc<FlowObserver>) -> Self {
        FlowGrpc { observer }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> FlowServiceServer<Self> {
        FlowServiceServer::new(self)
    }
}

fn invalid(e: FilterError) -> Status {
    Status::invalid_argument(format!("filter {e}"))
}

fn side(
    ips: &[String],
    pods: &[String],
    labels: &[String],
    identities: &[u32],
    ports: &[u32],
    which: &'static str,
) -> Result<SideFilter, FilterError> {
    let field = |name: &'static str| -> &'static str {
        match (which, name) {
            ("source", "ip") => "source_ip",
            ("source", "pod") => "source_pod",
            ("source", "label") => "source_label",
            ("source", "port") => "source_port",
            (_, "ip") => "destination_ip",
            (_, "pod") => "destination_pod",
            (_, "label") => "destination_label",
            _ => "destination_port",
        }
    };
    let port_strings: Vec<String> = ports.iter().map(u32::to_string).collect();
    Ok(SideFilter {
        ip: FlowFilter::parse_all(field("ip"), ips, str::parse::<Cidr>)?,
        pod: FlowFilter::parse_all(field("pod"), pods, str::parse::<PodPattern>)?,
        label: FlowFilter::parse_all(field("label"), labels, str::parse::<LabelSelector>)?,
        identity: identities.to_vec(),
        port: FlowFilter::parse_all(field("port"), &port_strings, |p| {
            p.parse::<u16>()
                .map_err(|_| "ports are 0..=65535".to_owned())
        })?,
    })
}

/// Enum values of a repeated field; `UNSPECIFIED` anywhere means "any" (empty list).
fn enum_values<T>(
    field: &'static str,
    values: &[i32],
    convert: impl Fn(i32) -> Option<T>,
) -> Result<Vec<T>, FilterError> {
    if values.contains(&0) {
        return Ok(Vec::new());
    }
    values
        .iter()
        .map(|v| {
            convert(*v).ok_or_else(|| FilterError {
                field,
                value: v.to_string(),
                reason: "not a value of the enum".to_owned(),
            })
        })
        .collect()
}

fn tcp_mask(flags: &pb::TcpFlags) -> u8 {
    [
        flags.fin, flags.syn, flags.rst, flags.psh, flags.ack, flags.urg, flags.ece, flags.cwr,
    ]
    .iter()
    .enumerate()
    .fold(
        0,
        |mask, (bit, set)| if *set { mask | 1 << bit } else { mask },
    )
}

/// A proto filter as the observer's.
pub fn filter_from_proto(f: &pb::FlowFilter) -> Result<FlowFilter, FilterError> {
    let protocol = enum_values("protocol", &f.protocol, |v| {
        pbt::Protocol::try_from(v)
            .ok()
            .and_then(|p| u8::try_from(p as i32).ok())
    })?;
    Ok(FlowFilter {
        source: side(
            &f.source_ip,
            &f.source_pod,
            &f.source_label,
            &f.source_identity,
            &f.source_port,
            "source",
        )?,
        destination: side(
            &f.destination_ip,
            &f.destination_pod,
            &f.destination_label,
            &f.destination_identity,
            &f.destination_port,
            "destination",
        )?,
        protocol,
        verdict: f
            .verdict
            .iter()
            .map(|v| {
                pb::Verdict::try_from(*v).map_err(|_| FilterError {
                    field: "verdict",
                    value: v.to_string(),
                    reason: "not a verdict".into(),
                })
            })
            .collect::<Result<_, _>>()?,
        drop_reason: f
            .drop_reason
            .iter()
            .map(|v| {
                pbt::DropReason::try_from(*v).map_err(|_| FilterError {
                    field: "drop_reason",
                    value: v.to_string(),
                    reason: "not a drop reason".into(),
                })
            })
            .collect::<Result<_, _>>()?,
        direction: enum_values("traffic_direction", &f.traffic_direction, |v| {
            match pbt::Direction::try_from(v).ok()? {
                pbt::Direction::Ingress => Some(Direction::Ingress),
                pbt::Direction::Egress => Some(Direction::Egress),
                pbt::Direction::Unspecified => None,
            }
        })?,
        kind: f
            .event_type
            .iter()
            .map(|v| {
                pb::FlowEventType::try_from(*v).map_err(|_| FilterError {
                    field: "event_type",
                    value: v.to_string(),
                    reason: "not an event type".into(),
                })
            })
            .collect::<Result<_, _>>()?,
        reply: f.reply.clone(),
        tcp_flags: f.tcp_flags.iter().map(tcp_mask).collect(),
        node_name: f.node_name.iter().map(|n| NamePattern::new(n)).collect(),
        ip_version: enum_values(
            "ip_version",
            &f.ip_version,
            |v| match pbt::IpFamily::try_from(v).ok()? {
                pbt::IpFamily::Ipv4 => Some(IpVersion::V4),
                pbt::IpFamily::Ipv6 => Some(IpVersion::V6),
                pbt::IpFamily::Unspecified => None,
            },
        )?,
    })
}

fn time_from_proto(ts: &prost_types::Timestamp, field: &str) -> Result<SystemTime, Status> {
    SystemTime::try_from(*ts).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// A `GetFlows` request as an observer query.
pub fn query_from_proto(request: &GetFlowsRequest) -> Result<FlowQuery, Status> {
    if request.first && request.follow {
        return Err(Status::invalid_argument(
            "first takes the oldest flows of the ring; it cannot be combined with follow",
        ));
    }
    if request.number != 0 && (request.since.is_some() || request.until.is_some()) {
        return Err(Status::invalid_argument(
            "number cannot be combined with since/until: give either a count or a time window",
        ));
    }
    let filters = |list: &[pb::FlowFilter]| {
        list.iter()
            .map(filter_from_proto)
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)
    };
    Ok(FlowQuery {
        number: request.number,
        first: request.first,
        follow: request.follow,
        selection: FlowSelection {
            whitelist: filters(&request.whitelist)?,
            blacklist: filters(&request.blacklist)?,
            since: request
                .since
                .as_ref()
                .map(|t| time_from_proto(t, "since"))
                .transpose()?,
            until: request
                .until
                .as_ref()
                .map(|t| time_from_proto(t, "until"))
                .transpose()?,
        },
    })
}

fn labels_to_proto(labels: &[Label]) -> pbt::Labels {
    pbt::Labels {
        labels: labels
            .iter()
            .map(|l| pbt::Label {
                key: l.key.clone(),
                value: l.value.clone(),
                source: l.source.clone(),
            })
            .collect(),
    }
}

fn peer_to_proto(peer: &Peer) -> pb::Endpoint {
    pb::Endpoint {
        id: peer.endpoint_id,
        identity: peer.identity,
        namespace: peer.namespace.clone(),
        pod_name: peer.pod_name.clone(),
        labels: peer.labels.as_deref().map(labels_to_proto),
        node_name: peer.node_name.clone(),
    }
}

fn l4_to_proto(l4: &L4) -> pb::Layer4 {
    use pb::layer4::Protocol;
    let protocol = match *l4 {
        L4::Tcp {
            src_port,
            dst_port,
            flags,
        } => {
            let bit = |b: u8| flags & (1 << b) != 0;
            Protocol::Tcp(pb::Tcp {
                source_port: src_port.into(),
                destination_port: dst_port.into(),
                flags: Some(pb::TcpFlags {
                    fin: bit(0),
                    syn: bit(1),
                    rst: bit(2),
                    psh: bit(3),
                    ack: bit(4),
                    urg: bit(5),
                    ece: bit(6),
                    cwr: bit(7),
                }),
            })
        }
        L4::Udp { src_port, dst_port } => Protocol::Udp(pb::Udp {
            source_port: src_port.into(),
            destination_port: dst_port.into(),
        }),
        L4::Sctp { src_port, dst_port } => Protocol::Sctp(pb::Sctp {
            source_port: src_port.into(),
            destination_port: dst_port.into(),
        }),
        L4::Icmpv4 { icmp_type, code } => Protocol::Icmpv4(pb::Icmpv4 {
            r#type: icmp_type.into(),
            code: code.into(),
        }),
        L4::Icmpv6 { icmp_type, code } => Protocol::Icmpv6(pb::Icmpv6 {
            r#type: icmp_type.into(),
            code: code.into(),
        }),
    };
    pb::Layer4 {
        protocol: Some(protocol),
    }
}

fn direction_to_proto(direction: Option<Direction>) -> pbt::Direction {
    match direction {
        Some(Direction::Ingress) => pbt::Direction::Ingress,
        Some(Direction::Egress) => pbt::Direction::Egress,
        None => pbt::Direction::Unspecified,
    }
}

fn match_to_proto(match_type: MatchType) -> pb::PolicyMatchType {
    match match_type {
        MatchType::None => pb::PolicyMatchType::Unspecified,
        MatchType::L3L4 => pb::PolicyMatchType::L3L4,
        MatchType::L3Only => pb::PolicyMatchType::L3Only,
        MatchType::L4Only => pb::PolicyMatchType::L4Only,
        MatchType::All => pb::PolicyMatchType::All,
        MatchType::NotEnforced => pb::PolicyMatchType::NotEnforced,
    }
}

/// A flow as the API's.
pub fn flow_to_proto(flow: &Flow) -> pb::Flow {
    pb::Flow {
        time: Some(flow.time.into()),
        verdict: flow.api_verdict() as i32,
        drop_reason: flow.api_drop_reason() as i32,
        ethernet: flow.ethernet.map(|(src, dst)| pb::Ethernet {
            source: src.to_string(),
            destination: dst.to_string(),
        }),
        ip: flow.ip.map(|(src, dst)| pb::Ip {
            source: src.to_string(),
            destination: dst.to_string(),
            ip_version: if src.is_ipv4() {
                pbt::IpFamily::Ipv4
            } else {
                pbt::IpFamily::Ipv6
            } as i32,
        }),
        l4: flow.l4.as_ref().map(l4_to_proto),
        source: Some(peer_to_proto(&flow.source)),
        destination: Some(peer_to_proto(&flow.destination)),
        event_type: flow.api_event_type() as i32,
        node_name: flow.node_name.to_string(),
        traffic_direction: direction_to_proto(flow.direction) as i32,
        interface: flow.interface.as_ref().map(|i| pb::NetworkInterface {
            index: i.index,
            name: i.name.clone(),
        }),
        is_reply: flow.is_reply,
        trace_observation_point: match flow.point {
            Some(ObservationPoint::FromEndpoint) => pb::TraceObservationPoint::FromEndpoint,
            Some(ObservationPoint::ToEndpoint) => pb::TraceObservationPoint::ToEndpoint,
            Some(ObservationPoint::Socket) => pb::TraceObservationPoint::Socket,
            None => pb::TraceObservationPoint::Unspecified,
        } as i32,
        policy_match_type: match_to_proto(flow.match_type) as i32,
        service: flow.service.map(|t| pb::ServiceTranslation {
            frontend_id: t.frontend_id,
            backend_address: t.backend.to_string(),
            backend_port: u32::from(t.backend_port),
            ..Default::default()
        }),
    }
}

fn lost_source_to_proto(source: LostSource) -> pb::LostEventSource {
    match source {
        LostSource::DatapathRing => pb::LostEventSource::BpfRingBuffer,
        LostSource::ObserverQueue => pb::LostEventSource::ObserverQueue,
        LostSource::FlowRing => pb::LostEventSource::FlowRing,
    }
}

/// One item of the observer's stream as a `GetFlowsResponse`.
pub fn response_to_proto(observed: &Observed, node: &str) -> GetFlowsResponse {
    match observed {
        Observed::Flow(flow) => GetFlowsResponse {
            event: Some(pb::get_flows_response::Event::Flow(flow_to_proto(flow))),
            node_name: node.to_owned(),
            time: Some(flow.time.into()),
        },
        Observed::Lost { source, count } => GetFlowsResponse {
            event: Some(pb::get_flows_response::Event::LostEvents(pb::LostEvent {
                source: lost_source_to_proto(*source) as i32,
                num_events_lost: *count,
            })),
            node_name: node.to_owned(),
            time: Some(SystemTime::now().into()),
        },
    }
}

#[tonic::async_trait]
impl FlowService for FlowGrpc {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let query = query_from_proto(request.get_ref())?;
        tracing::debug!(follow = query.follow, number = query.number, "GetFlows");
        let node = self.observer.node().clone();
        let stream = self
            .observer
            .query(query)
            .map(move |observed| Ok(response_to_proto(&observed, &node)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let status = self.observer.status();
        let lost_by_source: Vec<pb::LostEventCounter> = status
            .lost
            .iter()
            .map(|(source, count)| pb::LostEventCounter {
                source: lost_source_to_proto(*source) as i32,
                count: *count,
            })
            .collect();
        Ok(Response::new(ServerStatusResponse {
            num_flows: status.num_flows,
            max_flows: status.max_flows,
            seen_flows: status.seen_flows,
            lost_events: lost_by_source.iter().map(|c| c.count).sum(),
            lost_by_source,
            uptime: prost_types::Duration::try_from(status.uptime).ok(),
            node_name: status.node_name.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            evicted_flows: status.evicted_flows,
            datapath_events: status.datapath_events,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::DropReason;
    use crate::datapath::events::{EventKind, EventVerdict};
    use crate::netlink::MacAddr;

    fn flow() -> Flow {
        Flow {
            time: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            verdict: EventVerdict::Dropped,
            drop_reason: Some(DropReason::PolicyDeniedIngress),
            kind: EventKind::Drop,
            ethernet: Some((MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2]))),
            ip: Some((
                "10.244.0.10".parse().unwrap(),
                "10.244.0.11".parse().unwrap(),
            )),
            l4: Some(L4::Tcp {
                src_port: 43512,
                dst_port: 80,
                flags: 0x12,
            }),
            source: Peer {
                endpoint_id: 100,
                identity: 300,
                namespace: "shop".into(),
                pod_name: "client".into(),
                labels: Some(Arc::from(vec![Label::new("container", "app", "client")])),
                node_name: "n1".into(),
            },
            destination: Peer {
                endpoint_id: 101,
                identity: 301,
                namespace: "shop".into(),
                pod_name: "web".into(),
                labels: None,
                node_name: "n1".into(),
            },
            node_name: Arc::from("n1"),
            direction: Some(Direction::Ingress),
            interface: None,
            is_reply: Some(false),
            point: Some(ObservationPoint::FromEndpoint),
            match_type: MatchType::None,
            service: None,
        }
    }

    #[test]
    fn flows_convert_with_every_field() {
        let pb = flow_to_proto(&flow());
        assert_eq!(pb.verdict, pb::Verdict::Dropped as i32);
        assert_eq!(pb.drop_reason, pbt::DropReason::PolicyDenied as i32);
        assert_eq!(pb.traffic_direction, pbt::Direction::Ingress as i32);
        assert_eq!(pb.event_type, pb::FlowEventType::Drop as i32);
        let ip = pb.ip.unwrap();
        assert_eq!(
            (ip.source.as_str(), ip.destination.as_str()),
            ("10.244.0.10", "10.244.0.11")
        );
        let Some(pb::layer4::Protocol::Tcp(tcp)) = pb.l4.unwrap().protocol else {
            panic!("not TCP");
        };
        assert_eq!((tcp.source_port, tcp.destination_port), (43512, 80));
        let flags = tcp.flags.unwrap();
        assert!(flags.syn && flags.ack && !flags.fin);
        let src = pb.source.unwrap();
        assert_eq!(
            (src.namespace.as_str(), src.pod_name.as_str(), src.identity),
            ("shop", "client", 300)
        );
        assert_eq!(src.labels.unwrap().labels[0].key, "app");
        assert_eq!(pb.is_reply, Some(false));
        assert_eq!(pb.ethernet.unwrap().source, "02:00:00:00:00:01");
        assert_eq!(pb.time.unwrap().nanos, 123_000_000);
    }

    #[test]
    fn filters_convert_and_bad_values_are_invalid_arguments() {
        let f = filter_from_proto(&pb::FlowFilter {
            source_pod: vec!["shop/client".into()],
            destination_ip: vec!["10.244.0.0/24".into()],
            destination_port: vec![80],
            protocol: vec![pbt::Protocol::Tcp as i32],
            verdict: vec![pb::Verdict::Dropped as i32],
            drop_reason: vec![pbt::DropReason::PolicyDenied as i32],
            traffic_direction: vec![pbt::Direction::Ingress as i32],
            tcp_flags: vec![pb::TcpFlags {
                syn: true,
                ..Default::default()
            }],
            ..Default::default()
        })
        .expect("valid");
        assert!(f.matches(&flow()));
        assert_eq!(f.tcp_flags, [0x02]);
        let any_protocol = filter_from_proto(&pb::FlowFilter {
            protocol: vec![pbt::Protocol::Udp as i32, 0],
            ..Default::default()
        })
        .unwrap();
        assert!(any_protocol.protocol.is_empty(), "UNSPECIFIED means any");
        for (bad, field) in [
            (
                pb::FlowFilter {
                    source_ip: vec!["web".into()],
                    ..Default::default()
                },
                "source_ip",
            ),
            (
                pb::FlowFilter {
                    destination_port: vec![70000],
                    ..Default::default()
                },
                "destination_port",
            ),
            (
                pb::FlowFilter {
                    source_label: vec!["a b=c".into()],
                    ..Default::default()
                },
                "source_label",
            ),
            (
                pb::FlowFilter {
                    drop_reason: vec![4242],
                    ..Default::default()
                },
                "drop_reason",
            ),
        ] {
            let error = filter_from_proto(&bad).expect_err(field);
            assert_eq!(error.field, field);
            let status = invalid(error);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(field), "{}", status.message());
        }
    }

    #[test]
    fn contradictory_requests_are_refused() {
        let first_follow = GetFlowsRequest {
            first: true,
            follow: true,
            ..Default::default()
        };
        assert_eq!(
            query_from_proto(&first_follow).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let number_since = GetFlowsRequest {
            number: 3,
            since: Some(SystemTime::now().into()),
            ..Default::default()
        };
        assert_eq!(
            query_from_proto(&number_since).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[tokio::test]
    async fn get_flows_and_status_answer_from_the_observer() {
        let observer = Arc::new(FlowObserver::new("n1", 16, 16));
        observer.publish(flow());
        observer.report_lost(LostSource::DatapathRing, 3);
        let service = FlowGrpc::new(observer.clone());
        let request = GetFlowsRequest {
            whitelist: vec![pb::FlowFilter {
                destination_pod: vec!["shop/web".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let stream = service
            .get_flows(Request::new(request))
            .await
            .expect("stream")
            .into_inner();
        let responses: Vec<_> = stream.collect().await;
        assert_eq!(responses.len(), 1);
        let response = responses[0].as_ref().expect("ok");
        assert_eq!(response.node_name, "n1");
        assert!(matches!(
            response.event,
            Some(pb::get_flows_response::Event::Flow(_))
        ));
        let status = service
            .server_status(Request::new(ServerStatusRequest {}))
            .await
            .expect("status")
            .into_inner();
        assert_eq!(
            (status.num_flows, status.max_flows, status.seen_flows),
            (1, 16, 1)
        );
        assert_eq!(status.lost_events, 3);
        assert!(status.lost_by_source.contains(&pb::LostEventCounter {
            source: pb::LostEventSource::BpfRingBuffer as i32,
            count: 3
        }));
    }
}
