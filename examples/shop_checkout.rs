//! A shop's checkout integrated with syncpay through `VirtualRegister`:
//! open (or reuse) a register, charge the buyer, show the binding code while
//! waiting, and act on the outcome.
//!
//! Against a running server (see the README's tour):
//!
//! ```sh
//! SYNCPAY_SERVER=http://127.0.0.1:7700 SYNCPAY_SHOP_TOKEN_FILE=shop.token \
//!   cargo run --example shop_checkout -- +819000000001 1200 JPY "Two books"
//! ```
//!
//! Set SYNCPAY_REGISTER to reuse a register instead of opening one.

use std::time::Duration;

use syncpay::domain::{RegisterId, TradeId};
use syncpay::register::{trade_state, ChargeRequest, RegisterError, VirtualRegister};

/// How long past the trade's own deadline we keep waiting for its final
/// state (the server's expiry sweep needs a moment).
const SETTLE_MARGIN: Duration = Duration::from_secs(15);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [payer, amount, currency, description] = args.as_slice() else {
        eprintln!("usage: shop_checkout PAYER AMOUNT_MINOR CURRENCY DESCRIPTION");
        std::process::exit(2);
    };
    let server = std::env::var("SYNCPAY_SERVER").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let token_file = std::env::var("SYNCPAY_SHOP_TOKEN_FILE").unwrap_or_else(|_| "shop.token".into());
    let token = std::fs::read_to_string(&token_file)?.trim().to_owned();
    let channel = syncpay::client::connect(&server).await?;

    // A register is a till: open one per checkout process and keep its id.
    let register = match std::env::var("SYNCPAY_REGISTER") {
        Ok(id) => VirtualRegister::attach(channel, &token, RegisterId::parse(&id)?).await?,
        Err(_) => VirtualRegister::open(channel, &token, "Web checkout").await?,
    };
    println!("register {} ({})", register.id(), register.label());

    // The order number as idempotency key: a retry after a timeout returns
    // the same trade instead of charging twice.
    let request = ChargeRequest {
        idempotency_key: Some(format!("order-{}", std::process::id())),
        ..ChargeRequest::new(payer, amount.parse()?, currency, description)
    };
    let created = register.create(request).await?;
    // Show this on the checkout page: the buyer sees the same code on the
    // handset and can tell this purchase from someone else's push.
    println!("trade {} — confirm on your phone, code {}", created.trade_id, created.binding_code);

    let id = TradeId::parse(&created.trade_id)?;
    let ttl_ms = u64::try_from(created.expires_at_ms - created.created_at_ms).unwrap_or(0);
    let trade = match register.await_final(id, Duration::from_millis(ttl_ms) + SETTLE_MARGIN).await {
        Ok(trade) => trade,
        Err(RegisterError::Timeout) => {
            // Not an answer: ask again later (GetTrade) before shipping.
            println!("no outcome yet; check the trade later");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    match trade_state(&trade) {
        Some(syncpay::domain::TradeState::Settled) => {
            let receipt = trade.receipt.as_ref().map_or(0, |r| r.signature.len());
            println!("paid by {} (signed receipt, {receipt}-byte signature): ship it", trade.payer_pseudonym);
        }
        Some(state) => println!("not paid: {}", state.name()),
        None => println!("unknown state {}", trade.state),
    }
    Ok(())
}
