//! WatchEndpointPolicy: revisioned deltas of the compiled policies of a node's identities
//! and of the ipcache.
//!
//! A subscriber remembers what its client holds: the identities it was sent and the
//! revision it is synced at. Each step ([`Subscriber::catch_up`]) turns that into the
//! current state: identities that became of interest get their full entry set (`replace`),
//! those that stopped being of interest are `removed`, the others get the net difference
//! between the policy the client holds and the current one, over just the entries that the
//! history records after its revision changed (the value the client holds of a key is the
//! `old` side of the first record changing it), so a step costs what changed, not the size
//! of the policies; likewise for ipcache prefixes. Live streaming and resuming are the
//! same code: a client resuming from revision R (with the epoch it was given) is a
//! subscriber synced at R whose held identities are the node's identities at R (rebuilt
//! from history). When the history no longer reaches R, or the epoch is another compiler
//! process's, the client gets a full snapshot (`reset`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::cidr::Cidr;
use crate::ipcache::IpcacheEntry;
use crate::policy_map::{CompiledPolicy, Enforcement, MapEntry, MapKey, NumericIdentity};
use crate::view::{Record, View};

/// Updates per message at most; a larger step spans several messages of one revision.
pub const MAX_UPDATES_PER_MESSAGE: usize = 256;
/// ipcache entries per message at most.
pub const MAX_IPCACHE_PER_MESSAGE: usize = 4096;

/// The change of one identity's policy, as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyUpdate {
    /// The identity.
    pub identity: NumericIdentity,
    /// Forget the identity.
    pub removed: bool,
    /// `upserts` is the complete set.
    pub replace: bool,
    /// Enforcement per direction.
    pub enforcement: Enforcement,
    /// Entries added or changed.
    pub upserts: Vec<(MapKey, MapEntry)>,
    /// Keys removed.
    pub deletes: Vec<MapKey>,
}

/// One message of the stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamMessage {
    /// Revision the message brings the client to.
    pub revision: i64,
    /// Forget everything first.
    pub reset: bool,
    /// The client holds the complete state at `revision` after this message.
    pub synced: bool,
    /// Policy changes.
    pub policy_updates: Vec<PolicyUpdate>,
    /// ipcache prefixes removed.
    pub ipcache_deletes: Vec<Cidr>,
    /// ipcache entries added or changed.
    pub ipcache_upserts: Vec<IpcacheEntry>,
}

/// Which identities a stream follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interest {
    /// The identities of a node's endpoints.
    Node(String),
    /// A fixed set.
    Identities(BTreeSet<NumericIdentity>),
}

/// One stream's knowledge of what its client holds.
#[derive(Clone, Debug)]
pub struct Subscriber {
    interest: Interest,
    held: BTreeSet<NumericIdentity>,
    revision: Option<i64>,
}

impl Subscriber {
    /// A new stream; `resume` is the revision the client says it is synced at (with a
    /// matching epoch), if any.
    pub fn new(interest: Interest, resume: Option<i64>, view: &View) -> Subscriber {
        let mut subscriber = Subscriber {
            interest,
            held: BTreeSet::new(),
            revision: None,
        };
        if let Some(revision) = resume.filter(|r| *r > 0)
            && let Some(records) = view.records_after(revision)
        {
            subscriber.held = subscriber.interest_at(view, &records);
            subscriber.revision = Some(revision);
        }
        subscriber
    }

    /// The revision the client is synced at (None before the first snapshot).
    pub fn revision(&self) -> Option<i64> {
        self.revision
    }

    fn node(&self) -> Option<&str> {
        match &self.interest {
            Interest::Node(node) => Some(node),
            Interest::Identities(_) => None,
        }
    }

    fn interest_now(&self, view: &View) -> BTreeSet<NumericIdentity> {
        match &self.interest {
            Interest::Node(node) => view.node_identities(node),
            Interest::Identities(ids) => ids
                .iter()
                .copied()
                .filter(|id| view.compiler().policy(*id).is_some())
                .collect(),
        }
    }

