//! Dynamic linking: the canonical approval payload a handset signs (every
//! version's layout, byte by byte, in `docs/APPROVAL.md`), its parsing and
//! verification, the digest of the handset's screen text, the binding code
//! and the payer pseudonym.

use std::fmt;

use ed25519_dalek::{Signature, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::ids::{RegisterId, ShopId, SubscriberNumber, TradeId, MAX_SLUG_LEN};
use super::money::{Amount, Currency};
use super::UnixMs;

/// Domain separation of the signed bytes: no other syncpay signature
/// starts with these 16 bytes. A new layout gets a new version byte, so a
/// signature over one layout never verifies as another.
pub const PAYLOAD_TAG: &[u8; 16] = b"syncpay/approval";
/// Domain separation of the screen-text digest.
pub const SCREEN_TAG: &[u8; 14] = b"syncpay/screen";
/// An Ed25519 signature's length; anything else is refused at the edge.
pub const ED25519_SIGNATURE_LEN: usize = 64;
/// The binding code's length: six ASCII digits.
pub const BINDING_CODE_LEN: usize = 6;
/// The longest payload of any version (v2 with a 32-byte shop id).
pub const MAX_PAYLOAD_LEN: usize = 16 + 1 + 16 + 8 + 3 + 1 + MAX_SLUG_LEN + 16 + 8 + BINDING_CODE_LEN + 32 + 1;

/// The buyer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Decision {
    Approve,
    Decline,
}

impl Decision {
    /// The decision byte: the last byte of every payload version.
    pub fn byte(self) -> u8 {
        match self {
            Decision::Approve => 1,
            Decision::Decline => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Decision> {
        match b {
            1 => Some(Decision::Approve),
            2 => Some(Decision::Decline),
            _ => None,
        }
    }
}

/// What the handset shows the buyer besides amount, currency and binding
/// code. Version 2 signs its digest, so the buyer approves what they saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScreenText<'a> {
    pub shop_name: &'a str,
    pub register_label: &'a str,
    pub description: &'a str,
}

impl ScreenText<'_> {
    /// SHA-256(`syncpay/screen` ‖ for each of shop name, register label,
    /// description: its UTF-8 length as u32 big-endian ‖ its UTF-8 bytes).
    /// The bytes are hashed exactly as sent in the `Offer`: no Unicode
    /// normalisation, no trimming.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(SCREEN_TAG);
        for part in [self.shop_name, self.register_label, self.description] {
            // Every text is bounded far below 4 GiB at the edge.
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            h.update(len.to_be_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }
}

/// Which layout the payload has, with what only the later layouts bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadVersion {
    /// Version 1 (retired: the server offers and accepts only version 2
    /// for trades it creates; receipts over version 1 bytes keep them).
    V1,
    /// Version 2: also the binding code the buyer compares with the
    /// checkout page and the digest of the screen text.
    V2 { binding_code: BindingCode, screen_digest: [u8; 32] },
}

impl PayloadVersion {
    /// The version byte.
    pub fn number(&self) -> u8 {
        match self {
            PayloadVersion::V1 => 1,
            PayloadVersion::V2 { .. } => 2,
        }
    }
}

/// Why bytes are not a payload of any known version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("does not start with the tag \"syncpay/approval\"")]
    Tag,
    #[error("version {0} is not a known payload version")]
    Version(u8),
    #[error("is {got} bytes; version {version} with this shop id is {want}")]
    Length { version: u8, got: usize, want: usize },
    #[error("{0} is malformed")]
    Field(&'static str),
}

/// Everything an approval binds. Changing any field changes the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalPayload {
    pub trade_id: TradeId,
    pub amount: Amount,
    pub currency: Currency,
    pub shop_id: ShopId,
    pub register_id: RegisterId,
    pub expires_at: UnixMs,
    pub version: PayloadVersion,
    pub decision: Decision,
}

