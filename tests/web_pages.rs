//! The web pages in a real browser: headless Chromium through WebDriver
//! (chromedriver) against a real server, the simulated carrier with its
//! handset page and the web shop, as `syncpay demo --web` starts them.
//! Buyers check out in the shop page, the handset page shows the offer
//! with the same binding code, the buyer approves or declines there (the
//! page signs with its own WebCrypto key), and the checkout and the
//! operator console show the outcome: settled, declined, cancelled from the
//! checkout, expired, failed for lack of funds, and paid on the phone bill
//! by network identity. The approval the server verified is checked to be
//! the page's: the key the carrier enrolled is the one the page exported,
//! no key for the number exists in Rust, and the receipt's signature
//! verifies with the page's key.
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install chromium
//! chromium-driver`; `.ci/run` installs them). Without them the test says
//! so and passes, unless `CI` is set: then it fails. Screenshots of each
//! page go to `SYNCPAY_SCREENSHOT_DIR` (default `target/screenshots`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::os::unix::process::CommandExt;
use syncpay::domain::approval::verify_bytes;
use syncpay::domain::receipt::handset_commitment;
use syncpay::domain::SubscriberNumber;
use syncpay::proto;
use syncpay::proto::register_service_client::RegisterServiceClient;
use syncpay::register::{verify_trade_receipt, ReceiptKeySet};
use syncpay::web::{console::MetricsSource, demo, shop};
use tokio::net::TcpListener;

/// Every wait for the page: generous, as CI has two busy cores; a wait
/// ends as soon as its condition holds.
const WAIT: Duration = Duration::from_secs(30);
/// How often a condition on the page is looked at again.
const POLL: Duration = Duration::from_millis(50);
/// The short-deadline shop for the expiry flow.
const EXPIRY_TTL_SECONDS: u32 = 5;

/// WebDriver's Enter key.
const ENTER: &str = "\u{E007}";

const AIKO: &str = "+819000000100";
const BEN: &str = "+819000000200";
const CHIE: &str = "+819000000300";

/// A program from `env` if set, else from PATH.
fn program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env).map(PathBuf::from) {
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|dir| names.iter().map(move |n| dir.join(n))).find(|p| p.is_file())
}

struct Browser {
    client: Client,
    driver: Driver,
    child: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// chromedriver on a free loopback port, one headless Chromium session
    /// with a new empty profile. `None` (with a message) when either is
    /// missing outside CI; a panic in CI.
    async fn start() -> Option<Browser> {
        let chromium = program("SYNCPAY_CHROMIUM", &["chromium", "chromium-browser", "google-chrome"]);
        let driver = program("SYNCPAY_CHROMEDRIVER", &["chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            let message = "web_pages: chromium and chromedriver are needed (Debian: apt-get install chromium \
                           chromium-driver; or set SYNCPAY_CHROMIUM and SYNCPAY_CHROMEDRIVER)";
            if std::env::var_os("CI").is_some() {
                panic!("{message}; CI is set, so a missing browser is a failure");
            }
            eprintln!("{message}: NOT RUN");
            return None;
        };
        // Its own process group, so that stopping it stops the browser it
        // started too, even when the test fails half-way.
        let mut child = Command::new(&driver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let driver = Driver(child.id());
        let stdout = child.stdout.take().expect("piped");
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            // Reads every line, so chromedriver never blocks on a full pipe.
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    let _ = port_tx.send(rest.trim_end_matches('.').trim().parse::<u16>().ok());
                }
            }
        });
        let port = port_rx.recv_timeout(WAIT).expect("chromedriver announced its port").expect("chromedriver port");

        let profile = tempfile::tempdir().expect("profile dir");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), json!({ "binary": chromium.display().to_string(), "args": args }));
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        Some(Browser { client, driver, child, _profile: profile })
    }

    async fn stop(mut self) {
        let _ = self.client.clone().close().await;
        drop(self.driver);
        let _ = self.child.wait();
    }
}

/// chromedriver's process group: killed when dropped (a failing test
/// unwinds through here), taking the browser it started with it.
struct Driver(u32);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0)]).status();
    }
}

/// The page helpers the flows use.
struct Page<'a> {
    c: &'a Client,
    shots: PathBuf,
}

