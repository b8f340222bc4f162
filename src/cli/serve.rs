//! `syncpay serve`: the server on a data folder, until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use syncpay::store::Durability;
use syncpay::sync_server::tls::TlsFiles;
use syncpay::sync_server::{self, ServerConfig};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DurabilityArg {
    /// fdatasync after every group commit, before any acknowledgement.
    Fsync,
    /// No fsync: survives a process crash, not a power cut. For benchmarks
    /// and throwaway stores only.
    FlushOnly,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on. Without TLS only loopback addresses are allowed.
    #[arg(long, env = "SYNCPAY_LISTEN", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Data folder: the store, the operator token (admin.token) and the
    /// server secret (server.secret), created on first start.
    #[arg(long, env = "SYNCPAY_DATA_DIR", default_value = "syncpay-data")]
    data_dir: PathBuf,
    #[arg(long, env = "SYNCPAY_DURABILITY", value_enum, default_value = "fsync")]
    durability: DurabilityArg,
    /// Server certificate chain (PEM). With --tls-key and --client-ca the
    /// server speaks mutual TLS, callers are known by their client
    /// certificates, and any address may be used. SIGHUP reloads all TLS
    /// files. `syncpay pki init` makes a development set.
    #[arg(long, env = "SYNCPAY_TLS_CERT", requires_all = ["tls_key", "client_ca"])]
    tls_cert: Option<PathBuf>,
    /// The server's private key (PEM, mode 0600).
    #[arg(long, env = "SYNCPAY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificate(s) that issue client certificates (PEM).
    #[arg(long, env = "SYNCPAY_CLIENT_CA", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Revocation list(s) of that CA (PEM), e.g. from `syncpay pki revoke`.
    #[arg(long, env = "SYNCPAY_CLIENT_CRL", requires = "tls_cert")]
    client_crl: Option<PathBuf>,
}

/// Plaintext (bearer tokens, no encryption) is for loopback development
/// only; TLS lifts the restriction.
fn check_listen(addr: SocketAddr, tls: bool) -> anyhow::Result<()> {
    if !tls && !addr.ip().is_loopback() {
        bail!(
            "refusing to serve plaintext on {addr}: without TLS syncpay listens only on loopback (127.0.0.1 or ::1); \
             give --tls-cert, --tls-key and --client-ca (`syncpay pki init` makes a development set)"
        );
    }
    Ok(())
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    super::init_logging("info");
    let tls = match (args.tls_cert, args.tls_key, args.client_ca) {
        (Some(cert), Some(key), Some(client_ca)) => {
            Some(TlsFiles { cert, key, client_ca, client_crl: args.client_crl })
        }
        _ => None,
    };
    check_listen(args.listen, tls.is_some())?;
    let mut config = ServerConfig::from_data_dir(&args.data_dir)
        .with_context(|| format!("preparing data folder {}", args.data_dir.display()))?;
    config.durability = match args.durability {
        DurabilityArg::Fsync => Durability::Fsync,
        DurabilityArg::FlushOnly => {
            tracing::warn!("durability=flush-only: acknowledged trades can be lost on power failure");
            Durability::FlushOnly
        }
    };
    config.tls = tls;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let tls_on = config.tls.is_some();
    let server = sync_server::start(config, listener).await?;
    eprintln!(
        "syncpay serving on {} (data {}; operator token in {}; {})",
        server.url(),
        args.data_dir.display(),
        args.data_dir.join("admin.token").display(),
        if tls_on {
            "mutual TLS: callers are known by their client certificates"
        } else {
            "plaintext with bearer tokens"
        }
    );
    wait_for_signal(&server).await;
    server.shutdown().await?;
    eprintln!("syncpay stopped cleanly");
    Ok(())
}

/// Waits for SIGTERM or Ctrl-C; on SIGHUP reloads the TLS files (a
/// failed reload keeps the old ones and is logged).
async fn wait_for_signal(server: &sync_server::RunningServer) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::hangup())) {
            (Ok(mut term), Ok(mut hup)) => loop {
                tokio::select! {
                    _ = term.recv() => return,
                    _ = tokio::signal::ctrl_c() => return,
                    _ = hup.recv() => match server.reload_tls() {
                        Ok(()) => tracing::info!("SIGHUP: TLS files reloaded"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: TLS reload failed; the old certificates stay"),
                    },
                }
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = server;
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_on_loopback_and_tls_anywhere() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert!(check_listen(addr("127.0.0.1:7700"), false).is_ok());
        assert!(check_listen(addr("[::1]:7700"), false).is_ok());
        assert!(check_listen(addr("0.0.0.0:7700"), false).is_err());
        assert!(check_listen(addr("192.0.2.1:7700"), false).is_err());
        assert!(check_listen(addr("0.0.0.0:7700"), true).is_ok());
        assert!(check_listen(addr("[::]:7700"), true).is_ok());
    }
}
