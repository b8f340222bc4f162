//! Store tests: commands against a real sled store in a temporary folder.

use ed25519_dalek::{Signer, SigningKey};

use super::*;
use crate::domain::receipt::{handset_commitment, ReceiptSigner, Statement};
use crate::domain::{Amount, Currency, Decision, FailureReason, RegisterId, TradeState};

/// The receipt-signing key of every store test.
pub(super) fn test_signer() -> Arc<ReceiptSigner> {
    Arc::new(ReceiptSigner::from_seed([77; 32], T0))
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    shop: ShopId,
    carrier: CarrierId,
    payer: SubscriberNumber,
    key: SigningKey,
    register: RegisterId,
}

const T0: UnixMs = UnixMs(1_800_000_000_000);

fn jpy() -> Currency {
    Currency::parse("JPY").expect("known")
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(StoreConfig::new(dir.path())).expect("open");
    let shop = ShopId::parse("acme").expect("id");
    let carrier = CarrierId::parse("docomo").expect("id");
    let payer = SubscriberNumber::parse("+818012345678").expect("number");
    let key = SigningKey::from_bytes(&[42u8; 32]);
    let register = RegisterId::generate().expect("id");
    let run = |c: Command| {
        let store = store.clone();
        async move { store.execute(c).await.expect("command") }
    };
    run(Command::CreateShop {
        id: shop.clone(),
        display_name: "Acme".into(),
        token_hash: [1; 32],
        max_shops: 10,
        now: T0,
    })
    .await;
    run(Command::CreateCarrier {
        id: carrier.clone(),
        display_name: "Docomo".into(),
        token_hash: [2; 32],
        prefixes: Vec::new(),
        fee_bps: 0,
        now: T0,
    })
    .await;
    enroll(&store, &carrier, &payer, &key, T0).await;
    run(Command::OpenRegister { shop: shop.clone(), id: register, label: "till".into(), max_registers: 5, now: T0 })
        .await;
    Fixture { _dir: dir, store, shop, carrier, payer, key, register }
}

/// Enrolls `number` as a wallet-funded subscriber of `carrier` with a
/// handset holding `key`.
pub(super) async fn enroll(
    store: &Store,
    carrier: &CarrierId,
    number: &SubscriberNumber,
    key: &SigningKey,
    now: UnixMs,
) {
    for command in [
        Command::EnrollSubscriber { carrier: carrier.clone(), number: number.clone(), funding: Funding::Wallet, now },
        Command::EnrollHandset {
            carrier: carrier.clone(),
            number: number.clone(),
            public_key: key.verifying_key().to_bytes(),
            now,
        },
    ] {
        store.execute(command).await.expect("enroll");
    }
}

impl Fixture {
    async fn top_up(&self, minor: u64) {
        self.store
            .execute(Command::TopUp {
                number: self.payer.clone(),
                amount: Amount::new(minor),
                currency: jpy(),
                now: T0,
            })
            .await
            .expect("top up");
    }

    fn request(&self, minor: u64) -> TradeRequest {
        TradeRequest {
            register: self.register,
            payer: self.payer.clone(),
            amount: Amount::new(minor),
            currency: jpy(),
            description: "book".into(),
            ttl_ms: 60_000,
        }
    }

