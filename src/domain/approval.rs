//! Dynamic linking: the canonical approval payload a handset signs, its
//! verification, the binding code and the payer pseudonym.

use std::fmt;

use ed25519_dalek::{Signature, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::ids::{RegisterId, ShopId, SubscriberNumber, TradeId};
use super::money::{Amount, Currency};
use super::UnixMs;

/// Domain separation and version of the signed bytes. A new layout gets a
/// new version byte; old signatures never verify under a new layout.
const PAYLOAD_TAG: &[u8] = b"syncpay/approval";
const PAYLOAD_VERSION: u8 = 1;
/// An Ed25519 signature's length; anything else is refused at the edge.
pub const ED25519_SIGNATURE_LEN: usize = 64;

/// The buyer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Decision {
    Approve,
    Decline,
}

impl Decision {
    fn byte(self) -> u8 {
        match self {
            Decision::Approve => 1,
            Decision::Decline => 2,
        }
    }
}

/// Everything an approval binds. Changing any field changes the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalPayload<'a> {
    pub trade_id: TradeId,
    pub amount: Amount,
    pub currency: Currency,
    pub shop_id: &'a ShopId,
    pub register_id: RegisterId,
    pub expires_at: UnixMs,
    pub decision: Decision,
}

impl ApprovalPayload<'_> {
    /// Canonical bytes: tag, version, then fixed-width big-endian fields;
    /// the one variable field (shop id, at most 32 bytes) is length-prefixed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let shop = self.shop_id.as_str().as_bytes();
        let mut out = Vec::with_capacity(PAYLOAD_TAG.len() + 1 + 16 + 8 + 3 + 1 + shop.len() + 16 + 8 + 1);
        out.extend_from_slice(PAYLOAD_TAG);
        out.push(PAYLOAD_VERSION);
        out.extend_from_slice(self.trade_id.as_bytes());
        out.extend_from_slice(&self.amount.minor().to_be_bytes());
        out.extend_from_slice(self.currency.as_bytes());
        // Slugs are at most 32 bytes, so the length fits in one byte.
        out.push(u8::try_from(shop.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(shop);
        out.extend_from_slice(self.register_id.as_bytes());
        out.extend_from_slice(&self.expires_at.0.to_be_bytes());
        out.push(self.decision.byte());
        out
    }

    /// True only for a valid, canonical Ed25519 signature by `public_key`.
    pub fn verify(&self, public_key: &[u8; 32], signature: &[u8]) -> bool {
        verify_bytes(public_key, &self.to_bytes(), signature)
    }
}

/// True only for a valid, canonical Ed25519 signature of `message` (a
/// payload's [`ApprovalPayload::to_bytes`]) by `public_key`.
pub fn verify_bytes(public_key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(message, &sig).is_ok()
}

/// Checks a public key is a usable Ed25519 point: 32 bytes, on the curve,
/// not of small order (weak), and canonically encoded (so one key has one
/// encoding, and one fingerprint).
pub fn valid_public_key(bytes: &[u8]) -> Option<[u8; 32]> {
    let arr: [u8; 32] = bytes.try_into().ok()?;
    let key = VerifyingKey::from_bytes(&arr).ok()?;
    let canonical = key.to_edwards().compress().to_bytes() == arr;
    (canonical && !key.is_weak()).then_some(arr)
}

/// SHA-256 of a public key, for the carrier's records.
pub fn key_sha256(public_key: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(public_key).into()
}

/// SHA-256(shop id || 0x00 || key): what a shop learns about the handset.
pub fn shop_key_fingerprint(shop: &ShopId, public_key: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(shop.as_str().as_bytes());
    h.update([0u8]);
    h.update(public_key);
    h.finalize().into()
}

/// The server's keyed-hash secret (binding codes, pseudonyms). Its Debug
/// prints nothing of it.
#[derive(Clone)]
pub struct ServerSecret([u8; 32]);

impl fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerSecret(..)")
    }
}

impl ServerSecret {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ServerSecret(bytes)
    }

    fn mac(&self, label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => return [0u8; 32],
        };
        mac.update(label);
        for part in parts {
            // Length-prefix each part so ("ab","c") and ("a","bc") differ.
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            mac.update(&len.to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Six digits derived from the trade, shown to the shop and the buyer.
    pub fn binding_code(&self, trade: TradeId) -> BindingCode {
        let mac = self.mac(b"binding-code", &[trade.as_bytes()]);
        let mut first = [0u8; 8];
        first.copy_from_slice(&mac[..8]);
        // The bias of u64 mod 10^6 is below 10^-13: irrelevant here.
        BindingCode(u32::try_from(u64::from_be_bytes(first) % 1_000_000).unwrap_or(0))
    }

    /// `pyr_` + 26 characters: stable per (shop, subscriber), unlinkable
    /// across shops without the secret.
    pub fn payer_pseudonym(&self, shop: &ShopId, subscriber: &SubscriberNumber) -> String {
        let mac = self.mac(b"payer-pseudonym", &[shop.as_str().as_bytes(), subscriber.as_str().as_bytes()]);
        let mut first = [0u8; 16];
        first.copy_from_slice(&mac[..16]);
        // Reuse the trade-id text form for a uniform look.
        let text = TradeId::from_bytes(first).to_string();
        format!("pyr_{}", &text[TradeId::PREFIX.len()..])
    }
}

/// A six-digit code, printed with leading zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingCode(u32);

impl fmt::Display for BindingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06}", self.0)
    }
}

