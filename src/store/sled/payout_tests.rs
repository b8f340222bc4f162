//! Store tests of shop payouts and the operator's tools on a real sled
//! store: exact amounts, never more than the balance (concurrent payouts
//! included), idempotent retries, VerifyLedger over payouts (each check
//! failing on a planted inconsistency), suspension, credential rotation
//! and a trade's history.

use std::sync::Arc;

use super::codec::HistoryRef;
use super::tests::{fixture as base_fixture, F};
use super::*;
use crate::domain::receipt::ReceiptSigner;
use crate::domain::{Amount, Currency, Decision, TradeState};
use crate::store::fixture::{jpy, sign};
use crate::store::{
    EventKind, NewPayout, PaidOut, PayerRef, PayoutAmount, PayoutField, PayoutRecord, PostingKind, ShopPayoutRefusal,
    Store, TradeHistory, TradeRequest,
};

const T0: UnixMs = UnixMs(1_800_000_000_000);

/// The store tests' fixture with the payer's wallet topped up.
type P = F;

async fn fixture() -> P {
    let p = base_fixture().await;
    p.top_up(1_000_000).await;
    p
}

impl F {
    async fn open_trade(&self, minor: u64) -> Result<TradeRecord, StoreError<CreateTradeRefusal>> {
        let trade = NewTrade {
            shop: self.shop.clone(),
            trade_id: TradeId::generate().expect("id"),
            request: TradeRequest {
                register: self.register,
                payer: PayerRef::Number(self.payer.clone()),
                amount: Amount::new(minor),
                currency: jpy(),
                description: "book".into(),
                ttl_ms: 60_000,
            },
            idempotency_key: None,
            binding_code: "123456".into(),
            max_open_per_register: 100,
            offer_gate: None,
            asked: None,
            now: T0,
        };
        Ok(self.store.create_trade(trade).await?.trade)
    }

    async fn approve(&self, trade: &TradeRecord) -> TradeRecord {
        let answer = HandsetAnswer {
            carrier: self.carrier.clone(),
            trade: trade.id,
            decision: Decision::Approve,
            signature: sign(&self.key, trade, Decision::Approve),
            now: T0,
            checked: None,
            signer: Arc::new(ReceiptSigner::from_seed([77; 32], T0)),
        };
        let out = self.store.submit_answer(answer).await.expect("queued").outcome().await.expect("answer");
        out.trade.expect("settled")
    }

    /// Settles a trade of `minor` for the shop.
    async fn sale(&self, minor: u64) -> TradeRecord {
        let t = self.open_trade(minor).await.expect("create");
        let settled = self.approve(&t).await;
        assert_eq!(settled.state, TradeState::Settled);
        settled
    }

    fn payout(&self, amount: PayoutAmount, key: &str) -> NewPayout {
        NewPayout { shop: self.shop.clone(), currency: jpy(), amount, idempotency_key: key.to_owned(), now: T0 }
    }

    async fn pay(&self, minor: u64, key: &str) -> Result<PaidOut, StoreError<ShopPayoutRefusal>> {
        self.store.payout_shop(self.payout(PayoutAmount::Exact(Amount::new(minor)), key)).await
    }

    fn payable(&self) -> AccountName {
        AccountName::ShopPayable(self.shop.clone(), jpy())
    }

    async fn violations(&self) -> Vec<String> {
        self.store.verify().await.expect("verify").violations
    }
}

