//! Turns datapath events into flows: resolves both sides (local endpoint by address, else
//! identity from the event or the ipcache, labels of the identity, pod from the labels), the
//! interface name and the node. Lookups come from a [`Directory`]; the local endpoints are a
//! snapshot refreshed in the background (and at once when an event names an endpoint the
//! snapshot lacks), identities' labels a cache filled asynchronously — so turning an event
//! into a flow never waits on a lock or a network call.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::Notify;

use super::flow::{Flow, Interface, L4, Label, Labels, Peer};
use super::observer::MonotonicClock;
use crate::datapath::events::FlowEvent;
use crate::datapath::ipcache::{IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_WORLD};

/// An event naming an endpoint the snapshot lacks reloads it first, at most this often.
const MISS_REFRESH_EVERY: Duration = Duration::from_millis(100);
/// How long such a reload may hold up the reader (the manager may be busy creating it).
const MISS_REFRESH_TIMEOUT: Duration = Duration::from_millis(250);
/// How long an identity whose labels could not be had is not asked for again.
const MISSING_IDENTITY_RETRY: Duration = Duration::from_secs(30);
/// Identities whose labels are cached at most (the cache starts over beyond).
const MAX_CACHED_IDENTITIES: usize = 65_536;

/// A local endpoint as the enricher needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Endpoint id.
    pub id: u32,
    /// Security identity (0 while unknown).
    pub identity: u32,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// Security labels.
    pub labels: Vec<Label>,
    /// Addresses.
    pub ips: Vec<IpAddr>,
    /// ifindex of its lxc.
    pub lxc_ifindex: u32,
    /// Name of its lxc.
    pub lxc_name: String,
}

/// Where the enricher looks things up.
pub trait Directory: Send + Sync + 'static {
    /// The node's endpoints now.
    fn endpoints(&self) -> BoxFuture<'_, Result<Vec<EndpointInfo>, String>>;
    /// The identity the datapath gives an address (the ipcache), if it can be read.
    fn identity_of(&self, ip: IpAddr) -> Option<u32>;
    /// The labels of an identity, if it is known.
    fn identity_labels(&self, identity: u32) -> BoxFuture<'_, Option<Vec<Label>>>;
    /// The other node an address lives on (a remote pod's), if known.
    fn node_of(&self, _ip: IpAddr) -> Option<String> {
        None
    }
}

struct Local {
    info: EndpointInfo,
    labels: Labels,
}

#[derive(Default)]
struct Snapshot {
    by_id: HashMap<u32, Arc<Local>>,
    by_ip: HashMap<IpAddr, Arc<Local>>,
    by_ifindex: HashMap<u32, Arc<Local>>,
}

enum Cached {
    Known(Labels),
    Pending,
    Missing(Instant),
}

/// The labels of a reserved identity, without asking anyone.
pub fn reserved_labels(identity: u32) -> Option<Labels> {
    let name = match identity {
        IDENTITY_HOST => "host",
        IDENTITY_WORLD => "world",
        3 => "unmanaged",
        4 => "health",
        5 => "init",
        IDENTITY_REMOTE_NODE => "remote-node",
        _ => return None,
    };
    Some(Arc::from(vec![Label::new("reserved", name, "")]))
}

/// (namespace, pod name) named by labels: `container:namespace`/`container:pod` (standalone)
/// or Kubernetes' `io.kubernetes.pod.namespace`/`io.kubernetes.pod.name`.
fn pod_of(labels: &[Label]) -> (String, String) {
    let find = |keys: &[&str]| {
        labels
            .iter()
            .find(|l| keys.contains(&l.key.as_str()) && l.source != "reserved")
            .map(|l| l.value.clone())
            .unwrap_or_default()
    };
    let name = find(&["pod", "io.kubernetes.pod.name"]);
    if name.is_empty() {
        return (String::new(), String::new());
    }
    (find(&["namespace", "io.kubernetes.pod.namespace"]), name)
}

