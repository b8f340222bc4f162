//! The offline receipt check, for shops: a receipt, the operator's
//! published receipt keys and the checking shop's id in; the verified facts
//! or the reason it fails out. Pure: no network, no clock. The same steps
//! in prose, for other languages: `docs/APPROVAL.md`.

use serde_json::{json, Value};

use crate::domain::approval::{ApprovalPayload, PayloadError, PayloadVersion, ScreenText};
use crate::domain::receipt::{PublishedKey, ReceiptKeyId, Statement, KEY_ID_LEN, MAX_RECEIPT_KEYS, STATEMENT_VERSION};
use crate::domain::{Decision, ShopId, UnixMs};
use crate::hex;
use crate::proto;

/// What the key file says it is.
pub const KEY_FILE_FORMAT: &str = "syncpay-receipt-keys";
pub const KEY_FILE_VERSION: u64 = 1;

/// Why a receipt does not verify. Each names one failed step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// A settled trade without a receipt, or a trade that is not settled.
    #[error("no receipt: the trade is {0}")]
    NoReceipt(String),
    /// Settled before receipts were countersigned: nothing to check offline.
    #[error("the receipt has no countersignature (settled before receipts were countersigned)")]
    NotCountersigned,
    #[error("statement version {0} is not one this verifier knows")]
    StatementVersion(u32),
    #[error("{field}: {reason}")]
    Malformed { field: &'static str, reason: String },
    #[error("signed_payload: {0}")]
    Payload(PayloadError),
    #[error("receipt_key_id {0} is not among the trusted receipt keys")]
    UnknownKey(ReceiptKeyId),
    #[error("countersignature does not verify under receipt key {0}")]
    BadCountersignature(ReceiptKeyId),
    #[error("the signed payload is a DECLINE, not an approval")]
    NotAnApproval,
    #[error("the receipt is for shop {found}, not {expected}")]
    OtherShop { expected: ShopId, found: ShopId },
    #[error("settled_at_ms {settled} is not before the trade's expiry {expires}")]
    SettledAfterExpiry { settled: u64, expires: u64 },
    #[error("{0}: the trade and its signed receipt disagree")]
    Mismatch(&'static str),
    #[error("the screen digest is not the digest of the given shop name, register label and description")]
    ScreenMismatch,
    #[error("the receipt's payload is version 1, which binds no binding code or screen text")]
    VersionOne,
}

/// Why a receipt key set cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    #[error("not a receipt key file: {0}")]
    Format(String),
    #[error("keys[{index}].{field}: {reason}")]
    Key { index: usize, field: &'static str, reason: String },
    #[error("no keys")]
    Empty,
    #[error("more than {MAX_RECEIPT_KEYS} keys")]
    TooMany,
}

/// The receipt-signing public keys a shop trusts: from the operator's
/// `GetReceiptKeys` or a key file. Each key id is checked to be the key's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptKeySet {
    keys: Vec<PublishedKey>,
}

impl ReceiptKeySet {
    pub fn new(keys: Vec<PublishedKey>) -> Result<ReceiptKeySet, KeySetError> {
        if keys.is_empty() {
            return Err(KeySetError::Empty);
        }
        if keys.len() > MAX_RECEIPT_KEYS {
            return Err(KeySetError::TooMany);
        }
        for (index, k) in keys.iter().enumerate() {
            if crate::domain::approval::valid_public_key(&k.public_key).is_none() {
                return Err(KeySetError::Key { index, field: "public_key", reason: "not a valid Ed25519 key".into() });
            }
            if ReceiptKeyId::of(&k.public_key) != k.id {
                return Err(KeySetError::Key {
                    index,
                    field: "key_id",
                    reason: "is not the first 8 bytes of SHA-256(public_key)".into(),
                });
            }
        }
        Ok(ReceiptKeySet { keys })
    }

