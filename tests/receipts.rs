//! Receipts from real settlements (a real server, `terminal_sim` handsets)
//! verified offline as a shop would: by `register::verify_receipt`, by an
//! independent check written here with `ring` from the documented layout,
//! by `syncpay shop verify-receipt` and by `scripts/verify_receipt.py`
//! (Python's `cryptography`). Any altered byte, another shop's receipt, an
//! unknown key, a v1/v2 confusion and a handset signature over the v1
//! bytes of a v2 offer all fail; rotation keeps old receipts verifiable;
//! the operator's dispute report names the handset that signed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::backends::{backends, BackendFactory};
use common::binary::run;
use common::manual_carrier::{payload_bytes, payload_bytes_v1, ManualCarrier};
use common::TestServer;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::Value;
use sha2::{Digest, Sha256};
use syncpay::domain::approval::ApprovalPayload;
use syncpay::domain::receipt::ReceiptSigner;
use syncpay::domain::{Decision, PayloadVersion, ScreenText, ShopId, TradeId, UnixMs};
use syncpay::proto::{self, FailureReason as FR, TradeState as S};
use syncpay::register::{
    check_dispute, verify_receipt, verify_trade_receipt, ChargeRequest, ReceiptError, ReceiptKeySet, VirtualRegister,
};
use syncpay::terminal_sim::{CarrierSim, Policy};

const WAIT: Duration = Duration::from_secs(15);
const APPROVER: &str = "+818070000001";
const OTHER_BUYER: &str = "+818070000002";
const SHOP_NAME: &str = "Acme Books";
const LABEL: &str = "till 1";
const DESCRIPTION: &str = "Two books, 本";

struct World {
    t: TestServer,
    sim: CarrierSim,
    register: VirtualRegister,
    shop_token: String,
    carrier_token: String,
}

async fn world(backend: &'static BackendFactory) -> World {
    let t = TestServer::start_on(backend).await;
    let shop_token = t.create_shop("acme", SHOP_NAME).await;
    t.create_shop("other", "Other Shop").await;
    let carrier_token = t.create_carrier("docomo", "Docomo").await;
    let sim = CarrierSim::start(t.channel().await, &carrier_token).expect("sim");
    for number in [APPROVER, OTHER_BUYER] {
        sim.add_handset(number, Policy::Approve).await.expect("handset");
        t.top_up(number, 100_000, "JPY").await;
    }
    sim.wait_connected(WAIT).await.expect("relay connected");
    let register = VirtualRegister::open(t.channel().await, &shop_token, LABEL).await.expect("register");
    World { t, sim, register, shop_token, carrier_token }
}

async fn settle(w: &World, payer: &str, amount: u64) -> proto::Trade {
    let trade = w.register.charge(ChargeRequest::new(payer, amount, "JPY", DESCRIPTION)).await.expect("charge");
    assert_eq!(S::try_from(trade.state), Ok(S::Settled), "{trade:?}");
    trade
}

fn acme() -> ShopId {
    ShopId::parse("acme").expect("shop")
}

fn screen() -> ScreenText<'static> {
    ScreenText { shop_name: SHOP_NAME, register_label: LABEL, description: DESCRIPTION }
}

/// The statement as docs/APPROVAL.md lays it out, built here by hand.
fn statement_by_hand(r: &proto::ApprovalReceipt) -> Vec<u8> {
    let mut s = b"syncpay/receipt".to_vec();
    s.push(1);
    s.extend_from_slice(&r.receipt_key_id);
    s.extend_from_slice(&u32::try_from(r.signed_payload.len()).expect("len").to_be_bytes());
    s.extend_from_slice(&r.signed_payload);
    s.extend_from_slice(&r.signature);
    s.extend_from_slice(&r.handset_commitment);
    s.push(3);
    s.extend_from_slice(&u64::try_from(r.settled_at_ms).expect("ms").to_be_bytes());
    s
}

/// What a handset signs for an offer.
type BytesOf = fn(&proto::Offer) -> Vec<u8>;

/// One bytes field of a receipt, to alter.
type FieldOf = fn(&mut proto::ApprovalReceipt) -> &mut Vec<u8>;

