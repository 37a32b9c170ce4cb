//! The errors of kino-ipam, with messages an operator can act on. `grpc` maps each variant
//! to its status code.

use std::fmt;

/// A request field that failed validation (INVALID_ARGUMENT); nothing was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidField {
    /// The field's name as in the API, e.g. `pool.ipv4.cidrs[0]`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl InvalidField {
    /// A validation error of `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// How many addresses are in use where an allocation failed, for RESOURCE_EXHAUSTED.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exhaustion {
    /// The pool.
    pub pool: String,
    /// The node.
    pub node: String,
    /// The family asked for.
    pub family: crate::prefix::Family,
    /// Addresses in use in the node's blocks of that family.
    pub in_use: u128,
    /// Addresses the node's blocks of that family can hand out.
    pub size: u128,
    /// The node's blocks of that family.
    pub blocks: Vec<String>,
    /// Why no further block could be given.
    pub no_more_blocks: String,
}

impl fmt::Display for Exhaustion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pool {:?} has no free {} address for node {:?}: {} of {} in use in its block(s) {}, and {}",
            self.pool,
            self.family,
            self.node,
            self.in_use,
            self.size,
            if self.blocks.is_empty() {
                "(none)".to_owned()
            } else {
                self.blocks.join(", ")
            },
            self.no_more_blocks
        )
    }
}

/// Everything that can go wrong in kino-ipam.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Bad input; nothing was written.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// Something named in the request does not exist.
    #[error("{field}: {what} not found{hint}")]
    NotFound {
        /// The request field that names it.
        field: String,
        /// What is missing, e.g. `pool "blue"`.
        what: String,
        /// What to do about it (starts with "; ").
        hint: String,
    },
    /// The thing to create exists already, or a requested address is held by someone else.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the state does not allow it now.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No address or block is free.
    #[error("{0}")]
    Exhausted(Box<Exhaustion>),
    /// No block is free for a node that has none yet.
    #[error("{0}")]
    NoFreeBlock(String),
    /// Every frontend id (1..65535) is held.
    #[error("{0}")]
    NoFreeFrontendId(String),
    /// Concurrent changes kept winning; retrying the request is safe.
    #[error("{0}")]
    Aborted(String),
    /// The datastore cannot be reached or failed.
    #[error("the datastore failed: {0}")]
    Unavailable(String),
    /// A stored record cannot be read (corrupt, or written by something else).
    #[error("{0}")]
    Corrupt(String),
    /// A bug: the datastore refused a request kino-ipam built, or a task failed.
    #[error("{0}")]
    Internal(String),
}

impl IpamError {
    /// NOT_FOUND for `field`.
    pub fn not_found(field: &str, what: impl Into<String>, hint: impl Into<String>) -> Self {
        let hint = hint.into();
        IpamError::NotFound {
            field: field.to_owned(),
            what: what.into(),
            hint: if hint.is_empty() {
                String::new()
            } else {
                format!("; {hint}")
            },
        }
    }
}

/// Result of kino-ipam operations.
pub type Result<T, E = IpamError> = std::result::Result<T, E>;
