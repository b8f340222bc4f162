//! The committed test vectors (`docs/approval-vectors.json`) checked both
//! ways: each payload built from its inputs is the hex in the file, and
//! the hex parses back to those inputs; the test key's signature (Ed25519
//! is deterministic) is the file's and verifies, with ed25519-dalek and
//! independently with ring; each receipt statement rebuilt from its fields
//! is the file's, its countersignature is reproduced and verifies, and
//! `register::verify_receipt` accepts the assembled receipt.
//!
//! `SYNCPAY_WRITE_VECTORS=1 cargo test --test approval_vectors` rewrites
//! the file from the cases below (then review the diff: a change to an
//! existing vector is a change to the public contract).

use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use syncpay::domain::approval::ApprovalPayload;
use syncpay::domain::receipt::{handset_commitment, ReceiptKeyId, ReceiptSigner, Statement};
use syncpay::domain::{
    Amount, BindingCode, Currency, Decision, PayloadVersion, RegisterId, ScreenText, ShopId, TradeId, UnixMs,
};
use syncpay::hex;
use syncpay::proto;
use syncpay::register::{verify_receipt, ReceiptKeySet};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/approval-vectors.json");

/// RFC 8032 section 7.1, TEST 1: the handset's test key, so an implementer
/// can check their Ed25519 against the RFC first.
const HANDSET_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
/// RFC 8032 section 7.1, TEST 2: the operator's test receipt key.
const RECEIPT_SEED: &str = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";

struct Case {
    name: &'static str,
    version: u8,
    trade_id: [u8; 16],
    amount: u64,
    currency: &'static str,
    shop_id: String,
    register_id: [u8; 16],
    expires_at: u64,
    binding_code: &'static str,
    shop_name: String,
    register_label: String,
    description: String,
    decision: Decision,
}

fn cases() -> Vec<Case> {
    let base = Case {
        name: "v2 approve",
        version: 2,
        trade_id: *b"\x01\x23\x45\x67\x89\xab\xcd\xef\xfe\xdc\xba\x98\x76\x54\x32\x10",
        amount: 1200,
        currency: "JPY",
        shop_id: "acme-books".into(),
        register_id: [0x42; 16],
        expires_at: 1_767_225_600_000,
        binding_code: "042917",
        shop_name: "Acme Books".into(),
        register_label: "Front desk".into(),
        description: "Two books".into(),
        decision: Decision::Approve,
    };
    vec![
        Case { ..clone(&base) },
        Case { name: "v2 decline of the same offer", decision: Decision::Decline, ..clone(&base) },
        Case {
            name: "v2 longest shop id (32), largest amount (u64::MAX), largest expiry",
            shop_id: "z0123456789-abcdefghijklmnopq_yx".into(),
            amount: u64::MAX,
            expires_at: u64::MAX,
            ..clone(&base)
        },
        Case {
            name: "v2 longest texts: display name and label 64 characters, description 140, 4-byte UTF-8",
            shop_name: "𝄞".repeat(64),
            register_label: "🎫".repeat(64),
            description: "𝄞".repeat(140),
            ..clone(&base)
        },
        Case {
            name: "v2 non-ASCII screen text (Japanese, precomposed accent), empty description",
            shop_name: "本屋さん Café".into(),
            register_label: "レジ 1".into(),
            description: String::new(),
            currency: "KWD",
            amount: 1,
            binding_code: "000000",
            ..clone(&base)
        },
        Case {
            name: "v2 shortest shop id (1), all-zero ids",
            shop_id: "a".into(),
            trade_id: [0; 16],
            register_id: [0; 16],
            binding_code: "999999",
            ..clone(&base)
        },
        Case { name: "v1 approve (retired layout) of the first offer", version: 1, ..clone(&base) },
        Case { name: "v1 decline (retired layout)", version: 1, decision: Decision::Decline, ..clone(&base) },
    ]
}

fn clone(c: &Case) -> Case {
    Case {
        name: c.name,
        version: c.version,
        trade_id: c.trade_id,
        amount: c.amount,
        currency: c.currency,
        shop_id: c.shop_id.clone(),
        register_id: c.register_id,
        expires_at: c.expires_at,
        binding_code: c.binding_code,
        shop_name: c.shop_name.clone(),
        register_label: c.register_label.clone(),
        description: c.description.clone(),
        decision: c.decision,
    }
}

fn screen(c: &Case) -> ScreenText<'_> {
    ScreenText { shop_name: &c.shop_name, register_label: &c.register_label, description: &c.description }
}

fn payload(c: &Case) -> ApprovalPayload {
    ApprovalPayload {
        trade_id: TradeId::from_bytes(c.trade_id),
        amount: Amount::new(c.amount),
        currency: Currency::parse(c.currency).expect("currency"),
        shop_id: ShopId::parse(&c.shop_id).expect("shop"),
        register_id: RegisterId::from_bytes(c.register_id),
        expires_at: UnixMs(c.expires_at),
        version: match c.version {
            1 => PayloadVersion::V1,
            _ => PayloadVersion::V2 {
                binding_code: BindingCode::parse(c.binding_code).expect("code"),
                screen_digest: screen(c).digest(),
            },
        },
        decision: c.decision,
    }
}

