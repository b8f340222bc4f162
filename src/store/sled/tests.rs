//! Store tests: the boundary's operations on a real sled store in a
//! temporary folder, and what only the sled backend has (its write groups,
//! its record layouts, its fail-stop syncer).

use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey};

use super::*;
use crate::domain::receipt::{handset_commitment, ReceiptSigner, Statement};
use crate::domain::{Amount, Decision, FailureReason, TradeState};
use crate::store::fixture::{jpy, number, sign, Fixture};
use crate::store::{
    Difference, EventKind, Funding, OfferGate, PayerRef, PostingKind, Receipt, RefundField, RejectedAnswer,
    SignedTerms, Store, TradeField, TradeRequest,
};

/// The receipt-signing key of every store test.
fn test_signer() -> Arc<ReceiptSigner> {
    Arc::new(ReceiptSigner::from_seed([77; 32], T0))
}

pub(super) struct F {
    pub(super) _dir: tempfile::TempDir,
    /// The same store as `store`, for what only sled has (its trees).
    pub(super) sled: SledStore,
    pub(super) store: Store,
    pub(super) fixture: Fixture,
    pub(super) shop: ShopId,
    pub(super) carrier: CarrierId,
    pub(super) payer: SubscriberNumber,
    pub(super) key: SigningKey,
    pub(super) register: RegisterId,
}

const T0: UnixMs = UnixMs(1_800_000_000_000);

/// A sled store in a temporary folder with shop `acme` (register
/// "till"), carrier `docomo` and its wallet payer enrolled with `key`;
/// also the base of `payout_tests.rs`.
pub(super) async fn fixture() -> F {
    let dir = tempfile::tempdir().expect("tempdir");
    let sled = SledStore::open(StoreConfig::new(dir.path())).expect("open");
    let store: Store = Arc::new(sled.clone());
    let fixture = Fixture::new(store.clone(), T0);
    let shop = fixture.shop("acme", "Acme").await;
    let carrier = fixture.carrier("docomo", "Docomo", &[], 0).await;
    let payer = number("+818012345678");
    let key = SigningKey::from_bytes(&[42u8; 32]);
    fixture.payer(&carrier, &payer, Funding::Wallet, &key).await;
    let register = fixture.register(&shop, "till").await;
    F { _dir: dir, sled, store, fixture, shop, carrier, payer, key, register }
}

impl F {
    pub(super) async fn top_up(&self, minor: u64) {
        self.fixture.top_up(&self.payer, minor, jpy()).await;
    }

    fn request(&self, minor: u64) -> TradeRequest<PayerRef> {
        TradeRequest {
            register: self.register,
            payer: PayerRef::Number(self.payer.clone()),
            amount: Amount::new(minor),
            currency: jpy(),
            description: "book".into(),
            ttl_ms: 60_000,
        }
    }

    fn new_trade(&self, minor: u64, key: Option<&str>, gate: Option<OfferGate>) -> NewTrade {
        NewTrade {
            shop: self.shop.clone(),
            trade_id: TradeId::generate().expect("id"),
            request: self.request(minor),
            idempotency_key: key.map(str::to_owned),
            binding_code: "123456".into(),
            max_open_per_register: 100,
            offer_gate: gate,
            asked: None,
            now: T0,
        }
    }

    async fn create(
        &self,
        minor: u64,
        key: Option<&str>,
    ) -> Result<(TradeRecord, bool), StoreError<CreateTradeRefusal>> {
        let created = self.store.create_trade(self.new_trade(minor, key, None)).await?;
        Ok((created.trade, created.replayed))
    }

    fn sign(&self, t: &TradeRecord, decision: Decision) -> Vec<u8> {
        sign(&self.key, t, decision)
    }

    async fn answer_checked(
        &self,
        t: &TradeRecord,
        decision: Decision,
        signature: Vec<u8>,
        now: UnixMs,
        checked: Option<SignatureCheck>,
    ) -> AnswerOutcome {
        let answer = HandsetAnswer {
            carrier: self.carrier.clone(),
            trade: t.id,
            decision,
            signature,
            now,
            checked,
            signer: test_signer(),
        };
        self.store.submit_answer(answer).await.expect("queued").outcome().await.expect("answer")
    }

    async fn answer(&self, t: &TradeRecord, decision: Decision, signature: Vec<u8>, now: UnixMs) -> AnswerOutcome {
        self.answer_checked(t, decision, signature, now, None).await
    }

    pub(super) async fn net(&self, name: &AccountName) -> i128 {
        self.store.account(name).await.expect("read").map_or(0, |a| a.balance.net())
    }

    fn head(&self) -> u64 {
        *self.store.event_head(&self.shop).expect("head").borrow()
    }

    fn refund(&self, trade: TradeId, amount: u64, key: Option<&str>) -> NewRefund {
        NewRefund {
            shop: self.shop.clone(),
            trade,
            amount: Amount::new(amount),
            idempotency_key: key.map(str::to_owned),
            now: T0,
        }
    }
}

