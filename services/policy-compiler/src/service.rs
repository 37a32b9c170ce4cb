//! The domain behind `kino.policy.v1`: policies stored in the datastore, identities, the
//! compiler's view (fed by the datastore follower, `sync.rs`), streams and trace. The gRPC
//! adapter (`grpc.rs`) translates; nothing here names the layers above.
//! [`gauges`] report the view to Prometheus at scrape time.

pub mod gauges;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime};

use kino_api::policy as pb;
use tokio::sync::watch;

use crate::compile::CompilerConfig;
use crate::convert::{policy_to_proto, timestamp};
use crate::error::PolicyError;
use crate::identity::allocator::{Allocation, Allocator, IdentityRecord, Release};
use crate::identity::{self, is_endpoint_range};
use crate::labels::Labels;
use crate::policy::model::{PolicyKey, PolicyKind, Protocol};
use crate::policy::{ParseOutcome, parse_documents_until, validate};
use crate::policy_map::{CompiledPolicy, NumericIdentity};
use crate::realization::{self, NodeReport, Realization, RealizationQuery};
use crate::selector::Selector;
use crate::store::{KIND_POLICY, KIND_REALIZATION, Store, WriteError, decode};
use crate::stream::{Interest, StreamMessage, Subscriber};
use crate::trace::{self, Trace, TraceSubject};
use crate::view::View;

/// Default page size of list calls.
pub const DEFAULT_PAGE: usize = 500;
/// Largest page size of list calls.
pub const MAX_PAGE: usize = 5000;
/// Longest GetPolicyRealization waits for the view to reach the revision asked about (a
/// caller that polls asks again).
pub const REALIZATION_VIEW_WAIT: Duration = Duration::from_secs(1);

/// Settings of the service.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// Compiler settings.
    pub compiler: CompilerConfig,
    /// How long an unused identity lives before it is deleted.
    pub identity_grace: Duration,
    /// How often identities are garbage-collected.
    pub gc_interval: Duration,
    /// Steps of change history kept for resuming streams.
    pub history_limit: usize,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            compiler: CompilerConfig::default(),
            identity_grace: Duration::from_secs(15 * 60),
            gc_interval: Duration::from_secs(60),
            history_limit: 10_000,
        }
    }
}

/// What an import did to one policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportAction {
    /// Created.
    Created,
    /// Replaced.
    Updated,
    /// Same content; nothing written.
    Unchanged,
}

/// The outcome of importing one document.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The policy.
    pub key: PolicyKey,
    /// Its kind.
    pub kind: PolicyKind,
    /// What happened.
    pub action: ImportAction,
    /// Datastore revision of the stored policy.
    pub revision: i64,
}

/// Called before each step of every document parse with the documents done so far; for
/// tests that need a parse held at a known point.
pub type ParseObserver = Arc<dyn Fn(usize) + Send + Sync>;

/// Counts of document parses (ImportPolicies, ValidatePolicies).
#[derive(Debug, Default)]
pub struct ParseCounts {
    /// Parses whose caller went away before they finished.
    pub abandoned: AtomicU64,
    /// Parses that stopped early because their caller went away.
    pub cancelled: AtomicU64,
    /// Parses that ran to the end.
    pub finished: AtomicU64,
}

#[derive(Default)]
struct ParseHooks {
    observer: std::sync::Mutex<Option<ParseObserver>>,
    counts: ParseCounts,
}

impl std::fmt::Debug for ParseHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParseHooks")
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

/// Sets its flag when dropped before [`CancelOnDrop::finish`]: the request future holding
/// it was dropped (the caller went away), so the parse it started should stop.
struct CancelOnDrop {
    flag: Arc<AtomicBool>,
    hooks: Arc<ParseHooks>,
    finished: bool,
}

