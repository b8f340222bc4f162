//! Phones whose key is made and kept outside this process: a web page's
//! WebCrypto Ed25519 key that cannot be exported. The carrier holds only
//! the public key it enrolled for the page. It keeps the offers addressed
//! to the phone for the page to show, acknowledges an offer to the server
//! only when the page reports it on screen, and relays the signature the
//! page made over the bytes it was given. Pure: no clock, no I/O.

use std::collections::VecDeque;

use super::handset::ParsedOffer;
use super::transcript::AnswerOutcome;
use crate::domain::{Decision, TradeId};
use crate::proto;

/// Offers a phone remembers (on screen or in its recent list); the oldest
/// go first. A page shows a handful; the bound keeps a misbehaving server
/// from growing the simulator's memory.
pub const MAX_OFFERS_PER_PHONE: usize = 20;

/// One phone driven by a web page.
#[derive(Debug, Clone, Default)]
pub struct BrowserPhone {
    /// The public key enrolled for the page's key pair; `None` until a page
    /// has enrolled one. There is never a private key here.
    pub public_key: Option<[u8; 32]>,
    /// Newest last, at most [`MAX_OFFERS_PER_PHONE`].
    pub offers: VecDeque<PhoneOffer>,
}

/// An offer as the phone holds it, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneOffer {
    pub offer: ParsedOffer,
    /// The newest delivery of the offer: acknowledged once the page shows it.
    pub delivery_id: u64,
    /// The page reported it on screen (and the ack went to the server).
    pub shown: bool,
    /// What the buyer pressed, once they pressed it.
    pub answered: Option<Decision>,
    /// The server's verdict on the answer.
    pub result: Option<AnswerOutcome>,
    /// The server took the offer back, with the final state that ended it.
    pub withdrawn: Option<proto::TradeState>,
}

impl PhoneOffer {
    /// True while the buyer can still answer it.
    pub fn is_open(&self) -> bool {
        self.answered.is_none() && self.withdrawn.is_none() && self.result.is_none()
    }
}

/// What a page asked for that the phone cannot do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PhoneRefusal {
    #[error("this phone has no such offer")]
    NoSuchOffer,
    #[error("the offer is not on screen yet")]
    NotShown,
    #[error("the offer was already answered")]
    AlreadyAnswered,
    #[error("the offer was withdrawn")]
    Withdrawn,
    #[error("this phone has no enrolled key")]
    NoKey,
}

impl BrowserPhone {
    pub fn offer(&self, trade: &TradeId) -> Option<&PhoneOffer> {
        self.offers.iter().find(|o| o.offer.trade_id == *trade)
    }

    pub fn offer_mut(&mut self, trade: &TradeId) -> Option<&mut PhoneOffer> {
        self.offers.iter_mut().find(|o| o.offer.trade_id == *trade)
    }

    /// Takes an offer (or a redelivery of one). Returns true when the
    /// delivery can be acknowledged at once: the page already showed it.
    pub fn receive(&mut self, offer: ParsedOffer, delivery_id: u64) -> bool {
        if let Some(known) = self.offer_mut(&offer.trade_id) {
            known.delivery_id = delivery_id;
            return known.shown;
        }
        while self.offers.len() >= MAX_OFFERS_PER_PHONE {
            self.offers.pop_front();
        }
        self.offers.push_back(PhoneOffer {
            offer,
            delivery_id,
            shown: false,
            answered: None,
            result: None,
            withdrawn: None,
        });
        false
    }

    /// The page shows the offer: returns the delivery to acknowledge, or
    /// `None` if it was shown (and acknowledged) before.
    pub fn show(&mut self, trade: &TradeId) -> Result<Option<u64>, PhoneRefusal> {
        let offer = self.offer_mut(trade).ok_or(PhoneRefusal::NoSuchOffer)?;
        if offer.withdrawn.is_some() {
            return Err(PhoneRefusal::Withdrawn);
        }
        if offer.shown {
            return Ok(None);
        }
        offer.shown = true;
        Ok(Some(offer.delivery_id))
    }

