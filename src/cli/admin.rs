//! `syncpay admin …`: the operator's commands against a running server.
//! Output is for people by default and JSON with `--json` (one object or
//! array per command on stdout). Exit codes: see `cli/mod.rs`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use syncpay::proto::{self, admin_service_client::AdminServiceClient};

use super::{channel, print_json, read_token, Connect, Exit};

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
        AdminCommand::CreateCarrier { carrier_id, display_name, prefixes, fee_bps } => {
            let r = admin
                .create_carrier(proto::CreateCarrierRequest {
                    carrier_id,
                    display_name,
                    ip_prefixes: prefixes,
                    fee_bps,
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
    }
    Ok(())
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
