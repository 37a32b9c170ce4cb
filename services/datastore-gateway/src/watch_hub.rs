//! Watch fan-out: every client watching a kind shares ONE backend watch of that kind (as
//! Calico's Typha does for its agents).
//!
//! Each kind has a hub: one backend watch feeding a ring buffer of its recent change batches
//! and a broadcast channel. A client that starts (or resumes) at a revision the ring still
//! covers is served from the ring and then live from the broadcast; one that falls behind
//! re-reads from the ring. Only a client whose start revision is older than the ring gets a
//! dedicated backend watch (counted in `WatchFanout::backend_watches`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::metrics::WATCH_LAG;
use crate::resource::Selector;
use crate::store::{ChangeKind, EventStream, Store, StoreError, StoreEvent, StoredObject};

type Batch = Arc<HubBatch>;

/// One batch of changes from the shared backend watch, with when it arrived (for the watch
/// lag metric).
struct HubBatch {
    events: Vec<StoreEvent>,
    received: Instant,
}

impl std::ops::Deref for HubBatch {
    type Target = Vec<StoreEvent>;

    fn deref(&self) -> &Vec<StoreEvent> {
        &self.events
    }
}

/// Fan-out statistics of one kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchFanout {
    /// The kind.
    pub kind: String,
    /// Client watches open.
    pub subscribers: i64,
    /// Backend watches open (shared + dedicated).
    pub backend_watches: i64,
}

/// The hubs of all kinds.
pub struct WatchHub {
    store: Arc<dyn Store>,
    ring_events: usize,
    hubs: Mutex<HashMap<String, Arc<KindHub>>>,
}

struct KindHub {
    kind: String,
    state: Mutex<RingState>,
    subscribers: AtomicI64,
    backend_watches: AtomicI64,
}

struct RingState {
    /// Recent batches, oldest first.
    ring: VecDeque<Batch>,
    ring_events: usize,
    /// The ring holds every change of the kind with revision >= `complete_from`.
    complete_from: i64,
    /// Latest state of every key of the kind, to give deletes their last state when the
    /// backend reports only the key (etcd without prev_kv, which costs milliseconds per event).
    cache: HashMap<String, StoredObject>,
    /// Set once the backend watch failed; subscribers end with this error.
    failed: Option<StoreError>,
    live: broadcast::Sender<Batch>,
}

/// Decrements a counter when dropped.
struct CountGuard(Arc<KindHub>, fn(&KindHub) -> &AtomicI64);

impl Drop for CountGuard {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::Relaxed);
    }
}

impl WatchHub {
    /// A hub over `store` keeping about `ring_events` recent events per kind.
    pub fn new(store: Arc<dyn Store>, ring_events: usize) -> Self {
        WatchHub {
            store,
            ring_events: ring_events.max(1),
            hubs: Mutex::new(HashMap::new()),
        }
    }

