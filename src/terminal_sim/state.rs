//! The simulator's state, shared by the handle and the relay task: the
//! handsets, the trades they have seen (for dedupe and for waiting), the
//! bounded transcript and the counters, the carrier's own lease records;
//! and the handling of one message
//! from the server. Synchronous and clock-free: the relay task does the I/O
//! and the timing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tracing::{debug, warn};

use super::browser::{self, BrowserPhone, PhoneRefusal};
use super::handset::{display, Handset, ParsedOffer};
use super::policy::{Signing, Step, MAX_ANSWERS_PER_OFFER};
use super::resolve::{decide, LeaseTable, ResolveAction, ResolvePolicy};
use super::transcript::{AnswerOutcome, SimCounters, SimEvent};
use super::{Deviation, Policy, SimError};
use crate::domain::{Decision, ShopId, SubscriberNumber, TradeId};
use crate::proto;
use crate::proto::{relay_down, relay_up};

/// Every collection the simulator keeps is bounded by one of these.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Transcript events kept; the oldest go first.
    pub transcript: usize,
    /// Trades remembered for dedupe and waiting. A redelivery of a trade
    /// older than this window would be shown again.
    pub trades: usize,
    /// Answer results kept per trade (`AnswerTwice` needs two).
    pub results_per_trade: usize,
    /// Handsets one simulated carrier hosts (simulated and browser phones
    /// together).
    pub handsets: usize,
}

pub const LIMITS: Limits = Limits { transcript: 10_000, trades: 100_000, results_per_trade: 8, handsets: 100_000 };

/// What the simulator knows about one trade.
#[derive(Debug, Clone, Default)]
pub struct TradeSeen {
    pub number: Option<SubscriberNumber>,
    /// The offer is (or was) on the handset's screen.
    pub shown: bool,
    pub withdrawn: Option<proto::TradeState>,
    pub results: Vec<AnswerOutcome>,
    /// The answers sent for it, kept (at most `MAX_ANSWERS_PER_OFFER`)
    /// only when the simulator re-answers redelivered offers.
    pub sent: Vec<PendingAnswer>,
}

/// An answer a handset has decided to send, `after` the offer was shown.
#[derive(Debug, Clone)]
pub struct PendingAnswer {
    pub after: Duration,
    pub number: SubscriberNumber,
    pub trade_id: TradeId,
    pub decision: Decision,
    pub signature_valid: bool,
    pub message: proto::RelayUp,
    /// A repeat of an answer already sent, for a redelivered offer.
    pub resend: bool,
}

/// What the relay task must send in reply to one message.
#[derive(Debug, Clone)]
pub enum Outbound {
    Ack(u64),
    Answer(PendingAnswer),
    /// What to do about a resolve request (ask mode).
    Resolve(ResolveAction),
}

pub fn ack(delivery_id: u64) -> proto::RelayUp {
    proto::RelayUp { body: Some(relay_up::Body::Ack(proto::Ack { delivery_id })) }
}

pub struct SimState {
    limits: Limits,
    handsets: HashMap<SubscriberNumber, Handset>,
    /// Phones driven by a web page; a number is in at most one of
    /// `handsets` and `browser`.
    browser: HashMap<SubscriberNumber, BrowserPhone>,
    trades: HashMap<TradeId, TradeSeen>,
    /// Insertion order of `trades`, for eviction; same length as `trades`.
    trade_order: VecDeque<TradeId>,
    transcript: VecDeque<SimEvent>,
    pub counters: SimCounters,
    pub connected: bool,
    /// Answer a redelivered offer again with the answers sent before.
    pub reanswer_on_redelivery: bool,
    /// A deliberate breach of the contract (tests of a conformance check).
    pub deviation: Option<Deviation>,
    /// The carrier's own lease records (ask mode: they stay here).
    pub leases: LeaseTable,
    pub resolve_policy: ResolvePolicy,
    /// Shops this carrier refuses by its own rules when asked to resolve.
    pub refused_shops: HashSet<ShopId>,
}

impl SimState {
    pub fn new(limits: Limits) -> Self {
        SimState {
            limits,
            handsets: HashMap::new(),
            browser: HashMap::new(),
            trades: HashMap::new(),
            trade_order: VecDeque::new(),
            transcript: VecDeque::new(),
            counters: SimCounters::default(),
            connected: false,
            reanswer_on_redelivery: false,
            deviation: None,
            leases: LeaseTable::default(),
            resolve_policy: ResolvePolicy::default(),
            refused_shops: HashSet::new(),
        }
    }

    /// False when adding `number` would exceed the handset limit.
    pub fn has_room_for(&self, number: &SubscriberNumber) -> bool {
        self.handsets.contains_key(number)
            || self.browser.contains_key(number)
            || self.handsets.len() + self.browser.len() < self.limits.handsets
    }

    /// Adds a handset or replaces the one the number had (a new key; a
    /// browser phone of the number is gone with its key).
    pub fn add_handset(&mut self, number: SubscriberNumber, handset: Handset) -> Result<(), SimError> {
        if !self.has_room_for(&number) {
            return Err(SimError::TooManyHandsets { max: self.limits.handsets });
        }
        self.browser.remove(&number);
        self.handsets.insert(number, handset);
        debug_assert!(self.handsets.len() + self.browser.len() <= self.limits.handsets);
        Ok(())
    }

