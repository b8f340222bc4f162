//! `syncpay shop …`: a shop's commands against a running server: registers,
//! charge (waits for the outcome), status, await, cancel, refund, watch,
//! receipt-keys, and `web`, the sample web shop (`syncpay::web::shop`); and
//! `verify-receipt`, which needs no server at all.
//! Readable output by default, one JSON value per result with `--json`.
//! Exit codes: see `cli/mod.rs` (charge and await exit 0 only for SETTLED;
//! verify-receipt 0 only for a receipt that verifies).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;
use syncpay::domain::{Amount, Currency, PayloadVersion, RegisterId, ScreenText, ShopId, TradeId};
use syncpay::proto::{self, register_service_client::RegisterServiceClient, state_name};
use syncpay::register::{
    is_final, receipt_from_json, receipt_to_json, verify_receipt, verify_trade_receipt, ChargeRequest, ReceiptKeySet,
    VerifiedReceipt, VirtualRegister,
};

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
    /// Save the operator's receipt-signing public keys (active and retired)
    /// for `verify-receipt`: a JSON key file, to FILE or stdout.
    ReceiptKeys {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify a settlement receipt offline, with only the receipt key file:
    /// no server is contacted. Reads the JSON that `status --json` prints
    /// (a trade: every field the receipt signs is compared with it) or its
    /// "receipt" object alone, from FILE or stdin. Exit 0 when it verifies,
    /// 1 when it does not (the reason is printed), 2 for unreadable input.
    VerifyReceipt {
        /// The trade or receipt JSON; stdin when absent or "-".
        file: Option<PathBuf>,
        /// The receipt key file (`receipt-keys --out FILE`).
        #[arg(long)]
        keys: PathBuf,
        /// This shop's id: a receipt of another shop's trade does not verify.
        #[arg(long)]
        shop: String,
        /// Also check the screen the buyer saw: the shop's display name…
        #[arg(long, requires = "register_label")]
        display_name: Option<String>,
        /// …the register's label…
        #[arg(long, requires = "display_name")]
        register_label: Option<String>,
        /// …and the description (default: the trade's, when FILE is a trade).
        #[arg(long)]
        description: Option<String>,
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
    if let ShopCommand::VerifyReceipt { file, keys, shop, display_name, register_label, description } = &args.command {
        let screen = display_name.as_deref().zip(register_label.as_deref());
        return verify_offline(file.as_deref(), keys, shop, screen, description.as_deref(), args.json);
    }
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
        ShopCommand::ReceiptKeys { out } => {
            let mut client = RegisterServiceClient::new(conn.authed()?);
            let keys = client.get_receipt_keys(proto::GetReceiptKeysRequest {}).await?.into_inner();
            let set = ReceiptKeySet::from_proto(&keys).map_err(|e| anyhow::anyhow!("the server sent bad keys: {e}"))?;
            write_key_file(&set, out.as_deref())?;
        }
        // Answered above, before connecting; it needs no server.
        ShopCommand::VerifyReceipt { file, keys, shop, display_name, register_label, description } => {
            let screen = display_name.as_deref().zip(register_label.as_deref());
            verify_offline(file.as_deref(), &keys, &shop, screen, description.as_deref(), json)?;
        }
    }
    Ok(())
}

