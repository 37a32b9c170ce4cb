//! The view's gauges, set from the service at scrape time: identities by class, policies by
//! kind, compiled identities by enforcement, compiled entries, endpoints and the revision.
//!
//! They read the service, so they live beside it; [`crate::metrics`] holds only the
//! instruments, which lower layers (the view's compile timer) record into.

use std::sync::{Arc, LazyLock};

use kino_telemetry::metrics::on_scrape;

use super::PolicyService;
use crate::compile::kind_name;
use crate::identity::{IdentityClass, LOCAL_SCOPE};
use crate::metrics::{COMPILE, VIEW};
use crate::policy_map::CompiledPolicy;

fn enforcement(policy: &CompiledPolicy) -> &'static str {
    match (policy.enforcement.ingress, policy.enforcement.egress) {
        (false, false) => "none",
        (true, false) => "ingress",
        (false, true) => "egress",
        (true, true) => "both",
    }
}

/// Reads the view into the gauges before every scrape.
pub fn install(service: Arc<PolicyService>) {
    LazyLock::force(&COMPILE);
    on_scrape(move || {
        let service = service.clone();
        async move {
            let gauges = &*VIEW;
            let view = service.view();
            let compiler = view.compiler();
            // Counted without walking the CIDR identities (one per prefix policies name):
            // a scrape holds the view's read lock, which the compiler waits for.
            let cidr = compiler.cidr_identities().len();
            let (mut endpoint, mut reserved) = (0usize, 0usize);
            for info in compiler.identities().range(..LOCAL_SCOPE).map(|(_, i)| i) {
                match info.class {
                    IdentityClass::Endpoint => endpoint += 1,
                    IdentityClass::Reserved => reserved += 1,
                    IdentityClass::Cidr(_) => {}
                }
            }
            for (class, count) in [
                ("endpoint", endpoint),
                ("cidr", cidr),
                ("reserved", reserved),
            ] {
                gauges
                    .identities
                    .with_label_values(&[class])
                    .set(count as f64);
            }
            gauges.policies.reset();
            for policy in compiler.policies().values() {
                gauges
                    .policies
                    .with_label_values(&[kind_name(policy.kind)])
                    .inc();
            }
            gauges.compiled_identities.reset();
            for policy in compiler.compiled().values() {
                gauges
                    .compiled_identities
                    .with_label_values(&[enforcement(policy)])
                    .inc();
            }
            gauges
                .compiled_entries
                .set(compiler.compiled_entries() as f64);
            gauges.endpoints.set(view.endpoints().count() as f64);
            gauges.revision.set(view.revision() as f64);
        }
    });
}