    /// The identities of interest before `records` happened.
    fn interest_at(&self, view: &View, records: &[Arc<Record>]) -> BTreeSet<NumericIdentity> {
        match &self.interest {
            Interest::Node(node) => {
                // Endpoints per identity now, minus the net change since the revision.
                let mut counts = view_counts(view, node);
                for record in records {
                    for (n, id, delta) in &record.interest {
                        if n == node {
                            *counts.entry(*id).or_default() -= *delta as i64;
                        }
                    }
                }
                counts
                    .into_iter()
                    .filter(|(_, count)| *count > 0)
                    .map(|(id, _)| id)
                    .collect()
            }
            Interest::Identities(ids) => {
                // Policies that existed then: those existing now and not created since,
                // plus those removed since.
                let mut then: BTreeSet<NumericIdentity> = self.interest_now(view);
                let mut seen = BTreeSet::new();
                for record in records {
                    for change in &record.policies {
                        if ids.contains(&change.identity) && seen.insert(change.identity) {
                            if change.existed {
                                then.insert(change.identity);
                            } else {
                                then.remove(&change.identity);
                            }
                        }
                    }
                }
                then
            }
        }
    }

    /// The messages that bring the client from what it holds to the view's state; empty
    /// when it is already there.
    pub fn catch_up(&mut self, view: &View) -> Vec<StreamMessage> {
        let records = self.revision.and_then(|r| view.records_after(r));
        let revision = view.revision();
        let now = self.interest_now(view);
        let node = self.node().map(str::to_owned);
        let node = node.as_deref();
        let (reset, updates, ipcache_deletes, ipcache_upserts) = match records {
            None => {
                let updates = now
                    .iter()
                    .filter_map(|id| view.compiler().policy(*id))
                    .map(|p| replace(p))
                    .collect();
                let upserts = view
                    .ipcache()
                    .entries()
                    .values()
                    .map(|e| e.for_node(node))
                    .collect();
                (true, updates, Vec::new(), upserts)
            }
            Some(records) => {
                if records.is_empty() && self.revision == Some(revision) {
                    return Vec::new();
                }
                let mut updates = Vec::new();
                for id in self.held.difference(&now) {
                    updates.push(removed(*id));
                }
                // What the client holds of each identity changed since its revision (and
                // that it still follows): whether it had a policy, its enforcement and the
                // value of every entry changed since.
                let mut before: BTreeMap<NumericIdentity, Held> = BTreeMap::new();
                let mut prefixes: BTreeMap<Cidr, Option<IpcacheEntry>> = BTreeMap::new();
                for record in &records {
                    for change in &record.policies {
                        if !self.held.contains(&change.identity) || !now.contains(&change.identity)
                        {
                            continue;
                        }
                        let held = before.entry(change.identity).or_insert_with(|| Held {
                            existed: change.existed,
                            enforcement: change.old_enforcement,
                            entries: BTreeMap::new(),
                        });
                        for entry in &change.entries {
                            held.entries
                                .entry(entry.key)
                                .or_insert_with(|| entry.old.clone());
                        }
                    }
                    for change in &record.ipcache {
                        prefixes
                            .entry(change.prefix)
                            .or_insert_with(|| change.old.clone());
                    }
                }
                for id in &now {
                    let current = view.compiler().policy(*id);
                    if !self.held.contains(id) {
                        if let Some(p) = current {
                            updates.push(replace(p));
                        }
                        continue;
                    }
                    let Some(held) = before.remove(id) else {
                        continue;
                    };
                    match (held.existed, current) {
                        (true, Some(new)) => {
                            let mut upserts = Vec::new();
                            let mut deletes = Vec::new();
                            for (key, old) in held.entries {
                                let entry = new.entries.get(&key);
                                if old.as_ref() == entry {
                                    continue;
                                }
                                match entry {
                                    Some(entry) => upserts.push((key, entry.clone())),
                                    None => deletes.push(key),
                                }
                            }
                            if !upserts.is_empty()
                                || !deletes.is_empty()
                                || held.enforcement != new.enforcement
                            {
                                updates.push(PolicyUpdate {
                                    identity: *id,
                                    removed: false,
                                    replace: false,
                                    enforcement: new.enforcement,
                                    upserts,
                                    deletes,
                                });
                            }
                        }
                        (false, Some(new)) => updates.push(replace(new)),
                        // The identity is gone while an endpoint still names it: forget it.
                        (true, None) => updates.push(removed(*id)),
                        (false, None) => {}
                    }
                }
                let mut deletes = Vec::new();
                let mut upserts = Vec::new();
                for (prefix, old) in prefixes {
                    let old = old.map(|e| e.for_node(node));
                    let new = view
                        .ipcache()
                        .entries()
                        .get(&prefix)
                        .map(|e| e.for_node(node));
                    if old == new {
                        continue;
                    }
                    match new {
                        Some(entry) => upserts.push(entry),
                        None => deletes.push(prefix),
                    }
                }
                (false, updates, deletes, upserts)
            }
        };
        self.held = now;
        self.revision = Some(revision);
        chunk(revision, reset, updates, ipcache_deletes, ipcache_upserts)
    }
}

