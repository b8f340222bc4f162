//! How a simulated handset reacts to an offer, and the plan of answers each
//! policy turns into. Pure: no clock, no I/O.

use std::time::Duration;

use crate::domain::Decision;

/// What a simulated buyer does when an offer reaches the handset. Every
/// policy acknowledges the delivery (the offer was shown); they differ in
/// what is answered, when, and how well.
///
/// New behaviours (delivery faults: drop, duplicate, delay, reorder) are
/// added as variants here and as fields of [`Plan`]; `plan` matches every
/// variant, so the compiler points at each place that must decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Approves at once with a valid signature.
    Approve,
    /// Declines at once with a valid signature.
    Decline,
    /// Shows the offer and never answers (the trade should expire).
    Ignore,
    /// Approves after the delay. The answer is sent even if the offer is
    /// withdrawn meanwhile, as when a buyer presses "approve" too late: use
    /// it to provoke late approvals of expired or cancelled trades.
    ApproveAfter(Duration),
    /// Approves with a corrupted signature (the trade should fail).
    BadSignature,
    /// Sends the same valid approval twice (it must settle once).
    AnswerTwice,
}

/// Whether the signature sent is the real one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    Valid,
    /// The valid signature with one bit flipped.
    Corrupted,
    /// A signature over the payload rebuilt from the offer's display texts
    /// trimmed of spaces (`Deviation::SignTrimmedText`), not the bytes the
    /// offer carries.
    TrimmedText,
}

/// One answer a handset will send for an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Delay after the offer was shown.
    pub after: Duration,
    pub decision: Decision,
    pub signing: Signing,
}

/// The answers a handset sends for one offer, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub answers: Vec<Step>,
}

/// No policy sends more answers than this for one offer.
pub const MAX_ANSWERS_PER_OFFER: usize = 2;

impl Policy {
    /// The plan for one offer under this policy.
    pub fn plan(self) -> Plan {
        let now = |decision, signing| Step { after: Duration::ZERO, decision, signing };
        let answers = match self {
            Policy::Approve => vec![now(Decision::Approve, Signing::Valid)],
            Policy::Decline => vec![now(Decision::Decline, Signing::Valid)],
            Policy::Ignore => Vec::new(),
            Policy::ApproveAfter(after) => vec![Step { after, decision: Decision::Approve, signing: Signing::Valid }],
            Policy::BadSignature => vec![now(Decision::Approve, Signing::Corrupted)],
            Policy::AnswerTwice => vec![now(Decision::Approve, Signing::Valid), now(Decision::Approve, Signing::Valid)],
        };
        debug_assert!(answers.len() <= MAX_ANSWERS_PER_OFFER);
        Plan { answers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_policy_has_its_plan() {
        let check = |policy: Policy, expect: &[(u64, Decision, Signing)]| {
            let got: Vec<_> = policy
                .plan()
                .answers
                .iter()
                .map(|s| (u64::try_from(s.after.as_millis()).unwrap_or(u64::MAX), s.decision, s.signing))
                .collect();
            assert_eq!(got, expect, "{policy:?}");
        };
        use Decision::{Approve, Decline};
        use Signing::{Corrupted, Valid};
        check(Policy::Approve, &[(0, Approve, Valid)]);
        check(Policy::Decline, &[(0, Decline, Valid)]);
        check(Policy::Ignore, &[]);
        check(Policy::ApproveAfter(Duration::from_millis(1500)), &[(1500, Approve, Valid)]);
        check(Policy::BadSignature, &[(0, Approve, Corrupted)]);
        check(Policy::AnswerTwice, &[(0, Approve, Valid), (0, Approve, Valid)]);
    }
}
