//! A simulated carrier relay hosting simulated handsets, for tests, the
//! demo and the benchmark. It enrolls handsets over gRPC, keeps the
//! carrier's relay stream open, shows each offer once on the addressed
//! handset, answers according to the handset's [`Policy`], and keeps a
//! bounded transcript of who saw and did what. Between it and the server
//! sits an optional fault layer ([`SimConfig`], [`Faults`]) that drops,
//! duplicates, delays and reorders messages and cuts the stream, from a
//! seed so a failing run can be replayed.
//!
//! For a carrier in ask mode it keeps its own lease table
//! ([`CarrierSim::lease`]) and answers the server's resolve requests from
//! it, as its [`ResolvePolicy`] says (or with a fault: slow, silent, a
//! wrong subscriber, a broken stream).
//!
//! Besides simulated handsets (a key made here, answers by [`Policy`]) it
//! hosts *browser phones* ([`CarrierSim::add_browser_phone`]): the key is
//! made in a web page, which enrolls its public key through the carrier,
//! shows the offers, and signs the bytes the carrier hands it. No private
//! key for such a number exists in this process.
//!
//! ```no_run
//! # async fn demo(channel: tonic::transport::Channel) -> Result<(), syncpay::terminal_sim::SimError> {
//! use std::time::Duration;
//! use syncpay::terminal_sim::{CarrierSim, Policy};
//! let sim = CarrierSim::start(channel, "carrier-token")?;
//! sim.add_handset("+818012345678", Policy::Approve).await?;
//! sim.wait_connected(Duration::from_secs(5)).await?;
//! // … a shop charges +818012345678 …
//! sim.shutdown().await?;
//! # Ok(()) }
//! ```

mod browser;
mod deviation;
mod faults;
mod handset;
mod policy;
mod relay;
mod resolve;
mod state;
mod transcript;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tracing::info;

pub use browser::{BrowserPhone, PhoneOffer, PhoneRefusal, MAX_OFFERS_PER_PHONE};
pub use deviation::Deviation;
pub use faults::{Chance, Faults, MessageFaults, SimConfig, MAX_DELAYED_PER_LANE, MAX_FAULT_DELAY};
pub use handset::ParsedOffer;
pub use policy::{Plan, Policy, Signing, Step, MAX_ANSWERS_PER_OFFER};
pub use resolve::{LeaseError, ResolvePolicy, MAX_RESOLVE_DELAY, MAX_SIM_LEASES};
pub use transcript::{AnswerOutcome, FaultCounters, SimCounters, SimEvent};

use crate::client::{with_token, AuthedChannel};
use crate::domain::approval::key_sha256;
use crate::domain::{IdError, SubscriberNumber, TradeId};
use crate::proto;
use crate::proto::carrier_service_client::CarrierServiceClient;
use handset::{generate_key, Handset};
use state::{SimState, LIMITS};

/// How long an enrollment call may take before we give up on it.
const UNARY_RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Acks and answers from browser phones waiting for the relay task. A
/// person presses a button a few times a minute; a full queue means the
/// relay is stuck, and the page is told to try again.
const INJECT_QUEUE_DEPTH: usize = 64;

/// Why a simulator call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The server refused or failed a call, with its own code and message.
    #[error("{code:?}: {message}")]
    Rpc { code: tonic::Code, message: String },
    #[error("subscriber number: {0}")]
    InvalidNumber(IdError),
    #[error("shop id: {0}")]
    InvalidShop(IdError),
    /// The number has no handset in this simulator (printed masked).
    #[error("no handset for {0:?}")]
    UnknownHandset(SubscriberNumber),
    #[error("this simulator hosts at most {max} handsets")]
    TooManyHandsets { max: usize },
    #[error("the operating system's random generator failed")]
    Entropy,
    #[error("timed out")]
    Timeout,
    /// The server answered with something the contract rules out.
    #[error("server broke the contract: {0}")]
    Protocol(String),
    /// `start` was called outside a Tokio runtime.
    #[error("must be started inside a Tokio runtime")]
    NoRuntime,
    /// The relay task panicked.
    #[error("the relay task failed")]
    TaskFailed,
    /// A browser phone's page asked for something the phone cannot do.
    #[error("{0}")]
    Phone(PhoneRefusal),
    /// Not a usable Ed25519 public key (32 bytes, canonical, not weak).
    #[error("public_key: not a usable Ed25519 public key")]
    InvalidKey,
    /// Too many acks and answers are waiting for the relay.
    #[error("the carrier is busy; try again")]
    Busy,
    /// A lease the carrier's own table could not record.
    #[error("lease: {0}")]
    Lease(LeaseError),
}

