//! The flow observer (issue #6, Hubble-like): the datapath reports drops and new
//! connections' policy verdicts to a BPF ring buffer ([`crate::datapath::events`]); the
//! [`reader`] drains it, the [`enrich`]er resolves both sides of each event into a
//! [`flow::Flow`] (endpoint, identity, pod, labels, node), the [`observer`] keeps the last
//! flows in a [`ring`] and answers queries with [`filter`]s; `grpc::flow` serves it as
//! `kino.flow.v1`. Lost events are counted wherever they happen ([`FlowCounters`]).

pub mod directory;
pub mod enrich;
pub mod filter;
pub mod flow;
pub mod observer;
pub mod reader;
pub mod ring;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use enrich::{Directory, EndpointInfo, Enricher};
pub use filter::{FlowFilter, FlowSelection};
pub use flow::Flow;
pub use observer::{FlowCounters, FlowObserver, FlowQuery, ObserverStatus};
pub use ring::{LostSource, Observed};

use crate::datapath::MapOpError;
use crate::datapath::events::EventRing;

/// How often the enricher reloads the node's endpoints.
pub const ENDPOINT_REFRESH: Duration = Duration::from_secs(1);

/// Starts observing the datapath pinned in `pin_dir`: opens its event ring and spawns the
/// reader and the enricher's endpoint refresher (both run for the life of the runtime).
pub fn start(
    observer: Arc<FlowObserver>,
    pin_dir: &Path,
    directory: Arc<dyn Directory>,
) -> Result<(), MapOpError> {
    let ring = EventRing::open_pinned(pin_dir)?;
    let enricher = Enricher::new(observer.node().clone(), directory);
    tokio::spawn(enricher.clone().run_refresher(ENDPOINT_REFRESH));
    tokio::spawn(async move {
        if let Err(e) = reader::run(ring, observer, enricher).await {
            tracing::error!(error = %e, "flow observer: reading the datapath's event ring stopped");
        }
    });
    Ok(())
}
