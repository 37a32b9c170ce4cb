//! What can go wrong with a record: the gateway's answer to one call ([`RecordFailure`]), why a
//! write did not happen ([`WriteError`]), and the errors a service turns into its own
//! ([`RecordError`]).

use tonic::{Code, Status};

/// The datastore failed or refused a call about one record (or a listing).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.message())]
pub struct RecordFailure {
    /// `Kind namespace/name` of what the call was about.
    pub what: String,
    /// The gateway's answer.
    pub status: Status,
}

impl RecordFailure {
    pub(super) fn new(kind: &str, namespace: &str, name: &str, status: Status) -> Self {
        RecordFailure {
            what: format!("{kind} {namespace}/{name}"),
            status,
        }
    }

    /// Whether the gateway could not be reached or did not answer in time (worth a retry
    /// once it is back), as opposed to refusing the call.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        )
    }

    /// The message for an unavailable gateway, naming the record and the flag to check.
    pub fn unavailable_message(&self) -> String {
        format!(
            "{}: {:?}: {} (is kino-datastore-gateway running and reachable at --datastore?)",
            self.what,
            self.status.code(),
            self.status.message()
        )
    }

    /// The message for a refused call.
    pub fn refused_message(&self) -> String {
        format!(
            "the datastore refused {}: {:?}: {}",
            self.what,
            self.status.code(),
            self.status.message()
        )
    }

    /// The message that fits: unavailable or refused.
    pub fn message(&self) -> String {
        if self.is_unavailable() {
            self.unavailable_message()
        } else {
            self.refused_message()
        }
    }
}

/// Why a write did not happen. `E` is what a failure is reported as: the gateway's answer
/// ([`RecordFailure`]) from the untyped client, the service's own error from [`Records`].
///
/// [`Records`]: super::Records
#[derive(Debug, Clone)]
pub enum WriteError<E = RecordFailure> {
    /// Create: the name is taken.
    Exists,
    /// Update / delete: the record changed since it was read.
    Conflict,
    /// Update / delete: the record is gone.
    NotFound,
    /// The lease to attach no longer exists (expired or revoked).
    LeaseGone,
    /// The datastore failed or refused.
    Failed(E),
}

impl WriteError {
    /// Classifies the gateway's refusal of a write of `kind namespace/name`. A "lease …"
    /// NotFound means the lease is gone only for a write that attaches one (`on_lease`);
    /// otherwise it is the record that is gone.
    pub(super) fn from_status(
        kind: &str,
        namespace: &str,
        name: &str,
        status: Status,
        on_lease: bool,
    ) -> Self {
        match status.code() {
            Code::AlreadyExists => WriteError::Exists,
            Code::Aborted => WriteError::Conflict,
            Code::NotFound if on_lease && status.message().starts_with("lease ") => {
                WriteError::LeaseGone
            }
            Code::NotFound => WriteError::NotFound,
            _ => WriteError::Failed(RecordFailure::new(kind, namespace, name, status)),
        }
    }
}

impl<E> WriteError<E> {
    /// The same outcome with the failure converted.
    pub fn map_failed<F>(self, convert: impl FnOnce(E) -> F) -> WriteError<F> {
        match self {
            WriteError::Exists => WriteError::Exists,
            WriteError::Conflict => WriteError::Conflict,
            WriteError::NotFound => WriteError::NotFound,
            WriteError::LeaseGone => WriteError::LeaseGone,
            WriteError::Failed(e) => WriteError::Failed(convert(e)),
        }
    }
}

impl<E: From<RecordError>> WriteError<E> {
    /// As an error, for callers that treat every outcome but success as a failure; `what`
    /// names the record in the message (a lost race says to retry).
    pub fn into_error(self, what: &str) -> E {
        let raced = |how: &str| RecordError::Raced(format!("{what}: {how} concurrently; retry"));
        match self {
            WriteError::Failed(e) => e,
            WriteError::Exists => raced("created").into(),
            WriteError::Conflict => raced("changed").into(),
            WriteError::NotFound => raced("deleted").into(),
            WriteError::LeaseGone => RecordError::LeaseGone {
                what: what.to_owned(),
            }
            .into(),
        }
    }
}

/// What a service turns into its own error (`impl From<RecordError> for ServiceError`),
/// choosing its status codes and wording.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// The datastore failed or refused a call.
    #[error(transparent)]
    Datastore(#[from] RecordFailure),
    /// A stored record cannot be read as what its kind holds; the message names the record
    /// and what is wrong.
    #[error("{0}")]
    Unreadable(String),
    /// A write lost a race with another writer; the message names the record and says to
    /// retry.
    #[error("{0}")]
    Raced(String),
    /// The lease a write was to attach no longer exists.
    #[error("{what}: the datastore lease it hangs on expired or was revoked")]
    LeaseGone {
        /// The record.
        what: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_answers_are_classified() {
        let outcome = |status| WriteError::from_status("Pool", "", "p", status, true);
        assert!(matches!(
            outcome(Status::already_exists("x")),
            WriteError::Exists
        ));
        assert!(matches!(
            outcome(Status::aborted("x")),
            WriteError::Conflict
        ));
        assert!(matches!(
            outcome(Status::not_found("gone")),
            WriteError::NotFound
        ));
        assert!(matches!(
            outcome(Status::not_found("lease 42 not found")),
            WriteError::LeaseGone
        ));
        // A write that attaches no lease cannot lose it: the record is what is gone.
        assert!(matches!(
            WriteError::from_status("Pool", "", "p", Status::not_found("lease 42"), false),
            WriteError::NotFound
        ));
        match outcome(Status::unavailable("down")) {
            WriteError::Failed(f) => {
                assert!(f.is_unavailable());
                assert!(
                    f.unavailable_message()
                        .starts_with("Pool /p: Unavailable: down")
                );
                assert_eq!(f.to_string(), f.unavailable_message());
            }
            other => panic!("{other:?}"),
        }
        match outcome(Status::invalid_argument("too big")) {
            WriteError::Failed(f) => {
                assert!(!f.is_unavailable());
                assert_eq!(
                    f.to_string(),
                    "the datastore refused Pool /p: InvalidArgument: too big"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn write_errors_become_errors_naming_the_record() {
        let error = |w: WriteError<RecordError>| w.into_error("Pool /p").to_string();
        assert_eq!(
            error(WriteError::Exists),
            "Pool /p: created concurrently; retry"
        );
        assert_eq!(
            error(WriteError::Conflict),
            "Pool /p: changed concurrently; retry"
        );
        assert_eq!(
            error(WriteError::NotFound),
            "Pool /p: deleted concurrently; retry"
        );
        assert_eq!(
            error(WriteError::LeaseGone),
            "Pool /p: the datastore lease it hangs on expired or was revoked"
        );
        let failed = RecordError::Unreadable("bad".into());
        assert_eq!(error(WriteError::Failed(failed)), "bad");
        assert!(matches!(
            WriteError::<RecordFailure>::Conflict.map_failed(RecordError::from),
            WriteError::Conflict
        ));
    }
}
