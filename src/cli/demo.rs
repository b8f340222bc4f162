//! `syncpay demo`: the whole system in one process — the server on a sled
//! store in a temporary folder, a simulated carrier with one handset per
//! buyer, and a scripted shop that runs one trade to each final state —
//! then a transcript of who saw what, the shop's event stream, the
//! balances and the ledger check. Exits non-zero if any check fails.
//!
//! `syncpay demo --web` instead starts the same server with the web pages
//! (`syncpay::web::demo`): the sample shop, the carrier's handset page and
//! the operator console, prints their addresses and runs until stopped.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use syncpay::client::{connect, with_token, AuthedChannel};
use syncpay::domain::approval::verify_bytes;
use syncpay::domain::receipt::handset_commitment;
use syncpay::domain::{Amount, Currency, Decision, ScreenText, ShopId, SubscriberNumber, TradeId, UnixMs};
use syncpay::proto::admin_service_client::AdminServiceClient;
use syncpay::proto::register_service_client::RegisterServiceClient;
use syncpay::proto::{self, state_name, FailureReason, TradeState};
use syncpay::register::{verify_trade_receipt, ChargeRequest, ReceiptKeySet, VirtualRegister};
use syncpay::sync_server::{self, ServerConfig};
use syncpay::terminal_sim::{CarrierSim, Policy, SimEvent};
use tonic::transport::Channel;

#[derive(Args)]
pub struct DemoArgs {
    /// Start the web pages (shop, handset page, operator console) and run
    /// until Ctrl-C, instead of the scripted transcript.
    #[arg(long)]
    web: bool,
    /// With --web: the shop's address (loopback only).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    shop_listen: std::net::SocketAddr,
    /// With --web: the carrier's handset page (loopback only).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    phone_listen: std::net::SocketAddr,
    /// With --web: the operator console (loopback only).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8082")]
    console_listen: std::net::SocketAddr,
}

const SHOP_ID: &str = "acme-books";
const SHOP_NAME: &str = "Acme Books";
const REGISTER_LABEL: &str = "Front desk";
const CARRIER_ID: &str = "demo-mobile";
const CARRIER_NAME: &str = "Demo Mobile";
const CURRENCY: &str = "JPY";
/// Every trade asks for the same price, so the expected balances are easy
/// to read off the script.
const PRICE: u64 = 1200;
/// What each buyer's wallet is topped up with, except the short one.
const TOP_UP: u64 = 5000;
/// Less than `PRICE`: the approval must fail for lack of funds.
const SHORT_TOP_UP: u64 = 500;
/// The ignored trade's lifetime: the server's minimum is 1 s; 2 s keeps
/// the demo quick and still leaves the handset time to show the offer.
const EXPIRING_TTL_SECONDS: u32 = 2;
/// Bound on every wait for the simulator or the event stream; everything
/// here happens in one process within milliseconds, so hitting it means
/// something is wrong, not slow.
const WAIT: Duration = Duration::from_secs(10);
/// The carrier-billed buyer of the network-identity trade.
const BILLED_NUMBER: &str = "+819000000077";
/// The carrier's address range, and the CGNAT address and port block it
/// leases to the billed buyer; the shop sees a connection from `PORT`.
const CARRIER_PREFIX: &str = "198.51.100.0/24";
const BILLED_IP: &str = "198.51.100.23";
const BILLED_PORTS: (u16, u16) = (1024, 2047);
const BILLED_PORT: u32 = 1500;
/// The carrier's fee (2.5%) and the buyer's monthly cap.
const FEE_BPS: u32 = 250;
const MONTHLY_CAP: u64 = 10_000;

/// What the shop does with a trade.
#[derive(Clone, Copy)]
enum Action {
    /// Create the trade and wait for its final state.
    Charge { ttl_seconds: u32 },
    /// Create the trade, wait until the handset shows it, then cancel.
    CancelWhenShown,
}

/// One buyer with one handset, one trade, and the outcome the script
/// expects.
struct Scenario {
    title: &'static str,
    number: &'static str,
    policy: Policy,
    top_up: u64,
    description: &'static str,
    action: Action,
    state: TradeState,
    failure: FailureReason,
}

fn scenarios() -> [Scenario; 6] {
    let charge = Action::Charge { ttl_seconds: 0 };
    [
        Scenario {
            title: "buyer approves",
            number: "+818010000001",
            policy: Policy::Approve,
            top_up: TOP_UP,
            description: "Two books",
            action: charge,
            state: TradeState::Settled,
            failure: FailureReason::Unspecified,
        },
        Scenario {
            title: "buyer declines",
            number: "+818010000002",
            policy: Policy::Decline,
            top_up: TOP_UP,
            description: "A cookbook",
            action: charge,
            state: TradeState::Declined,
            failure: FailureReason::Unspecified,
        },
        Scenario {
            title: "buyer ignores the offer",
            number: "+818010000003",
            policy: Policy::Ignore,
            top_up: TOP_UP,
            description: "A road atlas",
            action: Action::Charge { ttl_seconds: EXPIRING_TTL_SECONDS },
            state: TradeState::Expired,
            failure: FailureReason::Unspecified,
        },
        Scenario {
            title: "shop cancels while the offer is shown",
            number: "+818010000004",
            policy: Policy::Ignore,
            top_up: TOP_UP,
            description: "A poster",
            action: Action::CancelWhenShown,
            state: TradeState::Cancelled,
            failure: FailureReason::Unspecified,
        },
        Scenario {
            title: "handset signs badly",
            number: "+818010000005",
            policy: Policy::BadSignature,
            top_up: TOP_UP,
            description: "A diary",
            action: charge,
            state: TradeState::Failed,
            failure: FailureReason::BadSignature,
        },
        Scenario {
            title: "wallet too short",
            number: "+818010000006",
            policy: Policy::Approve,
            top_up: SHORT_TOP_UP,
            description: "An encyclopedia",
            action: charge,
            state: TradeState::Failed,
            failure: FailureReason::InsufficientFunds,
        },
    ]
}

