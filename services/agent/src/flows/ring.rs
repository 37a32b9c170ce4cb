//! The observer's in-memory ring: the last `capacity` flows, and a broadcast of every new
//! flow (and lost-event report) to following clients. Taking a snapshot and subscribing
//! happen under the ring's lock, so a client that reads the ring then follows sees every
//! flow exactly once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::flow::Flow;

/// Where events were lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LostSource {
    /// The BPF ring buffer was full: the datapath could not report them.
    DatapathRing,
    /// Records of the ring buffer could not be decoded.
    ObserverQueue,
    /// A following client read too slowly and missed them.
    FlowRing,
}

/// What the ring broadcasts to followers.
#[derive(Clone, Debug)]
pub enum Observed {
    /// A flow.
    Flow(Arc<Flow>),
    /// `count` events lost at `source`.
    Lost {
        /// Where.
        source: LostSource,
        /// How many.
        count: u64,
    },
}

struct Slots {
    flows: VecDeque<Arc<Flow>>,
    evicted: u64,
}

/// The ring of the last flows.
pub struct FlowRing {
    capacity: usize,
    slots: Mutex<Slots>,
    followers: broadcast::Sender<Observed>,
}

impl std::fmt::Debug for FlowRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowRing")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl FlowRing {
    /// A ring of `capacity` flows (at least 1) whose followers may fall `follower_buffer`
    /// messages behind (at least 1) before they miss some.
    pub fn new(capacity: usize, follower_buffer: usize) -> Self {
        let capacity = capacity.max(1);
        FlowRing {
            capacity,
            slots: Mutex::new(Slots {
                flows: VecDeque::with_capacity(capacity),
                evicted: 0,
            }),
            followers: broadcast::channel(follower_buffer.max(1)).0,
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a flow (overwriting the oldest when full) and sends it to followers; returns
    /// whether a flow was evicted.
    pub fn push(&self, flow: Arc<Flow>) -> bool {
        let mut slots = self.slots();
        let evicted = slots.flows.len() == self.capacity;
        if evicted {
            slots.flows.pop_front();
            slots.evicted += 1;
        }
        slots.flows.push_back(flow.clone());
        // No followers is fine.
        let _ = self.followers.send(Observed::Flow(flow));
        evicted
    }

    /// Tells followers that `count` events were lost at `source`.
    pub fn report_lost(&self, source: LostSource, count: u64) {
        let _slots = self.slots();
        let _ = self.followers.send(Observed::Lost { source, count });
    }

    /// The flows now in the ring (oldest first) and a subscription to everything after them.
    pub fn snapshot_and_follow(&self) -> (Vec<Arc<Flow>>, broadcast::Receiver<Observed>) {
        let slots = self.slots();
        (
            slots.flows.iter().cloned().collect(),
            self.followers.subscribe(),
        )
    }

    /// The flows now in the ring, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<Flow>> {
        self.slots().flows.iter().cloned().collect()
    }

    /// Flows in the ring.
    pub fn len(&self) -> usize {
        self.slots().flows.len()
    }

    /// True when no flow was observed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Flows overwritten so far.
    pub fn evicted(&self) -> u64 {
        self.slots().evicted
    }
}
