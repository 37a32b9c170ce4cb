//! The relay against real flow observers: each node is the agent's own observer
//! (`kino_agent::flows::FlowObserver` served by `kino_agent::grpc::flow::FlowGrpc`) behind
//! the service kit's `serve` with mTLS and an authorization table, fed known flows; the
//! relay is served the same way with its flow-relay certificate, and the test reads it as
//! `kino observe` does (admin certificate). Peers come from a `PeerSet` directly or from
//! Node records in a real gateway (embedded store).
//!
//! Nothing here asserts a timing: order is checked where the merge guarantees it (finite
//! answers; follows ended by `until`, with a reorder window far longer than the test), and
//! "eventually" conditions wait with a generous bound only to fail instead of hanging.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use kino_agent::datapath::Direction;
use kino_agent::datapath::events::{EventKind, EventVerdict, MatchType};
use kino_agent::flows::FlowObserver;
use kino_agent::flows::flow::{Flow, L4, Peer as FlowPeer};
use kino_agent::grpc::flow::FlowGrpc;
use kino_api::flow::flow_service_client::FlowServiceClient;
use kino_api::flow::get_flows_response::Event;
use kino_api::flow::layer4::Protocol;
use kino_api::flow::{FlowFilter, GetFlowsRequest, GetFlowsResponse, ServerStatusRequest};
use kino_api::types::{Node, NodeAddress, NodeAddressType};
use kino_flow_relay::grpc::{
    CONNECTED_COUNT_HEADER, NODES_HEADER, RelayGrpc, UNAVAILABLE_COUNT_HEADER, UNAVAILABLE_HEADER,
};
use kino_flow_relay::peers::{Peer, PeerSet, Peers};
use kino_flow_relay::upstream::TonicNodes;
use kino_flow_relay::{Relay, RelayOptions};
use kino_service_kit::authz::{Access, MethodRule};
use kino_service_kit::pki::{Issue, Pki, Subject};
use kino_service_kit::principal::Role;
use kino_service_kit::records::{RecordClient, to_resource};
use kino_service_kit::{ClientTlsArgs, ListenAddr, Listener, ServeSpec, TlsArgs, TracedChannel};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::metadata::MetadataMap;

/// The agent's own flow-observer table: role flow-relay may read flows.
static AGENT_FLOWS: &[MethodRule] = kino_agent::grpc::authorization::FLOWS;

/// A flow observer that admits only operators (and admin): it refuses the relay.
static OPERATORS_ONLY: &[MethodRule] = &[
    (
        "/kino.flow.v1.FlowService/GetFlows",
        Access::Roles(&[Role::Operator]),
    ),
    (
        "/kino.flow.v1.FlowService/ServerStatus",
        Access::Roles(&[Role::Operator]),
    ),
];

/// Bound on waiting for something that must happen (a failure, not a measurement).
const PATIENCE: Duration = Duration::from_secs(30);

/// A test PKI: CA, the relay's and admin's certificates; nodes' on demand.
struct TestPki {
    _dir: tempfile::TempDir,
    pki: Pki,
}

impl TestPki {
    fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pki, _) = Pki::open_or_create(&dir.path().join("pki")).expect("CA");
        for subject in [Subject::role(Role::FlowRelay), Subject::role(Role::Admin)] {
            pki.issue(&Issue::local(subject, &[])).expect("issue");
        }
        pki.issue(&Issue::local(Subject::agent("intruder"), &[]).with_stem("agent"))
            .expect("issue");
        TestPki { _dir: dir, pki }
    }

    fn dir(&self) -> &Path {
        self.pki.dir()
    }

    /// mTLS server files of `stem`.
    fn server(&self, stem: &str) -> TlsArgs {
        TlsArgs::mtls(
            self.pki.cert_path(stem),
            self.pki.key_path(stem),
            self.pki.ca_path(),
        )
    }

    /// mTLS client files of `stem`.
    fn client(&self, stem: &str) -> ClientTlsArgs {
        ClientTlsArgs::mtls(
            self.pki.ca_path(),
            self.pki.cert_path(stem),
            self.pki.key_path(stem),
        )
    }

    /// The agent certificate of `node`, valid on `ip` too; its stem.
    fn agent(&self, node: &str, ip: &str) -> String {
        let stem = format!("agent-{node}");
        if !self.dir().join(format!("{stem}.crt")).exists() {
            self.pki
                .issue(&Issue::local(Subject::agent(node), &[ip.to_owned()]).with_stem(&stem))
                .expect("issue an agent certificate");
        }
        stem
    }
}