/// Prints each check as it is made and remembers the ones that failed, so
/// the whole transcript prints before the command fails.
#[derive(Default)]
struct Checks {
    passed: usize,
    failed: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) -> bool {
        let what = what.into();
        if ok {
            self.passed += 1;
            println!("    ✓ {what}");
        } else {
            println!("    ✗ {what}");
            self.failed.push(what);
        }
        ok
    }

    /// `what: got` when equal, `what: got, expected want` otherwise.
    fn equal<T: PartialEq + std::fmt::Display>(&mut self, what: &str, got: T, want: T) -> bool {
        if got == want {
            self.check(true, format!("{what}: {got}"))
        } else {
            self.check(false, format!("{what}: {got}, expected {want}"))
        }
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.web {
        return run_web(&args).await;
    }
    super::init_logging("warn");
    // Dropped (and deleted) last, after the server has stopped.
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let config = ServerConfig::from_data_dir(dir.path()).context("preparing the data folder")?;
    let admin_token = config.admin_token.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding 127.0.0.1:0")?;
    let server = sync_server::start(config, listener).await.context("starting the server")?;
    println!("syncpay demo");
    println!("  server   {} (sled store in a temporary folder, fsync before every acknowledgement)", server.url());

    let outcome = script(&server.url(), &admin_token, dir.path()).await;
    let stopped = server.shutdown().await;
    let checks = outcome?;
    stopped.context("shutting the server down")?;
    println!("  server stopped cleanly");
    drop(dir);

    if checks.failed.is_empty() {
        println!("\nAll {} checks passed.", checks.passed);
        Ok(())
    } else {
        bail!(
            "{} of {} checks failed: {}",
            checks.failed.len(),
            checks.passed + checks.failed.len(),
            checks.failed.join("; ")
        )
    }
}

/// `demo --web`: the server on a temporary store, the web pages beside it,
/// until SIGTERM or Ctrl-C.
async fn run_web(args: &DemoArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use syncpay::web::{self, demo};
    super::init_logging("warn");
    let mut signals = super::serve::StopSignals::install()?;
    for (flag, addr) in [
        ("--shop-listen", args.shop_listen),
        ("--phone-listen", args.phone_listen),
        ("--console-listen", args.console_listen),
    ] {
        // The demo serves plaintext with the operator's token on a login
        // page: it stays on this computer.
        if !addr.ip().is_loopback() {
            return Err(super::Exit::usage(format!("{flag} {addr}: the demo's pages listen only on loopback")));
        }
    }
    let handle = super::metrics_http::install()?;
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let config = ServerConfig::from_data_dir(dir.path()).context("preparing the data folder")?;
    let admin_token = config.admin_token.clone();
    let token_file = dir.path().join("admin.token");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding 127.0.0.1:0")?;
    let server = sync_server::start(config, listener).await.context("starting the server")?;
    let bind = |addr: std::net::SocketAddr, flag: &'static str| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr} (choose another with {flag})"))
    };
    let listeners = demo::Listeners {
        shop: bind(args.shop_listen, "--shop-listen").await?,
        phone: bind(args.phone_listen, "--phone-listen").await?,
        console: bind(args.console_listen, "--console-listen").await?,
    };
    let metrics: web::console::MetricsSource = Arc::new(move || {
        handle.run_upkeep();
        handle.render()
    });
    let pages = demo::start(&server.url(), server.engine.clone(), &admin_token, Some(metrics), listeners)
        .await
        .context("starting the web pages")?;
    println!("syncpay demo --web: a real server on a sled store in a temporary folder (Ctrl-C to stop)");
    println!();
    println!("  shop     {}", pages.shop.url());
    println!(
        "           {} sells books; pay with your phone (type a number below) or on your phone bill",
        demo::SHOP_NAME
    );
    println!("  phones   {}", pages.phone.url());
    for p in &pages.phones {
        println!("           {}  {}  {}", pages.phone.phone_url(&p.number), p.number.as_str(), p.label);
    }
    println!("           (the carrier's lease records give this computer's connections to the phone-bill phone)");
    println!("  console  {}", pages.console.url());
    println!("           log in with the operator token in {}", token_file.display());
    println!("  server   {} (gRPC, plaintext, loopback)", server.url());
    let signal = signals.stopped().await;
    println!("{signal}: stopping");
    pages.shutdown().await;
    server.shutdown().await.context("shutting the server down")?;
    drop(dir);
    println!("stopped cleanly");
    Ok(())
}

