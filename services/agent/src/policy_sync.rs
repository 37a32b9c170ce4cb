//! The policy sync: follows the policy-compiler's `WatchEndpointPolicy` stream for this node
//! and applies it to the datapath through the endpoint manager. The compiler tracks the
//! node's Endpoint resources, so one stream covers endpoints created later (their identity
//! arrives as a replace update once their record is published). Reconnects with backoff and
//! resumes from the last synced (epoch, revision). After each synced step it hands what
//! the datapath now realizes to [`crate::policy_realization`], which reports it.

use std::sync::Arc;
use std::time::Duration;

use kino_api::datastore::datastore_service_client::DatastoreServiceClient;
use kino_api::policy::WatchEndpointPolicyRequest;
use kino_api::policy::policy_service_client::PolicyServiceClient;
use kino_service_kit::TracedChannel;
use tokio::sync::watch;

use crate::endpoint::manager::EndpointManager;
use crate::policy_realization::{self, Report};

/// First reconnect delay.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where a reconnect resumes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// Epoch of the compiler process the revision comes from.
    pub epoch: String,
    /// Last synced revision applied (0: start with a snapshot).
    pub revision: i64,
}

/// A peer service the sync talks to, and its address (for messages).
#[derive(Clone)]
pub struct Peer<C> {
    /// The client.
    pub client: C,
    /// The service's address.
    pub target: String,
}

/// Runs the sync (and the reporting of what it realized) until the task is dropped: follows
/// `compiler`'s stream and reports to `datastore`.
pub async fn run(
    manager: Arc<EndpointManager>,
    compiler: Peer<PolicyServiceClient<TracedChannel>>,
    datastore: Peer<DatastoreServiceClient<TracedChannel>>,
) {
    let (reports, receiver) = watch::channel(None);
    let reporter = tokio::spawn(policy_realization::run(
        datastore.client,
        datastore.target,
        manager.node().to_owned(),
        receiver,
    ));
    // Stops the reporter when this task is dropped.
    let _reporter = AbortOnDrop(reporter);
    let mut resume = Resume::default();
    let mut backoff = MIN_BACKOFF;
    loop {
        match follow(&manager, &compiler, &mut resume, &mut backoff, &reports).await {
            Ok(()) => tracing::warn!(
                compiler = compiler.target.as_str(),
                "policy stream ended; reconnecting"
            ),
            Err(e) => tracing::warn!(
                compiler = compiler.target.as_str(),
                error = %e,
                retry_in = ?backoff,
                "policy stream failed; reconnecting"
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One stream: opens it and applies messages until it ends or fails.
async fn follow(
    manager: &EndpointManager,
    compiler: &Peer<PolicyServiceClient<TracedChannel>>,
    resume: &mut Resume,
    backoff: &mut Duration,
    reports: &watch::Sender<Option<Report>>,
) -> Result<(), String> {
    let request = WatchEndpointPolicyRequest {
        node_name: manager.node().to_owned(),
        identities: Vec::new(),
        resume_revision: resume.revision,
        resume_epoch: resume.epoch.clone(),
    };
    let mut stream = compiler
        .client
        .clone()
        .watch_endpoint_policy(request)
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    tracing::info!(
        compiler = compiler.target.as_str(),
        resume_revision = resume.revision,
        "following the policy stream"
    );
    while let Some(message) = stream.message().await.map_err(|s| s.message().to_owned())? {
        if let Err(e) = manager.apply_policy_message(&message).await {
            // Start over from a snapshot: what was applied may be partial.
            *resume = Resume::default();
            return Err(e.to_string());
        }
        *backoff = MIN_BACKOFF;
        if message.synced {
            *resume = Resume {
                epoch: message.epoch.clone(),
                revision: message.revision,
            };
            tracing::debug!(revision = message.revision, "policy realized");
            let report = Report {
                realization: manager.realization().await,
                epoch: message.epoch.clone(),
            };
            // Only a changed report is written (a progress step of another node's change
            // that moves nothing here still moves the revision, and is reported).
            reports.send_if_modified(|current| {
                if current.as_ref() == Some(&report) {
                    return false;
                }
                *current = Some(report);
                true
            });
        }
    }
    Ok(())
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
