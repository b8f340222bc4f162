//! The servers the benchmark loads, as child processes of its own binary
//! (through the one launcher, `syncpay::child`): started without blocking
//! (so a restart can be timed while clients already knock), announced by
//! their "serving on URL" line, read through `/proc` (memory), and stopped
//! gracefully (SIGTERM) or not (SIGKILL).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use syncpay::child::{Echo, Process, Spec, Stream};

pub use syncpay::child::{mib, Memory};

/// How long a child server may take to announce its address.
pub const START_WAIT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM: its own shutdown
/// grace (`sync_server::SHUTDOWN_GRACE`, 10 s) and then some.
pub const STOP_WAIT: Duration = Duration::from_secs(30);

/// A child that has been spawned and may not have announced itself yet.
pub struct Launch {
    process: Process,
    /// Just before `spawn`.
    pub spawned_at: Instant,
}

/// A child server that announced its address.
pub struct Server {
    process: Process,
    pub url: String,
    pub spawned_at: Instant,
    /// When its "serving on" line was read.
    pub announced_at: Instant,
}

impl Launch {
    /// Runs this binary with `args`. Its stderr is read: lines up to the
    /// announcement and later ERROR and WARN lines are passed on, the rest
    /// dropped, so the child never blocks on a full pipe.
    pub fn spawn(args: &[String]) -> anyhow::Result<Launch> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut spec = Spec::new(&exe, args);
        spec.read = Stream::Stderr;
        spec.echo = Echo::Problems("server: ");
        let process = Process::spawn(spec).context("starting the server")?;
        let spawned_at = process.spawned_at;
        Ok(Launch { process, spawned_at })
    }

    /// Waits (at most `START_WAIT`) for the announcement.
    pub async fn ready(mut self) -> anyhow::Result<Server> {
        match self.process.serving_on(START_WAIT).await {
            Ok((url, announced_at)) => {
                Ok(Server { process: self.process, url, spawned_at: self.spawned_at, announced_at })
            }
            Err(e) => {
                self.process.kill();
                bail!("the server did not announce its address: {e}")
            }
        }
    }
}

impl Server {
    /// Spawns and waits for the announcement.
    pub async fn spawn(args: &[String]) -> anyhow::Result<Server> {
        Launch::spawn(args)?.ready().await
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn memory(&self) -> Option<Memory> {
        self.process.memory()
    }

    /// SIGTERM, then waits for the exit; returns how long the server took
    /// and whether it exited successfully.
    pub async fn terminate(mut self) -> anyhow::Result<(Duration, bool)> {
        let sent = Instant::now();
        self.process.terminate().context("running kill -TERM")?;
        match self.process.wait_exit(STOP_WAIT).await.context("waiting for the server")? {
            Some(status) => Ok((sent.elapsed(), status.success())),
            None => {
                self.kill();
                bail!("the server did not exit within {STOP_WAIT:?} of SIGTERM");
            }
        }
    }

    /// SIGKILL, as a crash would; waits for the process to be gone.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// A loopback port nobody listens on, below Linux's ephemeral range
/// (32768–60999), so no outgoing connection takes it while a restarted
/// server is down. Candidates start at a point that depends on this
/// process, so parallel runs try different ports first.
pub fn free_port() -> anyhow::Result<u16> {
    free_port_from(u16::try_from(std::process::id() % u32::from(PORT_COUNT)).unwrap_or(0))
}

const FIRST_PORT: u16 = 20_000;
const PORT_COUNT: u16 = 12_000;

/// The first port, trying `FIRST_PORT + start` and upwards (wrapping
/// within the range), that could be bound on 127.0.0.1 when tried.
fn free_port_from(start: u16) -> anyhow::Result<u16> {
    for i in 0..PORT_COUNT {
        let port = FIRST_PORT + (start % PORT_COUNT + i) % PORT_COUNT;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port in {FIRST_PORT}..{}", FIRST_PORT + PORT_COUNT)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port held by a listener is passed over for the next free one.
    /// (Asserting that a returned port can still be bound afterwards would
    /// race with every other process on the machine: CI saw it fail.)
    #[test]
    fn a_port_in_use_is_passed_over() {
        let port = free_port().expect("a port");
        assert!((FIRST_PORT..FIRST_PORT + PORT_COUNT).contains(&port));
        // Hold some free port in the range, then ask from exactly there.
        let (held, _listener) = (0..PORT_COUNT)
            .find_map(|i| {
                let p = FIRST_PORT + (port - FIRST_PORT + i) % PORT_COUNT;
                std::net::TcpListener::bind(("127.0.0.1", p)).ok().map(|l| (p, l))
            })
            .expect("a port to hold");
        let next = free_port_from(held - FIRST_PORT).expect("another port");
        assert_ne!(next, held, "a port with a listener on it is not free");
        assert!((FIRST_PORT..FIRST_PORT + PORT_COUNT).contains(&next));
    }
}
