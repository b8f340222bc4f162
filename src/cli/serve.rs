//! `syncpay serve`: the server on a data folder, until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use syncpay::store::Durability;
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
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    super::init_logging("info");
    if !args.listen.ip().is_loopback() {
        bail!(
            "refusing to serve plaintext on {}: without TLS syncpay listens only on loopback (127.0.0.1 or ::1)",
            args.listen
        );
    }
    let mut config = ServerConfig::from_data_dir(&args.data_dir)
        .with_context(|| format!("preparing data folder {}", args.data_dir.display()))?;
    config.durability = match args.durability {
        DurabilityArg::Fsync => Durability::Fsync,
        DurabilityArg::FlushOnly => {
            tracing::warn!("durability=flush-only: acknowledged trades can be lost on power failure");
            Durability::FlushOnly
        }
    };
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let server = sync_server::start(config, listener).await?;
    eprintln!(
        "syncpay serving on {} (data {}; operator token in {})",
        server.url(),
        args.data_dir.display(),
        args.data_dir.join("admin.token").display()
    );
    wait_for_signal().await;
    server.shutdown().await?;
    eprintln!("syncpay stopped cleanly");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
