//! `RegisterService`: what shops call. Every trade lookup is scoped to the
//! calling shop; another shop's trade is NOT_FOUND, exactly like no trade.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::domain::{RegisterId, ShopId, TradeId};
use crate::proto::{self, register_service_server::RegisterService};
use crate::store::{Command, CommandOutcome, PayoutEntry, TradeRecord};

use super::auth;
use super::convert;
use super::engine::{now, stopped, Engine};
use super::error::ApiError;
use super::limits;
use super::requests;

pub struct RegisterApi {
    engine: Arc<Engine>,
    shutdown: watch::Receiver<bool>,
}

impl RegisterApi {
    pub fn new(engine: Arc<Engine>, shutdown: watch::Receiver<bool>) -> Self {
        RegisterApi { engine, shutdown }
    }

    /// The shop's own trade, or NOT_FOUND.
    async fn own_trade(&self, shop: &ShopId, id: &TradeId) -> Result<TradeRecord, ApiError> {
        match self.engine.store.trade(id).await? {
            Some(t) if &t.shop == shop => Ok(t),
            _ => Err(ApiError::NotFound("trade")),
        }
    }

    fn to_proto(&self, t: &TradeRecord) -> proto::Trade {
        convert::trade_for_shop(t, &self.engine.secret)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::TradeEvent, Status>> + Send>>;

#[tonic::async_trait]
impl RegisterService for RegisterApi {
    async fn open_register(
        &self,
        request: Request<proto::OpenRegisterRequest>,
    ) -> Result<Response<proto::Register>, Status> {
        let shop = auth::shop(&request)?;
        let label = requests::open_register(request.get_ref())?;
        let id = RegisterId::generate().map_err(|e| ApiError::Internal(e.to_string()))?;
        let command = Command::OpenRegister {
            shop,
            id,
            label,
            max_registers: self.engine.limits.max_open_registers_per_shop,
            now: now(),
        };
        match self.engine.store.execute(command).await.map_err(ApiError::from)? {
            CommandOutcome::Register(r) => Ok(Response::new(convert::register_to_proto(&r))),
            _ => Err(ApiError::Internal("open register: unexpected outcome".into()).into()),
        }
    }

    async fn close_register(
        &self,
        request: Request<proto::CloseRegisterRequest>,
    ) -> Result<Response<proto::Register>, Status> {
        let shop = auth::shop(&request)?;
        let id = requests::close_register(request.get_ref())?;
        match self
            .engine
            .store
            .execute(Command::CloseRegister { shop, id, now: now() })
            .await
            .map_err(ApiError::from)?
        {
            CommandOutcome::Register(r) => Ok(Response::new(convert::register_to_proto(&r))),
            _ => Err(ApiError::Internal("close register: unexpected outcome".into()).into()),
        }
    }

    async fn list_registers(
        &self,
        request: Request<proto::ListRegistersRequest>,
    ) -> Result<Response<proto::ListRegistersResponse>, Status> {
        let shop = auth::shop(&request)?;
        let registers = self.engine.store.registers(&shop, limits::MAX_LIST).await.map_err(ApiError::from)?;
        Ok(Response::new(proto::ListRegistersResponse {
            registers: registers.iter().map(convert::register_to_proto).collect(),
        }))
    }

    async fn create_trade(
        &self,
        request: Request<proto::CreateTradeRequest>,
    ) -> Result<Response<proto::Trade>, Status> {
        let shop = auth::shop(&request)?;
        let new = requests::create_trade(request.get_ref(), &self.engine.limits)?;
        let (trade, _replayed) = self.engine.create_trade(&shop, new).await?;
        Ok(Response::new(self.to_proto(&trade)))
    }

    async fn get_trade(&self, request: Request<proto::GetTradeRequest>) -> Result<Response<proto::Trade>, Status> {
        let shop = auth::shop(&request)?;
        let id = requests::get_trade(request.get_ref())?;
        let trade = self.own_trade(&shop, &id).await?;
        Ok(Response::new(self.to_proto(&trade)))
    }

    async fn await_trade(&self, request: Request<proto::AwaitTradeRequest>) -> Result<Response<proto::Trade>, Status> {
        let shop = auth::shop(&request)?;
        let (id, wait) = requests::await_trade(request.get_ref())?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut shutdown = self.shutdown.clone();
        loop {
            let guard = self.engine.finals.wait(id);
            let notified = guard.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let trade = self.own_trade(&shop, &id).await?;
            if trade.state.is_final() || tokio::time::Instant::now() >= deadline {
                return Ok(Response::new(self.to_proto(&trade)));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = stopped(&mut shutdown) => {
                    return Err(Status::unavailable("server is shutting down; retry AwaitTrade"));
                }
            }
        }
    }

    async fn cancel_trade(
        &self,
        request: Request<proto::CancelTradeRequest>,
    ) -> Result<Response<proto::Trade>, Status> {
        let shop = auth::shop(&request)?;
        let id = requests::cancel_trade(request.get_ref())?;
        let trade = self.engine.cancel(&shop, id).await?;
        Ok(Response::new(self.to_proto(&trade)))
    }

    async fn refund_trade(
        &self,
        request: Request<proto::RefundTradeRequest>,
    ) -> Result<Response<proto::RefundTradeResponse>, Status> {
        let shop = auth::shop(&request)?;
        let refund = requests::refund_trade(request.get_ref(), &self.engine.limits)?;
        let (trade, refund_id, amount) =
            self.engine.refund(&shop, refund.trade, refund.amount, refund.idempotency_key).await?;
        Ok(Response::new(proto::RefundTradeResponse {
            trade: Some(self.to_proto(&trade)),
            refund_id,
            amount_minor: amount.minor(),
        }))
    }

    type WatchTradesStream = EventStream;

    async fn get_receipt_keys(
        &self,
        request: Request<proto::GetReceiptKeysRequest>,
    ) -> Result<Response<proto::ReceiptKeys>, Status> {
        let _shop = auth::shop(&request)?;
        Ok(Response::new(convert::receipt_keys_to_proto(&self.engine.receipts.published())))
    }

    async fn get_payout_report(
        &self,
        request: Request<proto::GetPayoutReportRequest>,
    ) -> Result<Response<proto::PayoutReport>, Status> {
        let shop = auth::shop(&request)?;
        let r = request.get_ref();
        let (from, to) = requests::payout_report(r)?;
        let entries = self.engine.store.payout_entries(&shop, from, to).await.map_err(ApiError::from)?;
        Ok(Response::new(payout_report(&entries, r.from_ms, r.to_ms)))
    }

    async fn watch_trades(
        &self,
        request: Request<proto::WatchTradesRequest>,
    ) -> Result<Response<Self::WatchTradesStream>, Status> {
        let shop = auth::shop(&request)?;
        let watch = requests::watch_trades(request.get_ref())?;
        let filter = watch.register;
        if let Some(register) = filter {
            // Another shop's register is NOT_FOUND, exactly like none.
            if !self.engine.store.has_register(&shop, &register).map_err(ApiError::from)? {
                return Err(ApiError::NotFound("register").into());
            }
        }
        let slot = self.engine.watch_slots.acquire(&shop)?;
        let mut head = self
            .engine
            .store
            .event_heads()
            .subscribe(&shop)
            .ok_or_else(|| ApiError::Internal(format!("no event head for shop {shop}")))?;
        let mut cursor = watch.after_sequence;
        let known = *head.borrow();
        if cursor > known {
            // Not malformed, and not to be waited on: sequence numbers past
            // the head are not this server's history (a cursor kept across
            // a restore from an older backup, or from another server), and
            // the events that will take those numbers are not the ones the
            // client saw. OUT_OF_RANGE, as gRPC says for reading past the end.
            return Err(
                ApiError::OutOfRange(format!("after_sequence: is beyond the shop's last event ({known})")).into()
            );
        }
        let (tx, rx) = mpsc::channel(self.engine.limits.stream_buffer.max(1));
        let engine = self.engine.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            // Held for as long as the stream runs.
            let _slot = slot;
            loop {
                let durable_head = *head.borrow_and_update();
                // Send everything up to the durable head, a page at a time;
                // the store is the buffer, so a slow client costs nothing.
                while cursor < durable_head {
                    let page = match engine.store.events_between(&shop, cursor, durable_head, limits::MAX_LIST) {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = tx.send(Err(ApiError::from(e).into())).await;
                            return;
                        }
                    };
                    for event in page {
                        // Gap-free by construction; checked anyway.
                        if Some(event.seq) != cursor.checked_add(1) {
                            let detail = format!("event gap for {shop}: after {cursor} came {}", event.seq);
                            let _ = tx.send(Err(ApiError::Internal(detail).into())).await;
                            return;
                        }
                        cursor = event.seq;
                        if filter.is_some_and(|f| f != event.trade.request.register) {
                            continue;
                        }
                        if tx.send(Ok(convert::event_for_shop(&event, &engine.secret))).await.is_err() {
                            return; // the client left
                        }
                    }
                }
                tokio::select! {
                    changed = head.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    _ = stopped(&mut shutdown) => {
                        let _ = tx.send(Err(Status::unavailable(format!(
                            "server is shutting down; resume with after_sequence={cursor}"
                        )))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as EventStream))
    }
}

#[derive(Default)]
struct PayoutSums {
    gross: u128,
    fee: u128,
    refunded: u128,
    settlements: u64,
}

impl PayoutSums {
    fn net(&self) -> i64 {
        let net = i128::try_from(self.gross).unwrap_or(i128::MAX)
            - i128::try_from(self.fee).unwrap_or(i128::MAX)
            - i128::try_from(self.refunded).unwrap_or(i128::MAX);
        i64::try_from(net).unwrap_or(if net < 0 { i64::MIN } else { i64::MAX })
    }
}

fn sat(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Sums payout entries per (carrier, currency) and, for wallet payments,
/// per currency. Sums are u128: a period of entries cannot overflow them.
fn payout_report(entries: &[PayoutEntry], from_ms: i64, to_ms: i64) -> proto::PayoutReport {
    let mut carriers: BTreeMap<(String, String), PayoutSums> = BTreeMap::new();
    let mut wallet: BTreeMap<String, PayoutSums> = BTreeMap::new();
    for e in entries {
        let (carrier, currency) = match e {
            PayoutEntry::Settlement { carrier, currency, .. } | PayoutEntry::Refund { carrier, currency, .. } => {
                (carrier, currency.code().to_owned())
            }
        };
        let sums = match carrier {
            Some(c) => carriers.entry((c.to_string(), currency)).or_default(),
            None => wallet.entry(currency).or_default(),
        };
        match e {
            PayoutEntry::Settlement { gross, fee, .. } => {
                sums.gross += u128::from(gross.minor());
                sums.fee += u128::from(fee.minor());
                sums.settlements = sums.settlements.saturating_add(1);
            }
            PayoutEntry::Refund { amount, .. } => sums.refunded += u128::from(amount.minor()),
        }
    }
    proto::PayoutReport {
        from_ms,
        to_ms,
        carriers: carriers
            .into_iter()
            .map(|((carrier_id, currency), s)| proto::CarrierPayout {
                carrier_id,
                currency,
                gross_minor: sat(s.gross),
                fee_minor: sat(s.fee),
                refunded_minor: sat(s.refunded),
                net_minor: s.net(),
                settlements: s.settlements,
            })
            .collect(),
        wallet: wallet
            .into_iter()
            .map(|(currency, s)| proto::WalletPayout {
                currency,
                gross_minor: sat(s.gross),
                refunded_minor: sat(s.refunded),
                net_minor: s.net(),
                settlements: s.settlements,
            })
            .collect(),
    }
}