/// What a client held of an identity at its revision, as far as changes since touched it.
struct Held {
    existed: bool,
    enforcement: Enforcement,
    /// Each changed key's entry then (None: absent).
    entries: BTreeMap<MapKey, Option<MapEntry>>,
}

fn view_counts(view: &View, node: &str) -> BTreeMap<NumericIdentity, i64> {
    let mut counts = BTreeMap::new();
    for endpoint in view.endpoints() {
        if endpoint.key.node_name == node && endpoint.identity != 0 {
            *counts.entry(endpoint.identity).or_default() += 1;
        }
    }
    counts
}

fn removed(identity: NumericIdentity) -> PolicyUpdate {
    PolicyUpdate {
        identity,
        removed: true,
        replace: false,
        enforcement: Enforcement::default(),
        upserts: Vec::new(),
        deletes: Vec::new(),
    }
}

fn replace(policy: &CompiledPolicy) -> PolicyUpdate {
    PolicyUpdate {
        identity: policy.identity,
        removed: false,
        replace: true,
        enforcement: policy.enforcement,
        upserts: policy
            .entries
            .iter()
            .map(|(k, e)| (*k, e.clone()))
            .collect(),
        deletes: Vec::new(),
    }
}

/// Splits a step into messages; the last one is synced.
fn chunk(
    revision: i64,
    reset: bool,
    updates: Vec<PolicyUpdate>,
    ipcache_deletes: Vec<Cidr>,
    ipcache_upserts: Vec<IpcacheEntry>,
) -> Vec<StreamMessage> {
    let mut messages = vec![StreamMessage {
        revision,
        reset,
        ipcache_deletes,
        ..StreamMessage::default()
    }];
    for update in updates {
        let last = messages.last_mut().expect("one message");
        if last.policy_updates.len() >= MAX_UPDATES_PER_MESSAGE {
            messages.push(StreamMessage {
                revision,
                ..StreamMessage::default()
            });
        }
        messages
            .last_mut()
            .expect("one message")
            .policy_updates
            .push(update);
    }
    for entry in ipcache_upserts {
        let last = messages.last_mut().expect("one message");
        if last.ipcache_upserts.len() >= MAX_IPCACHE_PER_MESSAGE {
            messages.push(StreamMessage {
                revision,
                ..StreamMessage::default()
            });
        }
        messages
            .last_mut()
            .expect("one message")
            .ipcache_upserts
            .push(entry);
    }
    if let Some(last) = messages.last_mut() {
        last.synced = true;
    }
    messages
}

/// What a stream's client holds after applying its messages in order — identity →
/// (enforcement, entries), the ipcache, the last synced revision: the model the tests (unit
/// and property) compare with the view, and the semantics an agent implements.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Replica {
    /// Compiled policy per identity.
    pub policies: BTreeMap<NumericIdentity, (Enforcement, BTreeMap<MapKey, MapEntry>)>,
    /// The ipcache as the client's node sees it.
    pub ipcache: BTreeMap<Cidr, IpcacheEntry>,
    /// The revision of the last `synced` message.
    pub revision: i64,
}

impl Replica {
    /// Applies messages as a client does: `reset` starts over, `removed` drops an identity,
    /// `replace` clears its entries before the upserts, deletes go before upserts.
    pub fn apply(&mut self, messages: &[StreamMessage]) {
        for m in messages {
            if m.reset {
                *self = Replica::default();
            }
            for u in &m.policy_updates {
                if u.removed {
                    self.policies.remove(&u.identity);
                    continue;
                }
                let held = self.policies.entry(u.identity).or_default();
                if u.replace {
                    held.1.clear();
                }
                held.0 = u.enforcement;
                for k in &u.deletes {
                    held.1.remove(k);
                }
                for (k, e) in &u.upserts {
                    held.1.insert(*k, e.clone());
                }
            }
            for p in &m.ipcache_deletes {
                self.ipcache.remove(p);
            }
            for e in &m.ipcache_upserts {
                self.ipcache.insert(e.prefix, e.clone());
            }
            if m.synced {
                self.revision = m.revision;
            }
        }
    }

