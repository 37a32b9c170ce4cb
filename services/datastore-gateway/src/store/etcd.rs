//! The `etcd` backend (etcd 3.4+ through etcd-client): keys live under a prefix, revisions are
//! etcd's own, compare-and-swap is an etcd transaction on `mod_revision`.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{
    ChangeKind, EventStream, Lease, ListPage, Store, StoreError, StoreEvent, StoreStatus,
    StoredObject,
};

const BACKEND: &str = "etcd";
/// Where the gateway records the last compaction it made (outside every kind's prefix).
const COMPACT_KEY: &str = "!meta/compact_revision";

/// Options of the etcd backend.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Prefix of every key the gateway writes, e.g. `/kino/`.
    pub prefix: String,
    /// Timeout of each etcd request.
    pub request_timeout: Duration,
}

/// The etcd store.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    options: EtcdOptions,
}

fn etcd_err(e: etcd_client::Error) -> StoreError {
    StoreError::unavailable(BACKEND, e)
}

fn status_message(e: &etcd_client::Error) -> Option<&str> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some(s.message()),
        _ => None,
    }
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers.
    pub async fn connect(options: EtcdOptions) -> Result<Self, StoreError> {
        let connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(options.request_timeout);
        let mut client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(|e| {
                StoreError::unavailable(
                    BACKEND,
                    format!(
                        "cannot connect to {} ({e}); is etcd running? (--etcd-endpoints)",
                        options.endpoints.join(",")
                    ),
                )
            })?;
        client.status().await.map_err(|e| {
            StoreError::unavailable(
                BACKEND,
                format!(
                    "etcd at {} does not answer: {e}",
                    options.endpoints.join(",")
                ),
            )
        })?;
        tracing::info!(endpoints = ?options.endpoints, prefix = %options.prefix, "connected to etcd");
        Ok(EtcdStore { client, options })
    }

    fn full(&self, key: &str) -> String {
        format!("{}{}", self.options.prefix, key)
    }

    fn object(&self, kv: &KeyValue) -> Result<StoredObject, StoreError> {
        let key = kv.key_str().map_err(etcd_err)?;
        let key = key.strip_prefix(&self.options.prefix).unwrap_or(key);
        Ok(StoredObject {
            key: key.to_string(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            revision: kv.mod_revision(),
            lease: kv.lease(),
        })
    }

    async fn current(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        let resp = self
            .client
            .clone()
            .get(self.full(key), None)
            .await
            .map_err(etcd_err)?;
        resp.kvs().first().map(|kv| self.object(kv)).transpose()
    }

    /// The object in the "else" branch of a failed transaction (a Get of the key).
    fn else_object(&self, ops: Vec<TxnOpResponse>) -> Result<Option<StoredObject>, StoreError> {
        for op in ops {
            if let TxnOpResponse::Get(get) = op {
                return get.kvs().first().map(|kv| self.object(kv)).transpose();
            }
        }
        Ok(None)
    }
}

