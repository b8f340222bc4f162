//! Test harness: a real server on 127.0.0.1:0 over a real store in a
//! temporary folder, and real gRPC clients. `start` serves plaintext with
//! bearer tokens (the loopback development mode) on the default backend;
//! `start_on` on a chosen one (`backends.rs`); `start_tls` generates a
//! development PKI into the folder and serves mutual TLS, every client
//! known by its certificate.

#![allow(dead_code)]

pub mod backends;
pub mod binary;
pub mod manual_carrier;
pub mod pg;
pub mod raw;
pub mod world;

use std::path::PathBuf;
use std::time::Duration;

use backends::BackendFactory;
use syncpay::client::{connect_tls, ClientTls};
use syncpay::domain::Principal;
use syncpay::domain::{CarrierId, ShopId};
use syncpay::pki::{Ca, InitOptions, PkiFiles};
use syncpay::sync_server::limits::Limits;
use syncpay::sync_server::rate_limit::Rate;
use syncpay::sync_server::tls::TlsFiles;

use syncpay::client::{with_token, AuthedChannel};
use syncpay::proto::admin_service_client::AdminServiceClient;
use syncpay::proto::carrier_service_client::CarrierServiceClient;
use syncpay::proto::register_service_client::RegisterServiceClient;
use syncpay::proto::{self};
use syncpay::sync_server::{self, RunningServer, ServerConfig};
use tonic::transport::Channel;

pub struct TestServer {
    pub server: RunningServer,
    pub data_dir: PathBuf,
    pub config: ServerConfig,
    /// The development PKI, when the server speaks TLS.
    pub pki: Option<PkiFiles>,
    /// The backend it was started on with `start_on` (a restart reopens
    /// it); `None`: the embedded store `config` names.
    pub backend: Option<&'static BackendFactory>,
    // Kept so the folder lives as long as the server.
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Plaintext with bearer tokens; rate limits off (functional tests
    /// create many trades per buyer; `tests/limits.rs` tests the limits).
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().to_owned();
        let mut config = ServerConfig::from_data_dir(&data_dir).expect("config");
        config.limits = functional_limits();
        Self::start_with(config, data_dir, Some(dir)).await
    }

    /// As `start`, over `backend`'s store.
    pub async fn start_on(backend: &'static BackendFactory) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().to_owned();
        let mut config = ServerConfig::from_data_dir(&data_dir).expect("config");
        config.limits = functional_limits();
        Self::serve(config, data_dir, Some(dir), Some(backend)).await
    }

