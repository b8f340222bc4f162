//! The steps of the conformance check, in order, each judged from what the
//! relay under test sent the sandbox, with bounded waits. A step names
//! the fault it sees in words a relay's author can act on. What the
//! sandbox cannot see (a screen) it judges through its consequences: an
//! answer where none may be, more answers than deliveries, different
//! answers for one trade.

use std::time::Duration;

use super::sandbox::{Event, Inner, Shared, Terms};
use super::{Step, StepResult, TestSubscribers, Waits};
use crate::domain::approval::verify_bytes;
use crate::domain::{
    Amount, ApprovalPayload, BindingCode, Currency, Decision, PayloadVersion, RegisterId, ScreenText, ShopId,
    SubscriberNumber, TradeId, TradeState, UnixMs,
};
use crate::proto;
use crate::sync_server::error::{self, ApiError};

/// How long every sandbox trade stays open: the server's default, far
/// longer than any step.
const TRADE_TTL: Duration = Duration::from_secs(120);

// What the offers show. The texts are the ones a relay that re-encodes
// display fields gets wrong: several-byte UTF-8 characters (so lengths in
// characters and in bytes differ), doubled and trailing spaces (so
// trimming changes them), the longest shop id and the largest amount.
const APPROVE_TERMS: Terms = Terms {
    shop_id: "conformance-sandbox",
    shop_name: "Café Zoë ☕ (sandbox)",
    register_label: "Caisse n°2 — 東京",
    amount_minor: 1_200,
    currency: "JPY",
    description: "Tea for two,  café au lait ",
};
const DECLINE_TERMS: Terms = Terms {
    shop_id: "conformance-sandbox",
    shop_name: "Café Zoë ☕ (sandbox)",
    register_label: "Web shop",
    amount_minor: 999,
    currency: "USD",
    description: " Declined on purpose",
};
const REDELIVERY_TERMS: Terms = Terms {
    shop_id: "conformance-sandbox-shop-0123456",
    shop_name: "Ünïcödé Ltd.",
    register_label: "Till",
    amount_minor: crate::sync_server::limits::MAX_AMOUNT_MINOR,
    currency: "JPY",
    description: "The largest amount, the longest shop id",
};
const WITHDRAWAL_TERMS: Terms = Terms {
    shop_id: "conformance-sandbox",
    shop_name: "Café Zoë ☕ (sandbox)",
    register_label: "Till",
    amount_minor: 5_250,
    currency: "KWD",
    description: "Cancelled by the shop",
};
const RECONNECT_TERMS: Terms = Terms {
    shop_id: "conformance-sandbox",
    shop_name: "Café Zoë ☕ (sandbox)",
    register_label: "Till",
    amount_minor: 1,
    currency: "JPY",
    description: "Replayed after a broken stream",
};

/// Runs every step in order; a step whose precondition failed (no relay,
/// no keys) is reported as not run.
pub(super) async fn run_steps(shared: &Shared, subscribers: &TestSubscribers, waits: &Waits) -> Vec<StepResult> {
    let mut out = Vec::new();
    let connect = connect(shared, subscribers, waits).await;
    let connected = connect.passed;
    out.push(connect);
    if !connected {
        for step in &Step::ALL[1..] {
            out.push(StepResult::fail(*step, "not run: the relay is not connected with both test subscribers' keys"));
        }
        return out;
    }
    let check = Check { shared, subscribers, waits };
    let (t1, d1) = shared.offer(&subscribers.approver, &APPROVE_TERMS, TRADE_TTL, true);
    out.push(check.ack(d1).await);
    out.push(check.answered(Step::Approve, t1, Decision::Approve, 0).await);
    out.push(check.decline().await);
    out.push(check.redelivery().await);
    out.push(check.withdrawal().await);
    out.push(check.offer_after_withdrawal().await);
    out.push(check.reconnect().await);
    out
}

/// The step results' texts name test subscribers by role and masked number.
fn who(role: &str, number: &SubscriberNumber) -> String {
    format!("the {role} ({})", number.masked())
}