    pub fn from_proto(p: &proto::ReceiptKeys) -> Result<ReceiptKeySet, KeySetError> {
        let mut keys = Vec::with_capacity(p.keys.len().min(MAX_RECEIPT_KEYS));
        for (index, k) in p.keys.iter().enumerate().take(MAX_RECEIPT_KEYS + 1) {
            let bad = |field, reason: &str| KeySetError::Key { index, field, reason: reason.to_owned() };
            let id: [u8; KEY_ID_LEN] = k.key_id.as_slice().try_into().map_err(|_| bad("key_id", "must be 8 bytes"))?;
            let public_key: [u8; 32] =
                k.public_key.as_slice().try_into().map_err(|_| bad("public_key", "must be 32 bytes"))?;
            keys.push(PublishedKey {
                id: ReceiptKeyId::from_bytes(id),
                public_key,
                created_at: UnixMs(u64::try_from(k.created_at_ms).unwrap_or(0)),
                retired_at: (k.retired_at_ms > 0).then(|| UnixMs(u64::try_from(k.retired_at_ms).unwrap_or(0))),
            });
        }
        ReceiptKeySet::new(keys)
    }

    /// The key file: `{"format": "syncpay-receipt-keys", "version": 1,
    /// "keys": [{"key_id", "public_key" (hex), "created_at_ms",
    /// "retired_at_ms" (0 while active)}]}`.
    pub fn to_json(&self) -> Value {
        json!({
            "format": KEY_FILE_FORMAT,
            "version": KEY_FILE_VERSION,
            "keys": self.keys.iter().map(|k| json!({
                "key_id": k.id.to_string(),
                "public_key": hex::encode(&k.public_key),
                "created_at_ms": k.created_at.0,
                "retired_at_ms": k.retired_at.map_or(0, |t| t.0),
            })).collect::<Vec<_>>(),
        })
    }

    pub fn from_json(text: &str) -> Result<ReceiptKeySet, KeySetError> {
        let v: Value = serde_json::from_str(text).map_err(|e| KeySetError::Format(e.to_string()))?;
        if v["format"] != KEY_FILE_FORMAT || v["version"] != KEY_FILE_VERSION {
            return Err(KeySetError::Format(format!("expected format {KEY_FILE_FORMAT:?} version {KEY_FILE_VERSION}")));
        }
        let list = v["keys"].as_array().ok_or_else(|| KeySetError::Format("keys: must be a list".into()))?;
        if list.len() > MAX_RECEIPT_KEYS {
            return Err(KeySetError::TooMany);
        }
        let mut keys = Vec::with_capacity(list.len());
        for (index, k) in list.iter().enumerate() {
            let bad = |field, reason: &str| KeySetError::Key { index, field, reason: reason.to_owned() };
            let text = |field| k[field].as_str().ok_or_else(|| bad(field, "must be a string"));
            let time = |field| k[field].as_u64().ok_or_else(|| bad(field, "must be a non-negative integer"));
            let id = hex::decode_array::<KEY_ID_LEN>(text("key_id")?).ok_or_else(|| bad("key_id", "8 bytes of hex"))?;
            let public_key =
                hex::decode_array::<32>(text("public_key")?).ok_or_else(|| bad("public_key", "32 bytes of hex"))?;
            let retired = time("retired_at_ms")?;
            keys.push(PublishedKey {
                id: ReceiptKeyId::from_bytes(id),
                public_key,
                created_at: UnixMs(time("created_at_ms")?),
                retired_at: (retired > 0).then_some(UnixMs(retired)),
            });
        }
        ReceiptKeySet::new(keys)
    }

    pub fn keys(&self) -> &[PublishedKey] {
        &self.keys
    }

    fn public_key(&self, id: ReceiptKeyId) -> Option<[u8; 32]> {
        self.keys.iter().find(|k| k.id == id).map(|k| k.public_key)
    }
}