/// Everything between starting and stopping the server. The simulator is
/// stopped here whatever happens, so the server can stop cleanly after.
async fn script(url: &str, admin_token: &str, scratch: &std::path::Path) -> anyhow::Result<Checks> {
    let channel = connect(url).await.context("connecting to the server")?;
    let mut admin = AdminServiceClient::new(with_token(channel.clone(), admin_token)?);
    let shop_token = admin
        .create_shop(proto::CreateShopRequest { shop_id: SHOP_ID.into(), display_name: SHOP_NAME.into() })
        .await
        .context("creating the shop")?
        .into_inner()
        .token;
    let carrier_token = admin
        .create_carrier(proto::CreateCarrierRequest {
            carrier_id: CARRIER_ID.into(),
            display_name: CARRIER_NAME.into(),
            ip_prefixes: vec![CARRIER_PREFIX.into()],
            fee_bps: FEE_BPS,
            // The default: the carrier keeps its lease records.
            resolve_mode: proto::ResolveMode::Ask as i32,
        })
        .await
        .context("creating the carrier")?
        .into_inner()
        .token;
    let sim = CarrierSim::start(channel.clone(), &carrier_token)?;
    let result = with_sim(&channel, &mut admin, &sim, &shop_token, &carrier_token).await;
    let stopped = sim.shutdown().await;
    let mut checks = result?;
    stopped.context("stopping the simulated carrier")?;
    backup(&mut admin, scratch, &mut checks).await?;
    Ok(checks)
}

/// The night's backup while the server still serves
/// (AdminService.BackupStore), restored into a new folder beside it
/// (`syncpay restore`), where the ledger verifies again.
async fn backup(
    admin: &mut AdminServiceClient<AuthedChannel>,
    scratch: &std::path::Path,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let dir = scratch.join("backup");
    let r = admin
        .backup_store(proto::BackupStoreRequest { dir: dir.display().to_string() })
        .await
        .context("backing the store up")?
        .into_inner();
    println!("\nOnline backup (AdminService.BackupStore, then syncpay restore)");
    println!(
        "  backup   {} records ({} trades, {} postings), writes waited {} µs",
        r.records, r.trades, r.postings, r.writer_pause_us
    );
    let restored =
        syncpay::sync_server::restore(&dir, &scratch.join("restored")).await.context("restoring the backup")?;
    checks.equal("records restored from the backup", restored.records, r.records);
    checks.check(
        restored.verify.ok() && restored.verify.trades_checked == r.trades,
        format!(
            "the restored store verifies ({} trades, {} violations)",
            restored.verify.trades_checked, restored.verify.violation_count
        ),
    );
    Ok(())
}

