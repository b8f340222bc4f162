//! Countersigned settlement receipts: the operator's signed statement that
//! an enrolled handset signed a trade's approval payload and that the trade
//! settled; the per-trade commitment to the handset's key; the operator's
//! receipt-signing keys. Layouts, byte by byte: `docs/APPROVAL.md`.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use super::approval::verify_bytes;
use super::ids::TradeId;
use super::UnixMs;

/// Domain separation of the operator's statement: no handset payload and
/// no other syncpay signature starts with these 15 bytes.
pub const STATEMENT_TAG: &[u8; 15] = b"syncpay/receipt";
/// The statement layout this code writes and reads.
pub const STATEMENT_VERSION: u8 = 1;
/// Domain separation of the handset key commitment.
pub const COMMITMENT_TAG: &[u8; 26] = b"syncpay/handset-commitment";
/// The trade state the statement attests, as `TradeState` numbers it on
/// the wire (`TRADE_STATE_SETTLED`).
pub const STATE_SETTLED: u8 = 3;
/// How many bytes of SHA-256(public key) name a receipt-signing key.
pub const KEY_ID_LEN: usize = 8;

/// SHA-256(`syncpay/handset-commitment` ‖ trade id (16 bytes) ‖ handset
/// public key (32 bytes)). Per trade, so two receipts of one handset share
/// nothing, even at one shop; in a dispute the operator reveals the key
/// and anyone recomputes it.
pub fn handset_commitment(trade: TradeId, handset_key: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(COMMITMENT_TAG);
    h.update(trade.as_bytes());
    h.update(handset_key);
    h.finalize().into()
}

/// Names a receipt-signing key: the first 8 bytes of SHA-256 of its
/// public key. Printed as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct ReceiptKeyId([u8; KEY_ID_LEN]);

impl ReceiptKeyId {
    pub fn of(public_key: &[u8; 32]) -> ReceiptKeyId {
        let digest = Sha256::digest(public_key);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        ReceiptKeyId(id)
    }

    pub fn from_bytes(bytes: [u8; KEY_ID_LEN]) -> ReceiptKeyId {
        ReceiptKeyId(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for ReceiptKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for ReceiptKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReceiptKeyId({self})")
    }
}

/// What the operator signs for a settled trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statement<'a> {
    /// The key that signs this statement (bound, so a signature cannot be
    /// presented under another key's name).
    pub key_id: ReceiptKeyId,
    /// The approval payload the handset signed, verbatim (any version).
    pub payload: &'a [u8],
    /// The handset's Ed25519 signature over `payload`.
    pub handset_signature: &'a [u8; 64],
    /// [`handset_commitment`] of the trade and the key that signed.
    pub commitment: &'a [u8; 32],
    /// When the settlement committed (the trade's `finished_at_ms`).
    pub settled_at: UnixMs,
}

impl Statement<'_> {
    /// `syncpay/receipt` ‖ version (1) ‖ key id (8) ‖ payload length (u32
    /// big-endian) ‖ payload ‖ handset signature (64) ‖ commitment (32) ‖
    /// state (1 byte, 3 = SETTLED) ‖ settled-at ms (u64 big-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(STATEMENT_TAG.len() + 1 + KEY_ID_LEN + 4 + self.payload.len() + 64 + 32 + 9);
        out.extend_from_slice(STATEMENT_TAG);
        out.push(STATEMENT_VERSION);
        out.extend_from_slice(self.key_id.as_bytes());
        // Payloads are at most `MAX_PAYLOAD_LEN` (140) bytes.
        out.extend_from_slice(&u32::try_from(self.payload.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(self.payload);
        out.extend_from_slice(self.handset_signature);
        out.extend_from_slice(self.commitment);
        out.push(STATE_SETTLED);
        out.extend_from_slice(&self.settled_at.0.to_be_bytes());
        out
    }

    /// True only for a valid, canonical Ed25519 signature of this
    /// statement by `public_key` (the key `key_id` names).
    pub fn verify(&self, public_key: &[u8; 32], countersignature: &[u8]) -> bool {
        ReceiptKeyId::of(public_key) == self.key_id && verify_bytes(public_key, &self.to_bytes(), countersignature)
    }
}