#[tokio::test]
async fn a_payout_moves_exactly_its_amount_and_verifies() {
    let p = fixture().await;
    p.sale(1_200).await;
    p.sale(800).await;
    let paid = p.pay(1_500, "po-1").await.expect("payout");
    assert!(!paid.replayed);
    assert_eq!(paid.payout.amount, Amount::new(1_500));
    assert_eq!(paid.payout.reference, format!("SYNCPAY-PO-{:011}", paid.payout.payout_id));
    assert_eq!(paid.payable.balance.net(), 500);
    assert_eq!(p.net(&p.payable()).await, 500);
    assert_eq!(p.net(&AccountName::SystemPayout(jpy())).await, 1_500);
    // Its id is its posting set's: two legs, shop payable → payout account.
    let legs: Vec<_> = p
        .store
        .postings(0, 1000)
        .await
        .expect("postings")
        .into_iter()
        .filter(|x| x.set_id == paid.payout.payout_id)
        .collect();
    assert_eq!(legs.len(), 2);
    assert!(legs.iter().all(|l| l.kind == PostingKind::Payout && l.amount == Amount::new(1_500)));
    // It is on the shop's payout report.
    let entries = p.store.payout_entries(&p.shop, T0, UnixMs(T0.0 + 1)).await.expect("entries");
    assert!(entries.iter().any(|e| matches!(e,
        PayoutEntry::Payout { payout_id, amount, reference, .. }
            if *payout_id == paid.payout.payout_id && *amount == Amount::new(1_500) && *reference == paid.payout.reference)));
    // The rest, as the whole balance.
    let rest = p.store.payout_shop(p.payout(PayoutAmount::WholeBalance, "po-2")).await.expect("rest");
    assert_eq!(rest.payout.amount, Amount::new(500));
    assert_eq!(p.net(&p.payable()).await, 0);
    assert_eq!(p.violations().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_payout_never_exceeds_the_balance() {
    let p = fixture().await;
    p.sale(1_000).await;
    assert_eq!(
        p.pay(1_001, "too-much").await.err(),
        Some(StoreError::Refused(ShopPayoutRefusal::BalanceShort { available: Amount::new(1_000) }))
    );
    p.pay(1_000, "all").await.expect("exact");
    assert_eq!(
        p.store.payout_shop(p.payout(PayoutAmount::WholeBalance, "nothing")).await.err(),
        Some(StoreError::Refused(ShopPayoutRefusal::BalanceShort { available: Amount::ZERO }))
    );
    let other = NewPayout {
        currency: Currency::parse("USD").expect("usd"),
        ..p.payout(PayoutAmount::Exact(Amount::new(1)), "usd")
    };
    assert!(matches!(
        p.store.payout_shop(other).await,
        Err(StoreError::Refused(ShopPayoutRefusal::BalanceShort { .. }))
    ));
    assert_eq!(p.violations().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_payouts_never_overdraw() {
    let p = Arc::new(fixture().await);
    p.sale(10_000).await;
    // 8 tasks × 5 payouts of 300 each ask for 12 000 of a 10 000 balance.
    let mut tasks = Vec::new();
    for task in 0..8 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let mut paid = 0u64;
            for n in 0..5 {
                match p.pay(300, &format!("t{task}-{n}")).await {
                    Ok(out) => paid += out.payout.amount.minor(),
                    Err(StoreError::Refused(ShopPayoutRefusal::BalanceShort { .. })) => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
            paid
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    // 33 payouts of 300 fit in 10 000; the 34th would not.
    assert_eq!(total, 9_900);
    assert_eq!(p.net(&p.payable()).await, 100);
    assert_eq!(p.net(&AccountName::SystemPayout(jpy())).await, 9_900);
    assert_eq!(p.violations().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_repeated_key_returns_the_original_and_a_conflicting_one_names_the_field() {
    let p = fixture().await;
    p.sale(2_000).await;
    let first = p.pay(700, "po-1").await.expect("payout");
    let again = p.pay(700, "po-1").await.expect("retry");
    assert!(again.replayed);
    assert_eq!(again.payout, first.payout);
    assert_eq!(p.net(&p.payable()).await, 1_300, "a retry pays nothing");
    assert_eq!(
        p.pay(701, "po-1").await.err(),
        Some(StoreError::Refused(ShopPayoutRefusal::Differs(PayoutField::Amount)))
    );
    let usd = NewPayout {
        currency: Currency::parse("USD").expect("usd"),
        ..p.payout(PayoutAmount::Exact(Amount::new(700)), "po-1")
    };
    assert_eq!(
        p.store.payout_shop(usd).await.err(),
        Some(StoreError::Refused(ShopPayoutRefusal::Differs(PayoutField::Currency)))
    );
    let other_shop = NewPayout {
        shop: ShopId::parse("other").expect("id"),
        ..p.payout(PayoutAmount::Exact(Amount::new(700)), "po-1")
    };
    assert_eq!(
        p.store.payout_shop(other_shop).await.err(),
        Some(StoreError::Refused(ShopPayoutRefusal::Differs(PayoutField::Shop)))
    );
    let whole = p.store.payout_shop(p.payout(PayoutAmount::WholeBalance, "po-1")).await.err();
    assert_eq!(whole, Some(StoreError::Refused(ShopPayoutRefusal::Differs(PayoutField::Amount))));
    assert_eq!(p.net(&p.payable()).await, 1_300);
}

/// Rewrites a stored payout record behind the ledger's back.
fn plant_payout(p: &P, payout: &PayoutRecord) {
    p.sled
        .tree(T::Network)
        .insert(keys::net::payout_record(payout.payout_id), codec::encode(payout).expect("encode"))
        .expect("insert");
}

#[tokio::test]
async fn verify_catches_a_payout_that_disagrees_with_its_postings() {
    let p = fixture().await;
    p.sale(1_000).await;
    let paid = p.pay(400, "po").await.expect("payout");
    assert_eq!(p.violations().await, Vec::<String>::new());
    let mut planted = paid.payout.clone();
    planted.amount = Amount::new(40);
    plant_payout(&p, &planted);
    let v = p.violations().await;
    assert!(v.iter().any(|v| v.contains("disagrees with its postings")), "{v:?}");
    assert!(v.iter().any(|v| v.contains("payouts sum to 40")), "{v:?}");
}

#[tokio::test]
async fn verify_catches_a_payout_set_without_its_record() {
    let p = fixture().await;
    p.sale(1_000).await;
    let paid = p.pay(400, "po").await.expect("payout");
    p.sled.tree(T::Network).remove(keys::net::payout_record(paid.payout.payout_id)).expect("remove");
    let v = p.violations().await;
    assert!(v.iter().any(|v| v.contains("is a payout without a payout record")), "{v:?}");
}

#[tokio::test]
async fn verify_catches_a_payout_beyond_the_balance() {
    let p = fixture().await;
    p.sale(1_000).await;
    let paid = p.pay(400, "po").await.expect("payout");
    // Plant a payout of 2 000 (its record, both legs and both totals,
    // consistent with each other) that the balance never covered.
    let mut postings = p.store.postings(0, 1000).await.expect("postings");
    postings.retain(|x| x.set_id == paid.payout.payout_id);
    let next_set = paid.payout.payout_id + 100;
    let first_planted = postings.iter().map(|x| x.posting_id).max().expect("legs") + 100;
    for (posting_id, leg) in (first_planted..).zip(postings.iter()) {
        let mut planted = leg.clone();
        planted.set_id = next_set;
        planted.posting_id = posting_id;
        planted.amount = Amount::new(2_000);
        p.sled
            .tree(T::Postings)
            .insert(planted.posting_id.to_be_bytes(), codec::encode(&planted).expect("encode"))
            .expect("insert");
        let mut account = p.store.account(&leg.account).await.expect("read").expect("exists");
        account.balance = account.balance.post(leg.side, Amount::new(2_000)).expect("fits");
        p.sled
            .tree(T::Accounts)
            .insert(keys::account(&leg.account), codec::encode(&account).expect("encode"))
            .expect("insert");
    }
    let planted = PayoutRecord { payout_id: next_set, amount: Amount::new(2_000), ..paid.payout.clone() };
    plant_payout(&p, &planted);
    let v = p.violations().await;
    assert!(v.iter().any(|v| v.contains("shop:acme:JPY") && v.contains("below zero")), "{v:?}");
    assert_eq!(v.len(), 1, "only the overdraft: {v:?}");
}

#[tokio::test]
async fn a_suspended_shop_takes_no_new_trades_but_its_open_ones_settle_and_refunds_work() {
    let p = fixture().await;
    let sold = p.sale(500).await;
    let open = p.open_trade(700).await.expect("open before the suspension");
    let status = p.store.set_shop_suspended(&p.shop, true, T0).await.expect("suspend");
    assert_eq!(status.suspended_at, Some(T0));
    assert_eq!(p.open_trade(100).await.err(), Some(StoreError::Refused(CreateTradeRefusal::ShopSuspended)));
    // The open trade still settles; refunds still work.
    assert_eq!(p.approve(&open).await.state, TradeState::Settled);
    let refund =
        NewRefund { shop: p.shop.clone(), trade: sold.id, amount: Amount::new(100), idempotency_key: None, now: T0 };
    p.store.refund(refund).await.expect("refund while suspended");
    let listed = p.store.shops(None, 10).await.expect("shops");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].suspended_at, Some(T0));
    let resumed = p.store.set_shop_suspended(&p.shop, false, T0).await.expect("resume");
    assert_eq!(resumed.suspended_at, None);
    p.open_trade(100).await.expect("trades again");
    assert_eq!(p.violations().await, Vec::<String>::new());
}

#[tokio::test]
async fn rotating_a_credential_refuses_the_old_token_at_once() {
    let p = fixture().await;
    let party = Principal::Shop(p.shop.clone());
    // The fixture's shop token hash is not known here: find it.
    let old: Vec<[u8; 32]> = p
        .sled
        .tree(T::Credentials)
        .iter()
        .filter_map(|i| i.ok())
        .filter(|(_, v)| codec::decode::<Principal>(v).ok() == Some(party.clone()))
        .filter_map(|(k, _)| <[u8; 32]>::try_from(k.as_ref()).ok())
        .collect();
    assert_eq!(old.len(), 1);
    assert_eq!(p.store.principal(&old[0]).expect("read"), Some(party.clone()));
    p.store.rotate_credential(&party, [9; 32]).await.expect("rotate");
    assert_eq!(p.store.principal(&old[0]).expect("read"), None);
    assert_eq!(p.store.principal(&[9; 32]).expect("read"), Some(party.clone()));
    assert_eq!(
        p.store.rotate_credential(&Principal::Shop(ShopId::parse("nobody").expect("id")), [8; 32]).await.err(),
        Some(StoreError::Refused(crate::store::RotateCredentialRefusal::UnknownParty))
    );
}

#[tokio::test]
async fn a_trade_history_has_every_event_and_posting() {
    let p = fixture().await;
    let sold = p.sale(900).await;
    let refund =
        NewRefund { shop: p.shop.clone(), trade: sold.id, amount: Amount::new(200), idempotency_key: None, now: T0 };
    let refunded = p.store.refund(refund).await.expect("refund");
    let h = p.store.trade_history(&sold.id, 100).await.expect("read").expect("exists");
    let states: Vec<TradeState> = h.events.iter().map(|e| e.trade.state).collect();
    assert_eq!(states, [TradeState::Pending, TradeState::Settled, TradeState::Settled]);
    assert_eq!(h.events[2].kind, EventKind::Refunded { amount: Amount::new(200), refund_id: refunded.refund_id });
    let kinds: Vec<PostingKind> = h.postings.iter().map(|x| x.kind).collect();
    assert_eq!(kinds.iter().filter(|k| **k == PostingKind::Settlement).count(), 2);
    assert_eq!(kinds.iter().filter(|k| **k == PostingKind::Refund).count(), 2);
    assert!(h.postings.iter().all(|x| x.trade == Some(sold.id)));
    assert!(p.store.trade_history(&TradeId::from_bytes([1; 16]), 100).await.expect("read").is_none());
}

#[tokio::test]
async fn verify_catches_a_zero_payout_in_a_currency_no_payout_account_holds() {
    let p = fixture().await;
    p.sale(1_000).await;
    let paid = p.pay(400, "po").await.expect("payout");
    let usd = Currency::parse("USD").expect("usd");
    let planted = PayoutRecord { payout_id: 9_999, amount: Amount::ZERO, currency: usd, ..paid.payout.clone() };
    plant_payout(&p, &planted);
    let v = p.violations().await;
    for want in [
        "payout 9999 has no posting set",
        "payout 9999 is of zero",
        "payouts in USD sum to 0 but no payout account holds them",
    ] {
        assert!(v.iter().any(|v| v == want), "want {want:?} in {v:?}");
    }
}

impl F {
    /// Makes a trade as stores kept it before trade records carried their
    /// history: the record at version 2, and its events and postings under
    /// index keys, the first `first_layout` of them under the first
    /// layout's (`H` ‖ trade), the rest under the time-ordered one's.
    fn as_index_era(&self, trade: &TradeRecord, first_layout: usize) {
        let trades = self.sled.tree(T::Trades);
        let stored = trades.get(trade.id.as_bytes()).expect("read").expect("stored");
        let (record, items) = codec::decode_trade_with_refs(&stored).expect("decode");
        trades.insert(trade.id.as_bytes(), codec::encode_trade_v2(&record)).expect("insert");
        for (i, item) in items.into_iter().enumerate() {
            let (tag, n) = (item.tag(), item.n());
            let prefix = if i < first_layout {
                keys::net::trade_history_by_id(&trade.id)
            } else {
                keys::net::trade_history(&trade.id, trade.created_at)
            };
            self.sled.tree(T::Network).insert([&prefix[..], &[tag], &n.to_be_bytes()].concat(), &[][..]).expect("key");
        }
    }

    /// The trade's history index keys, of both layouts.
    fn index_keys(&self, trade: &TradeRecord) -> usize {
        let index = self.sled.tree(T::Network);
        index.scan_prefix(keys::net::trade_history_by_id(&trade.id)).count()
            + index.scan_prefix(keys::net::trade_history(&trade.id, trade.created_at)).count()
    }

    fn refunds(&self, trade: &TradeRecord, minor: u64) -> NewRefund {
        NewRefund {
            shop: self.shop.clone(),
            trade: trade.id,
            amount: Amount::new(minor),
            idempotency_key: None,
            now: T0,
        }
    }
}

/// A trade's record carries its history: a settled and refunded trade
/// writes no index key (five per trade were half of the store's bytes,
/// issue 14), and its record at version 3.
#[tokio::test]
async fn a_trade_carries_its_history_in_its_own_record() {
    let p = fixture().await;
    let sold = p.sale(900).await;
    p.store.refund(p.refunds(&sold, 200)).await.expect("refund");
    assert_eq!(p.index_keys(&sold), 0);
    let stored = p.sled.tree(T::Trades).get(sold.id.as_bytes()).expect("read").expect("stored");
    assert_eq!(stored[0], codec::TRADE_VERSION);
    let (_, items) = codec::decode_trade_with_refs(&stored).expect("decode");
    let h = p.store.trade_history(&sold.id, 100).await.expect("read").expect("exists");
    let mut want: Vec<HistoryRef> = h.events.iter().map(|e| HistoryRef::Event(e.seq)).collect();
    want.extend(h.postings.iter().map(|x| HistoryRef::Posting(x.posting_id)));
    let mut have = items.clone();
    have.sort();
    assert_eq!((have, h.events.len(), h.postings.len()), (want, 3, 4));
}

/// Stores written before trade records carried refs kept each trade's
/// history under index keys, of the first layout (`H` ‖ trade ‖ …) or the
/// time-ordered one: both are still read, and what happens to the trade
/// later goes to its record and is read with them, in order.
#[tokio::test]
async fn a_history_under_the_index_layouts_is_still_read_and_added_to() {
    let p = fixture().await;
    let sold = p.sale(900).await;
    let before = p.store.trade_history(&sold.id, 100).await.expect("read").expect("exists");
    assert_eq!((before.events.len(), before.postings.len()), (2, 2));
    p.as_index_era(&sold, 3);
    assert_eq!(p.index_keys(&sold), 4, "two events and two postings");
    let read = p.store.trade_history(&sold.id, 100).await.expect("read").expect("exists");
    let ids = |h: &TradeHistory| h.postings.iter().map(|x| (x.posting_id, x.set_id, x.amount)).collect::<Vec<_>>();
    assert_eq!(read.trade, before.trade);
    assert_eq!(read.events, before.events);
    assert_eq!(ids(&read), ids(&before));

    p.store.refund(p.refunds(&sold, 200)).await.expect("refund");
    assert_eq!(p.index_keys(&sold), 4, "the refund's event and postings are in the record");
    let after = p.store.trade_history(&sold.id, 100).await.expect("read").expect("exists");
    let states: Vec<TradeState> = after.events.iter().map(|e| e.trade.state).collect();
    assert_eq!(states, [TradeState::Pending, TradeState::Settled, TradeState::Settled]);
    assert!(after.events.windows(2).all(|w| w[0].seq < w[1].seq), "{:?}", after.events);
    assert_eq!(after.postings.len(), 4);
    assert!(after.postings.windows(2).all(|w| w[0].posting_id < w[1].posting_id));
    assert_eq!(ids(&after)[..2], ids(&before)[..]);
}

/// A trade refunded more often than its record has room for: the rest of
/// its history goes to index keys, the record stays bounded, and the
/// history reads whole and in order (and at most `limit` of each).
#[tokio::test]
async fn a_trade_refunded_many_times_keeps_a_bounded_record_and_its_whole_history() {
    let p = fixture().await;
    let sold = p.sale(900).await;
    let mut refund_ids = Vec::new();
    for _ in 0..40 {
        refund_ids.push(p.store.refund(p.refunds(&sold, 1)).await.expect("refund").refund_id);
    }
    let stored = p.sled.tree(T::Trades).get(sold.id.as_bytes()).expect("read").expect("stored");
    assert!(codec::trade_refs(&stored).expect("refs").len() <= codec::MAX_TRADE_REFS);
    let (_, carried) = codec::decode_trade_with_refs(&stored).expect("decode");
    let spilled = p.index_keys(&sold);
    assert!(spilled > 0, "some of the history is under index keys");
    assert_eq!(carried.len() + spilled, 42 + 82, "each event and posting once");
    let h = p.store.trade_history(&sold.id, 1000).await.expect("read").expect("exists");
    assert_eq!((h.events.len(), h.postings.len()), (42, 82));
    assert!(h.events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(h.postings.windows(2).all(|w| w[0].posting_id < w[1].posting_id));
    let refunds: Vec<u64> = h
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Refunded { refund_id, .. } => Some(refund_id),
            EventKind::StateChanged => None,
        })
        .collect();
    assert_eq!(refunds, refund_ids);
    let few = p.store.trade_history(&sold.id, 10).await.expect("read").expect("exists");
    assert_eq!(few.events[..], h.events[..10]);
    assert_eq!(
        few.postings.iter().map(|x| x.posting_id).collect::<Vec<_>>(),
        h.postings[..10].iter().map(|x| x.posting_id).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_store_from_before_the_history_index_gets_it_at_open() {
    let p = fixture().await;
    let sold = p.sale(900).await;
    let before = p.store.trade_history(&sold.id, 100).await.expect("read").expect("exists");
    assert_eq!((before.events.len(), before.postings.len()), (2, 2));
    // Make it a store of before issue 16: version 2 records, no index keys
    // and no marker.
    p.as_index_era(&sold, 0);
    let index = p.sled.tree(T::Network);
    for key in index.scan_prefix(keys::net::trade_history(&sold.id, sold.created_at)).keys() {
        index.remove(key.expect("key")).expect("remove");
    }
    p.sled.tree(T::Meta).remove(super::operator::HISTORY_INDEXED).expect("remove");
    p.sled.tree(T::Trades).flush().expect("flush");
    p.sled.tree(T::Meta).flush().expect("flush");
    let stripped = p.store.trade_history(&sold.id, 100).await.expect("read").expect("exists");
    assert!(stripped.events.is_empty() && stripped.postings.is_empty(), "the index is what history reads");

    let moved = tempfile::tempdir().expect("tempdir");
    let F { _dir, sled, store, fixture, .. } = p;
    drop((sled, store, fixture));
    std::fs::rename(_dir.path(), moved.path().join("store")).expect("move");
    let store: Store = Arc::new(SledStore::open(StoreConfig::new(moved.path().join("store"))).expect("reopen"));
    let after = store.trade_history(&sold.id, 100).await.expect("read").expect("exists");
    assert_eq!(after.trade, before.trade);
    assert_eq!(after.events, before.events);
    let ids = |h: &TradeHistory| h.postings.iter().map(|x| (x.posting_id, x.set_id, x.amount)).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before));
    assert!(store.verify().await.expect("verify").ok());
}