async fn with_sim(
    channel: &Channel,
    admin: &mut AdminServiceClient<AuthedChannel>,
    sim: &CarrierSim,
    shop_token: &str,
    carrier_token: &str,
) -> anyhow::Result<Checks> {
    let currency = Currency::parse(CURRENCY).map_err(|e| anyhow!("{CURRENCY}: {e}"))?;
    let shop_id = ShopId::parse(SHOP_ID).map_err(|e| anyhow!("shop id {SHOP_ID}: {e}"))?;
    let scenarios = scenarios();
    let mut checks = Checks::default();

    let register =
        VirtualRegister::open(channel.clone(), shop_token, REGISTER_LABEL).await.context("opening the register")?;
    println!("  shop     {SHOP_ID} \"{SHOP_NAME}\", register {} \"{}\"", register.id(), register.label());
    println!("  carrier  {CARRIER_ID} \"{CARRIER_NAME}\", simulated, with {} handsets", scenarios.len());

    println!("\nHandsets (numbers masked: only the carrier and the operator know them)");
    let mut public_keys = HashMap::new();
    for s in &scenarios {
        let info = sim
            .add_handset(s.number, s.policy)
            .await
            .with_context(|| format!("adding the handset for {}", masked(s.number)))?;
        public_keys.insert(s.number, info.public_key);
        admin
            .top_up_wallet(proto::TopUpWalletRequest {
                subscriber_number: s.number.into(),
                amount_minor: s.top_up,
                currency: CURRENCY.into(),
            })
            .await
            .with_context(|| format!("topping up {}", masked(s.number)))?;
        println!(
            "  {}  policy {:<14} wallet topped up {:>10}",
            masked(s.number),
            format!("{:?}", s.policy),
            currency.format(Amount::new(s.top_up))
        );
    }
    sim.wait_connected(WAIT).await.context("waiting for the carrier relay to connect")?;
    // All a shop needs to check receipts offline: the operator's public
    // receipt keys (`syncpay shop receipt-keys --out FILE`).
    let receipt_keys = register.receipt_keys().await.context("reading the receipt keys")?;
    println!(
        "  receipts countersigned by operator key {}",
        receipt_keys.keys().first().map_or_else(|| "(none)".to_owned(), |k| k.id.to_string())
    );

    let mut trades = Vec::with_capacity(scenarios.len());
    for (i, s) in scenarios.iter().enumerate() {
        let n = i + 1;
        println!(
            "\nTrade {n} of {}: {} — expect {}",
            scenarios.len(),
            s.title,
            outcome_name(s.state as i32, s.failure as i32)
        );
        let trade = run_trade(&register, sim, s).await?;
        let trade_id = TradeId::parse(&trade.trade_id).map_err(|e| anyhow!("trade id {:?}: {e}", trade.trade_id))?;
        // The handset's side finishes a moment after the shop's: wait for
        // the server's verdict on the answer, or for the withdrawal.
        let handset_final = handset_final_state(sim, s, trade_id).await;

        println!("  shop saw");
        println!("    trade    {}", trade.trade_id);
        println!("    amount   {}", currency.format(Amount::new(trade.amount_minor)));
        println!("    binding  {}", trade.binding_code);
        println!("    outcome  {}", outcome_name(trade.state, trade.failure_reason));
        println!("    payer    {}", trade.payer_pseudonym);
        println!("  handset {} saw", masked(s.number));
        let events: Vec<SimEvent> = sim.transcript().into_iter().filter(|e| is_about(e, trade_id)).collect();
        for e in &events {
            println!("    {}", describe(e));
        }
        println!("  checks");
        checks.equal("final state", state_name(trade.state), state_name(s.state as i32));
        checks.equal("failure reason", reason_name(trade.failure_reason), reason_name(s.failure as i32));
        let shown: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                SimEvent::OfferShown { shop_name, register_label, amount, currency, binding_code, .. } => {
                    Some((shop_name, register_label, *amount, *currency, binding_code))
                }
                _ => None,
            })
            .collect();
        match shown.as_slice() {
            [(shop_name, register_label, amount, shown_currency, binding_code)] => {
                checks.check(
                    *binding_code == &trade.binding_code,
                    format!("binding code: shop {} = handset {}", trade.binding_code, binding_code),
                );
                checks.check(
                    *shop_name == SHOP_NAME
                        && *register_label == register.label()
                        && amount.minor() == trade.amount_minor
                        && shown_currency.code() == trade.currency,
                    format!(
                        "handset showed this shop, register and amount: \"{shop_name}\" / \"{register_label}\" / {}",
                        shown_currency.format(*amount)
                    ),
                );
            }
            other => {
                checks.check(false, format!("handset showed the offer {} times, expected once", other.len()));
            }
        }
        match handset_final {
            Some(state) => {
                checks.equal("handset was told the final state", state_name(state as i32), state_name(trade.state))
            }
            None => {
                checks.check(false, format!("handset was told the final state: nothing within {}s", WAIT.as_secs()))
            }
        };
        if s.state == TradeState::Settled {
            let screen =
                ScreenText { shop_name: SHOP_NAME, register_label: register.label(), description: s.description };
            check_receipt(&mut checks, &trade, &shop_id, &receipt_keys, screen, public_keys.get(s.number));
        }
        trades.push(trade);
    }

    println!("\nWhat the shop can tell about its payers");
    let numbers: Vec<&str> = scenarios.iter().map(|s| s.number).collect();
    let pseudonyms: std::collections::BTreeSet<&str> = trades.iter().map(|t| t.payer_pseudonym.as_str()).collect();
    checks.check(
        pseudonyms.len() == trades.len() && !pseudonyms.contains(""),
        format!("{} distinct payer pseudonyms for {} different buyers", pseudonyms.len(), trades.len()),
    );

    let events = read_events(shop_token, channel, &trades, &mut checks).await?;
    let shop_saw: Vec<&proto::Trade> = trades.iter().chain(events.iter().filter_map(|e| e.trade.as_ref())).collect();
    let leaked = numbers
        .iter()
        .filter(|n| {
            let digits = n.trim_start_matches('+');
            shop_saw.iter().any(|t| format!("{t:?}").contains(digits))
        })
        .count();
    checks.check(
        leaked == 0,
        format!(
            "no phone number in any of the {} trades and events the shop received ({leaked} found)",
            shop_saw.len()
        ),
    );

    let billed = network_billing(channel, sim, shop_token, carrier_token, &register, &mut checks).await?;
    check_balances(admin, &scenarios, billed.clone(), currency, &mut checks).await?;
    payout(admin, currency, &mut checks).await?;
    carrier_statement(admin, billed.as_ref(), currency, &mut checks).await?;
    verify_ledger(admin, &mut checks).await?;
    Ok(checks)
}

/// The end of the day: the operator pays the shop's whole payable balance
/// out to its bank (AdminService.PayoutShop), and a retry with the same key
/// pays nothing more.
async fn payout(
    admin: &mut AdminServiceClient<AuthedChannel>,
    currency: Currency,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let payable = format!("shop:{SHOP_ID}:{CURRENCY}");
    let balance_of = |accounts: &[proto::Account], name: &str| {
        accounts.iter().find(|a| a.name == name).map_or(0, |a| a.balance_minor)
    };
    let before = admin
        .list_accounts(proto::ListAccountsRequest { prefix: String::new() })
        .await
        .context("listing accounts")?
        .into_inner()
        .accounts;
    let owed = balance_of(&before, &payable);
    println!("\nPayout: the shop's whole payable balance to its bank (AdminService.PayoutShop)");
    let request = proto::PayoutShopRequest {
        shop_id: SHOP_ID.into(),
        currency: CURRENCY.into(),
        amount_minor: 0,
        whole_balance: true,
        idempotency_key: "demo-payout-1".into(),
    };
    let paid = admin.payout_shop(request.clone()).await.context("paying the shop out")?.into_inner();
    let p = paid.payout.clone().unwrap_or_default();
    println!("  payout   {} of {} to {SHOP_ID}", p.payout_id, currency.format(Amount::new(p.amount_minor)));
    println!("  bank transfer reference {}", p.reference);
    let again = admin.payout_shop(request).await.context("retrying the payout")?.into_inner();
    let after = admin
        .list_accounts(proto::ListAccountsRequest { prefix: String::new() })
        .await
        .context("listing accounts")?
        .into_inner()
        .accounts;
    println!("  checks");
    checks.equal("paid out, the shop's whole balance", i64::try_from(p.amount_minor)?, owed);
    checks.equal("the shop's payable balance after it", balance_of(&after, &payable), 0);
    checks.equal("the system payout account holds it", balance_of(&after, &format!("system:payout:{CURRENCY}")), owed);
    checks.check(
        again.replayed && again.payout == paid.payout,
        "a retry with the same key returns the same payout and pays nothing more",
    );
    Ok(())
}