#[tokio::test]
async fn approval_settles_atomically_and_verifies() {
    let f = fixture().await;
    f.top_up(5_000).await;
    let (trade, _) = f.create(1_200, None).await.expect("create");
    assert_eq!(trade.state, TradeState::Pending);
    let sig = f.sign(&trade, Decision::Approve);
    let out = f.answer(&trade, Decision::Approve, sig.clone(), T0).await;
    assert_eq!(out.rejected, None);
    let settled = out.trade.expect("trade");
    assert_eq!(settled.state, TradeState::Settled);
    assert!(settled.receipt.is_some());
    let wallet = AccountName::Wallet(f.payer.clone(), jpy());
    let shop = AccountName::ShopPayable(f.shop.clone(), jpy());
    assert_eq!(f.net(&wallet).await, 3_800);
    assert_eq!(f.net(&shop).await, 1_200);
    assert_eq!(f.net(&AccountName::SystemFunding(jpy())).await, -5_000);

    // The same approval again settles nothing.
    let again = f.answer(&trade, Decision::Approve, sig, T0).await;
    assert_eq!(again.rejected, Some(RejectedAnswer::AlreadyFinal(TradeState::Settled)));
    assert_eq!(f.net(&wallet).await, 3_800);

    let report = f.store.verify().await.expect("verify");
    assert!(report.ok(), "{:?}", report.violations);
    assert_eq!(report.trades_checked, 1);
    assert_eq!(report.postings_checked, 4);
}

/// The settlement's receipt: the handset's signature over the trade's
/// payload, its key, and the operator's countersignature over the
/// statement of the settlement, the same whether made in advance by
/// `check_answer` or by the writer.
#[tokio::test]
async fn a_settlement_is_countersigned_the_same_on_either_path() {
    let f = fixture().await;
    f.top_up(5_000).await;
    let signer = test_signer();
    let mut receipts = Vec::new();
    // Not checked first; checked at the answer's time; checked at another
    // time (the statement differs, so the writer must sign itself).
    for (checked_first, checked_at) in [(false, 0), (true, 5), (true, 4)] {
        let (trade, _) = f.create(100, None).await.expect("create");
        assert!(matches!(trade.terms, SignedTerms::V2 { .. }), "new trades are version 2");
        let signature = f.sign(&trade, Decision::Approve);
        let at = UnixMs(T0.0 + 5);
        let checked = match checked_first {
            true => {
                let checked_at = UnixMs(T0.0 + checked_at);
                f.store.check_answer(&f.carrier, &trade.id, Decision::Approve, &signature, &signer, checked_at).await
            }
            false => None,
        };
        assert_eq!(checked.is_some(), checked_first);
        let out = f.answer_checked(&trade, Decision::Approve, signature.clone(), at, checked).await;
        let settled = out.trade.expect("trade");
        let Some(Receipt::Countersigned { signature: sig, handset_key, key_id, countersignature }) = settled.receipt
        else {
            panic!("no countersigned receipt: {:?}", settled.receipt)
        };
        assert_eq!(
            (sig.0.to_vec(), handset_key, key_id),
            (signature.clone(), f.key.verifying_key().to_bytes(), signer.id())
        );
        assert_eq!(settled.finished_at, Some(at));
        let payload = settled.approval_payload(Decision::Approve).expect("payload").to_bytes();
        let commitment = handset_commitment(settled.id, &handset_key);
        let statement =
            Statement { key_id, payload: &payload, handset_signature: &sig.0, commitment: &commitment, settled_at: at };
        assert!(statement.verify(&signer.public_key(), &countersignature.0), "checked at {checked_at}");
        receipts.push(countersignature);
    }
    assert!(receipts[0] != receipts[1] && receipts[1] != receipts[2], "three trades, three statements");
}

