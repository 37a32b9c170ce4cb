//! Load-balanced services (`kino.service.v1`), the parts that need no datastore: the service
//! network ([`network`]: `--service-cidr`, `--node-port-range`), a service validated from a
//! request ([`model`]) and the claim records that keep every frontend and frontend id
//! unique ([`claims`]). The protocol over the datastore is `service/lb.rs`; the gRPC
//! adapter is `lb_grpc.rs`.

pub mod claims;
pub mod model;
pub mod network;
