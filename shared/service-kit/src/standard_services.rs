//! The standard gRPC services every Kinocilium server carries beside its own: health and
//! reflection. [`crate::serve`] installs them; [`crate::authz`] opens them to every
//! authenticated caller. Their names live here, below both, so neither imports the other
//! for them.

/// Fully-qualified name of the health service, always served.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
/// Fully-qualified name of the gRPC reflection v1 service, always served.
pub const REFLECTION_V1_SERVICE: &str = "grpc.reflection.v1.ServerReflection";
/// Fully-qualified name of the gRPC reflection v1alpha service, always served.
pub const REFLECTION_V1ALPHA_SERVICE: &str = "grpc.reflection.v1alpha.ServerReflection";
