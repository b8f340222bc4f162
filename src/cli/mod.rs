//! One file per command.

pub mod admin;
pub mod demo;
pub mod pki;
pub mod serve;

/// Logs go to stderr; `RUST_LOG` overrides the default level.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
