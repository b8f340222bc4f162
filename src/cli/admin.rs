//! `syncpay admin …`: the operator's commands against a running server.
//! Output is for people by default and JSON with `--json`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use syncpay::client::{connect, connect_tls, with_token, ClientTls};
use syncpay::proto::{self, admin_service_client::AdminServiceClient};

#[derive(Args)]
pub struct AdminArgs {
    /// Server URL.
    #[arg(long, env = "SYNCPAY_SERVER", default_value = "http://127.0.0.1:7700", global = true)]
    server: String,
    /// File holding the operator token (written by `serve` into its data folder).
    #[arg(long, env = "SYNCPAY_ADMIN_TOKEN_FILE", default_value = "syncpay-data/admin.token", global = true)]
    token_file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Mutual TLS: the CA that issued the server's certificate (PEM). With
    /// --tls-cert and --tls-key (the operator's certificate, e.g.
    /// `admin.pem`/`admin.key` from `syncpay pki init`) the token file is
    /// not used.
    #[arg(long, env = "SYNCPAY_TLS_CA", global = true, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    #[arg(long, env = "SYNCPAY_TLS_CLIENT_CERT", global = true, requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "SYNCPAY_TLS_CLIENT_KEY", global = true, requires = "tls_ca")]
    tls_key: Option<PathBuf>,
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
    CreateCarrier { carrier_id: String, display_name: String },
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

/// A JSON string literal (the output has no other escaping needs).
fn js(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let (channel, token) = match (&args.tls_ca, &args.tls_cert, &args.tls_key) {
        (Some(ca), Some(cert), Some(key)) => {
            let tls = ClientTls::from_files(ca, cert, key)?;
            let channel =
                connect_tls(&args.server, &tls).await.with_context(|| format!("connecting to {}", args.server))?;
            // The certificate is the credential.
            (channel, String::new())
        }
        _ => {
            let token = std::fs::read_to_string(&args.token_file)
                .with_context(|| format!("reading the operator token from {}", args.token_file.display()))?;
            let channel = connect(&args.server).await.with_context(|| format!("connecting to {}", args.server))?;
            (channel, token.trim().to_owned())
        }
    };
    let mut admin = AdminServiceClient::new(with_token(channel, &token)?);
    match args.command {
        AdminCommand::Verify => {
            let r = admin.verify_ledger(proto::VerifyLedgerRequest {}).await?.into_inner();
            if args.json {
                let list: Vec<String> = r.violations.iter().map(|v| js(v)).collect();
                println!(
                    "{{\"ok\":{},\"accounts_checked\":{},\"postings_checked\":{},\"trades_checked\":{},\"violations\":[{}]}}",
                    r.ok,
                    r.accounts_checked,
                    r.postings_checked,
                    r.trades_checked,
                    list.join(",")
                );
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
                bail!("{} ledger violation(s)", r.violations.len());
            }
        }
        AdminCommand::CreateShop { shop_id, display_name } => {
            let r = admin.create_shop(proto::CreateShopRequest { shop_id, display_name }).await?.into_inner();
            if args.json {
                println!("{{\"shop_id\":{},\"token\":{}}}", js(&r.shop_id), js(&r.token));
            } else {
                println!("shop {} created; its token (shown once):\n{}", r.shop_id, r.token);
            }
        }
        AdminCommand::CreateCarrier { carrier_id, display_name } => {
            let r = admin.create_carrier(proto::CreateCarrierRequest { carrier_id, display_name }).await?.into_inner();
            if args.json {
                println!("{{\"carrier_id\":{},\"token\":{}}}", js(&r.carrier_id), js(&r.token));
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
                println!(
                    "{{\"account\":{},\"balance_minor\":{},\"posting_id\":{}}}",
                    js(&a.name),
                    a.balance_minor,
                    r.posting_id
                );
            } else {
                println!("{} balance {} (posting {})", a.name, a.balance_minor, r.posting_id);
            }
        }
        AdminCommand::Accounts { prefix } => {
            let r = admin.list_accounts(proto::ListAccountsRequest { prefix }).await?.into_inner();
            if args.json {
                let rows: Vec<String> = r
                    .accounts
                    .iter()
                    .map(|a| {
                        format!(
                            "{{\"name\":{},\"currency\":{},\"debits_minor\":{},\"credits_minor\":{},\"balance_minor\":{}}}",
                            js(&a.name),
                            js(&a.currency),
                            a.debits_minor,
                            a.credits_minor,
                            a.balance_minor
                        )
                    })
                    .collect();
                println!("[{}]", rows.join(","));
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
                let rows: Vec<String> = r
                    .postings
                    .iter()
                    .map(|p| {
                        format!(
                            "{{\"posting_id\":{},\"set_id\":{},\"account\":{},\"debit_minor\":{},\"credit_minor\":{},\"trade_id\":{},\"kind\":{}}}",
                            p.posting_id,
                            p.set_id,
                            js(&p.account),
                            p.debit_minor,
                            p.credit_minor,
                            js(&p.trade_id),
                            js(&p.kind)
                        )
                    })
                    .collect();
                println!("[{}]", rows.join(","));
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
