//! What `syncpay demo --web` starts beside a running server, and what the
//! browser test starts too: the shop `acme-books` with a register and the
//! web shop over it; the carrier `demo-mobile` (leasing the loopback
//! addresses, so "Add it to my phone bill" names a subscriber) as a
//! simulated relay hosting three browser phones and their handset page;
//! and the operator console. Everything goes through the real gRPC API.

use std::sync::Arc;

use tokio::net::TcpListener;

use super::console::{self, ConsoleConfig, ConsoleWeb, MetricsSource};
use super::phone::{self, PhoneEntry, PhoneWeb};
use super::shop::{self, ShopConfig, ShopWeb};
use super::WebError;
use crate::client::{connect, with_token};
use crate::domain::{Amount, Currency, ShopId, SubscriberNumber};
use crate::proto;
use crate::proto::admin_service_client::AdminServiceClient;
use crate::proto::carrier_service_client::CarrierServiceClient;
use crate::register::{RegisterError, VirtualRegister};
use crate::sync_server::engine::{now, Engine};
use crate::terminal_sim::{CarrierSim, PhoneFunding, SimError};

pub const SHOP_ID: &str = "acme-books";
pub const SHOP_NAME: &str = "Acme Books";
pub const REGISTER_LABEL: &str = "Web checkout";
pub const CARRIER_ID: &str = "demo-mobile";
pub const CARRIER_NAME: &str = "Demo Mobile";
pub const CURRENCY: &str = "JPY";
/// The carrier's address ranges: loopback, where the demo's browser is.
pub const CARRIER_PREFIXES: [&str; 2] = ["127.0.0.0/8", "::1/128"];
/// The carrier's fee on phone-bill charges (2.5%).
pub const FEE_BPS: u32 = 250;

/// How a demo phone's owner pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoFunding {
    /// A wallet topped up with this many yen.
    Wallet(u64),
    /// The phone bill, with this monthly cap in yen; the carrier leases it
    /// the loopback addresses, so network-identity checkouts land here.
    Bill(u64),
}

/// One browser phone of the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoPhone {
    pub number: &'static str,
    pub owner: &'static str,
    pub funding: DemoFunding,
}