/// What a verified receipt establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReceipt {
    /// The approval the handset signed (trade, amount, currency, shop,
    /// register, expiry, and in version 2 binding code and screen digest).
    pub payload: ApprovalPayload,
    /// When the operator says the trade settled.
    pub settled_at: UnixMs,
    /// The key that countersigned.
    pub key_id: ReceiptKeyId,
    /// The per-trade commitment to the handset key, for a dispute.
    pub commitment: [u8; 32],
}

impl VerifiedReceipt {
    /// Checks the signed screen digest against the texts the shop knows it
    /// sent: its display name, the register's label and the description.
    pub fn check_screen(&self, screen: ScreenText<'_>) -> Result<(), ReceiptError> {
        match self.payload.version {
            PayloadVersion::V2 { screen_digest, .. } if screen_digest == screen.digest() => Ok(()),
            PayloadVersion::V2 { .. } => Err(ReceiptError::ScreenMismatch),
            PayloadVersion::V1 => Err(ReceiptError::VersionOne),
        }
    }
}

fn fixed<const N: usize>(field: &'static str, bytes: &[u8]) -> Result<[u8; N], ReceiptError> {
    bytes
        .try_into()
        .map_err(|_| ReceiptError::Malformed { field, reason: format!("must be {N} bytes, is {}", bytes.len()) })
}

/// Verifies a receipt for `shop`, offline, with the trusted `keys`:
/// 1. it is countersigned, in a statement version this code knows;
/// 2. every field has its length and `signed_payload` parses;
/// 3. `receipt_key_id` names a trusted key, and the countersignature over
///    the rebuilt statement verifies under it (strict Ed25519);
/// 4. the payload is an APPROVE, for `shop`, settled before its expiry.
///
/// Facts are checked only after the signature, so every error past step 3
/// is about what the operator really signed.
pub fn verify_receipt(
    receipt: &proto::ApprovalReceipt,
    keys: &ReceiptKeySet,
    shop: &ShopId,
) -> Result<VerifiedReceipt, ReceiptError> {
    if receipt.countersignature.is_empty() && receipt.statement_version == 0 {
        return Err(ReceiptError::NotCountersigned);
    }
    if receipt.statement_version != u32::from(STATEMENT_VERSION) {
        return Err(ReceiptError::StatementVersion(receipt.statement_version));
    }
    let signature = fixed::<64>("signature", &receipt.signature)?;
    let commitment = fixed::<32>("handset_commitment", &receipt.handset_commitment)?;
    let key_id = ReceiptKeyId::from_bytes(fixed::<KEY_ID_LEN>("receipt_key_id", &receipt.receipt_key_id)?);
    let countersignature = fixed::<64>("countersignature", &receipt.countersignature)?;
    let settled_at = UnixMs(
        u64::try_from(receipt.settled_at_ms)
            .map_err(|_| ReceiptError::Malformed { field: "settled_at_ms", reason: "must not be negative".into() })?,
    );
    let payload = ApprovalPayload::parse(&receipt.signed_payload).map_err(ReceiptError::Payload)?;
    let public_key = keys.public_key(key_id).ok_or(ReceiptError::UnknownKey(key_id))?;
    let statement = Statement {
        key_id,
        payload: &receipt.signed_payload,
        handset_signature: &signature,
        commitment: &commitment,
        settled_at,
    };
    if !statement.verify(&public_key, &countersignature) {
        return Err(ReceiptError::BadCountersignature(key_id));
    }
    if payload.decision != Decision::Approve {
        return Err(ReceiptError::NotAnApproval);
    }
    if &payload.shop_id != shop {
        return Err(ReceiptError::OtherShop { expected: shop.clone(), found: payload.shop_id.clone() });
    }
    if settled_at >= payload.expires_at {
        return Err(ReceiptError::SettledAfterExpiry { settled: settled_at.0, expires: payload.expires_at.0 });
    }
    Ok(VerifiedReceipt { payload, settled_at, key_id, commitment })
}

