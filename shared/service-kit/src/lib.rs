//! Service bootstrap shared by every Kinocilium binary: listen addresses (TCP and unix
//! socket), TLS/mTLS flags, [`serve`] (health, reflection, request spans, graceful shutdown)
//! and [`connect`]/[`connect_lazy`] for clients of other services.
//!
//! ```no_run
//! # async fn run() -> Result<(), kino_service_kit::ServiceError> {
//! use kino_service_kit::{connect, serve, ClientTlsArgs, ServeSpec, TlsArgs};
//! serve(ServeSpec::new("kino-ipam", ":7402".parse()?).with_tls(TlsArgs::default())).await?;
//! let channel = connect("127.0.0.1:7401", &ClientTlsArgs::default()).await?;
//! # drop(channel); Ok(()) }
//! ```

#![warn(missing_docs)]

mod connect;
mod drain;
mod error;
mod listen;
mod message_cap;
pub mod records;
mod serve;
mod signal;
mod tls;

pub use connect::{connect, connect_lazy};
pub use drain::Draining;
pub use error::ServiceError;
pub use kino_telemetry::TracedChannel;
pub use listen::{ListenAddr, Listener};
pub use message_cap::{MAX_STATUS_MESSAGE_BYTES, cap_status_message};
pub use serve::{
    DEFAULT_GRACE_PERIOD, HEALTH_SERVICE, REFLECTION_V1_SERVICE, REFLECTION_V1ALPHA_SERVICE,
    ServeSpec, serve,
};
pub use signal::shutdown_signal;
pub use tls::{ClientTlsArgs, TlsArgs};
