//! One simulated handset: its Ed25519 key (made from the OS CSPRNG, as a
//! real handset makes it), the offer as the handset reads it, and the
//! signed answer it sends back. Pure apart from key generation.

use ed25519_dalek::{Signer, SigningKey};
use rand::rngs::SysRng;
use rand::TryRng;

use super::policy::{Signing, Step};
use super::SimError;
use crate::domain::{
    Amount, ApprovalPayload, Currency, Decision, RegisterId, ShopId, SubscriberNumber, TradeId, UnixMs,
};
use crate::proto;

/// Text shown on the handset is cut to this many characters before it is
/// kept in the transcript, so a misbehaving server cannot bloat memory.
const MAX_DISPLAY_CHARS: usize = 256;

/// A handset's signing key and the behaviour of its buyer.
pub struct Handset {
    key: SigningKey,
    pub policy: super::Policy,
}

impl Handset {
    pub fn new(key: SigningKey, policy: super::Policy) -> Self {
        Handset { key, policy }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The answer for one planned step: the Ed25519 signature over the
    /// canonical approval bytes of exactly this offer and decision.
    pub fn answer(&self, offer: &ParsedOffer, step: &Step) -> proto::HandsetAnswer {
        let mut signature = self.key.sign(&offer.signing_bytes(step.decision)).to_bytes();
        match step.signing {
            Signing::Valid => {}
            // Flipping one bit of R keeps the length and the encoding
            // plausible; only verification can tell.
            Signing::Corrupted => signature[0] ^= 0x01,
        }
        proto::HandsetAnswer {
            trade_id: offer.trade_id.to_string(),
            decision: wire_decision(step.decision) as i32,
            signature: signature.to_vec(),
        }
    }
}

/// A fresh key from the operating system's CSPRNG.
pub fn generate_key() -> Result<SigningKey, SimError> {
    let mut seed = [0u8; 32];
    SysRng.try_fill_bytes(&mut seed).map_err(|_| SimError::Entropy)?;
    Ok(SigningKey::from_bytes(&seed))
}

pub fn wire_decision(decision: Decision) -> proto::Decision {
    match decision {
        Decision::Approve => proto::Decision::Approve,
        Decision::Decline => proto::Decision::Decline,
    }
}

/// An offer field the handset could not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct OfferFieldError {
    pub field: &'static str,
    pub reason: String,
}

fn field<T, E: std::fmt::Display>(name: &'static str, parsed: Result<T, E>) -> Result<T, OfferFieldError> {
    parsed.map_err(|e| OfferFieldError { field: name, reason: e.to_string() })
}

/// An offer as the handset reads it: every field the signature binds is
/// parsed into its domain type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedOffer {
    pub trade_id: TradeId,
    pub number: SubscriberNumber,
    pub shop_id: ShopId,
    pub shop_name: String,
    pub register_id: RegisterId,
    pub register_label: String,
    pub amount: Amount,
    pub currency: Currency,
    pub description: String,
    pub expires_at: UnixMs,
    pub binding_code: String,
}

impl ParsedOffer {
    pub fn parse(offer: &proto::Offer) -> Result<Self, OfferFieldError> {
        Ok(ParsedOffer {
            trade_id: field("trade_id", TradeId::parse(&offer.trade_id))?,
            number: field("subscriber_number", SubscriberNumber::parse(&offer.subscriber_number))?,
            shop_id: field("shop_id", ShopId::parse(&offer.shop_id))?,
            shop_name: display(&offer.shop_name),
            register_id: field("register_id", RegisterId::parse(&offer.register_id))?,
            register_label: display(&offer.register_label),
            amount: Amount::new(offer.amount_minor),
            currency: field("currency", Currency::parse(&offer.currency))?,
            description: display(&offer.description),
            expires_at: UnixMs(field("expires_at_ms", u64::try_from(offer.expires_at_ms))?),
            binding_code: display(&offer.binding_code),
        })
    }

    /// The exact bytes a handset signs to answer this offer with
    /// `decision`: what simulated handsets sign, and what the carrier hands
    /// a browser phone's page to sign.
    pub fn signing_bytes(&self, decision: Decision) -> Vec<u8> {
        self.payload(decision).to_bytes()
    }

    /// The canonical payload this offer's answer signs.
    pub fn payload(&self, decision: Decision) -> ApprovalPayload<'_> {
        ApprovalPayload {
            trade_id: self.trade_id,
            amount: self.amount,
            currency: self.currency,
            shop_id: &self.shop_id,
            register_id: self.register_id,
            expires_at: self.expires_at,
            decision,
        }
    }
}