/// What the carrier owes the shop for the billed sale, on its statement of
/// the running month (AdminService.GetCarrierStatement). The carrier pays
/// once the month is over, so recording a remittance now is refused.
async fn carrier_statement(
    admin: &mut AdminServiceClient<AuthedChannel>,
    billed: Option<&proto::Trade>,
    currency: Currency,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let Some(trade) = billed else {
        return Ok(());
    };
    let month = syncpay::domain::Month::of(UnixMs(u64::try_from(trade.finished_at_ms)?)).to_string();
    println!("\nCarrier statement: what {CARRIER_ID} owes {SHOP_ID} for {month} (AdminService.GetCarrierStatement)");
    let request = proto::GetCarrierStatementRequest {
        carrier_id: CARRIER_ID.into(),
        month: month.clone(),
        after_shop_id: String::new(),
        limit: 0,
    };
    let statement = admin.get_carrier_statement(request).await.context("reading the carrier statement")?.into_inner();
    let line = statement.lines.iter().find(|l| l.shop_id == SHOP_ID).cloned().unwrap_or_default();
    let show = |minor: i64| signed(currency, minor);
    println!(
        "  owed {}  remitted {}  outstanding {}",
        show(line.owed_minor),
        currency.format(Amount::new(line.remitted_minor)),
        show(line.outstanding_minor)
    );
    let fee = syncpay::domain::carrier_fee(Amount::new(trade.amount_minor), FEE_BPS);
    let owed = i64::try_from(trade.amount_minor.saturating_sub(fee.minor()))?;
    let remit = proto::RecordRemittanceRequest {
        carrier_id: CARRIER_ID.into(),
        shop_id: SHOP_ID.into(),
        month,
        currency: CURRENCY.into(),
        amount_minor: 1,
        idempotency_key: "demo-remittance-1".into(),
    };
    let refused = admin.record_remittance(remit).await;
    println!("  checks");
    checks.equal("owed: the billed sale less the carrier's fee", line.owed_minor, owed);
    checks.equal("outstanding before any remittance", line.outstanding_minor, owed);
    checks.check(
        matches!(&refused, Err(s) if s.code() == tonic::Code::FailedPrecondition),
        "a remittance for the running month is refused: the carrier pays once it has ended",
    );
    Ok(())
}

/// The network-identity flow: the carrier leases a CGNAT port block to a
/// carrier-billed buyer and accepts the shop; the shop names the payer only
/// by the address and port it saw; the charge lands on the buyer's phone
/// bill less nothing, the shop gets the price less the carrier's fee.
/// Returns the settled trade, if it settled.
async fn network_billing(
    channel: &Channel,
    sim: &CarrierSim,
    shop_token: &str,
    carrier_token: &str,
    register: &VirtualRegister,
    checks: &mut Checks,
) -> anyhow::Result<Option<proto::Trade>> {
    use syncpay::proto::carrier_service_client::CarrierServiceClient;
    println!("\nTrade 7: carrier billing, the payer named by network identity — expect SETTLED on the phone bill");
    let mut carrier = CarrierServiceClient::new(with_token(channel.clone(), carrier_token)?);
    sim.add_handset(BILLED_NUMBER, Policy::Approve).await.context("adding the billed handset")?;
    carrier
        .enroll_subscriber(proto::EnrollSubscriberRequest {
            subscriber_number: BILLED_NUMBER.into(),
            funding: proto::Funding::CarrierBill as i32,
            bill_currency: CURRENCY.into(),
            monthly_cap_minor: MONTHLY_CAP,
        })
        .await
        .context("enrolling the carrier-billed buyer")?;
    carrier.accept_shop(proto::AcceptShopRequest { shop_id: SHOP_ID.into() }).await.context("accepting the shop")?;
    let now = i64::try_from(sync_server::engine::now().0)?;
    // Ask mode: the lease stays in the carrier's own table; the server
    // asks the carrier over its relay stream when the shop names the
    // address, and stores no lease.
    sim.lease(BILLED_IP, BILLED_PORTS, BILLED_NUMBER, u64::try_from(now - 60_000)?)
        .context("recording the lease at the carrier")?;
    let asked_before = sim.counters().resolves_answered;
    println!(
        "  carrier  {CARRIER_ID}: prefix {CARRIER_PREFIX}, fee {FEE_BPS} bps, resolve mode ASK; its own lease table \
         says {BILLED_IP} ports {}-{} is {} (cap {})",
        BILLED_PORTS.0,
        BILLED_PORTS.1,
        masked(BILLED_NUMBER),
        MONTHLY_CAP
    );
    let mut shop = RegisterServiceClient::new(with_token(channel.clone(), shop_token)?);
    let created = shop
        .create_trade(proto::CreateTradeRequest {
            register_id: register.id().to_string(),
            amount_minor: PRICE,
            currency: CURRENCY.into(),
            description: "An e-book, paid on the phone bill".into(),
            payer: Some(proto::create_trade_request::Payer::NetworkIdentity(proto::NetworkIdentity {
                ip: BILLED_IP.into(),
                port: BILLED_PORT,
                observed_at_ms: now,
            })),
            ..Default::default()
        })
        .await
        .context("creating the network-identity trade")?
        .into_inner();
    let trade_id = TradeId::parse(&created.trade_id).map_err(|e| anyhow!("trade id: {e}"))?;
    let trade = register.await_final(trade_id, WAIT).await.context("waiting for the trade")?;
    let asked = sim.counters().resolves_answered.saturating_sub(asked_before);
    println!("  server asked the carrier who held {BILLED_IP} port {BILLED_PORT} (ask mode); the carrier answered {asked} resolve request(s)");
    println!("  shop named the payer as {BILLED_IP} port {BILLED_PORT} and saw");
    println!("    trade    {}", trade.trade_id);
    println!("    outcome  {}", outcome_name(trade.state, trade.failure_reason));
    println!("    payer    {}", trade.payer_pseudonym);
    let statement = carrier
        .get_statement(proto::GetStatementRequest {
            subscriber_number: BILLED_NUMBER.into(),
            month: syncpay::domain::Month::of(UnixMs(u64::try_from(now)?)).to_string(),
            ..Default::default()
        })
        .await
        .context("reading the statement")?
        .into_inner();
    println!("  carrier's statement for {} ({})", masked(BILLED_NUMBER), statement.month);
    for l in &statement.lines {
        println!("    {}  {:<12} {:>8}  fee {:>4}", l.trade_id, l.shop_name, l.amount_minor, l.fee_minor);
    }
    println!("    total {} of cap {}", statement.total_minor, statement.monthly_cap_minor);
    println!("  checks");
    checks.equal("final state", state_name(trade.state), state_name(TradeState::Settled as i32));
    let text = format!("{trade:?}");
    checks.check(
        !text.contains(BILLED_NUMBER.trim_start_matches('+')) && !text.contains(BILLED_IP),
        "the shop's trade names neither the number nor the address",
    );
    checks.equal("resolve requests the carrier answered (ask mode)", asked, 1);
    checks.equal("statement total", statement.total_minor, PRICE);
    checks.check(
        statement.lines.len() == 1 && statement.lines[0].trade_id == trade.trade_id,
        "the statement lists this trade",
    );
    Ok((trade.state == TradeState::Settled as i32).then_some(trade))
}

