//! kino-rr: a tiny netperf-like TCP_RR / TCP_CRR tool for the policy benchmark (python is too
//! slow to measure the kernel).
//!
//! - `kino-rr server --listen 0.0.0.0:5001`: accepts one connection at a time and answers
//!   every byte it reads with one byte, until the peer closes (netserver's loop, no thread per
//!   connection, so TCP_CRR measures the kernel and not thread creation). A connection idle
//!   for `--idle-timeout` seconds is dropped, so a peer whose FIN never arrives (a firewall
//!   cut it) cannot block the server.
//! - `kino-rr client --connect 10.0.0.2:5001 --mode rr --seconds 5`: TCP_RR — one
//!   connection, 1-byte request / 1-byte response, as many as fit in the time.
//! - `--mode crr`: TCP_CRR — connect, 1 byte each way, close (the client closes first, as
//!   netperf does), as many as fit in the time.
//! - `--mode stream`: TCP_STREAM — one connection, 64 KiB writes for the time, then the
//!   client waits until the server has read everything (the server reads and discards a
//!   connection whose first byte is `S`); `rate` is then Mbit/s delivered, `transactions` the
//!   bytes.
//!
//! The client prints one JSON line: `{"mode":"rr","transactions":N,"seconds":S,"rate":R,
//! "cpu_seconds":C,"errors":E,"slow":L,"max_ms":M}` (`cpu_seconds`: the client's user +
//! system time; `slow`: transactions over 100 ms, i.e. a lost packet retransmitted; `max_ms`:
//! the slowest). Pin both ends with `taskset -c 0` (see `../shared/BENCHMARKS.md`).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "kino-rr", about = "TCP_RR / TCP_CRR client and server")]
struct Args {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Answer one byte per byte read, one connection at a time, until killed.
    Server {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Seconds a connection may stay silent before the server drops it.
        #[arg(long, default_value_t = 5.0)]
        idle_timeout: f64,
    },
    /// Run transactions against a server for a while and print the rate as JSON.
    Client {
        /// Server address.
        #[arg(long)]
        connect: SocketAddr,
        /// rr: transactions on one connection; crr: a connection per transaction; stream:
        /// bulk transfer.
        #[arg(long, value_enum)]
        mode: Test,
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Test {
    /// TCP_RR.
    Rr,
    /// TCP_CRR.
    Crr,
    /// TCP_STREAM.
    Stream,
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Mode::Server {
            listen,
            idle_timeout,
        } => serve(listen, Duration::from_secs_f64(idle_timeout)),
        Mode::Client {
            connect,
            mode,
            seconds,
        } => {
            let duration = Duration::from_secs_f64(seconds);
            let cpu_before = cpu_seconds();
            let start = Instant::now();
            let out = match mode {
                Test::Rr => rr(connect, duration)?,
                Test::Crr => crr(connect, duration)?,
                Test::Stream => stream(connect, duration)?,
            };
            let elapsed = start.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu_before;
            let rate = match mode {
                Test::Stream => out.transactions as f64 * 8.0 / elapsed / 1e6,
                _ => out.transactions as f64 / elapsed,
            };
            println!(
                "{}",
                serde_json::json!({
                    "mode": match mode { Test::Rr => "rr", Test::Crr => "crr", Test::Stream => "stream" },
                    "transactions": out.transactions,
                    "seconds": elapsed,
                    "rate": rate,
                    "cpu_seconds": cpu,
                    "errors": out.errors,
                    "slow": out.slow,
                    "max_ms": out.max.as_secs_f64() * 1000.0,
                })
            );
            Ok(())
        }
    }
}

/// Serves connections one after the other.
fn serve(listen: SocketAddr, idle: Duration) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    eprintln!("kino-rr: listening on {listen}");
    loop {
        let (mut stream, _) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("accept"),
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(idle));
        let mut byte = [0u8; 1];
        // A stream client says so with its first byte: read and discard until EOF.
        if !matches!(stream.read(&mut byte), Ok(1)) {
            continue;
        }
        if byte[0] == STREAM_MARK {
            let mut sink = vec![0u8; 1 << 16];
            while let Ok(n) = stream.read(&mut sink) {
                if n == 0 {
                    break;
                }
            }
            continue;
        }
        if stream.write_all(&byte).is_err() {
            continue;
        }
        // Until EOF, an error (a reset by a prober is normal) or the idle timeout.
        while let Ok(1) = stream.read(&mut byte) {
            if stream.write_all(&byte).is_err() {
                break;
            }
        }
    }
}

/// The first byte of a stream client's connection.
const STREAM_MARK: u8 = b'S';

fn stream(server: SocketAddr, duration: Duration) -> anyhow::Result<Outcome> {
    let mut stream = TcpStream::connect_timeout(&server, STUCK)
        .with_context(|| format!("connecting to {server}"))?;
    stream.set_read_timeout(Some(STUCK))?;
    stream.write_all(&[STREAM_MARK])?;
    let chunk = vec![0x5au8; 1 << 16];
    let deadline = Instant::now() + duration;
    let mut out = Outcome::default();
    while Instant::now() < deadline {
        stream
            .write_all(&chunk)
            .with_context(|| format!("sending to {server}"))?;
        out.transactions += chunk.len() as u64;
    }
    // Delivered, not only buffered: the server closes once it has read everything.
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut rest = [0u8; 1];
    let _ = stream.read(&mut rest);
    Ok(out)
}

/// One transaction on an open connection.
fn transact(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.write_all(b"x")?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)
}

fn rr(server: SocketAddr, duration: Duration) -> anyhow::Result<Outcome> {
    let mut stream = TcpStream::connect_timeout(&server, STUCK)
        .with_context(|| format!("connecting to {server}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(STUCK))?;
    let deadline = Instant::now() + duration;
    let mut out = Outcome::default();
    loop {
        let start = Instant::now();
        if start >= deadline {
            break;
        }
        transact(&mut stream)
            .with_context(|| format!("transaction {} with {server}", out.transactions))?;
        out.record(start.elapsed());
    }
    Ok(out)
}

/// A transaction (or connect) taking longer than this fails the run: the path is broken.
const STUCK: Duration = Duration::from_secs(10);

/// Transactions that took longer than this (a retransmission: a packet was lost) are
/// counted as slow.
const SLOW: Duration = Duration::from_millis(100);

fn crr(server: SocketAddr, duration: Duration) -> anyhow::Result<Outcome> {
    let deadline = Instant::now() + duration;
    let mut out = Outcome::default();
    loop {
        let start = Instant::now();
        if start >= deadline {
            break;
        }
        let mut stream = match TcpStream::connect_timeout(&server, STUCK) {
            Ok(s) => s,
            // No local port free right now (TIME_WAIT): count it, let ports age, go on.
            Err(e) if e.kind() == ErrorKind::AddrNotAvailable => {
                out.errors += 1;
                if out.errors > 10_000 {
                    bail!("no local port to connect from: {e}");
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {server}")),
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(STUCK))?;
        transact(&mut stream)
            .with_context(|| format!("transaction {} with {server}", out.transactions))?;
        drop(stream);
        out.record(start.elapsed());
    }
    Ok(out)
}

/// What a client run did.
#[derive(Default)]
struct Outcome {
    transactions: u64,
    /// Connect attempts that found no local port.
    errors: u64,
    /// Transactions slower than [`SLOW`].
    slow: u64,
    /// The slowest transaction.
    max: Duration,
}

impl Outcome {
    fn record(&mut self, took: Duration) {
        self.transactions += 1;
        if took > SLOW {
            self.slow += 1;
        }
        self.max = self.max.max(took);
    }
}

/// User + system CPU time of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}