impl From<tonic::Status> for SimError {
    fn from(status: tonic::Status) -> Self {
        SimError::Rpc { code: status.code(), message: status.message().to_owned() }
    }
}

/// How a browser phone's subscriber pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhoneFunding {
    /// A prepaid wallet at the server (topped up by the operator).
    Wallet,
    /// Direct carrier billing within a monthly cap in minor units.
    Bill { currency: crate::domain::Currency, monthly_cap: crate::domain::Amount },
}

/// A handset as the carrier knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandsetInfo {
    pub number: SubscriberNumber,
    /// The Ed25519 public key enrolled at the server.
    pub public_key: [u8; 32],
}

/// State shared by the handle and the relay task. The lock is only ever
/// held inside `update`/`read`, never across an await.
struct Shared {
    state: Mutex<SimState>,
    /// Bumped after every change, so waiters wake without polling.
    version: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock leaves the state usable (every
        // update is a few field writes), so take it back rather than panic.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update<R>(&self, change: impl FnOnce(&mut SimState) -> R) -> R {
        let result = change(&mut self.lock());
        self.version.send_modify(|v| *v = v.wrapping_add(1));
        result
    }

    fn read<R>(&self, look: impl FnOnce(&SimState) -> R) -> R {
        look(&self.lock())
    }

    /// Waits until `check` finds what it looks for, or `timeout` passes.
    async fn wait<T>(&self, timeout: Duration, mut check: impl FnMut(&SimState) -> Option<T>) -> Result<T, SimError> {
        let mut changes = self.version.subscribe();
        let waiting = async {
            loop {
                // Mark the version seen before looking, so a change made
                // after the look always wakes the `changed` below.
                changes.borrow_and_update();
                if let Some(found) = self.read(&mut check) {
                    return found;
                }
                // The sender lives in `self`, so this cannot fail while we
                // borrow it; treat a failure like a change and look again.
                let _ = changes.changed().await;
            }
        };
        tokio::time::timeout(timeout, waiting).await.map_err(|_| SimError::Timeout)
    }
}

/// A simulated carrier: one relay stream to the server and the handsets
/// it hosts. Dropping it stops the relay task too; `shutdown` also waits
/// for it to finish.
///
/// Run one simulator per carrier: the server keeps only the newest relay
/// stream of a carrier, so two would keep replacing each other.
pub struct CarrierSim {
    shared: Arc<Shared>,
    client: CarrierServiceClient<AuthedChannel>,
    config: SimConfig,
    stop: watch::Sender<bool>,
    /// Bumped to cut the open relay stream.
    cut: watch::Sender<u64>,
    /// Browser phones' acks and answers, to the relay task.
    inject: tokio::sync::mpsc::Sender<relay::Up>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for CarrierSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CarrierSim").field("counters", &self.counters()).finish_non_exhaustive()
    }
}

impl CarrierSim {
    /// Starts the relay task for the carrier the token names, over a
    /// perfect network. Returns at once; use [`CarrierSim::wait_connected`]
    /// before expecting offers.
    pub fn start(channel: Channel, token: &str) -> Result<CarrierSim, SimError> {
        Self::start_with(channel, token, SimConfig::default())
    }