async fn connect(shared: &Shared, subscribers: &TestSubscribers, waits: &Waits) -> StepResult {
    let key_of = |s: &Inner, number: &SubscriberNumber| subscribers.keys.get(number).copied().or_else(|| s.key(number));
    let ready = shared
        .wait_for(waits.connect, |s| {
            let stream = s.current_stream()?;
            key_of(s, &subscribers.approver)?;
            key_of(s, &subscribers.decliner)?;
            Some(stream)
        })
        .await;
    if let Some(stream) = ready {
        let source = |number: &SubscriberNumber| {
            if subscribers.keys.contains_key(number) {
                "from its key file"
            } else {
                "enrolled with EnrollHandset"
            }
        };
        return StepResult::pass(
            Step::Connect,
            format!(
                "relay stream {stream} open as carrier {}; {} key {}, {} key {}",
                shared.carrier_id(),
                who("approver's", &subscribers.approver),
                source(&subscribers.approver),
                who("decliner's", &subscribers.decliner),
                source(&subscribers.decliner),
            ),
        );
    }
    let mut missing = Vec::new();
    shared.read(|s| {
        if s.current_stream().is_none() {
            missing.push(format!("no relay stream open within {}", secs(waits.connect)));
        }
        for (role, number) in [("approver", &subscribers.approver), ("decliner", &subscribers.decliner)] {
            if key_of(s, number).is_none() {
                missing.push(format!(
                    "no handset key for {}: no EnrollHandset for its number and no key file",
                    who(role, number)
                ));
            }
        }
        let refused: Vec<&str> = s
            .events()
            .iter()
            .filter_map(|e| match e {
                Event::Refused { why } => Some(why.as_str()),
                _ => None,
            })
            .collect();
        if let Some(first) = refused.first() {
            missing.push(format!("{} call(s) refused for their credentials, e.g. \"{first}\"", refused.len()));
        }
    });
    StepResult::fail(Step::Connect, missing.join("; "))
}

struct Check<'a> {
    shared: &'a Shared,
    subscribers: &'a TestSubscribers,
    waits: &'a Waits,
}

/// What the log holds about one delivery or trade.
fn acks(s: &Inner, delivery: u64, since: usize) -> Vec<(usize, u64)> {
    s.events()
        .iter()
        .enumerate()
        .skip(since)
        .filter_map(|(i, e)| match e {
            Event::Ack { stream, delivery_id } if *delivery_id == delivery => Some((i, *stream)),
            _ => None,
        })
        .collect()
}

fn answers(s: &Inner, trade: &TradeId, since: usize) -> Vec<(usize, u64, proto::HandsetAnswer)> {
    let text = trade.to_string();
    s.events()
        .iter()
        .enumerate()
        .skip(since)
        .filter_map(|(i, e)| match e {
            Event::Answer { stream, answer, .. } if answer.trade_id == text => Some((i, *stream, answer.clone())),
            _ => None,
        })
        .collect()
}

fn copies_sent(s: &Inner, delivery: u64) -> usize {
    s.events().iter().filter(|e| matches!(e, Event::Sent { delivery_id, .. } if *delivery_id == delivery)).count()
}

/// Streams opened after the delivery was first sent: each may carry one
/// repeat of an answer whose verdict the relay never got.
fn reconnects_after_first_copy(s: &Inner, delivery: u64) -> usize {
    let events = s.events();
    let Some(first) =
        events.iter().position(|e| matches!(e, Event::Sent { delivery_id, .. } if *delivery_id == delivery))
    else {
        return 0;
    };
    events[first..].iter().filter(|e| matches!(e, Event::Opened { .. })).count()
}

fn opened_since(s: &Inner, since: usize) -> Vec<u64> {
    s.events()
        .iter()
        .skip(since)
        .filter_map(|e| match e {
            Event::Opened { stream } => Some(*stream),
            _ => None,
        })
        .collect()
}

