//! Throwaway PostgreSQL clusters for the tests and the benchmark: `initdb`
//! and `pg_ctl` run as an unprivileged user in a temporary folder, the
//! server listens on a free loopback port only, and durability stays on
//! (fsync, synchronous_commit, full-page writes: a figure or a test on a
//! cluster that may lose commits would prove nothing).
//!
//! A cluster is stopped and its folder removed when its [`Cluster`] is
//! dropped, and also when the process that started it dies in any way
//! (a panic, `exit`, SIGKILL): each cluster has a watchdog process that
//! waits on a pipe only its owner holds, and stops the cluster when the
//! pipe closes. Clusters a watchdog could not stop either (a reboot, a
//! killed watchdog) are found by [`reap_leftovers`] through the owner
//! file in their folder and stopped the next time a cluster starts.
//!
//! A standby ([`Cluster::start_standby`]) is a `pg_basebackup -R` of a
//! running primary, streaming from it; [`Cluster::require_sync_standby`]
//! makes the primary wait for it on every commit, and [`Cluster::promote`]
//! turns it into a primary.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// Overrides where the server binaries are (a folder holding `initdb`,
/// `pg_ctl`, `postgres`, `pg_basebackup`, `psql`, `pgbench`).
pub const PG_BIN_ENV: &str = "SYNCPAY_PG_BIN";
/// Where Debian puts each major version's server binaries
/// (`/usr/lib/postgresql/<major>/bin`).
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";
/// The unprivileged user the server runs as when this process is root:
/// `initdb` refuses to run as root. Debian's package creates it.
pub const PG_USER: &str = "postgres";
/// The only role in a throwaway cluster (`initdb -U`).
pub const SUPERUSER: &str = "postgres";
/// Prefix of every cluster folder, so the reaper touches only its own.
const DIR_PREFIX: &str = "syncpay-pg-";
/// How long `pg_ctl` may take to start, stop or promote a server. Starting
/// takes about a second here; a loaded CI machine gets a generous margin.
const PG_CTL_WAIT_SECS: u32 = 120;
/// Free ports are found by binding port 0 and letting go; another process
/// may take the port before the server binds it, so starting is retried
/// this many times on a fresh port.
const PORT_TRIES: usize = 5;
/// How long a primary waits for its standby to report itself synchronous.
const SYNC_STANDBY_WAIT: Duration = Duration::from_secs(120);

/// Why a cluster could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// PostgreSQL's server binaries are not on this machine.
    #[error(
        "PostgreSQL is not installed: {0} (on Debian: `apt-get install -y postgresql`; \
         or set {PG_BIN_ENV} to the folder holding initdb and pg_ctl)"
    )]
    Missing(String),
    #[error("{0}")]
    Failed(String),
}

fn failed(what: impl std::fmt::Display) -> ClusterError {
    ClusterError::Failed(what.to_string())
}

impl From<io::Error> for ClusterError {
    fn from(e: io::Error) -> Self {
        failed(e)
    }
}

/// The PostgreSQL binaries of one installation.
#[derive(Debug, Clone)]
pub struct PgTools {
    bin: PathBuf,
    /// Run the tools as [`PG_USER`] through `runuser` (this process is root).
    as_pg_user: bool,
}

