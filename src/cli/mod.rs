//! One file per command, plus what they share: logging, exit codes,
//! credentials and client connections.
//!
//! Exit codes (the same for every command):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (`shop charge`/`await`: the trade SETTLED) |
//! | 1 | the command ran but the answer is "no": the ledger does not verify, the trade ended other than SETTLED, or is still open when `await` gave up |
//! | 2 | usage or configuration error: bad flags, an invalid config (`serve --check-config`), an unreadable token file |
//! | 3 | the server could not be reached or is unavailable (connect failed, UNAVAILABLE, deadline exceeded) |
//! | 4 | the server refused the request (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ALREADY_EXISTS, RESOURCE_EXHAUSTED, UNAUTHENTICATED, PERMISSION_DENIED, …) |

pub mod admin;
pub mod backup;
pub mod bench;
pub mod carrier_conformance;
pub mod carrier_sim;
pub mod demo;
pub mod metrics_http;
pub mod operator;
pub mod pki;
pub mod serve;
pub mod serve_config;
pub mod shop;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use syncpay::client::{connect as connect_plain, connect_tls, with_token, AuthedChannel, ClientTls};
use tonic::transport::Channel;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum LogFormat {
    /// One readable line per event (ANSI colours only on a terminal).
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logs go to stderr. `filter` is a tracing filter directive such as
/// `info` or `info,syncpay=debug` (already validated by the caller).
pub fn init_logging_with(format: LogFormat, filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
}

/// For the client commands: `RUST_LOG` overrides the default level.
pub fn init_logging(default: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| default.to_owned());
    init_logging_with(LogFormat::Human, &filter);
}

/// An error that chooses its exit code. Anything else maps through
/// [`exit_code`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    /// Exit 1: the command ran and the answer is "no".
    pub fn negative(message: impl Into<String>) -> anyhow::Error {
        Exit { code: EXIT_NEGATIVE, message: message.into() }.into()
    }

    /// Exit 2: usage or configuration.
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        Exit { code: EXIT_USAGE, message: message.into() }.into()
    }
}

pub const EXIT_NEGATIVE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNAVAILABLE: u8 = 3;
pub const EXIT_REFUSED: u8 = 4;

/// The exit code for an error: an [`Exit`] anywhere in the chain chooses
/// it; gRPC statuses and transport errors map by kind; anything else is 1.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(exit) = cause.downcast_ref::<Exit>() {
            return exit.code;
        }
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return status_exit_code(status.code());
        }
        if let Some(e) = cause.downcast_ref::<syncpay::register::RegisterError>() {
            return match e.code() {
                Some(code) => status_exit_code(code),
                None => match e {
                    syncpay::register::RegisterError::Timeout => EXIT_UNAVAILABLE,
                    _ => EXIT_NEGATIVE,
                },
            };
        }
        if cause.downcast_ref::<tonic::transport::Error>().is_some() {
            return EXIT_UNAVAILABLE;
        }
    }
    EXIT_NEGATIVE
}

fn status_exit_code(code: tonic::Code) -> u8 {
    use tonic::Code;
    match code {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => EXIT_UNAVAILABLE,
        Code::Ok
        | Code::Unknown
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss
        | Code::Unauthenticated => EXIT_REFUSED,
    }
}

/// Reads a credential: the token itself from `direct` (an environment
/// variable) if set, else the first line of `file`. Exit 2 when neither
/// gives a token.
pub fn read_token(direct: Option<&str>, file: Option<&Path>, what: &str) -> anyhow::Result<String> {
    if let Some(token) = direct.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(token.to_owned());
    }
    let Some(file) = file else {
        return Err(Exit::usage(format!("no {what} token: pass --token-file or set the environment variable")));
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| Exit::usage(format!("reading the {what} token from {}: {e}", file.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Exit::usage(format!("{} holds no {what} token", file.display())));
    }
    Ok(token.to_owned())
}

