//! kino-cni: run by the container runtime with `CNI_*` environment variables and the network
//! configuration on stdin; prints the CNI result or error JSON on stdout.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut input = std::io::stdin();
    // A person trying the binary at a terminal should get an answer, not a hang.
    let stdin = if input.is_terminal() {
        Ok(Vec::new())
    } else {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes).map(|_| bytes)
    };
    let reply = kino_cni::run(|name| std::env::var(name).ok(), stdin);
    if !reply.stdout.is_empty() {
        let mut stdout = std::io::stdout().lock();
        // Nothing more to do if the runtime stopped reading: the exit status still tells.
        let _ = writeln!(stdout, "{}", reply.stdout).and_then(|()| stdout.flush());
    }
    if reply.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
