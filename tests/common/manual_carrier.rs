//! A carrier relay driven by hand: the test reads what the server sends and
//! decides every acknowledgement and answer, including forged ones.

use std::collections::VecDeque;
use std::time::Duration;

use syncpay::client::AuthedChannel;
use syncpay::domain::{
    Amount, ApprovalPayload, BindingCode, Currency, Decision, PayloadVersion, RegisterId, ScreenText, ShopId, TradeId,
    UnixMs,
};
use syncpay::proto::{self, carrier_service_client::CarrierServiceClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Status;

const WAIT: Duration = Duration::from_secs(10);

pub struct ManualCarrier {
    up: mpsc::Sender<proto::RelayUp>,
    down: mpsc::Receiver<Result<proto::RelayDown, Status>>,
    /// Messages read while looking for another one.
    stash: VecDeque<proto::RelayDown>,
}

impl ManualCarrier {
    pub async fn connect(mut client: CarrierServiceClient<AuthedChannel>) -> ManualCarrier {
        let (up, rx) = mpsc::channel(64);
        let mut inbound = client.relay(ReceiverStream::new(rx)).await.expect("relay").into_inner();
        let (tx, down) = mpsc::channel(1024);
        tokio::spawn(async move {
            while let Some(m) = inbound.next().await {
                let end = m.is_err();
                if tx.send(m).await.is_err() || end {
                    return;
                }
            }
        });
        ManualCarrier { up, down, stash: VecDeque::new() }
    }

    async fn next(&mut self) -> Result<proto::RelayDown, Status> {
        match tokio::time::timeout(WAIT, self.down.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => Err(Status::unavailable("relay stream ended")),
            Err(_) => Err(Status::deadline_exceeded("nothing from the relay")),
        }
    }

    /// The next message that `pick` accepts (others are kept for later).
    pub async fn find<T>(&mut self, mut pick: impl FnMut(&proto::RelayDown) -> Option<T>) -> Result<T, Status> {
        if let Some(i) = self.stash.iter().position(|m| pick(m).is_some()) {
            let m = self.stash.remove(i).expect("present");
            return Ok(pick(&m).expect("picked"));
        }
        loop {
            let m = self.next().await?;
            if let Some(t) = pick(&m) {
                return Ok(t);
            }
            self.stash.push_back(m);
        }
    }

    /// The offer of `trade` and its delivery id.
    pub async fn offer(&mut self, trade: &str) -> (u64, proto::Offer) {
        self.find(|m| match &m.body {
            Some(proto::relay_down::Body::Offer(o)) if o.trade_id == trade => Some((m.delivery_id, o.clone())),
            _ => None,
        })
        .await
        .expect("offer")
    }

    pub async fn answer_result(&mut self, trade: &str) -> proto::AnswerResult {
        self.find(|m| match &m.body {
            Some(proto::relay_down::Body::AnswerResult(r)) if r.trade_id == trade => Some(r.clone()),
            _ => None,
        })
        .await
        .expect("answer result")
    }

    /// Whatever arrived, without waiting for more.
    pub fn drain(&mut self) -> Vec<proto::RelayDown> {
        let mut out: Vec<_> = self.stash.drain(..).collect();
        while let Ok(Ok(m)) = self.down.try_recv() {
            out.push(m);
        }
        out
    }

    pub async fn send(&self, body: proto::relay_up::Body) {
        self.send_message(proto::RelayUp { body: Some(body) }).await;
    }

    /// Sends any message, a malformed one (no body) included.
    pub async fn send_message(&self, message: proto::RelayUp) {
        self.up.send(message).await.expect("relay open");
    }

    pub async fn ack(&self, delivery_id: u64) {
        self.send(proto::relay_up::Body::Ack(proto::Ack { delivery_id })).await;
    }

    pub async fn answer(&self, trade: &str, decision: Decision, signature: Vec<u8>) {
        let decision = match decision {
            Decision::Approve => proto::Decision::Approve,
            Decision::Decline => proto::Decision::Decline,
        };
        self.send(proto::relay_up::Body::Answer(proto::HandsetAnswer {
            trade_id: trade.to_owned(),
            decision: decision as i32,
            signature,
        }))
        .await;
    }
}

/// The version 2 bytes a handset signs for `offer` (with the amount
/// overridden), rebuilt from its fields.
pub fn payload_bytes(offer: &proto::Offer, decision: Decision, amount_minor: u64) -> Vec<u8> {
    let version = PayloadVersion::V2 {
        binding_code: BindingCode::parse(&offer.binding_code).expect("binding code"),
        screen_digest: ScreenText {
            shop_name: &offer.shop_name,
            register_label: &offer.register_label,
            description: &offer.description,
        }
        .digest(),
    };
    payload(offer, decision, amount_minor, version).to_bytes()
}

/// The retired version 1 bytes of `offer`: what an old handset would sign.
pub fn payload_bytes_v1(offer: &proto::Offer, decision: Decision) -> Vec<u8> {
    payload(offer, decision, offer.amount_minor, PayloadVersion::V1).to_bytes()
}

fn payload(offer: &proto::Offer, decision: Decision, amount_minor: u64, version: PayloadVersion) -> ApprovalPayload {
    ApprovalPayload {
        trade_id: TradeId::parse(&offer.trade_id).expect("trade id"),
        amount: Amount::new(amount_minor),
        currency: Currency::parse(&offer.currency).expect("currency"),
        shop_id: ShopId::parse(&offer.shop_id).expect("shop id"),
        register_id: RegisterId::parse(&offer.register_id).expect("register id"),
        expires_at: UnixMs(u64::try_from(offer.expires_at_ms).expect("time")),
        version,
        decision,
    }
}

/// A handset key's signature over `offer` as it was sent.
pub fn sign(key: &ed25519_dalek::SigningKey, offer: &proto::Offer, decision: Decision) -> Vec<u8> {
    use ed25519_dalek::Signer;
    key.sign(&payload_bytes(offer, decision, offer.amount_minor)).to_bytes().to_vec()
}
