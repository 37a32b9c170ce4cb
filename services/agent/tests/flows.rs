//! Kernel tests of flow events (issue #6): the real eBPF programs report drops and new
//! connections to the `kino_events` ring buffer; the agent's flow observer (reader, enricher,
//! ring, filters, gRPC adapter) turns them into flows with both pods named. A tiny ring
//! shows lost events being counted, never silently skipped.
//!
//! Needs root, bpffs, `ip` and `ping`. Outside CI it skips loudly without them; under
//! `CI=true` it fails instead. Namespaces, links and pins are removed by guards, also when an
//! assertion fails.

mod support;

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use kino_agent::datapath::events::{EventKind, EventVerdict, MatchType};
use kino_agent::datapath::loader::DEFAULT_PIN_ROOT;
use kino_agent::datapath::{
    Datapath, Direction, Enforcement, EntryChange, MapCapacities, PolicyKey, PolicyUpdate, Verdict,
};
use kino_agent::devices::{NodeDevicesConfig, ensure_node_devices};
use kino_agent::endpoint::create_endpoint;
use kino_agent::flows::filter::{FlowFilter, FlowSelection, SideFilter};
use kino_agent::flows::flow::{L4, Label};
use kino_agent::flows::{
    Directory, EndpointInfo, Flow, FlowObserver, FlowQuery, LostSource, Observed,
};
use kino_agent::grpc::flow::FlowGrpc;
use kino_agent::netlink::Netlink;
use kino_api::flow::flow_service_server::FlowService;
use kino_api::types::DropReason as ApiDropReason;
use support::{GATEWAY, Pod, World, in_netns, in_node, kernel_tests_possible, run_ok};

/// Identities of the pods.
const CLIENT: u32 = 300;
const WEB: u32 = 301;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// The test's directory: the pods as the endpoint manager would list them.
struct Pods(Vec<EndpointInfo>);

impl Directory for Pods {
    fn endpoints(&self) -> BoxFuture<'_, Result<Vec<EndpointInfo>, String>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }

    fn identity_of(&self, _ip: IpAddr) -> Option<u32> {
        None
    }

    fn identity_labels(&self, _identity: u32) -> BoxFuture<'_, Option<Vec<Label>>> {
        Box::pin(async { None })
    }
}

fn info(pod: &Pod, name: &str) -> EndpointInfo {
    EndpointInfo {
        id: pod.id,
        identity: pod.identity,
        namespace: "shop".into(),
        pod_name: name.into(),
        labels: vec![
            Label::new("container", "app", name),
            Label::new("container", "namespace", "shop"),
        ],
        ips: vec![pod.ip.into()],
        lxc_ifindex: 0,
        lxc_name: String::new(),
    }
}

/// Node devices, the datapath (with an event ring of `ring_bytes`) and the pods' endpoints.
async fn node(node_name: &str, pods: &[Pod], ring_bytes: u32) -> (Netlink, Datapath) {
    let netlink = Netlink::connect().expect("netlink in the node");
    ensure_node_devices(
        &netlink,
        &NodeDevicesConfig {
            gateway: GATEWAY,
            pod_cidr: Some("10.244.0.0/24".parse().expect("cidr")),
        },
    )
    .await
    .expect("node devices");
    let capacities = MapCapacities {
        events: ring_bytes,
        ..MapCapacities::default()
    };
    let mut datapath = Datapath::load_with(Path::new(DEFAULT_PIN_ROOT), node_name, capacities)
        .expect("loading the datapath");
    for pod in pods {
        create_endpoint(&netlink, &mut datapath, &pod.spec())
            .await
            .unwrap_or_else(|e| panic!("creating endpoint {}: {e}", pod.id));
    }
    (netlink, datapath)
}

/// Web's ingress: enforced, TCP 8080 from the client only.
fn web_policy(datapath: &mut Datapath, web: &Pod) {
    let update = PolicyUpdate {
        enforcement: Enforcement {
            ingress: true,
            egress: false,
        },
        revision: 1,
        entries: EntryChange::Replace(
            [(
                PolicyKey::port(Direction::Ingress, CLIENT, TCP, 8080),
                Verdict::Allow,
            )]
            .into_iter()
            .collect(),
        ),
    };
    datapath
        .policy_mut()
        .apply(web.id, &update)
        .expect("web's policy");
}

