//! gRPC adapters of the agent: the local API and the flow observer.

pub mod agent;
pub mod flow;
pub mod policy;

use tonic::{Response, Status};

/// `UNIMPLEMENTED` naming what is missing and the issue that brings it.
fn not_yet<T>(what: &str, issue: u32) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not implemented yet (issue #{issue})"
    )))
}

#[cfg(test)]
fn assert_unimplemented<T>(rpc: &str, issue: u32, result: Result<Response<T>, Status>) {
    let Err(status) = result else {
        panic!("{rpc} must not return a result yet");
    };
    assert_eq!(
        status.code(),
        tonic::Code::Unimplemented,
        "{rpc}: {status:?}"
    );
    let issue = format!("(issue #{issue})");
    assert!(
        status.message().contains(rpc) && status.message().contains(&issue),
        "{rpc}: the message names the RPC and {issue}: {:?}",
        status.message()
    );
}
