//! The gRPC status of each endpoint-manager failure: the one place where a [`ManagerError`]
//! becomes a code, so kino-cni (which turns codes into CNI error codes, docs/cni.md) and
//! `kino` act on the same answer whatever the operation (docs/errors.md).

use tonic::{Code, Status};

use crate::endpoint::EndpointError;
use crate::endpoint::manager::ManagerError;
use crate::endpoint::peers::PeerError;
use crate::netns::NetnsError;

/// The gRPC status callers (kino-cni, kino) act on.
pub fn to_status(error: &ManagerError) -> Status {
    let message = error.to_string();
    match error {
        ManagerError::Invalid(_) => Status::invalid_argument(message),
        ManagerError::NotFound(_) => Status::not_found(message),
        ManagerError::CheckFailed(_) => Status::failed_precondition(message),
        ManagerError::Peer(peer) => match peer {
            PeerError::Ipam { status, .. }
            | PeerError::Datastore { status, .. }
            | PeerError::Policy { status, .. } => match status.code() {
                // A peer that cannot be reached is the agent being unable to serve now.
                Code::Unknown | Code::Internal => Status::unavailable(message),
                code => Status::new(code, message),
            },
            PeerError::Conflict(_) => Status::aborted(message),
            PeerError::Internal(_) => Status::internal(message),
        },
        ManagerError::Kernel(e) => match e.as_ref() {
            EndpointError::InvalidRequest(_)
            | EndpointError::PodInterfaceExists { .. }
            | EndpointError::Netns(
                NetnsError::Open { .. }
                | NetnsError::NotNetworkNamespace { .. }
                | NetnsError::Enter { .. },
            ) => Status::invalid_argument(message),
            EndpointError::PodHasDefaultRoute { .. }
            | EndpointError::LxcExists { .. }
            | EndpointError::Sysctl { .. } => Status::failed_precondition(message),
            // The kernel refused a step (netlink, a BPF map, a program): the creation
            // was undone, and the node may well manage on the next try.
            _ => Status::unavailable(message),
        },
        // The kernel part of a DEL is retried by DEL.
        ManagerError::Teardown(_) | ManagerError::Incomplete { .. } => Status::unavailable(message),
        ManagerError::State(_) => Status::failed_precondition(message),
        ManagerError::Exhausted(_) => Status::resource_exhausted(message),
        ManagerError::Internal(_) => Status::internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::state::StateError;

    #[test]
    fn every_failure_has_the_code_its_caller_acts_on() {
        let peer_down = ManagerError::Peer(PeerError::Ipam {
            target: "127.0.0.1:7402".into(),
            status: Status::unavailable("connection refused"),
        });
        let not_a_netns =
            ManagerError::from(EndpointError::from(NetnsError::NotNetworkNamespace {
                path: "/tmp/file".into(),
                what: "a regular file".into(),
            }));
        for (error, code) in [
            (not_a_netns, Code::InvalidArgument),
            (
                ManagerError::Incomplete {
                    what: "endpoint 7".into(),
                    errors: vec![peer_down],
                },
                Code::Unavailable,
            ),
            (
                ManagerError::Exhausted("all ids in use".into()),
                Code::ResourceExhausted,
            ),
            (
                ManagerError::Peer(PeerError::Conflict("keeps changing".into())),
                Code::Aborted,
            ),
            (
                ManagerError::State(StateError {
                    path: "/var/lib/kino/endpoints".into(),
                    reason: "read-only file system".into(),
                }),
                Code::FailedPrecondition,
            ),
            (
                ManagerError::from(EndpointError::Vanished {
                    lxc: "lxc0123456789ab".into(),
                }),
                Code::Unavailable,
            ),
        ] {
            let status = to_status(&error);
            assert_eq!(status.code(), code, "{error}");
        }
    }

    #[test]
    fn peer_failures_become_unavailable_or_keep_their_code() {
        let e = ManagerError::Peer(PeerError::Ipam {
            target: "127.0.0.1:7402".into(),
            status: Status::resource_exhausted("pool default is full"),
        });
        assert_eq!(to_status(&e).code(), Code::ResourceExhausted);
        assert!(to_status(&e).message().contains("127.0.0.1:7402"));
        let e = ManagerError::Peer(PeerError::Datastore {
            target: "x".into(),
            status: Status::unknown("transport error"),
        });
        assert_eq!(to_status(&e).code(), Code::Unavailable);
        let e = ManagerError::Peer(PeerError::Policy {
            target: "127.0.0.1:7403".into(),
            status: Status::unavailable("tcp connect error"),
        });
        assert_eq!(to_status(&e).code(), Code::Unavailable);
        assert!(
            to_status(&e)
                .message()
                .contains("policy-compiler (127.0.0.1:7403)")
        );
    }
}
