//! `syncpay admin` commands of the operator's daily tools: payouts and the
//! payout report (text, JSON or CSV), carrier remittances and the carrier
//! statement (text, JSON or CSV), a trade's whole history, shops and
//! carriers a page at a time, suspending and resuming a shop, rotating a
//! party's bearer token.

use clap::Subcommand;
use serde_json::json;
use syncpay::client::BearerAuth;
use syncpay::proto::{self, admin_service_client::AdminServiceClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::print_json;

#[derive(Subcommand)]
pub enum OperatorCommand {
    /// Pay out part (AMOUNT_MINOR) or all (--all) of a shop's payable
    /// balance in CURRENCY to its bank; prints the payout id and the
    /// reference to put on the bank transfer. Retry with the same --key.
    Payout {
        shop_id: String,
        currency: String,
        /// Minor units; omit with --all.
        amount_minor: Option<u64>,
        /// Pay out the whole balance.
        #[arg(long)]
        all: bool,
        /// Idempotency key (operator-wide): a retry with it returns the
        /// original payout.
        #[arg(long)]
        key: String,
    },
    /// A shop's payout report for [FROM_MS, TO_MS): per carrier and for
    /// wallets, and the payouts made. --csv prints one row per line.
    PayoutReport {
        shop_id: String,
        from_ms: i64,
        to_ms: i64,
        #[arg(long)]
        csv: bool,
    },
    /// Record a carrier's remittance of AMOUNT_MINOR for SHOP_ID's
    /// carrier-billed sales of MONTH (YYYY-MM, ended) in CURRENCY; prints
    /// the remittance id and what is still outstanding. Retry with the
    /// same --key.
    Remittance {
        carrier_id: String,
        shop_id: String,
        month: String,
        currency: String,
        amount_minor: u64,
        /// Idempotency key (operator-wide): a retry with it returns the
        /// original remittance.
        #[arg(long)]
        key: String,
    },
    /// A carrier's statement for MONTH (YYYY-MM): per shop and currency
    /// what it owes, remitted and still owes, every page, with totals.
    /// --csv prints one row per line; --json one document.
    CarrierStatement {
        carrier_id: String,
        month: String,
        #[arg(long)]
        csv: bool,
    },
    /// Any trade by id with its whole history (events, postings, payer,
    /// carrier, handset key).
    Trade { trade_id: String },
    /// List shops (one page; --after for the next).
    Shops {
        #[arg(long, default_value = "")]
        after: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// List carriers (one page; --after for the next).
    Carriers {
        #[arg(long, default_value = "")]
        after: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Suspend a shop: its registers are refused new trades.
    Suspend { shop_id: String },
    /// Resume a suspended shop.
    Resume { shop_id: String },
    /// Replace a shop's (--shop) or carrier's (--carrier) bearer token;
    /// the old one is refused at once. Prints the new one (shown once).
    RotateToken {
        #[arg(long, conflicts_with = "carrier", required_unless_present = "carrier")]
        shop: Option<String>,
        #[arg(long)]
        carrier: Option<String>,
    },
}

fn payout_json(p: &proto::ShopPayout) -> serde_json::Value {
    json!({
        "payout_id": p.payout_id,
        "shop_id": p.shop_id,
        "currency": p.currency,
        "amount_minor": p.amount_minor,
        "reference": p.reference,
        "paid_at_ms": p.paid_at_ms,
        "idempotency_key": p.idempotency_key,
    })
}

fn shop_json(s: &proto::ShopInfo) -> serde_json::Value {
    json!({
        "shop_id": s.shop_id,
        "display_name": s.display_name,
        "created_at_ms": s.created_at_ms,
        "suspended": s.suspended,
        "suspended_at_ms": s.suspended_at_ms,
        "last_sequence": s.last_sequence,
    })
}

/// A CSV field: quoted when it holds a comma, quote or line break
/// (RFC 4180); ids, codes and numbers never do.
fn csv(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// The payout report as CSV: one row per carrier and currency, per wallet
/// currency, and per payout, under one header.
pub fn payout_report_csv(shop: &str, r: &proto::PayoutReport) -> String {
    let mut out = String::from(
        "shop_id,kind,carrier_id,currency,gross_minor,fee_minor,refunded_minor,net_minor,settlements,payout_id,reference,paid_at_ms\n",
    );
    for c in &r.carriers {
        out.push_str(&format!(
            "{},carrier,{},{},{},{},{},{},{},,,\n",
            csv(shop),
            csv(&c.carrier_id),
            csv(&c.currency),
            c.gross_minor,
            c.fee_minor,
            c.refunded_minor,
            c.net_minor,
            c.settlements
        ));
    }
    for w in &r.wallet {
        out.push_str(&format!(
            "{},wallet,,{},{},0,{},{},{},,,\n",
            csv(shop),
            csv(&w.currency),
            w.gross_minor,
            w.refunded_minor,
            w.net_minor,
            w.settlements
        ));
    }
    for p in &r.payouts {
        out.push_str(&format!(
            "{},payout,,{},,,,-{},,{},{},{}\n",
            csv(shop),
            csv(&p.currency),
            p.amount_minor,
            p.payout_id,
            csv(&p.reference),
            p.paid_at_ms
        ));
    }
    out
}

pub fn payout_report_json(shop: &str, r: &proto::PayoutReport) -> serde_json::Value {
    json!({
        "shop_id": shop,
        "from_ms": r.from_ms,
        "to_ms": r.to_ms,
        "carriers": r.carriers.iter().map(|c| json!({
            "carrier_id": c.carrier_id, "currency": c.currency, "gross_minor": c.gross_minor,
            "fee_minor": c.fee_minor, "refunded_minor": c.refunded_minor, "net_minor": c.net_minor,
            "settlements": c.settlements,
        })).collect::<Vec<_>>(),
        "wallet": r.wallet.iter().map(|w| json!({
            "currency": w.currency, "gross_minor": w.gross_minor, "refunded_minor": w.refunded_minor,
            "net_minor": w.net_minor, "settlements": w.settlements,
        })).collect::<Vec<_>>(),
        "payouts": r.payouts.iter().map(payout_json).collect::<Vec<_>>(),
    })
}

/// One CSV line of already-formatted fields, each quoted as [`csv`] says.
fn csv_line(fields: &[String]) -> String {
    let mut line = fields.iter().map(|f| csv(f)).collect::<Vec<_>>().join(",");
    line.push('\n');
    line
}

/// Per-currency totals of a statement's lines: (owed, remitted,
/// outstanding), summed exactly.
fn statement_totals(lines: &[proto::CarrierStatementLine]) -> std::collections::BTreeMap<String, (i128, u128, i128)> {
    let mut totals = std::collections::BTreeMap::new();
    for l in lines {
        let t: &mut (i128, u128, i128) = totals.entry(l.currency.clone()).or_default();
        t.0 += i128::from(l.owed_minor);
        t.1 += u128::from(l.remitted_minor);
        t.2 += i128::from(l.outstanding_minor);
    }
    totals
}

const STATEMENT_COLUMNS: [&str; 11] = [
    "carrier_id",
    "month",
    "shop_id",
    "currency",
    "gross_minor",
    "fee_minor",
    "refunded_minor",
    "owed_minor",
    "remitted_minor",
    "outstanding_minor",
    "settlements",
];

/// A carrier statement as CSV: one row per shop and currency, then one
/// `TOTAL` row per currency (shop_id "TOTAL", only the three sums).
pub fn carrier_statement_csv(carrier: &str, month: &str, lines: &[proto::CarrierStatementLine]) -> String {
    let mut out = STATEMENT_COLUMNS.join(",");
    out.push('\n');
    for l in lines {
        out.push_str(&csv_line(&[
            carrier.to_owned(),
            month.to_owned(),
            l.shop_id.clone(),
            l.currency.clone(),
            l.gross_minor.to_string(),
            l.fee_minor.to_string(),
            l.refunded_minor.to_string(),
            l.owed_minor.to_string(),
            l.remitted_minor.to_string(),
            l.outstanding_minor.to_string(),
            l.settlements.to_string(),
        ]));
    }
    for (currency, (owed, remitted, outstanding)) in statement_totals(lines) {
        out.push_str(&csv_line(&[
            carrier.to_owned(),
            month.to_owned(),
            "TOTAL".to_owned(),
            currency,
            String::new(),
            String::new(),
            String::new(),
            owed.to_string(),
            remitted.to_string(),
            outstanding.to_string(),
            String::new(),
        ]));
    }
    out
}

fn statement_line_json(l: &proto::CarrierStatementLine) -> serde_json::Value {
    json!({
        "shop_id": l.shop_id, "currency": l.currency, "gross_minor": l.gross_minor, "fee_minor": l.fee_minor,
        "refunded_minor": l.refunded_minor, "settlements": l.settlements, "owed_minor": l.owed_minor,
        "remitted_minor": l.remitted_minor, "outstanding_minor": l.outstanding_minor,
        "remittances": l.remittances,
    })
}

pub fn carrier_statement_json(carrier: &str, month: &str, lines: &[proto::CarrierStatementLine]) -> serde_json::Value {
    json!({
        "carrier_id": carrier,
        "month": month,
        "lines": lines.iter().map(statement_line_json).collect::<Vec<_>>(),
        // Strings: exact sums that may pass a JSON number's safe range.
        "totals": statement_totals(lines).into_iter().map(|(currency, (owed, remitted, outstanding))| json!({
            "currency": currency, "owed_minor": owed.to_string(), "remitted_minor": remitted.to_string(),
            "outstanding_minor": outstanding.to_string(),
        })).collect::<Vec<_>>(),
    })
}

/// Pages of a statement fetched at most (each up to 1000 shops): far
/// more shops than one carrier serves; a bound on a server that keeps
/// answering full pages.
const MAX_STATEMENT_PAGES: usize = 10_000;

pub async fn run(
    admin: &mut AdminServiceClient<InterceptedService<Channel, BearerAuth>>,
    command: OperatorCommand,
    json_out: bool,
) -> anyhow::Result<()> {
    match command {
        OperatorCommand::Payout { shop_id, currency, amount_minor, all, key } => {
            let request = proto::PayoutShopRequest {
                shop_id,
                currency,
                amount_minor: amount_minor.unwrap_or(0),
                whole_balance: all,
                idempotency_key: key,
            };
            let r = admin.payout_shop(request).await?.into_inner();
            let p = r.payout.unwrap_or_default();
            if json_out {
                let mut v = payout_json(&p);
                v["payable_balance_minor"] = json!(r.payable_balance_minor);
                v["replayed"] = json!(r.replayed);
                print_json(&v);
            } else {
                println!(
                    "payout {} of {} {} to shop {}{}",
                    p.payout_id,
                    p.amount_minor,
                    p.currency,
                    p.shop_id,
                    if r.replayed { " (already made: this is the original)" } else { "" }
                );
                println!("bank transfer reference: {}", p.reference);
                println!("payable balance now {}", r.payable_balance_minor);
            }
        }
        OperatorCommand::PayoutReport { shop_id, from_ms, to_ms, csv: as_csv } => {
            let request = proto::GetShopPayoutReportRequest { shop_id: shop_id.clone(), from_ms, to_ms };
            let r = admin.get_shop_payout_report(request).await?.into_inner();
            if as_csv {
                print!("{}", payout_report_csv(&shop_id, &r));
            } else if json_out {
                print_json(&payout_report_json(&shop_id, &r));
            } else {
                println!("payout report of {shop_id} for [{from_ms}, {to_ms})");
                for c in &r.carriers {
                    println!(
                        "  carrier {:<16} {} gross {} fee {} refunded {} net {} ({} settlements)",
                        c.carrier_id,
                        c.currency,
                        c.gross_minor,
                        c.fee_minor,
                        c.refunded_minor,
                        c.net_minor,
                        c.settlements
                    );
                }
                for w in &r.wallet {
                    println!(
                        "  wallets {} gross {} refunded {} net {} ({} settlements)",
                        w.currency, w.gross_minor, w.refunded_minor, w.net_minor, w.settlements
                    );
                }
                for p in &r.payouts {
                    println!(
                        "  payout {} {} {} ref {} at {}",
                        p.payout_id, p.amount_minor, p.currency, p.reference, p.paid_at_ms
                    );
                }
            }
        }
        OperatorCommand::Remittance { carrier_id, shop_id, month, currency, amount_minor, key } => {
            let request = proto::RecordRemittanceRequest {
                carrier_id,
                shop_id,
                month,
                currency,
                amount_minor,
                idempotency_key: key,
            };
            let r = admin.record_remittance(request).await?.into_inner();
            let m = r.remittance.unwrap_or_default();
            let line = r.line.unwrap_or_default();
            if json_out {
                print_json(&json!({
                    "remittance_id": m.remittance_id, "carrier_id": m.carrier_id, "shop_id": m.shop_id,
                    "month": m.month, "currency": m.currency, "amount_minor": m.amount_minor,
                    "reference": m.reference, "remitted_at_ms": m.remitted_at_ms,
                    "idempotency_key": m.idempotency_key, "line": statement_line_json(&line),
                    "replayed": r.replayed,
                }));
            } else {
                println!(
                    "remittance {} of {} {} from carrier {} to shop {} for {}{}",
                    m.remittance_id,
                    m.amount_minor,
                    m.currency,
                    m.carrier_id,
                    m.shop_id,
                    m.month,
                    if r.replayed { " (already recorded: this is the original)" } else { "" }
                );
                println!("reference: {}", m.reference);
                println!(
                    "owed {} remitted {} outstanding {}",
                    line.owed_minor, line.remitted_minor, line.outstanding_minor
                );
            }
        }
        OperatorCommand::CarrierStatement { carrier_id, month, csv: as_csv } => {
            let mut lines = Vec::new();
            let mut after = String::new();
            for _ in 0..MAX_STATEMENT_PAGES {
                let request = proto::GetCarrierStatementRequest {
                    carrier_id: carrier_id.clone(),
                    month: month.clone(),
                    after_shop_id: after.clone(),
                    limit: 0,
                };
                let page = admin.get_carrier_statement(request).await?.into_inner();
                lines.extend(page.lines);
                if page.next_after_shop_id.is_empty() {
                    break;
                }
                after = page.next_after_shop_id;
            }
            if as_csv {
                print!("{}", carrier_statement_csv(&carrier_id, &month, &lines));
            } else if json_out {
                print_json(&carrier_statement_json(&carrier_id, &month, &lines));
            } else {
                println!("statement of carrier {carrier_id} for {month}");
                for l in &lines {
                    println!(
                        "  shop {:<24} {} owed {} remitted {} outstanding {} ({} settlements)",
                        l.shop_id, l.currency, l.owed_minor, l.remitted_minor, l.outstanding_minor, l.settlements
                    );
                }
                for (currency, (owed, remitted, outstanding)) in statement_totals(&lines) {
                    println!("  total {currency} owed {owed} remitted {remitted} outstanding {outstanding}");
                }
            }
        }
        OperatorCommand::Trade { trade_id } => {
            let h = admin.get_trade_history(proto::GetTradeHistoryRequest { trade_id }).await?.into_inner();
            let t = h.trade.clone().unwrap_or_default();
            let state = syncpay::proto::state_name;
            if json_out {
                print_json(&json!({
                    "trade_id": t.trade_id,
                    "shop_id": h.shop_id,
                    "state": state(t.state),
                    "amount_minor": t.amount_minor,
                    "currency": t.currency,
                    "refunded_minor": t.refunded_minor,
                    "subscriber_number": h.subscriber_number,
                    "carrier_id": h.carrier_id,
                    "handset_public_key": syncpay::hex::encode(&h.handset_public_key),
                    "created_at_ms": t.created_at_ms,
                    "expires_at_ms": t.expires_at_ms,
                    "finished_at_ms": t.finished_at_ms,
                    "events": h.events.iter().map(|e| json!({
                        "sequence": e.sequence, "at_ms": e.at_ms, "state": state(e.state),
                        "refund_minor": e.refund_minor, "refund_id": e.refund_id,
                    })).collect::<Vec<_>>(),
                    "postings": h.postings.iter().map(|p| json!({
                        "posting_id": p.posting_id, "set_id": p.set_id, "account": p.account, "kind": p.kind,
                        "debit_minor": p.debit_minor, "credit_minor": p.credit_minor, "at_ms": p.at_ms,
                    })).collect::<Vec<_>>(),
                }));
            } else {
                println!(
                    "trade {} of shop {}: {} {} {}",
                    t.trade_id,
                    h.shop_id,
                    state(t.state),
                    t.amount_minor,
                    t.currency
                );
                println!("payer {} (carrier {})", h.subscriber_number, h.carrier_id);
                if !h.handset_public_key.is_empty() {
                    println!("handset key {}", syncpay::hex::encode(&h.handset_public_key));
                }
                for e in &h.events {
                    let refund = if e.refund_id != 0 {
                        format!(" refund {} of {}", e.refund_id, e.refund_minor)
                    } else {
                        String::new()
                    };
                    println!("  #{:<6} {} {}{}", e.sequence, e.at_ms, state(e.state), refund);
                }
                for p in &h.postings {
                    println!(
                        "  posting {:>6} set {:>6} {:<10} {:<40} dr {:>10} cr {:>10}",
                        p.posting_id, p.set_id, p.kind, p.account, p.debit_minor, p.credit_minor
                    );
                }
            }
        }
        OperatorCommand::Shops { after, limit } => {
            let r = admin.list_shops(proto::ListShopsRequest { after_shop_id: after, limit }).await?.into_inner();
            if json_out {
                print_json(&json!({
                    "shops": r.shops.iter().map(shop_json).collect::<Vec<_>>(),
                    "next_after_shop_id": r.next_after_shop_id,
                }));
            } else {
                for s in &r.shops {
                    println!(
                        "{:<24} {:<32} {}",
                        s.shop_id,
                        s.display_name,
                        if s.suspended { "SUSPENDED" } else { "trading" }
                    );
                }
                if !r.next_after_shop_id.is_empty() {
                    println!("more: --after {}", r.next_after_shop_id);
                }
            }
        }
        OperatorCommand::Carriers { after, limit } => {
            let r =
                admin.list_carriers(proto::ListCarriersRequest { after_carrier_id: after, limit }).await?.into_inner();
            if json_out {
                print_json(&json!({
                    "carriers": r.carriers.iter().map(|c| json!({
                        "carrier_id": c.carrier_id, "display_name": c.display_name, "created_at_ms": c.created_at_ms,
                    })).collect::<Vec<_>>(),
                    "next_after_carrier_id": r.next_after_carrier_id,
                }));
            } else {
                for c in &r.carriers {
                    println!("{:<24} {}", c.carrier_id, c.display_name);
                }
                if !r.next_after_carrier_id.is_empty() {
                    println!("more: --after {}", r.next_after_carrier_id);
                }
            }
        }
        OperatorCommand::Suspend { shop_id } => {
            let s = admin.suspend_shop(proto::SuspendShopRequest { shop_id }).await?.into_inner();
            print_shop(&s, json_out);
        }
        OperatorCommand::Resume { shop_id } => {
            let s = admin.resume_shop(proto::ResumeShopRequest { shop_id }).await?.into_inner();
            print_shop(&s, json_out);
        }
        OperatorCommand::RotateToken { shop, carrier } => {
            use proto::rotate_credential_request::Party;
            let party = match (shop, carrier) {
                (Some(s), _) => Party::ShopId(s),
                (None, Some(c)) => Party::CarrierId(c),
                (None, None) => return Err(super::Exit::usage("name --shop or --carrier")),
            };
            let r = admin.rotate_credential(proto::RotateCredentialRequest { party: Some(party) }).await?.into_inner();
            if json_out {
                print_json(&json!({"token": r.token}));
            } else {
                println!("new token (shown once; the old one is refused from now on):\n{}", r.token);
            }
        }
    }
    Ok(())
}

fn print_shop(s: &proto::ShopInfo, json_out: bool) {
    if json_out {
        print_json(&shop_json(s));
    } else {
        println!("shop {} is {}", s.shop_id, if s.suspended { "SUSPENDED" } else { "trading" });
    }
}
