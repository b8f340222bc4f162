//! Test harness: a real server on 127.0.0.1:0 over a real sled store in a
//! temporary folder, and real gRPC clients.

#![allow(dead_code)]

pub mod binary;

use std::path::PathBuf;

use syncpay::client::{with_token, AuthedChannel};
use syncpay::proto::admin_service_client::AdminServiceClient;
use syncpay::proto::carrier_service_client::CarrierServiceClient;
use syncpay::proto::register_service_client::RegisterServiceClient;
use syncpay::proto::{self};
use syncpay::sync_server::{self, RunningServer, ServerConfig};
use tokio::net::TcpListener;
use tonic::transport::Channel;

pub struct TestServer {
    pub server: RunningServer,
    pub data_dir: PathBuf,
    pub config: ServerConfig,
    // Kept so the folder lives as long as the server.
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().to_owned();
        let config = ServerConfig::from_data_dir(&data_dir).expect("config");
        Self::start_with(config, data_dir, Some(dir)).await
    }

    pub async fn start_with(config: ServerConfig, data_dir: PathBuf, dir: Option<tempfile::TempDir>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let server = sync_server::start(config.clone(), listener).await.expect("start");
        TestServer { server, data_dir, config, _dir: dir }
    }

    /// Stops the server cleanly and starts a new one on the same store.
    pub async fn restart(self) -> TestServer {
        let TestServer { server, data_dir, config, _dir } = self;
        server.shutdown().await.expect("shutdown");
        Self::start_with(config, data_dir, _dir).await
    }

    pub async fn channel(&self) -> Channel {
        syncpay::client::connect(&self.server.url()).await.expect("connect")
    }

    pub async fn authed(&self, token: &str) -> AuthedChannel {
        with_token(self.channel().await, token).expect("token")
    }

    pub async fn admin(&self) -> AdminServiceClient<AuthedChannel> {
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
        self.admin()
            .await
            .create_shop(proto::CreateShopRequest { shop_id: id.into(), display_name: name.into() })
            .await
            .expect("create shop")
            .into_inner()
            .token
    }

    /// Creates a carrier; returns its token.
    pub async fn create_carrier(&self, id: &str, name: &str) -> String {
        self.admin()
            .await
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

    pub async fn top_up(&self, number: &str, amount: u64, currency: &str) {
        self.admin()
            .await
            .top_up_wallet(proto::TopUpWalletRequest {
                subscriber_number: number.into(),
                amount_minor: amount,
                currency: currency.into(),
            })
            .await
            .expect("top up");
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

pub fn code_of<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}