impl PgTools {
    /// Finds the binaries: [`PG_BIN_ENV`], else the newest major version
    /// under `/usr/lib/postgresql`, else `pg_config --bindir`.
    pub fn find() -> Result<PgTools, ClusterError> {
        let bin = match std::env::var_os(PG_BIN_ENV) {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                if !dir.join("initdb").is_file() {
                    return Err(ClusterError::Missing(format!("{PG_BIN_ENV}={} holds no initdb", dir.display())));
                }
                dir
            }
            None => newest_debian_bin().or_else(pg_config_bindir).ok_or_else(|| {
                ClusterError::Missing(format!("no initdb in {DEBIAN_PG_ROOT}/*/bin nor from pg_config --bindir"))
            })?,
        };
        for tool in ["initdb", "pg_ctl", "postgres"] {
            if !bin.join(tool).is_file() {
                return Err(ClusterError::Missing(format!("{} has no {tool}", bin.display())));
            }
        }
        let as_pg_user = fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        if as_pg_user && pg_user_ids().is_none() {
            return Err(ClusterError::Missing(format!(
                "running as root, and there is no user {PG_USER} to run the server as"
            )));
        }
        Ok(PgTools { bin, as_pg_user })
    }

    /// The path of one of the binaries.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// A command running one of the binaries as the cluster's owner.
    pub fn command(&self, name: &str) -> Command {
        if self.as_pg_user {
            let mut c = Command::new("runuser");
            c.args(["-u", PG_USER, "--"]).arg(self.tool(name));
            c
        } else {
            Command::new(self.tool(name))
        }
    }

    /// The major version (`postgres --version`), e.g. 15.
    pub fn major_version(&self) -> Result<u32, ClusterError> {
        let out = run(Command::new(self.tool("postgres")).arg("--version"), "postgres --version")?;
        // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        out.split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| failed(format!("cannot read a version from {out:?}")))
    }
}

fn newest_debian_bin() -> Option<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in fs::read_dir(DEBIAN_PG_ROOT).ok()?.flatten() {
        let Some(major) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let bin = entry.path().join("bin");
        if bin.join("initdb").is_file() && best.as_ref().is_none_or(|(m, _)| major > *m) {
            best = Some((major, bin));
        }
    }
    best.map(|(_, bin)| bin)
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.join("initdb").is_file().then_some(dir)
}

/// uid and gid of [`PG_USER`].
fn pg_user_ids() -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == PG_USER).then_some(())?;
        let _password = f.next()?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// Runs a command to completion; its stdout, or an error with its stderr.
fn run(cmd: &mut Command, what: &str) -> Result<String, ClusterError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| failed(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(failed(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A port on 127.0.0.1 that nothing listened on a moment ago.
fn free_port() -> Result<u16, ClusterError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `(pid, start time)` of this process, to tell it from a later process
/// that reuses its pid.
fn process_identity(pid: u32) -> Option<(u32, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime); fields after the command name, which may hold
    // spaces and parentheses, are counted from the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let start = after.split_whitespace().nth(19)?.parse().ok()?;
    Some((pid, start))
}

fn alive(identity: (u32, u64)) -> bool {
    process_identity(identity.0) == Some(identity)
}

/// Sends SIGKILL to a server process and every process it started (the
/// backends, walsender, checkpointer…), as losing the machine would.
fn kill_server_tree(postmaster: u32) {
    let mut pids = vec![postmaster];
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            let ppid = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
    }
    let mut cmd = Command::new("kill");
    cmd.arg("-KILL");
    for pid in &pids {
        cmd.arg(pid.to_string());
    }
    // Some children may have exited meanwhile: kill's status is no news.
    let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// The postmaster's pid from a data folder's `postmaster.pid`, if that
/// process is still a PostgreSQL server.
fn running_postmaster(data: &Path) -> Option<u32> {
    let text = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    matches!(comm.trim(), "postgres" | "postmaster").then_some(pid)
}

/// Stops the servers of cluster folders whose owning process is gone and
/// removes the folders; returns how many folders it removed. Called by
/// [`Cluster::start`], so leftovers of a dead run never pile up.
pub fn reap_leftovers() -> usize {
    let mut reaped = 0;
    let entries = [std::env::temp_dir(), PathBuf::from(MEMORY_DIR)]
        .into_iter()
        .filter_map(|parent| fs::read_dir(parent).ok())
        .flatten();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.starts_with(DIR_PREFIX)) {
            continue;
        }
        let root = entry.path();
        let owner = fs::read_to_string(root.join("owner")).ok().and_then(|t| {
            let mut f = t.split_whitespace();
            Some((f.next()?.parse::<u32>().ok()?, f.next()?.parse::<u64>().ok()?))
        });
        match owner {
            Some(owner) if alive(owner) => continue,
            Some(_) => {}
            // A folder without an owner file is being made right now (the
            // file is written first thing) or is not ours: leave it.
            None => continue,
        }
        if let Some(pid) = running_postmaster(&root.join("data")) {
            kill_server_tree(pid);
        }
        if fs::remove_dir_all(&root).is_ok() {
            reaped += 1;
        }
    }
    reaped
}

