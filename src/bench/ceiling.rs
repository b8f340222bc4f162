//! The transport ceiling for `syncpay bench`: an in-memory tonic server
//! that answers the same message pattern per trade as syncpay — CreateTrade
//! request/response, PENDING/OFFERED/SETTLED events down the shop's
//! `WatchTrades` stream, an offer down the carrier's `Relay` stream and its
//! ack and answer up, an `AnswerResult` down — with no storage, no
//! signature check and no ledger. What the load generator gets from it is
//! what tonic on loopback does on this machine; syncpay's throughput is
//! reported as a share of it. Every other RPC is UNIMPLEMENTED.
//!
//! Callers are named by their bearer token (the shop id for shops; any
//! token for the carrier): nothing is authenticated.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use syncpay::domain::approval::key_sha256;
use syncpay::domain::{
    Amount, ApprovalPayload, BindingCode, Currency, Decision, PayloadVersion, RegisterId, ScreenText, ShopId, TradeId,
    UnixMs,
};
use syncpay::proto::carrier_service_server::{CarrierService, CarrierServiceServer};
use syncpay::proto::register_service_server::{RegisterService, RegisterServiceServer};
use syncpay::proto::{self, TradeState};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Events buffered per shop stream and messages per relay stream; the same
/// order of size as the real server's buffers.
const QUEUE: usize = 1024;
/// The offer's deadline as the real server's default TTL.
const TTL: Duration = Duration::from_secs(120);

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::TradeEvent, Status>> + Send>>;
type RelayStream = Pin<Box<dyn Stream<Item = Result<proto::RelayDown, Status>> + Send>>;

#[derive(Default)]
struct Feed {
    seq: u64,
    tx: Option<mpsc::Sender<Result<proto::TradeEvent, Status>>>,
}

#[derive(Default)]
struct Inner {
    /// Per shop id: its event numbering and its open WatchTrades stream.
    feeds: Mutex<HashMap<String, Feed>>,
    relay: Mutex<Option<mpsc::Sender<Result<proto::RelayDown, Status>>>>,
    /// Offers sent and not yet acked, by delivery id: (shop, trade).
    offered: Mutex<HashMap<u64, (String, proto::Trade)>>,
    /// Offers acked and not yet answered, by trade id.
    shown: Mutex<HashMap<String, (String, proto::Trade)>>,
    next_delivery: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
        .ok_or_else(|| Status::unauthenticated("bearer token"))
}

impl Inner {
    /// Numbers the event and sends it to the shop's stream, if one is open.
    async fn emit(&self, shop: &str, trade: proto::Trade) {
        let (seq, tx) = {
            let mut feeds = lock(&self.feeds);
            let feed = feeds.entry(shop.to_owned()).or_default();
            feed.seq += 1;
            (feed.seq, feed.tx.clone())
        };
        if let Some(tx) = tx {
            let event = proto::TradeEvent {
                sequence: seq,
                at_ms: now_ms(),
                trade: Some(trade),
                kind: proto::EventKind::StateChanged as i32,
                refund_minor: 0,
                refund_id: 0,
            };
            let _ = tx.send(Ok(event)).await;
        }
    }

    async fn on_up(&self, up: proto::RelayUp) {
        match up.body {
            Some(proto::relay_up::Body::Ack(ack)) => {
                let Some((shop, mut trade)) = lock(&self.offered).remove(&ack.delivery_id) else { return };
                trade.state = TradeState::Offered as i32;
                lock(&self.shown).insert(trade.trade_id.clone(), (shop.clone(), trade.clone()));
                self.emit(&shop, trade).await;
            }
            Some(proto::relay_up::Body::Answer(answer)) => {
                let Some((shop, mut trade)) = lock(&self.shown).remove(&answer.trade_id) else { return };
                trade.state = TradeState::Settled as i32;
                trade.finished_at_ms = now_ms();
                self.emit(&shop, trade).await;
                let result = proto::AnswerResult {
                    trade_id: answer.trade_id,
                    accepted: true,
                    state: TradeState::Settled as i32,
                    failure_reason: proto::FailureReason::Unspecified as i32,
                    message: String::new(),
                };
                let relay = lock(&self.relay).clone();
                if let Some(relay) = relay {
                    let down =
                        proto::RelayDown { delivery_id: 0, body: Some(proto::relay_down::Body::AnswerResult(result)) };
                    let _ = relay.send(Ok(down)).await;
                }
            }
            // The ceiling asks no carrier to resolve anything.
            Some(proto::relay_up::Body::Resolved(_)) | None => {}
        }
    }
}