    /// Hosts a phone for a web page, without a key until one is enrolled.
    /// A simulated handset of the number is dropped (with its key), so no
    /// key made here can answer for the number. Adding it again keeps its
    /// offers and key.
    pub fn add_browser_phone(&mut self, number: SubscriberNumber) -> Result<(), SimError> {
        if !self.has_room_for(&number) {
            return Err(SimError::TooManyHandsets { max: self.limits.handsets });
        }
        self.handsets.remove(&number);
        self.browser.entry(number).or_default();
        debug_assert!(self.handsets.len() + self.browser.len() <= self.limits.handsets);
        Ok(())
    }

    /// Records the public key enrolled for a browser phone's page.
    pub fn set_browser_key(&mut self, number: &SubscriberNumber, public_key: [u8; 32]) -> Result<(), SimError> {
        let phone = self.browser.get_mut(number).ok_or_else(|| SimError::UnknownHandset(number.clone()))?;
        phone.public_key = Some(public_key);
        Ok(())
    }

    pub fn browser_phone(&self, number: &SubscriberNumber) -> Option<&BrowserPhone> {
        self.browser.get(number)
    }

    /// The page shows an offer: returns the delivery to acknowledge now
    /// (`None` when it was shown before), and records it as shown.
    pub fn browser_show(&mut self, number: &SubscriberNumber, trade: &TradeId) -> Result<Option<u64>, SimError> {
        let phone = self.browser.get_mut(number).ok_or_else(|| SimError::UnknownHandset(number.clone()))?;
        let ack = phone.show(trade).map_err(SimError::Phone)?;
        let Some(delivery_id) = ack else {
            return Ok(None);
        };
        let shown = phone.offer(trade).map(|o| o.offer.clone());
        let seen = self.trade_entry(*trade);
        seen.shown = true;
        seen.number = Some(number.clone());
        if let Some(p) = shown {
            self.record(SimEvent::OfferShown {
                number: number.clone(),
                trade_id: p.trade_id,
                shop_id: p.shop_id,
                shop_name: p.shop_name,
                register_label: p.register_label,
                amount: p.amount,
                currency: p.currency,
                description: p.description,
                binding_code: p.binding_code,
                expires_at: p.expires_at,
            });
        }
        Ok((delivery_id != 0).then_some(delivery_id))
    }

    /// The buyer answered on the page with a signature made there: the
    /// answer to relay. The carrier checks the signature only to say so in
    /// its transcript; the server decides.
    pub fn browser_answer(
        &mut self,
        number: &SubscriberNumber,
        trade: &TradeId,
        decision: Decision,
        signature: Vec<u8>,
    ) -> Result<PendingAnswer, SimError> {
        let phone = self.browser.get_mut(number).ok_or_else(|| SimError::UnknownHandset(number.clone()))?;
        let key = phone.public_key.ok_or(SimError::Phone(PhoneRefusal::NoKey))?;
        let offer = phone.answer(trade, decision).map_err(SimError::Phone)?;
        let signed = offer.offer.signing_bytes(decision);
        let signature_valid = crate::domain::approval::verify_bytes(&key, signed, &signature);
        self.counters.answers_planned += 1;
        Ok(PendingAnswer {
            after: Duration::ZERO,
            number: number.clone(),
            trade_id: *trade,
            decision,
            signature_valid,
            message: browser::answer_message(*trade, decision, signature),
            resend: false,
        })
    }

    pub fn set_policy(&mut self, number: &SubscriberNumber, policy: Policy) -> Result<(), SimError> {
        let handset = self.handsets.get_mut(number).ok_or_else(|| SimError::UnknownHandset(number.clone()))?;
        handset.policy = policy;
        Ok(())
    }

    pub fn handset(&self, number: &SubscriberNumber) -> Option<&Handset> {
        self.handsets.get(number)
    }

    pub fn trade(&self, trade_id: &TradeId) -> Option<&TradeSeen> {
        self.trades.get(trade_id)
    }

    pub fn transcript(&self) -> Vec<SimEvent> {
        self.transcript.iter().cloned().collect()
    }

    /// The first event in the transcript that `check` accepts.
    pub fn find_event(&self, mut check: impl FnMut(&SimEvent) -> bool) -> Option<SimEvent> {
        self.transcript.iter().find(|e| check(e)).cloned()
    }

    /// Handles one message from the server and says what to send back:
    /// an ack for every message that carries a delivery id, and the
    /// answers the handset's policy plans for a newly shown offer.
    pub fn handle(&mut self, down: proto::RelayDown) -> Vec<Outbound> {
        let mut out = Vec::new();
        let mut ack = down.delivery_id != 0;
        match down.body {
            Some(relay_down::Body::Offer(offer)) => {
                if down.delivery_id == 0 {
                    warn!(trade_id = %display(&offer.trade_id), "offer without a delivery id");
                }
                match self.on_offer(&offer, down.delivery_id) {
                    Some(answers) => out.extend(answers.into_iter().map(Outbound::Answer)),
                    // A browser phone's page acknowledges it once on screen.
                    None => ack = false,
                }
            }
            Some(relay_down::Body::Withdraw(withdraw)) => {
                if down.delivery_id == 0 {
                    warn!(trade_id = %display(&withdraw.trade_id), "withdrawal without a delivery id");
                }
                self.on_withdraw(&withdraw);
            }
            Some(relay_down::Body::AnswerResult(result)) => self.on_answer_result(&result),
            Some(relay_down::Body::Resolve(request)) => {
                self.counters.resolves_received += 1;
                out.push(Outbound::Resolve(decide(&self.leases, &self.refused_shops, &self.resolve_policy, &request)));
            }
            None => warn!(delivery_id = down.delivery_id, "relay message with no body (newer server?)"),
        }
        match self.deviation {
            Some(Deviation::NeverAck) => ack = false,
            Some(Deviation::AckWrongId) if ack => {
                out.insert(0, Outbound::Ack(down.delivery_id.wrapping_add(1)));
                ack = false;
            }
            _ => {}
        }
        if ack {
            out.insert(0, Outbound::Ack(down.delivery_id));
        }
        out
    }