/// Acks of delivery ids the sandbox never sent.
fn foreign_acks(s: &Inner, since: usize) -> Vec<u64> {
    s.events()
        .iter()
        .skip(since)
        .filter_map(|e| match e {
            Event::Ack { delivery_id, .. } if !s.issued(*delivery_id) => Some(*delivery_id),
            _ => None,
        })
        .collect()
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

fn wire_decision(d: Decision) -> i32 {
    match d {
        Decision::Approve => proto::Decision::Approve as i32,
        Decision::Decline => proto::Decision::Decline as i32,
    }
}

fn decision_name(value: i32) -> &'static str {
    proto::Decision::try_from(value).map_or("an unknown decision", |d| d.as_str_name())
}

impl Check<'_> {
    fn mark(&self) -> usize {
        self.shared.read(|s| s.events().len())
    }

    fn key(&self, number: &SubscriberNumber) -> Option<[u8; 32]> {
        self.subscribers.keys.get(number).copied().or_else(|| self.shared.read(|s| s.key(number)))
    }

    /// Waits for `count` acks of `delivery` logged after `since`.
    async fn wait_acks(&self, delivery: u64, since: usize, count: usize) -> usize {
        self.shared.wait_for(self.waits.ack, |s| (acks(s, delivery, since).len() >= count).then_some(())).await;
        self.shared.read(|s| acks(s, delivery, since).len())
    }

    fn ack_fault(&self, what: &str, delivery: u64, since: usize) -> String {
        let foreign = self.shared.read(|s| foreign_acks(s, since));
        match foreign.first() {
            Some(wrong) => format!(
                "acknowledged delivery {wrong}, which the sandbox never sent, instead of {what} {delivery}: an Ack \
                 carries the delivery_id of the message it acknowledges"
            ),
            None => format!("no acknowledgement of {what} {delivery} within {}", secs(self.waits.ack)),
        }
    }

    async fn ack(&self, delivery: u64) -> StepResult {
        if self.wait_acks(delivery, 0, 1).await >= 1 {
            return StepResult::pass(Step::Ack, format!("the offer (delivery {delivery}) was acknowledged"));
        }
        StepResult::fail(Step::Ack, self.ack_fault("the offer, delivery", delivery, 0))
    }

    /// The trade's first answer (after `since`) must be `decision` by the
    /// payer's key over the offer's bytes for it, and no more answers may
    /// follow than deliveries of its offer (plus reconnects) allow.
    async fn answered(&self, step: Step, trade: TradeId, decision: Decision, since: usize) -> StepResult {
        let (role, number) = match decision {
            Decision::Approve => ("approver", &self.subscribers.approver),
            Decision::Decline => ("decliner", &self.subscribers.decliner),
        };
        let first = self.shared.wait_for(self.waits.answer, |s| answers(s, &trade, since).into_iter().next()).await;
        let Some((_, _, answer)) = first else {
            return StepResult::fail(
                step,
                format!(
                    "no answer for trade {trade} within {}: {}'s handset must {}",
                    secs(self.waits.answer),
                    who(role, number),
                    if decision == Decision::Approve { "approve" } else { "decline" }
                ),
            );
        };
        if let Err(fault) = self.judge_answer(&trade, &answer, decision, role, number) {
            return StepResult::fail(step, fault);
        }
        if let Err(fault) = self.no_extra_answers(&trade, since).await {
            return StepResult::fail(step, fault);
        }
        let bytes = self.shared.read(|s| s.trade(&trade).map(|t| signed_bytes(&t.offer, decision).len()));
        StepResult::pass(
            step,
            format!(
                "{} with a valid Ed25519 signature over the offer's {} ({} bytes) by {}'s key; answered once",
                if decision == Decision::Approve { "approved" } else { "declined" },
                payload_name(decision),
                bytes.unwrap_or(0),
                who(role, number),
            ),
        )
    }

    fn judge_answer(
        &self,
        trade: &TradeId,
        answer: &proto::HandsetAnswer,
        decision: Decision,
        role: &str,
        number: &SubscriberNumber,
    ) -> Result<(), String> {
        let verdict = self.shared.read(|s| {
            s.events().iter().find_map(|e| match e {
                Event::Answer { answer: a, verdict, .. } if a == answer => Some(verdict.clone()),
                _ => None,
            })
        });
        if let Some(v) = verdict.as_ref().filter(|v| v.message.starts_with("answer.")) {
            return Err(format!("sent a malformed answer, refused by the server as \"{}\"", v.message));
        }
        if answer.decision != wire_decision(decision) {
            return Err(format!(
                "{} answered {}; it must {}",
                who(role, number),
                decision_name(answer.decision),
                if decision == Decision::Approve { "approve" } else { "decline" }
            ));
        }
        let Some(offer) = self.shared.read(|s| s.trade(trade).map(|t| t.offer.clone())) else {
            return Err(format!("the sandbox lost trade {trade}"));
        };
        let Some(key) = self.key(number) else {
            return Err(format!("no key for {}", who(role, number)));
        };
        let other = match decision {
            Decision::Approve => self.key(&self.subscribers.decliner),
            Decision::Decline => self.key(&self.subscribers.approver),
        };
        diagnose(&offer, decision, &answer.signature, &key, other.as_ref())
    }

    /// Watches the quiet period for answers the contract rules out: more
    /// than one per delivery of the offer (and per reconnect, for a relay
    /// that repeats unanswered verdicts), or answers that differ.
    async fn no_extra_answers(&self, trade: &TradeId, since: usize) -> Result<(), String> {
        let Some(delivery) = self.shared.read(|s| s.trade(trade).map(|t| t.offer_delivery)) else {
            return Err(format!("the sandbox lost trade {trade}"));
        };
        let fault = |s: &Inner| -> Option<String> {
            let all = answers(s, trade, since);
            let first = all.first()?;
            if let Some((_, _, other)) = all.iter().find(|(_, _, a)| a != &first.2) {
                return Some(format!(
                    "sent different answers for trade {trade} ({} then {}, or another signature): repeat an answer \
                     byte for byte, and never show a trade twice",
                    decision_name(first.2.decision),
                    decision_name(other.decision)
                ));
            }
            let copies = copies_sent(s, delivery);
            let allowed = copies + reconnects_after_first_copy(s, delivery);
            (all.len() > allowed).then(|| {
                format!(
                    "answered trade {trade} {} times for {copies} deliver{} of its offer: send one answer per \
                     decision, and repeat it only when the offer comes again",
                    all.len(),
                    if copies == 1 { "y" } else { "ies" }
                )
            })
        };
        match self.shared.wait_for(self.waits.quiet, fault).await {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    async fn decline(&self) -> StepResult {
        let since = self.mark();
        let (trade, _) = self.shared.offer(&self.subscribers.decliner, &DECLINE_TERMS, TRADE_TTL, true);
        self.answered(Step::Decline, trade, Decision::Decline, since).await
    }

    /// The same offer twice, back to back, as when a stream opens while it
    /// is committed (sent live and by the replay).
    async fn redelivery(&self) -> StepResult {
        let since = self.mark();
        let (trade, delivery) = self.shared.offer(&self.subscribers.approver, &REDELIVERY_TERMS, TRADE_TTL, true);
        self.shared.send_offer_again(&trade);
        let acked = self.wait_acks(delivery, since, 2).await;
        if acked == 0 {
            return StepResult::fail(Step::Redelivery, self.ack_fault("the offer, delivery", delivery, since));
        }
        if acked < 2 {
            return StepResult::fail(
                Step::Redelivery,
                format!(
                    "acknowledged delivery {delivery} once though it arrived twice: acknowledge every copy (the \
                     first acknowledgement may have been lost)"
                ),
            );
        }
        let answered = self.answered(Step::Redelivery, trade, Decision::Approve, since).await;
        if !answered.passed {
            return answered;
        }
        StepResult::pass(
            Step::Redelivery,
            format!("both copies of delivery {delivery} acknowledged; the trade was approved, each answer the same"),
        )
    }

    /// An offer and, right behind it, its withdrawal: both acknowledged,
    /// and no answer after the withdrawal's acknowledgement.
    async fn withdrawal(&self) -> StepResult {
        let since = self.mark();
        let (trade, offer) = self.shared.offer(&self.subscribers.approver, &WITHDRAWAL_TERMS, TRADE_TTL, true);
        let Some(withdrawal) = self.shared.withdraw(&trade, TradeState::Cancelled) else {
            return StepResult::fail(Step::Withdrawal, "the sandbox lost the trade");
        };
        if self.wait_acks(withdrawal, since, 1).await == 0 {
            return StepResult::fail(Step::Withdrawal, self.ack_fault("the withdrawal, delivery", withdrawal, since));
        }
        if self.wait_acks(offer, since, 1).await == 0 {
            return StepResult::fail(Step::Withdrawal, self.ack_fault("the offer, delivery", offer, since));
        }
        let late = |s: &Inner| {
            let (acked_at, _) = *acks(s, withdrawal, since).first()?;
            answers(s, &trade, since).into_iter().find(|(i, _, _)| *i > acked_at)
        };
        if self.shared.wait_for(self.waits.quiet, late).await.is_some() {
            return StepResult::fail(
                Step::Withdrawal,
                format!(
                    "answered trade {trade} after acknowledging its withdrawal (CANCELLED): take a withdrawn offer \
                     off the screen and send no answer for it"
                ),
            );
        }
        let crossed = self.shared.read(|s| !answers(s, &trade, since).is_empty());
        StepResult::pass(
            Step::Withdrawal,
            if crossed {
                "the withdrawal was acknowledged; the answer that crossed it got accepted=false, CANCELLED, as from \
                 the server, and nothing was answered after it"
                    .to_owned()
            } else {
                "the withdrawal was acknowledged and the trade never answered".to_owned()
            },
        )
    }

    /// A withdrawal, then a stale copy of its offer (the replay of a new
    /// stream can still carry one): both acknowledged, nothing shown.
    async fn offer_after_withdrawal(&self) -> StepResult {
        let step = Step::OfferAfterWithdrawal;
        let since = self.mark();
        let (trade, offer) = self.shared.offer(&self.subscribers.approver, &WITHDRAWAL_TERMS, TRADE_TTL, false);
        let Some(withdrawal) = self.shared.withdraw(&trade, TradeState::Cancelled) else {
            return StepResult::fail(step, "the sandbox lost the trade");
        };
        self.shared.send_offer_again(&trade);
        if self.wait_acks(withdrawal, since, 1).await == 0 {
            return StepResult::fail(step, self.ack_fault("the withdrawal, delivery", withdrawal, since));
        }
        if self.wait_acks(offer, since, 1).await == 0 {
            return StepResult::fail(step, self.ack_fault("the late offer, delivery", offer, since));
        }
        let answered = |s: &Inner| answers(s, &trade, since).into_iter().next();
        if self.shared.wait_for(self.waits.quiet, answered).await.is_some() {
            return StepResult::fail(
                step,
                format!(
                    "answered trade {trade}, whose withdrawal (CANCELLED) came before its offer: remember withdrawn \
                     trades, and acknowledge without showing an offer that arrives after its withdrawal"
                ),
            );
        }
        StepResult::pass(step, "the withdrawal and the late offer were acknowledged; the offer was not answered")
    }

    /// The sandbox sends an offer and breaks the stream at once, losing
    /// whatever the relay sends on it; the relay must reconnect, and the
    /// replayed offer must be acknowledged and answered on the new stream.
    async fn reconnect(&self) -> StepResult {
        let step = Step::Reconnect;
        let Some(old) = self.shared.deafen_current() else {
            return StepResult::fail(step, "no relay stream was open to break (the relay disconnected earlier)");
        };
        let since = self.mark();
        let (trade, delivery) = self.shared.offer(&self.subscribers.approver, &RECONNECT_TERMS, TRADE_TTL, true);
        self.shared.end_current(error::status(ApiError::Unavailable(
            "conformance sandbox: the stream is broken on purpose; reconnect".into(),
        )));
        let broke = tokio::time::Instant::now();
        let new = self
            .shared
            .wait_for(self.waits.reconnect, |s| opened_since(s, since).into_iter().find(|id| *id > old))
            .await;
        let Some(new) = new else {
            return StepResult::fail(
                step,
                format!(
                    "did not reconnect within {} after the stream ended UNAVAILABLE: when the stream ends, open a \
                     new one with backoff",
                    secs(self.waits.reconnect)
                ),
            );
        };
        let after = broke.elapsed();
        let on_new = |s: &Inner| acks(s, delivery, since).iter().any(|(_, stream)| *stream >= new).then_some(());
        if self.shared.wait_for(self.waits.ack, on_new).await.is_none() {
            return StepResult::fail(
                step,
                format!(
                    "reconnected, but did not acknowledge the replayed offer (delivery {delivery}) within {}: what \
                     was sent on a broken stream comes again and must be acknowledged again",
                    secs(self.waits.ack)
                ),
            );
        }
        let answered = self.answered(step, trade, Decision::Approve, since).await;
        if !answered.passed {
            let lost = answered.detail.starts_with("no answer");
            return StepResult::fail(
                step,
                if lost {
                    format!(
                        "reconnected and acknowledged the replayed offer, but sent no answer within {}: the answer \
                         sent on the broken stream was lost; answer a replayed offer the handset already answered \
                         again, with the same answer",
                        secs(self.waits.answer)
                    )
                } else {
                    answered.detail
                },
            );
        }
        StepResult::pass(
            step,
            format!(
                "reconnected {} ms after the break; the replayed offer was acknowledged and approved on the new \
                 stream",
                after.as_millis()
            ),
        )
    }
}

fn payload_name(decision: Decision) -> &'static str {
    match decision {
        Decision::Approve => "approve_payload",
        Decision::Decline => "decline_payload",
    }
}

