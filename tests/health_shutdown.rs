//! The standard health service on graceful shutdown: every syncpay service
//! and the server as a whole go from SERVING to NOT_SERVING before the
//! listener closes, so load balancers drain first. (The fail-stop case is
//! in `storage_fault.rs`.)

mod common;

use std::time::Duration;

use common::TestServer;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const SERVICES: [&str; 4] = ["", "syncpay.v1.RegisterService", "syncpay.v1.CarrierService", "syncpay.v1.AdminService"];
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn graceful_shutdown_turns_every_service_not_serving() {
    let t = TestServer::start().await;
    let mut health = HealthClient::new(t.channel().await);
    let mut watches = Vec::new();
    for service in SERVICES {
        let check = health.check(HealthCheckRequest { service: service.into() }).await.expect("check").into_inner();
        assert_eq!(check.status, ServingStatus::Serving as i32, "{service:?}");
        let mut updates =
            health.watch(HealthCheckRequest { service: service.into() }).await.expect("watch").into_inner();
        let first = updates.message().await.expect("update").expect("first status");
        assert_eq!(first.status, ServingStatus::Serving as i32, "{service:?}");
        watches.push((service, updates));
    }

    let shutdown = tokio::spawn(t.server.shutdown());
    for (service, updates) in &mut watches {
        let next = tokio::time::timeout(WAIT, updates.message()).await.expect("in time").expect("update");
        let status = next.expect("a status before the stream ends").status;
        assert_eq!(status, ServingStatus::NotServing as i32, "{service:?}");
    }
    // Health watches are the clients' to end; once they do, shutdown completes
    // well inside its grace period.
    drop(watches);
    drop(health);
    let done = tokio::time::timeout(WAIT, shutdown).await.expect("shutdown within the bound").expect("task");
    done.expect("clean shutdown");
}