/// The operator's active receipt-signing key. Its Debug prints only the
/// key id.
#[derive(Clone)]
pub struct ReceiptSigner {
    key: SigningKey,
    id: ReceiptKeyId,
    created_at: UnixMs,
}

impl fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReceiptSigner({})", self.id)
    }
}

impl ReceiptSigner {
    pub fn from_seed(seed: [u8; 32], created_at: UnixMs) -> ReceiptSigner {
        let key = SigningKey::from_bytes(&seed);
        let id = ReceiptKeyId::of(&key.verifying_key().to_bytes());
        ReceiptSigner { key, id, created_at }
    }

    pub fn id(&self) -> ReceiptKeyId {
        self.id
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn created_at(&self) -> UnixMs {
        self.created_at
    }

    /// The seed, for the key file only.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Signs `statement` (which must name this key). Ed25519 is
    /// deterministic: the same statement always gets the same signature,
    /// so signing inside a transaction that may re-run is harmless.
    pub fn sign(&self, statement: &Statement<'_>) -> [u8; 64] {
        self.key.sign(&statement.to_bytes()).to_bytes()
    }

    /// What shops may know of this key.
    pub fn published(&self) -> PublishedKey {
        PublishedKey { id: self.id, public_key: self.public_key(), created_at: self.created_at, retired_at: None }
    }
}

/// A receipt-signing public key as published to shops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedKey {
    pub id: ReceiptKeyId,
    pub public_key: [u8; 32],
    pub created_at: UnixMs,
    /// When it stopped signing; `None` for the active key.
    pub retired_at: Option<UnixMs>,
}

/// The most receipt-signing keys kept (active and retired): a bound on the
/// key file and on `GetReceiptKeys`; at one rotation a month it lasts
/// eighty years.
pub const MAX_RECEIPT_KEYS: usize = 1000;

/// The operator's receipt keys: one active signer and every retired public
/// key, so receipts signed before a rotation still verify.
#[derive(Debug, Clone)]
pub struct ReceiptKeyring {
    active: ReceiptSigner,
    retired: Vec<PublishedKey>,
}

/// Why a keyring cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("at most {MAX_RECEIPT_KEYS} receipt keys (active and retired)")]
    TooMany,
    #[error("retired key {0} is listed twice or is the active key")]
    Duplicate(ReceiptKeyId),
    #[error("retired key {0}: the public key is not a valid Ed25519 key")]
    BadKey(ReceiptKeyId),
}

impl ReceiptKeyring {
    pub fn new(active: ReceiptSigner, retired: Vec<PublishedKey>) -> Result<ReceiptKeyring, KeyringError> {
        if retired.len() >= MAX_RECEIPT_KEYS {
            return Err(KeyringError::TooMany);
        }
        let mut seen = vec![active.id()];
        for k in &retired {
            if super::approval::valid_public_key(&k.public_key).is_none() || ReceiptKeyId::of(&k.public_key) != k.id {
                return Err(KeyringError::BadKey(k.id));
            }
            if seen.contains(&k.id) {
                return Err(KeyringError::Duplicate(k.id));
            }
            seen.push(k.id);
        }
        Ok(ReceiptKeyring { active, retired })
    }

    pub fn active(&self) -> &ReceiptSigner {
        &self.active
    }

    pub fn retired(&self) -> &[PublishedKey] {
        &self.retired
    }

    /// The keyring after `next` replaces the active key at `now`; the old
    /// active key is kept as retired.
    pub fn rotated(&self, next: ReceiptSigner, now: UnixMs) -> Result<ReceiptKeyring, KeyringError> {
        let mut retired = self.retired.clone();
        retired.push(PublishedKey { retired_at: Some(now), ..self.active.published() });
        ReceiptKeyring::new(next, retired)
    }

    /// Every public key, the active one first, then the retired ones, newest
    /// first.
    pub fn published(&self) -> Vec<PublishedKey> {
        std::iter::once(self.active.published()).chain(self.retired.iter().rev().copied()).collect()
    }

