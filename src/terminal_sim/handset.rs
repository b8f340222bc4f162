//! One simulated handset: its Ed25519 key (made from the OS CSPRNG, as a
//! real handset makes it), the offer as the handset reads it, and the
//! signed answer it sends back. Pure apart from key generation.

use ed25519_dalek::{Signer, SigningKey};
use rand::rngs::SysRng;
use rand::TryRng;

use super::policy::{Signing, Step};
use super::SimError;
use crate::domain::{
    Amount, ApprovalPayload, BindingCode, Currency, Decision, PayloadVersion, RegisterId, ScreenText, ShopId,
    SubscriberNumber, TradeId, UnixMs,
};
use crate::proto;

/// Text shown on the handset is cut to this many characters before it is
/// kept in the transcript, so a misbehaving server cannot bloat memory. An
/// offer with longer text is not signed: the buyer would not see it all.
const MAX_DISPLAY_CHARS: usize = 256;
/// The only payload version this handset signs (version 1 is retired).
pub const PAYLOAD_VERSION: u32 = 2;

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
    /// canonical approval bytes of exactly this offer and decision (which
    /// [`ParsedOffer::parse`] checked are the bytes the offer carries).
    pub fn answer(&self, offer: &ParsedOffer, step: &Step) -> proto::HandsetAnswer {
        let mut signature = self.key.sign(offer.signing_bytes(step.decision)).to_bytes();
        match step.signing {
            Signing::Valid => {}
            // Flipping one bit of R keeps the length and the encoding
            // plausible; only verification can tell.
            Signing::Corrupted => signature[0] ^= 0x01,
            Signing::TrimmedText => signature = self.key.sign(&offer.trimmed_payload(step.decision)).to_bytes(),
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
/// parsed into its domain type, and the bytes the offer asks it to sign are
/// the ones rebuilt from those fields.
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
    /// The binding code as signed.
    pub binding: BindingCode,
    /// The screen digest the payloads bind, of the texts above.
    pub screen_digest: [u8; 32],
    /// The offer's `approve_payload`: the bytes signed to approve, exactly
    /// as the server sent them (and equal to the rebuilt ones).
    approve_payload: Vec<u8>,
    /// The offer's `decline_payload`, likewise.
    decline_payload: Vec<u8>,
}

impl ParsedOffer {
    /// Reads an offer; refuses one whose payload version is not 2 or
    /// whose `approve_payload`/`decline_payload` are not exactly the bytes
    /// rebuilt from its fields (the handset never signs what it did not
    /// show).
    pub fn parse(offer: &proto::Offer) -> Result<Self, OfferFieldError> {
        if offer.payload_version != PAYLOAD_VERSION {
            return Err(OfferFieldError {
                field: "payload_version",
                reason: format!(
                    "{} is not supported (this handset signs version {PAYLOAD_VERSION})",
                    offer.payload_version
                ),
            });
        }
        let shown = |name: &'static str, text: &str| {
            if text.chars().count() > MAX_DISPLAY_CHARS {
                Err(OfferFieldError { field: name, reason: "is longer than the handset shows".to_owned() })
            } else {
                Ok(text.to_owned())
            }
        };
        let binding = BindingCode::parse(&offer.binding_code)
            .ok_or(OfferFieldError { field: "binding_code", reason: "must be six digits".to_owned() })?;
        let parsed = ParsedOffer {
            trade_id: field("trade_id", TradeId::parse(&offer.trade_id))?,
            number: field("subscriber_number", SubscriberNumber::parse(&offer.subscriber_number))?,
            shop_id: field("shop_id", ShopId::parse(&offer.shop_id))?,
            shop_name: shown("shop_name", &offer.shop_name)?,
            register_id: field("register_id", RegisterId::parse(&offer.register_id))?,
            register_label: shown("register_label", &offer.register_label)?,
            amount: Amount::new(offer.amount_minor),
            currency: field("currency", Currency::parse(&offer.currency))?,
            description: shown("description", &offer.description)?,
            expires_at: UnixMs(field("expires_at_ms", u64::try_from(offer.expires_at_ms))?),
            binding_code: binding.to_string(),
            binding,
            screen_digest: ScreenText {
                shop_name: &offer.shop_name,
                register_label: &offer.register_label,
                description: &offer.description,
            }
            .digest(),
            approve_payload: offer.approve_payload.clone(),
            decline_payload: offer.decline_payload.clone(),
        };
        for (name, decision, sent) in [
            ("approve_payload", Decision::Approve, &parsed.approve_payload),
            ("decline_payload", Decision::Decline, &parsed.decline_payload),
        ] {
            if parsed.payload(decision).to_bytes() != *sent {
                return Err(OfferFieldError {
                    field: name,
                    reason: "differs from the bytes rebuilt from the offer's fields; not signed".to_owned(),
                });
            }
        }
        Ok(parsed)
    }

    /// The exact bytes a handset signs to answer this offer with
    /// `decision`: the offer's own `approve_payload` or `decline_payload`,
    /// as the server sent them ([`ParsedOffer::parse`] checked they are
    /// the bytes of what the handset shows). What simulated handsets sign,
    /// and what the carrier hands a browser phone's page to sign.
    pub fn signing_bytes(&self, decision: Decision) -> &[u8] {
        match decision {
            Decision::Approve => &self.approve_payload,
            Decision::Decline => &self.decline_payload,
        }
    }

    /// The bytes a relay that trims the display texts before rebuilding
    /// the payload would sign (`Deviation::SignTrimmedText`); equal to the
    /// right ones only when no text has spaces at either end.
    pub fn trimmed_payload(&self, decision: Decision) -> Vec<u8> {
        let trimmed = ScreenText {
            shop_name: self.shop_name.trim(),
            register_label: self.register_label.trim(),
            description: self.description.trim(),
        };
        ApprovalPayload {
            version: PayloadVersion::V2 { binding_code: self.binding, screen_digest: trimmed.digest() },
            ..self.payload(decision)
        }
        .to_bytes()
    }

    /// The canonical payload this offer's answer signs.
    pub fn payload(&self, decision: Decision) -> ApprovalPayload {
        ApprovalPayload {
            trade_id: self.trade_id,
            amount: self.amount,
            currency: self.currency,
            shop_id: self.shop_id.clone(),
            register_id: self.register_id,
            expires_at: self.expires_at,
            version: PayloadVersion::V2 {
                // Parsed from the offer's binding code above.
                binding_code: self.binding,
                screen_digest: self.screen_digest,
            },
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

    /// The version 2 payload of `o`, built here from its fields alone
    /// (independently of the handset code).
    pub fn payload_of(o: &proto::Offer, decision: Decision) -> Vec<u8> {
        ApprovalPayload {
            trade_id: TradeId::parse(&o.trade_id).expect("trade id"),
            amount: Amount::new(o.amount_minor),
            currency: Currency::parse(&o.currency).expect("currency"),
            shop_id: ShopId::parse(&o.shop_id).expect("shop"),
            register_id: RegisterId::parse(&o.register_id).expect("register"),
            expires_at: UnixMs(u64::try_from(o.expires_at_ms).expect("time")),
            version: PayloadVersion::V2 {
                binding_code: BindingCode::parse(&o.binding_code).expect("code"),
                screen_digest: ScreenText {
                    shop_name: &o.shop_name,
                    register_label: &o.register_label,
                    description: &o.description,
                }
                .digest(),
            },
            decision,
        }
        .to_bytes()
    }

    /// `o` with its payloads rebuilt, as the server would send it.
    pub fn with_payloads(mut o: proto::Offer) -> proto::Offer {
        o.payload_version = 2;
        o.approve_payload = payload_of(&o, Decision::Approve);
        o.decline_payload = payload_of(&o, Decision::Decline);
        o
    }

    pub fn offer(trade_id: TradeId, number: &str) -> proto::Offer {
        with_payloads(proto::Offer {
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
            payload_version: 2,
            approve_payload: Vec::new(),
            decline_payload: Vec::new(),
        })
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
            shop_id: shop,
            register_id: RegisterId::from_bytes([4u8; 16]),
            expires_at: UnixMs(1_700_000_120_000),
            version: PayloadVersion::V2 {
                binding_code: BindingCode::parse("042917").expect("code"),
                screen_digest: ScreenText {
                    shop_name: "Acme Books",
                    register_label: "Front desk",
                    description: "Two books",
                }
                .digest(),
            },
            decision: Decision::Approve,
        };
        assert_eq!(parsed.payload(Decision::Approve).to_bytes(), expected.to_bytes());
        // What is signed is the offer's own bytes, as the server sent them.
        let sent = offer(trade, "+818012345678");
        assert_eq!(parsed.signing_bytes(Decision::Approve), sent.approve_payload.as_slice());
        assert_eq!(parsed.signing_bytes(Decision::Decline), sent.decline_payload.as_slice());

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
        check(proto::Offer { binding_code: "04291".into(), ..base.clone() }, "binding_code");
        assert!(ParsedOffer::parse(&base).is_ok());
    }

    #[test]
    fn the_handset_refuses_bytes_other_than_what_it_shows() {
        let base = offer(TradeId::from_bytes([9u8; 16]), "+818012345678");
        let check = |o: proto::Offer, field: &str| {
            assert_eq!(ParsedOffer::parse(&o).map_err(|e| e.field), Err(field), "{o:?}");
        };
        // A field changed after the payloads were built: the screen would
        // show something the bytes do not say.
        for changed in [
            proto::Offer { amount_minor: 1201, ..base.clone() },
            proto::Offer { shop_name: "Acme Bookz".into(), ..base.clone() },
            proto::Offer { register_label: "Back desk".into(), ..base.clone() },
            proto::Offer { description: "Three books".into(), ..base.clone() },
            proto::Offer { binding_code: "042918".into(), ..base.clone() },
            proto::Offer { expires_at_ms: 1_700_000_120_001, ..base.clone() },
            proto::Offer { shop_id: "acme-bookz".into(), ..base.clone() },
        ] {
            check(changed, "approve_payload");
        }
        let mut swapped = base.clone();
        swapped.decline_payload = swapped.approve_payload.clone();
        check(swapped, "decline_payload");
        check(proto::Offer { approve_payload: Vec::new(), ..base.clone() }, "approve_payload");
        // Version 1 is retired, unknown versions are refused.
        for v in [0, 1, 3] {
            check(proto::Offer { payload_version: v, ..base.clone() }, "payload_version");
        }
        // Text longer than the screen shows is not signed.
        check(
            with_payloads(proto::Offer { description: "é".repeat(MAX_DISPLAY_CHARS + 1), ..base.clone() }),
            "description",
        );
        // Every byte of a payload matters.
        for i in 0..base.approve_payload.len() {
            let mut o = base.clone();
            o.approve_payload[i] ^= 0x01;
            check(o, "approve_payload");
        }
    }

    #[test]
    fn screen_text_is_bounded() {
        assert_eq!(display(&"é".repeat(1000)).chars().count(), MAX_DISPLAY_CHARS);
        assert_eq!(display("Two books"), "Two books");
    }
}
