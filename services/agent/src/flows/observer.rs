//! The flow observer's state and queries (Hubble's observer, transport-free): the ring of
//! the last flows, the counters, and `GetFlows` as a stream of [`Observed`] items (the ring's
//! flows, then — when following — new flows and lost-event reports).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::{Stream, StreamExt, stream};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::filter::FlowSelection;
use super::flow::Flow;
use super::ring::{FlowRing, LostSource, Observed};

/// Default number of flows the ring keeps.
pub const DEFAULT_CAPACITY: usize = 4095;
/// Default number of messages a follower may fall behind before it misses some.
pub const DEFAULT_FOLLOWER_BUFFER: usize = 8192;

/// The observer's counters, readable by anyone (metrics) without a lock.
#[derive(Debug, Default)]
pub struct FlowCounters {
    /// Flows observed (added to the ring) since start.
    pub seen: AtomicU64,
    /// Events the datapath could not report since start: its ring buffer was full.
    pub lost_datapath: AtomicU64,
    /// Ring buffer records that could not be decoded.
    pub lost_decode: AtomicU64,
    /// Flows following clients missed because they read too slowly.
    pub lost_followers: AtomicU64,
    /// Flows overwritten in the ring by newer ones (turnover, not a loss).
    pub evicted: AtomicU64,
    /// Events the datapath reported (emitted) since start, as its counters say.
    pub datapath_events: AtomicU64,
}

impl FlowCounters {
    /// Flows observed since start.
    pub fn flows_seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// Events lost since start, every source.
    pub fn flows_lost(&self) -> u64 {
        self.lost(LostSource::DatapathRing)
            + self.lost(LostSource::ObserverQueue)
            + self.lost(LostSource::FlowRing)
    }

    /// Events lost at one source.
    pub fn lost(&self, source: LostSource) -> u64 {
        self.counter(source).load(Ordering::Relaxed)
    }

    fn counter(&self, source: LostSource) -> &AtomicU64 {
        match source {
            LostSource::DatapathRing => &self.lost_datapath,
            LostSource::ObserverQueue => &self.lost_decode,
            LostSource::FlowRing => &self.lost_followers,
        }
    }
}

/// What `ServerStatus` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObserverStatus {
    /// Flows in the ring.
    pub num_flows: u64,
    /// Ring capacity.
    pub max_flows: u64,
    /// Flows observed since start.
    pub seen_flows: u64,
    /// Lost events per source.
    pub lost: Vec<(LostSource, u64)>,
    /// Flows overwritten in the ring.
    pub evicted_flows: u64,
    /// Events the datapath reported since start.
    pub datapath_events: u64,
    /// Time since start.
    pub uptime: Duration,
    /// Node name.
    pub node_name: Arc<str>,
}

/// A `GetFlows` request, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowQuery {
    /// How many flows from the ring (0: all without follow, none with follow).
    pub number: u64,
    /// The oldest `number` instead of the newest.
    pub first: bool,
    /// Keep streaming new flows.
    pub follow: bool,
    /// Which flows.
    pub selection: FlowSelection,
}

/// The stream of one query.
pub type ObservedStream = Pin<Box<dyn Stream<Item = Observed> + Send>>;

/// The node's flow observer.
#[derive(Debug)]
pub struct FlowObserver {
    node: Arc<str>,
    ring: FlowRing,
    counters: Arc<FlowCounters>,
    started: Instant,
}

impl FlowObserver {
    /// An observer of node `node` keeping the last `capacity` flows; followers may fall
    /// `follower_buffer` messages behind.
    pub fn new(node: &str, capacity: usize, follower_buffer: usize) -> Self {
        FlowObserver {
            node: Arc::from(node),
            ring: FlowRing::new(capacity, follower_buffer),
            counters: Arc::new(FlowCounters::default()),
            started: Instant::now(),
        }
    }

    /// The node's name.
    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    /// The counters (shared: read them from metrics).
    pub fn counters(&self) -> Arc<FlowCounters> {
        self.counters.clone()
    }

