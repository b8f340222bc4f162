//! `RegisterService`: what shops call. Each handler validates its request
//! (`requests.rs`), calls one engine use case and presents the result
//! (`convert.rs`); every trade lookup is scoped to the calling shop, and
//! another shop's trade is NOT_FOUND, exactly like no trade.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::proto::{self, register_service_server::RegisterService};
use crate::store::{PayoutEntry, TradeRecord};

use super::auth;
use super::convert;
use super::engine::Engine;
use super::error::{self, ApiError};
use super::requests;

pub struct RegisterApi {
    engine: Arc<Engine>,
    shutdown: watch::Receiver<bool>,
}

impl RegisterApi {
    pub fn new(engine: Arc<Engine>, shutdown: watch::Receiver<bool>) -> Self {
        RegisterApi { engine, shutdown }
    }

    fn to_proto(&self, t: &TradeRecord) -> proto::Trade {
        convert::trade_for_shop(t, self.engine.secret())
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
        let register = self.engine.open_register(shop, label).await?;
        Ok(Response::new(convert::register_to_proto(&register)))
    }

    async fn close_register(
        &self,
        request: Request<proto::CloseRegisterRequest>,
    ) -> Result<Response<proto::Register>, Status> {
        let shop = auth::shop(&request)?;
        let id = requests::close_register(request.get_ref())?;
        let register = self.engine.close_register(&shop, id).await?;
        Ok(Response::new(convert::register_to_proto(&register)))
    }

    async fn list_registers(
        &self,
        request: Request<proto::ListRegistersRequest>,
    ) -> Result<Response<proto::ListRegistersResponse>, Status> {
        let shop = auth::shop(&request)?;
        let registers = self.engine.registers(&shop).await.map_err(ApiError::from)?;
        Ok(Response::new(proto::ListRegistersResponse {
            registers: registers.iter().map(convert::register_to_proto).collect(),
        }))
    }

    async fn create_trade(
        &self,
        request: Request<proto::CreateTradeRequest>,
    ) -> Result<Response<proto::Trade>, Status> {
        let shop = auth::shop(&request)?;
        let trade = requests::create_trade(request.get_ref(), self.engine.limits())?;
        let created = self.engine.create_trade(&shop, trade).await?;
        Ok(Response::new(self.to_proto(&created.trade)))
    }

    async fn get_trade(&self, request: Request<proto::GetTradeRequest>) -> Result<Response<proto::Trade>, Status> {
        let shop = auth::shop(&request)?;
        let id = requests::get_trade(request.get_ref())?;
        let trade = self.engine.trade(&shop, &id).await?;
        Ok(Response::new(self.to_proto(&trade)))
    }

    async fn await_trade(&self, request: Request<proto::AwaitTradeRequest>) -> Result<Response<proto::Trade>, Status> {
        let shop = auth::shop(&request)?;
        let (id, wait) = requests::await_trade(request.get_ref())?;
        let trade = self.engine.await_trade(&shop, id, wait, &self.shutdown).await?;
        Ok(Response::new(self.to_proto(&trade)))
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
        let refund = requests::refund_trade(request.get_ref(), self.engine.limits())?;
        let refunded = self.engine.refund(&shop, refund.trade, refund.amount, refund.idempotency_key).await?;
        Ok(Response::new(proto::RefundTradeResponse {
            trade: Some(self.to_proto(&refunded.trade)),
            refund_id: refunded.refund_id,
            amount_minor: refunded.amount.minor(),
        }))
    }

    type WatchTradesStream = EventStream;

    async fn get_receipt_keys(
        &self,
        request: Request<proto::GetReceiptKeysRequest>,
    ) -> Result<Response<proto::ReceiptKeys>, Status> {
        let _shop = auth::shop(&request)?;
        Ok(Response::new(convert::receipt_keys_to_proto(&self.engine.receipt_keys())))
    }

    async fn get_payout_report(
        &self,
        request: Request<proto::GetPayoutReportRequest>,
    ) -> Result<Response<proto::PayoutReport>, Status> {
        let shop = auth::shop(&request)?;
        let r = request.get_ref();
        let (from, to) = requests::payout_report(r)?;
        let entries = self.engine.payout_entries(&shop, from, to).await?;
        Ok(Response::new(payout_report(&shop, &entries, r.from_ms, r.to_ms)))
    }

    async fn watch_trades(
        &self,
        request: Request<proto::WatchTradesRequest>,
    ) -> Result<Response<Self::WatchTradesStream>, Status> {
        let shop = auth::shop(&request)?;
        let watch = requests::watch_trades(request.get_ref())?;
        let feed = self.engine.watch_trades(&shop, watch.after_sequence, watch.register, &self.shutdown).await?;
        let secret = self.engine.secret().clone();
        let stream = ReceiverStream::new(feed).map(move |item| match item {
            Ok(event) => Ok(convert::event_for_shop(&event, &secret)),
            Err(end) => Err(error::status(end)),
        });
        Ok(Response::new(Box::pin(stream) as EventStream))
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
pub(super) fn payout_report(
    shop: &crate::domain::ShopId,
    entries: &[PayoutEntry],
    from_ms: i64,
    to_ms: i64,
) -> proto::PayoutReport {
    let mut carriers: BTreeMap<(String, String), PayoutSums> = BTreeMap::new();
    let mut wallet: BTreeMap<String, PayoutSums> = BTreeMap::new();
    let mut payouts = Vec::new();
    for e in entries {
        if let PayoutEntry::Payout { payout_id, currency, amount, reference, at } = e {
            payouts.push(proto::ShopPayout {
                payout_id: *payout_id,
                shop_id: shop.to_string(),
                currency: currency.code().to_owned(),
                amount_minor: amount.minor(),
                reference: reference.clone(),
                paid_at_ms: convert::ms(*at),
                // Kept with the payout, not its entry; see PayoutShop.
                idempotency_key: String::new(),
            });
        }
        let (carrier, currency) = match e {
            PayoutEntry::Settlement { carrier, currency, .. } | PayoutEntry::Refund { carrier, currency, .. } => {
                (carrier, currency.code().to_owned())
            }
            // Listed on their own below: money leaving the payable
            // balance, not part of any carrier's or the wallets' net.
            PayoutEntry::Payout { .. } => continue,
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
            PayoutEntry::Payout { .. } => {}
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
        payouts,
    }
}