impl CancelOnDrop {
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.finished {
            self.flag.store(true, Ordering::SeqCst);
            self.hooks.counts.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The policy compiler service.
#[derive(Debug)]
pub struct PolicyService {
    parse_hooks: Arc<ParseHooks>,
    store: Store,
    allocator: Allocator,
    view: RwLock<View>,
    revisions: watch::Sender<i64>,
    ready: AtomicBool,
    epoch: String,
    options: ServiceOptions,
}

impl PolicyService {
    /// A service over the datastore `store`; the datastore follower
    /// (`sync::follow_datastore`) must run for the compiled state.
    pub fn new(store: Store, options: ServiceOptions) -> PolicyService {
        let (revisions, _) = watch::channel(0);
        PolicyService {
            parse_hooks: Arc::default(),
            allocator: Allocator::new(store.clone(), options.identity_grace),
            store,
            view: RwLock::new(View::new(options.compiler, options.history_limit)),
            revisions,
            ready: AtomicBool::new(false),
            epoch: new_epoch(),
            options,
        }
    }

    /// The datastore client.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The identity allocator.
    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    /// The settings.
    pub fn options(&self) -> &ServiceOptions {
        &self.options
    }

    /// This process's stream epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Reads the view.
    pub fn view(&self) -> RwLockReadGuard<'_, View> {
        self.view.read().expect("view lock")
    }

    /// Changes the view (the datastore follower) and tells streams.
    pub fn update_view<R>(&self, f: impl FnOnce(&mut View) -> R) -> R {
        let (result, revision) = {
            let mut view = self.view.write().expect("view lock");
            let result = f(&mut view);
            (result, view.revision())
        };
        self.revisions.send_replace(revision);
        result
    }

    /// Marks the view loaded.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        let revision = self.view().revision();
        self.revisions.send_replace(revision);
    }

    /// True once the view reflects the datastore.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Notifications of the view's revision.
    pub fn revisions(&self) -> watch::Receiver<i64> {
        self.revisions.subscribe()
    }

