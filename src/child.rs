//! Running `syncpay` as a child process: the benchmark's server, and the
//! operational tests' servers and one-shot commands. One launcher: it
//! spawns the program, reads one of its output streams line by line on a
//! thread (so the child never blocks on a full pipe), catches the
//! `syncpay serving on URL` announcement, keeps the last lines for a
//! failure report, and stops the child by SIGTERM (graceful) or SIGKILL (a
//! crash). Dropping a [`Process`] kills and reaps it, so no child outlives
//! its owner.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Lines of the child's output kept for a failure report.
pub const TAIL_LINES: usize = 200;
/// How often an exiting child is looked at.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// What a child prints once it serves, right before its URL:
/// `syncpay serving on URL …` (and the benchmark's stand-in server,
/// `syncpay ceiling serving on URL`).
pub const SERVING_ON: &str = "serving on ";

/// Which output stream the launcher reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What the reader passes on to this process's own stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Every line, prefixed (tests: the child's log in the test's output).
    All(&'static str),
    /// Lines until the announcement, then only ERROR and WARN lines,
    /// prefixed (the benchmark: a quiet run that still shows problems).
    Problems(&'static str),
    /// Nothing (the tail is printed if the owner panics).
    Nothing,
}

/// What to run.
pub struct Spec<'a> {
    pub program: &'a Path,
    pub args: Vec<String>,
    /// Environment variables to set, and ones to remove.
    pub env: Vec<(String, String)>,
    pub env_remove: Vec<String>,
    pub read: Stream,
    pub echo: Echo,
    /// Whether every line is queued for [`Process::wait_line`] (only for
    /// owners that read them: the queue is unbounded).
    pub keep_lines: bool,
    /// Whether the stream not read goes to this process's own (else it is
    /// dropped).
    pub inherit_other: bool,
}

impl<'a> Spec<'a> {
    pub fn new(program: &'a Path, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Spec<'a> {
        Spec {
            program,
            args: args.into_iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect(),
            env: Vec::new(),
            env_remove: Vec::new(),
            read: Stream::Stderr,
            echo: Echo::Nothing,
            keep_lines: false,
            inherit_other: false,
        }
    }
}

/// A running child.
pub struct Process {
    child: Child,
    /// Just before `spawn`.
    pub spawned_at: Instant,
    serving: Option<oneshot::Receiver<(String, Instant)>>,
    lines: Option<mpsc::Receiver<String>>,
    tail: Arc<Mutex<VecDeque<String>>>,
    echo: Echo,
}

/// Why a child did not announce itself.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("the child ended without announcing where it serves")]
    Ended,
    #[error("the child did not announce where it serves within {0:?}")]
    Timeout(Duration),
    #[error("the child was asked for its announcement twice")]
    Asked,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Process {
    /// Spawns the program and starts reading its chosen stream.
    pub fn spawn(spec: Spec<'_>) -> std::io::Result<Process> {
        let mut cmd = Command::new(spec.program);
        cmd.args(&spec.args).stdin(Stdio::null());
        for key in &spec.env_remove {
            cmd.env_remove(key);
        }
        for (key, value) in &spec.env {
            cmd.env(key, value);
        }
        let other = || if spec.inherit_other { Stdio::inherit() } else { Stdio::null() };
        match spec.read {
            Stream::Stdout => cmd.stdout(Stdio::piped()).stderr(other()),
            Stream::Stderr => cmd.stderr(Stdio::piped()).stdout(other()),
        };
        let spawned_at = Instant::now();
        let mut child = cmd.spawn()?;
        let reader: Box<dyn Read + Send> = match spec.read {
            Stream::Stdout => Box::new(child.stdout.take().ok_or_else(|| std::io::Error::other("no stdout pipe"))?),
            Stream::Stderr => Box::new(child.stderr.take().ok_or_else(|| std::io::Error::other("no stderr pipe"))?),
        };
        let (serving_tx, serving) = oneshot::channel();
        let (lines_tx, lines) = if spec.keep_lines {
            let (tx, rx) = mpsc::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let kept = tail.clone();
        let echo = spec.echo;
        std::thread::spawn(move || read_lines(reader, serving_tx, lines_tx, &kept, echo));
        Ok(Process { child, spawned_at, serving: Some(serving), lines, tail, echo })
    }

    /// Waits (at most `wait`) for the `syncpay serving on URL` line; the URL
    /// and when it was read.
    pub async fn serving_on(&mut self, wait: Duration) -> Result<(String, Instant), ProcessError> {
        let serving = self.serving.take().ok_or(ProcessError::Asked)?;
        match tokio::time::timeout(wait, serving).await {
            Ok(Ok(announced)) => Ok(announced),
            Ok(Err(_)) => Err(ProcessError::Ended),
            Err(_) => Err(ProcessError::Timeout(wait)),
        }
    }

    /// The next line (of those kept) that `pick` accepts, earlier ones
    /// skipped; `None` if none came within `wait`.
    pub fn wait_line<T>(&self, wait: Duration, mut pick: impl FnMut(&str) -> Option<T>) -> Option<T> {
        let lines = self.lines.as_ref()?;
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).ok()?;
            if let Some(found) = pick(&line) {
                return Some(found);
            }
        }
    }

