//! CreateTrade in the sled backend: one path for every payer. A network
//! identity is resolved for the shop on the writer thread just before the
//! transaction (a lease lookup is a range scan); a number is itself. In the
//! transaction an idempotent retry is compared with the request as the
//! shop sent it (never with whom it resolved to), then the trade is
//! created: PENDING with its offer in the outbox, or FAILED at once when
//! nothing could ever answer it. For a carrier in ask mode the engine has
//! already asked the carrier, and its answer stands in for the lookup.

use crate::domain::{FailureReason, TradeState};
use crate::store::records::{
    DeliveryBody, EventKind, Funding, HandsetRecord, OfferBody, PayerRef, RegisterRecord, ShopRecord, SubscriberRecord,
    TradeRecord,
};
use crate::store::{CreateTradeRefusal, Created, Delivery, NewTrade};

use super::codec::IdempotencyRecord;
use super::events::{emit, enqueue};
use super::keys;
use super::network::{accepted, resolve};
use super::tx::{corrupt, refuse, Step, Tx, T};
use super::writer::{Admissions, Cx, WriteOp};
use super::Shared;
use crate::store::Resolution;

pub(crate) struct CreateTrade {
    trade: NewTrade,
    /// For a network identity: what it resolved to, before the transaction.
    resolved: Option<Resolution>,
}

impl CreateTrade {
    pub(crate) fn new(trade: NewTrade) -> CreateTrade {
        CreateTrade { trade, resolved: None }
    }
}

impl WriteOp for CreateTrade {
    type Output = Created;
    type Refusal = CreateTradeRefusal;

    fn prepare(&mut self, shared: &Shared) -> Step<(), CreateTradeRefusal> {
        if let PayerRef::Network(identity) = &self.trade.request.payer {
            self.resolved = Some(match &self.trade.asked {
                // Ask mode: the engine asked the carrier; no lease here.
                Some(asked) => asked.clone(),
                None => resolve(shared, &self.trade.shop, identity)?,
            });
        }
        Ok(())
    }

    /// A number needs no lookup outside the transaction; a network
    /// identity's lookup must see every earlier write, so it goes alone.
    fn groupable(&self) -> bool {
        matches!(self.trade.request.payer, PayerRef::Number(_))
    }

    fn apply(&self, tx: &Tx, cx: &mut Cx, admissions: &Admissions) -> Step<Created, CreateTradeRefusal> {
        let t = &self.trade;
        let idem_key = t.idempotency_key.as_ref().map(|k| keys::idempotency(&t.shop, k));
        if let Some(key) = &idem_key {
            if let Some(prior) = tx.get::<IdempotencyRecord>(T::Idempotency, key)? {
                let (prior_trade, sent) = match prior {
                    IdempotencyRecord::Trade { trade, request } => (trade, request.map_payer(PayerRef::Number)),
                    IdempotencyRecord::NetworkTrade { trade, request } => (trade, request.map_payer(PayerRef::Network)),
                    IdempotencyRecord::Refund { .. }
                    | IdempotencyRecord::RefundV1 { .. }
                    | IdempotencyRecord::Payout { .. }
                    | IdempotencyRecord::Remittance { .. } => return corrupt("trade idempotency key holds a refund"),
                };
                if let Some(difference) = sent.first_difference(&t.request) {
                    return refuse(CreateTradeRefusal::Differs(difference));
                }
                let Some(trade) = tx.get::<TradeRecord>(T::Trades, prior_trade.as_bytes())? else {
                    return corrupt("an idempotency key names a missing trade");
                };
                return Ok(Created { trade, replayed: true, deliveries: Vec::new() });
            }
        }
        // A suspended shop takes no new trades (a retry above still returns
        // the trade it made before); its open trades finish as usual.
        if tx.tree(T::Meta)?.get(keys::suspended(&t.shop))?.is_some() {
            return refuse(CreateTradeRefusal::ShopSuspended);
        }
        let payer = match (&t.request.payer, &self.resolved) {
            (PayerRef::Number(number), _) => number.clone(),
            (PayerRef::Network(_), Some(Resolution::Found { carrier, subscriber })) => {
                // A subscriber who could never be offered the trade (not the
                // carrier's, no handset) is a miss like any other: a trade
                // FAILED with its reason would tell the shop that somebody
                // held the address.
                let key = subscriber.as_str().as_bytes();
                let enrolled = tx.get::<SubscriberRecord>(T::Subscribers, key)?.is_some_and(|s| &s.carrier == carrier);
                if !enrolled || tx.get::<HandsetRecord>(T::Handsets, key)?.is_none() {
                    return refuse(CreateTradeRefusal::NoOneToOffer);
                }
                subscriber.clone()
            }
            (PayerRef::Network(_), Some(Resolution::NotAccepted)) => return refuse(CreateTradeRefusal::NotAccepted),
            (PayerRef::Network(_), Some(Resolution::Miss)) => return refuse(CreateTradeRefusal::NoOneToOffer),
            (PayerRef::Network(_), Some(Resolution::Unavailable)) => {
                return refuse(CreateTradeRefusal::CarrierUnavailable)
            }
            (PayerRef::Network(_), None) => return corrupt("a network trade without a resolution"),
        };
        let mut deliveries = Vec::new();
        let trade = open_trade(tx, t, payer, cx, admissions, &mut deliveries)?;
        if let Some(key) = &idem_key {
            // The request as the shop sent it (never the resolved
            // subscriber, so a retry's conflict cannot reveal who it was).
            let record = match &t.request.payer {
                PayerRef::Number(number) => {
                    IdempotencyRecord::Trade { trade: trade.id, request: t.request.with_payer(number.clone()) }
                }
                PayerRef::Network(identity) => {
                    IdempotencyRecord::NetworkTrade { trade: trade.id, request: t.request.with_payer(*identity) }
                }
            };
            tx.put(T::Idempotency, key, &record)?;
        }
        Ok(Created { trade, replayed: false, deliveries })
    }
}

