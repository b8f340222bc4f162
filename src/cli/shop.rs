//! `syncpay shop …`: a shop's commands against a running server: registers,
//! charge (waits for the outcome), status, await, cancel, refund, watch,
//! and `web`, the sample web shop (`syncpay::web::shop`).
//! Readable output by default, one JSON value per result with `--json`.
//! Exit codes: see `cli/mod.rs` (charge and await exit 0 only for SETTLED).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;
use syncpay::domain::approval::hex;
use syncpay::domain::{Amount, Currency, RegisterId, TradeId};
use syncpay::proto::{self, register_service_client::RegisterServiceClient, state_name};
use syncpay::register::{is_final, ChargeRequest, VirtualRegister};

use super::{connection, print_json, read_token, Connect, Exit};

#[derive(Args)]
pub struct ShopArgs {
    #[command(flatten)]
    connect: Connect,
    /// File holding the shop's token (from `syncpay admin create-shop`);
    /// not used with --tls-*.
    #[arg(long, env = "SYNCPAY_SHOP_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// The token itself, read from SYNCPAY_SHOP_TOKEN (environment only, so
    /// it stays out of the process list); wins over --token-file.
    #[arg(skip = std::env::var("SYNCPAY_SHOP_TOKEN").ok())]
    token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ShopCommand,
}

