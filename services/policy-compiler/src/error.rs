//! The errors of kino-policy-compiler, with messages an operator can act on. `grpc` maps
//! each variant to its status code.

use crate::policy::DocumentError;

/// Everything that can go wrong in kino-policy-compiler.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A request field is invalid; nothing was written.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field, as named in the API.
        field: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// Policy documents are invalid; nothing was stored.
    #[error("{}", documents_message(.0))]
    InvalidDocuments(Vec<DocumentError>),
    /// Something named in the request does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A concurrent change won; retry.
    #[error("{0}")]
    Aborted(String),
    /// The request cannot be served in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Identities are exhausted.
    #[error("{0}")]
    Exhausted(String),
    /// The datastore (or the compiler's view of it) is not available.
    #[error("{0}")]
    Unavailable(String),
    /// Stored data cannot be read (corrupt, or written by something else).
    #[error("{0}")]
    Corrupt(String),
    /// A bug: an invariant of the compiler, or a request it built that its peer refused.
    #[error("{0}")]
    Internal(String),
}

impl PolicyError {
    /// An invalid request field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Most document errors one message lists (a status message is one HTTP/2 header; the
/// rest are counted, and ValidatePolicies returns them all as data).
pub const MAX_LISTED_ERRORS: usize = 20;

fn documents_message(errors: &[DocumentError]) -> String {
    let mut lines = vec![format!(
        "{} error(s) in the policy documents; nothing was stored:",
        errors.len()
    )];
    lines.extend(errors.iter().take(MAX_LISTED_ERRORS).map(|e| e.to_string()));
    if errors.len() > MAX_LISTED_ERRORS {
        lines.push(format!(
            "… and {} more (`kino policy validate` lists every one)",
            errors.len() - MAX_LISTED_ERRORS
        ));
    }
    lines.join("\n")
}