/// One node: the agent's flow observer served with mTLS.
struct NodeServer {
    name: String,
    observer: Arc<FlowObserver>,
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl NodeServer {
    async fn start(pki: &TestPki, name: &str, bind: &str, table: &'static [MethodRule]) -> Self {
        let observer = Arc::new(FlowObserver::new(name, 64, 256));
        Self::serve(pki, name, bind, table, observer).await
    }

    async fn serve(
        pki: &TestPki,
        name: &str,
        bind: &str,
        table: &'static [MethodRule],
        observer: Arc<FlowObserver>,
    ) -> Self {
        let listener = Listener::bind(&bind.parse::<ListenAddr>().expect("address"))
            .await
            .unwrap_or_else(|e| panic!("binding node {name} on {bind}: {e}"));
        let ListenAddr::Tcp(address) = listener.local_addr() else {
            panic!("a TCP listener");
        };
        let stem = pki.agent(name, &address.ip().to_string());
        let (stop, stopped) = oneshot::channel::<()>();
        let spec = ServeSpec::on_listener("kino-agent-flows", listener)
            .with_tls(pki.server(&stem))
            .with_authorization(table)
            .with_grace_period(Duration::from_secs(1))
            .with_shutdown(async move {
                let _ = stopped.await;
            })
            .add_service(FlowGrpc::new(observer.clone()).into_server());
        let task = tokio::spawn(async move {
            kino_service_kit::serve(spec)
                .await
                .expect("the node serves");
        });
        NodeServer {
            name: name.to_owned(),
            observer,
            address,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn peer(&self) -> Peer {
        Peer {
            name: self.name.clone(),
            address: self.address.to_string(),
        }
    }

    fn publish(&self, at: SystemTime, port: u16) {
        self.observer.publish(flow(&self.name, at, port));
    }

    /// Stops serving (its streams end UNAVAILABLE, as an agent shutting down does).
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("the node stops");
        }
    }

    /// Serves again on the same address, with the same ring.
    async fn restart(&mut self, pki: &TestPki, table: &'static [MethodRule]) {
        self.stop().await;
        let again = Self::serve(
            pki,
            &self.name,
            &self.address.to_string(),
            table,
            self.observer.clone(),
        )
        .await;
        let mut old = std::mem::replace(self, again);
        old.task = None;
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn flow(node: &str, at: SystemTime, port: u16) -> Flow {
    Flow {
        time: at,
        verdict: EventVerdict::Forwarded,
        drop_reason: None,
        kind: EventKind::PolicyVerdict,
        ethernet: None,
        ip: Some(("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap())),
        l4: Some(L4::Udp {
            src_port: port,
            dst_port: 53,
        }),
        source: FlowPeer::default(),
        destination: FlowPeer::default(),
        node_name: Arc::from(node),
        direction: Some(Direction::Egress),
        interface: None,
        is_reply: Some(false),
        point: None,
        match_type: MatchType::NotEnforced,
        service: None,
    }
}

/// The relay served with mTLS, over `peers`.
struct RelayServer {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl RelayServer {
    async fn start(pki: &TestPki, peers: Arc<PeerSet>, options: RelayOptions) -> Self {
        let relay = Arc::new(Relay::new(
            peers,
            Arc::new(TonicNodes::new(pki.client("flow-relay"))),
            options,
        ));
        let listener = Listener::bind(&"127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind the relay");
        let ListenAddr::Tcp(address) = listener.local_addr() else {
            panic!("a TCP listener");
        };
        let spec = ServeSpec::on_listener("kino-flow-relay", listener)
            .with_tls(pki.server("flow-relay"))
            .with_authorization(kino_flow_relay::authorization::AUTHORIZATION)
            .with_grace_period(Duration::from_secs(1))
            .add_service(RelayGrpc::new(relay).into_server());
        let task = tokio::spawn(async move {
            kino_service_kit::serve(spec)
                .await
                .expect("the relay serves");
        });
        RelayServer { address, task }
    }

    /// A client with the certificate `stem` (admin: as `kino observe` run by root).
    async fn client(&self, pki: &TestPki, stem: &str) -> FlowServiceClient<TracedChannel> {
        let channel = kino_service_kit::connect(&self.address.to_string(), &pki.client(stem))
            .await
            .expect("connect to the relay");
        FlowServiceClient::new(channel)
    }
}

impl Drop for RelayServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn options() -> RelayOptions {
    RelayOptions {
        // Longer than any test: order never depends on how fast the machine is.
        reorder_window: Duration::from_secs(120),
        peer_timeout: Duration::from_secs(5),
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
    }
}

/// For follows whose order is not checked: the last flow waits only briefly.
fn short_window() -> RelayOptions {
    RelayOptions {
        reorder_window: Duration::from_millis(50),
        ..options()
    }
}

/// (node, source port) of a response's flow.
fn key(response: &GetFlowsResponse) -> (String, u16) {
    let Some(Event::Flow(flow)) = &response.event else {
        panic!("not a flow: {response:?}");
    };
    let Some(Protocol::Udp(udp)) = flow.l4.as_ref().and_then(|l4| l4.protocol) else {
        panic!("not the test's UDP flow: {flow:?}");
    };
    (flow.node_name.clone(), udp.source_port as u16)
}

fn keys(responses: &[GetFlowsResponse]) -> Vec<(String, u16)> {
    responses.iter().map(key).collect()
}

fn k(node: &str, port: u16) -> (String, u16) {
    (node.to_owned(), port)
}

async fn get_all(
    client: &mut FlowServiceClient<TracedChannel>,
    request: GetFlowsRequest,
) -> (Vec<GetFlowsResponse>, MetadataMap) {
    let response = client.get_flows(request).await.expect("GetFlows");
    let metadata = response.metadata().clone();
    let mut stream = response.into_inner();
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        items.push(item.expect("a flow"));
    }
    (items, metadata)
}

fn header<'a>(metadata: &'a MetadataMap, name: &str) -> Vec<&'a str> {
    metadata
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ascii"))
        .collect()
}

fn second(n: u64, base: SystemTime) -> SystemTime {
    base + Duration::from_secs(n)
}

/// Two nodes on loopback whose flows interleave in time: n1 at 1, 3, 5, 7 s, n2 at 2, 4, 6 s
/// (source port = the second).
async fn two_nodes(pki: &TestPki, base: SystemTime) -> (NodeServer, NodeServer) {
    let n1 = NodeServer::start(pki, "n1", "127.0.0.1:0", AGENT_FLOWS).await;
    let n2 = NodeServer::start(pki, "n2", "127.0.0.1:0", AGENT_FLOWS).await;
    for s in [1, 3, 5, 7] {
        n1.publish(second(s, base), s as u16);
    }
    for s in [2, 4, 6] {
        n2.publish(second(s, base), s as u16);
    }
    (n1, n2)
}

/// [`two_nodes`] behind a relay, and an admin client of it.
struct TwoNodes {
    base: SystemTime,
    n1: NodeServer,
    n2: NodeServer,
    client: FlowServiceClient<TracedChannel>,
    relay: RelayServer,
    pki: TestPki,
}

impl TwoNodes {
    async fn start(options: RelayOptions) -> TwoNodes {
        let pki = TestPki::new();
        let base = SystemTime::now();
        let (n1, n2) = two_nodes(&pki, base).await;
        let peers = Arc::new(PeerSet::new([n1.peer(), n2.peer()]));
        let relay = RelayServer::start(&pki, peers, options).await;
        let client = relay.client(&pki, "admin").await;
        TwoNodes {
            base,
            n1,
            n2,
            client,
            relay,
            pki,
        }
    }
}

#[tokio::test]
async fn flows_of_every_node_merged_by_time_and_number_counts_the_cluster() {
    let mut w = TwoNodes::start(options()).await;

    let (all, metadata) = get_all(&mut w.client, GetFlowsRequest::default()).await;
    let expected: Vec<_> = (1..=7u16)
        .map(|s| k(if s % 2 == 1 { "n1" } else { "n2" }, s))
        .collect();
    assert_eq!(keys(&all), expected, "the whole cluster, in time order");
    assert!(all.iter().all(|r| r.node_name == key(r).0));
    assert_eq!(header(&metadata, NODES_HEADER), ["n1,n2"]);
    assert!(header(&metadata, UNAVAILABLE_HEADER).is_empty());

    let last = GetFlowsRequest {
        number: 3,
        ..Default::default()
    };
    let (last, _) = get_all(&mut w.client, last).await;
    assert_eq!(
        keys(&last),
        [k("n1", 5), k("n2", 6), k("n1", 7)],
        "the last 3 of the cluster, not 3 per node"
    );
    let first = GetFlowsRequest {
        number: 2,
        first: true,
        ..Default::default()
    };
    let (first, _) = get_all(&mut w.client, first).await;
    assert_eq!(keys(&first), [k("n1", 1), k("n2", 2)]);

    let window = GetFlowsRequest {
        since: Some(second(3, w.base).into()),
        until: Some(second(5, w.base).into()),
        ..Default::default()
    };
    let (window, _) = get_all(&mut w.client, window).await;
    assert_eq!(keys(&window), [k("n1", 3), k("n2", 4), k("n1", 5)]);
}

#[tokio::test]
async fn the_node_filter_asks_only_the_named_nodes() {
    let mut w = TwoNodes::start(options()).await;
    // w.n1 is down: a request for w.n2 alone does not ask it, so nothing is unavailable.
    w.n1.stop().await;
    let only_n2 = GetFlowsRequest {
        whitelist: vec![FlowFilter {
            node_name: vec!["n2".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let (flows, metadata) = get_all(&mut w.client, only_n2).await;
    assert_eq!(keys(&flows), [k("n2", 2), k("n2", 4), k("n2", 6)]);
    assert_eq!(header(&metadata, NODES_HEADER), ["n2"]);
    assert!(header(&metadata, UNAVAILABLE_HEADER).is_empty());
    let not_n1 = GetFlowsRequest {
        blacklist: vec![FlowFilter {
            node_name: vec!["n*1".into()],
            ..Default::default()
        }],
        number: 1,
        ..Default::default()
    };
    let (flows, metadata) = get_all(&mut w.client, not_n1).await;
    assert_eq!(keys(&flows), [k("n2", 6)]);
    assert_eq!(header(&metadata, NODES_HEADER), ["n2"]);
}

#[tokio::test]
async fn a_dead_node_is_reported_and_the_others_answer() {
    let pki = TestPki::new();
    let base = SystemTime::now();
    let (n1, mut n2) = two_nodes(&pki, base).await;
    let refusing = NodeServer::start(&pki, "n3", "127.0.0.1:0", OPERATORS_ONLY).await;
    refusing.publish(second(8, base), 8);
    let peers = Arc::new(PeerSet::new([n1.peer(), n2.peer(), refusing.peer()]));
    let relay = RelayServer::start(&pki, peers, options()).await;
    let mut client = relay.client(&pki, "admin").await;
    n2.stop().await;

    let (flows, metadata) = get_all(&mut client, GetFlowsRequest::default()).await;
    assert_eq!(
        keys(&flows),
        [k("n1", 1), k("n1", 3), k("n1", 5), k("n1", 7)]
    );
    let unavailable = header(&metadata, UNAVAILABLE_HEADER);
    assert_eq!(unavailable.len(), 2, "{unavailable:?}");
    assert!(
        unavailable[0].starts_with("n2: ") && unavailable[0].contains(&n2.address.to_string()),
        "{unavailable:?}"
    );
    assert!(
        unavailable[1].starts_with("n3: ") && unavailable[1].contains("role flow-relay"),
        "a node refusing the relay says what to fix: {unavailable:?}"
    );

    let status = client
        .server_status(ServerStatusRequest {})
        .await
        .expect("ServerStatus");
    assert_eq!(header(status.metadata(), CONNECTED_COUNT_HEADER), ["1"]);
    assert_eq!(header(status.metadata(), UNAVAILABLE_COUNT_HEADER), ["2"]);
    let status = status.into_inner();
    assert_eq!((status.num_flows, status.max_flows), (4, 64));
    assert_eq!(status.seen_flows, 4);
}

#[tokio::test]
async fn server_status_sums_the_nodes() {
    let mut w = TwoNodes::start(options()).await;
    w.n2.observer
        .report_lost(kino_agent::flows::LostSource::DatapathRing, 5);
    let status = w
        .client
        .server_status(ServerStatusRequest {})
        .await
        .expect("ServerStatus");
    assert_eq!(header(status.metadata(), CONNECTED_COUNT_HEADER), ["2"]);
    assert_eq!(header(status.metadata(), UNAVAILABLE_COUNT_HEADER), ["0"]);
    let status = status.into_inner();
    assert_eq!(
        (status.num_flows, status.max_flows, status.seen_flows),
        (7, 128, 7)
    );
    assert_eq!(status.lost_events, 5);
    assert!(
        status
            .lost_by_source
            .iter()
            .any(|c| c.count == 5
                && c.source == kino_api::flow::LostEventSource::BpfRingBuffer as i32),
        "{:?}",
        status.lost_by_source
    );
}

#[tokio::test]
async fn bad_requests_and_callers_are_refused() {
    let mut w = TwoNodes::start(options()).await;
    let contradictory = GetFlowsRequest {
        first: true,
        follow: true,
        ..Default::default()
    };
    let status = w
        .client
        .get_flows(contradictory)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    // A malformed filter is the agents' to judge: their answer comes back, naming the node.
    let malformed = GetFlowsRequest {
        whitelist: vec![FlowFilter {
            source_ip: vec!["web".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let status = w.client.get_flows(malformed).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("source_ip") && status.message().contains("node \"n"),
        "{}",
        status.message()
    );
    // Flows show every pod's traffic: an agent's certificate may not read them here.
    let mut agent = w.relay.client(&w.pki, "agent").await;
    let status = agent
        .get_flows(GetFlowsRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
}

/// Reads the next flow of a follow, failing after [`PATIENCE`].
async fn next_flow(stream: &mut tonic::Streaming<GetFlowsResponse>) -> GetFlowsResponse {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("a flow within the patience bound")
        .expect("the stream goes on")
        .expect("a flow, not an error")
}

#[tokio::test]
async fn follow_starts_with_the_last_flows_of_the_cluster() {
    // A short window: the last new flow waits for it (its order is not checked here).
    let mut w = TwoNodes::start(short_window()).await;
    let mut stream = w
        .client
        .get_flows(GetFlowsRequest {
            number: 3,
            follow: true,
            ..Default::default()
        })
        .await
        .expect("follow")
        .into_inner();
    let mut head = Vec::new();
    for _ in 0..3 {
        head.push(next_flow(&mut stream).await);
    }
    assert_eq!(keys(&head), [k("n1", 5), k("n2", 6), k("n1", 7)]);
    // New flows of both nodes follow, each once (none repeated from the ring).
    w.n1.publish(second(9, w.base), 9);
    w.n2.publish(second(10, w.base), 10);
    let mut next = vec![next_flow(&mut stream).await, next_flow(&mut stream).await];
    next.sort_by_key(key);
    assert_eq!(keys(&next), [k("n1", 9), k("n2", 10)]);
}

#[tokio::test]
async fn follow_keeps_the_merge_in_time_order_until_until() {
    let pki = TestPki::new();
    let base = SystemTime::now();
    let n1 = NodeServer::start(&pki, "n1", "127.0.0.1:0", AGENT_FLOWS).await;
    let n2 = NodeServer::start(&pki, "n2", "127.0.0.1:0", AGENT_FLOWS).await;
    let idle = NodeServer::start(&pki, "idle", "127.0.0.1:0", AGENT_FLOWS).await;
    let peers = Arc::new(PeerSet::new([n1.peer(), n2.peer(), idle.peer()]));
    let relay = RelayServer::start(&pki, peers, options()).await;
    let mut client = relay.client(&pki, "admin").await;
    let response = client
        .get_flows(GetFlowsRequest {
            follow: true,
            until: Some(second(100, base).into()),
            ..Default::default()
        })
        .await
        .expect("follow");
    // The relay answers once every node is subscribed: all that follows is seen.
    let mut stream = response.into_inner();
    // n1's flows reach the relay before n2's earlier ones.
    for s in [11, 13, 15, 17] {
        n1.publish(second(s, base), s as u16);
    }
    for s in [10, 12, 14, 16] {
        n2.publish(second(s, base), s as u16);
    }
    // Past `until`: each node ends its stream, and the follow ends.
    for node in [&n1, &n2, &idle] {
        node.publish(second(101, base), 101);
    }
    let mut flows = Vec::new();
    while let Some(item) = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("the follow ends once every node passed until")
    {
        flows.push(item.expect("a flow"));
    }
    let expected: Vec<_> = (10..=17u16)
        .map(|s| k(if s % 2 == 1 { "n1" } else { "n2" }, s))
        .collect();
    assert_eq!(keys(&flows), expected);
}

/// Publishes flows on `node` (ports from `port` up) until the follow shows one of them:
/// the relay follows the node (again). Returns the port seen.
async fn until_followed(
    node: &NodeServer,
    stream: &mut tonic::Streaming<GetFlowsResponse>,
    port: u16,
) -> u16 {
    let deadline = Instant::now() + PATIENCE;
    let mut next_port = port;
    loop {
        assert!(
            Instant::now() < deadline,
            "the relay does not follow node {}",
            node.name
        );
        node.publish(SystemTime::now(), next_port);
        next_port += 1;
        if let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_millis(300), stream.next()).await
        {
            let (name, seen) = key(&item.expect("a flow"));
            if name == node.name {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn follow_picks_up_a_late_node_and_one_that_comes_back() {
    let pki = TestPki::new();
    let n1 = NodeServer::start(&pki, "n1", "127.0.0.1:0", AGENT_FLOWS).await;
    let mut n2 = NodeServer::start(&pki, "n2", "127.0.0.1:0", AGENT_FLOWS).await;
    let peers = Arc::new(PeerSet::new([n1.peer()]));
    let relay = RelayServer::start(&pki, peers.clone(), short_window()).await;
    let mut client = relay.client(&pki, "admin").await;
    let mut stream = client
        .get_flows(GetFlowsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .expect("follow")
        .into_inner();
    until_followed(&n1, &mut stream, 1000).await;
    // n2 joins the cluster while the follow runs.
    peers.set_discovered(Peers::from([(n2.name.clone(), n2.address.to_string())]));
    until_followed(&n2, &mut stream, 2000).await;
    // n2's agent restarts: the relay reconnects and follows it again.
    n2.restart(&pki, AGENT_FLOWS).await;
    until_followed(&n2, &mut stream, 3000).await;
    // n1 keeps flowing through all of it.
    until_followed(&n1, &mut stream, 4000).await;
}

#[tokio::test]
async fn follow_of_a_node_down_at_the_start_picks_it_up_when_it_comes() {
    let pki = TestPki::new();
    let n1 = NodeServer::start(&pki, "n1", "127.0.0.1:0", AGENT_FLOWS).await;
    let mut n2 = NodeServer::start(&pki, "n2", "127.0.0.1:0", AGENT_FLOWS).await;
    n2.stop().await;
    let peers = Arc::new(PeerSet::new([n1.peer(), n2.peer()]));
    let relay = RelayServer::start(&pki, peers, short_window()).await;
    let mut client = relay.client(&pki, "admin").await;
    let response = client
        .get_flows(GetFlowsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .expect("follow: a node down does not fail it");
    let unavailable = header(response.metadata(), UNAVAILABLE_HEADER)
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert_eq!(unavailable.len(), 1, "{unavailable:?}");
    assert!(unavailable[0].starts_with("n2: "), "{unavailable:?}");
    let mut stream = response.into_inner();
    until_followed(&n1, &mut stream, 1000).await;
    n2.restart(&pki, AGENT_FLOWS).await;
    until_followed(&n2, &mut stream, 2000).await;
}

fn node_record(name: &str, ip: &str) -> Node {
    Node {
        name: name.to_owned(),
        addresses: vec![
            NodeAddress {
                r#type: NodeAddressType::KinoInternalIp as i32,
                address: "10.0.0.1".into(),
            },
            NodeAddress {
                r#type: NodeAddressType::InternalIp as i32,
                address: ip.to_owned(),
            },
        ],
        ..Node::default()
    }
}

/// Waits until the relay's peers are `expected` (names).
async fn peers_become(peers: &PeerSet, expected: &[&str]) {
    let mut changes = peers.subscribe();
    let names = |p: &Peers| p.keys().cloned().collect::<Vec<_>>();
    tokio::time::timeout(PATIENCE, async {
        while names(&changes.borrow_and_update()) != expected {
            changes.changed().await.expect("the peer set lives");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("peers {:?}, not {expected:?}", names(&peers.current())));
}

#[tokio::test]
async fn peers_are_the_node_records_of_the_datastore() {
    let pki = TestPki::new();
    let backend = kino_datastore_gateway::testing::embedded().await;
    let gateway = kino_datastore_gateway::testing::serve_gateway(backend.store.clone()).await;
    let records = RecordClient::new(
        kino_service_kit::connect_lazy(&gateway.address, &ClientTlsArgs::default())
            .expect("gateway channel"),
    );
    // Every node's observer on the same port, at its own INTERNAL_IP (loopback addresses).
    let n1 = NodeServer::start(&pki, "n1", "127.0.0.2:0", AGENT_FLOWS).await;
    let port = n1.address.port();
    let n2 = NodeServer::start(&pki, "n2", &format!("127.0.0.3:{port}"), AGENT_FLOWS).await;
    let n3 = NodeServer::start(&pki, "n3", &format!("127.0.0.4:{port}"), AGENT_FLOWS).await;
    n1.publish(SystemTime::now(), 1);
    n2.publish(SystemTime::now(), 2);
    for (name, ip) in [("n1", "127.0.0.2"), ("n2", "127.0.0.3")] {
        records
            .create(to_resource("", name, &node_record(name, ip), 0))
            .await
            .expect("a Node record");
    }
    let peers = Arc::new(PeerSet::new([]));
    let discovery = tokio::spawn(kino_flow_relay::discovery::follow_nodes(
        records.clone(),
        peers.clone(),
        port,
    ));
    let _stop_discovery = AbortOnDrop(discovery);
    peers_become(&peers, &["n1", "n2"]).await;
    assert_eq!(
        peers.current()["n2"],
        format!("127.0.0.3:{port}"),
        "INTERNAL_IP and --peer-port"
    );
    let relay = RelayServer::start(&pki, peers.clone(), short_window()).await;
    let mut client = relay.client(&pki, "admin").await;
    let (flows, _) = get_all(&mut client, GetFlowsRequest::default()).await;
    let mut seen = keys(&flows);
    seen.sort();
    assert_eq!(seen, [k("n1", 1), k("n2", 2)]);

    // A node joins while a follow runs: the watch brings it in.
    let mut stream = client
        .get_flows(GetFlowsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .expect("follow")
        .into_inner();
    records
        .create(to_resource("", "n3", &node_record("n3", "127.0.0.4"), 0))
        .await
        .expect("n3's Node record");
    peers_become(&peers, &["n1", "n2", "n3"]).await;
    until_followed(&n3, &mut stream, 3000).await;

    // A node deleted is no longer asked.
    records
        .delete("Node", "", "n2", 0)
        .await
        .expect("n2's record deleted");
    peers_become(&peers, &["n1", "n3"]).await;
    let (_, metadata) = get_all(&mut client, GetFlowsRequest::default()).await;
    assert_eq!(header(&metadata, NODES_HEADER), ["n1,n3"]);
    gateway.task.abort();
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Nodes reached in-process: the agent's observer behind the agent's own request and
/// response conversions (`grpc::flow`), without transport, so that a test can act between
/// the relay's subscription to a node and its read of the node's ring.
struct InProcessNodes {
    observer: Arc<FlowObserver>,
    between: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

#[async_trait::async_trait]
impl kino_flow_relay::NodeFlows for InProcessNodes {
    async fn get_flows(
        &self,
        _peer: &Peer,
        request: GetFlowsRequest,
    ) -> Result<kino_flow_relay::relay::NodeStream, kino_flow_relay::relay::NodeError> {
        if !request.follow {
            let act = self.between.lock().unwrap().take();
            if let Some(act) = act {
                act();
            }
        }
        let query = kino_agent::grpc::flow::query_from_proto(&request).map_err(|status| {
            kino_flow_relay::relay::NodeError::InvalidRequest(status.message().to_owned())
        })?;
        let node = self.observer.node().clone();
        Ok(Box::pin(self.observer.query(query).map(move |observed| {
            Ok(kino_agent::grpc::flow::response_to_proto(&observed, &node))
        })))
    }

    async fn server_status(
        &self,
        _peer: &Peer,
    ) -> Result<kino_api::flow::ServerStatusResponse, kino_flow_relay::relay::NodeError> {
        Err(kino_flow_relay::relay::NodeError::Unavailable(
            "not served here".into(),
        ))
    }
}

/// A follow of the last `number` flows of one node (ring: 1..=5 s) whose 6 and 7 s flows are
/// published between the relay's subscription and its ring read; then 8 s.
async fn follow_across_the_overlap(number: u64) -> Vec<(String, u16)> {
    let base = SystemTime::now();
    let observer = Arc::new(FlowObserver::new("n1", 64, 256));
    for s in 1..=5 {
        observer.publish(flow("n1", second(s, base), s as u16));
    }
    let during = observer.clone();
    let nodes = Arc::new(InProcessNodes {
        observer: observer.clone(),
        between: std::sync::Mutex::new(Some(Box::new(move || {
            for s in [6, 7] {
                during.publish(flow("n1", second(s, base), s as u16));
            }
        }))),
    });
    let peers = Arc::new(PeerSet::new([Peer {
        name: "n1".into(),
        address: "in-process:1".into(),
    }]));
    let relay = Relay::new(peers, nodes, options());
    let mut flows = relay
        .get_flows(GetFlowsRequest {
            number,
            follow: true,
            ..Default::default()
        })
        .await
        .expect("follow")
        .stream;
    observer.publish(flow("n1", second(8, base), 8));
    let mut seen = Vec::new();
    loop {
        let item = tokio::time::timeout(PATIENCE, flows.next())
            .await
            .expect("a flow")
            .expect("the follow goes on");
        seen.push(key(&item));
        if seen.last() == Some(&k("n1", 8)) {
            return seen;
        }
    }
}

#[tokio::test]
async fn a_flow_in_both_the_ring_and_the_follow_is_sent_once() {
    assert_eq!(
        follow_across_the_overlap(3).await,
        [k("n1", 5), k("n1", 6), k("n1", 7), k("n1", 8)]
    );
}

#[tokio::test]
async fn more_new_flows_than_number_in_the_overlap_come_after_the_ring_once_each() {
    assert_eq!(
        follow_across_the_overlap(1).await,
        [k("n1", 7), k("n1", 6), k("n1", 8)],
        "documented: the older one is shown after the ring, none twice, none lost"
    );
}