fn ring_verifies(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key).verify(message, signature).is_ok()
}

#[tokio::test]
async fn a_real_settlement_verifies_offline_independently_and_no_byte_can_change() {
    for backend in backends() {
        a_real_settlement_verifies_offline_independently_and_no_byte_can_change_on(backend).await;
    }
}

async fn a_real_settlement_verifies_offline_independently_and_no_byte_can_change_on(backend: &'static BackendFactory) {
    let w = world(backend).await;
    let trade = settle(&w, APPROVER, 1_200).await;
    let receipt = trade.receipt.clone().expect("receipt");
    let keys = w.register.receipt_keys().await.expect("keys");
    assert_eq!(keys.keys().len(), 1);

    // The library check, with the trade and the screen the buyer saw.
    let v = verify_trade_receipt(&trade, &keys, &acme()).expect("verifies");
    v.check_screen(screen()).expect("the signed screen is the one the buyer saw");
    assert_eq!(v.payload.version.number(), 2);
    assert!(matches!(
        v.check_screen(ScreenText { description: "Three books", ..screen() }),
        Err(ReceiptError::ScreenMismatch)
    ));

    // Independently: the statement by hand, the countersignature with ring,
    // the commitment with sha2 and the handset's key (as revealed in a
    // dispute).
    let operator = keys.keys()[0].public_key;
    assert!(ring_verifies(&operator, &statement_by_hand(&receipt), &receipt.countersignature));
    let handset = w.sim.handset(APPROVER).expect("handset").public_key;
    let trade_bytes = TradeId::parse(&trade.trade_id).expect("id");
    let commitment: [u8; 32] = Sha256::new()
        .chain_update(b"syncpay/handset-commitment")
        .chain_update(trade_bytes.as_bytes())
        .chain_update(handset)
        .finalize()
        .into();
    assert_eq!(receipt.handset_commitment, commitment.to_vec());
    assert!(ring_verifies(&handset, &receipt.signed_payload, &receipt.signature));
    assert_eq!(&Sha256::digest(operator)[..8], receipt.receipt_key_id.as_slice(), "the key id is the key's");
    // The shop never receives the handset key (nor its plain hash).
    let wire = prost::Message::encode_to_vec(&trade);
    for secret in [handset.to_vec(), Sha256::digest(handset).to_vec()] {
        assert!(!wire.windows(32).any(|w| w == secret.as_slice()), "the handset key reached the shop");
    }

    // Every byte of every field matters.
    let fields: [(&str, FieldOf); 5] = [
        ("signed_payload", |r| &mut r.signed_payload),
        ("signature", |r| &mut r.signature),
        ("handset_commitment", |r| &mut r.handset_commitment),
        ("receipt_key_id", |r| &mut r.receipt_key_id),
        ("countersignature", |r| &mut r.countersignature),
    ];
    let mut flips = 0;
    for (name, field) in fields {
        for i in 0..field(&mut receipt.clone()).len() {
            let mut r = receipt.clone();
            field(&mut r)[i] ^= 0x01;
            assert!(verify_receipt(&r, &keys, &acme()).is_err(), "{name}[{i}] flipped still verifies");
            assert!(!ring_verifies(&operator, &statement_by_hand(&r), &r.countersignature), "{name}[{i}]: ring");
            flips += 1;
        }
    }
    for byte in 0..8 {
        let r =
            proto::ApprovalReceipt { settled_at_ms: receipt.settled_at_ms ^ (0x01 << (8 * byte)), ..receipt.clone() };
        assert!(verify_receipt(&r, &keys, &acme()).is_err(), "settled_at_ms byte {byte}");
        flips += 1;
    }
    assert_eq!(flips, receipt.signed_payload.len() + 64 + 32 + 8 + 64 + 8);
    // And through the trade: a changed field of the trade does not match.
    for (field, changed) in [
        ("amount_minor", proto::Trade { amount_minor: 1_201, ..trade.clone() }),
        ("binding_code", proto::Trade { binding_code: "000000".into(), ..trade.clone() }),
        ("finished_at_ms", proto::Trade { finished_at_ms: trade.finished_at_ms + 1, ..trade.clone() }),
    ] {
        assert_eq!(verify_trade_receipt(&changed, &keys, &acme()).map(|_| ()), Err(ReceiptError::Mismatch(field)));
    }

    // Another shop cannot pass this receipt off as its own.
    let other = ShopId::parse("other").expect("shop");
    assert_eq!(
        verify_receipt(&receipt, &keys, &other).map(|_| ()),
        Err(ReceiptError::OtherShop { expected: other.clone(), found: acme() })
    );
    // A key the shop does not trust.
    let stranger = ReceiptKeySet::new(vec![ReceiptSigner::from_seed([1; 32], UnixMs(0)).published()]).expect("keys");
    assert!(matches!(verify_receipt(&receipt, &stranger, &acme()), Err(ReceiptError::UnknownKey(_))));
    // v1/v2 confusion: the version byte changed, or the same approval in the
    // retired layout, even with a valid handset signature over it.
    let mut relabelled = receipt.clone();
    relabelled.signed_payload[16] = 1;
    assert!(matches!(verify_receipt(&relabelled, &keys, &acme()), Err(ReceiptError::Payload(_))));
    let parsed = ApprovalPayload::parse(&receipt.signed_payload).expect("payload");
    let as_v1 = ApprovalPayload { version: PayloadVersion::V1, ..parsed }.to_bytes();
    let v1 = proto::ApprovalReceipt { signed_payload: as_v1, ..receipt.clone() };
    assert!(matches!(verify_receipt(&v1, &keys, &acme()), Err(ReceiptError::BadCountersignature(_))));

    // Two trades of the same buyer at the same shop share nothing that
    // identifies the handset.
    let second = settle(&w, APPROVER, 300).await;
    let r2 = second.receipt.as_ref().expect("receipt");
    assert_ne!(r2.handset_commitment, receipt.handset_commitment);
    verify_trade_receipt(&second, &keys, &acme()).expect("second verifies");
    w.sim.shutdown().await.expect("sim");
}

