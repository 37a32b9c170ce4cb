//! Fuzz targets: every parser that reads input a caller or the datastore controls, each a
//! function of raw bytes that must not panic and must do bounded work, whatever the bytes.
//!
//! The same functions run in two places:
//! - `cargo test` (`tests/corpus_replay.rs`): every file of `fuzz/corpus/<target>/` is fed to
//!   its target, deterministically, in CI;
//! - coverage-guided fuzzing by hand (`fuzz/run.sh <target> <seconds>`): the AFL++ harness in
//!   `fuzz/afl/` (outside the workspace: it needs AFL's compiler flags) calls [`run`], and
//!   what it finds becomes corpus files.
//!
//! A target returns the work it did in its own unit (parse steps, bytes scanned) so the
//! replay can check bounds by counting, never by timing.

use std::fmt;

pub mod cni;
pub mod labels;
pub mod policy;
pub mod records;

/// The fuzz targets, by the name their corpus folder and `fuzz/run.sh` use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// kino-cni's stdin: the network configuration (JSON) and the per-attachment parameters
    /// read from it (labels, IPs, MAC, runtimeConfig).
    CniConfig,
    /// kino-cni's environment (`CNI_*` variables, one `NAME=VALUE` a line) and `CNI_ARGS`.
    CniEnv,
    /// Policy documents (YAML or JSON), bounds pre-scan included.
    Policy,
    /// Label text (`source:key=value`, lists) and the label limits.
    Labels,
    /// Every datastore record decoder (IPAM, policy-compiler, agent, service kit): the
    /// first byte picks the decoder, the rest is the stored spec.
    Records,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 5] = [
        Target::CniConfig,
        Target::CniEnv,
        Target::Policy,
        Target::Labels,
        Target::Records,
    ];

    /// The target's name (its corpus folder).
    pub fn name(self) -> &'static str {
        match self {
            Target::CniConfig => "cni_config",
            Target::CniEnv => "cni_env",
            Target::Policy => "policy",
            Target::Labels => "labels",
            Target::Records => "records",
        }
    }

    /// The target called `name`.
    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one input cost a target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Steps taken (target-specific: parse steps, documents, records).
    pub steps: usize,
    /// The most steps this input may take.
    pub bound: usize,
}

/// Feeds `data` to `target`. Panics are the findings; the returned work is within bound
/// unless the target is broken (the replay asserts it).
pub fn run(target: Target, data: &[u8]) -> Work {
    match target {
        Target::CniConfig => cni::config(data),
        Target::CniEnv => cni::env(data),
        Target::Policy => policy::documents(data),
        Target::Labels => labels::text(data),
        Target::Records => records::decode(data),
    }
}