    /// The public key `id` names, active or retired.
    pub fn public_key(&self, id: ReceiptKeyId) -> Option<[u8; 32]> {
        self.published().into_iter().find(|k| k.id == id).map(|k| k.public_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement<'a>(key: ReceiptKeyId, payload: &'a [u8], sig: &'a [u8; 64], c: &'a [u8; 32]) -> Statement<'a> {
        Statement { key_id: key, payload, handset_signature: sig, commitment: c, settled_at: UnixMs(1_700_000_000_123) }
    }

    #[test]
    fn the_statement_binds_every_field_and_its_key() {
        let signer = ReceiptSigner::from_seed([5; 32], UnixMs(1));
        let (payload, sig, c) = (vec![1u8, 2, 3], [4u8; 64], [6u8; 32]);
        let base = statement(signer.id(), &payload, &sig, &c);
        let bytes = base.to_bytes();
        assert_eq!(bytes.len(), 15 + 1 + 8 + 4 + 3 + 64 + 32 + 1 + 8);
        assert_eq!(&bytes[..15], b"syncpay/receipt");
        let counter = signer.sign(&base);
        assert!(base.verify(&signer.public_key(), &counter));
        // Deterministic.
        assert_eq!(signer.sign(&base), counter);

        let (payload2, sig2, c2) = (vec![1u8, 2, 4], [5u8; 64], [7u8; 32]);
        let other = ReceiptSigner::from_seed([6; 32], UnixMs(1));
        let variants = [
            statement(signer.id(), &payload2, &sig, &c),
            statement(signer.id(), &payload, &sig2, &c),
            statement(signer.id(), &payload, &sig, &c2),
            Statement { settled_at: UnixMs(1_700_000_000_124), ..base },
            statement(other.id(), &payload, &sig, &c),
        ];
        for v in variants {
            assert_ne!(v.to_bytes(), bytes);
            assert!(!v.verify(&signer.public_key(), &counter), "{v:?}");
        }
        // Another key, even one that signed the same bytes, is not the named key.
        let by_other = other.sign(&base);
        assert!(!base.verify(&other.public_key(), &by_other));
        assert!(!base.verify(&other.public_key(), &counter));
    }

    #[test]
    fn commitments_are_per_trade_and_per_key() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let (t1, t2) = (TradeId::from_bytes([1; 16]), TradeId::from_bytes([2; 16]));
        assert_ne!(handset_commitment(t1, &a), handset_commitment(t2, &a));
        assert_ne!(handset_commitment(t1, &a), handset_commitment(t1, &b));
        assert_eq!(handset_commitment(t1, &a), handset_commitment(t1, &a));
    }

    #[test]
    fn rotation_keeps_every_old_public_key() {
        let first = ReceiptSigner::from_seed([1; 32], UnixMs(10));
        let ring = ReceiptKeyring::new(first.clone(), Vec::new()).expect("ring");
        let second = ReceiptSigner::from_seed([2; 32], UnixMs(20));
        let ring = ring.rotated(second.clone(), UnixMs(20)).expect("rotate");
        assert_eq!(ring.active().id(), second.id());
        let published = ring.published();
        assert_eq!(published.len(), 2);
        assert_eq!((published[0].id, published[0].retired_at), (second.id(), None));
        assert_eq!((published[1].id, published[1].retired_at), (first.id(), Some(UnixMs(20))));
        assert_eq!(ring.public_key(first.id()), Some(first.public_key()));
        assert_eq!(ring.public_key(ReceiptKeyId::from_bytes([0; 8])), None);
        // Rotating back to a key already used is refused.
        assert_eq!(ring.rotated(first.clone(), UnixMs(30)).map(|_| ()), Err(KeyringError::Duplicate(first.id())));
        let forged = PublishedKey { id: ReceiptKeyId::from_bytes([9; 8]), ..first.published() };
        assert_eq!(ReceiptKeyring::new(second, vec![forged]).map(|_| ()), Err(KeyringError::BadKey(forged.id)));
    }

    #[test]
    fn the_signer_prints_only_its_id() {
        let signer = ReceiptSigner::from_seed([5; 32], UnixMs(1));
        let text = format!("{signer:?}");
        assert!(text.contains(&signer.id().to_string()));
        let seed_hex: String = signer.seed().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!text.contains(&seed_hex));
    }
}
