//! Watches of the embedded store: a watcher replays the on-disk change log from its start
//! revision, then follows the live commits the writer broadcasts; one that falls behind the
//! live feed catches up from the log, so no event is lost and a watch resumes across a
//! gateway restart.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::super::{EventStream, StoreError, StoreEvent};
use super::Inner;
use super::tables::{LOG, decode_event, storage_err};

impl Inner {
    /// Change-log entries for keys under `prefix` with revision in `from..=to`, batched by
    /// revision.
    fn history(
        &self,
        prefix: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<Vec<StoreEvent>>, StoreError> {
        let txn = self.db.begin_read().map_err(storage_err)?;
        let log = txn.open_table(LOG).map_err(storage_err)?;
        let mut batches: Vec<Vec<StoreEvent>> = Vec::new();
        let mut current = -1;
        let range = log
            .range((from.max(0) as u64, 0)..=(to.max(0) as u64, u32::MAX))
            .map_err(storage_err)?;
        for entry in range {
            let (k, v) = entry.map_err(storage_err)?;
            let event = decode_event(v.value())?;
            if !event.object.key.starts_with(prefix) {
                continue;
            }
            let revision = k.value().0 as i64;
            if revision != current {
                batches.push(Vec::new());
                current = revision;
            }
            batches.last_mut().expect("pushed").push(event);
        }
        Ok(batches)
    }
}

/// Starts a watch of the keys under `prefix` from `start_revision` (0 = from now).
pub(super) fn start(
    inner: &Arc<Inner>,
    prefix: &str,
    start_revision: i64,
) -> Result<EventStream, StoreError> {
    if start_revision < 0 {
        return Err(StoreError::InvalidArgument {
            field: "start_revision",
            reason: format!("{start_revision} is negative"),
        });
    }
    // Subscribe and read the revision under the writer lock: nothing commits in between,
    // so the history read below and the live feed meet exactly.
    let (live, revision, compact) = {
        let _order = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let live = inner.live.subscribe();
        let (revision, compact) = inner.read_revisions()?;
        (live, revision, compact)
    };
    if start_revision > 0 && start_revision < compact {
        return Err(StoreError::Compacted {
            requested: start_revision,
            compact_revision: compact,
        });
    }
    let (tx, rx) = mpsc::channel(64);
    let next = if start_revision == 0 {
        revision + 1
    } else {
        start_revision
    };
    tokio::spawn(follow(
        inner.clone(),
        prefix.to_string(),
        next,
        revision,
        live,
        tx,
    ));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Feeds one watcher: history from `next` up to `synced`, then live batches. A watcher that
/// falls behind the live feed catches up from the on-disk log instead of losing events.
async fn follow(
    inner: Arc<Inner>,
    prefix: String,
    mut next: i64,
    mut synced: i64,
    mut live: broadcast::Receiver<Arc<Vec<StoreEvent>>>,
    tx: mpsc::Sender<Result<Vec<StoreEvent>, StoreError>>,
) {
    loop {
        if next <= synced {
            let (p, from, to) = (prefix.clone(), next, synced);
            let reader = inner.clone();
            let history = tokio::task::spawn_blocking(move || reader.history(&p, from, to))
                .await
                .map_err(storage_err)
                .and_then(|r| r);
            match history {
                Ok(batches) => {
                    for batch in batches {
                        if tx.send(Ok(batch)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            next = synced + 1;
        }
        let received = tokio::select! {
            r = live.recv() => r,
            _ = tx.closed() => return,
        };
        match received {
            Ok(batch) => {
                let revision = batch.first().map(StoreEvent::revision).unwrap_or(0);
                if revision < next {
                    continue;
                }
                let mine: Vec<StoreEvent> = batch
                    .iter()
                    .filter(|e| e.object.key.starts_with(prefix.as_str()))
                    .cloned()
                    .collect();
                next = revision + 1;
                synced = revision;
                if !mine.is_empty() && tx.send(Ok(mine)).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Re-read what was missed from the log, then continue live.
                match inner.read_revisions() {
                    Ok((revision, compact)) if next >= compact => synced = revision,
                    Ok((_, compact)) => {
                        let _ = tx
                            .send(Err(StoreError::Compacted {
                                requested: next,
                                compact_revision: compact,
                            }))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
