//! kino-agent: the per-node agent (eBPF datapath, endpoint manager, flow observer).
//!
//! For now only the API surfaces exist: [`grpc::agent::AgentGrpc`] (`kino.agent.v1`, the local
//! API on a unix socket) and [`grpc::flow::FlowGrpc`] (`kino.flow.v1`, the flow observer)
//! answer every RPC with `UNIMPLEMENTED`, naming the issue that brings it: endpoints, the
//! datapath and BPF maps #4, label updates (identities) #5, flows #6. [`node`] checks the
//! start-up settings.
//!
//! The kernel side of issue #4 is here as a library for the endpoint manager: [`devices`]
//! (`kino_host` ↔ `kino_net`), [`datapath`] (the eBPF programs in `bpf/`, loaded with aya,
//! pinned under `/sys/fs/bpf/kino/<node>/` and adopted on restart; the endpoint, ipcache,
//! policy and conntrack maps with their typed APIs, issue #5), [`endpoint`] (lxc veth pairs,
//! map entries, attachment; all or nothing), on top of [`netlink`] and [`netns`].
//! See docs/datapath.md.

#![warn(missing_docs)]

pub mod datapath;
pub mod devices;
pub mod endpoint;
pub mod grpc;
pub mod netlink;
pub mod netns;
pub mod node;
pub mod policy_sync;
pub mod registration;

/// The issue that brings endpoints, the eBPF datapath and BPF map dumps.
pub const DATAPATH_ISSUE: u32 = 4;
/// The issue that brings the flow observer.
pub const FLOWS_ISSUE: u32 = 6;

/// Default path of the agent's local API socket.
pub const DEFAULT_SOCKET: &str = "/run/kino/agent.sock";
