//! Running the real `syncpay` binary: `serve` as a child process whose
//! stderr announces the bound addresses, and one-shot CLI commands.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Bound on waiting for a child to say something or to exit; hitting it
/// means the child is stuck, not slow.
pub const CHILD_WAIT: Duration = Duration::from_secs(60);

pub fn syncpay() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_syncpay"));
    // The tests choose every setting themselves.
    for (key, _) in std::env::vars() {
        if key.starts_with("SYNCPAY_") || key == "RUST_LOG" {
            c.env_remove(key);
        }
    }
    c
}

/// Runs a command to completion.
pub fn run(args: &[&str]) -> Output {
    syncpay().args(args).output().expect("run syncpay")
}

/// A child whose output lines arrive on a channel.
pub struct Running {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl Running {
    /// Spawns `syncpay args…`, reading `stream` ("stdout" or "stderr")
    /// line by line on a thread; the other stream is inherited.
    pub fn spawn(args: &[&str], stream: &str) -> Running {
        let mut cmd = syncpay();
        cmd.args(args).stdin(Stdio::null());
        match stream {
            "stdout" => cmd.stdout(Stdio::piped()),
            _ => cmd.stderr(Stdio::piped()),
        };
        let mut child = cmd.spawn().expect("spawn syncpay");
        let (tx, lines) = mpsc::channel();
        let reader: Box<dyn std::io::Read + Send> = match stream {
            "stdout" => Box::new(child.stdout.take().expect("stdout")),
            _ => Box::new(child.stderr.take().expect("stderr")),
        };
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { return };
                eprintln!("[child] {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines }
    }

    /// The next line that `pick` accepts (earlier lines are skipped).
    pub fn wait_line<T>(&self, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + CHILD_WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.lines.recv_timeout(left).expect("the child printed the expected line in time");
            if let Some(found) = pick(&line) {
                return found;
            }
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the child to exit (bounded by `CHILD_WAIT`).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let pid = self.child.id();
        let (tx, rx) = mpsc::channel();
        // A watchdog kills the child if it has not exited in time, so the
        // blocking wait below always returns.
        let waiter = std::thread::spawn(move || {
            let _ = rx.recv_timeout(CHILD_WAIT).map_err(|_| {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            });
        });
        let status = self.child.wait().expect("wait");
        let _ = tx.send(());
        let _ = waiter.join();
        assert!(status.code().is_some(), "child did not exit by itself within {CHILD_WAIT:?}: {status:?}");
        status
    }

    /// Remaining lines after the child exited.
    pub fn rest(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `syncpay serve` on `data_dir`, bound to free loopback ports.
pub struct Serve {
    pub process: Running,
    pub url: String,
    pub metrics_url: String,
    /// The operator console (`http://127.0.0.1:<port>/`).
    pub console_url: String,
}

impl Serve {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Serve {
        let dir = data_dir.display().to_string();
        // Rate limits off, as in the in-process harness: functional tests
        // reuse a few buyers quickly; tests/limits.rs tests the limits.
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--console-listen",
            "127.0.0.1:0",
            "--data-dir",
            &dir,
            "--set",
            "limits.subscriber_offers_per_minute=0",
            "--set",
            "limits.shop_trades_per_second=0",
        ];
        args.extend_from_slice(extra);
        let process = Running::spawn(&args, "stderr");
        let metrics_url =
            process.wait_line(|l| l.strip_prefix("syncpay metrics on ").map(|rest| rest.trim().to_owned()));
        let console_url = process.wait_line(|l| {
            l.strip_prefix("syncpay console on ").and_then(|rest| rest.split_whitespace().next()).map(str::to_owned)
        });
        let url = process.wait_line(|l| {
            l.strip_prefix("syncpay serving on ").and_then(|rest| rest.split_whitespace().next()).map(str::to_owned)
        });
        Serve { process, url, metrics_url, console_url }
    }
}

/// A plain HTTP/1.1 GET on loopback; returns (status line, body).
pub fn http_get(url: &str) -> (String, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    stream.set_read_timeout(Some(CHILD_WAIT)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}
