//! Merging the nodes' flows by time, transport-free and clock-injected so it is tested
//! exactly.
//!
//! - [`merge_sorted`]: a k-way merge of lists each in its node's order (a finished
//!   `GetFlows` of every node), then [`trim`] keeps the request's `number` of the merged
//!   list — the last (or first) N of the cluster, not N per node.
//! - [`Reorder`]: the same merge over streams that never end (follow). A flow leaves as
//!   soon as every open stream has one waiting (then the earliest of them is the earliest
//!   there can be), or once the flow that has waited longest waited the reordering
//!   window: an idle node must not hold the cluster's flows back forever. So the output is
//!   in time order unless a node's flow arrives more than the window after a later flow of
//!   another node left; it then leaves late, out of order, never dropped.
//!
//! Ties in time go to the node whose name sorts first, so the order is deterministic.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

/// A time to sort by: seconds and nanoseconds since the Unix epoch (a missing time sorts
/// first).
pub type TimeKey = (i64, i32);

/// Something with a time the relay orders by.
pub trait Timed {
    /// The time to sort by.
    fn time_key(&self) -> TimeKey;
}

impl Timed for kino_api::flow::GetFlowsResponse {
    fn time_key(&self) -> TimeKey {
        self.time.map(|t| (t.seconds, t.nanos)).unwrap_or_default()
    }
}

/// A head of the k-way merge: its time, its node (tie-break), the list it came from.
struct Head {
    key: TimeKey,
    node: String,
    list: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.key, &self.node, self.list).cmp(&(other.key, &other.node, other.list))
    }
}

/// Merges the nodes' lists (each in its node's order) into one list in time order; each
/// node's own order is kept.
pub fn merge_sorted<T: Timed>(lists: Vec<(String, Vec<T>)>) -> Vec<T> {
    let total = lists.iter().map(|(_, l)| l.len()).sum();
    let mut out = Vec::with_capacity(total);
    let mut iters: Vec<(String, std::vec::IntoIter<T>)> = lists
        .into_iter()
        .map(|(node, list)| (node, list.into_iter()))
        .collect();
    let mut pending: Vec<Option<T>> = Vec::with_capacity(iters.len());
    let mut heap = BinaryHeap::new();
    for (index, (node, iter)) in iters.iter_mut().enumerate() {
        let next = iter.next();
        if let Some(item) = &next {
            heap.push(Reverse(Head {
                key: item.time_key(),
                node: node.clone(),
                list: index,
            }));
        }
        pending.push(next);
    }
    while let Some(Reverse(head)) = heap.pop() {
        let Some(item) = pending[head.list].take() else {
            continue;
        };
        out.push(item);
        if let Some(next) = iters[head.list].1.next() {
            heap.push(Reverse(Head {
                key: next.time_key(),
                node: head.node,
                list: head.list,
            }));
            pending[head.list] = Some(next);
        }
    }
    out
}

/// Keeps the last `number` items (the first with `first`); `number` 0 keeps all.
pub fn trim<T>(mut merged: Vec<T>, number: u64, first: bool) -> Vec<T> {
    let number = usize::try_from(number).unwrap_or(usize::MAX);
    if number == 0 || merged.len() <= number {
        return merged;
    }
    if first {
        merged.truncate(number);
    } else {
        merged.drain(..merged.len() - number);
    }
    merged
}

/// The follow-mode merge: per-node queues in arrival order and a bounded wait (see the
/// module's documentation).
#[derive(Debug)]
pub struct Reorder<T> {
    window: Duration,
    queues: BTreeMap<String, VecDeque<(Instant, T)>>,
    open: BTreeSet<String>,
}

impl<T: Timed> Reorder<T> {
    /// A merge that holds a flow at most `window` waiting for earlier flows of idle nodes.
    pub fn new(window: Duration) -> Self {
        Reorder {
            window,
            queues: BTreeMap::new(),
            open: BTreeSet::new(),
        }
    }

    /// A node's stream opened: its flows are now waited for.
    pub fn open(&mut self, node: &str) {
        self.open.insert(node.to_owned());
    }

    /// A node's stream ended: nothing more is waited for from it (what it sent still leaves
    /// in order).
    pub fn close(&mut self, node: &str) {
        self.open.remove(node);
    }

    /// A flow of `node` arrived at `now`.
    pub fn push(&mut self, node: &str, now: Instant, item: T) {
        self.queues
            .entry(node.to_owned())
            .or_default()
            .push_back((now, item));
    }

