//! The carrier conformance check (`syncpay carrier-conformance`): a
//! sandbox that plays syncpay's `CarrierService` for a carrier's relay
//! under test, and a script of steps that judge, one by one, what the
//! relay did with what the sandbox sent it (docs/CARRIER.md, *Checking
//! your relay*). Modelled on the Mojaloop Testing Toolkit: the operator or
//! the carrier points the relay at the sandbox, names two test
//! subscribers (an approver and a decliner, whose handsets answer so on
//! their own) and reads a PASS/FAIL line per step.
//!
//! Why a sandbox and not a real server in process: every step must be
//! deterministic, and the faults worth checking (a duplicate on one
//! stream, an offer overtaken by its withdrawal, an answer lost with a
//! broken stream) happen at a real server only by the chance of timing.
//! The sandbox makes each happen on cue, sees every message the relay
//! sends (a server would hide a lost one), and needs no shops, wallets or
//! store. It still speaks the real contract: offers are built by the
//! domain's payload code exactly as the server builds them (a unit test
//! compares them), requests are validated by `sync_server::requests`,
//! verdicts are the server's.
//!
//! - `sandbox.rs`: the scripted `CarrierService` and what it logs.
//! - `steps.rs`: the steps, each with bounded waits, and the diagnosis of
//!   a signature over the wrong bytes.

mod sandbox;
mod steps;

use std::collections::HashMap;
use std::time::Duration;

pub use sandbox::{Event, Sandbox, SandboxAuth, SandboxConfig, SandboxError, Terms};

use crate::domain::SubscriberNumber;

/// How long the relay under test has to connect and enroll (or be given)
/// both test subscribers' keys after the sandbox starts: time for a
/// person to start it.
pub const CONNECT_WAIT: Duration = Duration::from_secs(60);
/// How long an acknowledgement may take: a relay acks as it reads.
pub const ACK_WAIT: Duration = Duration::from_secs(5);
/// How long a test handset's automatic answer may take.
pub const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// How long the check watches for what must not come (a second answer,
/// an answer after a withdrawal) once the step's work is done.
pub const QUIET_WAIT: Duration = Duration::from_secs(2);
/// How long a relay has to reconnect after the sandbox breaks its
/// stream: above any sensible longest backoff (docs/CARRIER.md suggests
/// 5 s).
pub const RECONNECT_WAIT: Duration = Duration::from_secs(30);

/// Every bounded wait of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    pub connect: Duration,
    pub ack: Duration,
    pub answer: Duration,
    pub quiet: Duration,
    pub reconnect: Duration,
}

impl Default for Waits {
    fn default() -> Self {
        Waits {
            connect: CONNECT_WAIT,
            ack: ACK_WAIT,
            answer: ANSWER_WAIT,
            quiet: QUIET_WAIT,
            reconnect: RECONNECT_WAIT,
        }
    }
}

/// The relay's test subscribers: one whose handset approves every offer,
/// one whose handset declines every offer. Their keys come from the
/// relay's own `EnrollHandset` calls to the sandbox unless given here.
#[derive(Debug, Clone)]
pub struct TestSubscribers {
    pub approver: SubscriberNumber,
    pub decliner: SubscriberNumber,
    /// Public keys known beforehand (from key files), by number.
    pub keys: HashMap<SubscriberNumber, [u8; 32]>,
}

/// The steps, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// The relay opens its stream and both handsets' keys are known.
    Connect,
    /// An offer is acknowledged with its delivery id.
    Ack,
    /// The approver's handset approves: a valid signature over the exact
    /// bytes the offer carries, sent once.
    Approve,
    /// The decliner's handset declines, signed likewise.
    Decline,
    /// An offer delivered twice is acknowledged twice and answered alike.
    Redelivery,
    /// A withdrawal right behind its offer is acknowledged and nothing is
    /// answered after it.
    Withdrawal,
    /// An offer that arrives after its own withdrawal is acknowledged and
    /// not answered.
    OfferAfterWithdrawal,
    /// After a broken stream the relay reconnects, and the replayed offer
    /// is acknowledged and answered again.
    Reconnect,
}

impl Step {
    pub const ALL: [Step; 8] = [
        Step::Connect,
        Step::Ack,
        Step::Approve,
        Step::Decline,
        Step::Redelivery,
        Step::Withdrawal,
        Step::OfferAfterWithdrawal,
        Step::Reconnect,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Ack => "ack",
            Step::Approve => "approve",
            Step::Decline => "decline",
            Step::Redelivery => "redelivery",
            Step::Withdrawal => "withdrawal",
            Step::OfferAfterWithdrawal => "offer-after-withdrawal",
            Step::Reconnect => "reconnect",
        }
    }
}

/// One step's verdict and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    pub step: Step,
    pub passed: bool,
    /// What the relay did, or the fault, in words its author can act on.
    pub detail: String,
}

impl StepResult {
    fn pass(step: Step, detail: impl Into<String>) -> Self {
        StepResult { step, passed: true, detail: detail.into() }
    }

    fn fail(step: Step, detail: impl Into<String>) -> Self {
        StepResult { step, passed: false, detail: detail.into() }
    }
}

/// The check's outcome: every step, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub carrier: String,
    pub steps: Vec<StepResult>,
    /// Messages from the relay the sandbox did not keep (it keeps at most
    /// 100 000): a relay that floods the sandbox.
    pub dropped_events: u64,
}

impl Report {
    /// True only when every step passed.
    pub fn passed(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.passed)
    }

    pub fn step(&self, step: Step) -> Option<&StepResult> {
        self.steps.iter().find(|s| s.step == step)
    }

    /// The steps that failed, by name.
    pub fn failed(&self) -> Vec<&'static str> {
        self.steps.iter().filter(|s| !s.passed).map(|s| s.step.name()).collect()
    }

    /// One line per step: `PASS ack: …` / `FAIL ack: …`.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .steps
            .iter()
            .map(|s| format!("{} {}: {}", if s.passed { "PASS" } else { "FAIL" }, s.step.name(), s.detail))
            .collect();
        if self.dropped_events > 0 {
            lines.push(format!("note: the relay sent so much that {} messages were not kept", self.dropped_events));
        }
        lines
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "carrier": self.carrier,
            "passed": self.passed(),
            "dropped_events": self.dropped_events,
            "steps": self.steps.iter().map(|s| serde_json::json!({
                "step": s.step.name(),
                "passed": s.passed,
                "detail": s.detail,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Runs every step against the relay connected (or about to connect) to
/// `sandbox`. Takes at most the sum of the waits per step.
pub async fn run(sandbox: &Sandbox, subscribers: &TestSubscribers, waits: &Waits) -> Report {
    let steps = steps::run_steps(sandbox.shared(), subscribers, waits).await;
    let dropped_events = sandbox.shared().read(|s| s.dropped_events());
    Report { carrier: sandbox.carrier().to_string(), steps, dropped_events }
}
