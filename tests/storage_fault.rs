//! A failed fsync: the commit in that group is not acknowledged, nor is
//! anything after it (fail-stop); after a restart the ledger still
//! verifies and everything acknowledged before the failure is there.

mod common;

use std::sync::Arc;

use common::TestServer;
use syncpay::proto;
use syncpay::register::{ChargeRequest, VirtualRegister};
use syncpay::store::sled::SyncFault;
use syncpay::sync_server::ServerConfig;
use tonic::Code;

#[tokio::test]
async fn nothing_is_acknowledged_after_a_failed_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fault = Arc::new(SyncFault::default());
    let mut config = ServerConfig::from_data_dir(dir.path()).expect("config");
    config.sync_fault = Some(fault.clone());
    let t = TestServer::start_with(config.clone(), dir.path().to_owned(), None).await;
    let shop_token = t.create_shop("acme", "Acme").await;
    let register = VirtualRegister::open(t.channel().await, &shop_token, "till").await.expect("open");
    let charge = |n: u32| ChargeRequest {
        ttl_seconds: 60,
        ..ChargeRequest::new("+818030000001", 100, "JPY", &format!("item {n}"))
    };
    let before = register.create(charge(1)).await.expect("acknowledged before the fault");

    fault.arm();
    let failed = register.create(charge(2)).await.expect_err("must not be acknowledged");
    assert_eq!(failed.code(), Some(Code::Unavailable), "{failed:?}");
    assert_eq!(fault.fired(), 1);

    // Fail-stop: every later write is refused, though syncs would work again.
    for n in 3..6 {
        let e = register.create(charge(n)).await.expect_err("stopped");
        assert_eq!(e.code(), Some(Code::Unavailable), "{e:?}");
    }
    let mut admin = t.admin().await;
    let e = admin
        .create_shop(proto::CreateShopRequest { shop_id: "late".into(), display_name: "Late".into() })
        .await
        .expect_err("stopped");
    assert_eq!(e.code(), Code::Unavailable);
    // Reads refuse too: they cannot tell durable from lost.
    let e = register.get(syncpay::domain::TradeId::parse(&before.trade_id).expect("id")).await.expect_err("stopped");
    assert_eq!(e.code(), Some(Code::Unavailable));

    // Health says so, for every service and the server as a whole.
    let mut health = tonic_health::pb::health_client::HealthClient::new(t.channel().await);
    for service in ["syncpay.v1.RegisterService", "syncpay.v1.AdminService", ""] {
        let mut updates = health
            .watch(tonic_health::pb::HealthCheckRequest { service: service.into() })
            .await
            .expect("health watch")
            .into_inner();
        let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
        let seen = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Some(update) = updates.message().await.expect("health update") {
                if update.status == not_serving {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(seen, Ok(true), "{service:?} never reported NOT_SERVING");
    }

    // A restart (without the fault) recovers; what was acknowledged is there.
    config.sync_fault = None;
    let TestServer { server, .. } = t;
    server.shutdown().await.expect("shutdown");
    let t = TestServer::start_with(config, dir.path().to_owned(), None).await;
    let register = VirtualRegister::attach(t.channel().await, &shop_token, register.id()).await.expect("attach");
    let got = register.get(syncpay::domain::TradeId::parse(&before.trade_id).expect("id")).await.expect("present");
    assert_eq!(got.trade_id, before.trade_id);
    assert!(register.create(charge(7)).await.is_ok());
    t.assert_ledger_ok().await;
}