    /// The buyer pressed a button: marks the offer answered, once.
    pub fn answer(&mut self, trade: &TradeId, decision: Decision) -> Result<&PhoneOffer, PhoneRefusal> {
        if self.public_key.is_none() {
            return Err(PhoneRefusal::NoKey);
        }
        let offer = self.offer_mut(trade).ok_or(PhoneRefusal::NoSuchOffer)?;
        if !offer.shown {
            return Err(PhoneRefusal::NotShown);
        }
        if offer.withdrawn.is_some() {
            return Err(PhoneRefusal::Withdrawn);
        }
        if offer.answered.is_some() {
            return Err(PhoneRefusal::AlreadyAnswered);
        }
        offer.answered = Some(decision);
        Ok(offer)
    }
}

/// The answer message for a signature the page made.
pub fn answer_message(trade: TradeId, decision: Decision, signature: Vec<u8>) -> proto::RelayUp {
    proto::RelayUp {
        body: Some(proto::relay_up::Body::Answer(proto::HandsetAnswer {
            trade_id: trade.to_string(),
            decision: super::handset::wire_decision(decision) as i32,
            signature,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::terminal_sim::handset::tests::offer;

    fn parsed(n: u8) -> ParsedOffer {
        ParsedOffer::parse(&offer(TradeId::from_bytes([n; 16]), "+818012345678")).expect("valid")
    }

    fn phone() -> BrowserPhone {
        BrowserPhone { public_key: Some([1u8; 32]), offers: VecDeque::new() }
    }

    #[test]
    fn an_offer_is_acked_only_once_shown_and_answered_once() {
        let mut p = phone();
        let t = TradeId::from_bytes([1; 16]);
        assert!(!p.receive(parsed(1), 7), "not shown yet: no ack");
        assert_eq!(p.answer(&t, Decision::Approve).err(), Some(PhoneRefusal::NotShown));
        // A redelivery before the page showed it: the newest delivery id wins.
        assert!(!p.receive(parsed(1), 9));
        assert_eq!(p.show(&t), Ok(Some(9)));
        assert_eq!(p.show(&t), Ok(None), "shown once");
        // A redelivery after it was shown is acknowledged at once.
        assert!(p.receive(parsed(1), 11));
        assert!(p.answer(&t, Decision::Approve).is_ok());
        assert_eq!(p.answer(&t, Decision::Decline).err(), Some(PhoneRefusal::AlreadyAnswered));
        assert_eq!(p.offers.len(), 1);
        assert!(!p.offers[0].is_open());
    }

    #[test]
    fn a_withdrawn_or_unknown_offer_cannot_be_answered() {
        let mut p = phone();
        let t = TradeId::from_bytes([1; 16]);
        p.receive(parsed(1), 1);
        p.show(&t).expect("shown");
        if let Some(o) = p.offer_mut(&t) {
            o.withdrawn = Some(proto::TradeState::Cancelled);
        }
        assert_eq!(p.answer(&t, Decision::Approve).err(), Some(PhoneRefusal::Withdrawn));
        assert_eq!(p.show(&t).err(), Some(PhoneRefusal::Withdrawn));
        let stranger = TradeId::from_bytes([2; 16]);
        assert_eq!(p.answer(&stranger, Decision::Approve).err(), Some(PhoneRefusal::NoSuchOffer));
        let mut keyless = BrowserPhone::default();
        keyless.receive(parsed(3), 1);
        assert_eq!(keyless.answer(&TradeId::from_bytes([3; 16]), Decision::Approve).err(), Some(PhoneRefusal::NoKey));
    }

    #[test]
    fn a_phone_keeps_a_bounded_number_of_offers() {
        let mut p = phone();
        for n in 0..=u8::try_from(MAX_OFFERS_PER_PHONE).expect("small") {
            p.receive(parsed(n), u64::from(n) + 1);
        }
        assert_eq!(p.offers.len(), MAX_OFFERS_PER_PHONE);
        assert!(p.offer(&TradeId::from_bytes([0; 16])).is_none(), "the oldest went first");
    }
}