    /// The kept lines not read yet.
    pub fn rest(&self) -> Vec<String> {
        self.lines.as_ref().map(|l| l.try_iter().collect()).unwrap_or_default()
    }

    /// The last lines the child wrote, for a failure report.
    pub fn tail(&self) -> String {
        lock(&self.tail).iter().cloned().collect::<Vec<_>>().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (a graceful stop).
    pub fn terminate(&self) -> std::io::Result<()> {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("kill -TERM {} failed", self.pid())))
        }
    }

    /// SIGKILL, as a crash would, and returns once the process is gone.
    pub fn kill(&mut self) {
        // Fails only if the process is already gone, which is fine.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGKILL and returns at once; the process may still be dying.
    pub fn signal_kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Whether it has exited (and how), without waiting.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits at most `wait` for it to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, wait: Duration) -> std::io::Result<Option<ExitStatus>> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if started.elapsed() >= wait {
                return Ok(None);
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// As [`Process::wait_exit`], blocking the calling thread.
    pub fn wait_exit_blocking(&mut self, wait: Duration) -> std::io::Result<Option<ExitStatus>> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if started.elapsed() >= wait {
                return Ok(None);
            }
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// Its resident memory now and at its peak.
    pub fn memory(&self) -> Option<Memory> {
        Memory::of(self.pid())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
        // A failing owner shows what the child said last (unless every line
        // was shown already).
        if std::thread::panicking() && !matches!(self.echo, Echo::All(_)) {
            eprintln!("--- last lines of the child ({}) ---\n{}", self.child.id(), self.tail());
        }
    }
}

/// Reads the child's stream until it closes: the announcement once, every
/// line into the tail (and the queue, if kept), echoed as asked.
fn read_lines(
    reader: Box<dyn Read + Send>,
    serving: oneshot::Sender<(String, Instant)>,
    lines: Option<mpsc::Sender<String>>,
    tail: &Mutex<VecDeque<String>>,
    echo: Echo,
) {
    let mut serving = Some(serving);
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let at = Instant::now();
        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
        let announced_before = serving.is_none();
        if let Some(rest) = line.starts_with("syncpay ").then(|| line.split_once(SERVING_ON)).flatten().map(|(_, r)| r)
        {
            if let (Some(url), Some(tx)) = (rest.split_whitespace().next(), serving.take()) {
                let _ = tx.send((url.to_owned(), at));
            }
        }
        match echo {
            Echo::All(prefix) => eprintln!("{prefix}{line}"),
            Echo::Problems(prefix) if !announced_before || line.contains("ERROR") || line.contains("WARN") => {
                eprintln!("{prefix}{line}")
            }
            Echo::Problems(_) | Echo::Nothing => {}
        }
        {
            let mut tail = lock(tail);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.clone());
        }
        if let Some(tx) = &lines {
            // The owner stopped reading: keep draining the pipe.
            let _ = tx.send(line);
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

/// Bytes in MiB, for people.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_memory_is_readable() {
        let m = Memory::of(std::process::id()).expect("own /proc status");
        assert!(m.rss > 0 && m.hwm >= m.rss);
    }

    #[tokio::test]
    async fn a_child_is_read_line_by_line_and_its_announcement_caught() {
        let sh = Path::new("/bin/sh");
        let script = "echo one >&2; echo 'syncpay serving on http://127.0.0.1:9 (test)' >&2; echo three >&2; sleep 30";
        let mut spec = Spec::new(sh, ["-c", script]);
        spec.keep_lines = true;
        let mut p = Process::spawn(spec).expect("spawn");
        let (url, _) = p.serving_on(Duration::from_secs(30)).await.expect("announced");
        assert_eq!(url, "http://127.0.0.1:9");
        assert_eq!(p.wait_line(Duration::from_secs(30), |l| (l == "three").then_some(())), Some(()));
        assert!(p.tail().contains("one"));
        p.terminate().expect("SIGTERM");
        let status = p.wait_exit(Duration::from_secs(30)).await.expect("wait").expect("exited");
        assert!(!status.success(), "a shell killed by SIGTERM does not exit 0: {status:?}");
    }
}
