//! What a shop learns about its payers: a pseudonym, stable per shop and
//! subscriber and different across shops, and nothing else. This walks
//! every message a shop can receive (CreateTrade, GetTrade, AwaitTrade,
//! CancelTrade and RefundTrade answers, WatchTrades events, ListRegisters,
//! and error messages) through every outcome, and fails if any personal
//! datum of a payer appears in the encoded bytes or the Debug text: the
//! subscriber number with and without '+', the handset public key (bytes,
//! hex, and its SHA-256 as the carrier knows it) and the carrier's id and
//! name. (No request here carries a payer IP address: the network-identity
//! flow is not built yet.)

mod common;

use std::time::Duration;

use common::manual_carrier::{sign, ManualCarrier};
use common::TestServer;
use ed25519_dalek::SigningKey;
use prost::Message;
use sha2::{Digest, Sha256};
use syncpay::domain::Decision;
use syncpay::hex::encode as hex;
use syncpay::proto::{self, TradeState};
use syncpay::sync_server::limits::Limits;
use syncpay::sync_server::rate_limit::Rate;
use tokio_stream::StreamExt;

/// A distinctive carrier id, so a match cannot be a coincidence.
const CARRIER: &str = "carrier-qz7";

struct Payer {
    number: &'static str,
    key: Option<SigningKey>,
    top_up: u64,
}

/// Everything that would identify a payer to a shop.
struct Secrets {
    texts: Vec<String>,
    bytes: Vec<Vec<u8>>,
}

impl Secrets {
    fn new(payers: &[Payer]) -> Secrets {
        let mut texts = vec![CARRIER.to_owned(), format!("Carrier {CARRIER}")];
        let mut bytes = Vec::new();
        for p in payers {
            texts.push(p.number.to_owned());
            texts.push(p.number.trim_start_matches('+').to_owned());
            if let Some(key) = &p.key {
                let public = key.verifying_key().to_bytes();
                let digest: [u8; 32] = Sha256::digest(public).into();
                for b in [public.to_vec(), digest.to_vec()] {
                    texts.push(hex(&b));
                    texts.push(hex(&b).to_uppercase());
                    bytes.push(b);
                }
            }
        }
        for t in &texts {
            bytes.push(t.as_bytes().to_vec());
        }
        Secrets { texts, bytes }
    }

    fn check_text(&self, what: &str, text: &str) {
        for t in &self.texts {
            assert!(!text.contains(t.as_str()), "{what} reveals {t:?}: {text}");
        }
    }

    fn check_message<M: Message + std::fmt::Debug>(&self, what: &str, m: &M) {
        let encoded = m.encode_to_vec();
        for b in &self.bytes {
            assert!(!encoded.windows(b.len()).any(|w| w == b.as_slice()), "{what} bytes reveal {b:?}: {m:?}");
        }
        self.check_text(what, &format!("{m:?}"));
    }

    fn check_result<M: Message + std::fmt::Debug>(
        &self,
        what: &str,
        r: &Result<tonic::Response<M>, tonic::Status>,
    ) -> usize {
        match r {
            Ok(m) => self.check_message(what, m.get_ref()),
            Err(status) => {
                self.check_text(what, status.message());
                self.check_text(what, &format!("{status:?}"));
            }
        }
        1
    }
}