/// A trade created by a server before payload version 2 and still open
/// after the upgrade is answered in the version it was offered with (and
/// only that); trades created now never accept version 1.
#[tokio::test]
async fn a_trade_offered_as_version_1_is_verified_as_version_1_only() {
    let f = fixture().await;
    f.top_up(5_000).await;
    let v1_bytes = |t: &TradeRecord| {
        let p = t.approval_payload(Decision::Approve).expect("payload");
        crate::domain::ApprovalPayload { version: crate::domain::PayloadVersion::V1, ..p }.to_bytes()
    };
    // Created now: a version 1 signature is a bad signature.
    let (v2, _) = f.create(100, None).await.expect("create");
    let out = f.answer(&v2, Decision::Approve, f.key.sign(&v1_bytes(&v2)).to_bytes().to_vec(), T0).await;
    let t = out.trade.expect("trade");
    assert_eq!((t.state, t.failure), (TradeState::Failed, Some(FailureReason::BadSignature)));
    // As an earlier server stored it (a version 1 record reads as V1 terms).
    for (signs_v1, settles) in [(false, false), (true, true)] {
        let (mut old, _) = f.create(100, None).await.expect("create");
        let v2_bytes = old.approval_payload(Decision::Approve).expect("payload").to_bytes();
        old.terms = SignedTerms::V1;
        let stored = f.sled.tree(T::Trades).get(old.id.as_bytes()).expect("read").expect("stored");
        let refs = codec::trade_refs(&stored).expect("refs");
        f.sled
            .tree(T::Trades)
            .insert(old.id.as_bytes(), codec::encode_trade(&old, refs).expect("encode"))
            .expect("insert");
        let signature = f.key.sign(&if signs_v1 { v1_bytes(&old) } else { v2_bytes });
        let out = f.answer(&old, Decision::Approve, signature.to_bytes().to_vec(), T0).await;
        let t = out.trade.expect("trade");
        assert_eq!(t.state == TradeState::Settled, settles, "signs v1: {signs_v1}: {t:?}");
        if settles {
            let payload = t.approval_payload(Decision::Approve).expect("payload").to_bytes();
            assert_eq!(payload[16], 1, "the receipt keeps the version 1 bytes");
            assert!(matches!(t.receipt, Some(Receipt::Countersigned { .. })));
        }
    }
}

#[tokio::test]
async fn refusals_move_no_money() {
    let f = fixture().await;
    f.top_up(1_000).await;
    let wallet = AccountName::Wallet(f.payer.clone(), jpy());

    let (poor, _) = f.create(1_001, None).await.expect("create");
    let out = f.answer(&poor, Decision::Approve, f.sign(&poor, Decision::Approve), T0).await;
    let t = out.trade.expect("trade");
    assert_eq!((t.state, t.failure), (TradeState::Failed, Some(FailureReason::InsufficientFunds)));

    let (forged, _) = f.create(10, None).await.expect("create");
    // Signed for a different decision: must not verify as an approval.
    let out = f.answer(&forged, Decision::Approve, f.sign(&forged, Decision::Decline), T0).await;
    let t = out.trade.expect("trade");
    assert_eq!((t.state, t.failure), (TradeState::Failed, Some(FailureReason::BadSignature)));

    let (declined, _) = f.create(10, None).await.expect("create");
    let out = f.answer(&declined, Decision::Decline, f.sign(&declined, Decision::Decline), T0).await;
    assert_eq!(out.trade.expect("trade").state, TradeState::Declined);

    let (late, _) = f.create(10, None).await.expect("create");
    let out = f.answer(&late, Decision::Approve, f.sign(&late, Decision::Approve), UnixMs(T0.0 + 60_000)).await;
    assert_eq!(out.rejected, Some(RejectedAnswer::Expired));
    assert_eq!(out.trade.expect("trade").state, TradeState::Expired);
    assert_eq!(out.deliveries.len(), 1, "a withdrawal is queued for the handset");

    assert_eq!(f.net(&wallet).await, 1_000);
    assert!(f.store.verify().await.expect("verify").ok());
}

/// The server verifies a signature before queueing the answer
/// (`check_answer`); the writer takes that verdict only while it still
/// covers the same key, bytes and signature.
#[tokio::test]
async fn checked_signatures_are_reused_only_while_they_still_apply() {
    let f = fixture().await;
    f.top_up(1_000).await;
    let answer_checked = |t: TradeRecord, decision: Decision, signature: Vec<u8>| {
        let f = &f;
        async move {
            let checked = f.store.check_answer(&f.carrier, &t.id, decision, &signature, &test_signer(), T0).await;
            assert!(checked.is_some(), "an open trade with a handset can be checked");
            f.answer_checked(&t, decision, signature, T0, checked).await.trade.expect("trade")
        }
    };

    let (good, _) = f.create(100, None).await.expect("create");
    let t = answer_checked(good.clone(), Decision::Approve, f.sign(&good, Decision::Approve)).await;
    assert_eq!(t.state, TradeState::Settled);

    let (bad, _) = f.create(100, None).await.expect("create");
    let t = answer_checked(bad.clone(), Decision::Approve, f.sign(&bad, Decision::Decline)).await;
    assert_eq!((t.state, t.failure), (TradeState::Failed, Some(FailureReason::BadSignature)));

    // Checked (valid) under the old key, then the handset is re-enrolled
    // with a new key before the writer applies the answer: the old verdict
    // no longer applies and the old key's signature fails.
    let (stale, _) = f.create(100, None).await.expect("create");
    let signature = f.sign(&stale, Decision::Approve);
    let checked = f.store.check_answer(&f.carrier, &stale.id, Decision::Approve, &signature, &test_signer(), T0).await;
    let new_key = SigningKey::from_bytes(&[7u8; 32]);
    f.fixture.handset(&f.carrier, &f.payer, &new_key).await;
    let out = f.answer_checked(&stale, Decision::Approve, signature, T0, checked).await;
    let t = out.trade.expect("trade");
    assert_eq!((t.state, t.failure), (TradeState::Failed, Some(FailureReason::BadSignature)));

    // Nothing to check against: an unknown trade gets no verdict.
    let unknown = TradeId::generate().expect("id");
    assert!(f
        .store
        .check_answer(&f.carrier, &unknown, Decision::Approve, &[0; 64], &test_signer(), T0)
        .await
        .is_none());
    let wallet = AccountName::Wallet(f.payer.clone(), jpy());
    assert_eq!(f.net(&wallet).await, 900, "only the first trade moved money");
    assert!(f.store.verify().await.expect("verify").ok());
}