/// Quotes a path for `sh -c`.
fn sh_quote(path: &Path) -> Result<String, ClusterError> {
    let text = path.to_str().ok_or_else(|| failed(format!("path {} is not UTF-8", path.display())))?;
    if text.contains('\'') {
        return Err(failed(format!("path {text} contains a quote")));
    }
    Ok(format!("'{text}'"))
}

/// A process that stops the cluster and removes its folder once its
/// stdin closes, which happens when the owner drops it or dies in any way.
/// It runs in a process group of its own, so a Ctrl-C to the test run
/// does not kill it before it has done its work.
struct Watchdog {
    child: Child,
    _pipe: ChildStdin,
}

impl Watchdog {
    fn spawn(tools: &PgTools, root: &Path, data: &Path) -> Result<Watchdog, ClusterError> {
        let runuser = if tools.as_pg_user { format!("runuser -u {PG_USER} -- ") } else { String::new() };
        let script = format!(
            "cat >/dev/null; {runuser}{} stop -D {} -m immediate -w -t 30 >/dev/null 2>&1; rm -rf {}",
            sh_quote(&tools.tool("pg_ctl"))?,
            sh_quote(data)?,
            sh_quote(root)?
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| failed(format!("watchdog: {e}")))?;
        let pipe = child.stdin.take().ok_or_else(|| failed("watchdog has no stdin"))?;
        Ok(Watchdog { child, _pipe: pipe })
    }

    /// Ends the watchdog without letting it act (its owner stops the
    /// cluster itself).
    fn dismiss(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running throwaway cluster. Dropping it stops the server and removes
/// its folder.
pub struct Cluster {
    tools: PgTools,
    root: PathBuf,
    data: PathBuf,
    port: u16,
    watchdog: Option<Watchdog>,
    running: bool,
}

/// Settings every throwaway cluster gets, appended to `postgresql.conf`.
/// Durability is spelled out even where it is the default, so that no
/// `postgresql.conf` of the machine's can turn it off under a test.
const SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "'127.0.0.1'"),
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
    ("wal_level", "replica"),
    ("max_wal_senders", "10"),
    // Several syncpay nodes, each with a pool, plus the tests' own
    // connections and a standby's walsender.
    ("max_connections", "200"),
    ("log_min_messages", "warning"),
    ("log_line_prefix", "'%m [%p] '"),
];

/// A memory-backed file system, where [`Cluster::start_in_memory`] puts a
/// cluster when the machine has one.
const MEMORY_DIR: &str = "/dev/shm";

impl Cluster {
    /// Makes and starts a new cluster (`initdb -A trust`) in the
    /// temporary folder, on disk: commits wait for real flushes.
    pub fn start(tools: &PgTools) -> Result<Cluster, ClusterError> {
        Cluster::start_under(tools, &std::env::temp_dir())
    }

    /// As [`Cluster::start`], on a memory-backed file system (`/dev/shm`)
    /// when there is one: fsync stays on, and costs nothing. For tests of
    /// the backend's logic and concurrency, whose timing must not depend on
    /// how busy the machine's disk is; durability across a crash of
    /// PostgreSQL itself is tested on disk ([`Cluster::start`]).
    pub fn start_in_memory(tools: &PgTools) -> Result<Cluster, ClusterError> {
        let memory = Path::new(MEMORY_DIR);
        if memory.is_dir() {
            Cluster::start_under(tools, memory)
        } else {
            Cluster::start(tools)
        }
    }