    /// Like [`CarrierSim::start`], with faults between the carrier and the
    /// server and the other behaviours of `config`. The seed is logged.
    pub fn start_with(channel: Channel, token: &str, config: SimConfig) -> Result<CarrierSim, SimError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SimError::NoRuntime)?;
        let client = CarrierServiceClient::new(with_token(channel, token)?);
        let (version, _) = watch::channel(0u64);
        let mut state = SimState::new(LIMITS);
        state.reanswer_on_redelivery = config.reanswer_on_redelivery;
        state.deviation = config.deviation;
        let shared = Arc::new(Shared { state: Mutex::new(state), version });
        let (stop, stop_rx) = watch::channel(false);
        let (cut, cut_rx) = watch::channel(0u64);
        let (inject, inject_rx) = tokio::sync::mpsc::channel(INJECT_QUEUE_DEPTH);
        if !config.faults.is_none() {
            info!(seed = config.seed, faults = ?config.faults, "carrier faults on");
        }
        let relay = relay::Relay::new(Arc::clone(&shared), client.clone(), stop_rx, cut_rx, inject_rx, &config);
        let task = runtime.spawn(relay.run());
        Ok(CarrierSim { shared, client, config, stop, cut, inject, task })
    }

    /// What this simulator was started with (the seed, to replay a run).
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Cuts the open relay stream now, as a network fault would: what is
    /// in flight is lost and the relay reconnects (the server then
    /// redelivers what it has no ack for). Does nothing while no stream
    /// is open.
    pub fn disconnect(&self) {
        self.cut.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Makes a handset for `number`: a fresh Ed25519 key from the OS
    /// CSPRNG, the subscriber (wallet-funded) and the key enrolled at the
    /// server, then the handset hosted here. Adding a number again gives it
    /// a new key, as a new phone would.
    pub async fn add_handset(&self, number: &str, policy: Policy) -> Result<HandsetInfo, SimError> {
        let number = SubscriberNumber::parse(number).map_err(SimError::InvalidNumber)?;
        if !self.shared.read(|s| s.has_room_for(&number)) {
            return Err(SimError::TooManyHandsets { max: LIMITS.handsets });
        }
        let key = generate_key()?;
        let handset = Handset::new(key, policy);
        let public_key = handset.public_key();

        let mut client = self.client.clone();
        let subscriber = unary(client.enroll_subscriber(request(proto::EnrollSubscriberRequest {
            subscriber_number: number.as_str().to_owned(),
            funding: proto::Funding::Wallet as i32,
            ..Default::default()
        })))
        .await?;
        if subscriber.subscriber_number != number.as_str() {
            return Err(SimError::Protocol(format!("enrolled {:?} answered for another number", number)));
        }
        let enrolled = unary(client.enroll_handset(request(proto::EnrollHandsetRequest {
            subscriber_number: number.as_str().to_owned(),
            public_key: public_key.to_vec(),
        })))
        .await?;
        if enrolled.key_sha256 != key_sha256(&public_key) {
            return Err(SimError::Protocol("key_sha256 does not match the enrolled key".to_owned()));
        }

        self.shared.update(|s| s.add_handset(number.clone(), handset))?;
        info!(number = %number.masked(), ?policy, "handset enrolled");
        Ok(HandsetInfo { number, public_key })
    }

    /// Hosts a phone driven by a web page: enrolls the subscriber with
    /// `funding` and keeps the offers addressed to it for the page. It has
    /// no key until a page enrolls one ([`CarrierSim::enroll_browser_key`]);
    /// a simulated handset of the number is dropped with its key.
    pub async fn add_browser_phone(&self, number: &str, funding: PhoneFunding) -> Result<(), SimError> {
        let number = SubscriberNumber::parse(number).map_err(SimError::InvalidNumber)?;
        if !self.shared.read(|s| s.has_room_for(&number)) {
            return Err(SimError::TooManyHandsets { max: LIMITS.handsets });
        }
        let request = match funding {
            PhoneFunding::Wallet => proto::EnrollSubscriberRequest {
                subscriber_number: number.as_str().to_owned(),
                funding: proto::Funding::Wallet as i32,
                ..Default::default()
            },
            PhoneFunding::Bill { currency, monthly_cap } => proto::EnrollSubscriberRequest {
                subscriber_number: number.as_str().to_owned(),
                funding: proto::Funding::CarrierBill as i32,
                bill_currency: currency.code().to_owned(),
                monthly_cap_minor: monthly_cap.minor(),
            },
        };
        let mut client = self.client.clone();
        let enrolled = unary(client.enroll_subscriber(self::request(request))).await?;
        if enrolled.subscriber_number != number.as_str() {
            return Err(SimError::Protocol(format!("enrolled {:?} answered for another number", number)));
        }
        self.shared.update(|s| s.add_browser_phone(number.clone()))?;
        info!(number = %number.masked(), ?funding, "browser phone hosted");
        Ok(())
    }

    /// Enrolls the public key a browser phone's page made (its private key
    /// stays in the page) with the server's `EnrollHandset`, replacing any
    /// earlier key of the number. Returns the server's SHA-256 of the key.
    pub async fn enroll_browser_key(&self, number: &str, public_key: &[u8]) -> Result<[u8; 32], SimError> {
        let number = SubscriberNumber::parse(number).map_err(SimError::InvalidNumber)?;
        if self.shared.read(|s| s.browser_phone(&number).is_none()) {
            return Err(SimError::UnknownHandset(number));
        }
        let public_key = crate::domain::approval::valid_public_key(public_key).ok_or(SimError::InvalidKey)?;
        let mut client = self.client.clone();
        let enrolled = unary(client.enroll_handset(request(proto::EnrollHandsetRequest {
            subscriber_number: number.as_str().to_owned(),
            public_key: public_key.to_vec(),
        })))
        .await?;
        let digest = key_sha256(&public_key);
        if enrolled.key_sha256 != digest {
            return Err(SimError::Protocol("key_sha256 does not match the enrolled key".to_owned()));
        }
        self.shared.update(|s| s.set_browser_key(&number, public_key))?;
        info!(number = %number.masked(), "browser phone key enrolled");
        Ok(digest)
    }

    /// A browser phone as the carrier holds it now: its enrolled public key
    /// and its offers.
    pub fn browser_phone(&self, number: &str) -> Option<BrowserPhone> {
        let number = SubscriberNumber::parse(number).ok()?;
        self.shared.read(|s| s.browser_phone(&number).cloned())
    }

    /// The page shows the offer: acknowledges it to the server (now the
    /// trade is OFFERED) unless it was shown before.
    pub fn browser_show(&self, number: &str, trade: TradeId) -> Result<(), SimError> {
        let number = SubscriberNumber::parse(number).map_err(SimError::InvalidNumber)?;
        let permit = self.inject.try_reserve().map_err(|_| SimError::Busy)?;
        if let Some(delivery_id) = self.shared.update(|s| s.browser_show(&number, &trade))? {
            permit.send(relay::Up::Ack(delivery_id));
        }
        Ok(())
    }

    /// The buyer answered on the page, with the signature the page made
    /// over [`ParsedOffer::signing_bytes`] of the offer: relays it, once.
    pub fn browser_answer(
        &self,
        number: &str,
        trade: TradeId,
        decision: crate::domain::Decision,
        signature: Vec<u8>,
    ) -> Result<(), SimError> {
        let number = SubscriberNumber::parse(number).map_err(SimError::InvalidNumber)?;
        let permit = self.inject.try_reserve().map_err(|_| SimError::Busy)?;
        let answer = self.shared.update(|s| s.browser_answer(&number, &trade, decision, signature))?;
        info!(trade_id = %trade, number = %number.masked(), ?decision, "browser phone answered");
        permit.send(relay::Up::Answer(answer));
        Ok(())
    }

    /// A receiver that changes after every change of the simulator's
    /// state (for pages that show it live).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.version.subscribe()
    }

    /// Records in the carrier's own lease table that `number` holds `ip`
    /// (its `ports` block; `(0, 0)` the whole address) from `start_ms`.
    /// Nothing is sent to the server: in ask mode the table answers its
    /// resolve requests.
    pub fn lease(&self, ip: &str, ports: (u16, u16), number: &str, start_ms: u64) -> Result<(), SimError> {
        let number = SubscriberNumber::parse(number).map_err(SimError::InvalidNumber)?;
        self.shared
            .update(|s| s.leases.record(ip, ports, Some(number), crate::domain::UnixMs(start_ms)))
            .map_err(SimError::Lease)
    }

    /// Records that nobody holds `ip`'s `ports` from `end_ms`.
    pub fn end_lease(&self, ip: &str, ports: (u16, u16), end_ms: u64) -> Result<(), SimError> {
        self.shared.update(|s| s.leases.record(ip, ports, None, crate::domain::UnixMs(end_ms))).map_err(SimError::Lease)
    }

    /// How the carrier answers resolve requests from now on.
    pub fn set_resolve_policy(&self, policy: ResolvePolicy) {
        self.shared.update(|s| s.resolve_policy = policy);
    }

    /// The carrier refuses (`true`) or stops refusing a shop by its own
    /// rules when asked to resolve an address for it.
    pub fn refuse_shop(&self, shop: &str, refuse: bool) -> Result<(), SimError> {
        let shop = crate::domain::ShopId::parse(shop).map_err(SimError::InvalidShop)?;
        self.shared.update(|s| {
            if refuse {
                s.refused_shops.insert(shop);
            } else {
                s.refused_shops.remove(&shop);
            }
        });
        Ok(())
    }

    /// Changes how a handset answers offers that arrive from now on.
    pub fn set_policy(&self, number: &str, policy: Policy) -> Result<(), SimError> {
        let number = SubscriberNumber::parse(number).map_err(SimError::InvalidNumber)?;
        self.shared.update(|s| s.set_policy(&number, policy))
    }

    /// The handset hosted for `number`, if any.
    pub fn handset(&self, number: &str) -> Option<HandsetInfo> {
        let number = SubscriberNumber::parse(number).ok()?;
        let public_key = self.shared.read(|s| s.handset(&number).map(Handset::public_key))?;
        Some(HandsetInfo { number, public_key })
    }

    /// The last events (at most 10 000), oldest first.
    pub fn transcript(&self) -> Vec<SimEvent> {
        self.shared.read(SimState::transcript)
    }

    pub fn counters(&self) -> SimCounters {
        self.shared.read(|s| s.counters)
    }

    /// True while a relay stream is open.
    pub fn is_connected(&self) -> bool {
        self.shared.read(|s| s.connected)
    }

    /// Waits until a relay stream is open.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), SimError> {
        self.shared.wait(timeout, |s| s.connected.then_some(())).await
    }

    /// Waits until a handset has shown the trade's offer.
    pub async fn wait_for_offer(&self, trade_id: TradeId, timeout: Duration) -> Result<(), SimError> {
        self.shared.wait(timeout, |s| s.trade(&trade_id).filter(|t| t.shown).map(|_| ())).await
    }

    /// Waits for the server's verdict on the first answer to the trade.
    pub async fn wait_for_answer_result(
        &self,
        trade_id: TradeId,
        timeout: Duration,
    ) -> Result<AnswerOutcome, SimError> {
        let mut all = self.wait_for_answer_results(trade_id, 1, timeout).await?;
        all.truncate(1);
        all.pop().ok_or(SimError::Timeout)
    }

    /// Waits until `count` verdicts on answers to the trade have arrived
    /// (e.g. two for `AnswerTwice`) and returns them in arrival order.
    pub async fn wait_for_answer_results(
        &self,
        trade_id: TradeId,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<AnswerOutcome>, SimError> {
        self.shared
            .wait(timeout, |s| s.trade(&trade_id).filter(|t| t.results.len() >= count).map(|t| t.results.clone()))
            .await
    }

    /// Waits until the server withdraws the trade's offer; returns the
    /// state the withdrawal gave.
    pub async fn wait_for_withdraw(&self, trade_id: TradeId, timeout: Duration) -> Result<proto::TradeState, SimError> {
        self.shared.wait(timeout, |s| s.trade(&trade_id).and_then(|t| t.withdrawn)).await
    }

    /// Waits until the transcript holds an event `check` accepts (among
    /// the last 10 000) and returns the first such event.
    pub async fn wait_for_event(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&SimEvent) -> bool,
    ) -> Result<SimEvent, SimError> {
        self.shared.wait(timeout, |s| s.find_event(&mut check)).await
    }

    /// Waits until the counters satisfy `check` (e.g. a redelivered offer
    /// was acked: `|c| c.offers_duplicate >= 1`).
    pub async fn wait_for_counters(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&SimCounters) -> bool,
    ) -> Result<SimCounters, SimError> {
        self.shared.wait(timeout, |s| check(&s.counters).then_some(s.counters)).await
    }

    /// Stops the relay task (closing the stream) and waits for it.
    pub async fn shutdown(self) -> Result<(), SimError> {
        // Fails only if the task is already gone, which is what we want.
        let _ = self.stop.send(true);
        self.task.await.map_err(|_| SimError::TaskFailed)
    }
}

