//! A server the benchmark runs as a child process of its own binary: started
//! without blocking (so a restart can be timed while clients already knock),
//! announced by its "serving on URL" line, read through `/proc` (memory),
//! and stopped gracefully (SIGTERM) or not (SIGKILL).

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::sync::oneshot;

/// How long a child server may take to announce its address.
pub const START_WAIT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM: its own shutdown
/// grace (`sync_server::SHUTDOWN_GRACE`, 10 s) and then some.
pub const STOP_WAIT: Duration = Duration::from_secs(30);
/// How often an exiting child is looked at.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// A child that has been spawned and may not have announced itself yet.
pub struct Launch {
    child: Child,
    /// Just before `spawn`.
    pub spawned_at: Instant,
    announced: oneshot::Receiver<(String, Instant)>,
}

/// A child server that announced its address.
pub struct Server {
    child: Child,
    pub url: String,
    pub spawned_at: Instant,
    /// When its "serving on" line was read.
    pub announced_at: Instant,
}

impl Launch {
    /// Runs this binary with `args`. A thread reads its stderr: the "serving
    /// on URL" line is announced, later ERROR and WARN lines are passed on,
    /// the rest is dropped, so the child never blocks on a full pipe.
    pub fn spawn(args: &[String]) -> anyhow::Result<Launch> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let spawned_at = Instant::now();
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the server")?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr pipe"))?;
        let (tx, announced) = oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                if tx.is_some() && line.contains("serving on") {
                    if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send((url.to_owned(), at));
                        }
                        continue;
                    }
                }
                if tx.is_some() || line.contains("ERROR") || line.contains("WARN") {
                    eprintln!("server: {line}");
                }
            }
        });
        Ok(Launch { child, spawned_at, announced })
    }

    /// Waits (at most `START_WAIT`) for the announcement.
    pub async fn ready(mut self) -> anyhow::Result<Server> {
        match tokio::time::timeout(START_WAIT, &mut self.announced).await {
            Ok(Ok((url, announced_at))) => {
                Ok(Server { child: self.child, url, spawned_at: self.spawned_at, announced_at })
            }
            _ => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the server did not announce its address")
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
        self.child.id()
    }

    pub fn memory(&self) -> Option<Memory> {
        Memory::of(self.pid())
    }

    /// SIGTERM, then waits for the exit; returns how long the server took
    /// and whether it exited successfully.
    pub async fn terminate(mut self) -> anyhow::Result<(Duration, bool)> {
        let sent = Instant::now();
        let status =
            Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid());
        }
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the server")? {
                return Ok((sent.elapsed(), status.success()));
            }
            if sent.elapsed() > STOP_WAIT {
                self.kill();
                bail!("the server did not exit within {STOP_WAIT:?} of SIGTERM");
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// SIGKILL, as a crash would; waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    /// A server is never left running behind the benchmark.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// A process's resident memory now and at its peak, from /proc/<pid>/status.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// VmRSS.
    pub rss: u64,
    /// VmHWM: the largest VmRSS so far.
    pub hwm: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()?.checked_mul(1024)
        };
        Some(Memory { rss: kib("VmRSS:")?, hwm: kib("VmHWM:")? })
    }

    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({ "rss_bytes": self.rss, "hwm_bytes": self.hwm })
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} MiB (peak {:.1} MiB)", mib(self.rss), mib(self.hwm))
    }
}

/// MiB, for people.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
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
    fn own_memory_is_readable() {
        let m = Memory::of(std::process::id()).expect("own /proc status");
        assert!(m.rss > 0 && m.hwm >= m.rss);
    }

    #[test]
    fn a_free_port_can_be_bound() {
        let port = free_port().expect("a port");
        assert!((20_000..32_000).contains(&port));
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