/// [`verify_receipt`] for a trade as the shop received it (`GetTrade`, an
/// event): the trade must be SETTLED, and every field the receipt signs
/// must be the trade's (id, register, amount, currency, expiry, binding
/// code, settlement time).
pub fn verify_trade_receipt(
    trade: &proto::Trade,
    keys: &ReceiptKeySet,
    shop: &ShopId,
) -> Result<VerifiedReceipt, ReceiptError> {
    let state = proto::TradeState::try_from(trade.state).unwrap_or(proto::TradeState::Unspecified);
    if state != proto::TradeState::Settled {
        return Err(ReceiptError::NoReceipt(state.as_str_name().to_owned()));
    }
    let receipt = trade.receipt.as_ref().ok_or_else(|| ReceiptError::NoReceipt("SETTLED without one".into()))?;
    let v = verify_receipt(receipt, keys, shop)?;
    let p = &v.payload;
    let checks = [
        ("trade_id", p.trade_id.to_string() == trade.trade_id),
        ("register_id", p.register_id.to_string() == trade.register_id),
        ("amount_minor", p.amount.minor() == trade.amount_minor),
        ("currency", p.currency.code() == trade.currency),
        ("expires_at_ms", i64::try_from(p.expires_at.0).ok() == Some(trade.expires_at_ms)),
        ("finished_at_ms", i64::try_from(v.settled_at.0).ok() == Some(trade.finished_at_ms)),
        (
            "binding_code",
            match &p.version {
                PayloadVersion::V2 { binding_code, .. } => binding_code.to_string() == trade.binding_code,
                PayloadVersion::V1 => true,
            },
        ),
    ];
    match checks.iter().find(|(_, ok)| !ok) {
        Some((field, _)) => Err(ReceiptError::Mismatch(field)),
        None => Ok(v),
    }
}

/// What an arbiter checks in a dispute, given the receipt the shop holds
/// and the handset key the operator reveals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisputeCheck {
    /// The receipt verified for the shop its payload names.
    pub receipt: Result<VerifiedReceipt, ReceiptError>,
    /// A receipt settled before receipts were countersigned: it has the
    /// per-shop fingerprint instead of a commitment, and no countersignature.
    pub legacy: bool,
    /// SHA-256("syncpay/handset-commitment" ‖ trade id ‖ revealed key)
    /// equals the receipt's `handset_commitment` (for a legacy receipt:
    /// SHA-256(shop id ‖ 0x00 ‖ key) equals its `handset_key_fingerprint`).
    pub commitment_matches: bool,
    /// The revealed key's signature over `signed_payload` verifies.
    pub handset_signature_valid: bool,
}

impl DisputeCheck {
    /// Every check passes; a legacy receipt has no countersignature to check.
    pub fn all_pass(&self) -> bool {
        (self.receipt.is_ok() || self.legacy) && self.commitment_matches && self.handset_signature_valid
    }
}

/// The arbiter's check: the receipt's countersignature, and that the key
/// the operator reveals is the one the receipt commits to and that it
/// signed the payload. Needs nothing the shop and the operator do not show.
pub fn check_dispute(receipt: &proto::ApprovalReceipt, handset_key: &[u8; 32], keys: &ReceiptKeySet) -> DisputeCheck {
    let payload = ApprovalPayload::parse(&receipt.signed_payload);
    let verified = match &payload {
        Ok(p) => verify_receipt(receipt, keys, &p.shop_id),
        Err(e) => Err(ReceiptError::Payload(e.clone())),
    };
    let legacy = verified == Err(ReceiptError::NotCountersigned);
    let commitment_matches = payload.as_ref().is_ok_and(|p| {
        if legacy {
            crate::domain::approval::shop_key_fingerprint(&p.shop_id, handset_key).as_slice()
                == receipt.handset_key_fingerprint
        } else {
            crate::domain::receipt::handset_commitment(p.trade_id, handset_key).as_slice() == receipt.handset_commitment
        }
    });
    let handset_signature_valid =
        crate::domain::approval::verify_bytes(handset_key, &receipt.signed_payload, &receipt.signature);
    DisputeCheck { receipt: verified, legacy, commitment_matches, handset_signature_valid }
}