    /// As [`Cluster::start`] (on disk), with `extra` settings appended
    /// after the usual ones (the benchmark loads `pg_stat_statements`).
    pub fn start_with(tools: &PgTools, extra: &[(&str, &str)]) -> Result<Cluster, ClusterError> {
        Cluster::start_under_with(tools, &std::env::temp_dir(), extra)
    }

    fn start_under(tools: &PgTools, parent: &Path) -> Result<Cluster, ClusterError> {
        Cluster::start_under_with(tools, parent, &[])
    }

    fn start_under_with(tools: &PgTools, parent: &Path, extra: &[(&str, &str)]) -> Result<Cluster, ClusterError> {
        reap_leftovers();
        let mut cluster = Cluster::make_folder(tools, parent)?;
        let mut initdb = tools.command("initdb");
        initdb.arg("-D").arg(&cluster.data).args(["-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C"]);
        run(&mut initdb, "initdb")?;
        cluster.append_settings(SETTINGS)?;
        cluster.append_settings(extra)?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// The running server's postmaster process, if it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        running_postmaster(&self.data)
    }

    /// A folder owned by the server's user, with the owner file in it and
    /// its watchdog running.
    fn make_folder(tools: &PgTools, parent: &Path) -> Result<Cluster, ClusterError> {
        let root = tempfile::Builder::new().prefix(DIR_PREFIX).tempdir_in(parent)?.keep();
        let me = process_identity(std::process::id()).ok_or_else(|| failed("cannot read /proc/self/stat"))?;
        fs::write(root.join("owner"), format!("{} {}\n", me.0, me.1))?;
        if tools.as_pg_user {
            let (uid, gid) = pg_user_ids().ok_or_else(|| failed(format!("no user {PG_USER}")))?;
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))?;
        }
        let data = root.join("data");
        let watchdog = Watchdog::spawn(tools, &root, &data)?;
        Ok(Cluster { tools: tools.clone(), root, data, port: 0, watchdog: Some(watchdog), running: false })
    }

    fn append_settings(&self, settings: &[(&str, &str)]) -> Result<(), ClusterError> {
        let mut file = fs::OpenOptions::new().append(true).open(self.data.join("postgresql.conf"))?;
        writeln!(file, "\n# syncpay throwaway cluster")?;
        for (k, v) in settings {
            writeln!(file, "{k} = {v}")?;
        }
        Ok(())
    }

    fn start_server(&mut self) -> Result<(), ClusterError> {
        let socket_dir = sh_quote(&self.root)?;
        let mut last = None;
        for _ in 0..PORT_TRIES {
            let port = free_port()?;
            let mut start = self.tools.command("pg_ctl");
            start
                .arg("start")
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(self.root.join("server.log"))
                .args(["-w", "-t", &PG_CTL_WAIT_SECS.to_string()])
                .arg("-o")
                .arg(format!("-p {port} -k {socket_dir}"));
            match run(&mut start, "pg_ctl start") {
                Ok(_) => {
                    self.port = port;
                    self.running = true;
                    return Ok(());
                }
                Err(e) => {
                    let log = fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
                    if !log.contains("could not bind") && !log.contains("already in use") {
                        return Err(failed(format!("{e}\n{log}")));
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| failed("pg_ctl start: no port")))
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder holding the cluster (data folder, socket, server log).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `host:port` of the server.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A connection URL for database `db` over TCP loopback.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL through `psql` on database `db` and returns its unaligned,
    /// tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, ClusterError> {
        let mut cmd = Command::new(self.tools.tool("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", SUPERUSER]).args([
            "-p",
            &self.port.to_string(),
            "-d",
            db,
            "-c",
            sql,
        ]);
        run(&mut cmd, "psql").map(|s| s.trim().to_owned())
    }

    /// Creates an empty database.
    pub fn create_database(&self, name: &str) -> Result<(), ClusterError> {
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(failed(format!("database name {name:?}: lowercase letters, digits and _ only")));
        }
        self.psql("postgres", &format!("CREATE DATABASE {name}")).map(|_| ())
    }

    /// SIGKILL to the server and all its processes, as if the machine
    /// were lost. The folder stays until the cluster is dropped.
    pub fn kill9(&mut self) {
        if let Some(pid) = running_postmaster(&self.data) {
            kill_server_tree(pid);
        }
        self.running = false;
    }

    /// Stops the server (`pg_ctl stop -m fast`).
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        if self.running {
            let mut stop = self.tools.command("pg_ctl");
            stop.arg("stop").arg("-D").arg(&self.data).args(["-m", "fast", "-w"]);
            run(&mut stop, "pg_ctl stop")?;
            self.running = false;
        }
        Ok(())
    }

    /// A standby streaming from this cluster: `pg_basebackup -R` into a
    /// new folder, started on its own port. It is asynchronous until
    /// [`Cluster::require_sync_standby`] names it.
    pub fn start_standby(&self, application_name: &str) -> Result<Cluster, ClusterError> {
        if !application_name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(failed(format!("standby name {application_name:?}: letters, digits and _ only")));
        }
        reap_leftovers();
        // Beside the primary: on disk, or in memory, as it is.
        let parent = self.root.parent().map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        let mut standby = Cluster::make_folder(&self.tools, &parent)?;
        let conninfo =
            format!("host=127.0.0.1 port={} user={SUPERUSER} application_name={application_name}", self.port);
        let mut backup = self.tools.command("pg_basebackup");
        backup.arg("-D").arg(&standby.data).args(["-d", &conninfo, "-R", "-X", "stream", "-c", "fast"]);
        run(&mut backup, "pg_basebackup")?;
        // -R wrote standby.signal and a primary_conninfo; this one names the
        // standby so that synchronous_standby_names can refer to it.
        let mut auto = fs::OpenOptions::new().append(true).open(standby.data.join("postgresql.auto.conf"))?;
        writeln!(auto, "primary_conninfo = '{conninfo}'")?;
        standby.start_server()?;
        Ok(standby)
    }

    /// Makes every commit on this primary wait until `application_name`'s
    /// standby has flushed it, and waits until that standby is streaming
    /// as the synchronous one.
    pub fn require_sync_standby(&self, application_name: &str) -> Result<(), ClusterError> {
        self.psql("postgres", &format!("ALTER SYSTEM SET synchronous_standby_names = '{application_name}'"))?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        let deadline = Instant::now() + SYNC_STANDBY_WAIT;
        loop {
            let state = self.psql(
                "postgres",
                &format!("SELECT sync_state FROM pg_stat_replication WHERE application_name = '{application_name}'"),
            )?;
            if state == "sync" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(failed(format!("standby {application_name} is not synchronous (state {state:?})")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Promotes a standby to primary (`pg_ctl promote -w`).
    pub fn promote(&self) -> Result<(), ClusterError> {
        let mut promote = self.tools.command("pg_ctl");
        promote.arg("promote").arg("-D").arg(&self.data).args(["-w", "-t", &PG_CTL_WAIT_SECS.to_string()]);
        run(&mut promote, "pg_ctl promote").map(|_| ())
    }

    /// Lets go of the cluster as the owner's death would: the watchdog's
    /// pipe closes and the watchdog stops the server and removes the
    /// folder, while this process does nothing more. For the harness's own
    /// test of its watchdog.
    pub fn leave_to_watchdog(mut self) {
        if let Some(w) = self.watchdog.take() {
            drop(w._pipe);
            // The watchdog is not waited for here; its child handle is
            // dropped without killing it.
            drop(w.child);
        }
        self.running = false;
        self.root = PathBuf::new();
        std::mem::forget(self);
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.dismiss();
        }
        if self.running {
            let mut stop = self.tools.command("pg_ctl");
            stop.arg("stop").arg("-D").arg(&self.data).args(["-m", "immediate", "-w", "-t", "30"]);
            if run(&mut stop, "pg_ctl stop").is_err() {
                self.kill9();
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}
