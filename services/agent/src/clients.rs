//! The agent's gRPC clients of its peer services, as the endpoint manager sees them: each
//! implements traits of [`crate::endpoint::peers`] over a tonic client, keeping the peer's
//! address for error messages. `main.rs` builds them; the manager never names them, so its
//! tests run it over a fake instead.
//!
//! - [`ipam::IpamClient`]: endpoint addresses (Allocate, Release, Gc).
//! - [`policy_compiler::PolicyCompilerClient`]: identities and compiled policy.
//! - [`endpoint_records::EndpointRecordClient`]: the node's `Endpoint` records, through the
//!   shared record client of `kino_service_kit::records`.

pub mod endpoint_records;
pub mod ipam;
pub mod policy_compiler;
