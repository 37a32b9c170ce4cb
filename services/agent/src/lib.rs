//! kino-agent: the per-node agent (eBPF datapath, endpoint manager, flow observer).
//!
//! The API surfaces: [`grpc::agent::AgentGrpc`] (`kino.agent.v1`, the local API on a unix
//! socket) and [`grpc::flow::FlowGrpc`] (`kino.flow.v1`, the flow observer, TCP). [`node`]
//! checks the start-up settings.
//!
//! The kernel side of issue #4 is here as a library for the endpoint manager: [`devices`]
//! (`kino_host` ↔ `kino_net`), [`datapath`] (the eBPF programs in `bpf/`, loaded with aya,
//! pinned under `/sys/fs/bpf/kino/<node>/` and adopted on restart; the endpoint, ipcache,
//! policy and conntrack maps with their typed APIs, issue #5), [`endpoint`] (lxc veth pairs,
//! map entries, attachment; all or nothing), on top of [`netlink`] and [`netns`]. The
//! endpoint manager reaches IPAM, the policy-compiler and the datastore through the traits of
//! [`endpoint::peers`]; [`clients`] implements them over gRPC.
//! [`flows`] is the flow observer (issue #6): datapath events from the `kino_events` ring
//! buffer turned into flows, kept in a ring and served as `kino.flow.v1`. [`metrics`]
//! reports endpoints, drops and flows to Prometheus. [`cluster`] (issue #13) connects the
//! node to the others: its routing mode and underlay address in its Node record, every
//! other node followed from theirs, the routes to their pods reconciled, masquerading of
//! traffic that leaves the cluster. [`services`] (issue #14) follows the cluster's services
//! into the load balancer's maps (`datapath::lb`: socket-level load balancing at connect).
//! See docs/datapath.md.

#![warn(missing_docs)]

pub mod clients;
pub mod cluster;
pub mod datapath;
pub mod devices;
pub mod endpoint;
pub mod flows;
pub mod grpc;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod node;
pub mod policy_realization;
pub mod policy_sync;
pub mod registration;
pub mod services;

/// The issue that brings endpoints, the eBPF datapath and BPF map dumps.
pub const DATAPATH_ISSUE: u32 = 4;

/// Default path of the agent's local API socket.
pub const DEFAULT_SOCKET: &str = "/run/kino/agent.sock";