/// Where a client command connects and how it proves who it is: shared by
/// `admin`, `shop` and `carrier-sim`. With `--tls-ca`, `--tls-cert` and
/// `--tls-key` the connection is mutual TLS and the client certificate is
/// the credential (no token is read or sent); otherwise the command's
/// bearer token is used over plaintext.
#[derive(Args, Debug, Clone)]
pub struct Connect {
    /// Server URL [default: http://127.0.0.1:7700, or https://localhost:7700
    /// with --tls-*].
    #[arg(long, env = "SYNCPAY_SERVER", global = true)]
    pub server: Option<String>,
    /// Mutual TLS: the CA that issued the server's certificate (PEM), e.g.
    /// `ca.pem` from `syncpay pki init`. With --tls-cert and --tls-key no
    /// token is read.
    #[arg(long, env = "SYNCPAY_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS: this client's certificate (PEM), e.g. `admin.pem`,
    /// `shop-acme.pem` or `carrier-docomo.pem`.
    #[arg(long, env = "SYNCPAY_TLS_CLIENT_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// Mutual TLS: the key of --tls-cert (PEM).
    #[arg(long, env = "SYNCPAY_TLS_CLIENT_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
}

/// The server URL when none is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7700";
/// The server URL when none is given and TLS is (the development server
/// certificate names `localhost`).
pub const DEFAULT_TLS_SERVER: &str = "https://localhost:7700";

impl Connect {
    /// The three TLS files, when all are given. (Checked here rather than
    /// with clap's `requires`, which misjudges global flags given partly
    /// through the environment and partly before a subcommand.)
    fn tls_files(&self) -> anyhow::Result<Option<(&Path, &Path, &Path)>> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(ca), Some(cert), Some(key)) => Ok(Some((ca, cert, key))),
            (None, None, None) => Ok(None),
            (ca, cert, key) => {
                let missing: Vec<_> = [(ca, "--tls-ca"), (cert, "--tls-cert"), (key, "--tls-key")]
                    .into_iter()
                    .filter_map(|(v, name)| v.is_none().then_some(name))
                    .collect();
                Err(Exit::usage(format!(
                    "mutual TLS needs --tls-ca, --tls-cert and --tls-key; missing {}",
                    missing.join(", ")
                )))
            }
        }
    }

    /// The URL to connect to: `--server`, else the default for the mode.
    pub fn url(&self) -> &str {
        match &self.server {
            Some(url) => url,
            None if self.tls_cert.is_some() || self.tls_key.is_some() => DEFAULT_TLS_SERVER,
            None => DEFAULT_SERVER,
        }
    }
}

/// A connected channel and the bearer token to send on it (empty over TLS,
/// where the client certificate is the credential). For the library types
/// that take both: `VirtualRegister::attach`, `CarrierSim::start`.
pub struct Connection {
    pub channel: Channel,
    pub token: String,
}

impl Connection {
    /// The channel with its credential, for a generated client.
    pub fn authed(&self) -> anyhow::Result<AuthedChannel> {
        Ok(with_token(self.channel.clone(), &self.token)?)
    }
}

/// Connects as `connect` says: mutual TLS when the three files are given
/// (`token` is then not called), else plaintext with the token `token`
/// reads. Exit 2 for an unreadable file or a TLS/URL mismatch, 3 when the
/// server cannot be reached.
pub async fn connection(
    connect: &Connect,
    token: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<Connection> {
    let url = connect.url();
    let context = || format!("connecting to {url}");
    if let Some((ca, cert, key)) = connect.tls_files()? {
        if !url.starts_with("https://") {
            return Err(Exit::usage(format!("--server {url}: with --tls-* the URL must start with https://")));
        }
        let tls = ClientTls::from_files(ca, cert, key).map_err(|e| Exit::usage(format!("reading TLS files: {e}")))?;
        let channel = connect_tls(url, &tls).await.with_context(context)?;
        return Ok(Connection { channel, token: String::new() });
    }
    if url.starts_with("https://") {
        return Err(Exit::usage(format!(
            "--server {url}: an https:// server needs --tls-ca, --tls-cert and --tls-key"
        )));
    }
    let token = token()?;
    let channel = connect_plain(url).await.with_context(context)?;
    Ok(Connection { channel, token })
}

/// [`connection`] as one channel with its credential, for generated clients.
pub async fn channel(
    connect: &Connect,
    token: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<AuthedChannel> {
    connection(connect, token).await?.authed()
}

/// Prints one JSON value on a line of its own.
pub fn print_json(value: &serde_json::Value) {
    println!("{value}");
}
