//! Test backends: a fresh embedded file per test, or a unique key prefix in a real etcd
//! (`kino_datastore_gateway::testing`, shared with the other services' tests).

#[allow(unused_imports)]
pub use kino_datastore_gateway::testing::{Backend, Cleanup, embedded, etcd_endpoints};

/// The etcd store under a unique prefix, or None (skip) outside CI without an etcd.
#[allow(dead_code)]
pub async fn etcd() -> Option<Backend> {
    kino_datastore_gateway::testing::etcd("gateway").await
}

/// A unique prefix so parallel tests never see each other's keys.
#[allow(dead_code)]
pub fn unique_prefix() -> String {
    kino_datastore_gateway::testing::unique_prefix("gateway")
}
