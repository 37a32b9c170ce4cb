//! Why changing or reading the policy maps failed, saying whether anything was written.

use aya::maps::MapError;

use super::entry::PolicyKey;
use crate::datapath::abi::MAX_ENDPOINT_ID;

/// Changing or reading the policy maps failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyMapError {
    /// The endpoint id cannot index the enforcement array.
    #[error("endpoint id {0} is out of range (1 to {MAX_ENDPOINT_ID})")]
    EndpointId(u32),
    /// A key is malformed; nothing was written.
    #[error("policy of endpoint {endpoint}: invalid key {reason}; nothing was written")]
    InvalidKey {
        /// The endpoint.
        endpoint: u32,
        /// What is wrong.
        reason: String,
    },
    /// Two keys of one {direction, remote, protocol} have overlapping port ranges, which
    /// the first-hit lookup cannot express; nothing was written.
    #[error(
        "policy of endpoint {endpoint}: {new} overlaps {existing}; port ranges of one direction, remote and protocol must not overlap (the compiler splits them); nothing was written"
    )]
    Overlap {
        /// The endpoint.
        endpoint: u32,
        /// The key being added.
        new: PolicyKey,
        /// The key it overlaps.
        existing: PolicyKey,
    },
    /// A map operation failed; what was written before it stays, and is what the maps and
    /// this copy hold.
    #[error("BPF map {map}: {op} failed: {source}{}", if *.applied > 0 { format!(" (after {} of the update's keys were written)", .applied) } else { String::new() })]
    Map {
        /// The map's name.
        map: &'static str,
        /// What was being done.
        op: String,
        /// Keys of the update written before the failure.
        applied: usize,
        /// aya's error.
        #[source]
        source: Box<MapError>,
    },
}
