//! SIGTERM to the real `syncpay serve` with trades in flight: it exits 0,
//! an open WatchTrades stream ends with UNAVAILABLE (naming the cursor to
//! resume from), every acknowledged trade is there after a restart and the
//! ledger verifies. Also scrapes the Prometheus endpoint while it runs.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::binary::{http_get, Serve};
use common::TestServer;
use syncpay::client::{connect, with_token};
use syncpay::proto::{self, admin_service_client::AdminServiceClient, register_service_client::RegisterServiceClient};
use syncpay::register::{ChargeRequest, VirtualRegister};
use syncpay::sync_server::ServerConfig;
use syncpay::terminal_sim::{CarrierSim, Policy};
use tonic::Code;

const APPROVER: &str = "+818070000001";
const IGNORER: &str = "+818070000002";
/// Concurrent shops' checkouts creating trades when SIGTERM arrives.
const WRITERS: usize = 4;
/// Acknowledged trades before SIGTERM is sent.
const ACKED_BEFORE_SIGTERM: usize = 24;
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut serve = Serve::start(dir.path(), &[]);
    let admin_token = std::fs::read_to_string(dir.path().join("admin.token")).expect("admin token");
    let channel = connect(&serve.url).await.expect("connect");
    let mut admin = AdminServiceClient::new(with_token(channel.clone(), admin_token.trim()).expect("token"));
    let shop_token = common::make_shop(&mut admin, "acme", "Acme").await;
    let carrier_token = common::make_carrier(&mut admin, "docomo", "Docomo").await;
    let sim = CarrierSim::start(channel.clone(), &carrier_token).expect("sim");
    sim.add_handset(APPROVER, Policy::Approve).await.expect("handset");
    // Trades to this one stay open: they are in flight when the server stops.
    sim.add_handset(IGNORER, Policy::Ignore).await.expect("handset");
    sim.wait_connected(WAIT).await.expect("relay");
    common::top_up_through(&mut admin, APPROVER, 1_000_000, "JPY").await;
    let register = VirtualRegister::open(channel.clone(), &shop_token, "till").await.expect("register");

    // A shop following its events; it must be told the server is going.
    let mut shop = RegisterServiceClient::new(with_token(channel.clone(), &shop_token).expect("token"));
    let mut events = shop
        .watch_trades(proto::WatchTradesRequest { after_sequence: 0, register_id: String::new() })
        .await
        .expect("watch")
        .into_inner();
    let watcher = tokio::spawn(async move {
        let mut seen = 0u64;
        loop {
            match events.message().await {
                Ok(Some(e)) => seen = e.sequence,
                Ok(None) => return (seen, None),
                Err(status) => return (seen, Some(status)),
            }
        }
    });

    // Checkouts create trades until the server refuses; each acknowledged
    // trade id is recorded and announced.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (register, acked, ack_tx) = (register.clone(), acked.clone(), ack_tx.clone());
        writers.push(tokio::spawn(async move {
            for n in 0u64.. {
                let payer = if n % 2 == 0 { APPROVER } else { IGNORER };
                let charge = ChargeRequest { ttl_seconds: 600, ..ChargeRequest::new(payer, 100 + n, "JPY", "item") };
                match register.create(charge).await {
                    Ok(t) => {
                        acked.lock().expect("lock").push(t.trade_id);
                        let _ = ack_tx.send(w);
                    }
                    Err(e) => return e,
                }
            }
            unreachable!("the loop ends with the server")
        }));
    }
    drop(ack_tx);
    for _ in 0..ACKED_BEFORE_SIGTERM {
        tokio::time::timeout(WAIT, ack_rx.recv()).await.expect("acks arrive").expect("writers alive");
    }

    // The metrics endpoint reports what happened so far.
    let metrics_url = serve.metrics_url.clone();
    let (status_line, body) = tokio::task::spawn_blocking(move || http_get(&metrics_url)).await.expect("scrape");
    assert!(status_line.contains("200"), "{status_line}");
    for name in [
        "syncpay_trades_created_total",
        "syncpay_open_trades",
        "syncpay_store_sync_seconds_bucket",
        "syncpay_store_group_size_bucket",
        "syncpay_relay_connections 1",
    ] {
        assert!(body.contains(name), "metrics lack {name}:\n{body}");
    }

    serve.process.terminate();
    let status = tokio::task::spawn_blocking(move || {
        let status = serve.process.wait_exit();
        (status, serve.process.rest())
    })
    .await
    .expect("wait");
    assert_eq!(status.0.code(), Some(0), "serve exit: {:?}\n{}", status.0, status.1.join("\n"));
    assert!(status.1.iter().any(|l| l.contains("stopped cleanly")), "{:?}", status.1);

    // Every writer was stopped by the server going away (UNAVAILABLE, or
    // the client's own transport error for a call sent as the connection
    // closed), never by a refusal.
    for w in writers {
        let e = w.await.expect("writer");
        let transport = e.to_string().contains("h2 protocol error") || e.to_string().contains("transport error");
        assert!(
            matches!(e.code(), Some(Code::Unavailable | Code::Cancelled | Code::Unknown) | None) || transport,
            "a create failed for another reason than shutdown: {e:?}"
        );
    }
    let (last_seen, ended) = tokio::time::timeout(WAIT, watcher).await.expect("stream ended").expect("watcher");
    let ended = ended.expect("the stream ends with a status, not silently");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains(&format!("after_sequence={last_seen}")), "{ended:?}");
    sim.shutdown().await.expect("sim");

    // Restart on the same folder: every acknowledged trade is there.
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= ACKED_BEFORE_SIGTERM);
    let config = ServerConfig::from_data_dir(dir.path()).expect("config");
    let t = TestServer::start_with(config, dir.path().to_owned(), None).await;
    let mut shop = t.shop(&shop_token).await;
    for id in &acked {
        let trade = shop.get_trade(proto::GetTradeRequest { trade_id: id.clone() }).await;
        assert!(trade.is_ok(), "acknowledged trade {id} lost: {trade:?}");
    }
    // The cursor the stream ended with is valid after the restart.
    shop.watch_trades(proto::WatchTradesRequest { after_sequence: last_seen, register_id: String::new() })
        .await
        .expect("resume from the cursor");
    t.assert_ledger_ok().await;
    t.server.shutdown().await.expect("shutdown");
}

/// A script reads the "serving on" line and may stop the server at once:
/// SIGTERM must already be handled then (it used to be installed only after
/// that line, so an early SIGTERM killed the process with the signal's
/// default action instead of a clean stop). Several rounds, because the
/// window was narrow.
#[test]
fn sigterm_right_after_the_serving_line_is_a_clean_stop() {
    use common::binary::Running;
    const ROUNDS: usize = 8;
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().display().to_string();
        let args = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--console-listen",
            "off",
            "--data-dir",
            &data,
        ];
        let mut serve = Running::spawn(&args, "stderr");
        serve.wait_line(|l| l.strip_prefix("syncpay serving on ").map(str::to_owned));
        let pid = i32::try_from(serve.pid()).expect("pid fits");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill");
        let status = serve.wait_exit();
        assert!(status.success(), "round {round}: {status:?}");
    }
}
