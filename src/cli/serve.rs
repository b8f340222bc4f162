//! `syncpay serve`: the server on a data folder, until SIGTERM or Ctrl-C.
//! Configuration comes from defaults, a TOML file, the environment and
//! flags (see `serve_config` and `syncpay.example.toml`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use syncpay::store::sled::Durability;
use syncpay::sync_server::{self, ServerConfig};

use super::serve_config::{self, Flags, ServeConfig};
use super::Exit;

#[derive(Args)]
pub struct ServeArgs {
    /// TOML config file (see syncpay.example.toml). Also SYNCPAY_CONFIG.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration and exit: 0 and every setting with its
    /// origin when it is valid, 2 and every problem when not.
    #[arg(long)]
    check_config: bool,
    /// gRPC listen address [default 127.0.0.1:7700; env SYNCPAY_LISTEN].
    /// Without TLS only loopback addresses are allowed.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Data folder: the store, admin.token and server.secret
    /// [default syncpay-data; env SYNCPAY_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// fsync | flush-only [default fsync; env SYNCPAY_DURABILITY].
    #[arg(long, value_name = "MODE")]
    durability: Option<String>,
    /// human | json [default human; env SYNCPAY_LOG_FORMAT].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// A tracing filter, e.g. info or info,syncpay=debug
    /// [default info; env SYNCPAY_LOG_LEVEL].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Prometheus endpoint address, or "off"
    /// [default 127.0.0.1:9700; env SYNCPAY_METRICS_LISTEN].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Operator console address, or "off" [default 127.0.0.1:7780; env
    /// SYNCPAY_CONSOLE_LISTEN]. Loopback only without TLS; HTTPS with it.
    #[arg(long, value_name = "ADDR")]
    console_listen: Option<String>,
    /// Server certificate chain (PEM) [env SYNCPAY_TLS_CERT]. With
    /// --tls-key and --client-ca the server speaks mutual TLS, callers are
    /// known by their client certificates, and any address may be used.
    /// SIGHUP reloads every TLS file. `syncpay pki init` makes a
    /// development set.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<String>,
    /// The server's private key (PEM, mode 0600) [env SYNCPAY_TLS_KEY].
    #[arg(long, value_name = "FILE")]
    tls_key: Option<String>,
    /// CA certificate(s) that issue client certificates (PEM)
    /// [env SYNCPAY_CLIENT_CA].
    #[arg(long, value_name = "FILE")]
    client_ca: Option<String>,
    /// Revocation list(s) of that CA (PEM), e.g. from `syncpay pki revoke`
    /// [env SYNCPAY_CLIENT_CRL].
    #[arg(long, value_name = "FILE")]
    client_crl: Option<String>,
    /// Any setting as KEY=VALUE, e.g. limits.max_ttl_seconds=300 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

impl ServeArgs {
    fn flags(&self) -> Flags {
        let mut values = Vec::new();
        let mut add = |flag: &'static str, v: &Option<String>| {
            if let Some(v) = v {
                values.push((flag, v.clone()));
            }
        };
        add("--listen", &self.listen);
        add("--data-dir", &self.data_dir);
        add("--durability", &self.durability);
        add("--log-format", &self.log_format);
        add("--log-level", &self.log_level);
        add("--metrics-listen", &self.metrics_listen);
        add("--console-listen", &self.console_listen);
        add("--tls-cert", &self.tls_cert);
        add("--tls-key", &self.tls_key);
        add("--client-ca", &self.client_ca);
        add("--client-crl", &self.client_crl);
        Flags { config: self.config.clone(), values, sets: self.sets.clone() }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = match serve_config::load(&args.flags(), &|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(problems) => {
            let mut text = format!("the configuration has {} problem(s):", problems.len());
            for p in &problems {
                text.push_str("\n  - ");
                text.push_str(p);
            }
            return Err(Exit::usage(text));
        }
    };
    if args.check_config {
        println!("configuration is valid:");
        let width = config.effective.iter().map(|(k, v, _)| k.len() + v.len() + 3).max().unwrap_or(0);
        for (key, value, origin) in &config.effective {
            println!("  {:<width$}  # {origin}", format!("{key} = {value}"));
        }
        return Ok(());
    }
    serve(config).await
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    super::init_logging_with(config.log_format, &config.log_level);
    let mut signals = StopSignals::install_with_hangup()?;
    let mut server_config = ServerConfig::from_data_dir(&config.data_dir)
        .with_context(|| format!("preparing data folder {}", config.data_dir.display()))?;
    server_config.durability = config.durability;
    if let serve_config::StoreChoice::Postgres { url, pool_size, poll, notify } = &config.store {
        server_config.postgres = Some(syncpay::store::postgres::PgConfig {
            url: url.clone(),
            pool_size: *pool_size,
            poll: *poll,
            notify: *notify,
        });
    }
    server_config.cache_bytes = config.cache_bytes;
    server_config.limits = config.limits.clone();
    server_config.tls = config.tls.clone();
    if config.durability == Durability::FlushOnly {
        tracing::warn!("durability=flush-only: acknowledged trades can be lost on power failure");
    }
    for (name, rate) in [
        ("shop_trades_per_second", config.limits.shop_trades),
        ("subscriber_offers_per_minute", config.limits.subscriber_offers),
    ] {
        if rate.count == 0 {
            tracing::warn!(limit = name, "rate limit off (0): for benchmarks and tests, not for a shared server");
        }
    }