/// Writes a receipt key file to `out` (replacing it), or prints it.
pub fn write_key_file(set: &ReceiptKeySet, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(&set.to_json())?;
    text.push('\n');
    match out {
        Some(path) => {
            std::fs::write(path, text).map_err(|e| Exit::usage(format!("writing {}: {e}", path.display())))?;
            eprintln!("{} receipt key(s) written to {}", set.keys().len(), path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// Reads a receipt key file; exit 2 when it cannot be read.
pub fn read_key_file(path: &std::path::Path) -> anyhow::Result<ReceiptKeySet> {
    let text = std::fs::read_to_string(path).map_err(|e| Exit::usage(format!("reading {}: {e}", path.display())))?;
    ReceiptKeySet::from_json(&text).map_err(|e| Exit::usage(format!("{}: {e}", path.display())))
}

/// Reads JSON from `file`, or stdin for `None` and "-"; exit 2 on failure.
pub fn read_json(file: Option<&std::path::Path>) -> anyhow::Result<serde_json::Value> {
    let text = match file.filter(|f| f.as_os_str() != "-") {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| Exit::usage(format!("reading {}: {e}", path.display())))?
        }
        None => std::io::read_to_string(std::io::stdin()).map_err(|e| Exit::usage(format!("reading stdin: {e}")))?,
    };
    serde_json::from_str(&text).map_err(|e| Exit::usage(format!("not JSON: {e}")))
}

/// `verify-receipt`: everything offline.
fn verify_offline(
    file: Option<&std::path::Path>,
    keys: &std::path::Path,
    shop: &str,
    screen: Option<(&str, &str)>,
    description: Option<&str>,
    json_out: bool,
) -> anyhow::Result<()> {
    let shop = ShopId::parse(shop).map_err(|e| Exit::usage(format!("--shop {shop:?}: {e}")))?;
    let keys = read_key_file(keys)?;
    let input = read_json(file)?;
    let verified = if input.get("receipt").is_some() {
        let trade = trade_from_json(&input).map_err(|e| Exit::usage(format!("trade JSON: {e}")))?;
        let description = description.unwrap_or(&trade.description).to_owned();
        verify_trade_receipt(&trade, &keys, &shop).and_then(|v| check_screen(v, screen, &description))
    } else {
        let receipt = receipt_from_json(&input).map_err(|e| Exit::usage(format!("receipt JSON: {e}")))?;
        verify_receipt(&receipt, &keys, &shop).and_then(|v| check_screen(v, screen, description.unwrap_or("")))
    };
    match verified {
        Ok(v) => {
            output_verified(&v, screen.is_some(), json_out);
            Ok(())
        }
        Err(e) => {
            if json_out {
                print_json(&json!({"verified": false, "error": e.to_string()}));
            }
            Err(Exit::negative(format!("receipt does not verify: {e}")))
        }
    }
}

fn check_screen(
    v: VerifiedReceipt,
    screen: Option<(&str, &str)>,
    description: &str,
) -> Result<VerifiedReceipt, syncpay::register::ReceiptError> {
    if let Some((shop_name, register_label)) = screen {
        v.check_screen(ScreenText { shop_name, register_label, description })?;
    }
    Ok(v)
}

fn output_verified(v: &VerifiedReceipt, screen_checked: bool, json_out: bool) {
    let p = &v.payload;
    let (version, binding) = match &p.version {
        PayloadVersion::V1 => (1, String::new()),
        PayloadVersion::V2 { binding_code, .. } => (2, binding_code.to_string()),
    };
    if json_out {
        print_json(&json!({
            "verified": true,
            "trade_id": p.trade_id.to_string(),
            "shop_id": p.shop_id.to_string(),
            "register_id": p.register_id.to_string(),
            "amount_minor": p.amount.minor(),
            "currency": p.currency.code(),
            "expires_at_ms": p.expires_at.0,
            "settled_at_ms": v.settled_at.0,
            "payload_version": version,
            "binding_code": binding,
            "receipt_key_id": v.key_id.to_string(),
            "handset_commitment": syncpay::hex::encode(&v.commitment),
            "screen_checked": screen_checked,
        }));
        return;
    }
    println!("receipt verifies: the operator's key {} countersigned this approval", v.key_id);
    println!("trade    {}", p.trade_id);
    println!("shop     {}", p.shop_id);
    println!("register {}", p.register_id);
    println!("amount   {}", p.currency.format(p.amount));
    println!("settled  {} ms (expiry {} ms)", v.settled_at.0, p.expires_at.0);
    if version == 2 {
        println!("payload  version 2, binding code {binding}");
    } else {
        println!("payload  version 1 (no binding code or screen text signed)");
    }
    if screen_checked {
        println!("screen   the signed screen digest matches the given name, label and description");
    }
    println!("handset  commitment {}", syncpay::hex::encode(&v.commitment));
}

/// The inverse of [`trade_json`] for the fields a receipt check compares.
fn trade_from_json(v: &serde_json::Value) -> Result<proto::Trade, String> {
    let text = |f: &str| v[f].as_str().map(str::to_owned).ok_or_else(|| format!("{f}: must be a string"));
    let number = |f: &str| v[f].as_u64().ok_or_else(|| format!("{f}: must be a non-negative integer"));
    let ms = |f: &str| number(f).and_then(|n| i64::try_from(n).map_err(|_| format!("{f}: too large")));
    let state_name = text("state")?;
    let state = proto::TradeState::from_str_name(&format!("TRADE_STATE_{state_name}"))
        .ok_or_else(|| format!("state: {state_name:?} is not a trade state"))?;
    Ok(proto::Trade {
        trade_id: text("trade_id")?,
        register_id: text("register_id")?,
        amount_minor: number("amount_minor")?,
        currency: text("currency")?,
        description: text("description")?,
        state: state as i32,
        binding_code: text("binding_code")?,
        expires_at_ms: ms("expires_at_ms")?,
        finished_at_ms: ms("finished_at_ms")?,
        receipt: match &v["receipt"] {
            serde_json::Value::Null => None,
            r => Some(receipt_from_json(r)?),
        },
        ..Default::default()
    })
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
        "receipt": t.receipt.as_ref().map(receipt_to_json),
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
        if r.countersignature.is_empty() {
            println!("receipt  handset signature only (settled before receipts were countersigned)");
        } else {
            println!(
                "receipt  countersigned by receipt key {}; check it offline with `syncpay shop verify-receipt`",
                syncpay::hex::encode(&r.receipt_key_id)
            );
        }
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