    /// As `start_on`, over a store that `fill` has written first through
    /// the store's own interface: for what the API cannot make, such as
    /// sales in a month long over. Returns what `fill` returned.
    pub async fn start_on_filled<T, Fut>(
        backend: &'static BackendFactory,
        fill: impl FnOnce(syncpay::store::Store) -> Fut,
    ) -> (TestServer, T)
    where
        Fut: std::future::Future<Output = T>,
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().to_owned();
        let mut config = ServerConfig::from_data_dir(&data_dir).expect("config");
        config.limits = functional_limits();
        let store = (backend.open)(&config.store_dir, backends::Fsync::On);
        let filled = fill(store.clone()).await;
        let listener = sync_server::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let server = sync_server::start_with_store(config.clone(), store, listener).await.expect("start");
        (TestServer { server, data_dir, config, pki: None, backend: Some(backend), _dir: Some(dir) }, filled)
    }

    pub async fn start_with(config: ServerConfig, data_dir: PathBuf, dir: Option<tempfile::TempDir>) -> TestServer {
        Self::serve(config, data_dir, dir, None).await
    }

    async fn serve(
        config: ServerConfig,
        data_dir: PathBuf,
        dir: Option<tempfile::TempDir>,
        backend: Option<&'static BackendFactory>,
    ) -> TestServer {
        // As `serve` binds it (the server's listen backlog).
        let listener = sync_server::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let server = match backend {
            Some(b) => {
                let store = (b.open)(&config.store_dir, backends::Fsync::On);
                sync_server::start_with_store(config.clone(), store, listener).await.expect("start")
            }
            None => sync_server::start(config.clone(), listener).await.expect("start"),
        };
        TestServer { server, data_dir, config, pki: None, backend, _dir: dir }
    }

    /// Mutual TLS with a fresh development PKI (in the data folder's
    /// `pki/`) holding certificates for the operator and for `shops` and
    /// `carriers`, which are created on the server too.
    pub async fn start_tls(shops: &[&str], carriers: &[&str], limits: Limits) -> TestServer {
        Self::tls(None, shops, carriers, limits).await
    }

    /// As `start_tls`, over `backend`'s store.
    pub async fn start_tls_on(
        backend: &'static BackendFactory,
        shops: &[&str],
        carriers: &[&str],
        limits: Limits,
    ) -> TestServer {
        Self::tls(Some(backend), shops, carriers, limits).await
    }

    async fn tls(
        backend: Option<&'static BackendFactory>,
        shops: &[&str],
        carriers: &[&str],
        limits: Limits,
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().to_owned();
        let pki = make_pki(&data_dir.join("pki"), shops, carriers);
        let mut config = ServerConfig::from_data_dir(&data_dir).expect("config");
        config.limits = limits;
        config.tls = Some(TlsFiles {
            cert: pki.server.cert.clone(),
            key: pki.server.key.clone(),
            client_ca: pki.ca_cert.clone(),
            client_crl: None,
        });
        let mut t = Self::serve(config, data_dir, Some(dir), backend).await;
        t.pki = Some(pki);
        for shop in shops {
            t.create_shop(shop, &format!("Shop {shop}")).await;
        }
        for carrier in carriers {
            t.create_carrier(carrier, &format!("Carrier {carrier}")).await;
        }
        t
    }

    /// Stops the server cleanly and starts a new one on the same store.
    pub async fn restart(self) -> TestServer {
        let TestServer { server, data_dir, config, pki, backend, _dir } = self;
        server.shutdown().await.expect("shutdown");
        let mut t = Self::serve(config, data_dir, _dir, backend).await;
        t.pki = pki;
        t
    }

    fn pki(&self) -> &PkiFiles {
        self.pki.as_ref().expect("this server has no PKI (use start_tls)")
    }

    /// The client TLS material of a principal from the server's PKI
    /// (issued on first use if `start_tls` did not).
    pub fn client_tls(&self, who: &Principal) -> ClientTls {
        let pki = self.pki();
        let stem = syncpay::pki::file_stem(who);
        let cert = pki.dir.join(format!("{stem}.pem"));
        if !cert.exists() {
            Ca::load(&pki.dir).expect("ca").issue_client(who, 30).expect("issue");
        }
        ClientTls::from_files(&pki.ca_cert, &cert, pki.dir.join(format!("{stem}.key"))).expect("client files")
    }

    /// A TLS channel authenticated as `who`.
    pub async fn tls_channel(&self, who: &Principal) -> Channel {
        connect_tls(&self.server.url(), &self.client_tls(who)).await.expect("connect tls")
    }

    /// A TLS channel wrapped for the generated clients (no bearer token).
    pub async fn as_principal(&self, who: &Principal) -> AuthedChannel {
        with_token(self.tls_channel(who).await, "").expect("no token")
    }

    pub async fn as_shop(&self, id: &str) -> RegisterServiceClient<AuthedChannel> {
        RegisterServiceClient::new(self.as_principal(&shop(id)).await)
    }

    /// Opens a register (label "till") as shop `id`, by its certificate;
    /// returns the register id.
    pub async fn open_register_as(&self, id: &str) -> String {
        self.as_shop(id)
            .await
            .open_register(syncpay::proto::OpenRegisterRequest { label: "till".into() })
            .await
            .expect("open register")
            .into_inner()
            .register_id
    }

    pub async fn as_carrier(&self, id: &str) -> CarrierServiceClient<AuthedChannel> {
        CarrierServiceClient::new(self.as_principal(&carrier(id)).await)
    }

    pub async fn channel(&self) -> Channel {
        syncpay::client::connect(&self.server.url()).await.expect("connect")
    }

    pub async fn authed(&self, token: &str) -> AuthedChannel {
        with_token(self.channel().await, token).expect("token")
    }

    /// The operator: by certificate on a TLS server, by token otherwise.
    pub async fn admin(&self) -> AdminServiceClient<AuthedChannel> {
        if self.pki.is_some() {
            return AdminServiceClient::new(self.as_principal(&Principal::Admin).await);
        }
        AdminServiceClient::new(self.authed(&self.config.admin_token).await)
    }

    pub async fn shop(&self, token: &str) -> RegisterServiceClient<AuthedChannel> {
        RegisterServiceClient::new(self.authed(token).await)
    }

    pub async fn carrier(&self, token: &str) -> CarrierServiceClient<AuthedChannel> {
        CarrierServiceClient::new(self.authed(token).await)
    }

    /// Creates a shop; returns its token.
    pub async fn create_shop(&self, id: &str, name: &str) -> String {
        make_shop(&mut self.admin().await, id, name).await
    }

    /// Creates a carrier; returns its token.
    pub async fn create_carrier(&self, id: &str, name: &str) -> String {
        make_carrier(&mut self.admin().await, id, name).await
    }

    pub async fn top_up(&self, number: &str, amount: u64, currency: &str) {
        top_up_through(&mut self.admin().await, number, amount, currency).await;
    }

    /// Net balance (credits − debits) of an account by name; 0 if absent.
    pub async fn balance(&self, name: &str) -> i64 {
        let accounts = self
            .admin()
            .await
            .list_accounts(proto::ListAccountsRequest { prefix: name.into() })
            .await
            .expect("accounts")
            .into_inner()
            .accounts;
        accounts.iter().find(|a| a.name == name).map_or(0, |a| a.balance_minor)
    }

    /// Asserts the ledger verifies and returns the report.
    pub async fn assert_ledger_ok(&self) -> proto::VerifyLedgerResponse {
        let report =
            self.admin().await.verify_ledger(proto::VerifyLedgerRequest {}).await.expect("verify").into_inner();
        assert!(report.ok, "ledger violations: {:#?}", report.violations);
        report
    }
}