    fn require_ready(&self) -> Result<(), PolicyError> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(PolicyError::Unavailable(
                "the compiler is still loading policies, identities and endpoints from the datastore; retry shortly (is kino-datastore-gateway reachable at --datastore?)".into(),
            ))
        }
    }

    /// Waits until the view's revision is at least `revision` (or the timeout passes).
    pub async fn wait_for_revision(&self, revision: i64, timeout: Duration) -> bool {
        let mut rx = self.revisions();
        let wait = async {
            loop {
                if self.is_ready() && *rx.borrow_and_update() >= revision {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    // ---- policies ----------------------------------------------------------------------

    /// Sets the [`ParseObserver`] every later parse calls (tests).
    pub fn set_parse_observer(&self, observer: Option<ParseObserver>) {
        *self.parse_hooks.observer.lock().expect("observer lock") = observer;
    }

    /// How parses ended so far.
    pub fn parse_counts(&self) -> &ParseCounts {
        &self.parse_hooks.counts
    }

    /// Parses and validates documents on a blocking thread, off the async runtime (a large
    /// document must not stall health checks and other RPCs). Dropping the returned future
    /// (the caller went away) stops the parse at its next step instead of letting it run
    /// to the end. The text's size and nesting are bounded before any parser runs.
    pub async fn parse(
        &self,
        text: String,
        default_namespace: String,
    ) -> Result<ParseOutcome, PolicyError> {
        let flag = Arc::new(AtomicBool::new(false));
        let guard = CancelOnDrop {
            flag: flag.clone(),
            hooks: self.parse_hooks.clone(),
            finished: false,
        };
        let hooks = self.parse_hooks.clone();
        let observer = hooks.observer.lock().expect("observer lock").clone();
        let bytes = text.len();
        let parse = tokio::task::spawn_blocking(move || {
            let result = parse_documents_until(&text, &default_namespace, &mut |done| {
                if let Some(observe) = &observer {
                    observe(done);
                }
                !flag.load(Ordering::SeqCst)
            });
            match &result {
                Ok(_) => hooks.counts.finished.fetch_add(1, Ordering::SeqCst),
                Err(cancelled) => {
                    tracing::info!(
                        bytes,
                        documents_done = cancelled.documents_done,
                        "policy parse stopped: the caller went away"
                    );
                    hooks.counts.cancelled.fetch_add(1, Ordering::SeqCst)
                }
            };
            result
        });
        let result = parse.await;
        guard.finish();
        match result {
            Ok(Ok(outcome)) => Ok(outcome),
            // Only the guard cancels, and it is still held here.
            Ok(Err(_)) => Err(PolicyError::Internal(
                "the policy parse was cancelled while its caller waited".into(),
            )),
            Err(e) => Err(PolicyError::Internal(format!(
                "the policy parse failed: {e}"
            ))),
        }
    }

    /// Parses and validates documents without storing anything.
    pub async fn validate(
        &self,
        text: String,
        default_namespace: String,
    ) -> Result<ParseOutcome, PolicyError> {
        self.parse(text, default_namespace).await
    }

    /// Parses, validates and stores documents: all or nothing on validation.
    pub async fn import(
        &self,
        text: String,
        default_namespace: String,
    ) -> Result<(Vec<Imported>, i64), PolicyError> {
        let outcome = self.parse(text, default_namespace).await?;
        if !outcome.errors.is_empty() {
            return Err(PolicyError::InvalidDocuments(outcome.errors));
        }
        let mut seen = BTreeSet::new();
        for (i, policy) in outcome.policies.iter().enumerate() {
            if !seen.insert(policy.key.clone()) {
                return Err(PolicyError::InvalidDocuments(vec![
                    crate::policy::DocumentError {
                        document: i,
                        policy: Some(policy.key.clone()),
                        path: "metadata.name".into(),
                        message: format!("{} appears twice in the submitted documents", policy.key),
                        line: 0,
                    },
                ]));
            }
        }
        // Every record must fit the datastore before the first is written: a policy too big
        // to store is the request's fault, and an import is all or nothing on it.
        let limit = self.store.max_value_bytes().await?;
        let oversized: Vec<crate::policy::DocumentError> = outcome
            .policies
            .iter()
            .enumerate()
            .filter_map(|(i, policy)| {
                let mut value = policy_to_proto(policy);
                value.import_time = Some(timestamp(SystemTime::now()));
                let size = prost::Message::encoded_len(&value);
                (size > limit).then(|| crate::policy::DocumentError {
                    document: i,
                    policy: Some(policy.key.clone()),
                    path: String::new(),
                    message: format!(
                        "{} is {size} bytes once stored (the document and its parsed rules), above the datastore's limit of {limit} bytes per record (kino-datastore-gateway --max-value-bytes); split its rules into several policies",
                        policy.key
                    ),
                    line: 0,
                })
            })
            .collect();
        if !oversized.is_empty() {
            return Err(PolicyError::InvalidDocuments(oversized));
        }
        let mut imported = Vec::new();
        let mut last_revision = 0;
        for policy in &outcome.policies {
            let mut value = policy_to_proto(policy);
            let key = &policy.key;
            let what = format!("policy {key}");
            let mut done = None;
            for _ in 0..8 {
                let existing = self
                    .store
                    .get::<pb::Policy>(&key.namespace, &key.name)
                    .await?;
                value.import_time = Some(timestamp(SystemTime::now()));
                let result = match &existing {
                    Some(old) => {
                        let mut same = old.value.clone();
                        same.import_time = None;
                        let mut new = value.clone();
                        new.import_time = None;
                        if same == new {
                            done = Some((ImportAction::Unchanged, old.revision));
                            break;
                        }
                        self.store
                            .update(&key.namespace, &key.name, &value, 0, old.revision)
                            .await
                            .map(|s| (ImportAction::Updated, s.revision))
                    }
                    None => self
                        .store
                        .create(&key.namespace, &key.name, &value, 0)
                        .await
                        .map(|s| (ImportAction::Created, s.revision)),
                };
                match result {
                    Ok(r) => {
                        done = Some(r);
                        break;
                    }
                    Err(WriteError::Exists | WriteError::Conflict | WriteError::NotFound) => {
                        continue;
                    }
                    Err(e @ (WriteError::Failed(_) | WriteError::LeaseGone)) => {
                        return Err(partial(e.into_error(&what), &imported));
                    }
                }
            }
            let Some((action, revision)) = done else {
                return Err(partial(
                    PolicyError::Aborted(format!("{what}: changed concurrently too often; retry")),
                    &imported,
                ));
            };
            tracing::info!(policy = %key, ?action, revision, "imported policy");
            last_revision = last_revision.max(revision);
            imported.push(Imported {
                key: key.clone(),
                kind: policy.kind,
                action,
                revision,
            });
        }
        Ok((imported, last_revision))
    }

    /// One stored policy and its revision.
    pub async fn get_policy(&self, key: &PolicyKey) -> Result<(pb::Policy, i64), PolicyError> {
        check_key(key)?;
        self.store
            .get::<pb::Policy>(&key.namespace, &key.name)
            .await?
            .map(|s| (s.value, s.revision))
            .ok_or_else(|| PolicyError::NotFound(format!("policy {key} does not exist")))
    }

    /// Stored policies sorted by namespace then name, one page, with the next page's token
    /// and the datastore revision.
    pub async fn list_policies(
        &self,
        namespace: &str,
        kind: Option<PolicyKind>,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<pb::Policy>, String, i64), PolicyError> {
        let page_size = page_size_or_default(page_size)?;
        let (resources, revision) = self.store.list_all(KIND_POLICY, namespace).await?;
        let mut policies: Vec<pb::Policy> = Vec::new();
        for resource in &resources {
            if !namespace.is_empty() && resource.namespace != namespace {
                continue;
            }
            match decode::<pb::Policy>(resource) {
                Ok(stored) => {
                    let want = match kind {
                        None => true,
                        Some(PolicyKind::Kino) => {
                            stored.value.kind == pb::PolicyKind::KinoNetworkPolicy as i32
                        }
                        Some(PolicyKind::K8s) => {
                            stored.value.kind == pb::PolicyKind::K8sNetworkPolicy as i32
                        }
                    };
                    if want {
                        policies.push(stored.value);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable policy"),
            }
        }
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let start = match page_token {
            "" => 0,
            token => {
                let (ns, name) = token.split_once('/').ok_or_else(|| {
                    PolicyError::invalid("page_token", "not a token from a previous page")
                })?;
                policies.partition_point(|p| (p.namespace.as_str(), p.name.as_str()) <= (ns, name))
            }
        };
        let page: Vec<pb::Policy> = policies
            .iter()
            .skip(start)
            .take(page_size)
            .cloned()
            .collect();
        let next = if start + page.len() < policies.len() {
            page.last()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((page, next, revision))
    }

    /// Deletes a stored policy; returns it and the revision of the deletion.
    pub async fn delete_policy(&self, key: &PolicyKey) -> Result<(pb::Policy, i64), PolicyError> {
        check_key(key)?;
        match self
            .store
            .delete(KIND_POLICY, &key.namespace, &key.name, 0)
            .await
        {
            Ok((resource, revision)) => {
                tracing::info!(policy = %key, revision, "deleted policy");
                let policy = decode::<pb::Policy>(&resource)
                    .map(|s| s.value)
                    .unwrap_or_default();
                Ok((policy, revision))
            }
            Err(WriteError::NotFound) => Err(PolicyError::NotFound(format!(
                "policy {key} does not exist"
            ))),
            Err(e) => Err(e.into_error(&format!("policy {key}"))),
        }
    }

    // ---- identities --------------------------------------------------------------------

    /// The identity of a label set, allocated if new.
    pub async fn allocate_identity(&self, labels: &Labels) -> Result<Allocation, PolicyError> {
        self.allocator.allocate(labels).await
    }

    /// An identity by id.
    pub async fn get_identity(&self, id: NumericIdentity) -> Result<IdentityRecord, PolicyError> {
        if let Some(info) = self.view().compiler().identities().get(&id)
            && matches!(info.class, identity::IdentityClass::Cidr(_))
        {
            return Ok(IdentityRecord {
                id,
                labels: info.labels.clone(),
                reserved: false,
                create_time: None,
                unused_since: None,
            });
        }
        self.allocator
            .get(id)
            .await?
            .ok_or_else(|| PolicyError::NotFound(format!("identity {id} does not exist")))
    }

    /// An identity by its exact label set.
    pub async fn get_identity_by_labels(
        &self,
        labels: &Labels,
    ) -> Result<IdentityRecord, PolicyError> {
        self.allocator
            .get_by_labels(labels)
            .await?
            .ok_or_else(|| PolicyError::NotFound(format!("no identity has the labels {labels}")))
    }

    /// Identities (reserved first, then stored), filtered, one page.
    pub async fn list_identities(
        &self,
        selector: Option<&Selector>,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<IdentityRecord>, String), PolicyError> {
        let page_size = page_size_or_default(page_size)?;
        let after: NumericIdentity = match page_token {
            "" => 0,
            token => token.parse().map_err(|_| {
                PolicyError::invalid("page_token", "not a token from a previous page")
            })?,
        };
        let mut all: Vec<IdentityRecord> = identity::all_reserved()
            .iter()
            .map(IdentityRecord::reserved)
            .collect();
        all.extend(self.allocator.list().await?.into_iter().map(|(r, _)| r));
        let matching: Vec<IdentityRecord> = all
            .into_iter()
            .filter(|r| r.id > after)
            .filter(|r| selector.is_none_or(|s| s.matches(&r.labels)))
            .collect();
        let page: Vec<IdentityRecord> = matching.iter().take(page_size).cloned().collect();
        let next = if matching.len() > page.len() {
            page.last().map(|r| r.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((page, next))
    }

    /// Ends the caller's reference to an identity.
    pub async fn release_identity(&self, id: NumericIdentity) -> Result<Release, PolicyError> {
        if id == 0 {
            return Err(PolicyError::invalid("id", "0 is not an identity"));
        }
        let in_use = identity::reserved(id).is_some() || self.view().identity_in_use(id);
        self.allocator.release(id, in_use).await
    }

    // ---- compiled policy ---------------------------------------------------------------

    /// The compiled policy of an endpoint identity, its labels and the view's revision.
    pub fn endpoint_policy(
        &self,
        id: NumericIdentity,
    ) -> Result<(Arc<CompiledPolicy>, Labels, i64), PolicyError> {
        self.require_ready()?;
        let view = self.view();
        if let Some(policy) = view.compiler().policy(id) {
            let labels = view.compiler().identities()[&id].labels.clone();
            return Ok((policy.clone(), labels, view.revision()));
        }
        let why = if identity::reserved(id).is_some() {
            format!(
                "identity {id} is reserved; only endpoint identities ({}..) have a policy",
                identity::MIN_ENDPOINT_IDENTITY
            )
        } else if id & identity::LOCAL_SCOPE != 0 {
            format!("identity {id} is a CIDR identity; only endpoint identities have a policy")
        } else if is_endpoint_range(id) {
            format!("identity {id} does not exist (allocate it first, or see `kino identity list`)")
        } else {
            format!(
                "{id} is not an endpoint identity ({}..={})",
                identity::MIN_ENDPOINT_IDENTITY,
                identity::MAX_ENDPOINT_IDENTITY
            )
        };
        Err(PolicyError::NotFound(why))
    }

    /// Explains a flow.
    pub fn trace(
        &self,
        source: &TraceSubject,
        destination: &TraceSubject,
        protocol: Protocol,
        port: u16,
    ) -> Result<Trace, PolicyError> {
        self.require_ready()?;
        trace::trace(&self.view(), source, destination, protocol, port)
    }

    // ---- realization -------------------------------------------------------------------

    /// Compares what the agents report they enforce with a revision (0: the view's), for
    /// the endpoints the query selects. Waits a little for the view to reach the revision.
    pub async fn policy_realization(
        &self,
        mut query: RealizationQuery,
    ) -> Result<Realization, PolicyError> {
        self.require_ready()?;
        for key in &query.policies {
            check_key(key)?;
        }
        if query.revision < 0 {
            return Err(PolicyError::invalid("revision", "negative"));
        }
        if query.revision == 0 {
            query.revision = self.view().revision();
        }
        self.wait_for_revision(query.revision, REALIZATION_VIEW_WAIT)
            .await;
        let (records, _) = self.store.list_all(KIND_REALIZATION, "").await?;
        let mut reports = std::collections::BTreeMap::new();
        for record in &records {
            // One unreadable report must not hide the others: that node counts as silent.
            match decode::<pb::PolicyRealization>(record) {
                Ok(stored) => {
                    let report = NodeReport {
                        revision: stored.value.revision,
                        endpoints: stored
                            .value
                            .endpoints
                            .iter()
                            .map(|e| (e.endpoint_id, (e.identity, e.realized_revision)))
                            .collect(),
                    };
                    reports.insert(stored.value.node_name.clone(), report);
                }
                Err(e) => {
                    tracing::warn!(node = %record.name, error = %e, "ignoring an unreadable PolicyRealization record");
                }
            }
        }
        Ok(realization::compare(&self.view(), &query, &reports))
    }

    // ---- streams -----------------------------------------------------------------------

    /// A stream subscriber; the resume point is honoured only with this process's epoch.
    pub fn subscribe(
        &self,
        interest: Interest,
        resume_revision: i64,
        resume_epoch: &str,
    ) -> Subscriber {
        let resume = (resume_revision > 0 && resume_epoch == self.epoch).then_some(resume_revision);
        Subscriber::new(interest, resume, &self.view())
    }

    /// The next messages of a stream (empty when it is up to date).
    pub fn catch_up(&self, subscriber: &mut Subscriber) -> Vec<StreamMessage> {
        subscriber.catch_up(&self.view())
    }
}

fn new_epoch() -> String {
    let mut bytes = [0u8; 8];
    let rng = ring::rand::SystemRandom::new();
    if ring::rand::SecureRandom::fill(&rng, &mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        bytes = (nanos ^ std::process::id() as u64).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_key(key: &PolicyKey) -> Result<(), PolicyError> {
    validate::check_name("name", &key.name).map_err(|r| PolicyError::invalid("policy.name", r))?;
    if !key.namespace.is_empty() {
        validate::check_name("namespace", &key.namespace)
            .map_err(|r| PolicyError::invalid("policy.namespace", r))?;
    }
    Ok(())
}

fn page_size_or_default(size: usize) -> Result<usize, PolicyError> {
    match size {
        0 => Ok(DEFAULT_PAGE),
        n if n > MAX_PAGE => Err(PolicyError::invalid(
            "page_size",
            format!("{n} is above {MAX_PAGE}"),
        )),
        n => Ok(n),
    }
}

/// An error after some policies were stored: say which, keeping the failure's own code
/// (what the caller does about it is the same).
fn partial(error: PolicyError, imported: &[Imported]) -> PolicyError {
    if imported.is_empty() {
        return error;
    }
    let stored: Vec<String> = imported.iter().map(|i| i.key.to_string()).collect();
    let note = format!(
        " (already stored before the failure: {}; import again to finish)",
        stored.join(", ")
    );
    match error {
        PolicyError::Invalid { field, reason } => PolicyError::Invalid {
            field,
            reason: reason + &note,
        },
        PolicyError::NotFound(m) => PolicyError::NotFound(m + &note),
        PolicyError::Aborted(m) => PolicyError::Aborted(m + &note),
        PolicyError::FailedPrecondition(m) => PolicyError::FailedPrecondition(m + &note),
        PolicyError::Exhausted(m) => PolicyError::Exhausted(m + &note),
        PolicyError::Unavailable(m) => PolicyError::Unavailable(m + &note),
        PolicyError::Corrupt(m) => PolicyError::Corrupt(m + &note),
        PolicyError::Internal(m) => PolicyError::Internal(m + &note),
        // Validation happens before anything is written.
        documents @ PolicyError::InvalidDocuments(_) => documents,
    }
}
