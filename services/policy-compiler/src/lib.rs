//! kino-policy-compiler: policies, security identities and their compilation into
//! per-endpoint rule sets (the BPF policy map contents) streamed to agents.
//!
//! - [`labels`], [`selector`], [`cidr`]: security labels, label selectors, prefixes.
//! - [`policy`]: policy documents (Kinocilium / Cilium and Kubernetes NetworkPolicy),
//!   parsed and validated with field paths.
//! - [`identity`]: numeric identities (reserved, endpoint, CIDR) and their allocation.
//! - [`policy_map`]: the compiled form and the datapath's lookup (the contract with agents).
//! - [`compile`]: the incremental compiler.
//! - [`ipcache`]: prefix → identity, what the agents' ipcache map holds.
//! - [`reference`](mod@reference): the obviously-correct evaluator the compiler is tested against.
//! - [`view`]: the compiler's view of the datastore at a revision, with change history.
//! - [`stream`]: revisioned deltas for agents (WatchEndpointPolicy).
//! - [`trace`]: verdicts explained (TracePolicy).
//! - [`realization`]: whether the agents enforce a revision (GetPolicyRealization).
//! - [`store`], [`sync`]: the datastore client and the watches feeding the view.
//! - [`service`]: the domain behind the API (its gauges report the view to Prometheus);
//!   [`grpc`] translates; [`authorization`] says who may call what; [`metrics`] holds the
//!   Prometheus instruments.

#![warn(missing_docs)]

pub mod authorization;
pub mod cidr;
pub mod compile;
pub mod convert;
pub mod error;
pub mod identity;
pub mod ipcache;
pub mod labels;
pub mod metrics;
pub mod policy;
pub mod policy_map;
pub mod realization;
pub mod reference;
pub mod selector;
pub mod service;
pub mod store;
pub mod stream;
pub mod sync;
pub mod trace;
pub mod view;

pub mod grpc;