fn request(register: &str, payer: &str, amount: u64, ttl: u32, key: &str) -> proto::CreateTradeRequest {
    proto::CreateTradeRequest {
        register_id: register.into(),
        amount_minor: amount,
        currency: "JPY".into(),
        description: "socks".into(),
        ttl_seconds: ttl,
        idempotency_key: key.into(),
        payer: Some(proto::create_trade_request::Payer::SubscriberNumber(payer.into())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shop_never_receives_a_payers_personal_data_in_any_outcome() {
    let payers = [
        Payer { number: "+819071234501", key: Some(SigningKey::from_bytes(&[11; 32])), top_up: 50_000 },
        Payer { number: "+819071234502", key: Some(SigningKey::from_bytes(&[12; 32])), top_up: 10 },
        Payer { number: "+819071234503", key: None, top_up: 0 },
        Payer { number: "+819071234504", key: None, top_up: 0 },
    ];
    let (rich, poor, no_handset, unknown) = (&payers[0], &payers[1], &payers[2], &payers[3]);
    let secrets = Secrets::new(&payers);
    // A low per-subscriber limit, so its refusal is walked too.
    let limits = Limits { subscriber_offers: Rate::new(6, Duration::from_secs(60)), ..common::functional_limits() };
    let t = TestServer::start_tls(&["acme", "bobs"], &[CARRIER], limits).await;
    let mut carrier = t.as_carrier(CARRIER).await;
    for p in &payers[..3] {
        carrier
            .enroll_subscriber(proto::EnrollSubscriberRequest {
                subscriber_number: p.number.into(),
                funding: proto::Funding::Wallet as i32,
                ..Default::default()
            })
            .await
            .expect("enroll");
        if let Some(key) = &p.key {
            carrier
                .enroll_handset(proto::EnrollHandsetRequest {
                    subscriber_number: p.number.into(),
                    public_key: key.verifying_key().to_bytes().to_vec(),
                })
                .await
                .expect("handset");
        }
        if p.top_up > 0 {
            t.top_up(p.number, p.top_up, "JPY").await;
        }
    }
    let mut relay = ManualCarrier::connect(t.as_carrier(CARRIER).await).await;
    let mut shop = t.as_shop("acme").await;
    let mut checked = 0;
    let register = shop.open_register(proto::OpenRegisterRequest { label: "till".into() }).await;
    checked += secrets.check_result("OpenRegister", &register);
    let register = register.expect("open").into_inner().register_id;

    let mut trades = Vec::new();
    let creator = shop.clone();
    let create = |r: proto::CreateTradeRequest| {
        let mut shop = creator.clone();
        async move { shop.create_trade(r).await }
    };
    // SETTLED, then refunded in part.
    let settled = create(request(&register, rich.number, 2000, 60, "order-1")).await;
    checked += secrets.check_result("CreateTrade", &settled);
    let settled = settled.expect("create").into_inner();
    let (delivery, offer) = relay.offer(&settled.trade_id).await;
    relay.ack(delivery).await;
    relay
        .answer(&settled.trade_id, Decision::Approve, sign(rich.key.as_ref().expect("key"), &offer, Decision::Approve))
        .await;
    assert!(relay.answer_result(&settled.trade_id).await.accepted);
    let refund = proto::RefundTradeRequest {
        trade_id: settled.trade_id.clone(),
        amount_minor: 500,
        idempotency_key: "r-1".into(),
    };
    checked += secrets.check_result("RefundTrade", &shop.refund_trade(refund.clone()).await);
    checked += secrets.check_result("RefundTrade replay", &shop.refund_trade(refund.clone()).await);
    let conflict = proto::RefundTradeRequest { amount_minor: 501, ..refund.clone() };
    checked += secrets.check_result("RefundTrade key conflict", &shop.refund_trade(conflict).await);
    let too_much = proto::RefundTradeRequest { amount_minor: 1_000_000, idempotency_key: String::new(), ..refund };
    checked += secrets.check_result("RefundTrade beyond the amount", &shop.refund_trade(too_much).await);
    trades.push(settled.trade_id.clone());

    // DECLINED.
    let declined = create(request(&register, rich.number, 300, 60, "")).await.expect("create").into_inner();
    let (_, offer) = relay.offer(&declined.trade_id).await;
    relay
        .answer(&declined.trade_id, Decision::Decline, sign(rich.key.as_ref().expect("key"), &offer, Decision::Decline))
        .await;
    relay.answer_result(&declined.trade_id).await;
    trades.push(declined.trade_id);

    // FAILED: bad signature, insufficient funds, no handset, unknown payer.
    let forged = create(request(&register, rich.number, 300, 60, "")).await.expect("create").into_inner();
    relay.answer(&forged.trade_id, Decision::Approve, vec![7u8; 64]).await;
    relay.answer_result(&forged.trade_id).await;
    trades.push(forged.trade_id);
    let broke = create(request(&register, poor.number, 300, 60, "")).await.expect("create").into_inner();
    let (_, offer) = relay.offer(&broke.trade_id).await;
    relay
        .answer(&broke.trade_id, Decision::Approve, sign(poor.key.as_ref().expect("key"), &offer, Decision::Approve))
        .await;
    relay.answer_result(&broke.trade_id).await;
    trades.push(broke.trade_id);
    for p in [no_handset, unknown] {
        let r = create(request(&register, p.number, 300, 60, "")).await;
        checked += secrets.check_result("CreateTrade (refused payer)", &r);
        trades.push(r.expect("create").into_inner().trade_id);
    }

    // CANCELLED, and cancelling it again.
    let cancelled = create(request(&register, rich.number, 300, 60, "")).await.expect("create").into_inner();
    let r = shop.cancel_trade(proto::CancelTradeRequest { trade_id: cancelled.trade_id.clone() }).await;
    checked += secrets.check_result("CancelTrade", &r);
    let r = shop.cancel_trade(proto::CancelTradeRequest { trade_id: cancelled.trade_id.clone() }).await;
    checked += secrets.check_result("CancelTrade of a final trade", &r);
    trades.push(cancelled.trade_id);

    // EXPIRED (the shortest lifetime), awaited.
    let expiring = create(request(&register, rich.number, 300, 1, "")).await.expect("create").into_inner();
    let r = shop.await_trade(proto::AwaitTradeRequest { trade_id: expiring.trade_id.clone(), wait_ms: 5000 }).await;
    checked += secrets.check_result("AwaitTrade", &r);
    assert_eq!(r.expect("await").into_inner().state, TradeState::Expired as i32);
    trades.push(expiring.trade_id);

    // Refusals that involve the payer: an idempotency conflict and the
    // per-subscriber limit.
    let r = create(request(&register, poor.number, 2000, 60, "order-1")).await;
    checked += secrets.check_result("CreateTrade key conflict", &r);
    let mut limited = false;
    for _ in 0..8 {
        let r = create(request(&register, rich.number, 100, 60, "")).await;
        checked += secrets.check_result("CreateTrade", &r);
        if let Err(s) = &r {
            assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
            limited = true;
            break;
        }
    }
    assert!(limited, "the per-subscriber limit never triggered");

    // Every trade as GetTrade and AwaitTrade show it.
    for id in &trades {
        checked +=
            secrets.check_result("GetTrade", &shop.get_trade(proto::GetTradeRequest { trade_id: id.clone() }).await);
        let r = shop.await_trade(proto::AwaitTradeRequest { trade_id: id.clone(), wait_ms: 1 }).await;
        checked += secrets.check_result("AwaitTrade", &r);
    }
    checked += secrets.check_result("ListRegisters", &shop.list_registers(proto::ListRegistersRequest {}).await);

    // The whole event stream.
    let mut events = shop
        .watch_trades(proto::WatchTradesRequest { after_sequence: 0, register_id: String::new() })
        .await
        .expect("watch")
        .into_inner();
    let mut states = std::collections::BTreeSet::new();
    let mut refunded = false;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(500), events.next()).await {
        let event = event.expect("event");
        secrets.check_message("TradeEvent", &event);
        checked += 1;
        refunded |= event.kind == proto::EventKind::Refunded as i32;
        states.insert(event.trade.expect("trade").state);
    }
    for s in [
        TradeState::Pending,
        TradeState::Offered,
        TradeState::Settled,
        TradeState::Declined,
        TradeState::Failed,
        TradeState::Cancelled,
        TradeState::Expired,
    ] {
        assert!(states.contains(&(s as i32)), "no {s:?} event walked");
    }
    assert!(refunded, "no REFUNDED event walked");
    assert!(checked > 30, "only {checked} messages checked");

    // The pseudonym is stable for one shop and differs across shops.
    let first = shop.get_trade(proto::GetTradeRequest { trade_id: trades[0].clone() }).await.expect("get").into_inner();
    let second =
        shop.get_trade(proto::GetTradeRequest { trade_id: trades[1].clone() }).await.expect("get").into_inner();
    assert_eq!(first.payer_pseudonym, second.payer_pseudonym);
    let mut other = t.as_shop("bobs").await;
    let reg_b = other.open_register(proto::OpenRegisterRequest { label: "b".into() }).await.expect("open").into_inner();
    let elsewhere =
        other.create_trade(request(&reg_b.register_id, no_handset.number, 100, 60, "")).await.expect("create");
    let here = shop.get_trade(proto::GetTradeRequest { trade_id: trades[4].clone() }).await.expect("get").into_inner();
    assert_ne!(elsewhere.into_inner().payer_pseudonym, here.payer_pseudonym);
}
