//! The `syncpay` command: `serve` runs the server, `demo` runs the whole
//! system in one process and prints a transcript, `shop`, `carrier-sim` and
//! `admin` are the clients of the three parties, `restore` builds a data
//! folder from an online backup. Exit codes are listed in
//! `cli/mod.rs` (0 ok, 1 negative answer, 2 usage/config, 3 unavailable,
//! 4 refused).

mod bench;
mod cli;

/// mimalloc instead of glibc malloc: allocation was about a quarter of the
/// server's CPU per trade (docs/BENCHMARK.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "syncpay", version, about = "Synchronous settlement server")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the settlement server.
    Serve(cli::serve::ServeArgs),
    /// Run server, simulated carrier and handsets, and a scripted shop in
    /// one process on a temporary store; exits 0 only if every outcome and
    /// the ledger are right.
    Demo(cli::demo::DemoArgs),
    /// Operator commands against a running server (verify, shops,
    /// carriers, top-ups, accounts, postings, payouts, backups).
    Admin(cli::admin::AdminArgs),
    /// Build a new data folder from an online backup (`admin backup`):
    /// checks the manifest's checksums, refuses an existing store, and
    /// verifies the ledger on the result; then `serve --data-dir` it.
    Restore(cli::backup::RestoreArgs),
    /// Shop commands against a running server: registers, charge, status,
    /// await, cancel, refund, watch.
    Shop(cli::shop::ShopArgs),
    /// A simulated carrier relay with N handsets against a running server,
    /// until Ctrl-C or SIGTERM.
    CarrierSim(cli::carrier_sim::CarrierSimArgs),
    /// Checks a carrier's relay against the carrier contract: a sandbox
    /// the relay connects to, then one PASS/FAIL line per step (exit 0
    /// only when all pass).
    CarrierConformance(cli::carrier_conformance::CarrierConformanceArgs),
    /// Development PKI: a CA, the server certificate and client
    /// certificates for the operator, shops and carriers (no OpenSSL needed).
    Pki(cli::pki::PkiArgs),
    /// Load generator: settled trades per second, create→settled latency,
    /// server CPU, memory and disk per trade, against the transport ceiling.
    Bench(cli::bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    syncpay::client::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("syncpay: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            Command::Serve(a) => cli::serve::run(a).await,
            Command::Demo(a) => cli::demo::run(a).await,
            Command::Admin(a) => cli::admin::run(a).await,
            Command::Restore(a) => cli::backup::run_restore(a).await,
            Command::Shop(a) => cli::shop::run(a).await,
            Command::CarrierSim(a) => cli::carrier_sim::run(a).await,
            Command::CarrierConformance(a) => cli::carrier_conformance::run(a).await,
            Command::Pki(a) => cli::pki::run(a),
            Command::Bench(a) => cli::bench::run(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syncpay: {e:#}");
            std::process::ExitCode::from(cli::exit_code(&e))
        }
    }
}
