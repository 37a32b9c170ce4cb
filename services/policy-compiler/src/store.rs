//! The compiler's records in the datastore: service-kit's typed records failing with
//! [`PolicyError`], and the kinds of the records it reads and writes.

use kino_service_kit::records::{self, RecordError, Records, Spec};
use tonic::Code;

use crate::error::PolicyError;

/// A record with its datastore metadata.
pub use kino_service_kit::records::Stored;

/// The datastore client.
pub type Store = Records<PolicyError>;

/// Why a write did not happen (besides the datastore failing, as a [`PolicyError`]).
pub type WriteError = records::WriteError<PolicyError>;

/// Kind of policy records.
pub const KIND_POLICY: &str = kino_api::policy::Policy::KIND;
/// Kind of identity records.
pub const KIND_IDENTITY: &str = kino_api::policy::Identity::KIND;
/// Kind of endpoint records (written by agents).
pub const KIND_ENDPOINT: &str = kino_api::agent::Endpoint::KIND;
/// Kind of node records (written by agents).
pub const KIND_NODE: &str = kino_api::types::Node::KIND;
/// Kind of the agents' realization reports (read on demand, never watched).
pub const KIND_REALIZATION: &str = kino_api::policy::PolicyRealization::KIND;

/// How the datastore's failures read for the compiler's callers.
impl From<RecordError> for PolicyError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Datastore(failure) if failure.is_unavailable() => {
                PolicyError::Unavailable(failure.unavailable_message())
            }
            // A record the gateway refuses (too large, say) is the request's fault.
            RecordError::Datastore(failure)
                if matches!(
                    failure.status.code(),
                    Code::InvalidArgument | Code::OutOfRange
                ) =>
            {
                PolicyError::invalid(failure.what, failure.status.message().to_owned())
            }
            RecordError::Datastore(failure) => PolicyError::Internal(failure.refused_message()),
            RecordError::Unreadable(why) => PolicyError::Corrupt(why),
            RecordError::Raced(message) => PolicyError::Aborted(message),
            // The compiler writes no record on a lease.
            lease @ RecordError::LeaseGone { .. } => {
                PolicyError::FailedPrecondition(lease.to_string())
            }
        }
    }
}

/// Reads a stored resource's spec as `T`, checking its message type.
pub fn decode<T: Spec>(resource: &kino_api::datastore::Resource) -> Result<Stored<T>, PolicyError> {
    Ok(records::decode(resource)?)
}

#[cfg(test)]
mod tests {
    use kino_service_kit::records::RecordFailure;
    use tonic::Status;

    use super::*;

    #[test]
    fn datastore_failures_read_as_policy_errors() {
        let failure = |status| {
            PolicyError::from(RecordError::Datastore(RecordFailure {
                what: "Policy ns/p".into(),
                status,
            }))
        };
        assert!(matches!(
            failure(Status::unavailable("down")),
            PolicyError::Unavailable(_)
        ));
        // A record the gateway refuses as too large is the caller's to fix.
        assert!(matches!(
            failure(Status::invalid_argument("too large")),
            PolicyError::Invalid { .. }
        ));
        assert!(matches!(
            failure(Status::permission_denied("no")),
            PolicyError::Internal(_)
        ));
        assert!(matches!(
            PolicyError::from(RecordError::Unreadable("stored Policy ns/p is unreadable".into())),
            PolicyError::Corrupt(m) if m == "stored Policy ns/p is unreadable"
        ));
        assert!(matches!(
            WriteError::NotFound.into_error("policy ns/p"),
            PolicyError::Aborted(m) if m == "policy ns/p: deleted concurrently; retry"
        ));
    }
}