    /// The answers to send for an offer, or `None` when its acknowledgement
    /// waits for a browser phone's page to show it.
    fn on_offer(&mut self, offer: &proto::Offer, delivery_id: u64) -> Option<Vec<PendingAnswer>> {
        self.counters.offers_received += 1;
        let parsed = match ParsedOffer::parse(offer) {
            Ok(parsed) => parsed,
            Err(e) => {
                warn!(trade_id = %display(&offer.trade_id), error = %e, "unreadable offer ignored");
                let number = SubscriberNumber::parse(&offer.subscriber_number).ok();
                self.ignore_offer(number, &offer.trade_id, e.to_string());
                return Some(Vec::new());
            }
        };
        let id = parsed.trade_id;
        let number = parsed.number.clone();
        let remembered = if self.deviation == Some(Deviation::Forgetful) { None } else { self.trades.get(&id) };
        match remembered {
            Some(seen) if seen.shown => {
                // At-least-once delivery: acked again above, shown once;
                // answered again unless a verdict says the answer arrived.
                let again = if self.reanswer_on_redelivery && seen.withdrawn.is_none() && seen.results.is_empty() {
                    seen.sent
                        .iter()
                        .map(|a| PendingAnswer { after: Duration::ZERO, resend: true, ..a.clone() })
                        .collect()
                } else {
                    Vec::new()
                };
                let resent = u64::try_from(again.len()).unwrap_or(u64::MAX);
                self.counters.offers_duplicate += 1;
                self.counters.answers_resent += resent;
                self.counters.answers_planned += resent;
                debug!(trade_id = %id, number = %number.masked(), resent = again.len(), "duplicate offer");
                return Some(again);
            }
            Some(seen) if seen.withdrawn.is_some() => {
                self.ignore_offer(Some(number), &offer.trade_id, "already withdrawn".to_owned());
                return Some(Vec::new());
            }
            Some(_) | None => {}
        }
        if let Some(phone) = self.browser.get_mut(&number) {
            // Waits for the page; counted as a duplicate when it is a
            // redelivery of an offer the page has not shown yet.
            if phone.offer(&id).is_some() {
                self.counters.offers_duplicate += 1;
            }
            phone.receive(parsed, delivery_id);
            let seen = self.trade_entry(id);
            seen.number = Some(number.clone());
            debug!(trade_id = %id, number = %number.masked(), "offer waiting for the phone's page");
            return None;
        }
        let Some(handset) = self.handsets.get(&number) else {
            warn!(trade_id = %id, number = %number.masked(), "offer for a number with no handset");
            self.ignore_offer(Some(number), &offer.trade_id, "no handset for this number".to_owned());
            return Some(Vec::new());
        };
        let answers: Vec<PendingAnswer> = handset
            .policy
            .plan()
            .answers
            .iter()
            .map(|step| {
                let step = match self.deviation {
                    Some(Deviation::SignTrimmedText) => Step { signing: Signing::TrimmedText, ..*step },
                    _ => *step,
                };
                PendingAnswer {
                    after: step.after,
                    number: number.clone(),
                    trade_id: id,
                    decision: step.decision,
                    signature_valid: match step.signing {
                        Signing::Valid => true,
                        Signing::Corrupted => false,
                        Signing::TrimmedText => {
                            parsed.trimmed_payload(step.decision) == parsed.signing_bytes(step.decision)
                        }
                    },
                    message: proto::RelayUp { body: Some(relay_up::Body::Answer(handset.answer(&parsed, &step))) },
                    resend: false,
                }
            })
            .collect();
        self.counters.answers_planned += u64::try_from(answers.len()).unwrap_or(u64::MAX);
        let seen = self.trade_entry(id);
        seen.shown = true;
        seen.number = Some(number.clone());
        debug!(trade_id = %id, number = %number.masked(), answers = answers.len(), "offer shown");
        self.record(SimEvent::OfferShown {
            number,
            trade_id: id,
            shop_id: parsed.shop_id,
            shop_name: parsed.shop_name,
            register_label: parsed.register_label,
            amount: parsed.amount,
            currency: parsed.currency,
            description: parsed.description,
            binding_code: parsed.binding_code,
            expires_at: parsed.expires_at,
        });
        Some(answers)
    }

    fn ignore_offer(&mut self, number: Option<SubscriberNumber>, trade_id: &str, reason: String) {
        self.counters.offers_ignored += 1;
        self.record(SimEvent::OfferIgnored { number, trade_id: display(trade_id), reason });
    }

