//! `CarrierService`: the relay stream and subscriber/handset enrollment.
//! A carrier acts only on its own subscribers and its own deliveries.

use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use futures_core::Stream;
use tokio::sync::{mpsc, watch, Semaphore};
use tonic::{Request, Response, Status, Streaming};

use crate::carrier::relay::{shutting_down, to_relay_down, RelayDownStream, RelayHub, REPLAY_BUFFER};
use crate::domain::approval::key_sha256;
use crate::domain::CarrierId;
use crate::proto::{self, carrier_service_server::CarrierService};
use crate::store::{Command, CommandOutcome, Funding, RejectedAnswer};

use super::auth;
use super::convert;
use super::engine::{now, stopped, Engine};
use super::error::ApiError;
use super::limits;
use super::metrics;
use super::requests::{self, Uplink};

pub struct CarrierApi {
    engine: Arc<Engine>,
    hub: Arc<RelayHub>,
    shutdown: watch::Receiver<bool>,
}

impl CarrierApi {
    pub fn new(engine: Arc<Engine>, hub: Arc<RelayHub>, shutdown: watch::Receiver<bool>) -> Self {
        CarrierApi { engine, hub, shutdown }
    }
}

type RelayStream = Pin<Box<dyn Stream<Item = Result<proto::RelayDown, Status>> + Send>>;

/// Queues one message from a carrier's relay stream (in arrival order) and
/// returns the work that finishes it once it is durable.
async fn begin_up(
    engine: &Arc<Engine>,
    hub: &Arc<RelayHub>,
    carrier: &CarrierId,
    message: proto::RelayUp,
) -> Result<Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send>>, ApiError> {
    let uplink = match requests::relay_up(&message) {
        Ok(u) => u,
        Err(e) => {
            // A malformed answer is answered, naming the field, so the
            // carrier can tell its handset; the trade is untouched.
            if let Some(proto::relay_up::Body::Answer(answer)) = &message.body {
                let result = proto::AnswerResult {
                    trade_id: answer.trade_id.chars().take(limits::MAX_ECHOED_ID_CHARS).collect(),
                    accepted: false,
                    state: proto::TradeState::Unspecified as i32,
                    failure_reason: proto::FailureReason::Unspecified as i32,
                    message: e.to_string(),
                };
                let down =
                    proto::RelayDown { delivery_id: 0, body: Some(proto::relay_down::Body::AnswerResult(result)) };
                hub.send_direct(carrier, down);
            }
            return Err(e);
        }
    };
    match uplink {
        Uplink::Ack { delivery_id } => Ok(Box::pin(engine.begin_ack(carrier, delivery_id).await?)),
        Uplink::Answer { trade, decision, signature } => {
            let Some(proto::relay_up::Body::Answer(answer)) = message.body else {
                return Err(ApiError::Internal("relay answer lost its body".into()));
            };
            let pending = engine.begin_answer(carrier, trade, decision, signature.to_vec()).await?;
            let (hub, carrier) = (hub.clone(), carrier.clone());
            Ok(Box::pin(async move {
                let outcome = pending.await?;
                let (accepted, message) = match outcome.rejected {
                    None => (true, String::new()),
                    Some(RejectedAnswer::UnknownTrade) => (false, "no such trade for this carrier".to_owned()),
                    Some(RejectedAnswer::AlreadyFinal(s)) => (false, format!("trade is already {}", s.name())),
                    Some(RejectedAnswer::Expired) => (false, "the trade expired before the answer arrived".to_owned()),
                };
                let result = proto::AnswerResult {
                    trade_id: answer.trade_id,
                    accepted,
                    state: outcome
                        .trade
                        .as_ref()
                        .map_or(proto::TradeState::Unspecified, |t| convert::state_to_proto(t.state))
                        as i32,
                    failure_reason: convert::failure_to_proto(outcome.trade.as_ref().and_then(|t| t.failure)) as i32,
                    message,
                };
                let down =
                    proto::RelayDown { delivery_id: 0, body: Some(proto::relay_down::Body::AnswerResult(result)) };
                hub.send_direct(&carrier, down);
                Ok(())
            }))
        }
    }
}