/// Aiko pays from her wallet, Ben on his phone bill (and is who the
/// carrier's lease records name for this computer's connections), Chie's
/// wallet is too short for any book.
pub const PHONES: [DemoPhone; 3] = [
    DemoPhone { number: "+819000000100", owner: "Aiko", funding: DemoFunding::Wallet(20_000) },
    DemoPhone { number: "+819000000200", owner: "Ben", funding: DemoFunding::Bill(30_000) },
    DemoPhone { number: "+819000000300", owner: "Chie", funding: DemoFunding::Wallet(500) },
];

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Rpc(#[from] tonic::Status),
    #[error("connecting to the server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("carrier: {0}")]
    Sim(#[from] SimError),
    #[error("shop: {0}")]
    Register(#[from] RegisterError),
    #[error("web: {0}")]
    Web(#[from] WebError),
    #[error("{0}")]
    Invalid(String),
}

/// The three listeners, bound by the caller (port 0 works).
pub struct Listeners {
    pub shop: TcpListener,
    pub phone: TcpListener,
    pub console: TcpListener,
}

/// The running demo pages.
pub struct WebDemo {
    pub shop: ShopWeb,
    pub phone: PhoneWeb,
    pub console: ConsoleWeb,
    pub sim: Arc<CarrierSim>,
    pub register: VirtualRegister,
    pub shop_id: ShopId,
    /// The shop's bearer token (for tests that read trades as the shop).
    pub shop_token: String,
    pub phones: Vec<PhoneEntry>,
}

fn phone_label(p: &DemoPhone, jpy: Currency) -> String {
    match p.funding {
        DemoFunding::Wallet(yen) => {
            format!("{} · wallet, {}", p.owner, super::format_amount(jpy, Amount::new(yen)))
        }
        DemoFunding::Bill(cap) => {
            format!("{} · phone bill, cap {}", p.owner, super::format_amount(jpy, Amount::new(cap)))
        }
    }
}

/// Sets up the shop, the carrier and its phones on the server at
/// `server_url` (plaintext, with the operator's token) and starts the
/// pages. `engine` is the same server's, for the console.
pub async fn start(
    server_url: &str,
    engine: Arc<Engine>,
    admin_token: &str,
    metrics: Option<MetricsSource>,
    listeners: Listeners,
) -> Result<WebDemo, DemoError> {
    let jpy = Currency::parse(CURRENCY).map_err(|e| DemoError::Invalid(format!("{CURRENCY}: {e}")))?;
    let shop_id = ShopId::parse(SHOP_ID).map_err(|e| DemoError::Invalid(format!("{SHOP_ID}: {e}")))?;
    let channel = connect(server_url).await?;
    let mut admin = AdminServiceClient::new(with_token(channel.clone(), admin_token)?);
    let shop_token = admin
        .create_shop(proto::CreateShopRequest { shop_id: SHOP_ID.into(), display_name: SHOP_NAME.into() })
        .await?
        .into_inner()
        .token;
    let carrier_token = admin
        .create_carrier(proto::CreateCarrierRequest {
            carrier_id: CARRIER_ID.into(),
            display_name: CARRIER_NAME.into(),
            ip_prefixes: CARRIER_PREFIXES.iter().map(|p| (*p).to_owned()).collect(),
            fee_bps: FEE_BPS,
            // The carrier keeps its lease records; the server asks it.
            resolve_mode: proto::ResolveMode::Ask as i32,
        })
        .await?
        .into_inner()
        .token;

    let sim = Arc::new(CarrierSim::start(channel.clone(), &carrier_token)?);
    let mut entries = Vec::new();
    let mut carrier = CarrierServiceClient::new(with_token(channel.clone(), &carrier_token)?);
    let started = now().0.saturating_sub(60_000);
    for p in PHONES {
        let funding = match p.funding {
            DemoFunding::Wallet(_) => PhoneFunding::Wallet,
            DemoFunding::Bill(cap) => PhoneFunding::Bill { currency: jpy, monthly_cap: Amount::new(cap) },
        };
        sim.add_browser_phone(p.number, funding).await?;
        match p.funding {
            DemoFunding::Wallet(yen) => {
                admin
                    .top_up_wallet(proto::TopUpWalletRequest {
                        subscriber_number: p.number.into(),
                        amount_minor: yen,
                        currency: CURRENCY.into(),
                    })
                    .await?;
            }
            DemoFunding::Bill(_) => {
                // Every connection from this computer is this phone's, as
                // far as the carrier's own lease records go (ask mode: they
                // stay at the carrier, which the server asks).
                for ip in ["127.0.0.1", "::1"] {
                    sim.lease(ip, (0, 0), p.number, started)?;
                }
            }
        }
        let number = SubscriberNumber::parse(p.number).map_err(|e| DemoError::Invalid(format!("{}: {e}", p.number)))?;
        entries.push(PhoneEntry { number, label: phone_label(&p, jpy) });
    }
    carrier.accept_shop(proto::AcceptShopRequest { shop_id: SHOP_ID.into() }).await?;

    let register = VirtualRegister::open(channel.clone(), &shop_token, REGISTER_LABEL).await?;
    let shop = shop::start(
        listeners.shop,
        register.clone(),
        ShopConfig {
            shop_id: shop_id.clone(),
            shop_name: SHOP_NAME.into(),
            catalog: shop::sample_catalog(),
            ttl_seconds: 0,
        },
    )?;
    let phone = phone::start(listeners.phone, sim.clone(), CARRIER_NAME, entries.clone())?;
    let console = console::start(
        listeners.console,
        engine,
        ConsoleConfig { admin_token: admin_token.to_owned(), metrics, tls: None },
    )?;
    Ok(WebDemo { shop, phone, console, sim, register, shop_id, shop_token, phones: entries })
}

impl WebDemo {
    /// Stops the pages, then the carrier. The register stays (a store in a
    /// temporary folder goes with it).
    pub async fn shutdown(self) {
        self.shop.shutdown().await;
        self.phone.shutdown().await;
        self.console.shutdown().await;
        match Arc::try_unwrap(self.sim) {
            Ok(sim) => {
                let _ = sim.shutdown().await;
            }
            // Still shared (a test kept a handle): dropping it stops it too.
            Err(shared) => drop(shared),
        }
    }
}