    /// Flows waiting.
    pub fn len(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    /// Whether no flow waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next flow that may leave at `now`, if any.
    pub fn pop_ready(&mut self, now: Instant) -> Option<T> {
        let mut earliest: Option<(TimeKey, &str)> = None;
        let mut longest_wait: Option<Instant> = None;
        for (node, queue) in &self.queues {
            let Some((arrived, item)) = queue.front() else {
                continue;
            };
            let key = item.time_key();
            if earliest.is_none_or(|(k, _)| key < k) {
                earliest = Some((key, node));
            }
            longest_wait = Some(longest_wait.map_or(*arrived, |w| w.min(*arrived)));
        }
        let (_, node) = earliest?;
        let every_open_node_waiting = self
            .open
            .iter()
            .all(|n| self.queues.get(n).is_some_and(|q| !q.is_empty()));
        let waited_enough = longest_wait.is_some_and(|w| now >= w + self.window);
        if !(every_open_node_waiting || waited_enough) {
            return None;
        }
        let node = node.to_owned();
        let queue = self.queues.get_mut(&node)?;
        let (_, item) = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(&node);
        }
        Some(item)
    }

    /// When a flow will be allowed to leave without more arrivals (None: nothing waits).
    pub fn deadline(&self) -> Option<Instant> {
        self.queues
            .values()
            .filter_map(|q| q.front().map(|(arrived, _)| *arrived + self.window))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct F(i64, &'static str);

    impl Timed for F {
        fn time_key(&self) -> TimeKey {
            (self.0, 0)
        }
    }

    fn times(items: &[F]) -> Vec<i64> {
        items.iter().map(|f| f.0).collect()
    }

    #[test]
    fn k_way_merge_orders_by_time_then_node() {
        let merged = merge_sorted(vec![
            ("n2".into(), vec![F(1, "b"), F(4, "b"), F(6, "b")]),
            ("n1".into(), vec![F(1, "a"), F(2, "a"), F(7, "a")]),
            ("n3".into(), vec![]),
            ("n4".into(), vec![F(3, "d")]),
        ]);
        assert_eq!(times(&merged), [1, 1, 2, 3, 4, 6, 7]);
        assert_eq!(merged[0].1, "a", "a tie goes to the node that sorts first");
    }

    #[test]
    fn trim_keeps_the_last_or_first_of_the_merge() {
        let merged: Vec<i64> = (1..=6).collect();
        assert_eq!(trim(merged.clone(), 2, false), [5, 6]);
        assert_eq!(trim(merged.clone(), 2, true), [1, 2]);
        assert_eq!(trim(merged.clone(), 0, false).len(), 6);
        assert_eq!(trim(merged, 60, true).len(), 6);
    }

    #[test]
    fn a_flow_leaves_when_every_open_node_has_one_waiting() {
        let start = Instant::now();
        let mut merge = Reorder::new(Duration::from_secs(1));
        merge.open("n1");
        merge.open("n2");
        merge.push("n1", start, F(5, "a"));
        assert_eq!(
            merge.pop_ready(start),
            None,
            "n2 may still send an earlier one"
        );
        merge.push("n2", start, F(3, "b"));
        assert_eq!(merge.pop_ready(start), Some(F(3, "b")));
        assert_eq!(
            merge.pop_ready(start),
            None,
            "n2 is open and has nothing waiting"
        );
        merge.close("n2");
        assert_eq!(merge.pop_ready(start), Some(F(5, "a")));
        assert!(merge.is_empty() && merge.deadline().is_none());
    }

    #[test]
    fn an_idle_node_holds_flows_back_at_most_the_window() {
        let start = Instant::now();
        let window = Duration::from_millis(200);
        let mut merge = Reorder::new(window);
        merge.open("n1");
        merge.open("idle");
        merge.push("n1", start, F(2, "a"));
        merge.push("n1", start + window / 2, F(1, "late in its own stream"));
        assert_eq!(merge.deadline(), Some(start + window));
        assert_eq!(merge.pop_ready(start + window / 2), None);
        // The window is up for the first: it leaves, and its successor's own wait starts.
        assert_eq!(merge.pop_ready(start + window), Some(F(2, "a")));
        assert_eq!(merge.pop_ready(start + window), None);
        assert_eq!(
            merge.pop_ready(start + window / 2 + window),
            Some(F(1, "late in its own stream"))
        );
    }

    #[test]
    fn within_the_window_a_late_earlier_flow_still_leaves_first() {
        let start = Instant::now();
        let window = Duration::from_millis(200);
        let mut merge = Reorder::new(window);
        merge.open("n1");
        merge.open("n2");
        merge.push("n1", start, F(10, "a"));
        merge.push("n2", start + window / 2, F(9, "b"));
        assert_eq!(merge.pop_ready(start + window / 2), Some(F(9, "b")));
        assert_eq!(merge.pop_ready(start + window / 2), None);
        assert_eq!(merge.pop_ready(start + window), Some(F(10, "a")));
    }
}