/// Runs one scenario's trade and returns it as the shop last saw it.
async fn run_trade(register: &VirtualRegister, sim: &CarrierSim, s: &Scenario) -> anyhow::Result<proto::Trade> {
    let mut charge = ChargeRequest::new(s.number, PRICE, CURRENCY, s.description);
    match s.action {
        Action::Charge { ttl_seconds } => {
            charge.ttl_seconds = ttl_seconds;
            register.charge(charge).await.context("charging")
        }
        Action::CancelWhenShown => {
            let created = register.create(charge).await.context("creating")?;
            let id = TradeId::parse(&created.trade_id).map_err(|e| anyhow!("trade id {:?}: {e}", created.trade_id))?;
            sim.wait_for_offer(id, WAIT).await.context("waiting for the handset to show the offer")?;
            register.cancel(id).await.context("cancelling")
        }
    }
}

/// The final state the handset learned: the server's verdict on its answer,
/// or the withdrawal of the offer when it did not answer.
async fn handset_final_state(sim: &CarrierSim, s: &Scenario, trade_id: TradeId) -> Option<TradeState> {
    let answers = match s.policy {
        Policy::Ignore => false,
        Policy::Approve | Policy::Decline | Policy::ApproveAfter(_) | Policy::BadSignature | Policy::AnswerTwice => {
            true
        }
    };
    if answers {
        sim.wait_for_answer_result(trade_id, WAIT).await.ok().map(|o| o.state)
    } else {
        sim.wait_for_withdraw(trade_id, WAIT).await.ok()
    }
}

/// A settled trade's receipt, checked as the shop checks it: offline, with
/// nothing but the operator's published receipt keys (the operator's
/// countersignature, this shop, the trade's terms, the screen the buyer
/// saw). Then as an arbiter in a dispute: the handset key, which the shop
/// never learns (here the simulated carrier reveals it, as the operator
/// would), must match the per-trade commitment and have signed the payload.
fn check_receipt(
    checks: &mut Checks,
    trade: &proto::Trade,
    shop: &ShopId,
    keys: &ReceiptKeySet,
    screen: ScreenText<'_>,
    public_key: Option<&[u8; 32]>,
) {
    let verified = match verify_trade_receipt(trade, keys, shop) {
        Ok(v) => v,
        Err(e) => {
            checks.check(false, format!("receipt verified offline: {e}"));
            return;
        }
    };
    checks.check(
        true,
        format!(
            "receipt verified offline: countersigned by receipt key {}, for this shop, trade, register, amount, expiry and binding code",
            verified.key_id
        ),
    );
    checks.check(
        verified.check_screen(screen).is_ok(),
        "receipt binds the screen the buyer saw: shop name, register label, description",
    );
    let Some(public_key) = public_key else {
        checks.check(false, "handset key known for the dispute check");
        return;
    };
    let Ok(trade_id) = TradeId::parse(&trade.trade_id) else {
        checks.check(false, "trade id readable for the dispute check");
        return;
    };
    let signed = trade.receipt.as_ref().is_some_and(|r| verify_bytes(public_key, &r.signed_payload, &r.signature));
    checks.check(
        verified.commitment == handset_commitment(trade_id, public_key) && signed,
        format!(
            "dispute: the revealed handset key matches the commitment {}… and signed the payload",
            syncpay::hex::encode(&verified.commitment[..6])
        ),
    );
}

