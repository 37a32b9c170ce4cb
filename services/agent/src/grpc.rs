//! gRPC adapters of the agent: the local API and the flow observer, and who may call them.

pub mod agent;
pub mod authorization;
pub mod flow;
pub mod input_limits;
pub mod policy;
pub mod status;