impl ApprovalPayload {
    /// The canonical bytes: tag, version byte, then fixed-width big-endian
    /// fields; the one variable field (the shop id, 1..=32 bytes) is
    /// length-prefixed; the decision byte is last.
    pub fn to_bytes(&self) -> Vec<u8> {
        let shop = self.shop_id.as_str().as_bytes();
        let mut out = Vec::with_capacity(MAX_PAYLOAD_LEN);
        out.extend_from_slice(PAYLOAD_TAG);
        out.push(self.version.number());
        out.extend_from_slice(self.trade_id.as_bytes());
        out.extend_from_slice(&self.amount.minor().to_be_bytes());
        out.extend_from_slice(self.currency.as_bytes());
        // Slugs are 1..=32 bytes, so the length fits in one byte.
        out.push(u8::try_from(shop.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(shop);
        out.extend_from_slice(self.register_id.as_bytes());
        out.extend_from_slice(&self.expires_at.0.to_be_bytes());
        if let PayloadVersion::V2 { binding_code, screen_digest } = &self.version {
            out.extend_from_slice(&binding_code.ascii());
            out.extend_from_slice(screen_digest);
        }
        out.push(self.decision.byte());
        out
    }

    /// Reads payload bytes of any known version; the exact inverse of
    /// [`ApprovalPayload::to_bytes`] (anything that would not encode back to
    /// the same bytes is refused).
    pub fn parse(bytes: &[u8]) -> Result<ApprovalPayload, PayloadError> {
        let mut r = Reader(bytes);
        if r.take(PAYLOAD_TAG.len()).ok_or(PayloadError::Tag)? != PAYLOAD_TAG {
            return Err(PayloadError::Tag);
        }
        let version = r.byte().ok_or(PayloadError::Length { version: 0, got: bytes.len(), want: 17 })?;
        if !(1..=2).contains(&version) {
            return Err(PayloadError::Version(version));
        }
        // Everything up to the shop id's length byte is fixed-width.
        let head = PAYLOAD_TAG.len() + 1 + 16 + 8 + 3 + 1;
        let shop_len = bytes.get(head - 1).map_or(0, |&b| usize::from(b));
        let tail = if version == 2 { BINDING_CODE_LEN + 32 } else { 0 };
        let want = head + shop_len + 16 + 8 + tail + 1;
        if bytes.len() != want {
            return Err(PayloadError::Length { version, got: bytes.len(), want });
        }
        let field = PayloadError::Field;
        let trade_id = TradeId::from_bytes(r.array().ok_or(field("trade id"))?);
        let amount = Amount::new(u64::from_be_bytes(r.array().ok_or(field("amount"))?));
        let currency = r.take(3).and_then(|c| std::str::from_utf8(c).ok()).ok_or(field("currency"))?;
        let currency = Currency::parse(currency).map_err(|_| field("currency"))?;
        let _ = r.byte();
        let shop = r.take(shop_len).and_then(|s| std::str::from_utf8(s).ok()).ok_or(field("shop id"))?;
        let shop_id = ShopId::parse(shop).map_err(|_| field("shop id"))?;
        let register_id = RegisterId::from_bytes(r.array().ok_or(field("register id"))?);
        let expires_at = UnixMs(u64::from_be_bytes(r.array().ok_or(field("expiry"))?));
        let version = if version == 2 {
            let code = r.take(BINDING_CODE_LEN).and_then(BindingCode::from_ascii).ok_or(field("binding code"))?;
            PayloadVersion::V2 { binding_code: code, screen_digest: r.array().ok_or(field("screen digest"))? }
        } else {
            PayloadVersion::V1
        };
        let decision = r.byte().and_then(Decision::from_byte).ok_or(field("decision"))?;
        Ok(ApprovalPayload { trade_id, amount, currency, shop_id, register_id, expires_at, version, decision })
    }

    /// True only for a valid, canonical Ed25519 signature by `public_key`.
    pub fn verify(&self, public_key: &[u8; 32], signature: &[u8]) -> bool {
        verify_bytes(public_key, &self.to_bytes(), signature)
    }
}

/// Reads fixed-width fields front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|b| b.try_into().ok())
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

    /// The secret itself, for the server's secret file and its backups.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
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

impl BindingCode {
    /// Exactly six ASCII digits.
    pub fn parse(text: &str) -> Option<BindingCode> {
        BindingCode::from_ascii(text.as_bytes())
    }

    fn from_ascii(bytes: &[u8]) -> Option<BindingCode> {
        if bytes.len() != BINDING_CODE_LEN || !bytes.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(BindingCode(bytes.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'))))
    }

    /// The six ASCII digits, as they appear in the signed bytes.
    pub fn ascii(&self) -> [u8; BINDING_CODE_LEN] {
        let mut out = [b'0'; BINDING_CODE_LEN];
        let mut n = self.0;
        for slot in out.iter_mut().rev() {
            // n % 10 < 10, so the digit fits.
            *slot = b'0' + u8::try_from(n % 10).unwrap_or(0);
            n /= 10;
        }
        out
    }
}

impl fmt::Display for BindingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn screen() -> [u8; 32] {
        ScreenText { shop_name: "Acme", register_label: "Front", description: "Two books" }.digest()
    }

    fn payload(shop: &ShopId, trade: TradeId, register: RegisterId) -> ApprovalPayload {
        ApprovalPayload {
            trade_id: trade,
            amount: Amount::new(1200),
            currency: Currency::parse("JPY").expect("known"),
            shop_id: shop.clone(),
            register_id: register,
            expires_at: UnixMs(1_700_000_000_000),
            version: PayloadVersion::V2 {
                binding_code: BindingCode::parse("042917").expect("code"),
                screen_digest: screen(),
            },
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
            ApprovalPayload { shop_id: other_shop.clone(), ..base.clone() },
            ApprovalPayload { register_id: RegisterId::generate().expect("entropy"), ..base.clone() },
            ApprovalPayload { expires_at: UnixMs(1_700_000_000_001), ..base.clone() },
            ApprovalPayload { decision: Decision::Decline, ..base.clone() },
            ApprovalPayload {
                version: PayloadVersion::V2 {
                    binding_code: BindingCode::parse("042918").expect("code"),
                    screen_digest: screen(),
                },
                ..base.clone()
            },
            ApprovalPayload {
                version: PayloadVersion::V2 {
                    binding_code: BindingCode::parse("042917").expect("code"),
                    screen_digest: ScreenText { shop_name: "Acme", register_label: "Front", description: "Two book" }
                        .digest(),
                },
                ..base.clone()
            },
            // The same trade in the retired layout.
            ApprovalPayload { version: PayloadVersion::V1, ..base.clone() },
        ];
        for v in &variants {
            assert_ne!(v.to_bytes(), base.to_bytes());
            assert_eq!(ApprovalPayload::parse(&v.to_bytes()).as_ref(), Ok(v), "round trip");
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
    fn payloads_parse_back_and_anything_else_is_refused() {
        let shop = ShopId::parse("acme").expect("valid");
        let base = payload(&shop, TradeId::from_bytes([3; 16]), RegisterId::from_bytes([4; 16]));
        let bytes = base.to_bytes();
        assert_eq!(bytes.len(), 16 + 1 + 16 + 8 + 3 + 1 + 4 + 16 + 8 + 6 + 32 + 1);
        assert_eq!(ApprovalPayload::parse(&bytes), Ok(base.clone()));
        let v1 = ApprovalPayload { version: PayloadVersion::V1, ..base.clone() }.to_bytes();
        assert_eq!(v1.len(), bytes.len() - 38);
        // Cut, extended, retagged, re-versioned, bad enums and fields.
        assert!(matches!(ApprovalPayload::parse(&bytes[..bytes.len() - 1]), Err(PayloadError::Length { .. })));
        assert!(matches!(ApprovalPayload::parse(&[bytes.as_slice(), &[0]].concat()), Err(PayloadError::Length { .. })));
        assert_eq!(ApprovalPayload::parse(&bytes[..10]), Err(PayloadError::Tag));
        let with = |i: usize, b: u8| {
            let mut x = bytes.clone();
            x[i] = b;
            ApprovalPayload::parse(&x)
        };
        assert_eq!(with(0, b'S'), Err(PayloadError::Tag));
        assert_eq!(with(16, 3), Err(PayloadError::Version(3)));
        assert_eq!(with(16, 0), Err(PayloadError::Version(0)));
        // Version 1 bytes under a version 2 byte (and back) are the wrong length.
        assert!(matches!(with(16, 1), Err(PayloadError::Length { version: 1, .. })));
        let mut v1_as_v2 = v1.clone();
        v1_as_v2[16] = 2;
        assert!(matches!(ApprovalPayload::parse(&v1_as_v2), Err(PayloadError::Length { version: 2, .. })));
        assert_eq!(with(bytes.len() - 1, 3), Err(PayloadError::Field("decision")));
        assert_eq!(with(41, b'X'), Err(PayloadError::Field("currency")));
        assert_eq!(with(45, b'A'), Err(PayloadError::Field("shop id")));
        assert_eq!(with(16 + 1 + 16 + 8 + 3 + 1 + 4 + 16 + 8, b'x'), Err(PayloadError::Field("binding code")));
        let mut no_shop = bytes.clone();
        no_shop[44] = 0;
        assert!(ApprovalPayload::parse(&no_shop).is_err());
    }

    #[test]
    fn binding_codes_read_and_write_six_ascii_digits() {
        let code = BindingCode::parse("004217").expect("code");
        assert_eq!(code.to_string(), "004217");
        assert_eq!(&code.ascii(), b"004217");
        for bad in ["", "12345", "1234567", "12a456", "-12345", "１２３４５６"] {
            assert_eq!(BindingCode::parse(bad), None, "{bad:?}");
        }
        let secret = ServerSecret::from_bytes([1u8; 32]);
        let made = secret.binding_code(TradeId::from_bytes([3u8; 16]));
        assert_eq!(BindingCode::parse(&made.to_string()), Some(made));
    }

    #[test]
    fn the_screen_digest_length_prefixes_each_text() {
        let d = |a, b, c| ScreenText { shop_name: a, register_label: b, description: c }.digest();
        assert_ne!(d("ab", "c", ""), d("a", "bc", ""));
        assert_ne!(d("a", "", "b"), d("a", "b", ""));
        assert_eq!(d("本屋", "レジ", "本"), d("本屋", "レジ", "本"));
        // Precomposed and decomposed é are different bytes: no normalisation.
        assert_ne!(d("caf\u{e9}", "", ""), d("cafe\u{301}", "", ""));
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
}