/// Reads the shop's `WatchTrades` stream from the start until every trade
/// has shown its final state, prints it, and checks it.
async fn read_events(
    shop_token: &str,
    channel: &Channel,
    trades: &[proto::Trade],
    checks: &mut Checks,
) -> anyhow::Result<Vec<proto::TradeEvent>> {
    println!("\nShop event stream (WatchTrades after sequence 0)");
    let index: HashMap<&str, usize> = trades.iter().enumerate().map(|(i, t)| (t.trade_id.as_str(), i)).collect();
    let mut client = RegisterServiceClient::new(with_token(channel.clone(), shop_token)?);
    let mut stream = client
        .watch_trades(proto::WatchTradesRequest { after_sequence: 0, register_id: String::new() })
        .await
        .context("opening WatchTrades")?
        .into_inner();
    let mut events = Vec::new();
    let mut first_state: Vec<Option<i32>> = vec![None; trades.len()];
    let mut last_state: Vec<Option<i32>> = vec![None; trades.len()];
    let mut after_final = 0usize;
    let mut strangers = 0usize;
    while last_state.iter().zip(trades).any(|(seen, t)| *seen != Some(t.state)) {
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .map_err(|_| {
                anyhow!(
                    "event stream: no event within {}s after {} events; not every final state arrived",
                    WAIT.as_secs(),
                    events.len()
                )
            })?
            .context("event stream")?
            .ok_or_else(|| anyhow!("event stream ended after {} events", events.len()))?;
        let trade = event.trade.as_ref();
        let n = trade.and_then(|t| index.get(t.trade_id.as_str()).copied());
        match (trade, n) {
            (Some(t), Some(n)) => {
                if last_state[n].is_some_and(is_final_state) {
                    after_final += 1;
                }
                first_state[n].get_or_insert(t.state);
                last_state[n] = Some(t.state);
                println!(
                    "  {:>4}  #{}  {}  {}",
                    event.sequence,
                    n + 1,
                    t.trade_id,
                    outcome_name(t.state, t.failure_reason)
                );
            }
            (t, _) => {
                strangers += 1;
                println!("  {:>4}  ??  {}", event.sequence, t.map_or("(no trade)", |t| t.trade_id.as_str()));
            }
        }
        events.push(event);
    }
    drop(stream);
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    let gap_free = sequences.iter().zip(1u64..).all(|(got, want)| *got == want);
    checks.check(
        gap_free,
        format!(
            "{} events numbered 1..={} without gaps or repeats{}",
            events.len(),
            events.len(),
            if gap_free { String::new() } else { format!(" (got {sequences:?})") }
        ),
    );
    let pending = TradeState::Pending as i32;
    let not_created = first_state.iter().filter(|s| **s != Some(pending)).count();
    checks.check(not_created == 0, format!("each trade's first event is PENDING ({not_created} not)"));
    checks.check(
        strangers == 0 && after_final == 0,
        format!(
            "every event is one of the six trades and none follows a final state ({strangers} unknown, {after_final} after final)"
        ),
    );
    Ok(events)
}

async fn check_balances(
    admin: &mut AdminServiceClient<AuthedChannel>,
    scenarios: &[Scenario],
    billed: Option<proto::Trade>,
    currency: Currency,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    // What the script implies: every top-up comes out of system funding,
    // each settled trade moves its price from the wallet to the shop.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut funding: i64 = 0;
    let mut shop: i64 = 0;
    for s in scenarios {
        let top_up = i64::try_from(s.top_up)?;
        let paid = if s.state == TradeState::Settled { i64::try_from(PRICE)? } else { 0 };
        let wallet = top_up.checked_sub(paid).ok_or_else(|| anyhow!("wallet arithmetic overflowed"))?;
        expected.insert(format!("wallet:{}:{CURRENCY}", s.number), wallet);
        funding = funding.checked_sub(top_up).ok_or_else(|| anyhow!("funding arithmetic overflowed"))?;
        shop = shop.checked_add(paid).ok_or_else(|| anyhow!("shop arithmetic overflowed"))?;
    }
    if billed.is_some() {
        // The phone bill owes the price; the carrier keeps its fee.
        let fee = i64::try_from(syncpay::domain::carrier_fee(Amount::new(PRICE), FEE_BPS).minor())?;
        let price = i64::try_from(PRICE)?;
        expected.insert(format!("bill:{CARRIER_ID}:{BILLED_NUMBER}:{CURRENCY}"), -price);
        expected.insert(format!("carrier:{CARRIER_ID}:fees:{CURRENCY}"), fee);
        shop = shop.checked_add(price - fee).ok_or_else(|| anyhow!("shop arithmetic overflowed"))?;
    }
    expected.insert(format!("system:funding:{CURRENCY}"), funding);
    expected.insert(format!("shop:{SHOP_ID}:{CURRENCY}"), shop);

    let accounts = admin
        .list_accounts(proto::ListAccountsRequest { prefix: String::new() })
        .await
        .context("listing accounts")?
        .into_inner()
        .accounts;
    println!("\nAccount balances (AdminService.ListAccounts; credits − debits)");
    println!("  {:<28} {:>12} {:>12} {:>12} {:>12}", "account", "debits", "credits", "balance", "expected");
    let fmt = |minor: u64| currency.format(Amount::new(minor));
    let mut wrong = Vec::new();
    for a in &accounts {
        let want = expected.get(&a.name).copied();
        let ok = want == Some(a.balance_minor) && a.currency == CURRENCY;
        if !ok {
            wrong.push(masked_account(&a.name));
        }
        println!(
            "  {:<28} {:>12} {:>12} {:>12} {:>12} {}",
            masked_account(&a.name),
            fmt(a.debits_minor),
            fmt(a.credits_minor),
            signed(currency, a.balance_minor),
            want.map_or("(none)".to_owned(), |w| signed(currency, w)),
            if ok { "✓" } else { "✗" }
        );
    }
    let missing: Vec<String> = expected
        .keys()
        .filter(|name| !accounts.iter().any(|a| &a.name == *name))
        .map(|name| masked_account(name))
        .collect();
    checks.check(
        wrong.is_empty() && missing.is_empty(),
        format!(
            "{} accounts, each balance exactly as the script implies{}{}",
            accounts.len(),
            if wrong.is_empty() { String::new() } else { format!("; wrong or unexpected: {}", wrong.join(", ")) },
            if missing.is_empty() { String::new() } else { format!("; missing: {}", missing.join(", ")) }
        ),
    );
    Ok(())
}