fn log_refused(carrier: &CarrierId, e: ApiError) {
    let status = Status::from(e);
    tracing::warn!(carrier = %carrier, code = ?status.code(), message = status.message(), "relay message refused");
}

#[tonic::async_trait]
impl CarrierService for CarrierApi {
    type RelayStream = RelayStream;

    async fn relay(&self, request: Request<Streaming<proto::RelayUp>>) -> Result<Response<Self::RelayStream>, Status> {
        let carrier = auth::carrier(&request)?;
        let mut inbound = request.into_inner();
        let depth = self.hub.depth();
        let (tx, rx) = mpsc::channel(depth);
        let (replay_tx, replay_rx) = mpsc::channel(REPLAY_BUFFER);
        let overflowed = Arc::new(AtomicBool::new(false));
        // Attach first, then replay the outbox: anything committed after the
        // replay's read is pushed live, so nothing falls between the two.
        let link = self.hub.attach(&carrier, tx, overflowed.clone());
        tracing::info!(carrier = %carrier, link, "relay connected");
        metrics::relay_connected(true);

        let replay_engine = self.engine.clone();
        let replay_carrier = carrier.clone();
        tokio::spawn(async move {
            // Page through the whole outbox; sends wait for room, so the
            // replay is paced by the carrier.
            let mut after = 0;
            loop {
                let page = match replay_engine.store.outbox(&replay_carrier, after, limits::MAX_LIST).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = replay_tx.send(Err(ApiError::from(e).into())).await;
                        return;
                    }
                };
                let Some(last) = page.last().map(|d| d.delivery_id) else {
                    return;
                };
                tracing::info!(carrier = %replay_carrier, count = page.len(), "replaying outbox");
                for d in page {
                    if replay_tx.send(Ok(to_relay_down(&d))).await.is_err() {
                        return;
                    }
                }
                after = last;
            }
        });

        let engine = self.engine.clone();
        let hub = self.hub.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let inflight = Arc::new(Semaphore::new(limits::MAX_RELAY_INFLIGHT));
            loop {
                let next = tokio::select! {
                    m = inbound.message() => m,
                    _ = stopped(&mut shutdown) => {
                        // Say why, so the carrier reconnects rather than
                        // taking a silent end for a fault of its own.
                        hub.end(&carrier, link, shutting_down());
                        break;
                    }
                };
                let message = match next {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(carrier = %carrier, code = ?status.code(), "relay stream ended");
                        // Tell the carrier why (an oversized or malformed
                        // message, say) instead of ending silently.
                        hub.end(&carrier, link, status);
                        break;
                    }
                };
                let Ok(permit) = inflight.clone().acquire_owned().await else {
                    break;
                };
                // Queue in arrival order here; await the durable outcome in
                // a task so the stream keeps flowing.
                match begin_up(&engine, &hub, &carrier, message).await {
                    Ok(finish) => {
                        let carrier = carrier.clone();
                        tokio::spawn(async move {
                            if let Err(e) = finish.await {
                                log_refused(&carrier, e);
                            }
                            drop(permit);
                        });
                    }
                    Err(e) => log_refused(&carrier, e),
                }
            }
            hub.detach(&carrier, link);
            metrics::relay_connected(false);
            tracing::info!(carrier = %carrier, link, "relay disconnected");
        });
        Ok(Response::new(Box::pin(RelayDownStream::new(rx, replay_rx, overflowed, depth)) as RelayStream))
    }

    async fn enroll_subscriber(
        &self,
        request: Request<proto::EnrollSubscriberRequest>,
    ) -> Result<Response<proto::EnrollSubscriberResponse>, Status> {
        let carrier = auth::carrier(&request)?;
        let (number, funding) = requests::enroll_subscriber(request.get_ref(), &self.engine.limits)?;
        let command = Command::EnrollSubscriber { carrier, number, funding, now: now() };
        match self.engine.store.execute(command).await.map_err(ApiError::from)? {
            CommandOutcome::Subscriber(s) => Ok(Response::new(match s.funding {
                Funding::Wallet => proto::EnrollSubscriberResponse {
                    subscriber_number: s.number.as_str().to_owned(),
                    funding: proto::Funding::Wallet as i32,
                    ..Default::default()
                },
                Funding::CarrierBill { currency, monthly_cap } => proto::EnrollSubscriberResponse {
                    subscriber_number: s.number.as_str().to_owned(),
                    funding: proto::Funding::CarrierBill as i32,
                    bill_currency: currency.code().to_owned(),
                    monthly_cap_minor: monthly_cap.minor(),
                },
            })),
            _ => Err(ApiError::Internal("enroll subscriber: unexpected outcome".into()).into()),
        }
    }

    async fn enroll_handset(
        &self,
        request: Request<proto::EnrollHandsetRequest>,
    ) -> Result<Response<proto::EnrollHandsetResponse>, Status> {
        let carrier = auth::carrier(&request)?;
        let (number, public_key) = requests::enroll_handset(request.get_ref())?;
        let command = Command::EnrollHandset { carrier, number, public_key, now: now() };
        match self.engine.store.execute(command).await.map_err(ApiError::from)? {
            CommandOutcome::Handset(h) => {
                Ok(Response::new(proto::EnrollHandsetResponse { key_sha256: key_sha256(&h.public_key).to_vec() }))
            }
            _ => Err(ApiError::Internal("enroll handset: unexpected outcome".into()).into()),
        }
    }

    async fn report_leases(
        &self,
        request: Request<proto::ReportLeasesRequest>,
    ) -> Result<Response<proto::ReportLeasesResponse>, Status> {
        let carrier = auth::carrier(&request)?;
        let (starts, stops) = requests::report_leases(request.get_ref())?;
        match self
            .engine
            .store
            .execute(Command::ReportLeases { carrier, starts, stops })
            .await
            .map_err(ApiError::from)?
        {
            CommandOutcome::Leases { starts, stops } => {
                Ok(Response::new(proto::ReportLeasesResponse { starts_recorded: starts, stops_recorded: stops }))
            }
            _ => Err(ApiError::Internal("report leases: unexpected outcome".into()).into()),
        }
    }

    async fn accept_shop(
        &self,
        request: Request<proto::AcceptShopRequest>,
    ) -> Result<Response<proto::AcceptShopResponse>, Status> {
        let carrier = auth::carrier(&request)?;
        let shop = requests::shop_acceptance(&request.get_ref().shop_id)?;
        self.set_acceptance(carrier, shop, true).await
    }

    async fn revoke_shop(
        &self,
        request: Request<proto::RevokeShopRequest>,
    ) -> Result<Response<proto::AcceptShopResponse>, Status> {
        let carrier = auth::carrier(&request)?;
        let shop = requests::shop_acceptance(&request.get_ref().shop_id)?;
        self.set_acceptance(carrier, shop, false).await
    }

    async fn get_statement(
        &self,
        request: Request<proto::GetStatementRequest>,
    ) -> Result<Response<proto::Statement>, Status> {
        let carrier = auth::carrier(&request)?;
        let (number, month) = requests::carrier_statement(request.get_ref())?;
        let data = self.engine.store.statement(&carrier, &number, month).await.map_err(ApiError::from)?;
        Ok(Response::new(convert::statement_to_proto(&data, month)))
    }
}

impl CarrierApi {
    async fn set_acceptance(
        &self,
        carrier: CarrierId,
        shop: crate::domain::ShopId,
        accept: bool,
    ) -> Result<Response<proto::AcceptShopResponse>, Status> {
        let shop_id = shop.to_string();
        let command = Command::SetAcceptance { carrier: carrier.clone(), shop, accept };
        match self.engine.store.execute(command).await.map_err(ApiError::from)? {
            CommandOutcome::Acceptance { accepted } => {
                tracing::info!(carrier = %carrier, shop = %shop_id, accepted, "shop acceptance set");
                Ok(Response::new(proto::AcceptShopResponse { shop_id, accepted }))
            }
            _ => Err(ApiError::Internal("set acceptance: unexpected outcome".into()).into()),
        }
    }
}
