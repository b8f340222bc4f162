//! Running the real `syncpay` binary: `serve` as a child process whose
//! stderr announces the bound addresses, and one-shot CLI commands. The
//! child processes go through the one launcher, `syncpay::child`.

use std::path::Path;
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use syncpay::child::{Echo, Process, Spec, Stream};

/// Bound on waiting for a child to say something or to exit; hitting it
/// means the child is stuck, not slow.
pub const CHILD_WAIT: Duration = Duration::from_secs(60);

/// The variables a child must not inherit: the tests choose every setting
/// themselves.
fn inherited_settings() -> Vec<String> {
    std::env::vars().map(|(key, _)| key).filter(|key| key.starts_with("SYNCPAY_") || key == "RUST_LOG").collect()
}

pub fn syncpay() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_syncpay"));
    for key in inherited_settings() {
        c.env_remove(key);
    }
    c
}

/// Runs a command to completion.
pub fn run(args: &[&str]) -> Output {
    syncpay().args(args).output().expect("run syncpay")
}

/// A child whose output lines are read one by one (and shown in the test's
/// output as `[child] …`).
pub struct Running {
    process: Process,
}

impl Running {
    /// Spawns `syncpay args…`, reading `stream` ("stdout" or "stderr")
    /// line by line on a thread; the other stream is inherited.
    pub fn spawn(args: &[&str], stream: &str) -> Running {
        let program = Path::new(env!("CARGO_BIN_EXE_syncpay"));
        let mut spec = Spec::new(program, args);
        spec.read = if stream == "stdout" { Stream::Stdout } else { Stream::Stderr };
        spec.echo = Echo::All("[child] ");
        spec.keep_lines = true;
        spec.inherit_other = true;
        spec.env_remove = inherited_settings();
        Running { process: Process::spawn(spec).expect("spawn syncpay") }
    }

    /// The next line that `pick` accepts (earlier lines are skipped).
    pub fn wait_line<T>(&self, pick: impl FnMut(&str) -> Option<T>) -> T {
        self.process.wait_line(CHILD_WAIT, pick).expect("the child printed the expected line in time")
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.process.terminate().expect("kill -TERM");
    }

    /// Waits for the child to exit (bounded by `CHILD_WAIT`; a child still
    /// running then is killed and the test fails).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let Some(status) = self.process.wait_exit_blocking(CHILD_WAIT).expect("wait") else {
            self.process.kill();
            panic!("child did not exit by itself within {CHILD_WAIT:?}");
        };
        assert!(status.code().is_some(), "child did not exit by itself within {CHILD_WAIT:?}: {status:?}");
        status
    }

    /// Remaining lines after the child exited.
    pub fn rest(&self) -> Vec<String> {
        self.process.rest()
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
