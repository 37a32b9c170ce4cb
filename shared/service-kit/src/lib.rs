//! Service bootstrap shared by every Kinocilium binary: listen addresses (TCP and unix
//! socket), mTLS flags with defaults from the PKI directory ([`pki`]), [`serve`] (health,
//! reflection, request spans, authorization by the caller's certificate ([`authz`]),
//! graceful shutdown) and [`connect`]/[`connect_lazy`] for clients of other services.
//!
//! ```no_run
//! # async fn run() -> Result<(), kino_service_kit::ServiceError> {
//! use kino_service_kit::{connect, serve, ClientTlsArgs, PkiArgs, ServeSpec, TlsArgs};
//! use kino_service_kit::authz::{Access, MethodRule};
//! use kino_service_kit::principal::Role;
//! static TABLE: &[MethodRule] = &[("/kino.ipam.v1.IpamService/Allocate", Access::Roles(&[Role::Agent]))];
//! let pki = PkiArgs::default();
//! let tls = TlsArgs::default().with_pki_defaults(&pki, "ipam");
//! serve(ServeSpec::new("kino-ipam", ":7402".parse()?).with_tls(tls).with_authorization(TABLE)).await?;
//! let upstream = ClientTlsArgs::default().with_pki_defaults(&pki, "ipam");
//! let channel = connect("127.0.0.1:7401", &upstream).await?;
//! # drop(channel); Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod authz;
mod connect;
mod drain;
mod error;
mod listen;
mod message_cap;
pub mod pki;
pub mod principal;
mod private_files;
pub mod records;
mod serve;
mod signal;
mod standard_services;
mod tls;
mod unix_authority;

pub use connect::{connect, connect_lazy};
pub use drain::Draining;
pub use error::ServiceError;
pub use kino_telemetry::TracedChannel;
pub use listen::{ListenAddr, Listener};
pub use message_cap::{MAX_STATUS_MESSAGE_BYTES, cap_status_message};
pub use private_files::make_new_files_private;
pub use serve::{
    DEFAULT_GRACE_PERIOD, HEALTH_SERVICE, REFLECTION_V1_SERVICE, REFLECTION_V1ALPHA_SERVICE,
    ServeSpec, serve,
};
pub use signal::shutdown_signal;
pub use tls::{ClientTlsArgs, PkiArgs, TlsArgs};
pub use unix_authority::UNIX_AUTHORITY;
