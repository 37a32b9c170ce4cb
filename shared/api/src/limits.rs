//! Size limits of the kino APIs that both sides of a call need to know: one definition, so a
//! client can refuse what the server would refuse before sending it.

/// The datastore-gateway's default `--max-value-bytes`: the largest encoded resource spec it
/// stores (1 MiB, etcd's default request limit is 1.5 MiB). A gateway reports its actual
/// limit in `kino.datastore.v1.StatusResponse.max_value_bytes`.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// The largest `ImportPolicies` / `ValidatePolicies` request the policy-compiler reads
/// (16 MiB): many documents at once, each of which must also fit the datastore's value limit.
pub const MAX_POLICY_REQUEST_BYTES: usize = 16 * 1024 * 1024;