#[derive(Subcommand)]
enum ShopCommand {
    /// Open a register terminal; prints its id.
    Open {
        /// Shown to buyers on their handsets.
        label: String,
    },
    /// Close a register (it must have no open trades).
    Close { register_id: String },
    /// List this shop's registers.
    Registers,
    /// Charge a buyer and wait for the outcome; prints the binding code to
    /// show on the checkout page. Exit 0 only when SETTLED.
    Charge {
        /// The register to charge on.
        #[arg(long, env = "SYNCPAY_REGISTER")]
        register: String,
        /// The payer's E.164 number, e.g. +818012345678.
        payer: String,
        /// Amount in minor units (yen, cents).
        amount_minor: u64,
        /// ISO 4217 code, e.g. JPY.
        currency: String,
        /// Shown on the handset.
        #[arg(long, default_value = "")]
        description: String,
        /// Seconds the buyer has to answer (0: the server's default).
        #[arg(long, default_value_t = 0)]
        ttl: u32,
        /// Makes a retry of the same charge return the original trade.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Print the created trade and return without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show a trade as it is now.
    Status { trade_id: String },
    /// Wait until a trade is final (exit 0 when SETTLED, 1 otherwise or when
    /// still open after the timeout).
    Await {
        trade_id: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Cancel an open trade.
    Cancel { trade_id: String },
    /// Refund part or all of a settled trade.
    Refund {
        trade_id: String,
        /// Amount in minor units.
        amount_minor: u64,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Follow the shop's trade events (durable, ordered, resumable). Ends
    /// on Ctrl-C or after --count events, printing the cursor to resume
    /// from; reconnects from the cursor if the server goes away.
    Watch {
        /// Resume after this sequence number (0: from the beginning).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Only this register's events.
        #[arg(long)]
        register: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Serve the sample web shop (a storefront and a checkout that pays by
    /// phone number or on the phone bill) over a register, until Ctrl-C.
    Web {
        /// Where the shop's pages listen.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// The shop's id at the server: a receipt's signed terms name it,
        /// and the checkout checks them against it.
        #[arg(long)]
        shop_id: String,
        /// The shop's name in the page's header.
        #[arg(long, default_value = "Acme Books")]
        name: String,
        /// Seconds a buyer has to answer (0: the server's default).
        #[arg(long, default_value_t = 0)]
        ttl: u32,
        /// Use this register instead of opening a new one ("Web checkout").
        #[arg(long)]
        register: Option<String>,
    },
}

/// Retry pacing for `watch` after the server went away.
const WATCH_BACKOFF_START: Duration = Duration::from_millis(200);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// `shop web`: the sample web shop until SIGTERM or Ctrl-C.
async fn web(
    conn: &super::Connection,
    listen: std::net::SocketAddr,
    shop_id: &str,
    name: String,
    ttl: u32,
    register: Option<String>,
) -> anyhow::Result<()> {
    use syncpay::web::shop::{self, ShopConfig};
    super::init_logging("warn");
    let mut signals = super::serve::StopSignals::install()?;
    let shop_id =
        syncpay::domain::ShopId::parse(shop_id).map_err(|e| Exit::usage(format!("--shop-id {shop_id:?}: {e}")))?;
    let register = match register {
        Some(id) => {
            let id = RegisterId::parse(&id).map_err(|e| Exit::usage(format!("--register {id:?}: {e}")))?;
            VirtualRegister::attach(conn.channel.clone(), &conn.token, id).await?
        }
        None => VirtualRegister::open(conn.channel.clone(), &conn.token, "Web checkout").await?,
    };
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| Exit::usage(format!("--listen {listen}: {e}")))?;
    let config = ShopConfig { shop_id, shop_name: name, catalog: shop::sample_catalog(), ttl_seconds: ttl };
    let server = shop::start(listener, register.clone(), config)?;
    println!("shop web: {} (register {} \"{}\"; Ctrl-C to stop)", server.url(), register.id(), register.label());
    let signal = signals.stopped().await;
    println!("{signal}: stopping");
    server.shutdown().await;
    Ok(())
}

pub async fn run(args: ShopArgs) -> anyhow::Result<()> {
    // Over mutual TLS the shop's certificate is the credential: no token.
    let conn =
        connection(&args.connect, || read_token(args.token.as_deref(), args.token_file.as_deref(), "shop")).await?;
    let json = args.json;
    match args.command {
        ShopCommand::Web { listen, shop_id, name, ttl, register } => {
            web(&conn, listen, &shop_id, name, ttl, register).await?;
        }
        ShopCommand::Open { label } => {
            let mut client = RegisterServiceClient::new(conn.authed()?);
            let r = client.open_register(proto::OpenRegisterRequest { label }).await?.into_inner();
            output_register(&r, json);
        }
        ShopCommand::Close { register_id } => {
            let mut client = RegisterServiceClient::new(conn.authed()?);
            let r = client.close_register(proto::CloseRegisterRequest { register_id }).await?.into_inner();
            output_register(&r, json);
        }
        ShopCommand::Registers => {
            let mut client = RegisterServiceClient::new(conn.authed()?);
            let list = client.list_registers(proto::ListRegistersRequest {}).await?.into_inner().registers;
            if json {
                print_json(&serde_json::Value::Array(list.iter().map(register_json).collect()));
            } else {
                println!("{:<30} {:<6} {:>6}  label", "register", "open", "trades");
                for r in &list {
                    println!("{:<30} {:<6} {:>6}  {}", r.register_id, r.open, r.open_trades, r.label);
                }
            }
        }
        ShopCommand::Charge { register, payer, amount_minor, currency, description, ttl, idempotency_key, no_wait } => {
            let register_id =
                RegisterId::parse(&register).map_err(|e| Exit::usage(format!("--register {register:?}: {e}")))?;
            let register = VirtualRegister::attach(conn.channel.clone(), &conn.token, register_id).await?;
            let request = ChargeRequest {
                ttl_seconds: ttl,
                idempotency_key,
                ..ChargeRequest::new(&payer, amount_minor, &currency, &description)
            };
            let created = register.create(request).await?;
            if no_wait || is_final(&created) {
                output_trade(&created, json);
                return Ok(());
            }
            if !json {
                let seconds = created.expires_at_ms.saturating_sub(created.created_at_ms) / 1000;
                println!("trade    {}", created.trade_id);
                println!("binding  {}   (show this code on the checkout page)", created.binding_code);
                println!("waiting for the buyer's answer (up to {seconds} s)…");
            }
            let id =
                TradeId::parse(&created.trade_id).map_err(|e| anyhow::anyhow!("server sent a bad trade id: {e}"))?;
            let ttl_ms = u64::try_from(created.expires_at_ms.saturating_sub(created.created_at_ms)).unwrap_or(0);
            // The trade's own deadline plus a margin for the expiry sweep.
            let trade = register.await_final(id, Duration::from_millis(ttl_ms) + Duration::from_secs(15)).await?;
            output_trade(&trade, json);
            settled_or_exit(&trade)?;
        }
        ShopCommand::Status { trade_id } => {
            let mut client = RegisterServiceClient::new(conn.authed()?);
            let t = client.get_trade(proto::GetTradeRequest { trade_id }).await?.into_inner();
            output_trade(&t, json);
        }
        ShopCommand::Await { trade_id, timeout } => {
            let id = TradeId::parse(&trade_id).map_err(|e| Exit::usage(format!("trade id {trade_id:?}: {e}")))?;
            let mut client = RegisterServiceClient::new(conn.authed()?);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            let trade = loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                // AwaitTrade waits at most 60 s per call; 0 would mean 30 s.
                let wait_ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX).clamp(1, 60_000);
                let t = client
                    .await_trade(proto::AwaitTradeRequest { trade_id: id.to_string(), wait_ms })
                    .await?
                    .into_inner();
                if is_final(&t) || tokio::time::Instant::now() >= deadline {
                    break t;
                }
            };
            output_trade(&trade, json);
            settled_or_exit(&trade)?;
        }
        ShopCommand::Cancel { trade_id } => {
            let mut client = RegisterServiceClient::new(conn.authed()?);
            let t = client.cancel_trade(proto::CancelTradeRequest { trade_id }).await?.into_inner();
            output_trade(&t, json);
        }
        ShopCommand::Refund { trade_id, amount_minor, idempotency_key } => {
            let mut client = RegisterServiceClient::new(conn.authed()?);
            let r = client
                .refund_trade(proto::RefundTradeRequest {
                    trade_id,
                    amount_minor,
                    idempotency_key: idempotency_key.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let trade = r.trade.unwrap_or_default();
            if json {
                print_json(&json!({
                    "refund_id": r.refund_id,
                    "amount_minor": r.amount_minor,
                    "trade": trade_json(&trade),
                }));
            } else {
                println!(
                    "refund {} of {} on {}; refunded so far {} of {}",
                    r.refund_id,
                    money(r.amount_minor, &trade.currency),
                    trade.trade_id,
                    money(trade.refunded_minor, &trade.currency),
                    money(trade.amount_minor, &trade.currency)
                );
            }
        }
        ShopCommand::Watch { after, register, count } => {
            watch(RegisterServiceClient::new(conn.authed()?), after, register.unwrap_or_default(), count, json).await?;
        }
    }
    Ok(())
}

async fn watch(
    mut client: RegisterServiceClient<syncpay::client::AuthedChannel>,
    mut cursor: u64,
    register_id: String,
    count: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let mut seen = 0u64;
    let mut backoff = WATCH_BACKOFF_START;
    let mut signals = super::serve::StopSignals::install()?;
    let signal = signals.stopped();
    tokio::pin!(signal);
    loop {
        if count.is_some_and(|c| seen >= c) {
            break;
        }
        let request = proto::WatchTradesRequest { after_sequence: cursor, register_id: register_id.clone() };
        let opened = tokio::select! {
            r = client.watch_trades(request) => r,
            _ = &mut signal => break,
        };
        let mut stream = match opened {
            Ok(s) => s.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                eprintln!("server unavailable ({}); retrying from sequence {cursor}", status.message());
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut signal => break,
                }
                backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
                continue;
            }
            Err(status) => return Err(status.into()),
        };
        loop {
            let next = tokio::select! {
                m = stream.message() => m,
                _ = &mut signal => {
                    eprintln!("stopped; resume with --after {cursor}");
                    return Ok(());
                }
            };
            match next {
                Ok(Some(event)) => {
                    backoff = WATCH_BACKOFF_START;
                    cursor = event.sequence;
                    seen += 1;
                    output_event(&event, json);
                    if count.is_some_and(|c| seen >= c) {
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    eprintln!("stream ended ({}); reconnecting from sequence {cursor}", status.message());
                    break;
                }
                Err(status) => return Err(status.into()),
            }
        }
    }
    eprintln!("resume with --after {cursor}");
    Ok(())
}

fn settled_or_exit(trade: &proto::Trade) -> anyhow::Result<()> {
    if state_name(trade.state) == "SETTLED" {
        return Ok(());
    }
    if is_final(trade) {
        let reason = failure_name(trade.failure_reason);
        let why = if reason.is_empty() { String::new() } else { format!(" ({reason})") };
        return Err(Exit::negative(format!("trade {} ended {}{why}", trade.trade_id, state_name(trade.state))));
    }
    Err(Exit::negative(format!("trade {} is still {}", trade.trade_id, state_name(trade.state))))
}

/// A failure reason by name, empty for none.
fn failure_name(reason: i32) -> &'static str {
    proto::reason_name(reason).unwrap_or("")
}

fn money(minor: u64, currency: &str) -> String {
    match Currency::parse(currency) {
        Ok(c) => c.format(Amount::new(minor)),
        Err(_) => format!("{minor} {currency}"),
    }
}

/// A trade as JSON: every field of the wire message, enums by name,
/// bytes in hex.
pub fn trade_json(t: &proto::Trade) -> serde_json::Value {
    json!({
        "trade_id": t.trade_id,
        "register_id": t.register_id,
        "state": state_name(t.state),
        "failure_reason": failure_name(t.failure_reason),
        "amount_minor": t.amount_minor,
        "currency": t.currency,
        "description": t.description,
        "binding_code": t.binding_code,
        "payer_pseudonym": t.payer_pseudonym,
        "created_at_ms": t.created_at_ms,
        "expires_at_ms": t.expires_at_ms,
        "finished_at_ms": t.finished_at_ms,
        "refunded_minor": t.refunded_minor,
        "idempotency_key": t.idempotency_key,
        "receipt": t.receipt.as_ref().map(|r| json!({
            "signed_payload": hex(&r.signed_payload),
            "signature": hex(&r.signature),
            "handset_key_fingerprint": hex(&r.handset_key_fingerprint),
        })),
    })
}

fn output_trade(t: &proto::Trade, json: bool) {
    if json {
        print_json(&trade_json(t));
        return;
    }
    let reason = failure_name(t.failure_reason);
    println!("trade    {}", t.trade_id);
    println!(
        "state    {}{}",
        state_name(t.state),
        if reason.is_empty() { String::new() } else { format!(" ({reason})") }
    );
    println!("amount   {}", money(t.amount_minor, &t.currency));
    if t.refunded_minor > 0 {
        println!("refunded {}", money(t.refunded_minor, &t.currency));
    }
    println!("binding  {}", t.binding_code);
    println!("register {}", t.register_id);
    if !t.payer_pseudonym.is_empty() {
        println!("payer    {}", t.payer_pseudonym);
    }
    if let Some(r) = &t.receipt {
        println!("receipt  handset key {} signed the approval", hex(&r.handset_key_fingerprint));
    }
}

fn register_json(r: &proto::Register) -> serde_json::Value {
    json!({
        "register_id": r.register_id,
        "label": r.label,
        "open": r.open,
        "open_trades": r.open_trades,
        "opened_at_ms": r.opened_at_ms,
        "closed_at_ms": r.closed_at_ms,
    })
}

fn output_register(r: &proto::Register, json: bool) {
    if json {
        print_json(&register_json(r));
    } else {
        println!("register {} \"{}\" {}", r.register_id, r.label, if r.open { "open" } else { "closed" });
    }
}

fn output_event(e: &proto::TradeEvent, json: bool) {
    let kind = proto::EventKind::try_from(e.kind)
        .map_or("UNKNOWN", |k| k.as_str_name().strip_prefix("EVENT_KIND_").unwrap_or("UNKNOWN"));
    if json {
        print_json(&json!({
            "sequence": e.sequence,
            "at_ms": e.at_ms,
            "kind": kind,
            "refund_minor": e.refund_minor,
            "refund_id": e.refund_id,
            "trade": e.trade.as_ref().map(trade_json),
        }));
        return;
    }
    match &e.trade {
        Some(t) if kind == "REFUNDED" => println!(
            "{:>6}  {}  REFUNDED {} (refund {})",
            e.sequence,
            t.trade_id,
            money(e.refund_minor, &t.currency),
            e.refund_id
        ),
        Some(t) => {
            let reason = failure_name(t.failure_reason);
            println!(
                "{:>6}  {}  {:<9} {} {}",
                e.sequence,
                t.trade_id,
                state_name(t.state),
                money(t.amount_minor, &t.currency),
                reason
            )
        }
        None => println!("{:>6}  (no trade)", e.sequence),
    }
}