fn signed_bytes(offer: &proto::Offer, decision: Decision) -> &[u8] {
    match decision {
        Decision::Approve => &offer.approve_payload,
        Decision::Decline => &offer.decline_payload,
    }
}

/// Why a signature is not the one expected, named by the mistake that
/// explains it when one does: the other decision's bytes, the retired
/// version 1 layout, display texts trimmed or measured in characters, the
/// other test subscriber's key.
fn diagnose(
    offer: &proto::Offer,
    decision: Decision,
    signature: &[u8],
    key: &[u8; 32],
    other_key: Option<&[u8; 32]>,
) -> Result<(), String> {
    let expected = signed_bytes(offer, decision);
    if verify_bytes(key, expected, signature) {
        return Ok(());
    }
    let other_decision = match decision {
        Decision::Approve => Decision::Decline,
        Decision::Decline => Decision::Approve,
    };
    let mut candidates: Vec<(String, Vec<u8>)> = vec![(
        format!("the offer's {} (the other decision's bytes)", payload_name(other_decision)),
        signed_bytes(offer, other_decision).to_vec(),
    )];
    if let Some(bytes) = rebuilt(offer, decision, Rebuild::Version1) {
        candidates.push(("the retired version 1 layout".into(), bytes));
    }
    if let Some(bytes) = rebuilt(offer, decision, Rebuild::Trimmed) {
        candidates.push(("a payload rebuilt from the display texts trimmed of spaces".into(), bytes));
    }
    if let Some(bytes) = rebuilt(offer, decision, Rebuild::CharLengths) {
        candidates.push(("a payload whose screen digest counts characters instead of UTF-8 bytes".into(), bytes));
    }
    for (what, bytes) in &candidates {
        if verify_bytes(key, bytes, signature) {
            return Err(format!(
                "signed bytes other than the offer's {}: the signature verifies over {what}; sign the exact bytes the \
                 offer carries (the server would fail this trade BAD_SIGNATURE)",
                payload_name(decision)
            ));
        }
    }
    if let Some(other) = other_key {
        if verify_bytes(other, expected, signature) {
            return Err("signed with the other test subscriber's key, not the payer's enrolled key".into());
        }
    }
    Err(format!(
        "the signature ({} bytes) does not verify over the offer's {} ({} bytes) with the payer's enrolled key \
         (the server would fail this trade BAD_SIGNATURE)",
        signature.len(),
        payload_name(decision),
        expected.len()
    ))
}