fn lease_error(e: etcd_client::Error, lease: i64) -> StoreError {
    let not_found = match &e {
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        other => status_message(other).is_some_and(|m| m.contains("lease not found")),
    };
    if not_found {
        StoreError::LeaseNotFound { lease }
    } else {
        etcd_err(e)
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<StoredObject>, StoreError> {
        self.current(key).await
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        let full_prefix = self.full(prefix);
        let start = match after {
            // Keys sort bytewise: the smallest key after `a` is `a\0`.
            Some(a) if a >= prefix => format!("{}\0", self.full(a)),
            _ => full_prefix.clone(),
        };
        let range_end = prefix_end(&full_prefix);
        let resp = self
            .client
            .clone()
            .get(
                start,
                Some(
                    GetOptions::new()
                        .with_range(range_end)
                        .with_limit(limit as i64 + 1),
                ),
            )
            .await
            .map_err(etcd_err)?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut objects = resp
            .kvs()
            .iter()
            .map(|kv| self.object(kv))
            .collect::<Result<Vec<_>, _>>()?;
        let more = objects.len() > limit;
        objects.truncate(limit);
        Ok(ListPage {
            objects,
            revision,
            more,
        })
    }

    async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        let full_prefix = self.full(prefix);
        let range_end = prefix_end(&full_prefix);
        let resp = self
            .client
            .clone()
            .get(
                full_prefix,
                Some(GetOptions::new().with_range(range_end).with_count_only()),
            )
            .await
            .map_err(etcd_err)?;
        Ok(resp.count().max(0) as u64)
    }

    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<StoredObject, StoreError> {
        let full = self.full(key);
        let txn = Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                full.clone(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(full, None)]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| lease_error(e, lease))?;
        if !resp.succeeded() {
            let revision = self
                .else_object(resp.op_responses())?
                .map(|o| o.revision)
                .unwrap_or(0);
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
                revision,
            });
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok(StoredObject {
            key: key.to_string(),
            value,
            create_revision: revision,
            revision,
            lease,
        })
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
        expected_revision: i64,
    ) -> Result<StoredObject, StoreError> {
        let full = self.full(key);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                expected_revision,
            )])
            .and_then([
                TxnOp::put(
                    full.clone(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::get(full.clone(), None),
            ])
            .or_else([TxnOp::get(full, None)]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| lease_error(e, lease))?;
        let succeeded = resp.succeeded();
        let object = self.else_object(resp.op_responses())?;
        match (succeeded, object) {
            (true, Some(object)) => Ok(object),
            (true, None) => Err(StoreError::unavailable(
                BACKEND,
                "update lost its read-back",
            )),
            (false, None) => Err(StoreError::NotFound {
                key: key.to_string(),
            }),
            (false, Some(current)) => Err(StoreError::Conflict {
                key: key.to_string(),
                expected: expected_revision,
                current: current.revision,
            }),
        }
    }

    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<i64>,
    ) -> Result<StoredObject, StoreError> {
        let full = self.full(key);
        let compare = match expected_revision {
            Some(rev) => Compare::mod_revision(full.clone(), CompareOp::Equal, rev),
            // Exists at all.
            None => Compare::create_revision(full.clone(), CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::delete(
                full.clone(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full, None)]);
        let resp = self.client.clone().txn(txn).await.map_err(etcd_err)?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        if resp.succeeded() {
            for op in resp.op_responses() {
                if let TxnOpResponse::Delete(d) = op
                    && let Some(kv) = d.prev_kvs().first()
                {
                    let mut prev = self.object(kv)?;
                    prev.revision = revision;
                    return Ok(prev);
                }
            }
            return Err(StoreError::NotFound {
                key: key.to_string(),
            });
        }
        match self.else_object(resp.op_responses())? {
            None => Err(StoreError::NotFound {
                key: key.to_string(),
            }),
            Some(current) => Err(StoreError::Conflict {
                key: key.to_string(),
                expected: expected_revision.unwrap_or(0),
                current: current.revision,
            }),
        }
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<EventStream, StoreError> {
        if start_revision < 0 {
            return Err(StoreError::InvalidArgument {
                field: "start_revision",
                reason: format!("{start_revision} is negative"),
            });
        }
        let full_prefix = self.full(prefix);
        let mut options = WatchOptions::new().with_range(prefix_end(&full_prefix));
        if start_revision > 0 {
            options = options.with_start_revision(start_revision);
        }
        let mut stream = self
            .client
            .clone()
            .watch(full_prefix, Some(options))
            .await
            .map_err(etcd_err)?;
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    _ = tx.closed() => return,
                };
                let resp = match message {
                    Ok(Some(resp)) => resp,
                    Ok(None) => {
                        let _ = tx
                            .send(Err(StoreError::unavailable(
                                BACKEND,
                                "etcd ended the watch",
                            )))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(etcd_err(e))).await;
                        return;
                    }
                };
                if resp.compact_revision() > 0 {
                    let _ = tx
                        .send(Err(StoreError::Compacted {
                            requested: start_revision,
                            compact_revision: resp.compact_revision(),
                        }))
                        .await;
                    return;
                }
                if resp.canceled() {
                    let _ = tx
                        .send(Err(StoreError::unavailable(
                            BACKEND,
                            format!("etcd cancelled the watch: {}", resp.cancel_reason()),
                        )))
                        .await;
                    return;
                }
                match this.events(resp.events()) {
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
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn grant_lease(&self, ttl_seconds: i64) -> Result<Lease, StoreError> {
        if ttl_seconds <= 0 {
            return Err(StoreError::InvalidArgument {
                field: "ttl_seconds",
                reason: format!("{ttl_seconds} must be positive"),
            });
        }
        let resp = self
            .client
            .clone()
            .lease_grant(ttl_seconds, None)
            .await
            .map_err(etcd_err)?;
        Ok(Lease {
            id: resp.id(),
            ttl_seconds: resp.ttl(),
        })
    }

    async fn keep_alive(&self, lease: i64) -> Result<Lease, StoreError> {
        let (mut keeper, mut responses) = self
            .client
            .clone()
            .lease_keep_alive(lease)
            .await
            .map_err(|e| lease_error(e, lease))?;
        keeper
            .keep_alive()
            .await
            .map_err(|e| lease_error(e, lease))?;
        match responses
            .message()
            .await
            .map_err(|e| lease_error(e, lease))?
        {
            Some(resp) if resp.ttl() > 0 => Ok(Lease {
                id: lease,
                ttl_seconds: resp.ttl(),
            }),
            _ => Err(StoreError::LeaseNotFound { lease }),
        }
    }

    async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        match self.client.clone().lease_revoke(lease).await {
            Ok(_) => Ok(()),
            Err(e) => match lease_error(e, lease) {
                StoreError::LeaseNotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn compact(&self, revision: i64) -> Result<i64, StoreError> {
        let recorded = self.current(COMPACT_KEY).await?;
        let recorded_rev = recorded
            .as_ref()
            .and_then(|o| std::str::from_utf8(&o.value).ok()?.parse::<i64>().ok())
            .unwrap_or(0);
        if revision <= 0 {
            return Err(StoreError::InvalidArgument {
                field: "revision",
                reason: format!("{revision} must be positive"),
            });
        }
        if revision <= recorded_rev {
            return Ok(recorded_rev);
        }
        match self.client.clone().compact(revision, None).await {
            Ok(_) => {}
            Err(e) => match status_message(&e) {
                Some(m) if m.contains("future revision") => {
                    return Err(StoreError::InvalidArgument {
                        field: "revision",
                        reason: format!("{revision} is newer than the current revision"),
                    });
                }
                // Someone else compacted at or beyond it: the history is gone all the same.
                Some(m) if m.contains("compacted") => {}
                _ => return Err(etcd_err(e)),
            },
        }
        self.client
            .clone()
            .put(self.full(COMPACT_KEY), revision.to_string(), None)
            .await
            .map_err(etcd_err)?;
        Ok(revision)
    }

    async fn status(&self) -> Result<StoreStatus, StoreError> {
        let resp = self
            .client
            .clone()
            .get(self.full(COMPACT_KEY), None)
            .await
            .map_err(etcd_err)?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let compact_revision = resp
            .kvs()
            .first()
            .and_then(|kv| kv.value_str().ok()?.parse().ok())
            .unwrap_or(0);
        Ok(StoreStatus {
            backend: BACKEND,
            location: self.options.endpoints.join(","),
            revision,
            compact_revision,
        })
    }
}

impl EtcdStore {
    /// Converts one etcd watch response into batches, one per revision.
    fn events(&self, events: &[etcd_client::Event]) -> Result<Vec<Vec<StoreEvent>>, StoreError> {
        let mut batches: Vec<Vec<StoreEvent>> = Vec::new();
        for event in events {
            let Some(kv) = event.kv() else { continue };
            let store_event = match event.event_type() {
                EventType::Put => StoreEvent {
                    change: ChangeKind::Put,
                    object: self.object(kv)?,
                },
                // The watch does not ask for prev_kv (etcd reads it from disk per event, adding
                // milliseconds): the key and revision are what a delete carries here.
                EventType::Delete => {
                    let object = self.object(kv)?;
                    StoreEvent {
                        change: ChangeKind::Delete,
                        object,
                    }
                }
            };
            match batches.last_mut() {
                Some(last) if last[0].revision() == store_event.revision() => {
                    last.push(store_event)
                }
                _ => batches.push(vec![store_event]),
            }
        }
        Ok(batches)
    }
}

/// The smallest key greater than every key starting with `prefix` (etcd's range_end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