/// Resolves events into flows.
#[derive(Clone)]
pub struct Enricher {
    node: Arc<str>,
    directory: Arc<dyn Directory>,
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    identities: Arc<Mutex<HashMap<u32, Cached>>>,
    refresh_now: Arc<Notify>,
    last_miss_refresh: Arc<Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for Enricher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enricher")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Enricher {
    /// An enricher for node `node`; call [`Enricher::refresh`] (or spawn the refresher)
    /// before use.
    pub fn new(node: Arc<str>, directory: Arc<dyn Directory>) -> Self {
        Enricher {
            node,
            directory,
            snapshot: Arc::default(),
            identities: Arc::default(),
            refresh_now: Arc::new(Notify::new()),
            last_miss_refresh: Arc::default(),
        }
    }

    /// Reloads the local endpoints.
    pub async fn refresh(&self) {
        let endpoints = match self.directory.endpoints().await {
            Ok(endpoints) => endpoints,
            Err(e) => {
                tracing::warn!(error = %e, "flow observer: listing endpoints");
                return;
            }
        };
        let mut snapshot = Snapshot::default();
        for info in endpoints {
            let labels: Labels = Arc::from(info.labels.clone());
            let local = Arc::new(Local { info, labels });
            snapshot.by_id.insert(local.info.id, local.clone());
            snapshot
                .by_ifindex
                .insert(local.info.lxc_ifindex, local.clone());
            for ip in &local.info.ips {
                snapshot.by_ip.insert(*ip, local.clone());
            }
        }
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
    }