    /// What a client of `node` must hold once synced to the view's revision.
    pub fn of(view: &View, node: &str) -> Replica {
        let mut replica = Replica {
            revision: view.revision(),
            ..Replica::default()
        };
        for id in view.node_identities(node) {
            if let Some(p) = view.compiler().policy(id) {
                replica
                    .policies
                    .insert(id, (p.enforcement, p.entries.clone()));
            }
        }
        for (prefix, e) in view.ipcache().entries() {
            replica.ipcache.insert(*prefix, e.for_node(Some(node)));
        }
        replica
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::CompilerConfig;
    use crate::ipcache::EndpointRef;
    use crate::labels::Labels;
    use crate::policy::{PolicyKey, parse_documents};
    use crate::view::{Change, EndpointRecord};

    fn endpoint(node: &str, id: u32, identity: u32, ip: &str) -> Change {
        Change::UpsertEndpoint(EndpointRecord {
            key: EndpointRef {
                node_name: node.into(),
                endpoint_id: id,
                ..EndpointRef::default()
            },
            identity,
            addresses: vec![ip.parse().unwrap()],
        })
    }

    fn policy(yaml: &str) -> Change {
        let out = parse_documents(yaml, "default");
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        Change::UpsertPolicy(Box::new(out.policies.into_iter().next().unwrap()))
    }

    const DENY_ALL: &str = "apiVersion: kino.io/v1\nkind: KinoNetworkPolicy\nmetadata: {name: deny}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress: [{}]\n";

    #[test]
    fn live_and_resumed_streams_converge() {
        let mut view = View::new(CompilerConfig::default(), 100);
        view.apply(
            10,
            vec![
                Change::UpsertIdentity(
                    300,
                    Labels::parse_list("container:namespace=default,container:app=web").unwrap(),
                ),
                Change::UpsertIdentity(
                    301,
                    Labels::parse_list("container:namespace=default,container:app=db").unwrap(),
                ),
                endpoint("n1", 1, 300, "10.0.1.1"),
            ],
        );
        view.reset_history();
        let mut live = Subscriber::new(Interest::Node("n1".into()), None, &view);
        let mut client = Replica::default();
        let first = live.catch_up(&view);
        assert!(first[0].reset && first.last().unwrap().synced);
        client.apply(&first);
        assert_eq!(client, Replica::of(&view, "n1"));
        let resume_at = client.revision;
        let snapshot_client = Replica::of(&view, "n1");

        view.apply(11, vec![policy(DENY_ALL)]);
        let step = live.catch_up(&view);
        assert!(!step[0].reset);
        assert_eq!(step[0].policy_updates.len(), 1);
        client.apply(&step);
        assert_eq!(client, Replica::of(&view, "n1"));
        assert!(live.catch_up(&view).is_empty());

        view.apply(
            12,
            vec![
                endpoint("n1", 2, 301, "10.0.1.2"),
                endpoint("n2", 1, 300, "10.0.2.1"),
            ],
        );
        view.apply(
            13,
            vec![Change::DeletePolicy(PolicyKey {
                namespace: "default".into(),
                name: "deny".into(),
            })],
        );
        view.apply(14, vec![Change::DeleteEndpoint("n1".into(), 1)]);
        client.apply(&live.catch_up(&view));
        assert_eq!(client, Replica::of(&view, "n1"));

        // A client that disconnected at `resume_at` resumes without a reset.
        let mut resumed = Subscriber::new(Interest::Node("n1".into()), Some(resume_at), &view);
        let mut old_client = snapshot_client;
        let messages = resumed.catch_up(&view);
        assert!(!messages[0].reset, "{messages:?}");
        old_client.apply(&messages);
        assert_eq!(old_client, Replica::of(&view, "n1"));

        // A revision the history does not reach gets a snapshot.
        let mut stale = Subscriber::new(Interest::Node("n1".into()), Some(5), &view);
        assert!(stale.catch_up(&view)[0].reset);
    }
}