/// A receipt as JSON (bytes in lowercase hex), as `syncpay shop status
/// --json` prints it and `verify-receipt` and `scripts/verify_receipt.py`
/// read it.
pub fn receipt_to_json(r: &proto::ApprovalReceipt) -> Value {
    json!({
        "signed_payload": hex::encode(&r.signed_payload),
        "signature": hex::encode(&r.signature),
        "handset_key_fingerprint": hex::encode(&r.handset_key_fingerprint),
        "handset_commitment": hex::encode(&r.handset_commitment),
        "settled_at_ms": r.settled_at_ms,
        "receipt_key_id": hex::encode(&r.receipt_key_id),
        "countersignature": hex::encode(&r.countersignature),
        "statement_version": r.statement_version,
    })
}

/// The inverse of [`receipt_to_json`]; a missing field is empty (as on the
/// wire), a field of the wrong type or bad hex is an error naming it.
pub fn receipt_from_json(v: &Value) -> Result<proto::ApprovalReceipt, String> {
    let bytes = |field: &str| -> Result<Vec<u8>, String> {
        match &v[field] {
            Value::Null => Ok(Vec::new()),
            Value::String(s) => hex::decode(s).ok_or_else(|| format!("{field}: not hex")),
            _ => Err(format!("{field}: must be a hex string")),
        }
    };
    let number = |field: &str| -> Result<u64, String> {
        match &v[field] {
            Value::Null => Ok(0),
            n => n.as_u64().ok_or_else(|| format!("{field}: must be a non-negative integer")),
        }
    };
    Ok(proto::ApprovalReceipt {
        signed_payload: bytes("signed_payload")?,
        signature: bytes("signature")?,
        handset_key_fingerprint: bytes("handset_key_fingerprint")?,
        handset_commitment: bytes("handset_commitment")?,
        settled_at_ms: i64::try_from(number("settled_at_ms")?).map_err(|_| "settled_at_ms: too large".to_owned())?,
        receipt_key_id: bytes("receipt_key_id")?,
        countersignature: bytes("countersignature")?,
        statement_version: u32::try_from(number("statement_version")?)
            .map_err(|_| "statement_version: too large".to_owned())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::receipt::{handset_commitment, ReceiptSigner};
    use crate::domain::{Amount, BindingCode, Currency, RegisterId, TradeId};
    use ed25519_dalek::{Signer, SigningKey};

    /// A receipt made the way the server makes one, from scratch.
    fn made(decision: Decision, shop: &str, settled: u64) -> (proto::ApprovalReceipt, ReceiptKeySet, ReceiptSigner) {
        let signer = ReceiptSigner::from_seed([3; 32], UnixMs(1));
        let handset = SigningKey::from_bytes(&[4; 32]);
        let payload = ApprovalPayload {
            trade_id: TradeId::from_bytes([1; 16]),
            amount: Amount::new(1200),
            currency: Currency::parse("JPY").expect("jpy"),
            shop_id: ShopId::parse(shop).expect("shop"),
            register_id: RegisterId::from_bytes([2; 16]),
            expires_at: UnixMs(1_700_000_120_000),
            version: PayloadVersion::V2 {
                binding_code: BindingCode::parse("123456").expect("code"),
                screen_digest: ScreenText { shop_name: "Acme", register_label: "Front", description: "Book" }.digest(),
            },
            decision,
        };
        let bytes = payload.to_bytes();
        let signature = handset.sign(&bytes).to_bytes();
        let commitment = handset_commitment(payload.trade_id, &handset.verifying_key().to_bytes());
        let settled_at = UnixMs(settled);
        let countersignature = signer.sign(&Statement {
            key_id: signer.id(),
            payload: &bytes,
            handset_signature: &signature,
            commitment: &commitment,
            settled_at,
        });
        let receipt = proto::ApprovalReceipt {
            signed_payload: bytes,
            signature: signature.to_vec(),
            handset_key_fingerprint: Vec::new(),
            handset_commitment: commitment.to_vec(),
            settled_at_ms: i64::try_from(settled).expect("time"),
            receipt_key_id: signer.id().as_bytes().to_vec(),
            countersignature: countersignature.to_vec(),
            statement_version: 1,
        };
        let keys = ReceiptKeySet::new(vec![signer.published()]).expect("keys");
        (receipt, keys, signer)
    }

    fn acme() -> ShopId {
        ShopId::parse("acme").expect("shop")
    }

    /// One bytes field of a receipt, to alter.
    type FieldOf = fn(&mut proto::ApprovalReceipt) -> &mut Vec<u8>;

    #[test]
    fn a_receipt_verifies_and_each_failure_is_named() {
        let (receipt, keys, signer) = made(Decision::Approve, "acme", 1_700_000_001_000);
        let v = verify_receipt(&receipt, &keys, &acme()).expect("verifies");
        assert_eq!(
            (v.key_id, v.settled_at, v.payload.amount),
            (signer.id(), UnixMs(1_700_000_001_000), Amount::new(1200))
        );
        assert_eq!(
            v.check_screen(ScreenText { shop_name: "Acme", register_label: "Front", description: "Book" }),
            Ok(())
        );
        assert_eq!(
            v.check_screen(ScreenText { shop_name: "Acme", register_label: "Front", description: "Books" }),
            Err(ReceiptError::ScreenMismatch)
        );
        let other = ShopId::parse("other").expect("shop");
        assert_eq!(
            verify_receipt(&receipt, &keys, &other),
            Err(ReceiptError::OtherShop { expected: other.clone(), found: acme() })
        );
        let stranger =
            ReceiptKeySet::new(vec![ReceiptSigner::from_seed([9; 32], UnixMs(1)).published()]).expect("keys");
        assert_eq!(verify_receipt(&receipt, &stranger, &acme()), Err(ReceiptError::UnknownKey(signer.id())));
        let (decline, keys_d, _) = made(Decision::Decline, "acme", 1_700_000_001_000);
        assert_eq!(verify_receipt(&decline, &keys_d, &acme()), Err(ReceiptError::NotAnApproval));
        let (late, keys_l, _) = made(Decision::Approve, "acme", 1_700_000_120_000);
        assert!(matches!(verify_receipt(&late, &keys_l, &acme()), Err(ReceiptError::SettledAfterExpiry { .. })));
        let legacy = proto::ApprovalReceipt {
            handset_key_fingerprint: vec![1; 32],
            countersignature: Vec::new(),
            statement_version: 0,
            ..receipt.clone()
        };
        assert_eq!(verify_receipt(&legacy, &keys, &acme()), Err(ReceiptError::NotCountersigned));
        let future = proto::ApprovalReceipt { statement_version: 2, ..receipt.clone() };
        assert_eq!(verify_receipt(&future, &keys, &acme()), Err(ReceiptError::StatementVersion(2)));
        let short = proto::ApprovalReceipt { signature: vec![0; 63], ..receipt.clone() };
        assert!(matches!(
            verify_receipt(&short, &keys, &acme()),
            Err(ReceiptError::Malformed { field: "signature", .. })
        ));
        let negative = proto::ApprovalReceipt { settled_at_ms: -1, ..receipt.clone() };
        assert!(matches!(
            verify_receipt(&negative, &keys, &acme()),
            Err(ReceiptError::Malformed { field: "settled_at_ms", .. })
        ));
    }

    #[test]
    fn every_byte_of_every_field_matters() {
        let (receipt, keys, _) = made(Decision::Approve, "acme", 1_700_000_001_000);
        let fields: [(&str, FieldOf); 5] = [
            ("signed_payload", |r| &mut r.signed_payload),
            ("signature", |r| &mut r.signature),
            ("handset_commitment", |r| &mut r.handset_commitment),
            ("receipt_key_id", |r| &mut r.receipt_key_id),
            ("countersignature", |r| &mut r.countersignature),
        ];
        let mut flipped = 0;
        for (name, field) in fields {
            let len = field(&mut receipt.clone()).len();
            for i in 0..len {
                for bit in [0x01u8, 0x80] {
                    let mut r = receipt.clone();
                    field(&mut r)[i] ^= bit;
                    assert!(verify_receipt(&r, &keys, &acme()).is_err(), "{name}[{i}] ^ {bit:#x} still verifies");
                    flipped += 1;
                }
            }
        }
        for bit in 0..64 {
            let r = proto::ApprovalReceipt { settled_at_ms: receipt.settled_at_ms ^ (1i64 << bit), ..receipt.clone() };
            assert!(verify_receipt(&r, &keys, &acme()).is_err(), "settled_at_ms bit {bit}");
        }
        assert!(flipped > 2 * (108 + 4 + 64 + 32 + 8 + 64 - 1));
    }

    #[test]
    fn a_dispute_check_needs_the_committed_key() {
        let (receipt, keys, _) = made(Decision::Approve, "acme", 1_700_000_001_000);
        let handset = SigningKey::from_bytes(&[4; 32]).verifying_key().to_bytes();
        let ok = check_dispute(&receipt, &handset, &keys);
        assert!(ok.all_pass(), "{ok:?}");
        // Another enrolled key: neither the commitment nor the signature.
        let other = SigningKey::from_bytes(&[5; 32]).verifying_key().to_bytes();
        let wrong = check_dispute(&receipt, &other, &keys);
        assert!(wrong.receipt.is_ok() && !wrong.commitment_matches && !wrong.handset_signature_valid);
        // The right key but a receipt with its commitment swapped for another
        // trade's: the countersignature no longer holds.
        let mut swapped = receipt.clone();
        swapped.handset_commitment = handset_commitment(TradeId::from_bytes([9; 16]), &handset).to_vec();
        let c = check_dispute(&swapped, &handset, &keys);
        assert!(c.receipt.is_err() && !c.commitment_matches && c.handset_signature_valid);
        assert!(!c.all_pass());
        // A receipt from before countersigning: the fingerprint and the
        // handset's signature are all there is to check.
        let shop = acme();
        let legacy = proto::ApprovalReceipt {
            signed_payload: receipt.signed_payload.clone(),
            signature: receipt.signature.clone(),
            handset_key_fingerprint: crate::domain::approval::shop_key_fingerprint(&shop, &handset).to_vec(),
            ..Default::default()
        };
        let c = check_dispute(&legacy, &handset, &keys);
        assert!(c.legacy && c.all_pass(), "{c:?}");
        assert!(!check_dispute(&legacy, &other, &keys).all_pass());
    }

    #[test]
    fn key_sets_round_trip_through_json_and_refuse_a_wrong_id() {
        let (_, keys, signer) = made(Decision::Approve, "acme", 1);
        let text = keys.to_json().to_string();
        assert_eq!(ReceiptKeySet::from_json(&text), Ok(keys.clone()));
        let forged = text.replace(&signer.id().to_string(), "0000000000000000");
        assert!(matches!(ReceiptKeySet::from_json(&forged), Err(KeySetError::Key { field: "key_id", .. })));
        assert!(matches!(ReceiptKeySet::from_json("{}"), Err(KeySetError::Format(_))));
        let empty = json!({"format": KEY_FILE_FORMAT, "version": 1, "keys": []}).to_string();
        assert_eq!(ReceiptKeySet::from_json(&empty), Err(KeySetError::Empty));
    }

    #[test]
    fn receipts_round_trip_through_json() {
        let (receipt, _, _) = made(Decision::Approve, "acme", 1_700_000_001_000);
        assert_eq!(receipt_from_json(&receipt_to_json(&receipt)), Ok(receipt));
        assert!(receipt_from_json(&json!({"signature": "zz"})).is_err());
        assert!(receipt_from_json(&json!({"settled_at_ms": -5})).is_err());
    }
}
