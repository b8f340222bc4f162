//! Deadlines hold for every way a trade can end, not only for answers. An
//! answer that arrives at or after the deadline expires the trade on the
//! spot (`store::commands::answer` checks `now >= expires_at`); a shop's
//! cancel must meet the same deadline, or whether an overdue trade ends
//! CANCELLED or EXPIRED depends on how far behind the expiry sweeper is.
//!
//! Found while writing `carrier_faults`; fails on f66f820 (see the report
//! on the `faults` branch): `store::commands::cancel` finishes the trade
//! with no deadline check, so a cancel inside the sweeper's lag (up to the
//! 100 ms sweep interval, more when the writer is busy) wins.

mod common;

use common::now_ms;

use std::time::Duration;

use common::backends::{backends, BackendFactory};
use common::world::{world, World};
use syncpay::domain::TradeId;
use syncpay::proto::{self, TradeState as S};
use syncpay::register::ChargeRequest;
use syncpay::terminal_sim::Policy;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(15);
const IGNORER: &str = "+818050000001";
/// Each trade gives the race one more chance to show; eight spread their
/// deadlines over about one sweep interval.
const TRADES: usize = 8;

fn state(t: &proto::Trade) -> S {
    S::try_from(t.state).unwrap_or(S::Unspecified)
}

#[tokio::test]
async fn a_cancel_after_the_deadline_does_not_end_the_trade_cancelled() {
    for backend in backends() {
        a_cancel_after_the_deadline_does_not_end_the_trade_cancelled_on(backend).await;
    }
}

async fn a_cancel_after_the_deadline_does_not_end_the_trade_cancelled_on(backend: &'static BackendFactory) {
    let World { t: _server, sim, register, .. } = world(backend, &[(IGNORER, Policy::Ignore, 0)]).await;

    let mut created = Vec::new();
    for _ in 0..TRADES {
        let trade = register
            .create(ChargeRequest { ttl_seconds: 1, ..ChargeRequest::new(IGNORER, 100, "JPY", "too late to cancel") })
            .await
            .expect("create");
        created.push(trade);
    }
    let mut broken = Vec::new();
    for trade in &created {
        let id = TradeId::parse(&trade.trade_id).expect("id");
        // The race is with the server's clock, which is ours: waiting for
        // the deadline is the point of the test, not a way to synchronise
        // with another task.
        let until_deadline = trade.expires_at_ms + 1 - now_ms();
        if let Ok(ms) = u64::try_from(until_deadline) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let cancelled_at = now_ms();
        let reply = register.cancel(id).await;
        let done = register.await_final(id, WAIT).await.expect("final");
        let cancel_taken = match &reply {
            Ok(t) => state(t) == S::Cancelled,
            Err(e) => {
                assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
                false
            }
        };
        if cancel_taken || state(&done) != S::Expired {
            broken.push(format!(
                "{}: cancelled {} ms after its deadline, ended {:?} {} ms after it",
                done.trade_id,
                cancelled_at - done.expires_at_ms,
                state(&done),
                done.finished_at_ms - done.expires_at_ms
            ));
        }
    }
    sim.shutdown().await.expect("sim stop");
    assert!(
        broken.is_empty(),
        "{} of {TRADES} overdue trades were cancelled instead of expired:\n{}",
        broken.len(),
        broken.join("\n")
    );
}