pub fn shop(id: &str) -> Principal {
    Principal::Shop(ShopId::parse(id).expect("shop id"))
}

pub fn carrier(id: &str) -> Principal {
    Principal::Carrier(CarrierId::parse(id).expect("carrier id"))
}

/// A development PKI in `dir` for the operator, `shops` and `carriers`.
pub fn make_pki(dir: &std::path::Path, shops: &[&str], carriers: &[&str]) -> PkiFiles {
    let options = InitOptions {
        server_names: Vec::new(),
        shops: shops.iter().map(|s| ShopId::parse(s).expect("shop id")).collect(),
        carriers: carriers.iter().map(|c| CarrierId::parse(c).expect("carrier id")).collect(),
    };
    syncpay::pki::init(dir, &options).expect("pki")
}

/// Server limits with the rate limits off.
pub fn functional_limits() -> Limits {
    Limits {
        shop_trades: Rate::new(0, Duration::from_secs(1)),
        subscriber_offers: Rate::new(0, Duration::from_secs(60)),
        ..Limits::default()
    }
}

pub fn code_of<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

/// Enrolls a wallet subscriber and a handset key the test itself holds, as
/// a carrier without the simulator would (the test then signs answers).
pub async fn enroll_with_key(
    carrier: &mut CarrierServiceClient<AuthedChannel>,
    number: &str,
    key: &ed25519_dalek::SigningKey,
) {
    carrier
        .enroll_subscriber(proto::EnrollSubscriberRequest {
            subscriber_number: number.into(),
            funding: proto::Funding::Wallet as i32,
            ..Default::default()
        })
        .await
        .expect("enroll subscriber");
    carrier
        .enroll_handset(proto::EnrollHandsetRequest {
            subscriber_number: number.into(),
            public_key: key.verifying_key().to_bytes().to_vec(),
        })
        .await
        .expect("enroll handset");
}

