//! `syncpay admin backup DIR` (an online backup through the running
//! server) and `syncpay restore BACKUP DATA_DIR` (a new data folder from
//! a backup, checked and verified, without a server).

use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use syncpay::proto;

use super::{print_json, Exit, EXIT_REFUSED};

/// Prints what the server says it backed up.
pub fn print_backup(r: &proto::BackupStoreResponse, as_json: bool) {
    if as_json {
        print_json(&json!({
            "dir": r.dir,
            "taken_at_ms": r.taken_at_ms,
            "last_posting_id": r.last_posting_id,
            "shops_with_events": r.shops_with_events,
            "trades": r.trades,
            "postings": r.postings,
            "accounts": r.accounts,
            "events": r.events,
            "records": r.records,
            "writer_pause_us": r.writer_pause_us,
            "dump_bytes": r.dump_bytes,
            "dump_sha256": r.dump_sha256,
        }));
    } else {
        println!("backup   {}", r.dir);
        println!(
            "holds    {} trades, {} postings (last id {}), {} accounts, {} events of {} shops; {} records",
            r.trades, r.postings, r.last_posting_id, r.accounts, r.events, r.shops_with_events, r.records
        );
        println!("dump     {} bytes, sha256 {}", r.dump_bytes, r.dump_sha256);
        println!("writes waited {} µs while the records were copied", r.writer_pause_us);
        println!("restore with: syncpay restore {} NEW_DATA_DIR", r.dir);
    }
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The backup folder (`syncpay admin backup`'s DIR, with its manifest).
    backup: PathBuf,
    /// The data folder to build: must not exist or be empty. Serve it with
    /// `syncpay serve --data-dir DATA_DIR` (a new admin.token is made).
    data_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Checks the backup's checksums, builds `DATA_DIR` (store, server secret,
/// receipt keys) and verifies the ledger on it. Exit 4 for a damaged
/// backup or an existing target, 1 if the ledger does not verify.
pub async fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    let report = syncpay::sync_server::restore(&args.backup, &args.data_dir)
        .await
        .map_err(|e| anyhow::Error::new(Exit { code: EXIT_REFUSED, message: format!("restore refused: {e}") }))?;
    let m = &report.manifest;
    let v = &report.verify;
    if args.json {
        print_json(&json!({
            "data_dir": report.data_dir.display().to_string(),
            "taken_at_ms": m.taken_at_ms,
            "last_posting_id": m.point.last_posting_id,
            "event_heads": m.point.event_heads,
            "records": report.records,
            "ledger_ok": v.ok(),
            "violations": v.violations,
        }));
    } else {
        println!("restored {} records into {}", report.records, report.data_dir.display());
        println!(
            "backup point: taken at {} ms, last posting {}, {} shops with events",
            m.taken_at_ms,
            m.point.last_posting_id,
            m.point.event_heads.len()
        );
        println!(
            "checked {} accounts, {} postings, {} trades",
            v.accounts_checked, v.postings_checked, v.trades_checked
        );
        for violation in &v.violations {
            println!("violation: {violation}");
        }
        println!("{}", if v.ok() { "ledger verifies" } else { "LEDGER DOES NOT VERIFY" });
    }
    if !v.ok() {
        return Err(Exit::negative(format!("{} ledger violation(s) in the restored store", v.violations.len())));
    }
    Ok(())
}