/// The observer's flows (the whole ring) matching `selection`.
async fn flows(observer: &FlowObserver, selection: &FlowSelection) -> Vec<Arc<Flow>> {
    observer
        .query(FlowQuery {
            selection: selection.clone(),
            ..FlowQuery::default()
        })
        .filter_map(|o| async move {
            match o {
                Observed::Flow(f) => Some(f),
                Observed::Lost { .. } => None,
            }
        })
        .collect()
        .await
}

/// Waits (letting the reader run) until `check` holds on the flows of `selection`.
async fn eventually(
    observer: &FlowObserver,
    what: &str,
    selection: &FlowSelection,
    check: impl Fn(&[Arc<Flow>]) -> bool,
) -> Vec<Arc<Flow>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = flows(observer, selection).await;
        if check(&found) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen in 5 s; the ring holds {:#?}",
            flows(observer, &FlowSelection::default()).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn only(filter: FlowFilter) -> FlowSelection {
    FlowSelection {
        whitelist: vec![filter],
        ..FlowSelection::default()
    }
}

fn dst_port(flow: &Flow) -> Option<u16> {
    flow.l4.and_then(|l4| l4.ports()).map(|p| p.1)
}

#[test]
fn policy_drops_and_new_connections_become_flows_with_both_pods() {
    if !kernel_tests_possible("policy_drops_and_new_connections_become_flows_with_both_pods") {
        return;
    }
    let world = World::new();
    let node_ns = world.netns("node");
    let ns = [world.netns("client"), world.netns("web")];
    let _pins = world.pins();
    let pods = [
        Pod::new(&world, &ns[0], 0, CLIENT),
        Pod::new(&world, &ns[1], 1, WEB),
    ];
    let node_name = world.node.clone();
    in_node(&node_ns, move || async move {
        let (_netlink, mut datapath) = node(
            &node_name,
            &pods,
            kino_agent::datapath::events::EVENTS_RING_BYTES,
        )
        .await;
        let (client, web) = (&pods[0], &pods[1]);
        let observer = Arc::new(FlowObserver::new(&node_name, 1000, 1000));
        let directory = Arc::new(Pods(vec![info(client, "client"), info(web, "web")]));
        kino_agent::flows::start(observer.clone(), datapath.pin_dir(), directory)
            .expect("starting the observer");
        web_policy(&mut datapath, web);
        let _server = web.serve(&[80, 8080]);

        // Denied: TCP to web:80 (no entry: default deny at web's ingress), and a ping.
        assert!(client.tcp_dropped(web.ip, 80), "web:80 must be denied");
        assert!(client.ping_dropped(web.ip), "the ping must be denied");
        let denied = only(FlowFilter {
            verdict: vec![kino_api::flow::Verdict::Dropped],
            drop_reason: vec![ApiDropReason::PolicyDenied],
            ..FlowFilter::default()
        });
        let drops = eventually(&observer, "the TCP and ICMP drops", &denied, |f| {
            f.iter().any(|f| dst_port(f) == Some(80))
                && f.iter()
                    .any(|f| matches!(f.l4, Some(L4::Icmpv4 { icmp_type: 8, .. })))
        })
        .await;
        let syn = drops
            .iter()
            .find(|f| dst_port(f) == Some(80))
            .expect("the SYN to 80");
        assert_eq!(syn.kind, EventKind::Drop);
        assert_eq!(syn.verdict, EventVerdict::Dropped);
        assert_eq!(syn.api_drop_reason(), ApiDropReason::PolicyDenied);
        assert_eq!(syn.direction, Some(Direction::Ingress), "web's ingress");
        assert_eq!(syn.match_type, MatchType::None, "default deny");
        assert_eq!(syn.ip, Some((client.ip.into(), web.ip.into())));
        let Some(L4::Tcp {
            flags, src_port, ..
        }) = syn.l4
        else {
            panic!("not TCP: {syn:?}");
        };
        assert_eq!(flags & 0x12, 0x02, "a bare SYN");
        assert!(src_port >= 1024, "the client's ephemeral port: {src_port}");
        assert_eq!(
            (syn.source.namespace.as_str(), syn.source.pod_name.as_str()),
            ("shop", "client")
        );
        assert_eq!(
            (
                syn.destination.namespace.as_str(),
                syn.destination.pod_name.as_str()
            ),
            ("shop", "web")
        );
        assert_eq!(
            (syn.source.identity, syn.destination.identity),
            (CLIENT, WEB)
        );
        assert_eq!(
            (syn.source.endpoint_id, syn.destination.endpoint_id),
            (client.id, web.id)
        );
        assert_eq!(syn.is_reply, Some(false));
        assert_eq!(&*syn.node_name, node_name.as_str());
        let ethernet = syn.ethernet.expect("MACs");
        assert_ne!(ethernet.0.to_string(), "00:00:00:00:00:00");

        // Allowed: one connection to 8080 exchanging data: one verdict per enforcement
        // point (client's egress, not enforced; web's ingress, by its L3-L4 entry), nothing
        // for its other packets nor for the replies.
        let allowed_port = |f: &Flow| dst_port(f) == Some(8080);
        assert!(client.tcp(web.ip, 8080), "web:8080 must be allowed");
        let forwarded = only(FlowFilter {
            verdict: vec![kino_api::flow::Verdict::Forwarded],
            destination: SideFilter {
                port: vec![8080],
                ..SideFilter::default()
            },
            ..FlowFilter::default()
        });
        let verdicts = eventually(
            &observer,
            "the verdicts of the allowed connection",
            &forwarded,
            |f| f.len() >= 2,
        )
        .await;
        // Give the reader time to see anything else the connection might have produced.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let all_8080: Vec<Arc<Flow>> = flows(&observer, &FlowSelection::default())
            .await
            .into_iter()
            .filter(|f| allowed_port(f) || f.l4.and_then(|l| l.ports()).map(|p| p.0) == Some(8080))
            .collect();
        assert_eq!(
            all_8080.len(),
            2,
            "exactly one verdict per point for the whole connection: {all_8080:#?}"
        );
        let egress = verdicts
            .iter()
            .find(|f| f.direction == Some(Direction::Egress))
            .expect("the client's egress verdict");
        let ingress = verdicts
            .iter()
            .find(|f| f.direction == Some(Direction::Ingress))
            .expect("web's ingress verdict");
        for f in [egress, ingress] {
            assert_eq!(f.kind, EventKind::PolicyVerdict);
            assert_eq!(f.drop_reason, None);
            assert_eq!(f.source.pod_name, "client");
            assert_eq!(f.destination.pod_name, "web");
        }
        assert_eq!(egress.match_type, MatchType::NotEnforced);
        assert_eq!(ingress.match_type, MatchType::L3L4);

        // A spoofed source: dropped before any policy, reply state unknown.
        run_ok(&[
            "ip",
            "netns",
            "exec",
            &client.ns_name,
            "ip",
            "addr",
            "add",
            "10.244.0.99/32",
            "dev",
            "eth0",
        ]);
        assert!(support::ping_from_ns_dropped(
            &client.ns_name,
            web.ip,
            Some(Ipv4Addr::new(10, 244, 0, 99))
        ));
        let spoofed = only(FlowFilter {
            drop_reason: vec![ApiDropReason::SpoofedSource],
            ..FlowFilter::default()
        });
        let spoofed = eventually(&observer, "the spoofed ping", &spoofed, |f| {
            f.iter().any(|f| f.ip.is_some())
        })
        .await;
        // (An ARP probe from the extra address is dropped too, as a non-IP flow.)
        let s = spoofed
            .iter()
            .find(|f| f.ip.is_some())
            .expect("the spoofed ICMP");
        assert_eq!(s.direction, Some(Direction::Egress));
        assert_eq!(s.is_reply, None);
        assert_eq!(s.source.identity, CLIENT, "the sender's identity");
        assert_eq!(s.ip.map(|ip| ip.0), Some("10.244.0.99".parse().unwrap()));

        // The gRPC adapter serves the same, filtered by pod; ServerStatus counts them.
        let grpc = FlowGrpc::new(observer.clone());
        let request = kino_api::flow::GetFlowsRequest {
            whitelist: vec![kino_api::flow::FlowFilter {
                source_pod: vec!["shop/client".into()],
                destination_pod: vec!["shop/web".into()],
                verdict: vec![kino_api::flow::Verdict::Dropped as i32],
                ..Default::default()
            }],
            ..Default::default()
        };
        let responses: Vec<_> = grpc
            .get_flows(tonic::Request::new(request))
            .await
            .expect("GetFlows")
            .into_inner()
            .collect()
            .await;
        assert!(
            responses.len() >= 2,
            "the TCP and ICMP drops: {responses:#?}"
        );
        let status = grpc
            .server_status(tonic::Request::new(Default::default()))
            .await
            .expect("ServerStatus")
            .into_inner();
        assert!(status.seen_flows >= 5, "{status:?}");
        assert_eq!(status.lost_events, 0, "{status:?}");
        let counters = observer.counters();
        assert_eq!(counters.flows_seen(), status.seen_flows);
    });
}

#[test]
fn a_full_ring_counts_every_lost_event() {
    if !kernel_tests_possible("a_full_ring_counts_every_lost_event") {
        return;
    }
    const PACKETS: u64 = 300;
    let world = World::new();
    let node_ns = world.netns("node");
    let ns = [world.netns("client"), world.netns("web")];
    let _pins = world.pins();
    let pods = [
        Pod::new(&world, &ns[0], 0, CLIENT),
        Pod::new(&world, &ns[1], 1, WEB),
    ];
    let node_name = world.node.clone();
    in_node(&node_ns, move || async move {
        // One page: about 39 events fit.
        let (_netlink, mut datapath) = node(&node_name, &pods, 4096).await;
        let (client, web) = (&pods[0], &pods[1]);
        let observer = Arc::new(FlowObserver::new(&node_name, 1000, 1000));
        let directory = Arc::new(Pods(vec![info(client, "client"), info(web, "web")]));
        kino_agent::flows::start(observer.clone(), datapath.pin_dir(), directory)
            .expect("starting the observer");
        web_policy(&mut datapath, web);
        // Let the reader start (it takes the counters' baseline), then flood without
        // yielding: this runtime's only thread sends, so nothing drains the ring meanwhile.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let web_ip = web.ip;
        let socket: UdpSocket = in_netns(&client.netns, move || {
            let socket = UdpSocket::bind(("0.0.0.0", 0)).expect("bind");
            socket.connect((web_ip, 9)).expect("connect");
            socket
        });
        for _ in 0..PACKETS {
            socket.send(b"flood").expect("send");
        }
        // Now let the reader drain and the counters be polled.
        let udp_drops = only(FlowFilter {
            protocol: vec![UDP],
            verdict: vec![kino_api::flow::Verdict::Dropped],
            ..FlowFilter::default()
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let seen = flows(&observer, &udp_drops).await.len() as u64;
            let lost = observer.counters().lost(LostSource::DatapathRing);
            // Other events (e.g. IPv6 neighbour discovery) may share the ring: ≥.
            if seen + lost >= PACKETS {
                assert!(lost > 0, "a one-page ring cannot hold {PACKETS} events");
                assert!(seen > 0 && seen < PACKETS, "seen {seen}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{seen} flows + {lost} lost < {PACKETS} drops: events vanished silently"
            );
        }
        let status = FlowGrpc::new(observer.clone())
            .server_status(tonic::Request::new(Default::default()))
            .await
            .expect("ServerStatus")
            .into_inner();
        let ring_lost = status
            .lost_by_source
            .iter()
            .find(|c| c.source == kino_api::flow::LostEventSource::BpfRingBuffer as i32)
            .map(|c| c.count)
            .unwrap_or(0);
        assert!(
            ring_lost > 0 && status.lost_events >= ring_lost,
            "{status:?}"
        );
        assert!(
            status.datapath_events + ring_lost >= PACKETS,
            "emitted + lost cover every drop: {status:?}"
        );
        // A follower is told about losses as they happen.
        let mut follow = observer.query(FlowQuery {
            follow: true,
            ..FlowQuery::default()
        });
        for _ in 0..PACKETS {
            socket.send(b"flood").expect("send");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), follow.next())
                .await
                .expect("the follow stream answers")
                .expect("the follow stream goes on");
            if let Observed::Lost {
                source: LostSource::DatapathRing,
                count,
            } = next
            {
                assert!(count > 0);
                break;
            }
            assert!(Instant::now() < deadline, "no lost-events report");
        }
    });
}
