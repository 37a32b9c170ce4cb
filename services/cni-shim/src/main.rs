//! kino-cni: run by the container runtime with `CNI_*` environment variables and the network
//! configuration on stdin; prints the CNI result or error JSON on stdout.
//!
//! Logs go to stderr, at `warn` unless `KINO_LOG` says otherwise: stdout is the result. With
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, each call exports a span ("CNI ADD", …) that starts the
//! pod's trace; the agent call continues it.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use kino_telemetry::{LogArgs, LogFormat};

// Two workers: the final span export runs on the runtime while main drops the guard.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let mut input = std::io::stdin();
    // A person trying the binary at a terminal should get an answer, not a hang.
    let stdin = if input.is_terminal() {
        Ok(Vec::new())
    } else {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes).map(|_| bytes)
    };
    let log = LogArgs {
        log_format: LogFormat::Pretty,
        log_level: std::env::var("KINO_LOG").unwrap_or_else(|_| "warn".to_owned()),
    };
    // Telemetry must never cost the runtime its answer.
    let telemetry = kino_telemetry::init("kino-cni", &log)
        .inspect_err(|error| eprintln!("kino-cni: telemetry off: {error}"))
        .ok();
    let reply = kino_cni::run(|name| std::env::var(name).ok(), stdin).await;
    if !reply.stdout.is_empty() {
        let mut stdout = std::io::stdout().lock();
        // Nothing more to do if the runtime stopped reading: the exit status still tells.
        let _ = writeln!(stdout, "{}", reply.stdout).and_then(|()| stdout.flush());
    }
    drop(telemetry);
    if reply.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