    let console_listener = match config.console_listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            // Only the built-in default gives way: a payment server does
            // not refuse to start because its optional console's default
            // port is taken (by another server on this machine, say).
            Err(e) if !config.console_required && e.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::warn!(%addr, "console: the default address is in use; running without the console (set console.listen)");
                eprintln!("syncpay console off: {addr} is in use (set --console-listen to choose another address)");
                None
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("binding the console listener {addr} (console.listen, or \"off\")")))
            }
        },
        None => None,
    };
    let (stop_metrics, metrics_stopped) = tokio::sync::watch::channel(false);
    let mut metrics_task = None;
    // One recorder for the endpoint and the console's chart.
    let recorder = if config.metrics_listen.is_some() || console_listener.is_some() {
        Some(super::metrics_http::install()?)
    } else {
        None
    };
    if let (Some(addr), Some(handle)) = (config.metrics_listen, recorder.clone()) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics listener {addr}"))?;
        let bound = listener.local_addr()?;
        metrics_task = Some(tokio::spawn(super::metrics_http::serve(listener, handle, metrics_stopped)));
        if !bound.ip().is_loopback() {
            tracing::warn!(%bound, "metrics endpoint off loopback (metrics.allow_non_loopback): plain HTTP, no authentication");
        }
        tracing::info!(%bound, "metrics endpoint");
        eprintln!("syncpay metrics on http://{bound}/metrics");
    }

    let console_tls = match &config.tls {
        Some(files) if console_listener.is_some() => Some(std::sync::Arc::new(
            syncpay::web::tls_config(&files.cert, &files.key).context("the console's TLS configuration")?,
        )),
        _ => None,
    };

    // The console's login takes the operator token, in TLS mode too (a
    // browser has no client certificate to show).
    let admin_token = server_config.admin_token.clone();
    let listener = sync_server::bind(config.listen).with_context(|| format!("binding {}", config.listen))?;
    let server = sync_server::start(server_config, listener).await?;
    let console = match console_listener {
        Some(listener) => {
            let metrics = recorder.map(|handle| -> syncpay::web::console::MetricsSource {
                std::sync::Arc::new(move || {
                    handle.run_upkeep();
                    handle.render()
                })
            });
            let console_config = syncpay::web::console::ConsoleConfig { admin_token, metrics, tls: console_tls };
            let console = syncpay::web::console::start(listener, server.engine.clone(), console_config)?;
            tracing::info!(url = %console.url(), "operator console");
            eprintln!("syncpay console on {} (log in with the operator token)", console.url());
            Some(console)
        }
        None => None,
    };
    // Tests and scripts read this line for the bound address (port 0).
    eprintln!(
        "syncpay serving on {} (data {}; operator token in {}; {})",
        server.url(),
        config.data_dir.display(),
        config.data_dir.join("admin.token").display(),
        if config.tls.is_some() {
            "mutual TLS: callers are known by their client certificates"
        } else {
            "plaintext with bearer tokens, loopback only"
        }
    );
    let signal = wait_for_stop(&mut signals, &server).await;
    tracing::info!(signal, "stopping: no new connections; in-flight calls finish, streams end with UNAVAILABLE");
    if let Some(console) = console {
        console.shutdown().await;
    }
    server.shutdown().await?;
    let _ = stop_metrics.send(true);
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    tracing::info!("stopped cleanly; every acknowledged change is on disk");
    eprintln!("syncpay stopped cleanly");
    Ok(())
}

/// SIGTERM and SIGINT (and for `serve`, SIGHUP), handled from the moment
/// this is made. A command makes it before it announces itself, so that a
/// script stopping it right after the announcement gets a clean stop
/// instead of the signal's default action (death without cleanup).
pub struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Handles SIGTERM and SIGINT; SIGHUP keeps its default.
    pub fn install() -> anyhow::Result<StopSignals> {
        Self::make(false)
    }

    /// Also handles SIGHUP, reported by [`StopSignals::next`].
    fn install_with_hangup() -> anyhow::Result<StopSignals> {
        Self::make(true)
    }

    #[cfg(unix)]
    fn make(hangup: bool) -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("handling SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("handling SIGINT")?,
            hup: if hangup { Some(signal(SignalKind::hangup()).context("handling SIGHUP")?) } else { None },
        })
    }

    #[cfg(not(unix))]
    fn make(_hangup: bool) -> anyhow::Result<StopSignals> {
        Ok(StopSignals {})
    }

    /// Waits for SIGTERM or Ctrl-C (SIGINT); returns which.
    pub async fn stopped(&mut self) -> &'static str {
        loop {
            if let Some(stop) = self.next().await {
                return stop;
            }
        }
    }

    /// The next signal: `Some(name)` to stop, `None` for SIGHUP.
    async fn next(&mut self) -> Option<&'static str> {
        #[cfg(unix)]
        {
            let hup = async {
                match self.hup.as_mut() {
                    Some(hup) => hup.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.term.recv() => Some("SIGTERM"),
                _ = self.int.recv() => Some("SIGINT"),
                _ = hup => None,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Some("Ctrl-C")
        }
    }
}

/// Waits for a stop, and on SIGHUP reloads the server's TLS files (a
/// failed reload keeps the old ones and is logged).
async fn wait_for_stop(signals: &mut StopSignals, server: &sync_server::RunningServer) -> &'static str {
    loop {
        match signals.next().await {
            Some(stop) => return stop,
            None => match server.reload_tls() {
                Ok(()) => tracing::info!("SIGHUP: TLS files reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: TLS reload failed; the old certificates stay"),
            },
        }
    }
}