    fn on_withdraw(&mut self, withdraw: &proto::Withdraw) {
        self.counters.withdraws_received += 1;
        if matches!(self.deviation, Some(Deviation::IgnoreWithdrawals | Deviation::Forgetful)) {
            return;
        }
        let Ok(id) = TradeId::parse(&withdraw.trade_id) else {
            warn!(trade_id = %display(&withdraw.trade_id), "unreadable withdrawal ignored");
            return;
        };
        let number = SubscriberNumber::parse(&withdraw.subscriber_number).ok();
        let state = proto::TradeState::try_from(withdraw.state).unwrap_or(proto::TradeState::Unspecified);
        let seen = self.trade_entry(id);
        if seen.withdrawn.is_some() {
            debug!(trade_id = %id, "duplicate withdrawal");
            return;
        }
        seen.withdrawn = Some(state);
        if seen.number.is_none() {
            seen.number.clone_from(&number);
        }
        let number = seen.number.clone();
        if let Some(offer) = number.as_ref().and_then(|n| self.browser.get_mut(n)).and_then(|p| p.offer_mut(&id)) {
            offer.withdrawn = Some(state);
        }
        debug!(trade_id = %id, state = state.as_str_name(), "offer withdrawn");
        self.record(SimEvent::Withdrawn { number, trade_id: id, state });
    }

    fn on_answer_result(&mut self, result: &proto::AnswerResult) {
        self.counters.answer_results_received += 1;
        let Ok(id) = TradeId::parse(&result.trade_id) else {
            warn!(trade_id = %display(&result.trade_id), "unreadable answer result ignored");
            return;
        };
        let outcome = AnswerOutcome {
            trade_id: id,
            accepted: result.accepted,
            state: proto::TradeState::try_from(result.state).unwrap_or(proto::TradeState::Unspecified),
            failure_reason: proto::FailureReason::try_from(result.failure_reason)
                .unwrap_or(proto::FailureReason::Unspecified),
            message: display(&result.message),
        };
        debug!(trade_id = %id, accepted = outcome.accepted, state = outcome.state.as_str_name(), "answer result");
        let cap = self.limits.results_per_trade;
        let seen = self.trade_entry(id);
        if seen.results.len() < cap {
            seen.results.push(outcome.clone());
        }
        let number = seen.number.clone();
        if let Some(offer) = number.as_ref().and_then(|n| self.browser.get_mut(n)).and_then(|p| p.offer_mut(&id)) {
            // The first verdict is the one that decided the trade.
            if offer.result.is_none() {
                offer.result = Some(outcome.clone());
            }
        }
        self.record(SimEvent::AnswerResult(outcome));
    }

    pub fn ack_sent(&mut self) {
        self.counters.acks_sent += 1;
    }

    pub fn answer_sent(&mut self, answer: &PendingAnswer) {
        self.counters.answers_sent += 1;
        if self.reanswer_on_redelivery && !answer.resend {
            let seen = self.trade_entry(answer.trade_id);
            if seen.sent.len() < MAX_ANSWERS_PER_OFFER {
                seen.sent.push(answer.clone());
            }
        }
        debug!(trade_id = %answer.trade_id, number = %answer.number.masked(), decision = ?answer.decision, "answer sent");
        self.record(SimEvent::Answered {
            number: answer.number.clone(),
            trade_id: answer.trade_id,
            decision: answer.decision,
            signature_valid: answer.signature_valid,
        });
    }

    pub fn answer_dropped(&mut self) {
        self.counters.answers_dropped += 1;
    }

    /// Returns the connection's number (1, 2, …).
    pub fn relay_connected(&mut self) -> u64 {
        self.counters.connections += 1;
        self.connected = true;
        let connection = self.counters.connections;
        self.record(SimEvent::RelayConnected { connection });
        connection
    }

    pub fn relay_lost(&mut self, connection: u64, reason: String) {
        self.connected = false;
        self.record(SimEvent::RelayLost { connection, reason });
    }

    fn record(&mut self, event: SimEvent) {
        if self.transcript.len() >= self.limits.transcript {
            self.transcript.pop_front();
        }
        self.transcript.push_back(event);
    }