#[tokio::test]
async fn a_signature_over_other_bytes_than_the_offer_carries_never_settles() {
    for backend in backends() {
        a_signature_over_other_bytes_than_the_offer_carries_never_settles_on(backend).await;
    }
}

async fn a_signature_over_other_bytes_than_the_offer_carries_never_settles_on(backend: &'static BackendFactory) {
    let t = TestServer::start_on(backend).await;
    let shop_token = t.create_shop("acme", SHOP_NAME).await;
    let carrier_token = t.create_carrier("docomo", "Docomo").await;
    let key = SigningKey::from_bytes(&[21u8; 32]);
    common::enroll_with_key(&mut t.carrier(&carrier_token).await, APPROVER, &key).await;
    t.top_up(APPROVER, 10_000, "JPY").await;
    let mut relay = ManualCarrier::connect(t.carrier(&carrier_token).await).await;
    let register = VirtualRegister::open(t.channel().await, &shop_token, LABEL).await.expect("register");
    let charge = || ChargeRequest::new(APPROVER, 500, "JPY", DESCRIPTION);

    // The handset signs what an old handset would: the v1 bytes of a v2
    // offer. Then one that signs the right layout over other screen text.
    let wrong: [(&str, BytesOf); 2] = [
        ("v1 bytes of a v2 offer", |o| payload_bytes_v1(o, Decision::Approve)),
        ("another description", |o| {
            let shown = proto::Offer { description: "Nothing".into(), ..o.clone() };
            payload_bytes(&shown, Decision::Approve, o.amount_minor)
        }),
    ];
    for (what, bytes) in wrong {
        let created = register.create(charge()).await.expect("create");
        let (_, offer) = relay.offer(&created.trade_id).await;
        assert_eq!(offer.payload_version, 2);
        let signature = key.sign(&bytes(&offer)).to_bytes().to_vec();
        relay.answer(&offer.trade_id, Decision::Approve, signature).await;
        let result = relay.answer_result(&offer.trade_id).await;
        assert_eq!((result.state, result.failure_reason), (S::Failed as i32, FR::BadSignature as i32), "{what}");
        let done = register.get(TradeId::parse(&created.trade_id).expect("id")).await.expect("get");
        assert!(done.receipt.is_none(), "{what}: no receipt");
    }
    // The bytes the offer carries, rebuilt from its fields, settle.
    let created = register.create(charge()).await.expect("create");
    let (_, offer) = relay.offer(&created.trade_id).await;
    assert_eq!(offer.approve_payload, payload_bytes(&offer, Decision::Approve, offer.amount_minor));
    assert_eq!(offer.decline_payload, payload_bytes(&offer, Decision::Decline, offer.amount_minor));
    relay.answer(&offer.trade_id, Decision::Approve, key.sign(&offer.approve_payload).to_bytes().to_vec()).await;
    assert_eq!(relay.answer_result(&offer.trade_id).await.state, S::Settled as i32);
    assert_eq!(t.balance(&format!("wallet:{APPROVER}:JPY")).await, 9_500, "only the last trade moved money");
    t.assert_ledger_ok().await;
}