/// Text for the screen, cut to `MAX_DISPLAY_CHARS`.
pub fn display(text: &str) -> String {
    text.chars().take(MAX_DISPLAY_CHARS).collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::terminal_sim::Policy;

    pub fn offer(trade_id: TradeId, number: &str) -> proto::Offer {
        proto::Offer {
            trade_id: trade_id.to_string(),
            subscriber_number: number.to_owned(),
            shop_id: "acme-books".to_owned(),
            shop_name: "Acme Books".to_owned(),
            register_id: RegisterId::from_bytes([4u8; 16]).to_string(),
            register_label: "Front desk".to_owned(),
            amount_minor: 1200,
            currency: "JPY".to_owned(),
            description: "Two books".to_owned(),
            expires_at_ms: 1_700_000_120_000,
            binding_code: "042917".to_owned(),
        }
    }

    fn step(decision: Decision, signing: Signing) -> Step {
        Step { after: std::time::Duration::ZERO, decision, signing }
    }

    #[test]
    fn the_answer_signs_exactly_the_canonical_payload() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let handset = Handset::new(key.clone(), Policy::Approve);
        let trade = TradeId::from_bytes([9u8; 16]);
        let parsed = ParsedOffer::parse(&offer(trade, "+818012345678")).expect("valid offer");
        let shop = ShopId::parse("acme-books").expect("valid");
        // Built independently of the handset code, from the offer's fields.
        let expected = ApprovalPayload {
            trade_id: trade,
            amount: Amount::new(1200),
            currency: Currency::parse("JPY").expect("known"),
            shop_id: &shop,
            register_id: RegisterId::from_bytes([4u8; 16]),
            expires_at: UnixMs(1_700_000_120_000),
            decision: Decision::Approve,
        };
        assert_eq!(parsed.payload(Decision::Approve).to_bytes(), expected.to_bytes());

        let answer = handset.answer(&parsed, &step(Decision::Approve, Signing::Valid));
        assert_eq!(answer.trade_id, trade.to_string());
        assert_eq!(answer.decision, proto::Decision::Approve as i32);
        // Ed25519 is deterministic: the same key over the same bytes.
        assert_eq!(answer.signature, key.sign(&expected.to_bytes()).to_bytes().to_vec());
        assert!(expected.verify(&handset.public_key(), &answer.signature));
    }

    #[test]
    fn a_decline_signs_the_decline_payload() {
        let handset = Handset::new(SigningKey::from_bytes(&[7u8; 32]), Policy::Decline);
        let parsed = ParsedOffer::parse(&offer(TradeId::from_bytes([9u8; 16]), "+818012345678")).expect("valid offer");
        let answer = handset.answer(&parsed, &step(Decision::Decline, Signing::Valid));
        assert_eq!(answer.decision, proto::Decision::Decline as i32);
        let public = handset.public_key();
        assert!(parsed.payload(Decision::Decline).verify(&public, &answer.signature));
        assert!(!parsed.payload(Decision::Approve).verify(&public, &answer.signature));
    }

    #[test]
    fn a_corrupted_signature_does_not_verify() {
        let handset = Handset::new(SigningKey::from_bytes(&[7u8; 32]), Policy::BadSignature);
        let parsed = ParsedOffer::parse(&offer(TradeId::from_bytes([9u8; 16]), "+818012345678")).expect("valid offer");
        let answer = handset.answer(&parsed, &step(Decision::Approve, Signing::Corrupted));
        assert_eq!(answer.signature.len(), 64);
        assert!(!parsed.payload(Decision::Approve).verify(&handset.public_key(), &answer.signature));
    }

    #[test]
    fn generated_keys_are_fresh() {
        let a = generate_key().expect("entropy");
        let b = generate_key().expect("entropy");
        assert_ne!(a.verifying_key().to_bytes(), b.verifying_key().to_bytes());
        assert!(crate::domain::approval::valid_public_key(&a.verifying_key().to_bytes()).is_some());
    }

    #[test]
    fn malformed_offers_name_the_field() {
        let base = offer(TradeId::from_bytes([9u8; 16]), "+818012345678");
        let check = |o: proto::Offer, field: &str| {
            assert_eq!(ParsedOffer::parse(&o).map_err(|e| e.field), Err(field), "{o:?}");
        };
        check(proto::Offer { trade_id: "trd_x".into(), ..base.clone() }, "trade_id");
        check(proto::Offer { subscriber_number: "0801".into(), ..base.clone() }, "subscriber_number");
        check(proto::Offer { shop_id: "Acme Books".into(), ..base.clone() }, "shop_id");
        check(proto::Offer { register_id: "".into(), ..base.clone() }, "register_id");
        check(proto::Offer { currency: "XXX".into(), ..base.clone() }, "currency");
        check(proto::Offer { expires_at_ms: -1, ..base.clone() }, "expires_at_ms");
        assert!(ParsedOffer::parse(&base).is_ok());
    }

    #[test]
    fn screen_text_is_bounded() {
        assert_eq!(display(&"é".repeat(1000)).chars().count(), MAX_DISPLAY_CHARS);
        assert_eq!(display("Two books"), "Two books");
    }
}