#[tokio::test]
async fn idempotent_retries_return_the_original_and_conflicts_name_the_field() {
    let f = fixture().await;
    let (first, replayed) = f.create(500, Some("order-1")).await.expect("create");
    assert!(!replayed);
    let (again, replayed) = f.create(500, Some("order-1")).await.expect("retry");
    assert!(replayed);
    assert_eq!(again.id, first.id);
    assert_eq!(
        f.create(501, Some("order-1")).await.err(),
        Some(StoreError::Refused(CreateTradeRefusal::Differs(Difference::Field(TradeField::Amount))))
    );
}

#[tokio::test]
async fn expiry_and_cancel_free_the_register_and_queue_withdrawals() {
    let f = fixture().await;
    let (a, _) = f.create(10, None).await.expect("create");
    let (b, _) = f.create(10, None).await.expect("create");
    assert_eq!(f.store.due(T0, 10).await.expect("due"), Vec::<TradeId>::new());
    let due = f.store.due(UnixMs(T0.0 + 60_000), 10).await.expect("due");
    assert_eq!(due.len(), 2);

    let expired = f.store.submit_expire(a.id, UnixMs(T0.0 + 60_000)).await.expect("queued").outcome().await;
    match expired.expect("expire") {
        ExpireOutcome::Expired { trade: t, deliveries } => {
            assert_eq!(t.state, TradeState::Expired);
            assert!(matches!(deliveries[0].body, crate::store::DeliveryBody::Withdraw { .. }));
        }
        other => panic!("unexpected {other:?}"),
    }
    match f.store.cancel(&f.shop, b.id, T0).await.expect("cancel") {
        CancelOutcome::Cancelled { trade: t, .. } => assert_eq!(t.state, TradeState::Cancelled),
        other => panic!("unexpected {other:?}"),
    }
    // Cancelling again is a wrong-state refusal; another shop sees nothing.
    assert_eq!(
        f.store.cancel(&f.shop, b.id, T0).await.err(),
        Some(StoreError::Refused(CancelRefusal::AlreadyFinal(TradeState::Cancelled)))
    );
    let other = ShopId::parse("other").expect("id");
    assert_eq!(f.store.cancel(&other, a.id, T0).await.err(), Some(StoreError::Refused(CancelRefusal::UnknownTrade)));
    let registers = f.store.registers(&f.shop, 10).await.expect("registers");
    assert_eq!(registers[0].open_trades, 0);
    assert!(f.store.due(UnixMs(u64::MAX), 10).await.expect("due").is_empty());
    assert!(f.store.verify().await.expect("verify").ok());
}

#[tokio::test]
async fn events_are_numbered_per_shop_without_gaps() {
    let f = fixture().await;
    f.top_up(100).await;
    let (t, _) = f.create(10, None).await.expect("create");
    f.answer(&t, Decision::Approve, f.sign(&t, Decision::Approve), T0).await;
    let head = f.head();
    assert_eq!(head, 2);
    let events = f.store.events(&f.shop, 0, head, 100).await.expect("events");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2]);
    assert_eq!(events[1].trade.state, TradeState::Settled);
    assert_eq!(f.store.events(&f.shop, 1, head, 100).await.expect("events").len(), 1);
}

/// The shop record's stored `next_event_seq` is the value at creation
/// (`hot`): every read of a shop reports one above the durable head.
#[tokio::test]
async fn every_read_of_a_shop_reports_its_next_event_number() {
    let f = fixture().await;
    f.top_up(100).await;
    let (t, _) = f.create(10, None).await.expect("create");
    f.answer(&t, Decision::Approve, f.sign(&t, Decision::Approve), T0).await;
    assert_eq!(f.head(), 2);
    let shop = f.store.shop(&f.shop).await.expect("shop").expect("exists");
    assert_eq!(shop.next_event_seq, 3);
    let listed = f.store.shops(None, 10).await.expect("shops");
    assert_eq!(
        listed.iter().map(|s| (s.shop.id.clone(), s.shop.next_event_seq)).collect::<Vec<_>>(),
        vec![(f.shop.clone(), 3)]
    );
    let suspended = f.store.set_shop_suspended(&f.shop, true, T0).await.expect("suspend");
    assert_eq!(suspended.shop.next_event_seq, 3);
}