#[tokio::test]
async fn rotation_keeps_old_receipts_verifiable_and_survives_a_restart() {
    for backend in backends() {
        rotation_keeps_old_receipts_verifiable_and_survives_a_restart_on(backend).await;
    }
}

async fn rotation_keeps_old_receipts_verifiable_and_survives_a_restart_on(backend: &'static BackendFactory) {
    let w = world(backend).await;
    let first = settle(&w, APPROVER, 100).await;
    let before = w.register.receipt_keys().await.expect("keys");
    let rotated = w.t.admin().await.rotate_receipt_key(proto::RotateReceiptKeyRequest {}).await.expect("rotate");
    let after = ReceiptKeySet::from_proto(&rotated.into_inner()).expect("keys");
    assert_eq!(after.keys().len(), 2);
    assert_eq!(after.keys()[1].id, before.keys()[0].id, "the old key stays published, retired");
    assert!(after.keys()[1].retired_at.is_some() && after.keys()[0].retired_at.is_none());
    assert_eq!(w.register.receipt_keys().await.expect("keys"), after, "shops see the same keys");

    let second = settle(&w, APPROVER, 200).await;
    let v1 = verify_trade_receipt(&first, &after, &acme()).expect("an old receipt still verifies");
    let v2 = verify_trade_receipt(&second, &after, &acme()).expect("a new one verifies");
    assert_eq!((v1.key_id, v2.key_id), (before.keys()[0].id, after.keys()[0].id));
    assert!(matches!(verify_trade_receipt(&second, &before, &acme()), Err(ReceiptError::UnknownKey(_))));

    // The key file is private and is what a restart reads.
    let file = w.t.data_dir.join(syncpay::sync_server::RECEIPT_KEYS_FILE);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).expect("key file").permissions().mode() & 0o777, 0o600);
    }
    let World { t, sim, shop_token, .. } = w;
    sim.shutdown().await.expect("sim");
    let t = t.restart().await;
    let mut shop = t.shop(&shop_token).await;
    let keys = shop.get_receipt_keys(proto::GetReceiptKeysRequest {}).await.expect("keys").into_inner();
    assert_eq!(ReceiptKeySet::from_proto(&keys).expect("keys"), after);
    for trade in [&first, &second] {
        let again = shop.get_trade(proto::GetTradeRequest { trade_id: trade.trade_id.clone() }).await.expect("get");
        let again = again.into_inner();
        assert_eq!(again.receipt, trade.receipt, "a receipt never changes");
        verify_trade_receipt(&again, &after, &acme()).expect("verifies after the restart");
    }
}

#[tokio::test]
async fn the_dispute_report_names_the_handset_that_signed_even_after_reenrollment() {
    for backend in backends() {
        the_dispute_report_names_the_handset_that_signed_even_after_reenrollment_on(backend).await;
    }
}