fn decision_name(d: Decision) -> &'static str {
    match d {
        Decision::Approve => "APPROVE",
        Decision::Decline => "DECLINE",
    }
}

fn seed(text: &str) -> [u8; 32] {
    hex::decode_array(text).expect("seed")
}

/// The settlement time of the receipt vectors.
const SETTLED_AT: u64 = 1_767_225_512_345;

fn generate() -> Value {
    let handset = SigningKey::from_bytes(&seed(HANDSET_SEED));
    let handset_public = handset.verifying_key().to_bytes();
    let operator = ReceiptSigner::from_seed(seed(RECEIPT_SEED), UnixMs(0));
    let mut payloads = Vec::new();
    let mut receipts = Vec::new();
    for c in cases() {
        let p = payload(&c);
        let bytes = p.to_bytes();
        let signature = handset.sign(&bytes).to_bytes();
        payloads.push(json!({
            "name": c.name,
            "payload_version": c.version,
            "trade_id": TradeId::from_bytes(c.trade_id).to_string(),
            "trade_id_hex": hex::encode(&c.trade_id),
            "amount_minor": c.amount.to_string(),
            "currency": c.currency,
            "shop_id": c.shop_id,
            "register_id": RegisterId::from_bytes(c.register_id).to_string(),
            "register_id_hex": hex::encode(&c.register_id),
            "expires_at_ms": c.expires_at.to_string(),
            "binding_code": c.binding_code,
            "shop_name": c.shop_name,
            "register_label": c.register_label,
            "description": c.description,
            "screen_digest": if c.version == 2 { hex::encode(&screen(&c).digest()) } else { String::new() },
            "decision": decision_name(c.decision),
            "payload": hex::encode(&bytes),
            "signature": hex::encode(&signature),
        }));
        if c.decision == Decision::Approve && c.version == 2 && c.expires_at > SETTLED_AT {
            let commitment = handset_commitment(p.trade_id, &handset_public);
            let statement = Statement {
                key_id: operator.id(),
                payload: &bytes,
                handset_signature: &signature,
                commitment: &commitment,
                settled_at: UnixMs(SETTLED_AT),
            };
            receipts.push(json!({
                "name": format!("receipt of \"{}\"", c.name),
                "shop_id": c.shop_id,
                "signed_payload": hex::encode(&bytes),
                "signature": hex::encode(&signature),
                "handset_commitment": hex::encode(&commitment),
                "settled_at_ms": SETTLED_AT.to_string(),
                "receipt_key_id": operator.id().to_string(),
                "statement_version": 1,
                "statement": hex::encode(&statement.to_bytes()),
                "countersignature": hex::encode(&operator.sign(&statement)),
            }));
        }
    }
    json!({
        "about": "Test vectors of the syncpay approval payload (docs/APPROVAL.md) and of countersigned receipts. \
                  64-bit integers are decimal strings. Keys are RFC 8032 section 7.1 TEST 1 (handset) and \
                  TEST 2 (operator). Checked both ways by tests/approval_vectors.rs and by \
                  scripts/verify_receipt.py --vectors.",
        "handset_key": {"seed": HANDSET_SEED, "public_key": hex::encode(&handset_public)},
        "receipt_key": {
            "seed": RECEIPT_SEED,
            "public_key": hex::encode(&operator.public_key()),
            "key_id": operator.id().to_string(),
        },
        "approval_payloads": payloads,
        "receipts": receipts,
    })
}

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or_else(|| panic!("{field} in {v}"))
}

fn bytes(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(text(v, field)).unwrap_or_else(|| panic!("{field} is hex in {v}"))
}

fn number(v: &Value, field: &str) -> u64 {
    text(v, field).parse().unwrap_or_else(|_| panic!("{field} is a decimal string in {v}"))
}

fn ring_verifies(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key).verify(message, signature).is_ok()
}