    /// Streams changes selected by `selector` from `start_revision` (0 = after now).
    pub async fn watch(
        &self,
        selector: Selector,
        start_revision: i64,
    ) -> Result<EventStream, StoreError> {
        let hub = self.hub_for(selector.kind()).await?;
        let start = if start_revision == 0 {
            self.store.status().await?.revision + 1
        } else {
            start_revision
        };
        let (tx, rx) = mpsc::channel(64);
        hub.subscribers.fetch_add(1, Ordering::Relaxed);
        let guard = CountGuard(hub.clone(), |h| &h.subscribers);
        let store = self.store.clone();
        // Fail fast on a compacted or otherwise refused start: open the dedicated watch here.
        let dedicated = match hub.join(start) {
            Joined::Shared(backlog, live) => {
                let feed = SharedFeed {
                    hub: hub.clone(),
                    store,
                    selector,
                };
                tokio::spawn(feed.serve(start, backlog, live, tx, guard));
                return Ok(Box::pin(ReceiverStream::new(rx)));
            }
            Joined::TooOld => store.watch(&selector.kind_prefix(), start).await?,
            Joined::Failed(e) => return Err(e),
        };
        hub.backend_watches.fetch_add(1, Ordering::Relaxed);
        let backend_guard = CountGuard(hub.clone(), |h| &h.backend_watches);
        tokio::spawn(async move {
            let _guards = (guard, backend_guard);
            forward(dedicated, &selector, &tx).await;
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    /// Fan-out statistics, one entry per kind that has a hub.
    pub fn fanout(&self) -> Vec<WatchFanout> {
        let hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<WatchFanout> = hubs
            .values()
            .map(|h| WatchFanout {
                kind: h.kind.clone(),
                subscribers: h.subscribers.load(Ordering::Relaxed),
                backend_watches: h.backend_watches.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by(|a, b| a.kind.cmp(&b.kind));
        out
    }

    /// The live hub of a kind, starting one (and its backend watch) if needed.
    async fn hub_for(&self, kind: &str) -> Result<Arc<KindHub>, StoreError> {
        {
            let hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(hub) = hubs.get(kind).filter(|h| !h.is_failed()) {
                return Ok(hub.clone());
            }
        }
        let prefix = format!("{kind}/");
        let (cache, revision) = self.snapshot(&prefix).await?;
        let backend = self.store.watch(&prefix, revision + 1).await?;
        let (live, _) = broadcast::channel(1024);
        let hub = Arc::new(KindHub {
            kind: kind.to_string(),
            state: Mutex::new(RingState {
                ring: VecDeque::new(),
                ring_events: 0,
                complete_from: revision + 1,
                cache,
                failed: None,
                live,
            }),
            subscribers: AtomicI64::new(0),
            backend_watches: AtomicI64::new(1),
        });
        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        // Another request may have started one meanwhile: keep the first, drop ours.
        if let Some(existing) = hubs.get(kind).filter(|h| !h.is_failed()) {
            return Ok(existing.clone());
        }
        hubs.insert(kind.to_string(), hub.clone());
        tokio::spawn(pump(hub.clone(), backend, self.ring_events));
        tracing::debug!(kind, from = revision + 1, "shared backend watch started");
        Ok(hub)
    }
}

impl WatchHub {
    /// Every object under `prefix`, and the revision of the first read (later pages may be
    /// newer: the cache only takes events newer than what it holds).
    async fn snapshot(
        &self,
        prefix: &str,
    ) -> Result<(HashMap<String, StoredObject>, i64), StoreError> {
        let mut cache = HashMap::new();
        let mut after: Option<String> = None;
        let mut revision = 0;
        loop {
            let page = self.store.list(prefix, after.as_deref(), 1000).await?;
            if revision == 0 {
                revision = page.revision;
            }
            after = page.objects.last().map(|o| o.key.clone());
            for object in page.objects {
                cache.insert(object.key.clone(), object);
            }
            if !page.more || after.is_none() {
                return Ok((cache, revision));
            }
        }
    }
}

enum Joined {
    /// Backlog from the ring, then the live feed.
    Shared(Vec<Batch>, broadcast::Receiver<Batch>),
    /// The ring no longer (or never) held `start`.
    TooOld,
    /// The hub's backend watch failed.
    Failed(StoreError),
}

impl KindHub {
    fn is_failed(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed
            .is_some()
    }

    /// Atomically copies the ring from `start` and subscribes to what follows it.
    fn join(&self, start: i64) -> Joined {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = &state.failed {
            return Joined::Failed(e.clone());
        }
        if start < state.complete_from {
            return Joined::TooOld;
        }
        let backlog = state
            .ring
            .iter()
            .filter(|b| b[0].revision() >= start)
            .cloned()
            .collect();
        Joined::Shared(backlog, state.live.subscribe())
    }
}

impl RingState {
    /// Updates the cache with an event and completes a delete's last state from it.
    fn remember(&mut self, event: &mut StoreEvent) {
        let key = &event.object.key;
        let newer = self
            .cache
            .get(key)
            .is_none_or(|cached| event.object.revision > cached.revision);
        match event.change {
            ChangeKind::Put if newer => {
                self.cache.insert(key.clone(), event.object.clone());
            }
            ChangeKind::Put => {}
            ChangeKind::Delete => {
                if let Some(last) = self.cache.get(key) {
                    if event.object.value.is_empty() {
                        event.object.value = last.value.clone();
                        event.object.create_revision = last.create_revision;
                        event.object.lease = last.lease;
                    }
                    if newer {
                        self.cache.remove(key);
                    }
                }
            }
        }
    }
}

/// Moves the backend watch's batches into the ring and the broadcast.
async fn pump(hub: Arc<KindHub>, mut backend: EventStream, capacity: usize) {
    while let Some(item) = backend.next().await {
        let mut state = hub.state.lock().unwrap_or_else(|p| p.into_inner());
        match item {
            Ok(batch) if batch.is_empty() => {}
            Ok(mut batch) => {
                for event in &mut batch {
                    state.remember(event);
                }
                let batch = Arc::new(HubBatch {
                    events: batch,
                    received: Instant::now(),
                });
                state.ring_events += batch.len();
                state.ring.push_back(batch.clone());
                while state.ring_events > capacity && state.ring.len() > 1 {
                    let dropped = state.ring.pop_front().expect("non-empty");
                    state.ring_events -= dropped.len();
                    state.complete_from = dropped[0].revision() + 1;
                }
                let _ = state.live.send(batch);
            }
            Err(e) => {
                tracing::warn!(kind = %hub.kind, error = %e, "shared backend watch failed");
                state.failed = Some(e);
                break;
            }
        }
    }
    let mut state = hub.state.lock().unwrap_or_else(|p| p.into_inner());
    state.failed.get_or_insert_with(|| StoreError::Unavailable {
        backend: "store",
        detail: "the backend ended the watch".into(),
    });
    hub.backend_watches.fetch_sub(1, Ordering::Relaxed);
    // Replacing the sender closes every subscriber's receiver.
    state.live = broadcast::channel(1).0;
}

/// One client served from the shared ring and feed.
struct SharedFeed {
    hub: Arc<KindHub>,
    store: Arc<dyn Store>,
    selector: Selector,
}

impl SharedFeed {
    async fn serve(
        self,
        start: i64,
        backlog: Vec<Batch>,
        mut live: broadcast::Receiver<Batch>,
        tx: mpsc::Sender<Result<Vec<StoreEvent>, StoreError>>,
        _guard: CountGuard,
    ) {
        let mut next = start;
        for batch in backlog {
            next = batch[0].revision() + 1;
            if !send_selected(&batch, &self.selector, &tx).await {
                return;
            }
        }
        loop {
            let received = tokio::select! {
                r = live.recv() => r,
                _ = tx.closed() => return,
            };
            match received {
                Ok(batch) => {
                    if batch[0].revision() < next {
                        continue;
                    }
                    next = batch[0].revision() + 1;
                    if !send_selected(&batch, &self.selector, &tx).await {
                        return;
                    }
                    WATCH_LAG.observe(batch.received.elapsed().as_secs_f64());
                }
                Err(broadcast::error::RecvError::Lagged(_)) => match self.hub.join(next) {
                    Joined::Shared(backlog, fresh) => {
                        live = fresh;
                        for batch in backlog {
                            next = batch[0].revision() + 1;
                            if !send_selected(&batch, &self.selector, &tx).await {
                                return;
                            }
                        }
                    }
                    // Fell behind the ring too: continue on a dedicated backend watch.
                    Joined::TooOld => {
                        match self.store.watch(&self.selector.kind_prefix(), next).await {
                            Ok(stream) => {
                                self.hub.backend_watches.fetch_add(1, Ordering::Relaxed);
                                let _backend = CountGuard(self.hub.clone(), |h| &h.backend_watches);
                                forward(stream, &self.selector, &tx).await;
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                            }
                        }
                        return;
                    }
                    Joined::Failed(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                },
                Err(broadcast::error::RecvError::Closed) => {
                    let e = self
                        .hub
                        .state
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .failed
                        .clone()
                        .unwrap_or(StoreError::Unavailable {
                            backend: "store",
                            detail: "watch ended".into(),
                        });
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    }
}

/// Forwards a dedicated backend watch to one client.
async fn forward(
    mut stream: EventStream,
    selector: &Selector,
    tx: &mpsc::Sender<Result<Vec<StoreEvent>, StoreError>>,
) {
    loop {
        let item = tokio::select! {
            i = stream.next() => i,
            _ = tx.closed() => return,
        };
        match item {
            Some(Ok(batch)) => {
                if !send_selected(&batch, selector, tx).await {
                    return;
                }
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            None => return,
        }
    }
}

/// Sends the events of `batch` that the selector matches; false when the client is gone.
async fn send_selected(
    batch: &[StoreEvent],
    selector: &Selector,
    tx: &mpsc::Sender<Result<Vec<StoreEvent>, StoreError>>,
) -> bool {
    let mine: Vec<StoreEvent> = batch
        .iter()
        .filter(|e| selector.matches(&e.object.key))
        .cloned()
        .collect();
    mine.is_empty() || tx.send(Ok(mine)).await.is_ok()
}