    /// Refreshes the endpoints every `every`, and soon after an event named an endpoint
    /// the snapshot lacked; runs until dropped.
    pub async fn run_refresher(self, every: Duration) {
        loop {
            self.refresh().await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.refresh_now.notified() => {
                    // Several misses in a burst cost one refresh.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Reloads the endpoints now if `event` names one the snapshot lacks (a pod created
    /// since the last reload), at most every 100 ms and waiting 250 ms at most, so its
    /// first flows get its pod name too.
    pub async fn learn_endpoint_of(&self, event: &FlowEvent) {
        if event.endpoint_id == 0 || self.current().by_id.contains_key(&event.endpoint_id) {
            return;
        }
        {
            let mut last = self
                .last_miss_refresh
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < MISS_REFRESH_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let _ = tokio::time::timeout(MISS_REFRESH_TIMEOUT, self.refresh()).await;
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The labels of `identity` if cached; a miss starts a lookup for later flows.
    fn identity_labels(&self, identity: u32) -> Option<Labels> {
        if identity == 0 {
            return None;
        }
        if let Some(labels) = reserved_labels(identity) {
            return Some(labels);
        }
        let mut cache = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(&identity) {
            Some(Cached::Known(labels)) => return Some(labels.clone()),
            Some(Cached::Pending) => return None,
            Some(Cached::Missing(since)) if since.elapsed() < MISSING_IDENTITY_RETRY => {
                return None;
            }
            _ => {}
        }
        if cache.len() >= MAX_CACHED_IDENTITIES {
            cache.clear();
        }
        cache.insert(identity, Cached::Pending);
        drop(cache);
        let (directory, identities) = (self.directory.clone(), self.identities.clone());
        tokio::spawn(async move {
            let found = directory.identity_labels(identity).await;
            let entry = match found {
                Some(labels) => Cached::Known(Arc::from(labels)),
                None => Cached::Missing(Instant::now()),
            };
            identities
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(identity, entry);
        });
        None
    }

    fn peer(&self, snapshot: &Snapshot, ip: Option<IpAddr>, identity: Option<u32>) -> Peer {
        if let Some(local) = ip.and_then(|ip| snapshot.by_ip.get(&ip)) {
            let identity = identity.unwrap_or(local.info.identity);
            let labels = if identity == local.info.identity {
                Some(local.labels.clone())
            } else {
                // Relabelled since the snapshot: the datapath's identity is the truth.
                self.identity_labels(identity)
            };
            return Peer {
                endpoint_id: local.info.id,
                identity,
                namespace: local.info.namespace.clone(),
                pod_name: local.info.pod_name.clone(),
                labels,
                node_name: self.node.to_string(),
            };
        }
        let identity = identity
            .or_else(|| ip.and_then(|ip| self.directory.identity_of(ip)))
            .unwrap_or(0);
        let labels = self.identity_labels(identity);
        let (namespace, pod_name) = labels.as_deref().map(pod_of).unwrap_or_default();
        Peer {
            endpoint_id: 0,
            identity,
            namespace,
            pod_name,
            labels,
            node_name: ip
                .and_then(|ip| self.directory.node_of(ip))
                .unwrap_or_default(),
        }
    }

    /// The flow of an event.
    pub fn flow(&self, event: &FlowEvent, clock: &MonotonicClock) -> Flow {
        let snapshot = self.current();
        if event.endpoint_id != 0 && !snapshot.by_id.contains_key(&event.endpoint_id) {
            self.refresh_now.notify_one();
        }
        let ip = event.src_ip.zip(event.dst_ip);
        Flow {
            time: clock.wall(event.ktime_ns),
            verdict: event.verdict,
            drop_reason: event.drop_reason,
            kind: event.kind,
            ethernet: (event.ethertype != 0).then_some((event.src_mac, event.dst_mac)),
            ip,
            l4: ip.and_then(|_| {
                L4::new(
                    event.protocol,
                    event.src_port,
                    event.dst_port,
                    event.tcp_flags,
                    (event.icmp_type, event.icmp_code),
                )
            }),
            source: self.peer(&snapshot, event.src_ip, event.src_identity),
            destination: self.peer(&snapshot, event.dst_ip, event.dst_identity),
            node_name: self.node.clone(),
            direction: event.direction,
            interface: Some(Interface {
                index: event.ifindex,
                name: snapshot
                    .by_ifindex
                    .get(&event.ifindex)
                    .map(|l| l.info.lxc_name.clone())
                    .unwrap_or_default(),
            }),
            is_reply: event.is_reply,
            point: event.point,
            match_type: event.match_type,
            service: event.service,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::datapath::events::{EventKind, EventVerdict, MatchType, ObservationPoint};
    use crate::datapath::{Direction, DropReason};
    use crate::netlink::MacAddr;

    struct FakeDirectory {
        endpoints: Mutex<Vec<EndpointInfo>>,
        lookups: AtomicUsize,
    }

    impl Directory for FakeDirectory {
        fn endpoints(&self) -> BoxFuture<'_, Result<Vec<EndpointInfo>, String>> {
            Box::pin(async move { Ok(self.endpoints.lock().unwrap().clone()) })
        }

        fn identity_of(&self, ip: IpAddr) -> Option<u32> {
            (ip == "10.1.0.7".parse::<IpAddr>().unwrap()).then_some(900)
        }

        fn identity_labels(&self, identity: u32) -> BoxFuture<'_, Option<Vec<Label>>> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                (identity == 900).then(|| {
                    vec![
                        Label::new("container", "app", "db"),
                        Label::new("container", "namespace", "data"),
                        Label::new("container", "pod", "db-1"),
                    ]
                })
            })
        }
    }

    fn web() -> EndpointInfo {
        EndpointInfo {
            id: 101,
            identity: 301,
            namespace: "shop".into(),
            pod_name: "web".into(),
            labels: vec![Label::new("container", "app", "web")],
            ips: vec!["10.244.0.11".parse().unwrap()],
            lxc_ifindex: 12,
            lxc_name: "lxc0123456789ab".into(),
        }
    }

    fn event(src: &str, dst: &str) -> FlowEvent {
        FlowEvent {
            ktime_ns: 1_000_000_000,
            ifindex: 12,
            endpoint_id: 101,
            src_identity: None,
            dst_identity: Some(301),
            len: 60,
            ethertype: 0x0800,
            src_ip: Some(src.parse().unwrap()),
            dst_ip: Some(dst.parse().unwrap()),
            protocol: 6,
            src_port: 40000,
            dst_port: 80,
            kind: EventKind::Drop,
            verdict: EventVerdict::Dropped,
            drop_reason: Some(DropReason::PolicyDeniedIngress),
            direction: Some(Direction::Ingress),
            point: Some(ObservationPoint::ToEndpoint),
            match_type: MatchType::None,
            tcp_flags: 0x02,
            icmp_type: 0,
            icmp_code: 0,
            is_reply: Some(false),
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            service: None,
        }
    }

    fn enricher() -> (Enricher, Arc<FakeDirectory>) {
        let directory = Arc::new(FakeDirectory {
            endpoints: Mutex::new(vec![web()]),
            lookups: AtomicUsize::new(0),
        });
        (
            Enricher::new(Arc::from("node-1"), directory.clone()),
            directory,
        )
    }

    #[tokio::test]
    async fn local_endpoints_are_resolved_by_address() {
        let (enricher, _) = enricher();
        enricher.refresh().await;
        let flow = enricher.flow(&event("10.9.9.9", "10.244.0.11"), &MonotonicClock::now());
        let dst = &flow.destination;
        assert_eq!(
            (
                dst.endpoint_id,
                dst.identity,
                dst.namespace.as_str(),
                dst.pod_name.as_str()
            ),
            (101, 301, "shop", "web")
        );
        assert_eq!(dst.node_name, "node-1");
        assert_eq!(dst.labels.as_deref().unwrap()[0].value, "web");
        assert_eq!(flow.interface.unwrap().name, "lxc0123456789ab");
        assert_eq!(
            flow.l4,
            Some(L4::Tcp {
                src_port: 40000,
                dst_port: 80,
                flags: 2
            })
        );
        // Not in the ipcache, no identity in the event: unknown, no pod.
        assert_eq!(flow.source.identity, 0);
        assert_eq!(flow.source.pod_name, "");
    }

    #[tokio::test]
    async fn remote_peers_get_identity_labels_and_pod_from_them_once_cached() {
        let (enricher, directory) = enricher();
        enricher.refresh().await;
        let clock = MonotonicClock::now();
        let first = enricher.flow(&event("10.1.0.7", "10.244.0.11"), &clock);
        assert_eq!(first.source.identity, 900, "from the ipcache");
        assert_eq!(first.source.labels, None, "looked up in the background");
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        let second = enricher.flow(&event("10.1.0.7", "10.244.0.11"), &clock);
        assert_eq!(
            (
                second.source.namespace.as_str(),
                second.source.pod_name.as_str()
            ),
            ("data", "db-1")
        );
        assert_eq!(directory.lookups.load(Ordering::SeqCst), 1, "cached");
        let world = enricher.flow(&event("8.8.8.8", "10.244.0.11"), &clock);
        assert_eq!(world.source.identity, 0);
        let mut from_world = event("8.8.8.8", "10.244.0.11");
        from_world.src_identity = Some(IDENTITY_WORLD);
        let world = enricher.flow(&from_world, &clock);
        assert_eq!(
            world.source.labels.as_deref().unwrap()[0].to_string(),
            "reserved:world"
        );
        assert_eq!(
            directory.lookups.load(Ordering::SeqCst),
            1,
            "reserved: no lookup"
        );
    }

    #[tokio::test]
    async fn an_endpoint_created_since_the_last_reload_is_learnt_before_its_flow() {
        let (enricher, directory) = enricher();
        directory.endpoints.lock().unwrap().clear();
        enricher.refresh().await;
        directory.endpoints.lock().unwrap().push(web());
        let event = event("10.9.9.9", "10.244.0.11");
        enricher.learn_endpoint_of(&event).await;
        let flow = enricher.flow(&event, &MonotonicClock::now());
        assert_eq!(flow.destination.pod_name, "web");
    }

    #[test]
    fn pods_from_kubernetes_labels() {
        let labels = [
            Label::new("k8s", "io.kubernetes.pod.namespace", "kube-system"),
            Label::new("k8s", "io.kubernetes.pod.name", "coredns-1"),
        ];
        assert_eq!(
            pod_of(&labels),
            ("kube-system".to_owned(), "coredns-1".to_owned())
        );
        assert_eq!(pod_of(&[]), (String::new(), String::new()));
    }
}