    async fn create(&self, minor: u64, key: Option<&str>) -> Result<(TradeRecord, bool), StoreError> {
        let c = CreateTrade {
            shop: self.shop.clone(),
            trade_id: TradeId::generate().expect("id"),
            request: self.request(minor),
            idempotency_key: key.map(str::to_owned),
            binding_code: "123456".into(),
            max_open_per_register: 100,
            offer_gate: None,
            now: T0,
        };
        match self.store.execute(Command::CreateTrade(c)).await? {
            CommandOutcome::Trade { trade: Some(t), replayed, .. } => Ok((t, replayed)),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn sign(&self, t: &TradeRecord, decision: Decision) -> Vec<u8> {
        let payload = t.approval_payload(decision).expect("payload");
        self.key.sign(&payload.to_bytes()).to_bytes().to_vec()
    }

    async fn answer(&self, t: &TradeRecord, decision: Decision, signature: Vec<u8>, now: UnixMs) -> AnswerOutcome {
        let c = Command::Answer {
            carrier: self.carrier.clone(),
            trade: t.id,
            decision,
            signature,
            now,
            checked: None,
            signer: test_signer(),
        };
        match self.store.execute(c).await.expect("answer") {
            CommandOutcome::Answer(a) => a,
            other => panic!("unexpected {other:?}"),
        }
    }

    async fn net(&self, name: &AccountName) -> i128 {
        self.store.account(name).await.expect("read").map_or(0, |a| a.balance.net())
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
        let checked = checked_first
            .then(|| {
                f.store.check_answer(
                    &f.carrier,
                    &trade.id,
                    Decision::Approve,
                    &signature,
                    &signer,
                    UnixMs(T0.0 + checked_at),
                )
            })
            .flatten();
        assert_eq!(checked.is_some(), checked_first);
        let c = Command::Answer {
            carrier: f.carrier.clone(),
            trade: trade.id,
            decision: Decision::Approve,
            signature: signature.clone(),
            now: at,
            checked,
            signer: signer.clone(),
        };
        let CommandOutcome::Answer(out) = f.store.execute(c).await.expect("answer") else { panic!("not an answer") };
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
        f.store.tree(T::Trades).insert(old.id.as_bytes(), records::encode(&old).expect("encode")).expect("insert");
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
        let checked = f.store.check_answer(&f.carrier, &t.id, decision, &signature, &test_signer(), T0);
        assert!(checked.is_some(), "an open trade with a handset can be checked");
        let c = Command::Answer {
            carrier: f.carrier.clone(),
            trade: t.id,
            decision,
            signature,
            now: T0,
            checked,
            signer: test_signer(),
        };
        let store = f.store.clone();
        async move {
            match store.execute(c).await.expect("answer") {
                CommandOutcome::Answer(a) => a.trade.expect("trade"),
                other => panic!("unexpected {other:?}"),
            }
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
    let checked = f.store.check_answer(&f.carrier, &stale.id, Decision::Approve, &signature, &test_signer(), T0);
    let new_key = SigningKey::from_bytes(&[7u8; 32]);
    f.store
        .execute(Command::EnrollHandset {
            carrier: f.carrier.clone(),
            number: f.payer.clone(),
            public_key: new_key.verifying_key().to_bytes(),
            now: T0,
        })
        .await
        .expect("re-enroll");
    let c = Command::Answer {
        carrier: f.carrier.clone(),
        trade: stale.id,
        decision: Decision::Approve,
        signature,
        now: T0,
        checked,
        signer: test_signer(),
    };
    let CommandOutcome::Answer(out) = f.store.execute(c).await.expect("answer") else { panic!("not an answer") };
    let t = out.trade.expect("trade");
    assert_eq!((t.state, t.failure), (TradeState::Failed, Some(FailureReason::BadSignature)));

    // Nothing to check against: an unknown trade gets no verdict.
    let unknown = TradeId::generate().expect("id");
    assert!(f.store.check_answer(&f.carrier, &unknown, Decision::Approve, &[0; 64], &test_signer(), T0).is_none());
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
    match f.create(501, Some("order-1")).await {
        Err(StoreError::AlreadyExists(m)) => assert!(m.starts_with("amount_minor"), "{m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn expiry_and_cancel_free_the_register_and_queue_withdrawals() {
    let f = fixture().await;
    let (a, _) = f.create(10, None).await.expect("create");
    let (b, _) = f.create(10, None).await.expect("create");
    assert_eq!(f.store.due(T0, 10).expect("due"), Vec::<TradeId>::new());
    let due = f.store.due(UnixMs(T0.0 + 60_000), 10).expect("due");
    assert_eq!(due.len(), 2);

    match f.store.execute(Command::Expire { trade: a.id, now: UnixMs(T0.0 + 60_000) }).await.expect("expire") {
        CommandOutcome::Trade { trade: Some(t), deliveries, replayed: false } => {
            assert_eq!(t.state, TradeState::Expired);
            assert!(matches!(deliveries[0].body, DeliveryBody::Withdraw { .. }));
        }
        other => panic!("unexpected {other:?}"),
    }
    match f.store.execute(Command::Cancel { shop: f.shop.clone(), trade: b.id, now: T0 }).await.expect("cancel") {
        CommandOutcome::Trade { trade: Some(t), .. } => assert_eq!(t.state, TradeState::Cancelled),
        other => panic!("unexpected {other:?}"),
    }
    // Cancelling again is a wrong-state error; another shop sees nothing.
    assert!(matches!(
        f.store.execute(Command::Cancel { shop: f.shop.clone(), trade: b.id, now: T0 }).await,
        Err(StoreError::FailedPrecondition(_))
    ));
    let other = ShopId::parse("other").expect("id");
    assert_eq!(
        f.store.execute(Command::Cancel { shop: other, trade: a.id, now: T0 }).await.err(),
        Some(StoreError::NotFound("trade"))
    );
    let registers = f.store.registers(&f.shop, 10).await.expect("registers");
    assert_eq!(registers[0].open_trades, 0);
    assert!(f.store.due(UnixMs(u64::MAX), 10).expect("due").is_empty());
    assert!(f.store.verify().await.expect("verify").ok());
}

#[tokio::test]
async fn events_are_numbered_per_shop_without_gaps() {
    let f = fixture().await;
    f.top_up(100).await;
    let (t, _) = f.create(10, None).await.expect("create");
    f.answer(&t, Decision::Approve, f.sign(&t, Decision::Approve), T0).await;
    let head = *f.store.event_heads().subscribe(&f.shop).expect("head").borrow();
    assert_eq!(head, 2);
    let events = f.store.events_between(&f.shop, 0, head, 100).expect("events");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2]);
    assert_eq!(events[1].trade.state, TradeState::Settled);
    assert_eq!(f.store.events_between(&f.shop, 1, head, 100).expect("events").len(), 1);
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
    f.store
        .tree(T::Accounts)
        .insert(keys::account(&wallet), records::encode(&record).expect("encode"))
        .expect("insert");
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
        drop(f.store);
        std::fs::rename(f._dir.path(), dir.path().join("store")).expect("move");
    }
    // The writer thread ends once its handles are gone; give sled the
    // folder back under a new name and reopen.
    let store = Store::open(StoreConfig::new(dir.path().join("store"))).expect("reopen");
    let t = store.trade(&trade_id).await.expect("read").expect("present");
    assert_eq!(t.state, TradeState::Settled);
    assert!(store.verify().await.expect("verify").ok());
    assert_eq!(*store.event_heads().subscribe(&t.shop).expect("head").borrow(), 2);
}

#[tokio::test]
async fn refunds_are_partial_bounded_idempotent_and_verified() {
    let f = fixture().await;
    f.top_up(5_000).await;
    let (t, _) = f.create(1_000, None).await.expect("create");
    let refund = |amount: u64, key: Option<&str>| {
        let c = Command::Refund {
            shop: f.shop.clone(),
            trade: t.id,
            amount: Amount::new(amount),
            idempotency_key: key.map(str::to_owned),
            now: T0,
        };
        let store = f.store.clone();
        async move { store.execute(c).await }
    };
    // Not settled yet: refused.
    assert!(matches!(refund(10, None).await, Err(StoreError::FailedPrecondition(_))));
    f.answer(&t, Decision::Approve, f.sign(&t, Decision::Approve), T0).await;

    let first = refund(300, Some("r1")).await.expect("refund");
    let CommandOutcome::Refund { refund_id, replayed: false, trade, .. } = first else { panic!("{first:?}") };
    assert_eq!(trade.refunded, Amount::new(300));
    // A retry returns the same refund and moves nothing.
    match refund(300, Some("r1")).await.expect("retry") {
        CommandOutcome::Refund { refund_id: again, replayed: true, .. } => assert_eq!(again, refund_id),
        other => panic!("{other:?}"),
    }
    match refund(301, Some("r1")).await {
        Err(StoreError::AlreadyExists(m)) => assert!(m.starts_with("amount_minor"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The same key string as a trade key does not collide with it.
    refund(200, None).await.expect("second refund");
    // 500 left: 501 is refused, 500 is fine, then nothing is left.
    assert!(matches!(refund(501, None).await, Err(StoreError::FailedPrecondition(_))));
    refund(500, None).await.expect("last refund");
    assert!(matches!(refund(1, None).await, Err(StoreError::FailedPrecondition(_))));

    let wallet = AccountName::Wallet(f.payer.clone(), jpy());
    let shop = AccountName::ShopPayable(f.shop.clone(), jpy());
    assert_eq!(f.net(&wallet).await, 5_000);
    assert_eq!(f.net(&shop).await, 0);
    let report = f.store.verify().await.expect("verify");
    assert!(report.ok(), "{:?}", report.violations);
    // Events: create, settle, and one per refund.
    let head = *f.store.event_heads().subscribe(&f.shop).expect("head").borrow();
    let events = f.store.events_between(&f.shop, 0, head, 100).expect("events");
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
async fn a_failing_command_in_a_write_group_fails_alone() {
    let f = fixture().await;
    // Queue a burst without awaiting, so the writer takes many commands per
    // group: good top-ups interleaved with cancels of trades that do not
    // exist (which abort their transaction).
    let mut pending = Vec::new();
    for i in 0..64u64 {
        let command = if i % 2 == 0 {
            Command::TopUp { number: f.payer.clone(), amount: Amount::new(10), currency: jpy(), now: T0 }
        } else {
            Command::Cancel { shop: f.shop.clone(), trade: TradeId::generate().expect("id"), now: T0 }
        };
        pending.push(f.store.submit(command).await.expect("queued"));
    }
    for (i, write) in pending.into_iter().enumerate() {
        match (i % 2, write.outcome().await) {
            (0, Ok(CommandOutcome::TopUp { .. })) => {}
            (1, Err(StoreError::NotFound("trade"))) => {}
            (_, other) => panic!("command {i}: {other:?}"),
        }
    }
    // Each of the 32 good ones applied exactly once.
    assert_eq!(f.net(&AccountName::Wallet(f.payer.clone(), jpy())).await, 320);
    assert!(f.store.verify().await.expect("verify").ok());
}

/// The offer gate is asked once per trade however often the writer runs
/// the command: a write group with a failing command in it is applied
/// again one command at a time, and each trade's first verdict stands.
/// A refusal writes nothing; a replay and a trade that fails at once (no
/// handset) never ask.
#[tokio::test]
async fn the_offer_gate_is_asked_once_per_trade_and_only_for_an_offer() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let f = fixture().await;
    let asked = std::sync::Arc::new(AtomicUsize::new(0));
    let admitted = std::sync::Arc::new(AtomicUsize::new(0));
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
    let create = |key: Option<String>| {
        Command::CreateTrade(CreateTrade {
            shop: f.shop.clone(),
            trade_id: TradeId::generate().expect("id"),
            request: f.request(10),
            idempotency_key: key,
            binding_code: "123456".into(),
            max_open_per_register: 100,
            offer_gate: Some(gate.clone()),
            now: T0,
        })
    };
    // Queued without awaiting, so groups hold several commands, with
    // cancels of trades that do not exist aborting them.
    let mut pending = Vec::new();
    for i in 0..40u32 {
        let command = match i % 4 {
            3 => Command::Cancel { shop: f.shop.clone(), trade: TradeId::generate().expect("id"), now: T0 },
            _ => create(None),
        };
        pending.push(f.store.submit(command).await.expect("queued"));
    }
    let (mut created, mut refused) = (0, 0);
    for write in pending {
        match write.outcome().await {
            Ok(CommandOutcome::Trade { trade: Some(t), replayed: false, .. }) => {
                assert_eq!(t.state, TradeState::Pending);
                created += 1;
            }
            Err(StoreError::RateLimited(m)) => {
                assert_eq!(m, "offers per subscriber: no");
                refused += 1;
            }
            Err(StoreError::NotFound("trade")) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((created, refused), (10, 20));
    assert_eq!(asked.load(Ordering::SeqCst), 30, "each trade asked its gate exactly once");
    let report = f.store.verify().await.expect("verify");
    assert_eq!(report.trades_checked, 10, "a refused trade leaves nothing behind");

    // A replay and its conflict ask nothing; nor does a payer without a
    // handset, whose trade fails at once.
    let keyed = create(Some("order-1".into()));
    let Command::CreateTrade(first) = keyed.clone() else { unreachable!() };
    admitted.store(0, Ordering::SeqCst);
    f.store.execute(keyed).await.expect("create");
    let before = asked.load(Ordering::SeqCst);
    let replay = CreateTrade { trade_id: TradeId::generate().expect("id"), ..first.clone() };
    let Ok(CommandOutcome::Trade { replayed: true, .. }) = f.store.execute(Command::CreateTrade(replay)).await else {
        panic!("not a replay")
    };
    let mut other = first.clone();
    other.trade_id = TradeId::generate().expect("id");
    other.request.amount = Amount::new(11);
    assert!(matches!(f.store.execute(Command::CreateTrade(other)).await, Err(StoreError::AlreadyExists(_))));
    let stranger = SubscriberNumber::parse("+818099999999").expect("number");
    f.store
        .execute(Command::EnrollSubscriber {
            carrier: f.carrier.clone(),
            number: stranger.clone(),
            funding: Funding::Wallet,
            now: T0,
        })
        .await
        .expect("enroll");
    let mut no_handset = first;
    no_handset.trade_id = TradeId::generate().expect("id");
    no_handset.idempotency_key = None;
    no_handset.request.payer = stranger;
    let Ok(CommandOutcome::Trade { trade: Some(t), .. }) = f.store.execute(Command::CreateTrade(no_handset)).await
    else {
        panic!("created")
    };
    assert_eq!(t.failure, Some(FailureReason::NoHandset));
    assert_eq!(asked.load(Ordering::SeqCst), before, "no offer, no question");
}

#[tokio::test]
async fn replayed_events_show_the_trade_as_it_was_at_each_event() {
    let f = fixture().await;
    f.top_up(5_000).await;
    let (pending, _) = f.create(1_000, Some("order-9")).await.expect("create");
    let delivery_id = pending.offer_delivery.expect("offer queued");
    let offered = match f
        .store
        .execute(Command::Ack { carrier: f.carrier.clone(), delivery_id, now: UnixMs(T0.0 + 1) })
        .await
        .expect("ack")
    {
        CommandOutcome::Trade { trade: Some(t), .. } => t,
        other => panic!("{other:?}"),
    };
    let settled =
        f.answer(&offered, Decision::Approve, f.sign(&offered, Decision::Approve), UnixMs(T0.0 + 2)).await.trade;
    let settled = settled.expect("trade");
    let refund = Command::Refund {
        shop: f.shop.clone(),
        trade: pending.id,
        amount: Amount::new(400),
        idempotency_key: None,
        now: UnixMs(T0.0 + 3),
    };
    let refunded = match f.store.execute(refund).await.expect("refund") {
        CommandOutcome::Refund { trade, .. } => trade,
        other => panic!("{other:?}"),
    };
    let head = *f.store.event_heads().subscribe(&f.shop).expect("head").borrow();
    let events = f.store.events_between(&f.shop, 0, head, 100).expect("events");
    let shown: Vec<&TradeRecord> = events.iter().map(|e| &e.trade).collect();
    // Each event shows the trade exactly as the command that made it
    // returned it, however the trade changed later.
    assert_eq!(shown, vec![&pending, &offered, &settled, &refunded]);
    assert_eq!((events[0].trade.state, events[0].trade.receipt.as_ref()), (TradeState::Pending, None));
    assert_eq!(events[2].trade.refunded, Amount::ZERO);
    assert!(events[2].trade.receipt.is_some());
    assert_eq!(events[3].trade.refunded, Amount::new(400));
    // Resuming in the middle gives the same events.
    assert_eq!(f.store.events_between(&f.shop, 1, head, 100).expect("events"), events[1..].to_vec());

    // A store written before compact events holds whole events; mixed with
    // compact ones they read the same. Rewrite event 2 in the old layout
    // (whose trades predate payload version 2, so it reads back as one).
    let old = records::encode_whole_event_v1(&events[1]).expect("encode v1");
    assert_eq!(old[0], records::RECORD_VERSION);
    f.store.tree(T::Events).insert(keys::event(&f.shop, 2), old).expect("insert");
    let mut expected = events.clone();
    expected[1].trade.terms = SignedTerms::V1;
    assert_eq!(f.store.events_between(&f.shop, 0, head, 100).expect("events"), expected);
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
    let refund = Command::Refund {
        shop: f.shop.clone(),
        trade: t.id,
        amount: Amount::new(200),
        idempotency_key: Some("r-1".into()),
        now: T0,
    };
    let CommandOutcome::Refund { refund_id, .. } = f.store.execute(refund.clone()).await.expect("refund") else {
        panic!("not a refund")
    };
    let postings = f.store.postings(0, 100).await.expect("postings");
    let legs: Vec<&PostingRecord> = postings.iter().filter(|p| p.kind == PostingKind::Refund).collect();
    assert_eq!(legs.len(), 2);
    assert!(legs.iter().all(|p| p.set_id == refund_id), "refund id {refund_id} is not the set: {legs:?}");
    let first_posting = legs[0].posting_id;
    assert_ne!(first_posting, refund_id, "the test needs the two numbers apart");

    // Rewrite the key and the REFUNDED event as the old layouts had them.
    let old_key = records::IdempotencyRecord::RefundV1 { trade: t.id, amount: Amount::new(200), first_posting };
    f.store
        .tree(T::Idempotency)
        .insert(keys::refund_idempotency(&f.shop, "r-1"), records::encode(&old_key).expect("encode"))
        .expect("insert");
    let head = *f.store.event_heads().subscribe(&f.shop).expect("head").borrow();
    let events = f.store.events_between(&f.shop, 0, head, 100).expect("events");
    let last = events.last().expect("the refund event").clone();
    assert_eq!(last.kind, EventKind::Refunded { amount: Amount::new(200), refund_id });
    let old_event =
        EventRecord { kind: EventKind::Refunded { amount: Amount::new(200), refund_id: first_posting }, ..last };
    let mut v2 = vec![records::EVENT_VERSION_V2];
    v2.extend(postcard::to_stdvec(&records::CompactEvent::of(&old_event)).expect("encode"));
    f.store.tree(T::Events).insert(keys::event(&f.shop, head), v2).expect("insert");
    assert_eq!(f.store.events_between(&f.shop, 0, head, 100).expect("events"), events, "version 2");
    // A whole (version 1) event holds its trade as a version 1 server wrote
    // it: version 1 terms, a receipt without a countersignature.
    let mut legacy = old_event.clone();
    legacy.trade.terms = SignedTerms::V1;
    legacy.trade.receipt =
        Some(Receipt::Legacy { signed_payload: vec![1], signature: vec![2; 64], shop_key_fingerprint: [3; 32] });
    let v1 = records::encode_whole_event_v1(&legacy).expect("encode v1");
    f.store.tree(T::Events).insert(keys::event(&f.shop, head), v1).expect("insert");
    let mut expected = events.clone();
    if let Some(e) = expected.last_mut() {
        e.trade = legacy.trade.clone();
    }
    assert_eq!(f.store.events_between(&f.shop, 0, head, 100).expect("events"), expected, "version 1");
    match f.store.execute(refund).await.expect("retry") {
        CommandOutcome::Refund { refund_id: again, replayed: true, .. } => assert_eq!(again, refund_id),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_store_made_with_sleds_default_segment_size_still_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    // As `open` made stores before issue 6: sled's default 512 KiB segments.
    drop(sled::Config::new().path(dir.path()).flush_every_ms(None).open().expect("sled"));
    assert_eq!(existing_segment_size(dir.path()), Some(512 * 1024));
    let store = Store::open(StoreConfig::new(dir.path())).expect("open keeps the store's segment size");
    assert!(store.verify().await.expect("verify").ok());
    drop(store);
    assert_eq!(existing_segment_size(dir.path()), Some(512 * 1024));
    // A new store gets the larger segments.
    let fresh = tempfile::tempdir().expect("tempdir");
    drop(Store::open(StoreConfig::new(fresh.path())).expect("open"));
    assert_eq!(existing_segment_size(fresh.path()), Some(NEW_STORE_SEGMENT_SIZE));
}

/// Fail-stop with the writer pipelined: commands queued together spread
/// over several write groups, later groups applied while the first one's
/// sync fails. None of them may be acknowledged, nor anything after.
#[tokio::test]
async fn a_failed_sync_acknowledges_no_group_applied_behind_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fault = std::sync::Arc::new(SyncFault::default());
    let store =
        Store::open(StoreConfig { sync_fault: Some(fault.clone()), ..StoreConfig::new(dir.path()) }).expect("open");
    // Shops need nothing before them; each gets its own id and credential.
    let shop = |i: u16| Command::CreateShop {
        id: ShopId::parse(&format!("shop-{i}")).expect("id"),
        display_name: format!("Shop {i}"),
        token_hash: [&i.to_be_bytes()[..], &[0; 30]].concat().try_into().expect("32 bytes"),
        max_shops: 10_000,
        now: T0,
    };
    store.execute(shop(0)).await.expect("acknowledged before the fault");

    fault.arm();
    let mut pending = Vec::new();
    let mut refused_at_submit = 0;
    for i in 1..=u16::try_from(2 * super::writer::MAX_GROUP).expect("small") {
        // The writer runs while we queue, so the failed sync may stop the
        // store before the last submits: those are refused at once, which
        // acknowledges nothing either.
        match store.submit(shop(i)).await {
            Ok(p) => pending.push(p),
            Err(e) => {
                assert_eq!(e, StoreError::Stopped);
                refused_at_submit += 1;
            }
        }
    }
    assert!(!pending.is_empty(), "the first submit after arming is queued ({refused_at_submit} refused)");
    for p in pending {
        assert_eq!(p.outcome().await.err(), Some(StoreError::Stopped));
    }
    assert_eq!(fault.fired(), 1, "one failed sync stopped everything behind it");
    assert!(store.is_stopped());
    assert_eq!(store.durable_barrier().await, Err(StoreError::Stopped));
    assert_eq!(store.submit(shop(9_999)).await.err(), Some(StoreError::Stopped));
}
