//! The stream of one register's trade events, checked as it is read: every
//! event belongs to this register and sequence numbers only go up.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_core::Stream;
use tonic::codec::Streaming;

use super::RegisterError;
use crate::proto;

/// Trade events of one register, in the shop's sequence order. The
/// sequence numbers are the shop's, so a register's stream skips numbers
/// that belong to the shop's other registers; it never goes backwards.
///
/// After the first error the stream ends. Resume with
/// [`VirtualRegister::watch`](super::VirtualRegister::watch) from
/// [`TradeEvents::last_sequence`].
pub struct TradeEvents {
    inner: Streaming<proto::TradeEvent>,
    register_id: String,
    last_sequence: u64,
    done: bool,
}

impl TradeEvents {
    pub(super) fn new(inner: Streaming<proto::TradeEvent>, register_id: String, after_sequence: u64) -> Self {
        TradeEvents { inner, register_id, last_sequence: after_sequence, done: false }
    }

    /// The sequence number of the last event handed out (or the starting
    /// point): pass it to `watch` to resume without gaps or repeats.
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }
}

/// Checks one event against what was seen before; `Err` names the breach.
fn check_event(event: &proto::TradeEvent, register_id: &str, last_sequence: u64) -> Result<(), String> {
    if event.sequence <= last_sequence {
        return Err(format!("event sequence {} is not after {}", event.sequence, last_sequence));
    }
    match &event.trade {
        None => Err(format!("event {} has no trade", event.sequence)),
        Some(trade) if trade.register_id != register_id => {
            Err(format!("event {} is for register {}, not {}", event.sequence, trade.register_id, register_id))
        }
        Some(_) => Ok(()),
    }
}

impl Stream for TradeEvents {
    type Item = Result<proto::TradeEvent, RegisterError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let item = ready!(Pin::new(&mut this.inner).poll_next(cx));
        let out = match item {
            None => {
                this.done = true;
                return Poll::Ready(None);
            }
            Some(Err(status)) => Err(RegisterError::from(status)),
            Some(Ok(event)) => match check_event(&event, &this.register_id, this.last_sequence) {
                Ok(()) => {
                    this.last_sequence = event.sequence;
                    Ok(event)
                }
                Err(breach) => Err(RegisterError::Protocol(breach)),
            },
        };
        if out.is_err() {
            this.done = true;
        }
        Poll::Ready(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sequence: u64, register_id: Option<&str>) -> proto::TradeEvent {
        proto::TradeEvent {
            sequence,
            at_ms: 1,
            trade: register_id.map(|r| proto::Trade { register_id: r.to_owned(), ..proto::Trade::default() }),
            ..proto::TradeEvent::default()
        }
    }

    #[test]
    fn events_must_be_ours_and_move_forward() {
        let check = |e: proto::TradeEvent, last: u64, ok: bool| {
            assert_eq!(check_event(&e, "reg_a", last).is_ok(), ok, "{e:?} after {last}");
        };
        check(event(1, Some("reg_a")), 0, true);
        // Gaps are normal: other registers' events are filtered out.
        check(event(9, Some("reg_a")), 3, true);
        check(event(3, Some("reg_a")), 3, false);
        check(event(2, Some("reg_a")), 3, false);
        check(event(4, Some("reg_b")), 3, false);
        check(event(4, None), 3, false);
    }
}