/// Both services over one shared state.
#[derive(Clone, Default)]
pub struct Ceiling {
    inner: Arc<Inner>,
}

/// Serves the ceiling on `listener` until the process ends. Accepted
/// connections get TCP_NODELAY: without it small responses wait for the
/// peer's delayed ACK (~40 ms on Linux) and the "ceiling" would measure
/// Nagle's algorithm, not the transport.
pub async fn serve(listener: tokio::net::TcpListener) -> Result<(), tonic::transport::Error> {
    let ceiling = Ceiling::default();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(RegisterServiceServer::new(ceiling.clone()))
        .add_service(CarrierServiceServer::new(ceiling))
        .serve_with_incoming(incoming)
        .await
}

#[tonic::async_trait]
impl RegisterService for Ceiling {
    type WatchTradesStream = EventStream;

    async fn open_register(
        &self,
        request: Request<proto::OpenRegisterRequest>,
    ) -> Result<Response<proto::Register>, Status> {
        let id = RegisterId::generate().map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(proto::Register {
            register_id: id.to_string(),
            label: request.into_inner().label,
            open: true,
            opened_at_ms: now_ms(),
            closed_at_ms: 0,
            open_trades: 0,
        }))
    }

    async fn close_register(
        &self,
        _: Request<proto::CloseRegisterRequest>,
    ) -> Result<Response<proto::Register>, Status> {
        Err(Status::unimplemented("ceiling"))
    }

    async fn list_registers(
        &self,
        _: Request<proto::ListRegistersRequest>,
    ) -> Result<Response<proto::ListRegistersResponse>, Status> {
        Err(Status::unimplemented("ceiling"))
    }

    async fn create_trade(
        &self,
        request: Request<proto::CreateTradeRequest>,
    ) -> Result<Response<proto::Trade>, Status> {
        let shop = caller(&request)?;
        let r = request.into_inner();
        let Some(proto::create_trade_request::Payer::SubscriberNumber(number)) = r.payer else {
            return Err(Status::invalid_argument("payer: subscriber_number"));
        };
        let trade_id = TradeId::generate().map_err(|e| Status::internal(e.to_string()))?.to_string();
        let created = now_ms();
        let expires = created.saturating_add(i64::try_from(TTL.as_millis()).unwrap_or(i64::MAX));
        let trade = proto::Trade {
            trade_id: trade_id.clone(),
            register_id: r.register_id.clone(),
            amount_minor: r.amount_minor,
            currency: r.currency.clone(),
            description: r.description.clone(),
            state: TradeState::Pending as i32,
            binding_code: "123456".to_owned(),
            created_at_ms: created,
            expires_at_ms: expires,
            payer_pseudonym: "pseudonym".to_owned(),
            ..Default::default()
        };
        let delivery_id = self.inner.next_delivery.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.inner.offered).insert(delivery_id, (shop.clone(), trade.clone()));
        self.inner.emit(&shop, trade.clone()).await;
        let mut offer = proto::Offer {
            trade_id,
            subscriber_number: number,
            shop_id: shop.clone(),
            shop_name: shop,
            register_id: r.register_id,
            register_label: "bench".to_owned(),
            amount_minor: r.amount_minor,
            currency: r.currency,
            description: r.description,
            expires_at_ms: expires,
            binding_code: "123456".to_owned(),
            payload_version: 2,
            approve_payload: Vec::new(),
            decline_payload: Vec::new(),
        };
        // The same bytes the server sends, so the handsets sign as they do
        // against syncpay (they refuse an offer whose bytes differ).
        let payload = signing_payload(&offer).ok_or_else(|| Status::invalid_argument("offer fields"))?;
        offer.approve_payload = payload.to_bytes();
        offer.decline_payload = ApprovalPayload { decision: Decision::Decline, ..payload }.to_bytes();
        let relay = lock(&self.inner.relay).clone();
        match relay {
            Some(relay) => {
                let down = proto::RelayDown { delivery_id, body: Some(proto::relay_down::Body::Offer(offer)) };
                let _ = relay.send(Ok(down)).await;
            }
            None => return Err(Status::unavailable("no carrier relay")),
        }
        Ok(Response::new(trade))
    }

    async fn get_trade(&self, _: Request<proto::GetTradeRequest>) -> Result<Response<proto::Trade>, Status> {
        Err(Status::unimplemented("ceiling"))
    }

    async fn await_trade(&self, _: Request<proto::AwaitTradeRequest>) -> Result<Response<proto::Trade>, Status> {
        Err(Status::unimplemented("ceiling"))
    }

    async fn cancel_trade(&self, _: Request<proto::CancelTradeRequest>) -> Result<Response<proto::Trade>, Status> {
        Err(Status::unimplemented("ceiling"))
    }

    async fn refund_trade(
        &self,
        _: Request<proto::RefundTradeRequest>,
    ) -> Result<Response<proto::RefundTradeResponse>, Status> {
        Err(Status::unimplemented("ceiling"))
    }

    async fn watch_trades(
        &self,
        request: Request<proto::WatchTradesRequest>,
    ) -> Result<Response<Self::WatchTradesStream>, Status> {
        let shop = caller(&request)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        lock(&self.inner.feeds).entry(shop).or_default().tx = Some(tx);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as EventStream))
    }

    async fn get_payout_report(
        &self,
        _: Request<proto::GetPayoutReportRequest>,
    ) -> Result<Response<proto::PayoutReport>, Status> {
        Err(Status::unimplemented("ceiling"))
    }

    async fn get_receipt_keys(
        &self,
        _: Request<proto::GetReceiptKeysRequest>,
    ) -> Result<Response<proto::ReceiptKeys>, Status> {
        Err(Status::unimplemented("ceiling"))
    }
}

