//! gRPC adapters of the agent: the local API and the flow observer.

pub mod agent;
pub mod flow;
pub mod input_limits;
pub mod policy;
