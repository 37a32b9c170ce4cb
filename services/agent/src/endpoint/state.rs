//! Local endpoint checkpoints (`<state-dir>/endpoints/<id>.pb`, a `kino.agent.v1.Endpoint`),
//! as Cilium keeps `/var/run/cilium/state`: what a restarted agent adopts, from its own disk,
//! before it can reach any other service.

use std::io::Write;
use std::path::{Path, PathBuf};

use kino_api::agent::Endpoint;
use prost::Message;

/// A checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("endpoint checkpoint {path}: {reason}")]
pub struct StateError {
    /// The file or directory.
    pub path: PathBuf,
    /// What failed.
    pub reason: String,
}

/// The checkpoint directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating) `<root>/endpoints`.
    pub fn open(root: &Path) -> Result<Self, StateError> {
        let dir = root.join("endpoints");
        std::fs::create_dir_all(&dir).map_err(|e| StateError {
            path: dir.clone(),
            reason: format!("cannot create it ({e}); check --state-dir"),
        })?;
        Ok(StateDir { dir })
    }

    fn file(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{id}.pb"))
    }

    /// Writes an endpoint's checkpoint atomically (temp file + rename). Not fsynced: it
    /// describes kernel state (an lxc, a pod's namespace) that does not outlive the machine
    /// either, and an agent that crashes leaves the page cache intact — the fsync bought
    /// nothing and cost every ADD a disk flush. After a power loss the checkpoint may be
    /// missing or unreadable (skipped, see [`StateDir::load_all`]); its pod is gone too, and
    /// the IPAM and datastore GCs reclaim what it held.
    pub fn save(&self, endpoint: &Endpoint) -> Result<(), StateError> {
        let path = self.file(endpoint.id);
        let tmp = path.with_extension("pb.tmp");
        let err = |e: std::io::Error| StateError {
            path: path.clone(),
            reason: e.to_string(),
        };
        let mut stored = endpoint.clone();
        stored.counters = None;
        let mut file = std::fs::File::create(&tmp).map_err(err)?;
        file.write_all(&stored.encode_to_vec()).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    /// Removes an endpoint's checkpoint; missing is fine.
    pub fn remove(&self, id: u32) -> Result<(), StateError> {
        let path = self.file(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StateError {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Every checkpoint, by id.
    pub fn load_all(&self) -> Result<Vec<Endpoint>, StateError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| StateError {
            path: self.dir.clone(),
            reason: e.to_string(),
        })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "pb") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| StateError {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            match Endpoint::decode(bytes.as_slice()) {
                Ok(endpoint) => out.push(endpoint),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable endpoint checkpoint")
                }
            }
        }
        out.sort_by_key(|e| e.id);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let endpoint = Endpoint {
            id: 7,
            container_id: "abc".into(),
            ..Default::default()
        };
        state.save(&endpoint).unwrap();
        state
            .save(&Endpoint {
                id: 3,
                ..Default::default()
            })
            .unwrap();
        let all = state.load_all().unwrap();
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 7]);
        assert_eq!(all[1], endpoint);
        state.remove(7).unwrap();
        state.remove(7).unwrap();
        assert_eq!(state.load_all().unwrap().len(), 1);
    }
}