    /// Adds a flow.
    pub fn publish(&self, flow: Flow) {
        self.counters.seen.fetch_add(1, Ordering::Relaxed);
        if self.ring.push(Arc::new(flow)) {
            self.counters.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts `count` events lost at `source` and tells followers.
    pub fn report_lost(&self, source: LostSource, count: u64) {
        if count == 0 {
            return;
        }
        self.counters
            .counter(source)
            .fetch_add(count, Ordering::Relaxed);
        self.ring.report_lost(source, count);
    }

    /// The status.
    pub fn status(&self) -> ObserverStatus {
        let c = &self.counters;
        ObserverStatus {
            num_flows: self.ring.len() as u64,
            max_flows: self.ring.capacity() as u64,
            seen_flows: c.flows_seen(),
            lost: [
                LostSource::DatapathRing,
                LostSource::ObserverQueue,
                LostSource::FlowRing,
            ]
            .into_iter()
            .map(|s| (s, c.lost(s)))
            .collect(),
            evicted_flows: c.evicted.load(Ordering::Relaxed),
            datapath_events: c.datapath_events.load(Ordering::Relaxed),
            uptime: self.started.elapsed(),
            node_name: self.node.clone(),
        }
    }

    /// The flows a query selects from the ring, then (when following) what comes next.
    pub fn query(&self, query: FlowQuery) -> ObservedStream {
        let selection = query.selection;
        let (ring, followers) = if query.follow {
            let (ring, rx) = self.ring.snapshot_and_follow();
            (ring, Some(rx))
        } else {
            (self.ring.snapshot(), None)
        };
        let matching = ring.into_iter().filter(|f| selection.matches(f));
        let number = usize::try_from(query.number).unwrap_or(usize::MAX);
        let from_ring: Vec<Arc<Flow>> = match (query.number, query.first, query.follow) {
            (0, _, true) => Vec::new(),
            (0, _, false) => matching.collect(),
            (_, true, _) => matching.take(number).collect(),
            (_, false, _) => {
                let mut last: Vec<Arc<Flow>> = matching.collect();
                let skip = last.len().saturating_sub(number);
                last.drain(..skip);
                last
            }
        };
        let head = stream::iter(from_ring.into_iter().map(Observed::Flow));
        let Some(rx) = followers else {
            return Box::pin(head);
        };
        let counters = self.counters.clone();
        let until = selection.until;
        let tail = BroadcastStream::new(rx)
            .map(move |item| match item {
                Ok(observed) => observed,
                Err(BroadcastStreamRecvError::Lagged(count)) => {
                    counters.lost_followers.fetch_add(count, Ordering::Relaxed);
                    Observed::Lost {
                        source: LostSource::FlowRing,
                        count,
                    }
                }
            })
            // A flow past `until` ends the stream.
            .take_while(move |observed| {
                let within = match observed {
                    Observed::Flow(f) => until.is_none_or(|u| f.time <= u),
                    Observed::Lost { .. } => true,
                };
                futures::future::ready(within)
            })
            .filter(move |observed| {
                let keep = match observed {
                    Observed::Flow(f) => selection.matches(f),
                    Observed::Lost { .. } => true,
                };
                futures::future::ready(keep)
            });
        Box::pin(head.chain(tail))
    }
}

/// Converts CLOCK_MONOTONIC nanoseconds (the datapath's clock) to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    /// Wall-clock time at monotonic zero.
    boot: SystemTime,
}

impl MonotonicClock {
    /// The clock as of now (take it again now and then: the wall clock may be stepped).
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes a timespec; CLOCK_MONOTONIC always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let monotonic = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        MonotonicClock {
            boot: SystemTime::now() - monotonic,
        }
    }

