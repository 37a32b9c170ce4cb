//! What can go wrong in the relay, for its callers: a bad `--peer` flag, a request the
//! relay (or a node) finds invalid. A node that cannot be reached is not an error of the
//! request: the relay reports it beside the flows ([`crate::relay::Unavailable`]).

/// The relay's errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// A `--peer` flag is not `NAME=HOST:PORT`.
    #[error(
        "--peer {flag:?}: {reason}; give NAME=HOST:PORT, e.g. --peer kino-node-1=192.0.2.11:7404"
    )]
    InvalidPeer {
        /// The flag's value.
        flag: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request contradicts itself (e.g. `first` with `follow`).
    #[error("{0}")]
    InvalidRequest(String),
    /// A node refused the request as invalid (a malformed filter): every node would.
    #[error("node {node:?} refused the request: {message}")]
    RefusedByNode {
        /// The node.
        node: String,
        /// Its answer.
        message: String,
    },
}
