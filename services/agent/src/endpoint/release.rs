//! Address releases that could not reach IPAM, retried in the background until they succeed.
//!
//! A failed ADD gives its addresses back (release by owner). When IPAM cannot be reached at
//! that moment, the addresses would stay allocated until a DEL or CNI GC that may never come
//! (the runtime saw the ADD fail; it owes no DEL). So the release is recorded as pending —
//! in memory and as a file beside the endpoint checkpoints
//! (`<state-dir>/pending-releases/<lxc name>.pb`, a `kino.ipam.v1.Owner`), so a restarted
//! agent carries on — and a task retries it, backing off from 1 s to 30 s, until IPAM
//! answers. A new ADD of the same attachment cancels it first: that ADD now owns whatever
//! IPAM holds for the owner (IPAM hands the same owner the same address), and its own
//! failure would record a new release.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kino_api::ipam::Owner;
use prost::Message;
use tokio::sync::{Mutex, Notify};

use super::lxc_name;
use super::peers::Addresses;
use super::state::StateError;

/// First wait before retrying, doubled after each failed round up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between rounds while IPAM stays unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Bound on one release call, so a hung IPAM does not hold ADDs of the same attachment.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The pending releases of this node, persisted, and the task that retries them.
pub struct PendingReleases {
    dir: PathBuf,
    ipam: Arc<dyn Addresses>,
    /// By file name (the attachment's lxc name). Held across a release call, so an ADD of
    /// the same attachment waits for it rather than racing it.
    pending: Mutex<BTreeMap<String, Owner>>,
    wake: Notify,
}

impl PendingReleases {
    /// Opens (creating) `<state_root>/pending-releases`, loads what a previous run left and
    /// starts the retry task (on the current tokio runtime).
    pub fn start(
        state_root: &Path,
        ipam: Arc<dyn Addresses>,
    ) -> Result<Arc<PendingReleases>, StateError> {
        let dir = state_root.join("pending-releases");
        std::fs::create_dir_all(&dir).map_err(|e| StateError {
            path: dir.clone(),
            reason: format!("cannot create it ({e}); check --state-dir"),
        })?;
        let mut pending = BTreeMap::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| StateError {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "pb") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| Owner::decode(b.as_slice()).map_err(|e| e.to_string()))
            {
                Ok(owner) => {
                    pending.insert(key(&owner), owner);
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "skipping an unreadable pending release")
                }
            }
        }
        if !pending.is_empty() {
            tracing::info!(
                count = pending.len(),
                "address releases left pending by the previous run; retrying them"
            );
        }
        let releases = Arc::new(PendingReleases {
            dir,
            ipam,
            pending: Mutex::new(pending),
            wake: Notify::new(),
        });
        tokio::spawn(retry(Arc::downgrade(&releases)));
        Ok(releases)
    }

    /// Records a release IPAM could not take now; the task retries it.
    pub async fn add(&self, owner: &Owner) {
        let name = key(owner);
        if let Err(error) = self.persist(&name, owner) {
            // Still retried while this process runs.
            tracing::warn!(%error, container = %owner.container_id, "cannot persist a pending address release");
        }
        self.pending.lock().await.insert(name, owner.clone());
        self.wake.notify_one();
    }

    /// Forgets a pending release of this attachment (a new ADD of it is starting, and
    /// releases again if it fails); returns whether there was one.
    pub async fn cancel(&self, container_id: &str, ifname: &str) -> bool {
        let name = lxc_name(container_id, ifname);
        let mut pending = self.pending.lock().await;
        let found = pending.remove(&name).is_some();
        if found {
            self.unpersist(&name);
            tracing::info!(
                container = container_id,
                ifname,
                "a new ADD of the attachment takes over its pending address release"
            );
        }
        found
    }

    /// The owners whose release is pending.
    pub async fn owners(&self) -> Vec<Owner> {
        self.pending.lock().await.values().cloned().collect()
    }

    /// One round: every pending release tried once. Returns whether any is left.
    async fn round(&self) -> bool {
        let mut pending = self.pending.lock().await;
        let names: Vec<String> = pending.keys().cloned().collect();
        for name in names {
            let owner = pending[&name].clone();
            let call = self.ipam.release(owner.clone());
            match tokio::time::timeout(RELEASE_TIMEOUT, call).await {
                Ok(Ok(released)) => {
                    tracing::info!(container = %owner.container_id, ifname = %owner.ifname, ?released, "pending address release done");
                    pending.remove(&name);
                    self.unpersist(&name);
                }
                Ok(Err(error)) => {
                    tracing::debug!(container = %owner.container_id, %error, "pending address release: IPAM still refuses");
                }
                Err(_) => {
                    tracing::debug!(container = %owner.container_id, "pending address release: IPAM did not answer");
                }
            }
        }
        !pending.is_empty()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pb"))
    }

    fn persist(&self, name: &str, owner: &Owner) -> Result<(), StateError> {
        let path = self.file(name);
        let tmp = path.with_extension("pb.tmp");
        let err = |e: std::io::Error| StateError {
            path: path.clone(),
            reason: e.to_string(),
        };
        let mut file = std::fs::File::create(&tmp).map_err(err)?;
        file.write_all(&owner.encode_to_vec()).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    fn unpersist(&self, name: &str) {
        let path = self.file(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot remove a done pending release")
            }
        }
    }
}

/// The file name of an owner's pending release: its attachment's lxc name (stable, short,
/// safe as a file name whatever the container id holds).
fn key(owner: &Owner) -> String {
    lxc_name(&owner.container_id, &owner.ifname)
}

/// The retry task: wakes when a release is added, then retries with backoff until nothing
/// is pending; ends with the manager.
async fn retry(releases: std::sync::Weak<PendingReleases>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Some(this) = releases.upgrade() else {
            return;
        };
        let left = this.round().await;
        let wait = if left {
            let wait = backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            Some(wait)
        } else {
            backoff = FIRST_BACKOFF;
            None
        };
        // Hold only a weak reference while waiting, so the task ends with the manager.
        let woken = async {
            match wait {
                Some(wait) => {
                    let _ = tokio::time::timeout(wait, this.wake.notified()).await;
                }
                None => this.wake.notified().await,
            }
        };
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep(MAX_BACKOFF) => {}
        }
        drop(this);
    }
}