#[tokio::test]
async fn verify_reports_tampering() {
    let f = fixture().await;
    f.top_up(1_000).await;
    assert!(f.store.verify().await.expect("verify").ok());
    // Rewrite the wallet's stored totals behind the ledger's back.
    let wallet = AccountName::Wallet(f.payer.clone(), jpy());
    let mut record = f.store.account(&wallet).await.expect("read").expect("exists");
    record.balance.credits = Amount::new(2_000);
    f.sled.tree(T::Accounts).insert(keys::account(&wallet), codec::encode(&record).expect("encode")).expect("insert");
    let report = f.store.verify().await.expect("verify");
    assert!(!report.ok());
    assert!(report.violations.iter().any(|v| v.contains("postings sum to")), "{:?}", report.violations);
    assert!(report.violations.iter().any(|v| v.contains("do not sum to zero")), "{:?}", report.violations);
}

#[tokio::test]
async fn everything_acknowledged_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trade_id;
    {
        let f = fixture().await;
        f.top_up(100).await;
        let (t, _) = f.create(10, None).await.expect("create");
        f.answer(&t, Decision::Approve, f.sign(&t, Decision::Approve), T0).await;
        trade_id = t.id;
        // Move the store's files to a folder that outlives the fixture.
        let F { _dir, sled, store, fixture, .. } = f;
        drop((sled, store, fixture));
        std::fs::rename(_dir.path(), dir.path().join("store")).expect("move");
    }
    // The writer thread ends once its handles are gone; give sled the
    // folder back under a new name and reopen.
    let store: Store = Arc::new(SledStore::open(StoreConfig::new(dir.path().join("store"))).expect("reopen"));
    let t = store.trade(&trade_id).await.expect("read").expect("present");
    assert_eq!(t.state, TradeState::Settled);
    assert!(store.verify().await.expect("verify").ok());
    assert_eq!(*store.event_head(&t.shop).expect("head").borrow(), 2);
}

#[tokio::test]
async fn refunds_are_partial_bounded_idempotent_and_verified() {
    let f = fixture().await;
    f.top_up(5_000).await;
    let (t, _) = f.create(1_000, None).await.expect("create");
    let refund = |amount: u64, key: Option<&str>| f.store.refund(f.refund(t.id, amount, key));
    // Not settled yet: refused.
    assert_eq!(refund(10, None).await.err(), Some(StoreError::Refused(RefundRefusal::NotSettled(TradeState::Pending))));
    f.answer(&t, Decision::Approve, f.sign(&t, Decision::Approve), T0).await;

    let first = refund(300, Some("r1")).await.expect("refund");
    assert!(!first.replayed);
    assert_eq!(first.trade.refunded, Amount::new(300));
    // A retry returns the same refund and moves nothing.
    let again = refund(300, Some("r1")).await.expect("retry");
    assert!(again.replayed);
    assert_eq!(again.refund_id, first.refund_id);
    assert_eq!(
        refund(301, Some("r1")).await.err(),
        Some(StoreError::Refused(RefundRefusal::Differs(RefundField::Amount)))
    );
    // The same key string as a trade key does not collide with it.
    refund(200, None).await.expect("second refund");
    // 500 left: 501 is refused, 500 is fine, then nothing is left.
    assert_eq!(
        refund(501, None).await.err(),
        Some(StoreError::Refused(RefundRefusal::AboveRemaining { left: Amount::new(500) }))
    );
    refund(500, None).await.expect("last refund");
    assert_eq!(
        refund(1, None).await.err(),
        Some(StoreError::Refused(RefundRefusal::AboveRemaining { left: Amount::ZERO }))
    );

    let wallet = AccountName::Wallet(f.payer.clone(), jpy());
    let shop = AccountName::ShopPayable(f.shop.clone(), jpy());
    assert_eq!(f.net(&wallet).await, 5_000);
    assert_eq!(f.net(&shop).await, 0);
    let report = f.store.verify().await.expect("verify");
    assert!(report.ok(), "{:?}", report.violations);
    // Events: create, settle, and one per refund.
    let events = f.store.events(&f.shop, 0, f.head(), 100).await.expect("events");
    let refunds: Vec<u64> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Refunded { amount, .. } => Some(amount.minor()),
            EventKind::StateChanged => None,
        })
        .collect();
    assert_eq!(refunds, vec![300, 200, 500]);
}