async fn verify_ledger(admin: &mut AdminServiceClient<AuthedChannel>, checks: &mut Checks) -> anyhow::Result<()> {
    let report = admin.verify_ledger(proto::VerifyLedgerRequest {}).await.context("verifying the ledger")?.into_inner();
    println!("\nLedger verification (AdminService.VerifyLedger)");
    println!(
        "  {} accounts, {} postings, {} trades checked",
        report.accounts_checked, report.postings_checked, report.trades_checked
    );
    for v in &report.violations {
        println!("  violation: {v}");
    }
    checks.check(
        report.ok && report.violations.is_empty(),
        format!("ledger verifies ({} violations)", report.violations.len()),
    );
    Ok(())
}

/// True when a transcript event is about the trade.
fn is_about(e: &SimEvent, trade: TradeId) -> bool {
    match e {
        SimEvent::OfferShown { trade_id, .. }
        | SimEvent::Answered { trade_id, .. }
        | SimEvent::Withdrawn { trade_id, .. } => *trade_id == trade,
        SimEvent::AnswerResult(o) => o.trade_id == trade,
        SimEvent::OfferIgnored { trade_id, .. } => *trade_id == trade.to_string(),
        SimEvent::RelayConnected { .. } | SimEvent::RelayLost { .. } => false,
    }
}

/// One transcript event as a line of the handset's story.
fn describe(e: &SimEvent) -> String {
    match e {
        SimEvent::OfferShown { shop_name, register_label, amount, currency, description, binding_code, .. } => format!(
            "offer on screen: \"{shop_name}\" / \"{register_label}\"  {}  \"{description}\"  binding {binding_code}",
            currency.format(*amount)
        ),
        SimEvent::OfferIgnored { reason, .. } => format!("offer not shown: {reason}"),
        SimEvent::Answered { decision, signature_valid, .. } => format!(
            "buyer pressed {}, signature {}",
            match decision {
                Decision::Approve => "APPROVE",
                Decision::Decline => "DECLINE",
            },
            if *signature_valid { "valid" } else { "corrupted (on purpose)" }
        ),
        SimEvent::Withdrawn { state, .. } => {
            format!("offer withdrawn by the server: {}", state_name(*state as i32))
        }
        SimEvent::AnswerResult(o) => format!(
            "server's verdict: {}, {}{}",
            if o.accepted { "accepted" } else { "not accepted" },
            outcome_name(o.state as i32, o.failure_reason as i32),
            if o.message.is_empty() { String::new() } else { format!(" ({})", o.message) }
        ),
        SimEvent::RelayConnected { connection } => format!("relay connected (#{connection})"),
        SimEvent::RelayLost { connection, reason } => {
            format!("relay lost (#{connection}): {reason}")
        }
    }
}

fn is_final_state(state: i32) -> bool {
    TradeState::try_from(state).is_ok_and(TradeState::is_final)
}

/// A failure reason by name, `none` for none.
fn reason_name(reason: i32) -> &'static str {
    proto::reason_name(reason).unwrap_or("none")
}

/// `FAILED (BAD_SIGNATURE)`, or just the state when there is no reason.
fn outcome_name(state: i32, reason: i32) -> String {
    match FailureReason::try_from(reason) {
        Ok(FailureReason::Unspecified) => state_name(state).to_owned(),
        Ok(_) | Err(_) => format!("{} ({})", state_name(state), reason_name(reason)),
    }
}

/// A number as the demo prints it; the scenarios only hold valid numbers.
fn masked(number: &str) -> String {
    SubscriberNumber::parse(number).map_or_else(|_| "(invalid number)".to_owned(), |n| n.masked())
}

/// Account names embed the subscriber's number (`wallet:+81…:JPY`); print
/// them masked.
fn masked_account(name: &str) -> String {
    if let Some((carrier, rest)) = name.strip_prefix("bill:").and_then(|r| r.split_once(':')) {
        if let Some((number, currency)) = rest.rsplit_once(':') {
            return format!("bill:{carrier}:{}:{currency}", masked(number));
        }
    }
    match name.strip_prefix("wallet:").and_then(|r| r.rsplit_once(':')) {
        Some((number, currency)) => format!("wallet:{}:{currency}", masked(number)),
        None => name.to_owned(),
    }
}

/// A signed balance in the currency's units.
fn signed(currency: Currency, minor: i64) -> String {
    let text = currency.format(Amount::new(minor.unsigned_abs()));
    if minor < 0 {
        format!("-{text}")
    } else {
        text
    }
}
