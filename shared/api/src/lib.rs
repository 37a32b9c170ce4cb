//! Generated gRPC/protobuf code for every `kino.*.v1` API under the repository's `proto/`.
//!
//! The module tree mirrors the protobuf packages (`kino::datastore::v1`, ...) because
//! generated code refers to other packages by relative path (`super::super::...`); the short
//! re-exports (`kino_api::datastore`, ...) are what services normally use.
//!
//! Beside the generated code, two small parts of the API's contract that every service
//! applies the same way: [`limits`] (how large records and imports, how long names and labels
//! may be) and [`quote`] (how much of a caller's input an error message may repeat).

pub mod limits;
pub mod quote;

/// Encoded `FileDescriptorSet` of every kino API, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kino_descriptor");

/// Protobuf package tree `kino.*`.
pub mod kino {
    /// Package `kino.types.*`.
    pub mod types {
        /// `kino.types.v1`: messages shared by several APIs.
        #[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
        pub mod v1 {
            tonic::include_proto!("kino.types.v1");
        }
    }

    /// Package `kino.datastore.*`.
    pub mod datastore {
        /// `kino.datastore.v1`: the datastore-gateway API (typed resources, CAS, leases, watch).
        #[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
        pub mod v1 {
            tonic::include_proto!("kino.datastore.v1");
        }
    }

    /// Package `kino.ipam.*`.
    pub mod ipam {
        /// `kino.ipam.v1`: the IPAM API (pools, node CIDRs, per-endpoint allocations).
        #[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
        pub mod v1 {
            tonic::include_proto!("kino.ipam.v1");
        }
    }

    /// Package `kino.policy.*`.
    pub mod policy {
        /// `kino.policy.v1`: the policy-compiler API (policies, identities, compiled rules).
        #[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
        pub mod v1 {
            tonic::include_proto!("kino.policy.v1");
        }
    }

    /// Package `kino.agent.*`.
    pub mod agent {
        /// `kino.agent.v1`: the agent's local API (endpoints, CNI calls, BPF map dumps).
        #[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
        pub mod v1 {
            tonic::include_proto!("kino.agent.v1");
        }
    }

    /// Package `kino.node.*`.
    pub mod node {
        /// `kino.node.v1`: the cluster's nodes (list, health, explicit deletion).
        #[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
        pub mod v1 {
            tonic::include_proto!("kino.node.v1");
        }
    }

    /// Package `kino.service.*`.
    pub mod service {
        /// `kino.service.v1`: load-balanced services (frontends, backends, affinity).
        #[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
        pub mod v1 {
            tonic::include_proto!("kino.service.v1");
        }
    }

    /// Package `kino.flow.*`.
    pub mod flow {
        /// `kino.flow.v1`: the flow observer API (Hubble-like flow events).
        #[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
        pub mod v1 {
            tonic::include_proto!("kino.flow.v1");
        }
    }
}

/// Short alias for [`kino::agent::v1`].
pub use kino::agent::v1 as agent;
/// Short alias for [`kino::datastore::v1`].
pub use kino::datastore::v1 as datastore;
/// Short alias for [`kino::flow::v1`].
pub use kino::flow::v1 as flow;
/// Short alias for [`kino::ipam::v1`].
pub use kino::ipam::v1 as ipam;
/// Short alias for [`kino::node::v1`].
pub use kino::node::v1 as node;
/// Short alias for [`kino::policy::v1`].
pub use kino::policy::v1 as policy;
/// Short alias for [`kino::service::v1`].
pub use kino::service::v1 as service;
/// Short alias for [`kino::types::v1`].
pub use kino::types::v1 as types;

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_holds_every_package() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set decodes");
        for package in [
            "kino.types.v1",
            "kino.datastore.v1",
            "kino.ipam.v1",
            "kino.policy.v1",
            "kino.agent.v1",
            "kino.flow.v1",
            "kino.node.v1",
            "kino.service.v1",
        ] {
            assert!(
                set.file.iter().any(|f| f.package() == package),
                "{package} missing from FILE_DESCRIPTOR_SET"
            );
        }
    }
}