    /// The wall-clock time of `ktime_ns`.
    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        self.boot + Duration::from_nanos(ktime_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::Direction;
    use crate::datapath::events::{EventKind, EventVerdict, MatchType};
    use crate::flows::filter::FlowFilter;
    use crate::flows::flow::{L4, Peer};

    fn flow(n: u16, verdict: EventVerdict) -> Flow {
        Flow {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(n)),
            verdict,
            drop_reason: None,
            kind: EventKind::PolicyVerdict,
            ethernet: None,
            ip: Some(("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap())),
            l4: Some(L4::Udp {
                src_port: n,
                dst_port: 53,
            }),
            source: Peer::default(),
            destination: Peer::default(),
            node_name: Arc::from("n"),
            direction: Some(Direction::Egress),
            interface: None,
            is_reply: Some(false),
            point: None,
            match_type: MatchType::NotEnforced,
            service: None,
        }
    }

    fn ports(items: &[Observed]) -> Vec<u16> {
        items
            .iter()
            .filter_map(|o| match o {
                Observed::Flow(f) => f.l4.and_then(|l| l.ports()).map(|p| p.0),
                Observed::Lost { .. } => None,
            })
            .collect()
    }

    async fn collect(observer: &FlowObserver, query: FlowQuery) -> Vec<Observed> {
        observer.query(query).collect().await
    }

    #[tokio::test]
    async fn last_first_and_all_of_the_ring() {
        let observer = FlowObserver::new("n", 5, 16);
        for n in 1..=8 {
            observer.publish(flow(n, EventVerdict::Forwarded));
        }
        let status = observer.status();
        assert_eq!((status.num_flows, status.max_flows), (5, 5));
        assert_eq!((status.seen_flows, status.evicted_flows), (8, 3));
        let all = collect(&observer, FlowQuery::default()).await;
        assert_eq!(ports(&all), [4, 5, 6, 7, 8]);
        let last = FlowQuery {
            number: 2,
            ..FlowQuery::default()
        };
        assert_eq!(ports(&collect(&observer, last).await), [7, 8]);
        let first = FlowQuery {
            number: 2,
            first: true,
            ..FlowQuery::default()
        };
        assert_eq!(ports(&collect(&observer, first).await), [4, 5]);
        let too_many = FlowQuery {
            number: 100,
            ..FlowQuery::default()
        };
        assert_eq!(ports(&collect(&observer, too_many).await).len(), 5);
    }

    #[tokio::test]
    async fn the_last_n_are_counted_after_filtering() {
        let observer = FlowObserver::new("n", 10, 16);
        for n in 1..=6 {
            let verdict = if n % 2 == 0 {
                EventVerdict::Dropped
            } else {
                EventVerdict::Forwarded
            };
            observer.publish(flow(n, verdict));
        }
        let query = FlowQuery {
            number: 2,
            selection: FlowSelection {
                whitelist: vec![FlowFilter {
                    verdict: vec![kino_api::flow::Verdict::Dropped],
                    ..FlowFilter::default()
                }],
                ..FlowSelection::default()
            },
            ..FlowQuery::default()
        };
        assert_eq!(ports(&collect(&observer, query).await), [4, 6]);
    }

    #[tokio::test]
    async fn follow_sends_the_ring_then_new_flows_exactly_once() {
        let observer = Arc::new(FlowObserver::new("n", 10, 16));
        observer.publish(flow(1, EventVerdict::Forwarded));
        observer.publish(flow(2, EventVerdict::Forwarded));
        let mut stream = observer.query(FlowQuery {
            number: 1,
            follow: true,
            ..FlowQuery::default()
        });
        observer.publish(flow(3, EventVerdict::Forwarded));
        observer.report_lost(LostSource::DatapathRing, 7);
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(stream.next().await.expect("an item"));
        }
        assert_eq!(ports(&got), [2, 3]);
        assert!(matches!(
            got[2],
            Observed::Lost {
                source: LostSource::DatapathRing,
                count: 7
            }
        ));
        assert_eq!(observer.counters().flows_lost(), 7);
        // Only new flows with number 0.
        let mut only_new = observer.query(FlowQuery {
            follow: true,
            ..FlowQuery::default()
        });
        observer.publish(flow(4, EventVerdict::Forwarded));
        let next = only_new.next().await.expect("an item");
        assert_eq!(ports(&[next]), [4]);
    }

    #[tokio::test]
    async fn a_slow_follower_gets_a_lost_report_and_it_is_counted() {
        let observer = FlowObserver::new("n", 100, 4);
        let mut stream = observer.query(FlowQuery {
            follow: true,
            ..FlowQuery::default()
        });
        for n in 1..=10 {
            observer.publish(flow(n, EventVerdict::Forwarded));
        }
        let first = stream.next().await.expect("an item");
        assert!(
            matches!(
                first,
                Observed::Lost {
                    source: LostSource::FlowRing,
                    count: 6
                }
            ),
            "{first:?}"
        );
        let mut rest = Vec::new();
        for _ in 0..4 {
            rest.push(stream.next().await.expect("an item"));
        }
        assert_eq!(ports(&rest), [7, 8, 9, 10]);
        let status = observer.status();
        assert_eq!(observer.counters().lost(LostSource::FlowRing), 6);
        assert!(status.lost.contains(&(LostSource::FlowRing, 6)));
        assert_eq!(observer.counters().flows_seen(), 10);
    }

    #[tokio::test]
    async fn until_ends_a_follow() {
        let observer = FlowObserver::new("n", 10, 16);
        let stream = observer.query(FlowQuery {
            follow: true,
            selection: FlowSelection {
                until: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2)),
                ..FlowSelection::default()
            },
            ..FlowQuery::default()
        });
        for n in 1..=3 {
            observer.publish(flow(n, EventVerdict::Forwarded));
        }
        let got: Vec<Observed> = stream.collect().await;
        assert_eq!(ports(&got), [1, 2]);
    }

    #[test]
    fn the_monotonic_clock_maps_to_now() {
        let clock = MonotonicClock::now();
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        let wall = clock.wall(now);
        let skew = SystemTime::now()
            .duration_since(wall)
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_secs(1), "{skew:?}");
    }
}