impl Page<'_> {
    async fn switch(&self, window: &fantoccini::wd::WindowHandle) {
        self.c.switch_to_window(window.clone()).await.expect("switch window");
    }

    async fn click(&self, css: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(e) = self.c.find(Locator::Css(css)).await {
                if e.is_displayed().await.unwrap_or(false)
                    && e.is_enabled().await.unwrap_or(false)
                    && e.click().await.is_ok()
                {
                    return;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                self.fail(&format!("{css} never became clickable")).await;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.c.wait().at_most(WAIT).for_element(Locator::Css(css)).await.expect(css);
        e.clear().await.expect("clear");
        e.send_keys(text).await.expect("type");
    }

    /// Waits until the element's `textContent` satisfies `check`; returns it.
    async fn text_until(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last = String::new();
        loop {
            if let Ok(e) = self.c.find(Locator::Css(css)).await {
                if let Ok(Some(text)) = e.prop("textContent").await {
                    if check(&text) {
                        return text;
                    }
                    last = text;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                self.fail(&format!("{css}: waited for {what}; last text {last:?}")).await;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until an element matching `css` is displayed.
    async fn shown(&self, css: &str) -> fantoccini::elements::Element {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(e) = self.c.find(Locator::Css(css)).await {
                if e.is_displayed().await.unwrap_or(false) {
                    return e;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                self.fail(&format!("{css} never shown")).await;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Fails the test, leaving a screenshot and the page's text beside
    /// the others for whoever reads the failure.
    async fn fail(&self, why: &str) -> ! {
        if let Ok(png) = self.c.screenshot().await {
            let _ = std::fs::write(self.shots.join("FAILED.png"), png);
        }
        let text = match self.c.execute("return document.body.innerText", vec![]).await {
            Ok(v) => v.as_str().unwrap_or_default().to_owned(),
            Err(e) => format!("(no page text: {e})"),
        };
        let url = self.c.current_url().await.map(|u| u.to_string()).unwrap_or_default();
        panic!("{why}\n(page {url}; screenshot FAILED.png in {})\n--- page text ---\n{text}", self.shots.display());
    }

    async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.c.find(Locator::Css(css)).await.ok()?.attr(name).await.ok()?
    }

    async fn screenshot(&self, name: &str) {
        // Let a just-changed page finish painting (fonts, the chart).
        let _ = self
            .c
            .execute(
                "return await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(1))));",
                vec![],
            )
            .await;
        let png = self.c.screenshot().await.expect("screenshot");
        std::fs::write(self.shots.join(name), png).expect("write screenshot");
    }

    async fn checkout_state(&self, want: &str) {
        self.text_until("#checkout-state", &format!("state {want}"), |t| t == want).await;
    }

    /// In the shop: buys `item` paying `method` ("phone" with `number`, or
    /// "bill"); returns the new trade's binding code and id as the
    /// checkout shows them.
    async fn buy(&self, item: &str, method: &str, number: &str) -> (String, String) {
        self.click(&format!("li[data-item='{item}'] button.buy")).await;
        self.click(&format!("#method-{method}")).await;
        if method == "phone" {
            self.type_into("#number", number).await;
        }
        self.click("#pay").await;
        self.new_trade().await
    }

    /// The binding code and id of the trade the checkout just started (the
    /// page clears both when a checkout begins).
    async fn new_trade(&self) -> (String, String) {
        let id = self.text_until("#trade-id", "a trade id", |t| t.starts_with("trd_")).await;
        let code = self
            .text_until("#binding-code", "a binding code", |t| t.chars().filter(char::is_ascii_digit).count() == 6)
            .await;
        (code.chars().filter(char::is_ascii_digit).collect(), id)
    }

    /// On a phone: waits for the offer with `code` on screen.
    async fn offer_with_code(&self, code: &str) {
        self.shown(&format!("#offer #offer-code[data-code='{code}']")).await;
    }
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
}

fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("SYNCPAY_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("screenshots"));
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// The Prometheus recorder for this test process, with the latency
/// buckets `syncpay serve` uses (so the chart has its percentile).
fn metrics() -> MetricsSource {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(syncpay::metrics::TRADE_SETTLE_SECONDS.into()),
            &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0],
        )
        .expect("buckets")
        .install_recorder()
        .expect("the only recorder of this test process");
    Arc::new(move || {
        handle.run_upkeep();
        handle.render()
    })
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

/// The page's public key as the page shows it, after the page made and
/// enrolled its key.
async fn phone_key(page: &Page<'_>) -> Vec<u8> {
    page.shown("#key-status.ok").await;
    let hex = page.attr("#public-key", "data-public-key").await.expect("the page shows its public key");
    assert_eq!(
        page.attr("#public-key", "data-private-extractable").await.as_deref(),
        Some("false"),
        "the private key must not be extractable"
    );
    unhex(&hex)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_through_the_pages_settles_with_a_signature_made_in_the_browser() {
    let Some(browser) = Browser::start().await else { return };
    let t = TestServer::start().await;
    let listeners = demo::Listeners { shop: listener().await, phone: listener().await, console: listener().await };
    let pages =
        demo::start(&t.server.url(), t.server.engine.clone(), &t.config.admin_token, Some(metrics()), listeners)
            .await
            .expect("the demo pages start");
    // A second checkout on the same register whose buyers have seconds,
    // not minutes, to answer: the expiry flow.
    let expiry_shop = shop::start(
        listener().await,
        pages.register.clone(),
        shop::ShopConfig {
            shop_id: pages.shop_id.clone(),
            shop_name: demo::SHOP_NAME.into(),
            catalog: shop::sample_catalog(),
            ttl_seconds: EXPIRY_TTL_SECONDS,
        },
    )
    .expect("expiry shop");
    pages.sim.wait_connected(WAIT).await.expect("the carrier's relay is connected");

    let c = &browser.client;
    let page = Page { c, shots: screenshot_dir() };
    let number = |n: &str| SubscriberNumber::parse(n).expect("valid");
    let shop_window = c.window().await.expect("window");
    c.set_window_size(1100, 860).await.expect("size");
    let phone_window = c.new_window(false).await.expect("phone window").handle;
    page.switch(&phone_window).await;
    c.set_window_size(460, 900).await.expect("size");

    // --- The carrier's page lists its phones; Aiko's makes its key in
    // the page and the carrier enrolls it.
    c.goto(&pages.phone.url()).await.expect("phone list");
    for p in [AIKO, BEN, CHIE] {
        page.shown(&format!("#phones a[href='/phone/{}']", p.trim_start_matches('+'))).await;
    }
    page.click(&format!("#phones a[href='/phone/{}']", AIKO.trim_start_matches('+'))).await;
    let aiko_key = phone_key(&page).await;
    let enrolled = pages.sim.browser_phone(AIKO).and_then(|p| p.public_key).expect("enrolled");
    assert_eq!(aiko_key, enrolled.to_vec(), "the carrier enrolled the key the page exported");
    assert!(pages.sim.handset(AIKO).is_none(), "no key for this number exists in Rust");
    page.screenshot("phone-idle.png").await;

    // --- 1. Pay with my phone, approve: SETTLED.
    page.switch(&shop_window).await;
    c.goto(&pages.shop.url()).await.expect("shop page");
    page.shown("li[data-item='night-trains'] button.buy").await;
    page.screenshot("shop-store.png").await;
    page.click("li[data-item='night-trains'] button.buy").await;
    page.type_into("#number", AIKO).await;
    page.screenshot("shop-checkout.png").await;
    page.click("#pay").await;
    let (code, settled_trade) = page.new_trade().await;

    page.switch(&phone_window).await;
    page.offer_with_code(&code).await;
    let shown = page.text_until("#offer-shop", "the shop's name", |t| !t.is_empty()).await;
    assert_eq!(shown, demo::SHOP_NAME);
    page.text_until("#offer-amount", "the amount", |t| t == "2,400 JPY").await;
    page.text_until("#offer-description", "the description", |t| t == "Night Trains of Europe").await;
    page.text_until("#offer-register", "the register", |t| t.contains(demo::REGISTER_LABEL)).await;
    page.screenshot("phone-offer.png").await;

    page.switch(&shop_window).await;
    // The page acknowledged the offer when it showed it: OFFERED.
    page.checkout_state("OFFERED").await;
    page.screenshot("shop-waiting.png").await;

    page.switch(&phone_window).await;
    page.click("#approve").await;
    page.shown(&format!("#history li[data-trade='{settled_trade}'][data-state='SETTLED']")).await;
    page.text_until("#notice", "the verdict", |t| t.contains("Paid")).await;
    page.screenshot("phone-paid.png").await;

    page.switch(&shop_window).await;
    page.checkout_state("SETTLED").await;
    // The shop verified the receipt offline with the operator's published
    // receipt key.
    assert_eq!(page.attr("#receipt-verdict", "data-verdict").await.as_deref(), Some("verified"));
    page.screenshot("shop-settled.png").await;

    // The server settled on a signature made with the page's key.
    let mut as_shop = RegisterServiceClient::new(t.authed(&pages.shop_token).await);
    let trade = as_shop
        .get_trade(proto::GetTradeRequest { trade_id: settled_trade.clone() })
        .await
        .expect("get trade")
        .into_inner();
    assert_eq!(trade.state, proto::TradeState::Settled as i32);
    let receipt = trade.receipt.clone().expect("a settled trade has a receipt");
    let page_key: [u8; 32] = aiko_key.as_slice().try_into().expect("32 bytes");
    assert!(verify_bytes(&page_key, &receipt.signed_payload, &receipt.signature), "signed by the page's key");
    let trade_id = syncpay::domain::TradeId::parse(&settled_trade).expect("trade id");
    assert_eq!(receipt.handset_commitment, handset_commitment(trade_id, &page_key).to_vec());
    let keys = ReceiptKeySet::from_proto(
        &as_shop.get_receipt_keys(proto::GetReceiptKeysRequest {}).await.expect("keys").into_inner(),
    )
    .expect("keys");
    verify_trade_receipt(&trade, &keys, &pages.shop_id).expect("the receipt of a browser phone's approval verifies");
    assert!(pages.sim.handset(AIKO).is_none(), "still no Rust key for the number");

    // --- 2. Decline on the phone: DECLINED. The checkout is done from the
    // keyboard: the number field has the focus, Enter pays.
    page.click("#done").await;
    page.click("li[data-item='field-guide-to-moss'] button.buy").await;
    let focused = c.active_element().await.expect("focus");
    assert_eq!(focused.attr("id").await.expect("id").as_deref(), Some("number"), "the number field has the focus");
    focused.clear().await.expect("clear");
    focused.send_keys(&format!("{AIKO}{ENTER}")).await.expect("type and press Enter");
    let (code, declined_trade) = page.new_trade().await;
    page.switch(&phone_window).await;
    page.offer_with_code(&code).await;
    page.click("#decline").await;
    page.shown(&format!("#history li[data-trade='{declined_trade}'][data-state='DECLINED']")).await;
    page.switch(&shop_window).await;
    page.checkout_state("DECLINED").await;
    page.text_until("#outcome-message", "the decline", |t| t.contains("declined")).await;

    // --- 3. Cancel from the checkout while the phone shows it: CANCELLED,
    // and the offer leaves the phone with its reason.
    page.click("#done").await;
    let (code, cancelled_trade) = page.buy("little-book-of-knots", "phone", AIKO).await;
    page.switch(&phone_window).await;
    page.offer_with_code(&code).await;
    page.switch(&shop_window).await;
    page.checkout_state("OFFERED").await;
    page.click("#cancel").await;
    page.checkout_state("CANCELLED").await;
    page.screenshot("shop-cancelled.png").await;
    page.switch(&phone_window).await;
    page.shown(&format!("#history li[data-trade='{cancelled_trade}'][data-state='CANCELLED']")).await;
    page.text_until("#notice", "the withdrawal", |t| t.contains("The shop cancelled this payment")).await;
    assert!(!page.shown("#idle").await.text().await.unwrap_or_default().is_empty(), "the offer left the screen");
    page.screenshot("phone-withdrawn.png").await;

    // --- 4. Nobody answers before the deadline: EXPIRED on both sides.
    page.switch(&shop_window).await;
    c.goto(&expiry_shop.url()).await.expect("expiry shop");
    let (code, expired_trade) = page.buy("tea-a-short-history", "phone", AIKO).await;
    page.switch(&phone_window).await;
    page.offer_with_code(&code).await;
    page.shown(&format!("#history li[data-trade='{expired_trade}'][data-state='EXPIRED']")).await;
    page.text_until("#notice", "the expiry", |t| t.contains("deadline passed")).await;
    page.switch(&shop_window).await;
    page.checkout_state("EXPIRED").await;

    // --- 5. Chie's wallet is too short: FAILED with its reason.
    page.switch(&phone_window).await;
    c.goto(&pages.phone.phone_url(&number(CHIE))).await.expect("Chie's phone");
    phone_key(&page).await;
    page.switch(&shop_window).await;
    c.goto(&pages.shop.url()).await.expect("shop page");
    let (code, _) = page.buy("little-book-of-knots", "phone", CHIE).await;
    page.switch(&phone_window).await;
    page.offer_with_code(&code).await;
    page.click("#approve").await;
    page.switch(&shop_window).await;
    page.checkout_state("FAILED").await;
    page.text_until("#failure-reason", "the reason", |t| t.contains("INSUFFICIENT_FUNDS")).await;
    page.screenshot("shop-failed.png").await;

    // --- 6. Add it to my phone bill: the shop names the payer by this
    // browser's connection; the carrier's lease says it is Ben's phone.
    page.switch(&phone_window).await;
    c.goto(&pages.phone.phone_url(&number(BEN))).await.expect("Ben's phone");
    let ben_key = phone_key(&page).await;
    page.switch(&shop_window).await;
    page.click("#done").await;
    let (code, billed_trade) = page.buy("field-guide-to-moss", "bill", "").await;
    page.switch(&phone_window).await;
    page.offer_with_code(&code).await;
    // From the keyboard: a new offer takes the focus on Approve; Enter.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let focused = c.active_element().await.expect("focus");
        if focused.attr("id").await.expect("id").as_deref() == Some("approve") {
            focused.send_keys(ENTER).await.expect("press Enter");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "Approve never had the focus");
        tokio::time::sleep(POLL).await;
    }
    page.switch(&shop_window).await;
    page.checkout_state("SETTLED").await;
    let billed =
        as_shop.get_trade(proto::GetTradeRequest { trade_id: billed_trade.clone() }).await.expect("trade").into_inner();
    let receipt = billed.receipt.expect("receipt");
    let ben_key: [u8; 32] = ben_key.as_slice().try_into().expect("32 bytes");
    assert!(verify_bytes(&ben_key, &receipt.signed_payload, &receipt.signature), "signed by Ben's page");

    // --- The operator console: log in, see the moved balances and a clean ledger.
    let console_window = c.new_window(false).await.expect("console window").handle;
    page.switch(&console_window).await;
    c.set_window_size(1280, 1500).await.expect("size");
    c.goto(&pages.console.url()).await.expect("console");
    page.shown("#token").await;
    page.screenshot("console-login.png").await;
    // A wrong token is refused and leaves no session.
    page.type_into("#token", "not-the-token").await;
    page.click("#login").await;
    page.text_until("#login-error", "the refusal", |t| t.contains("not the operator token")).await;
    page.type_into("#token", &t.config.admin_token).await;
    page.click("#login").await;
    page.shown("#ledger-status[data-ok='true']").await;
    let fee = 1800 * u64::from(demo::FEE_BPS) / 10_000;
    let shop_balance = 2400 + 1800 - fee;
    for (name, minor) in [
        (format!("shop:{}:JPY", demo::SHOP_ID), i64::try_from(shop_balance).expect("small")),
        (format!("wallet:{}:JPY", number(AIKO).masked()), 20_000 - 2400),
        (format!("wallet:{}:JPY", number(CHIE).masked()), 500),
        (format!("bill:{}:{}:JPY", demo::CARRIER_ID, number(BEN).masked()), -1800),
        (format!("carrier:{}:fees:JPY", demo::CARRIER_ID), i64::try_from(fee).expect("small")),
    ] {
        page.shown(&format!("#accounts tr[data-account='{name}'][data-balance='{minor}']")).await;
    }
    for (trade, state) in [
        (&settled_trade, "SETTLED"),
        (&declined_trade, "DECLINED"),
        (&cancelled_trade, "CANCELLED"),
        (&expired_trade, "EXPIRED"),
        (&billed_trade, "SETTLED"),
    ] {
        page.shown(&format!("#trades tr[data-trade='{trade}'][data-state='{state}']")).await;
    }
    page.shown("#states .badge[data-state='FAILED']").await;
    page.text_until("#statements", "Ben's statement", |t| t.contains(demo::SHOP_NAME) && t.contains("1,800 JPY")).await;
    // The chart has drawn the settlements from the server's own metrics.
    page.shown("#chart svg rect.bar").await;
    page.text_until("#fig-open", "the open-trade gauge", |t| t == "0").await;
    page.screenshot("console.png").await;

    // The same check the console showed, straight from the server.
    let report = t.admin().await.verify_ledger(proto::VerifyLedgerRequest {}).await.expect("verify").into_inner();
    assert!(report.ok, "{:?}", report.violations);

    browser.stop().await;
    expiry_shop.shutdown().await;
    pages.shutdown().await;
}
