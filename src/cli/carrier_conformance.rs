//! `syncpay carrier-conformance`: runs the carrier conformance check
//! (`syncpay::conformance`) against a relay under test. Starts the sandbox
//! on `--listen`, waits for the relay to connect to it as it would to
//! syncpay, runs every step and prints one PASS/FAIL line per step (or
//! one JSON value with `--json`). Exit 0 only when every step passed, 1
//! when one failed, 2 for usage errors.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use syncpay::conformance::{self, Sandbox, SandboxAuth, SandboxConfig, TestSubscribers, Waits};
use syncpay::domain::{CarrierId, SubscriberNumber};
use syncpay::sync_server::tls::TlsFiles;

use super::{print_json, read_token, Exit};

/// The longest `--connect-wait` accepted: an hour is time enough to start
/// any relay by hand.
const MAX_CONNECT_WAIT_SECS: u64 = 3600;

#[derive(Args)]
pub struct CarrierConformanceArgs {
    /// Where the sandbox listens; point the relay under test here. Without
    /// TLS only a loopback address, as for `serve`.
    #[arg(long, default_value = "127.0.0.1:7701")]
    listen: SocketAddr,
    /// The carrier the relay under test is (its certificate's
    /// syncpay://carrier/<id>, or the carrier its token belongs to).
    #[arg(long)]
    carrier: String,
    /// Plaintext: the file holding the token the relay sends as
    /// `authorization: Bearer …` (for example the one from `syncpay admin
    /// create-carrier`).
    #[arg(long, env = "SYNCPAY_CARRIER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The token itself, read from SYNCPAY_CARRIER_TOKEN (environment only).
    #[arg(skip = std::env::var("SYNCPAY_CARRIER_TOKEN").ok())]
    token: Option<String>,
    /// Mutual TLS: the sandbox's certificate (PEM), e.g. `server.pem` from
    /// `syncpay pki init`.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// Mutual TLS: the key of --tls-cert (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: the CA that issued the relay's client certificate (PEM).
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// The test subscriber whose handset approves every offer.
    #[arg(long)]
    approver: String,
    /// The test subscriber whose handset declines every offer.
    #[arg(long)]
    decliner: String,
    /// NUMBER=FILE: a test subscriber's handset public key (32 bytes as 64
    /// hex characters), when the relay does not enroll it with the sandbox
    /// (repeatable).
    #[arg(long = "key", value_name = "NUMBER=FILE")]
    keys: Vec<String>,
    /// Seconds the relay has to connect and enroll both handsets.
    #[arg(long, default_value_t = conformance::CONNECT_WAIT.as_secs())]
    connect_wait: u64,
    /// Print the report as one JSON value.
    #[arg(long)]
    json: bool,
}

fn number(flag: &str, text: &str) -> anyhow::Result<SubscriberNumber> {
    SubscriberNumber::parse(text).map_err(|e| Exit::usage(format!("{flag} {text:?}: {e}")))
}

fn keys(entries: &[String]) -> anyhow::Result<HashMap<SubscriberNumber, [u8; 32]>> {
    let mut out = HashMap::new();
    for entry in entries {
        let (n, file) =
            entry.split_once('=').ok_or_else(|| Exit::usage(format!("--key {entry:?}: expected NUMBER=FILE")))?;
        let text = std::fs::read_to_string(file).map_err(|e| Exit::usage(format!("--key {entry:?}: {e}")))?;
        let key = syncpay::hex::decode_array::<32>(text.trim())
            .and_then(|k| syncpay::domain::approval::valid_public_key(&k))
            .ok_or_else(|| Exit::usage(format!("--key {entry:?}: not a usable Ed25519 public key in hex")))?;
        out.insert(number("--key", n)?, key);
    }
    Ok(out)
}

fn auth(args: &CarrierConformanceArgs) -> anyhow::Result<SandboxAuth> {
    match (&args.tls_cert, &args.tls_key, &args.client_ca) {
        (Some(cert), Some(key), Some(client_ca)) => Ok(SandboxAuth::Tls(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: client_ca.clone(),
            client_crl: None,
        })),
        (None, None, None) => {
            Ok(SandboxAuth::Token(read_token(args.token.as_deref(), args.token_file.as_deref(), "carrier")?))
        }
        _ => Err(Exit::usage("mutual TLS needs --tls-cert, --tls-key and --client-ca together")),
    }
}

pub async fn run(args: CarrierConformanceArgs) -> anyhow::Result<()> {
    super::init_logging("warn");
    let carrier = CarrierId::parse(&args.carrier).map_err(|e| Exit::usage(format!("--carrier: {e}")))?;
    let subscribers = TestSubscribers {
        approver: number("--approver", &args.approver)?,
        decliner: number("--decliner", &args.decliner)?,
        keys: keys(&args.keys)?,
    };
    if subscribers.approver == subscribers.decliner {
        return Err(Exit::usage("--approver and --decliner must be different subscribers"));
    }
    if args.connect_wait == 0 || args.connect_wait > MAX_CONNECT_WAIT_SECS {
        return Err(Exit::usage(format!("--connect-wait: 1..={MAX_CONNECT_WAIT_SECS} seconds")));
    }
    let auth = auth(&args)?;
    if matches!(auth, SandboxAuth::Token(_)) && !args.listen.ip().is_loopback() {
        return Err(Exit::usage(format!(
            "--listen {}: without TLS the sandbox listens only on loopback (give --tls-cert, --tls-key and --client-ca)",
            args.listen
        )));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Exit::usage(format!("--listen {}: {e}", args.listen)))?;
    let sandbox = Sandbox::start(listener, SandboxConfig { carrier: carrier.clone(), auth })
        .await
        .map_err(|e| Exit::usage(format!("starting the sandbox: {e}")))?;
    eprintln!(
        "syncpay carrier-conformance sandbox on {} for carrier {carrier}; start the relay under test against it \
         (waiting up to {} s)",
        sandbox.url(),
        args.connect_wait
    );
    let waits = Waits { connect: Duration::from_secs(args.connect_wait), ..Waits::default() };
    let report = conformance::run(&sandbox, &subscribers, &waits).await;
    sandbox.shutdown().await;
    if args.json {
        print_json(&report.to_json());
    } else {
        for line in report.lines() {
            println!("{line}");
        }
    }
    if report.passed() {
        Ok(())
    } else {
        let failed = report.failed();
        Err(Exit::negative(format!("{} of {} steps failed: {}", failed.len(), report.steps.len(), failed.join(", "))))
    }
}
