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
    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_000;
    let start = u16::try_from(std::process::id() % u32::from(COUNT)).unwrap_or(0);
    for i in 0..COUNT {
        let port = FIRST + (start + i) % COUNT;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port in {FIRST}..{}", FIRST + COUNT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_can_be_bound() {
        let port = free_port().expect("a port");
        assert!((20_000..32_000).contains(&port));
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