#[tonic::async_trait]
impl CarrierService for Ceiling {
    type RelayStream = RelayStream;

    async fn relay(&self, request: Request<Streaming<proto::RelayUp>>) -> Result<Response<Self::RelayStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(QUEUE);
        *lock(&self.inner.relay) = Some(tx);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            while let Ok(Some(up)) = inbound.message().await {
                inner.on_up(up).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as RelayStream))
    }

    async fn enroll_subscriber(
        &self,
        request: Request<proto::EnrollSubscriberRequest>,
    ) -> Result<Response<proto::EnrollSubscriberResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(proto::EnrollSubscriberResponse {
            subscriber_number: r.subscriber_number,
            funding: r.funding,
            bill_currency: r.bill_currency,
            monthly_cap_minor: r.monthly_cap_minor,
        }))
    }

    async fn enroll_handset(
        &self,
        request: Request<proto::EnrollHandsetRequest>,
    ) -> Result<Response<proto::EnrollHandsetResponse>, Status> {
        let key: [u8; 32] =
            request.into_inner().public_key.try_into().map_err(|_| Status::invalid_argument("public_key: 32 bytes"))?;
        Ok(Response::new(proto::EnrollHandsetResponse { key_sha256: key_sha256(&key).to_vec() }))
    }

    async fn report_leases(
        &self,
        _: Request<proto::ReportLeasesRequest>,
    ) -> Result<Response<proto::ReportLeasesResponse>, Status> {
        Err(Status::unimplemented("ceiling"))
    }

    async fn set_resolve_mode(
        &self,
        _: Request<proto::SetResolveModeRequest>,
    ) -> Result<Response<proto::SetResolveModeResponse>, Status> {
        Err(Status::unimplemented("ceiling"))
    }

    async fn accept_shop(
        &self,
        _: Request<proto::AcceptShopRequest>,
    ) -> Result<Response<proto::AcceptShopResponse>, Status> {
        Err(Status::unimplemented("ceiling"))
    }

    async fn revoke_shop(
        &self,
        _: Request<proto::RevokeShopRequest>,
    ) -> Result<Response<proto::AcceptShopResponse>, Status> {
        Err(Status::unimplemented("ceiling"))
    }

    async fn get_statement(
        &self,
        _: Request<proto::GetStatementRequest>,
    ) -> Result<Response<proto::Statement>, Status> {
        Err(Status::unimplemented("ceiling"))
    }

    async fn get_remittance_statement(
        &self,
        _: Request<proto::GetRemittanceStatementRequest>,
    ) -> Result<Response<proto::CarrierStatement>, Status> {
        Err(Status::unimplemented("ceiling"))
    }
}

/// The version 2 approval payload of `o` (approve), from its fields.
fn signing_payload(o: &proto::Offer) -> Option<ApprovalPayload> {
    Some(ApprovalPayload {
        trade_id: TradeId::parse(&o.trade_id).ok()?,
        amount: Amount::new(o.amount_minor),
        currency: Currency::parse(&o.currency).ok()?,
        shop_id: ShopId::parse(&o.shop_id).ok()?,
        register_id: RegisterId::parse(&o.register_id).ok()?,
        expires_at: UnixMs(u64::try_from(o.expires_at_ms).ok()?),
        version: PayloadVersion::V2 {
            binding_code: BindingCode::parse(&o.binding_code)?,
            screen_digest: ScreenText {
                shop_name: &o.shop_name,
                register_label: &o.register_label,
                description: &o.description,
            }
            .digest(),
        },
        decision: Decision::Approve,
    })
}