enum Rebuild {
    Version1,
    Trimmed,
    CharLengths,
}

/// The payload a relay would sign after a known mistake.
fn rebuilt(offer: &proto::Offer, decision: Decision, how: Rebuild) -> Option<Vec<u8>> {
    let binding = BindingCode::parse(&offer.binding_code)?;
    let version = match how {
        Rebuild::Version1 => PayloadVersion::V1,
        Rebuild::Trimmed => PayloadVersion::V2 {
            binding_code: binding,
            screen_digest: ScreenText {
                shop_name: offer.shop_name.trim(),
                register_label: offer.register_label.trim(),
                description: offer.description.trim(),
            }
            .digest(),
        },
        Rebuild::CharLengths => {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(b"syncpay/screen");
            for part in [&offer.shop_name, &offer.register_label, &offer.description] {
                let chars = u32::try_from(part.chars().count()).unwrap_or(u32::MAX);
                h.update(chars.to_be_bytes());
                h.update(part.as_bytes());
            }
            PayloadVersion::V2 { binding_code: binding, screen_digest: h.finalize().into() }
        }
    };
    Some(
        ApprovalPayload {
            trade_id: TradeId::parse(&offer.trade_id).ok()?,
            amount: Amount::new(offer.amount_minor),
            currency: Currency::parse(&offer.currency).ok()?,
            shop_id: ShopId::parse(&offer.shop_id).ok()?,
            register_id: RegisterId::parse(&offer.register_id).ok()?,
            expires_at: UnixMs(u64::try_from(offer.expires_at_ms).ok()?),
            version,
            decision,
        }
        .to_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;
    use crate::domain::ServerSecret;

    fn offer() -> proto::Offer {
        super::super::sandbox::build_offer(
            TradeId::from_bytes([3; 16]),
            RegisterId::from_bytes([4; 16]),
            &SubscriberNumber::parse("+818012345678").expect("number"),
            &APPROVE_TERMS,
            UnixMs(1_700_000_000_000),
            &ServerSecret::from_bytes([5; 32]),
        )
    }

    /// Every mistake the diagnosis knows is named, and the right bytes pass.
    #[test]
    fn a_signature_over_the_wrong_bytes_is_named_by_its_mistake() {
        let (key, other) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
        let public = key.verifying_key().to_bytes();
        let other_public = other.verifying_key().to_bytes();
        let o = offer();
        let check = |signed: &[u8], by: &SigningKey| {
            diagnose(&o, Decision::Approve, &by.sign(signed).to_bytes(), &public, Some(&other_public))
        };
        assert_eq!(check(&o.approve_payload, &key), Ok(()));
        let named = |r: Result<(), String>, words: &str| {
            let e = r.expect_err("must fail");
            assert!(e.contains(words), "{e}");
        };
        named(check(&o.decline_payload, &key), "decline_payload (the other decision");
        for (how, words) in [
            (Rebuild::Version1, "version 1 layout"),
            (Rebuild::Trimmed, "trimmed"),
            (Rebuild::CharLengths, "counts characters"),
        ] {
            let bytes = rebuilt(&o, Decision::Approve, how).expect("rebuilt");
            assert_ne!(bytes, o.approve_payload, "{words}: the sandbox's texts must make this mistake show");
            named(check(&bytes, &key), words);
        }
        named(check(&o.approve_payload, &other), "other test subscriber's key");
        named(check(b"something else", &key), "does not verify over the offer's approve_payload");
    }
}