#[test]
fn the_committed_vectors_hold_both_ways() {
    let generated = generate();
    if std::env::var_os("SYNCPAY_WRITE_VECTORS").is_some() {
        let mut out = serde_json::to_string_pretty(&generated).expect("json");
        out.push('\n');
        std::fs::write(FILE, out).expect("write the vectors");
    }
    let file: Value = serde_json::from_str(&std::fs::read_to_string(FILE).expect("read the vectors")).expect("json");

    let handset_public = bytes(&file["handset_key"], "public_key");
    let handset = SigningKey::from_bytes(&hex::decode_array(text(&file["handset_key"], "seed")).expect("seed"));
    assert_eq!(handset.verifying_key().to_bytes().to_vec(), handset_public, "the seed gives the public key");
    let receipt_public: [u8; 32] = bytes(&file["receipt_key"], "public_key").try_into().expect("32 bytes");
    let operator =
        ReceiptSigner::from_seed(hex::decode_array(text(&file["receipt_key"], "seed")).expect("seed"), UnixMs(0));
    assert_eq!(operator.public_key(), receipt_public);
    assert_eq!(text(&file["receipt_key"], "key_id"), ReceiptKeyId::of(&receipt_public).to_string());

    let vectors = file["approval_payloads"].as_array().expect("payloads");
    assert_eq!(vectors.len(), cases().len(), "every case is in the file");
    for (v, c) in vectors.iter().zip(cases()) {
        let name = text(v, "name");
        assert_eq!(name, c.name);
        // Inputs → bytes.
        let built = payload(&c).to_bytes();
        assert_eq!(hex::encode(&built), text(v, "payload"), "{name}: built from the inputs");
        // The file's inputs are the case's (text forms included).
        assert_eq!(text(v, "trade_id"), TradeId::from_bytes(c.trade_id).to_string(), "{name}");
        assert_eq!(TradeId::parse(text(v, "trade_id")).expect("id").as_bytes().to_vec(), bytes(v, "trade_id_hex"));
        assert_eq!(
            RegisterId::parse(text(v, "register_id")).expect("id").as_bytes().to_vec(),
            bytes(v, "register_id_hex")
        );
        assert_eq!(number(v, "amount_minor"), c.amount, "{name}");
        assert_eq!(number(v, "expires_at_ms"), c.expires_at, "{name}");
        assert_eq!((text(v, "shop_id"), text(v, "currency")), (c.shop_id.as_str(), c.currency), "{name}");
        assert_eq!(
            (text(v, "shop_name"), text(v, "register_label"), text(v, "description")),
            (c.shop_name.as_str(), c.register_label.as_str(), c.description.as_str()),
            "{name}"
        );
        // Bytes → inputs.
        let parsed = ApprovalPayload::parse(&bytes(v, "payload")).expect("the payload parses");
        assert_eq!(parsed, payload(&c), "{name}: parsed back");
        assert_eq!(v["payload_version"].as_u64(), Some(u64::from(parsed.version.number())), "{name}");
        assert_eq!(text(v, "decision"), decision_name(parsed.decision), "{name}");
        if let PayloadVersion::V2 { binding_code, screen_digest } = parsed.version {
            assert_eq!(binding_code.to_string(), text(v, "binding_code"), "{name}");
            assert_eq!(screen_digest.to_vec(), bytes(v, "screen_digest"), "{name}");
        }
        // The signature: reproduced from the seed, verified two ways.
        let signature = bytes(v, "signature");
        assert_eq!(handset.sign(&built).to_bytes().to_vec(), signature, "{name}: signature reproduced");
        assert!(parsed.verify(&handset_public.clone().try_into().expect("32"), &signature), "{name}: dalek");
        assert!(ring_verifies(&handset_public, &built, &signature), "{name}: ring");
    }

    let keys = ReceiptKeySet::new(vec![operator.published()]).expect("keys");
    let receipts = file["receipts"].as_array().expect("receipts");
    assert!(receipts.len() >= 3, "receipt vectors: {}", receipts.len());
    for r in receipts {
        let name = text(r, "name");
        let payload = bytes(r, "signed_payload");
        let signature: [u8; 64] = bytes(r, "signature").try_into().expect("64");
        let commitment: [u8; 32] = bytes(r, "handset_commitment").try_into().expect("32");
        let trade = ApprovalPayload::parse(&payload).expect("payload").trade_id;
        let key: [u8; 32] = handset_public.clone().try_into().expect("32");
        assert_eq!(commitment, handset_commitment(trade, &key), "{name}: commitment");
        let key_id = ReceiptKeyId::from_bytes(bytes(r, "receipt_key_id").try_into().expect("8"));
        let statement = Statement {
            key_id,
            payload: &payload,
            handset_signature: &signature,
            commitment: &commitment,
            settled_at: UnixMs(number(r, "settled_at_ms")),
        };
        assert_eq!(hex::encode(&statement.to_bytes()), text(r, "statement"), "{name}: statement rebuilt");
        let counter = bytes(r, "countersignature");
        assert_eq!(operator.sign(&statement).to_vec(), counter, "{name}: countersignature reproduced");
        assert!(ring_verifies(&receipt_public, &statement.to_bytes(), &counter), "{name}: ring");
        let receipt = proto::ApprovalReceipt {
            signed_payload: payload.clone(),
            signature: signature.to_vec(),
            handset_key_fingerprint: Vec::new(),
            handset_commitment: commitment.to_vec(),
            settled_at_ms: i64::try_from(number(r, "settled_at_ms")).expect("ms"),
            receipt_key_id: key_id.as_bytes().to_vec(),
            countersignature: counter,
            statement_version: 1,
        };
        let shop = ShopId::parse(text(r, "shop_id")).expect("shop");
        verify_receipt(&receipt, &keys, &shop).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert_eq!(file, generated, "the file is exactly what the cases generate (SYNCPAY_WRITE_VECTORS=1 rewrites it)");
}
