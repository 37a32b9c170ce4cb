//! The reader task: drains the datapath's `kino_events` ring buffer every [`DRAIN_EVERY`]
//! (the datapath submits without waking the reader, to spare an IPI per event) and when
//! epoll says it is filling up (tokio's `AsyncFd`), turns each event into a flow and
//! publishes it, and polls the
//! datapath's counters so events the kernel could not report are counted and announced to
//! followers — never silently skipped.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::enrich::Enricher;
use super::observer::{FlowObserver, MonotonicClock};
use super::ring::LostSource;
use crate::datapath::events::{EventCounters, EventRing};

/// Events handled before the reader yields to other tasks.
const BATCH: usize = 4096;
/// How often the ring is drained without a wakeup: the most a flow waits to be seen.
pub const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// How often the datapath's emitted/lost counters are read.
const COUNTERS_EVERY: Duration = Duration::from_millis(250);
/// How often the monotonic → wall clock offset is taken again.
const CLOCK_EVERY: Duration = Duration::from_secs(1);

/// Reads `ring` until its fd fails (which does not happen while the map exists).
pub async fn run(
    ring: EventRing,
    observer: Arc<FlowObserver>,
    enricher: Enricher,
) -> io::Result<()> {
    // Counters survive agent restarts (pinned): report what happens from now on.
    let baseline = ring.counters().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "flow observer: reading the datapath's event counters");
        EventCounters::default()
    });
    let mut reported = baseline;
    // SAFETY: the fd is the ring buffer map's, owned by `ring`, which the AsyncFd owns: it
    // stays open and the same for the AsyncFd's whole life.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let mut counters_tick = tokio::time::interval(COUNTERS_EVERY);
    counters_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clock = MonotonicClock::now();
    let mut clock_taken = Instant::now();
    let mut decode_warned = false;
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let handled = drain(guard.get_inner_mut(), &observer, &enricher, &mut clock, &mut clock_taken, &mut decode_warned).await;
                if handled < BATCH {
                    guard.clear_ready();
                } else {
                    drop(guard);
                    tokio::task::yield_now().await;
                }
            }
            _ = drain_tick.tick() => {
                while drain(fd.get_mut(), &observer, &enricher, &mut clock, &mut clock_taken, &mut decode_warned).await == BATCH {
                    tokio::task::yield_now().await;
                }
            }
            _ = counters_tick.tick() => {
                match fd.get_ref().counters() {
                    Ok(now) => {
                        observer.report_lost(
                            LostSource::DatapathRing,
                            now.lost.saturating_sub(reported.lost),
                        );
                        observer
                            .counters()
                            .datapath_events
                            .store(now.emitted.saturating_sub(baseline.emitted), Ordering::Relaxed);
                        reported = now;
                    }
                    Err(e) => tracing::warn!(error = %e, "flow observer: reading the datapath's event counters"),
                }
            }
        }
    }
}

/// Handles up to [`BATCH`] events waiting in the ring; returns how many it handled.
async fn drain(
    ring: &mut EventRing,
    observer: &FlowObserver,
    enricher: &Enricher,
    clock: &mut MonotonicClock,
    clock_taken: &mut Instant,
    decode_warned: &mut bool,
) -> usize {
    if clock_taken.elapsed() >= CLOCK_EVERY {
        *clock = MonotonicClock::now();
        *clock_taken = Instant::now();
    }
    let mut handled = 0;
    while handled < BATCH {
        let Some(record) = ring.next_event() else {
            break;
        };
        handled += 1;
        match record {
            Ok(event) => {
                enricher.learn_endpoint_of(&event).await;
                observer.publish(enricher.flow(&event, clock));
            }
            Err(e) => {
                if !*decode_warned {
                    tracing::warn!(error = %e, "flow observer: undecodable event (counted as lost)");
                    *decode_warned = true;
                }
                observer.report_lost(LostSource::ObserverQueue, 1);
            }
        }
    }
    handled
}