#[tokio::test]
async fn a_failing_write_in_a_write_group_fails_alone() {
    let f = fixture().await;
    // Queue a burst without awaiting, so the writer takes many writes per
    // group: good top-ups interleaved with cancels of trades that do not
    // exist (which refuse, aborting their transaction).
    let mut top_ups = Vec::new();
    let mut cancels = Vec::new();
    for i in 0..64u64 {
        if i % 2 == 0 {
            let t = TopUp { number: f.payer.clone(), amount: Amount::new(10), currency: jpy(), now: T0 };
            top_ups.push(f.sled.queue(t).await.expect("queued"));
        } else {
            let c = cancel::Cancel { shop: f.shop.clone(), trade: TradeId::generate().expect("id"), now: T0 };
            cancels.push(f.sled.queue(c).await.expect("queued"));
        }
    }
    for (i, write) in top_ups.into_iter().enumerate() {
        assert!(write.outcome().await.is_ok(), "top-up {i}");
    }
    for (i, write) in cancels.into_iter().enumerate() {
        assert_eq!(write.outcome().await.err(), Some(StoreError::Refused(CancelRefusal::UnknownTrade)), "cancel {i}");
    }
    // Each of the 32 good ones applied exactly once.
    assert_eq!(f.net(&AccountName::Wallet(f.payer.clone(), jpy())).await, 320);
    assert!(f.store.verify().await.expect("verify").ok());
}