async fn the_dispute_report_names_the_handset_that_signed_even_after_reenrollment_on(backend: &'static BackendFactory) {
    let w = world(backend).await;
    let trade = settle(&w, APPROVER, 700).await;
    let signer_key = w.sim.handset(APPROVER).expect("handset").public_key;
    // The carrier enrolls a new key for the buyer afterwards.
    let new_key = SigningKey::from_bytes(&[33u8; 32]);
    w.t.carrier(&w.carrier_token)
        .await
        .enroll_handset(proto::EnrollHandsetRequest {
            subscriber_number: APPROVER.into(),
            public_key: new_key.verifying_key().to_bytes().to_vec(),
        })
        .await
        .expect("re-enroll");
    let report =
        w.t.admin()
            .await
            .dispute_trade(proto::DisputeTradeRequest { trade_id: trade.trade_id.clone() })
            .await
            .expect("dispute")
            .into_inner();
    assert_eq!((report.shop_id.as_str(), report.subscriber_number.as_str()), ("acme", APPROVER));
    assert_eq!(report.carrier_id, "docomo");
    assert_eq!(report.handset_public_key, signer_key.to_vec(), "the key kept with the receipt");
    assert!(report.key_from_receipt && !report.key_enrolled_now);
    assert_eq!(report.receipt, trade.receipt, "the receipt as the shop has it");
    let keys = w.register.receipt_keys().await.expect("keys");
    assert_eq!(report.receipt_public_key, keys.keys()[0].public_key.to_vec());
    let check = check_dispute(trade.receipt.as_ref().expect("receipt"), &signer_key, &keys);
    assert!(check.all_pass(), "{check:?}");
    // The key enrolled now did not sign it.
    let check = check_dispute(trade.receipt.as_ref().expect("receipt"), &new_key.verifying_key().to_bytes(), &keys);
    assert!(!check.commitment_matches && !check.handset_signature_valid);
    // A trade without a receipt, and a malformed id.
    let declined = w.register.create(ChargeRequest::new("+818079999999", 10, "JPY", "")).await.expect("create");
    let mut admin = w.t.admin().await;
    let no_receipt = admin.dispute_trade(proto::DisputeTradeRequest { trade_id: declined.trade_id }).await;
    assert_eq!(no_receipt.expect_err("no receipt").code(), tonic::Code::FailedPrecondition);
    let bad = admin.dispute_trade(proto::DisputeTradeRequest { trade_id: "trd_x".into() }).await;
    let status = bad.expect_err("bad id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("trade_id"), "{}", status.message());
    w.sim.shutdown().await.expect("sim");
}

/// Python with `cryptography`, or why not: `python3` on the path, then the
/// distribution's `/usr/bin/python3` (where Debian's python3-cryptography
/// lands when `python3` is another installation). Under `CI` its absence
/// fails.
fn python() -> Option<&'static str> {
    for python in ["python3", "/usr/bin/python3"] {
        let ok = std::process::Command::new(python)
            .args(["-c", "import cryptography"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(python);
        }
    }
    assert!(std::env::var_os("CI").is_none(), "CI: python3 with the cryptography package is required");
    eprintln!("SKIPPED the Python check: python3 with the cryptography package is not installed");
    None
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_an_independent_python_check_verify_it_offline() {
    for backend in backends() {
        the_cli_and_an_independent_python_check_verify_it_offline_on(backend).await;
    }
}

async fn the_cli_and_an_independent_python_check_verify_it_offline_on(backend: &'static BackendFactory) {
    let w = world(backend).await;
    let trade = settle(&w, APPROVER, 1_500).await;
    let url = w.t.server.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let shop_token = write(dir.path(), "shop.token", &w.shop_token);
    let admin_token = w.t.data_dir.join("admin.token").display().to_string();
    let shop = |args: &[&str]| {
        let mut all = vec!["shop", "--server", &url, "--token-file", &shop_token];
        all.extend_from_slice(args);
        run(&all)
    };
    let out = shop(&["--json", "status", &trade.trade_id]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let trade_json = write(dir.path(), "trade.json", &String::from_utf8_lossy(&out.stdout));
    let keys_file = dir.path().join("keys.json").display().to_string();
    let out = shop(&["receipt-keys", "--out", &keys_file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let parsed: Value = serde_json::from_str(&std::fs::read_to_string(&trade_json).expect("read")).expect("json");
    let receipt_json = write(dir.path(), "receipt.json", &parsed["receipt"].to_string());
    let mut tampered = parsed.clone();
    let payload = tampered["receipt"]["signed_payload"].as_str().expect("hex").to_owned();
    let flipped = format!("{}{}", &payload[..40], if &payload[40..41] == "0" { "1" } else { "0" }) + &payload[41..];
    tampered["receipt"]["signed_payload"] = Value::from(flipped);
    let tampered_json = write(dir.path(), "tampered.json", &tampered.to_string());
    // A receipt alone whose countersignature changed: only that check fails.
    let mut forged = parsed["receipt"].clone();
    let counter = forged["countersignature"].as_str().expect("hex").to_owned();
    forged["countersignature"] =
        Value::from(format!("{}{}", if &counter[..1] == "0" { "1" } else { "0" }, &counter[1..]));
    let forged_json = write(dir.path(), "forged.json", &forged.to_string());
    let garbage = write(dir.path(), "garbage.json", "not json");

    // `syncpay shop verify-receipt` runs with no server and no token.
    let verify = |file: &str, extra: &[&str]| {
        let mut all = vec!["shop", "verify-receipt", file, "--keys", &keys_file];
        all.extend_from_slice(extra);
        run(&all)
    };
    let acme = ["--shop", "acme"];
    let shown = ["--shop", "acme", "--display-name", SHOP_NAME, "--register-label", LABEL];
    let cases: Vec<(&str, &str, Vec<&str>, i32)> = vec![
        ("the trade", &trade_json, acme.to_vec(), 0),
        ("the receipt alone", &receipt_json, acme.to_vec(), 0),
        ("with the screen", &trade_json, shown.to_vec(), 0),
        (
            "another screen",
            &trade_json,
            vec!["--shop", "acme", "--display-name", "Acme Bookz", "--register-label", LABEL],
            1,
        ),
        ("another shop", &trade_json, vec!["--shop", "other"], 1),
        ("a flipped payload byte", &tampered_json, acme.to_vec(), 1),
        ("a flipped countersignature", &forged_json, acme.to_vec(), 1),
        ("not JSON", &garbage, acme.to_vec(), 2),
    ];
    for (what, file, extra, code) in &cases {
        let out = verify(file, extra);
        assert_eq!(out.status.code(), Some(*code), "verify-receipt, {what}: {out:?}");
    }
    let out = verify(&trade_json, &["--shop", "acme", "--json"]);
    let verdict: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((verdict["verified"].as_bool(), verdict["amount_minor"].as_u64()), (Some(true), Some(1_500)));

    // The Python implementation, written from docs/APPROVAL.md.
    if let Some(python) = python() {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/verify_receipt.py");
        let vectors = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/approval-vectors.json");
        let out = std::process::Command::new(python).args([script, "--vectors", vectors]).output().expect("python");
        assert_eq!(out.status.code(), Some(0), "python vectors: {out:?}");
        for (what, file, extra, code) in &cases {
            let mut args = vec![script, "--keys", &keys_file, *file];
            args.extend(extra.iter().copied());
            let out = std::process::Command::new(python).args(&args).output().expect("python");
            assert_eq!(out.status.code(), Some(*code), "python, {what}: {out:?}");
        }
    }

    // The operator's dispute view, on the server's receipt and on the
    // shop's copies.
    let admin = |args: &[&str]| {
        let mut all = vec!["admin", "--server", &url, "--token-file", &admin_token];
        all.extend_from_slice(args);
        run(&all)
    };
    let out = admin(&["dispute", &trade.trade_id]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(APPROVER) && text.contains("✓ SHA-256"), "{text}");
    let out = admin(&["--json", "dispute", &trade.trade_id, "--receipt", &trade_json]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["all_checks_pass"], true, "{report}");
    let handset = w.sim.handset(APPROVER).expect("handset").public_key;
    assert_eq!(report["handset_public_key"], syncpay::hex::encode(&handset));
    let out = admin(&["dispute", &trade.trade_id, "--receipt", &tampered_json]);
    assert_eq!(out.status.code(), Some(1), "a tampered copy fails: {out:?}");
    let out = admin(&["receipt-keys"]);
    let published = ReceiptKeySet::from_json(&String::from_utf8_lossy(&out.stdout)).expect("key file");
    assert_eq!(published, w.register.receipt_keys().await.expect("keys"));
    w.sim.shutdown().await.expect("sim");
}
