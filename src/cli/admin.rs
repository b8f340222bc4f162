//! `syncpay admin …`: the operator's commands against a running server.
//! Output is for people by default and JSON with `--json` (one object or
//! array per command on stdout). Exit codes: see `cli/mod.rs`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use syncpay::proto::{self, admin_service_client::AdminServiceClient};

use super::shop::{read_json, write_key_file};
use super::{channel, print_json, read_token, Connect, Exit};
use syncpay::hex;
use syncpay::register::{check_dispute, receipt_from_json, receipt_to_json, ReceiptKeySet};

#[derive(Args)]
pub struct AdminArgs {
    #[command(flatten)]
    connect: Connect,
    /// File holding the operator token (written by `serve` into its data
    /// folder); not used with --tls-*.
    #[arg(long, env = "SYNCPAY_ADMIN_TOKEN_FILE", default_value = "syncpay-data/admin.token", global = true)]
    token_file: PathBuf,
    /// The operator token itself, instead of a file (environment only, so it
    /// stays out of the process list).
    #[arg(skip = std::env::var("SYNCPAY_ADMIN_TOKEN").ok())]
    token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Check every ledger invariant; exits 1 and lists the violations if any.
    Verify,
    /// Take an online backup of the embedded store into DIR, an absolute
    /// path on the server's host that does not exist yet (or is an empty
    /// folder), while the server serves: the records at one point of the
    /// store's writer, the server secret and receipt keys, and a manifest
    /// with checksums. Restore it with `syncpay restore DIR DATA_DIR`. The
    /// PostgreSQL backend refuses (use pg_basebackup; docs/DEPLOY.md).
    Backup { dir: String },
    /// Create a shop and print its token (shown once).
    CreateShop { shop_id: String, display_name: String },
    /// Create a carrier and print its token (shown once).
    CreateCarrier {
        carrier_id: String,
        display_name: String,
        /// An IPv4/IPv6 CIDR prefix the carrier leases to subscribers
        /// (repeatable).
        #[arg(long = "prefix")]
        prefixes: Vec<String>,
        /// The carrier's fee on carrier-billed charges, in basis points.
        #[arg(long, default_value_t = 0)]
        fee_bps: u32,
        /// How the server learns who held the carrier's addresses: `ask`
        /// (the carrier answers resolve requests on its relay stream; no
        /// lease is stored here) or `push` (the carrier reports leases).
        #[arg(long, default_value = "ask", value_parser = ["ask", "push"])]
        resolve_mode: String,
    },
    /// Add IP prefixes to a carrier.
    AddPrefixes { carrier_id: String, prefixes: Vec<String> },
    /// Print a carrier-billed subscriber's statement for a month (YYYY-MM).
    Statement { carrier_id: String, subscriber_number: String, month: String },
    /// Credit a subscriber's wallet (amount in minor units).
    TopUp { subscriber_number: String, amount_minor: u64, currency: String },
    /// List accounts whose name starts with PREFIX.
    Accounts {
        #[arg(default_value = "")]
        prefix: String,
    },
    /// List postings after an id.
    Postings {
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Save the receipt-signing public keys (active and retired) as the key
    /// file shops verify receipts with, to FILE or stdout.
    ReceiptKeys {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Make a new receipt-signing key the active one; the old one stays
    /// published (republish the key file afterwards).
    RotateReceiptKey,
    /// Show which enrolled handset signed a settled trade, and check it as
    /// an arbiter would: the key against the receipt's per-trade
    /// commitment, the handset's signature, the operator's countersignature.
    /// With --receipt, checks the copy the shop presents (its `status
    /// --json` or receipt JSON) and that it is the server's. Exit 1 if any
    /// check fails.
    Dispute {
        trade_id: String,
        #[arg(long)]
        receipt: Option<PathBuf>,
    },
    #[command(flatten)]
    Operator(super::operator::OperatorCommand),
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    // Over mutual TLS the operator's certificate is the credential and the
    // token file is not read.
    let channel =
        channel(&args.connect, || read_token(args.token.as_deref(), Some(&args.token_file), "operator")).await?;
    let mut admin = AdminServiceClient::new(channel);
    match args.command {
        AdminCommand::Verify => {
            let r = admin.verify_ledger(proto::VerifyLedgerRequest {}).await?.into_inner();
            if args.json {
                print_json(&json!({
                    "ok": r.ok,
                    "accounts_checked": r.accounts_checked,
                    "postings_checked": r.postings_checked,
                    "trades_checked": r.trades_checked,
                    "violations": r.violations,
                }));
            } else {
                println!(
                    "checked {} accounts, {} postings, {} trades",
                    r.accounts_checked, r.postings_checked, r.trades_checked
                );
                for v in &r.violations {
                    println!("violation: {v}");
                }
                println!("{}", if r.ok { "ledger verifies" } else { "LEDGER DOES NOT VERIFY" });
            }
            if !r.ok {
                return Err(Exit::negative(format!("{} ledger violation(s)", r.violations.len())));
            }
        }
        AdminCommand::Backup { dir } => {
            let r = admin.backup_store(proto::BackupStoreRequest { dir }).await?.into_inner();
            super::backup::print_backup(&r, args.json);
        }
        AdminCommand::CreateShop { shop_id, display_name } => {
            let r = admin.create_shop(proto::CreateShopRequest { shop_id, display_name }).await?.into_inner();
            if args.json {
                print_json(&json!({"shop_id": r.shop_id, "token": r.token}));
            } else {
                println!("shop {} created; its token (shown once):\n{}", r.shop_id, r.token);
            }
        }
        AdminCommand::AddPrefixes { carrier_id, prefixes } => {
            let r = admin
                .add_carrier_prefixes(proto::AddCarrierPrefixesRequest { carrier_id, ip_prefixes: prefixes })
                .await?
                .into_inner();
            if args.json {
                print_json(&json!({"ip_prefixes": r.ip_prefixes}));
            } else {
                println!("added {}", r.ip_prefixes.join(", "));
            }
        }
        AdminCommand::Statement { carrier_id, subscriber_number, month } => {
            let request = proto::GetStatementRequest { subscriber_number, month, carrier_id };
            let s = admin.get_statement(request).await?.into_inner();
            print_statement(&s, args.json);
        }
        AdminCommand::CreateCarrier { carrier_id, display_name, prefixes, fee_bps, resolve_mode } => {
            let resolve_mode = match resolve_mode.as_str() {
                "push" => proto::ResolveMode::Push,
                _ => proto::ResolveMode::Ask,
            } as i32;
            let r = admin
                .create_carrier(proto::CreateCarrierRequest {
                    carrier_id,
                    display_name,
                    ip_prefixes: prefixes,
                    fee_bps,
                    resolve_mode,
                })
                .await?
                .into_inner();
            if args.json {
                print_json(&json!({"carrier_id": r.carrier_id, "token": r.token}));
            } else {
                println!("carrier {} created; its token (shown once):\n{}", r.carrier_id, r.token);
            }
        }
        AdminCommand::TopUp { subscriber_number, amount_minor, currency } => {
            let r = admin
                .top_up_wallet(proto::TopUpWalletRequest { subscriber_number, amount_minor, currency })
                .await?
                .into_inner();
            let a = r.account.unwrap_or_default();
            if args.json {
                print_json(&json!({"account": a.name, "balance_minor": a.balance_minor, "posting_id": r.posting_id}));
            } else {
                println!("{} balance {} (posting {})", a.name, a.balance_minor, r.posting_id);
            }
        }
        AdminCommand::Accounts { prefix } => {
            let r = admin.list_accounts(proto::ListAccountsRequest { prefix }).await?.into_inner();
            if args.json {
                let rows: Vec<_> = r
                    .accounts
                    .iter()
                    .map(|a| {
                        json!({
                            "name": a.name,
                            "currency": a.currency,
                            "debits_minor": a.debits_minor,
                            "credits_minor": a.credits_minor,
                            "balance_minor": a.balance_minor,
                        })
                    })
                    .collect();
                print_json(&serde_json::Value::Array(rows));
            } else {
                println!("{:<40} {:>16} {:>16} {:>16}", "account", "debits", "credits", "balance");
                for a in &r.accounts {
                    println!("{:<40} {:>16} {:>16} {:>16}", a.name, a.debits_minor, a.credits_minor, a.balance_minor);
                }
            }
        }
        AdminCommand::Postings { after, limit } => {
            let r =
                admin.list_postings(proto::ListPostingsRequest { after_posting_id: after, limit }).await?.into_inner();
            if args.json {
                let rows: Vec<_> = r
                    .postings
                    .iter()
                    .map(|p| {
                        json!({
                            "posting_id": p.posting_id,
                            "set_id": p.set_id,
                            "account": p.account,
                            "currency": p.currency,
                            "debit_minor": p.debit_minor,
                            "credit_minor": p.credit_minor,
                            "trade_id": p.trade_id,
                            "kind": p.kind,
                            "at_ms": p.at_ms,
                        })
                    })
                    .collect();
                print_json(&serde_json::Value::Array(rows));
            } else {
                for p in &r.postings {
                    println!(
                        "{:>6} set {:>6} {:<11} {:<40} dr {:>12} cr {:>12} {}",
                        p.posting_id, p.set_id, p.kind, p.account, p.debit_minor, p.credit_minor, p.trade_id
                    );
                }
            }
        }
        AdminCommand::ReceiptKeys { out } => {
            let keys = admin.get_receipt_keys(proto::GetReceiptKeysRequest {}).await?.into_inner();
            let set = ReceiptKeySet::from_proto(&keys).map_err(|e| anyhow::anyhow!("the server sent bad keys: {e}"))?;
            write_key_file(&set, out.as_deref())?;
        }
        AdminCommand::RotateReceiptKey => {
            let keys = admin.rotate_receipt_key(proto::RotateReceiptKeyRequest {}).await?.into_inner();
            let set = ReceiptKeySet::from_proto(&keys).map_err(|e| anyhow::anyhow!("the server sent bad keys: {e}"))?;
            if args.json {
                print_json(&set.to_json());
            } else {
                for (i, k) in set.keys().iter().enumerate() {
                    let role = if i == 0 { "active " } else { "retired" };
                    println!("{role} {}  {}", k.id, hex::encode(&k.public_key));
                }
                println!("republish the key file: syncpay admin receipt-keys --out FILE");
            }
        }
        AdminCommand::Dispute { trade_id, receipt } => {
            let report = admin.dispute_trade(proto::DisputeTradeRequest { trade_id }).await?.into_inner();
            let keys = admin.get_receipt_keys(proto::GetReceiptKeysRequest {}).await?.into_inner();
            dispute(&report, &keys, receipt.as_deref(), args.json)?;
        }
        AdminCommand::Operator(command) => super::operator::run(&mut admin, command, args.json).await?,
    }
    Ok(())
}

/// Prints a dispute report and the arbiter's checks; exit 1 if one fails.
fn dispute(
    report: &proto::DisputeReport,
    keys: &proto::ReceiptKeys,
    presented: Option<&std::path::Path>,
    json_out: bool,
) -> anyhow::Result<()> {
    let stored = report.receipt.clone().unwrap_or_default();
    let receipt = match presented {
        Some(path) => {
            let v = read_json(Some(path))?;
            let r = v.get("receipt").unwrap_or(&v);
            receipt_from_json(r).map_err(|e| Exit::usage(format!("{}: {e}", path.display())))?
        }
        None => stored.clone(),
    };
    let key: Option<[u8; 32]> = report.handset_public_key.as_slice().try_into().ok();
    let set = ReceiptKeySet::from_proto(keys).map_err(|e| anyhow::anyhow!("the server sent bad keys: {e}"))?;
    let check = key.map(|k| check_dispute(&receipt, &k, &set));
    let countersigned = check.as_ref().map(|c| c.receipt.as_ref().map(|_| ()).map_err(ToString::to_string));
    let same = receipt == stored;
    let passes = check.as_ref().is_some_and(|c| c.all_pass()) && same;
    if json_out {
        print_json(&json!({
            "trade_id": report.trade_id,
            "shop_id": report.shop_id,
            "subscriber_number": report.subscriber_number,
            "carrier_id": report.carrier_id,
            "handset_public_key": hex::encode(&report.handset_public_key),
            "key_from_receipt": report.key_from_receipt,
            "key_enrolled_now": report.key_enrolled_now,
            "enrolled_at_ms": report.enrolled_at_ms,
            "receipt": receipt_to_json(&receipt),
            "receipt_is_the_servers": same,
            "commitment_matches": check.as_ref().is_some_and(|c| c.commitment_matches),
            "handset_signature_valid": check.as_ref().is_some_and(|c| c.handset_signature_valid),
            "countersignature": match &countersigned {
                Some(Ok(())) => "valid".to_owned(),
                Some(Err(e)) => e.clone(),
                None => "no handset key".to_owned(),
            },
            "legacy_receipt": check.as_ref().is_some_and(|c| c.legacy),
            "all_checks_pass": passes,
        }));
    } else {
        let mark = |ok: bool| if ok { "✓" } else { "✗" };
        println!("trade       {} of shop {}", report.trade_id, report.shop_id);
        println!("payer       {} (carrier {})", report.subscriber_number, report.carrier_id);
        println!(
            "handset key {} ({}; {})",
            hex::encode(&report.handset_public_key),
            if report.key_from_receipt { "kept with the receipt" } else { "NOT kept: the key enrolled now" },
            if report.key_enrolled_now { "still enrolled" } else { "since replaced" }
        );
        if let Some(c) = check.as_ref().filter(|c| c.legacy) {
            println!(
                "fingerprint {} (settled before receipts were countersigned)",
                hex::encode(&receipt.handset_key_fingerprint)
            );
            println!("  {} SHA-256(shop id, 0x00, key) is the receipt's fingerprint", mark(c.commitment_matches));
            println!("  {} the key's signature over the signed payload verifies", mark(c.handset_signature_valid));
        } else if let Some(c) = &check {
            println!("commitment  {}", hex::encode(&receipt.handset_commitment));
            println!("  {} SHA-256(tag, trade id, key) is the receipt's commitment", mark(c.commitment_matches));
            println!("  {} the key's signature over the signed payload verifies", mark(c.handset_signature_valid));
            match &c.receipt {
                Ok(v) => println!("  ✓ the operator's countersignature verifies under receipt key {}", v.key_id),
                Err(e) => println!("  ✗ countersignature: {e}"),
            }
        } else {
            println!("  ✗ no handset key to check");
        }
        if presented.is_some() {
            println!("  {} the presented receipt is the one the server issued", mark(same));
        }
    }
    if passes {
        Ok(())
    } else {
        Err(Exit::negative(format!("dispute checks failed for {}", report.trade_id)))
    }
}

/// A statement as a table, or as one JSON object.
pub fn print_statement(s: &proto::Statement, json_out: bool) {
    if json_out {
        let lines: Vec<_> = s
            .lines
            .iter()
            .map(|l| {
                json!({
                    "trade_id": l.trade_id,
                    "shop_id": l.shop_id,
                    "shop_name": l.shop_name,
                    "amount_minor": l.amount_minor,
                    "refunded_minor": l.refunded_minor,
                    "fee_minor": l.fee_minor,
                    "settled_at_ms": l.settled_at_ms,
                })
            })
            .collect();
        print_json(&json!({
            "subscriber_number": s.subscriber_number,
            "month": s.month,
            "currency": s.currency,
            "monthly_cap_minor": s.monthly_cap_minor,
            "lines": lines,
            "charged_minor": s.charged_minor,
            "refunded_minor": s.refunded_minor,
            "total_minor": s.total_minor,
            "fee_minor": s.fee_minor,
        }));
        return;
    }
    println!("statement {} {} ({}, cap {})", s.subscriber_number, s.month, s.currency, s.monthly_cap_minor);
    println!("  {:<30} {:<24} {:>12} {:>12}", "trade", "shop", "amount", "refunded");
    for l in &s.lines {
        println!("  {:<30} {:<24} {:>12} {:>12}", l.trade_id, l.shop_name, l.amount_minor, l.refunded_minor);
    }
    println!("  charged {}  refunded {}  total {}", s.charged_minor, s.refunded_minor, s.total_minor);
}