/// The offer gate is asked once per trade however often the writer runs
/// the write: a write group with a refusing write in it is applied again
/// one write at a time, and each trade's first verdict stands. A refusal
/// writes nothing; a replay and a trade that fails at once (no handset)
/// never ask.
#[tokio::test]
async fn the_offer_gate_is_asked_once_per_trade_and_only_for_an_offer() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let f = fixture().await;
    let asked = Arc::new(AtomicUsize::new(0));
    let admitted = Arc::new(AtomicUsize::new(0));
    // Admits the first 10 offers, refuses the rest.
    let gate = {
        let (asked, admitted) = (asked.clone(), admitted.clone());
        OfferGate::new(move |_| {
            asked.fetch_add(1, Ordering::SeqCst);
            if admitted.fetch_add(1, Ordering::SeqCst) < 10 {
                Ok(())
            } else {
                Err("offers per subscriber: no".into())
            }
        })
    };
    // Queued without awaiting, so groups hold several writes, with cancels
    // of trades that do not exist aborting them.
    let mut creates = Vec::new();
    let mut cancels = Vec::new();
    for i in 0..40u32 {
        match i % 4 {
            3 => {
                let c = cancel::Cancel { shop: f.shop.clone(), trade: TradeId::generate().expect("id"), now: T0 };
                cancels.push(f.sled.queue(c).await.expect("queued"));
            }
            _ => {
                let create = create_trade::CreateTrade::new(f.new_trade(10, None, Some(gate.clone())));
                creates.push(f.sled.queue(create).await.expect("queued"));
            }
        }
    }
    let (mut created, mut refused) = (0, 0);
    for write in creates {
        match write.outcome().await {
            Ok(Created { trade, replayed: false, .. }) => {
                assert_eq!(trade.state, TradeState::Pending);
                created += 1;
            }
            Err(StoreError::Refused(CreateTradeRefusal::OfferLimited(m))) => {
                assert_eq!(m, "offers per subscriber: no");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    for write in cancels {
        assert_eq!(write.outcome().await.err(), Some(StoreError::Refused(CancelRefusal::UnknownTrade)));
    }
    assert_eq!((created, refused), (10, 20));
    assert_eq!(asked.load(Ordering::SeqCst), 30, "each trade asked its gate exactly once");
    let report = f.store.verify().await.expect("verify");
    assert_eq!(report.trades_checked, 10, "a refused trade leaves nothing behind");

    // A replay and its conflict ask nothing; nor does a payer without a
    // handset, whose trade fails at once.
    let first = f.new_trade(10, Some("order-1"), Some(gate.clone()));
    admitted.store(0, Ordering::SeqCst);
    f.store.create_trade(first.clone()).await.expect("create");
    let before = asked.load(Ordering::SeqCst);
    let replay = NewTrade { trade_id: TradeId::generate().expect("id"), ..first.clone() };
    assert!(f.store.create_trade(replay).await.expect("replay").replayed);
    let mut other = first.clone();
    other.trade_id = TradeId::generate().expect("id");
    other.request.amount = Amount::new(11);
    assert!(matches!(f.store.create_trade(other).await, Err(StoreError::Refused(CreateTradeRefusal::Differs(_)))));
    let stranger = number("+818099999999");
    f.fixture.subscriber(&f.carrier, &stranger, Funding::Wallet).await;
    let mut no_handset = first;
    no_handset.trade_id = TradeId::generate().expect("id");
    no_handset.idempotency_key = None;
    no_handset.request.payer = PayerRef::Number(stranger);
    let created = f.store.create_trade(no_handset).await.expect("created");
    assert_eq!(created.trade.failure, Some(FailureReason::NoHandset));
    assert_eq!(asked.load(Ordering::SeqCst), before, "no offer, no question");
}

#[tokio::test]
async fn replayed_events_show_the_trade_as_it_was_at_each_event() {
    let f = fixture().await;
    f.top_up(5_000).await;
    let (pending, _) = f.create(1_000, Some("order-9")).await.expect("create");
    let delivery_id = pending.offer_delivery.expect("offer queued");
    let acked = f.store.submit_ack(&f.carrier, delivery_id, UnixMs(T0.0 + 1)).await.expect("queued").outcome().await;
    let offered = match acked.expect("ack") {
        AckOutcome::Offer(t) => *t,
        other => panic!("{other:?}"),
    };
    let settled =
        f.answer(&offered, Decision::Approve, f.sign(&offered, Decision::Approve), UnixMs(T0.0 + 2)).await.trade;
    let settled = settled.expect("trade");
    let refund = NewRefund { now: UnixMs(T0.0 + 3), ..f.refund(pending.id, 400, None) };
    let refunded = f.store.refund(refund).await.expect("refund").trade;
    let head = f.head();
    let events = f.store.events(&f.shop, 0, head, 100).await.expect("events");
    let shown: Vec<&TradeRecord> = events.iter().map(|e| &e.trade).collect();
    // Each event shows the trade exactly as the write that made it
    // returned it, however the trade changed later.
    assert_eq!(shown, vec![&pending, &offered, &settled, &refunded]);
    assert_eq!((events[0].trade.state, events[0].trade.receipt.as_ref()), (TradeState::Pending, None));
    assert_eq!(events[2].trade.refunded, Amount::ZERO);
    assert!(events[2].trade.receipt.is_some());
    assert_eq!(events[3].trade.refunded, Amount::new(400));
    // Resuming in the middle gives the same events.
    assert_eq!(f.store.events(&f.shop, 1, head, 100).await.expect("events"), events[1..].to_vec());

    // A store written before compact events holds whole events; mixed with
    // compact ones they read the same. Rewrite event 2 in the old layout
    // (whose trades predate payload version 2, so it reads back as one).
    let old = codec::encode_whole_event_v1(&events[1]).expect("encode v1");
    assert_eq!(old[0], codec::RECORD_VERSION);
    f.sled.tree(T::Events).insert(keys::event(&f.shop, 2), old).expect("insert");
    let mut expected = events.clone();
    expected[1].trade.terms = SignedTerms::V1;
    assert_eq!(f.store.events(&f.shop, 0, head, 100).await.expect("events"), expected);
}

/// A refund id is the refund's posting set id. Refunds recorded before
/// that (their key and event held the set's first posting id) read back
/// with the set id: the retry's answer and the event agree with the
/// postings.
#[tokio::test]
async fn refunds_recorded_with_first_posting_ids_read_back_as_their_set() {
    let f = fixture().await;
    f.top_up(5_000).await;
    let (t, _) = f.create(1_000, None).await.expect("create");
    f.answer(&t, Decision::Approve, f.sign(&t, Decision::Approve), T0).await;
    let refund = f.refund(t.id, 200, Some("r-1"));
    let refund_id = f.store.refund(refund.clone()).await.expect("refund").refund_id;
    let postings = f.store.postings(0, 100).await.expect("postings");
    let legs: Vec<&PostingRecord> = postings.iter().filter(|p| p.kind == PostingKind::Refund).collect();
    assert_eq!(legs.len(), 2);
    assert!(legs.iter().all(|p| p.set_id == refund_id), "refund id {refund_id} is not the set: {legs:?}");
    let first_posting = legs[0].posting_id;
    assert_ne!(first_posting, refund_id, "the test needs the two numbers apart");

    // Rewrite the key and the REFUNDED event as the old layouts had them.
    let old_key = codec::IdempotencyRecord::RefundV1 { trade: t.id, amount: Amount::new(200), first_posting };
    f.sled
        .tree(T::Idempotency)
        .insert(keys::refund_idempotency(&f.shop, "r-1"), codec::encode(&old_key).expect("encode"))
        .expect("insert");
    let head = f.head();
    let events = f.store.events(&f.shop, 0, head, 100).await.expect("events");
    let last = events.last().expect("the refund event").clone();
    assert_eq!(last.kind, EventKind::Refunded { amount: Amount::new(200), refund_id });
    let old_event =
        EventRecord { kind: EventKind::Refunded { amount: Amount::new(200), refund_id: first_posting }, ..last };
    let mut v2 = vec![codec::EVENT_VERSION_V2];
    v2.extend(postcard::to_stdvec(&codec::CompactEvent::of(&old_event)).expect("encode"));
    f.sled.tree(T::Events).insert(keys::event(&f.shop, head), v2).expect("insert");
    assert_eq!(f.store.events(&f.shop, 0, head, 100).await.expect("events"), events, "version 2");
    // A whole (version 1) event holds its trade as a version 1 server wrote
    // it: version 1 terms, a receipt without a countersignature.
    let mut legacy = old_event.clone();
    legacy.trade.terms = SignedTerms::V1;
    legacy.trade.receipt =
        Some(Receipt::Legacy { signed_payload: vec![1], signature: vec![2; 64], shop_key_fingerprint: [3; 32] });
    let v1 = codec::encode_whole_event_v1(&legacy).expect("encode v1");
    f.sled.tree(T::Events).insert(keys::event(&f.shop, head), v1).expect("insert");
    let mut expected = events.clone();
    if let Some(e) = expected.last_mut() {
        e.trade = legacy.trade.clone();
    }
    assert_eq!(f.store.events(&f.shop, 0, head, 100).await.expect("events"), expected, "version 1");
    let again = f.store.refund(refund).await.expect("retry");
    assert!(again.replayed);
    assert_eq!(again.refund_id, refund_id);
}

#[tokio::test]
async fn a_store_made_with_sleds_default_segment_size_still_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    // As `open` made stores before issue 6: sled's default 512 KiB segments.
    drop(sled::Config::new().path(dir.path()).flush_every_ms(None).open().expect("sled"));
    assert_eq!(config::existing_segment_size(dir.path()), Some(512 * 1024));
    let store = SledStore::open(StoreConfig::new(dir.path())).expect("open keeps the store's segment size");
    assert!(store.verify().await.expect("verify").ok());
    drop(store);
    assert_eq!(config::existing_segment_size(dir.path()), Some(512 * 1024));
    // A new store gets the larger segments.
    let fresh = tempfile::tempdir().expect("tempdir");
    drop(SledStore::open(StoreConfig::new(fresh.path())).expect("open"));
    assert_eq!(config::existing_segment_size(fresh.path()), Some(NEW_STORE_SEGMENT_SIZE));
}

/// Fail-stop with the writer pipelined: writes queued together spread
/// over several write groups, later groups applied while the first one's
/// sync fails. None of them may be acknowledged, nor anything after.
#[tokio::test]
async fn a_failed_sync_acknowledges_no_group_applied_behind_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fault = Arc::new(SyncFault::default());
    let store =
        SledStore::open(StoreConfig { sync_fault: Some(fault.clone()), ..StoreConfig::new(dir.path()) }).expect("open");
    // Shops need nothing before them; each gets its own id and credential.
    let shop = |i: u16| NewShop {
        id: ShopId::parse(&format!("shop-{i}")).expect("id"),
        display_name: format!("Shop {i}"),
        token_hash: [&i.to_be_bytes()[..], &[0; 30]].concat().try_into().expect("32 bytes"),
        max_shops: 10_000,
        now: T0,
    };
    store.create_shop(shop(0)).await.expect("acknowledged before the fault");

    fault.arm();
    let mut pending = Vec::new();
    let mut refused_at_submit = 0;
    for i in 1..=u16::try_from(2 * MAX_GROUP).expect("small") {
        // The writer runs while we queue, so the failed sync may stop the
        // store before the last submits: those are refused at once, which
        // acknowledges nothing either.
        match store.queue(shop(i)).await {
            Ok(p) => pending.push(p),
            Err(e) => {
                assert_eq!(e, Failure::Stopped);
                refused_at_submit += 1;
            }
        }
    }
    assert!(!pending.is_empty(), "the first submit after arming is queued ({refused_at_submit} refused)");
    for p in pending {
        assert_eq!(p.outcome().await.err(), Some(StoreError::Failed(Failure::Stopped)));
    }
    assert_eq!(fault.fired(), 1, "one failed sync stopped everything behind it");
    assert!(store.is_stopped());
    assert_eq!(store.durable_barrier().await, Err(Failure::Stopped));
    assert_eq!(store.queue(shop(9_999)).await.err(), Some(Failure::Stopped));
}

/// The boundary's reads that must see the writer's state take their own
/// path through the writer's queue: a read queued between two writes sees
/// the first and not the second.
#[tokio::test]
async fn a_read_on_the_writer_sees_exactly_the_writes_queued_before_it() {
    let f = fixture().await;
    let top_up = || TopUp { number: f.payer.clone(), amount: Amount::new(7), currency: jpy(), now: T0 };
    let before = f.sled.queue(top_up()).await.expect("queued");
    let read = f.sled.read_on_writer(|shared| ledger::accounts_on_writer(shared, "wallet:", 10));
    let (accounts, _) = tokio::join!(read, async {
        // Queued after the read, while it waits for its group.
        let after = f.sled.queue(top_up()).await.expect("queued");
        after.outcome().await.expect("second top-up")
    });
    before.outcome().await.expect("first top-up");
    let accounts = accounts.expect("read");
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].balance.net(), 7, "the read ran after the first top-up and before the second");
    assert_eq!(f.net(&AccountName::Wallet(f.payer.clone(), jpy())).await, 14);
}