/// Everything a shop has received about `seen` (its trades as answered,
/// every event of its stream up to the last of them settling, and its
/// payout report), each message as encoded bytes: what a privacy walk
/// searches for numbers and addresses.
pub async fn everything_the_shop_received(
    shop: &mut RegisterServiceClient<AuthedChannel>,
    seen: &[proto::Trade],
) -> Vec<Vec<u8>> {
    use prost::Message as _;
    use tokio_stream::StreamExt as _;
    let settled_state = proto::TradeState::Settled as i32;
    let mut events = shop.watch_trades(proto::WatchTradesRequest::default()).await.expect("watch").into_inner();
    let mut bytes: Vec<Vec<u8>> = seen.iter().map(|t| t.encode_to_vec()).collect();
    // Every event up to the last settlement (a trade's OFFERED event may be
    // missing when the answer overtakes the delivery acknowledgement).
    let mut settled = 0;
    while settled < seen.len() {
        let e = tokio::time::timeout(Duration::from_secs(15), events.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("event");
        if e.trade.as_ref().is_some_and(|t| t.state == settled_state) {
            settled += 1;
        }
        bytes.push(e.encode_to_vec());
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
    let to_ms = i64::try_from(now).expect("fits") + 60_000;
    let report =
        shop.get_payout_report(proto::GetPayoutReportRequest { from_ms: 0, to_ms }).await.expect("report").into_inner();
    bytes.push(report.encode_to_vec());
    bytes
}

/// Tops up a wallet through `admin` (on any node).
pub async fn top_up_through(admin: &mut AdminServiceClient<AuthedChannel>, number: &str, amount: u64, currency: &str) {
    admin
        .top_up_wallet(proto::TopUpWalletRequest {
            subscriber_number: number.into(),
            amount_minor: amount,
            currency: currency.into(),
        })
        .await
        .expect("top up");
}

/// Creates a shop through `admin`; returns its token.
pub async fn make_shop(admin: &mut AdminServiceClient<AuthedChannel>, id: &str, name: &str) -> String {
    admin
        .create_shop(proto::CreateShopRequest { shop_id: id.into(), display_name: name.into() })
        .await
        .expect("create shop")
        .into_inner()
        .token
}

/// Creates a carrier (default terms) through `admin`; returns its token.
pub async fn make_carrier(admin: &mut AdminServiceClient<AuthedChannel>, id: &str, name: &str) -> String {
    admin
        .create_carrier(proto::CreateCarrierRequest {
            carrier_id: id.into(),
            display_name: name.into(),
            ..Default::default()
        })
        .await
        .expect("create carrier")
        .into_inner()
        .token
}

/// The wall clock in Unix milliseconds, as the API carries times.
pub fn now_ms() -> i64 {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis();
    i64::try_from(ms).expect("fits")
}

/// A trade's state and failure reason, as enums.
pub fn trade_state(t: &proto::Trade) -> (proto::TradeState, proto::FailureReason) {
    (
        proto::TradeState::try_from(t.state).unwrap_or(proto::TradeState::Unspecified),
        proto::FailureReason::try_from(t.failure_reason).unwrap_or(proto::FailureReason::Unspecified),
    )
}

/// The code and message of a call that must be refused.
pub fn refusal<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (tonic::Code, String) {
    match r {
        Ok(t) => panic!("expected a refusal, got {:?}", t.into_inner()),
        Err(s) => (s.code(), s.message().to_owned()),
    }
}

/// A 30-s CreateTrade in JPY whose payer is the network identity
/// `ip`:`port` observed at `at` (ms).
pub fn by_ip(register_id: &str, amount: u64, ip: &str, port: u32, at: i64) -> proto::CreateTradeRequest {
    proto::CreateTradeRequest {
        register_id: register_id.into(),
        amount_minor: amount,
        currency: "JPY".into(),
        description: "Two books".into(),
        ttl_seconds: 30,
        payer: Some(proto::create_trade_request::Payer::NetworkIdentity(proto::NetworkIdentity {
            ip: ip.into(),
            port,
            observed_at_ms: at,
        })),
        ..Default::default()
    }
}
