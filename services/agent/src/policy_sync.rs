//! The policy sync: follows the policy-compiler's `WatchEndpointPolicy` stream for this node
//! and applies it to the datapath through the endpoint manager. The compiler tracks the
//! node's Endpoint resources, so one stream covers endpoints created later (their identity
//! arrives as a replace update once their record is published). Reconnects with backoff and
//! resumes from the last synced (epoch, revision).

use std::sync::Arc;
use std::time::Duration;

use kino_api::policy::WatchEndpointPolicyRequest;

use crate::endpoint::manager::EndpointManager;

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

/// Runs the sync until the task is dropped.
pub async fn run(manager: Arc<EndpointManager>) {
    let mut resume = Resume::default();
    let mut backoff = MIN_BACKOFF;
    loop {
        match follow(&manager, &mut resume, &mut backoff).await {
            Ok(()) => tracing::warn!(
                compiler = manager.policy_target(),
                "policy stream ended; reconnecting"
            ),
            Err(e) => tracing::warn!(
                compiler = manager.policy_target(),
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
    resume: &mut Resume,
    backoff: &mut Duration,
) -> Result<(), String> {
    let request = WatchEndpointPolicyRequest {
        node_name: manager.node().to_owned(),
        identities: Vec::new(),
        resume_revision: resume.revision,
        resume_epoch: resume.epoch.clone(),
    };
    let mut stream = manager
        .policy_client()
        .watch_endpoint_policy(request)
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    tracing::info!(
        compiler = manager.policy_target(),
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
        }
    }
    Ok(())
}