/// Lower-case hex, as keys, fingerprints and secrets are shown.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn payload<'a>(shop: &'a ShopId, trade: TradeId, register: RegisterId) -> ApprovalPayload<'a> {
        ApprovalPayload {
            trade_id: trade,
            amount: Amount::new(1200),
            currency: Currency::parse("JPY").expect("known"),
            shop_id: shop,
            register_id: register,
            expires_at: UnixMs(1_700_000_000_000),
            decision: Decision::Approve,
        }
    }

    #[test]
    fn a_signature_binds_every_field() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let public = key.verifying_key().to_bytes();
        let shop = ShopId::parse("acme").expect("valid");
        let other_shop = ShopId::parse("acmf").expect("valid");
        let trade = TradeId::generate().expect("entropy");
        let register = RegisterId::generate().expect("entropy");
        let base = payload(&shop, trade, register);
        let sig = key.sign(&base.to_bytes()).to_bytes();
        assert!(base.verify(&public, &sig));

        let variants = [
            ApprovalPayload { trade_id: TradeId::generate().expect("entropy"), ..base.clone() },
            ApprovalPayload { amount: Amount::new(1201), ..base.clone() },
            ApprovalPayload { currency: Currency::parse("USD").expect("known"), ..base.clone() },
            ApprovalPayload { shop_id: &other_shop, ..base.clone() },
            ApprovalPayload { register_id: RegisterId::generate().expect("entropy"), ..base.clone() },
            ApprovalPayload { expires_at: UnixMs(1_700_000_000_001), ..base.clone() },
            ApprovalPayload { decision: Decision::Decline, ..base.clone() },
        ];
        for v in &variants {
            assert_ne!(v.to_bytes(), base.to_bytes());
            assert!(!v.verify(&public, &sig), "{v:?} verified with the base signature");
        }
        // Wrong key, truncated and garbage signatures.
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key().to_bytes();
        assert!(!base.verify(&other, &sig));
        assert!(!base.verify(&public, &sig[..63]));
        assert!(!base.verify(&public, &[0u8; 64]));
        assert!(!base.verify(&[0u8; 32], &sig));
    }

    #[test]
    fn weak_and_malformed_keys_are_refused() {
        assert!(valid_public_key(&[0u8; 31]).is_none());
        // The identity point is a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(valid_public_key(&identity).is_none());
        // y = 2^255 - 1 is 18 mod p: on the curve, but not canonical.
        assert!(valid_public_key(&[0xff; 32]).is_none());
        assert!(valid_public_key(&[0u8; 32]).is_none());
        let good = SigningKey::from_bytes(&[9u8; 32]).verifying_key().to_bytes();
        assert_eq!(valid_public_key(&good), Some(good));
    }

    #[test]
    fn binding_codes_are_six_digits_and_keyed() {
        let a = ServerSecret::from_bytes([1u8; 32]);
        let b = ServerSecret::from_bytes([2u8; 32]);
        let trade = TradeId::from_bytes([3u8; 16]);
        assert_eq!(a.binding_code(trade).to_string().len(), 6);
        assert_eq!(a.binding_code(trade), a.binding_code(trade));
        assert_ne!(a.binding_code(trade), b.binding_code(trade));
    }

    #[test]
    fn pseudonyms_are_stable_per_shop_and_differ_across_shops() {
        let s = ServerSecret::from_bytes([1u8; 32]);
        let n = SubscriberNumber::parse("+818012345678").expect("valid");
        let shop_a = ShopId::parse("a").expect("valid");
        let shop_b = ShopId::parse("b").expect("valid");
        let pa = s.payer_pseudonym(&shop_a, &n);
        assert_eq!(pa, s.payer_pseudonym(&shop_a, &n));
        assert_ne!(pa, s.payer_pseudonym(&shop_b, &n));
        assert!(pa.starts_with("pyr_") && !pa.contains("8012345"));
    }

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[0xab, 0x01, 0x00]), "ab0100");
        assert_eq!(hex(&[]), "");
    }
}
