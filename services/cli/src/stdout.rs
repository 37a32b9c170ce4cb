//! The command's output on stdout. A reader that goes away early (`kino endpoint list | head
//! -1`, a pager quit) ends the command quietly, the way it ends the Go tools operators use
//! beside kino (kubectl, cilium, hubble): nothing on stderr, exit status 141 (128 + SIGPIPE,
//! what the shell reports for a program a closed pipe stopped). Rust's `print!` would panic
//! instead, because the runtime ignores SIGPIPE and the write fails with EPIPE.

use std::io::{ErrorKind, Write};

/// The exit status of a command whose reader closed its stdout.
pub const EXIT_BROKEN_PIPE: i32 = 128 + 13;

/// Writes `text` to stdout and flushes it (so a follower sees each line at once).
pub fn print(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::BrokenPipe => std::process::exit(EXIT_BROKEN_PIPE),
        // Anything else (a full disk behind a redirect) is worth saying, once.
        Err(e) => {
            eprintln!("error: cannot write the output: {e}");
            std::process::exit(1);
        }
    }
}

/// Writes `text` and a newline to stdout.
pub fn println(text: &str) {
    print(&format!("{text}\n"));
}