fn request<T>(message: T) -> tonic::Request<T> {
    crate::client::request_with_timeout(message, UNARY_RPC_TIMEOUT)
}

async fn unary<T>(call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Result<T, SimError> {
    match crate::client::call_with_timeout(UNARY_RPC_TIMEOUT, call).await {
        Ok(v) => Ok(v),
        Err(crate::client::CallError::Timeout) => Err(SimError::Timeout),
        Err(crate::client::CallError::Status(status)) => Err(status.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A channel to a local port nothing listens on: every call fails fast
    /// with `Unavailable`, like a server that is down.
    async fn dead_channel() -> Channel {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("valid url").connect_lazy()
    }

    #[test]
    fn numbers_print_masked_in_errors_and_events() {
        let number = SubscriberNumber::parse("+818012345678").expect("valid");
        let error = SimError::UnknownHandset(number.clone()).to_string();
        let event = format!(
            "{:?}",
            SimEvent::Answered {
                number,
                trade_id: TradeId::from_bytes([1u8; 16]),
                decision: crate::domain::Decision::Approve,
                signature_valid: true,
            }
        );
        for text in [error, event] {
            assert!(!text.contains("8012345") && text.contains("678"), "{text}");
        }
    }

    #[test]
    fn start_needs_a_runtime() {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1");
        // Building a lazy channel needs no runtime; starting the task does.
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let channel = rt.block_on(async { channel.connect_lazy() });
        assert_eq!(CarrierSim::start(channel, "t").err(), Some(SimError::NoRuntime));
    }

    #[tokio::test]
    async fn a_down_server_means_retries_not_errors_and_shutdown_is_prompt() {
        let sim = CarrierSim::start(dead_channel().await, "carrier-token").expect("started");
        assert_eq!(sim.wait_connected(Duration::from_millis(300)).await, Err(SimError::Timeout));
        assert!(!sim.is_connected());
        assert_eq!(sim.counters().connections, 0);
        tokio::time::timeout(Duration::from_secs(5), sim.shutdown())
            .await
            .expect("shutdown within the bound")
            .expect("task ended cleanly");
    }

    #[tokio::test]
    async fn enrollment_errors_keep_the_server_code_and_host_nothing() {
        let sim = CarrierSim::start(dead_channel().await, "carrier-token").expect("started");
        assert!(matches!(sim.add_handset("0801234", Policy::Approve).await, Err(SimError::InvalidNumber(_))));
        let err = sim.add_handset("+818012345678", Policy::Approve).await.err();
        assert!(matches!(err, Some(SimError::Rpc { code: tonic::Code::Unavailable, .. })), "{err:?}");
        assert_eq!(sim.handset("+818012345678"), None);
        assert!(matches!(sim.set_policy("+818012345678", Policy::Decline), Err(SimError::UnknownHandset(_))));
        sim.shutdown().await.expect("clean");
    }

    #[tokio::test]
    async fn waiters_wake_on_change_and_time_out_otherwise() {
        let sim = CarrierSim::start(dead_channel().await, "carrier-token").expect("started");
        let trade = TradeId::from_bytes([1u8; 16]);
        assert_eq!(sim.wait_for_withdraw(trade, Duration::from_millis(20)).await, Err(SimError::Timeout));
        let shared = Arc::clone(&sim.shared);
        let writer = tokio::spawn(async move {
            tokio::task::yield_now().await;
            shared.update(|s| {
                s.handle(proto::RelayDown {
                    delivery_id: 3,
                    body: Some(proto::relay_down::Body::Withdraw(proto::Withdraw {
                        trade_id: trade.to_string(),
                        subscriber_number: "+818012345678".to_owned(),
                        state: proto::TradeState::Expired as i32,
                    })),
                })
            })
        });
        assert_eq!(sim.wait_for_withdraw(trade, Duration::from_secs(5)).await, Ok(proto::TradeState::Expired));
        writer.await.expect("writer");
        let counters =
            sim.wait_for_counters(Duration::from_secs(5), |c| c.withdraws_received == 1).await.expect("counted");
        assert_eq!(counters.withdraws_received, 1);
        sim.shutdown().await.expect("clean");
    }
}