/// Checks the register and payer and writes a new trade: PENDING with its
/// offer queued (if the offer gate admits it), or FAILED at once when
/// nothing could ever answer it.
fn open_trade(
    tx: &Tx,
    t: &NewTrade,
    payer: crate::domain::SubscriberNumber,
    cx: &mut Cx,
    admissions: &Admissions,
    deliveries: &mut Vec<Delivery>,
) -> Step<TradeRecord, CreateTradeRefusal> {
    let Some(shop) = tx.get::<ShopRecord>(T::Shops, t.shop.as_str().as_bytes())? else {
        return refuse(CreateTradeRefusal::UnknownShop);
    };
    let request = t.request.with_payer(payer);
    let register_key = keys::register(&t.shop, &request.register);
    let Some(mut register) = tx.get::<RegisterRecord>(T::Registers, &register_key)? else {
        return refuse(CreateTradeRefusal::UnknownRegister);
    };
    if !register.open {
        return refuse(CreateTradeRefusal::RegisterClosed);
    }
    if register.open_trades >= t.max_open_per_register {
        return refuse(CreateTradeRefusal::RegisterFull { max: t.max_open_per_register });
    }
    if tx.get::<TradeRecord>(T::Trades, t.trade_id.as_bytes())?.is_some() {
        return corrupt("trade id collision");
    }
    let Some(expires_at) = t.now.checked_add_ms(request.ttl_ms) else {
        return refuse(CreateTradeRefusal::DeadlineOverflows);
    };
    let subscriber = tx.get::<SubscriberRecord>(T::Subscribers, request.payer.as_str().as_bytes())?;
    let handset = tx.get::<HandsetRecord>(T::Handsets, request.payer.as_str().as_bytes())?;
    let carrier = subscriber.as_ref().map(|s| s.carrier.clone());
    let Some(mut trade) = t.pending_trade(request, carrier, expires_at, &shop.display_name, &register.label) else {
        return corrupt("binding code is not six digits");
    };
    let refusal = match (&subscriber, &handset) {
        (None, _) => Some(FailureReason::PayerUnknown),
        // Carrier billing puts the charge on the carrier's books: only a
        // shop the carrier accepted may charge its bill, however it names
        // the payer.
        (Some(s), _) if matches!(s.funding, Funding::CarrierBill { .. }) && !accepted(tx, &s.carrier, &t.shop)? => {
            Some(FailureReason::CarrierRefusedShop)
        }
        (Some(_), None) => Some(FailureReason::NoHandset),
        (Some(_), Some(_)) => None,
    };
    match (refusal, &subscriber) {
        (Some(reason), _) => {
            // Nothing can ever answer this trade: it fails at once, with no
            // offer, deadline or open-trade slot.
            trade.state = TradeState::Failed;
            trade.failure = Some(reason);
            trade.finished_at = Some(t.now);
        }
        (None, Some(sub)) => {
            // Every other check has passed: this trade sends an offer, so
            // here, and only here, it spends the buyer's allowance.
            if let Some(gate) = &t.offer_gate {
                if let Err(refusal) = admissions.admit(t.trade_id, gate, &trade.request.payer) {
                    return refuse(CreateTradeRefusal::OfferLimited(refusal));
                }
            }
            register.open_trades = register.open_trades.saturating_add(1);
            tx.put(T::Registers, &register_key, &register)?;
            tx.put(T::Deadlines, &keys::deadline(expires_at, &trade.id), &())?;
            let offer = OfferBody {
                trade: trade.id,
                payer: trade.request.payer.clone(),
                shop: t.shop.clone(),
                shop_name: shop.display_name.clone(),
                register: register.id,
                register_label: register.label.clone(),
                amount: trade.request.amount,
                currency: trade.request.currency,
                description: trade.request.description.clone(),
                expires_at,
                binding_code: t.binding_code.clone(),
            };
            trade.offer_delivery = Some(enqueue(tx, &sub.carrier, DeliveryBody::Offer(offer), deliveries)?);
        }
        (None, None) => return corrupt("payer check inconsistent"),
    }
    super::history::put_trade(tx, &trade)?;
    emit(tx, &trade, EventKind::StateChanged, t.now, cx)?;
    Ok(trade)
}