    /// The trade's record, made (evicting the oldest if full) if new.
    fn trade_entry(&mut self, id: TradeId) -> &mut TradeSeen {
        if !self.trades.contains_key(&id) {
            while self.trades.len() >= self.limits.trades {
                match self.trade_order.pop_front() {
                    Some(oldest) => {
                        self.trades.remove(&oldest);
                    }
                    None => break,
                }
            }
            self.trade_order.push_back(id);
            self.trades.insert(id, TradeSeen::default());
        }
        debug_assert_eq!(self.trade_order.len(), self.trades.len());
        self.trades.entry(id).or_default()
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::terminal_sim::handset::tests::offer;

    const NUMBER: &str = "+818012345678";

    fn number() -> SubscriberNumber {
        SubscriberNumber::parse(NUMBER).expect("valid")
    }

    fn state_with(policy: Policy, limits: Limits) -> SimState {
        let mut state = SimState::new(limits);
        let handset = Handset::new(SigningKey::from_bytes(&[7u8; 32]), policy);
        state.add_handset(number(), handset).expect("room");
        state
    }

    fn state(policy: Policy) -> SimState {
        state_with(policy, LIMITS)
    }

    fn down(delivery_id: u64, body: relay_down::Body) -> proto::RelayDown {
        proto::RelayDown { delivery_id, body: Some(body) }
    }

    fn offer_down(delivery_id: u64, trade: TradeId) -> proto::RelayDown {
        down(delivery_id, relay_down::Body::Offer(offer(trade, NUMBER)))
    }

    fn trade(n: u8) -> TradeId {
        TradeId::from_bytes([n; 16])
    }

    /// One line per outbound message, checking each answer's signature
    /// against the payload rebuilt from the offer.
    fn summary(state: &SimState, out: &[Outbound]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                Outbound::Ack(id) => format!("ack {id}"),
                Outbound::Resolve(action) => format!("resolve {action:?}"),
                Outbound::Answer(a) => {
                    let Some(relay_up::Body::Answer(answer)) = &a.message.body else {
                        return "not an answer".to_owned();
                    };
                    let parsed = ParsedOffer::parse(&offer(a.trade_id, NUMBER)).expect("valid");
                    let public = state.handset(&a.number).expect("hosted").public_key();
                    let verifies = parsed.payload(a.decision).verify(&public, &answer.signature);
                    assert_eq!(verifies, a.signature_valid, "{a:?}");
                    assert_eq!(answer.trade_id, a.trade_id.to_string());
                    format!(
                        "answer {:?} {} +{}ms",
                        a.decision,
                        if verifies { "valid" } else { "corrupt" },
                        a.after.as_millis()
                    )
                }
            })
            .collect()
    }

    fn check(state: &mut SimState, message: proto::RelayDown, expect: &[&str]) {
        let out = state.handle(message);
        assert_eq!(summary(state, &out), expect);
    }

    #[test]
    fn each_policy_acks_then_answers_as_planned() {
        let cases: [(Policy, &[&str]); 6] = [
            (Policy::Approve, &["ack 7", "answer Approve valid +0ms"]),
            (Policy::Decline, &["ack 7", "answer Decline valid +0ms"]),
            (Policy::Ignore, &["ack 7"]),
            (Policy::ApproveAfter(Duration::from_millis(250)), &["ack 7", "answer Approve valid +250ms"]),
            (Policy::BadSignature, &["ack 7", "answer Approve corrupt +0ms"]),
            (Policy::AnswerTwice, &["ack 7", "answer Approve valid +0ms", "answer Approve valid +0ms"]),
        ];
        for (policy, expect) in cases {
            let mut s = state(policy);
            check(&mut s, offer_down(7, trade(1)), expect);
            assert_eq!(s.counters.offers_received, 1, "{policy:?}");
            assert!(s.trade(&trade(1)).is_some_and(|t| t.shown));
        }
    }

    #[test]
    fn answer_twice_sends_the_same_message_twice() {
        let mut s = state(Policy::AnswerTwice);
        let out = s.handle(offer_down(7, trade(1)));
        let answers: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Outbound::Answer(a) => Some(a.message.clone()),
                Outbound::Ack(_) | Outbound::Resolve(_) => None,
            })
            .collect();
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0], answers[1]);
    }

    #[test]
    fn a_redelivered_offer_is_acked_again_but_shown_and_answered_once() {
        let mut s = state(Policy::Approve);
        check(&mut s, offer_down(7, trade(1)), &["ack 7", "answer Approve valid +0ms"]);
        check(&mut s, offer_down(7, trade(1)), &["ack 7"]);
        // A redelivery may carry a new delivery id after a reconnect.
        check(&mut s, offer_down(12, trade(1)), &["ack 12"]);
        assert_eq!(s.counters.offers_received, 3);
        assert_eq!(s.counters.offers_duplicate, 2);
        let shown = s.transcript().iter().filter(|e| matches!(e, SimEvent::OfferShown { .. })).count();
        assert_eq!(shown, 1);
    }

    #[test]
    fn with_reanswer_a_redelivered_offer_gets_the_sent_answers_again() {
        let send_all = |s: &mut SimState, out: &[Outbound]| {
            for o in out {
                match o {
                    Outbound::Ack(_) | Outbound::Resolve(_) => s.ack_sent(),
                    Outbound::Answer(a) => s.answer_sent(a),
                }
            }
        };
        let mut s = state(Policy::AnswerTwice);
        s.reanswer_on_redelivery = true;
        let first = s.handle(offer_down(7, trade(1)));
        send_all(&mut s, &first);
        let again = s.handle(offer_down(9, trade(1)));
        assert_eq!(summary(&s, &again), ["ack 9", "answer Approve valid +0ms", "answer Approve valid +0ms"]);
        let messages = |out: &[Outbound]| -> Vec<proto::RelayUp> {
            out.iter()
                .filter_map(|o| match o {
                    Outbound::Answer(a) => Some(a.message.clone()),
                    Outbound::Ack(_) | Outbound::Resolve(_) => None,
                })
                .collect()
        };
        assert_eq!(messages(&again), messages(&first));
        assert!(again.iter().all(|o| match o {
            Outbound::Answer(a) => a.resend,
            Outbound::Ack(_) | Outbound::Resolve(_) => true,
        }));
        // Resent answers are not stored again, so a third delivery resends
        // the same two, not four.
        send_all(&mut s, &again);
        assert_eq!(messages(&s.handle(offer_down(9, trade(1)))).len(), 2);
        assert_eq!(s.counters.answers_resent, 4);
        assert_eq!(s.counters.answers_sent, 4);
        // The third delivery's two answers are planned but not sent yet.
        assert_eq!(s.counters.answers_planned, 6);

        // Nothing sent yet (a delayed answer still waits): nothing to resend.
        let mut s = state(Policy::ApproveAfter(Duration::from_secs(5)));
        s.reanswer_on_redelivery = true;
        s.handle(offer_down(1, trade(2)));
        check(&mut s, offer_down(1, trade(2)), &["ack 1"]);
        // Once withdrawn, a stray copy of the offer is not answered again.
        let mut s = state(Policy::Approve);
        s.reanswer_on_redelivery = true;
        let out = s.handle(offer_down(1, trade(3)));
        send_all(&mut s, &out);
        s.handle(down(
            2,
            relay_down::Body::Withdraw(proto::Withdraw {
                trade_id: trade(3).to_string(),
                subscriber_number: NUMBER.to_owned(),
                state: proto::TradeState::Expired as i32,
            }),
        ));
        check(&mut s, offer_down(1, trade(3)), &["ack 1"]);
        // Once a verdict came, the answer arrived: a copy is only acked.
        let mut s = state(Policy::Approve);
        s.reanswer_on_redelivery = true;
        let out = s.handle(offer_down(1, trade(4)));
        send_all(&mut s, &out);
        s.handle(down(
            0,
            relay_down::Body::AnswerResult(proto::AnswerResult {
                trade_id: trade(4).to_string(),
                accepted: true,
                state: proto::TradeState::Settled as i32,
                ..Default::default()
            }),
        ));
        check(&mut s, offer_down(1, trade(4)), &["ack 1"]);
    }

    #[test]
    fn each_deviation_breaks_its_rule() {
        use crate::terminal_sim::Deviation;
        let with = |deviation| {
            let mut s = state(Policy::Approve);
            s.deviation = Some(deviation);
            s
        };
        check(&mut with(Deviation::NeverAck), offer_down(7, trade(1)), &["answer Approve valid +0ms"]);
        check(&mut with(Deviation::AckWrongId), offer_down(7, trade(1)), &["ack 8", "answer Approve valid +0ms"]);
        let mut forgetful = with(Deviation::Forgetful);
        check(&mut forgetful, offer_down(7, trade(1)), &["ack 7", "answer Approve valid +0ms"]);
        check(&mut forgetful, offer_down(7, trade(1)), &["ack 7", "answer Approve valid +0ms"]);
        let withdraw = down(
            9,
            relay_down::Body::Withdraw(proto::Withdraw {
                trade_id: trade(2).to_string(),
                subscriber_number: NUMBER.to_owned(),
                state: proto::TradeState::Cancelled as i32,
            }),
        );
        let mut ignoring = with(Deviation::IgnoreWithdrawals);
        check(&mut ignoring, withdraw.clone(), &["ack 9"]);
        check(&mut ignoring, offer_down(8, trade(2)), &["ack 8", "answer Approve valid +0ms"]);
        // Following the contract, the same two messages show nothing.
        let mut s = state(Policy::Approve);
        check(&mut s, withdraw, &["ack 9"]);
        check(&mut s, offer_down(8, trade(2)), &["ack 8"]);
        // A trimmed-text signature is valid only for texts with nothing
        // to trim.
        check(&mut with(Deviation::SignTrimmedText), offer_down(7, trade(1)), &["ack 7", "answer Approve valid +0ms"]);
        let mut spaced = offer(trade(3), NUMBER);
        spaced.description.push(' ');
        let spaced = crate::terminal_sim::handset::tests::with_payloads(spaced);
        let mut trims = with(Deviation::SignTrimmedText);
        let out = trims.handle(down(7, relay_down::Body::Offer(spaced.clone())));
        let Some(Outbound::Answer(a)) = out.get(1) else { panic!("no answer: {out:?}") };
        assert!(!a.signature_valid);
        let Some(relay_up::Body::Answer(answer)) = &a.message.body else { panic!("not an answer") };
        let public = trims.handset(&number()).expect("hosted").public_key();
        let parsed = ParsedOffer::parse(&spaced).expect("valid");
        assert!(!parsed.payload(Decision::Approve).verify(&public, &answer.signature));
        assert!(crate::domain::approval::verify_bytes(
            &public,
            &parsed.trimmed_payload(Decision::Approve),
            &answer.signature
        ));
    }

    #[test]
    fn without_reanswer_a_redelivered_offer_is_only_acked() {
        let mut s = state(Policy::Approve);
        let out = s.handle(offer_down(1, trade(1)));
        for o in &out {
            if let Outbound::Answer(a) = o {
                s.answer_sent(a);
            }
        }
        assert!(s.trade(&trade(1)).is_some_and(|t| t.sent.is_empty()));
        check(&mut s, offer_down(1, trade(1)), &["ack 1"]);
        assert_eq!(s.counters.answers_resent, 0);
    }

    #[test]
    fn unreadable_or_unroutable_offers_are_acked_and_ignored() {
        let mut s = state(Policy::Approve);
        let mut bad = offer(trade(1), NUMBER);
        bad.currency = "XXX".to_owned();
        check(&mut s, down(3, relay_down::Body::Offer(bad)), &["ack 3"]);
        let stranger = offer(trade(2), "+819099999999");
        check(&mut s, down(4, relay_down::Body::Offer(stranger)), &["ack 4"]);
        assert_eq!(s.counters.offers_ignored, 2);
        let reasons: Vec<_> = s
            .transcript()
            .into_iter()
            .filter_map(|e| match e {
                SimEvent::OfferIgnored { reason, .. } => Some(reason),
                _ => None,
            })
            .collect();
        assert_eq!(reasons.len(), 2);
        assert!(reasons[0].starts_with("currency:"), "{reasons:?}");
        assert_eq!(reasons[1], "no handset for this number");
        // Neither offer counts as shown, so neither blocks a later delivery.
        assert!(s.trade(&trade(1)).is_none());
    }

    #[test]
    fn the_offer_shown_carries_what_the_buyer_sees() {
        let mut s = state(Policy::Ignore);
        s.handle(offer_down(7, trade(1)));
        let Some(SimEvent::OfferShown {
            number: n,
            trade_id,
            shop_name,
            register_label,
            amount,
            currency,
            description,
            binding_code,
            ..
        }) = s.transcript().pop()
        else {
            panic!("no OfferShown in {:?}", s.transcript());
        };
        assert_eq!((n, trade_id), (number(), trade(1)));
        assert_eq!((shop_name.as_str(), register_label.as_str()), ("Acme Books", "Front desk"));
        assert_eq!(currency.format(amount), "1200 JPY");
        assert_eq!((description.as_str(), binding_code.as_str()), ("Two books", "042917"));
    }

    #[test]
    fn withdrawals_are_acked_recorded_once_and_block_a_late_offer() {
        let mut s = state(Policy::Approve);
        let withdraw = |id: TradeId| {
            relay_down::Body::Withdraw(proto::Withdraw {
                trade_id: id.to_string(),
                subscriber_number: NUMBER.to_owned(),
                state: proto::TradeState::Cancelled as i32,
            })
        };
        check(&mut s, down(5, withdraw(trade(1))), &["ack 5"]);
        check(&mut s, down(5, withdraw(trade(1))), &["ack 5"]);
        assert_eq!(s.counters.withdraws_received, 2);
        let withdrawn = s.transcript().iter().filter(|e| matches!(e, SimEvent::Withdrawn { .. })).count();
        assert_eq!(withdrawn, 1);
        assert_eq!(s.trade(&trade(1)).and_then(|t| t.withdrawn), Some(proto::TradeState::Cancelled));
        // The offer arrives after its withdrawal (reordered): not shown.
        check(&mut s, offer_down(4, trade(1)), &["ack 4"]);
        assert_eq!(s.counters.offers_ignored, 1);
    }

    #[test]
    fn answer_results_need_no_ack_and_are_kept_per_trade() {
        let mut s = state(Policy::AnswerTwice);
        s.handle(offer_down(7, trade(1)));
        let result = |accepted: bool, message: &str| {
            relay_down::Body::AnswerResult(proto::AnswerResult {
                trade_id: trade(1).to_string(),
                accepted,
                state: proto::TradeState::Settled as i32,
                failure_reason: 0,
                message: message.to_owned(),
            })
        };
        check(&mut s, down(0, result(true, "")), &[]);
        check(&mut s, down(0, result(false, "trade already SETTLED")), &[]);
        let results = &s.trade(&trade(1)).expect("known").results;
        assert_eq!(results.len(), 2);
        assert!(results[0].accepted && !results[1].accepted);
        assert_eq!(results[1].message, "trade already SETTLED");
        assert_eq!(results[1].state, proto::TradeState::Settled);
        assert_eq!(s.counters.answer_results_received, 2);
        // A result the server wants acked (a delivery id) is acked.
        check(&mut s, down(9, result(false, "")), &["ack 9"]);
        // A message with no body is acked so it is not redelivered forever.
        check(&mut s, proto::RelayDown { delivery_id: 10, body: None }, &["ack 10"]);
    }

    #[test]
    fn sent_answers_and_acks_are_counted_and_transcribed() {
        let mut s = state(Policy::BadSignature);
        let out = s.handle(offer_down(7, trade(1)));
        for o in &out {
            match o {
                Outbound::Ack(_) | Outbound::Resolve(_) => s.ack_sent(),
                Outbound::Answer(a) => s.answer_sent(a),
            }
        }
        assert_eq!((s.counters.acks_sent, s.counters.answers_sent), (1, 1));
        assert_eq!(
            s.transcript().pop(),
            Some(SimEvent::Answered {
                number: number(),
                trade_id: trade(1),
                decision: Decision::Approve,
                signature_valid: false,
            })
        );
    }

    #[test]
    fn set_policy_changes_the_next_plan() {
        let mut s = state(Policy::Approve);
        s.set_policy(&number(), Policy::Decline).expect("hosted");
        check(&mut s, offer_down(1, trade(1)), &["ack 1", "answer Decline valid +0ms"]);
        let stranger = SubscriberNumber::parse("+819099999999").expect("valid");
        assert_eq!(s.set_policy(&stranger, Policy::Approve), Err(SimError::UnknownHandset(stranger)));
    }

    #[test]
    fn every_collection_is_bounded() {
        let limits = Limits { transcript: 5, trades: 3, results_per_trade: 1, handsets: 1 };
        let mut s = state_with(Policy::Ignore, limits);
        for n in 1..=10 {
            s.handle(offer_down(u64::from(n), trade(n)));
        }
        assert_eq!(s.transcript().len(), 5);
        assert!(s.trade(&trade(1)).is_none(), "oldest trade evicted");
        assert!(s.trade(&trade(10)).is_some());
        assert_eq!(s.trades.len(), 3);
        assert_eq!(s.trade_order.len(), 3);

        let result = relay_down::Body::AnswerResult(proto::AnswerResult {
            trade_id: trade(10).to_string(),
            ..proto::AnswerResult::default()
        });
        s.handle(down(0, result.clone()));
        s.handle(down(0, result));
        assert_eq!(s.trade(&trade(10)).map(|t| t.results.len()), Some(1));

        let other = SubscriberNumber::parse("+819099999999").expect("valid");
        let handset = Handset::new(SigningKey::from_bytes(&[8u8; 32]), Policy::Approve);
        assert_eq!(s.add_handset(other, handset).err(), Some(SimError::TooManyHandsets { max: 1 }));
        // Re-adding a hosted number replaces its key and needs no room.
        let again = Handset::new(SigningKey::from_bytes(&[9u8; 32]), Policy::Approve);
        assert!(s.add_handset(number(), again).is_ok());
    }

    #[test]
    fn a_browser_phone_acks_when_its_page_shows_the_offer_and_relays_the_page_signature() {
        use ed25519_dalek::Signer;
        let mut s = SimState::new(LIMITS);
        let page_key = SigningKey::from_bytes(&[5u8; 32]);
        s.add_browser_phone(number()).expect("room");
        s.set_browser_key(&number(), page_key.verifying_key().to_bytes()).expect("hosted");
        // No ack yet: the page has not shown it.
        check(&mut s, offer_down(7, trade(1)), &[]);
        // A redelivery before the page showed it: still no ack, newest id kept.
        check(&mut s, offer_down(9, trade(1)), &[]);
        assert_eq!(s.browser_show(&number(), &trade(1)), Ok(Some(9)));
        assert_eq!(s.browser_show(&number(), &trade(1)), Ok(None));
        assert!(s.trade(&trade(1)).is_some_and(|t| t.shown));
        // Shown: a redelivery is acked at once and not shown again.
        check(&mut s, offer_down(11, trade(1)), &["ack 11"]);
        let shown = s.transcript().iter().filter(|e| matches!(e, SimEvent::OfferShown { .. })).count();
        assert_eq!(shown, 1);

        // The page signs the bytes it was given; the answer carries exactly that.
        let bytes = s
            .browser_phone(&number())
            .and_then(|p| p.offers.front().map(|o| o.offer.signing_bytes(Decision::Approve).to_vec()));
        let signature = page_key.sign(&bytes.expect("offer kept")).to_bytes().to_vec();
        let answer = s.browser_answer(&number(), &trade(1), Decision::Approve, signature.clone()).expect("answered");
        assert!(answer.signature_valid);
        let Some(relay_up::Body::Answer(sent)) = answer.message.body else { panic!("not an answer") };
        assert_eq!((sent.signature, sent.decision), (signature, proto::Decision::Approve as i32));
        assert!(matches!(
            s.browser_answer(&number(), &trade(1), Decision::Decline, vec![0; 64]),
            Err(SimError::Phone(PhoneRefusal::AlreadyAnswered))
        ));
        // A browser phone has no key here: no simulated handset for the number.
        assert!(s.handset(&number()).is_none());
    }

    #[test]
    fn a_browser_phone_replaces_a_simulated_handset_and_hears_withdrawals_and_verdicts() {
        let mut s = state(Policy::Approve);
        s.add_browser_phone(number()).expect("room");
        assert!(s.handset(&number()).is_none(), "the simulated key is gone");
        check(&mut s, offer_down(1, trade(1)), &[]);
        s.handle(down(
            2,
            relay_down::Body::Withdraw(proto::Withdraw {
                trade_id: trade(1).to_string(),
                subscriber_number: NUMBER.to_owned(),
                state: proto::TradeState::Cancelled as i32,
            }),
        ));
        let phone = s.browser_phone(&number()).expect("hosted");
        assert_eq!(phone.offers[0].withdrawn, Some(proto::TradeState::Cancelled));
        assert!(matches!(s.browser_show(&number(), &trade(1)), Err(SimError::Phone(PhoneRefusal::Withdrawn))));
        // A verdict reaches the phone's offer too.
        check(&mut s, offer_down(3, trade(2)), &[]);
        s.handle(down(
            0,
            relay_down::Body::AnswerResult(proto::AnswerResult {
                trade_id: trade(2).to_string(),
                accepted: true,
                state: proto::TradeState::Settled as i32,
                ..proto::AnswerResult::default()
            }),
        ));
        let phone = s.browser_phone(&number()).expect("hosted");
        assert_eq!(
            phone.offer(&trade(2)).and_then(|o| o.result.as_ref()).map(|r| r.state),
            Some(proto::TradeState::Settled)
        );
    }

    #[test]
    fn connection_events_track_the_connected_flag() {
        let mut s = state(Policy::Approve);
        assert!(!s.connected);
        assert_eq!(s.relay_connected(), 1);
        assert!(s.connected);
        s.relay_lost(1, "server ended the stream".to_owned());
        assert!(!s.connected);
        assert_eq!(s.relay_connected(), 2);
        assert_eq!(s.counters.connections, 2);
    }
}
