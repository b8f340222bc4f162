//! `AdminService`: the operator's API: shops, carriers, wallet top-ups,
//! accounts, postings and ledger verification.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::receipt::ReceiptKeyId;
use crate::proto::{self, admin_service_server::AdminService};
use crate::store::{Command, CommandOutcome, Receipt};

use super::auth::{new_token, token_hash};
use super::convert;
use super::engine::{now, Engine};
use super::error::ApiError;
use super::limits;
use super::requests;

pub struct AdminApi {
    engine: Arc<Engine>,
}

impl AdminApi {
    pub fn new(engine: Arc<Engine>) -> Self {
        AdminApi { engine }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_shop(
        &self,
        request: Request<proto::CreateShopRequest>,
    ) -> Result<Response<proto::CreateShopResponse>, Status> {
        let (id, display_name) = requests::create_shop(request.get_ref())?;
        let token = new_token("shop")?;
        let command = Command::CreateShop {
            id,
            display_name,
            token_hash: token_hash(&token),
            max_shops: self.engine.limits.max_shops,
            now: now(),
        };
        match self.engine.store.execute(command).await.map_err(ApiError::from)? {
            CommandOutcome::Shop(s) => {
                tracing::info!(shop = %s.id, "shop created");
                Ok(Response::new(proto::CreateShopResponse { shop_id: s.id.to_string(), token }))
            }
            _ => Err(ApiError::Internal("create shop: unexpected outcome".into()).into()),
        }
    }

    async fn create_carrier(
        &self,
        request: Request<proto::CreateCarrierRequest>,
    ) -> Result<Response<proto::CreateCarrierResponse>, Status> {
        let requests::NewCarrier { id, display_name, prefixes, fee_bps } = requests::create_carrier(request.get_ref())?;
        let token = new_token("carrier")?;
        let command =
            Command::CreateCarrier { id, display_name, token_hash: token_hash(&token), prefixes, fee_bps, now: now() };
        match self.engine.store.execute(command).await.map_err(ApiError::from)? {
            CommandOutcome::Carrier(c) => {
                tracing::info!(carrier = %c.id, "carrier created");
                Ok(Response::new(proto::CreateCarrierResponse { carrier_id: c.id.to_string(), token }))
            }
            _ => Err(ApiError::Internal("create carrier: unexpected outcome".into()).into()),
        }
    }

    async fn top_up_wallet(
        &self,
        request: Request<proto::TopUpWalletRequest>,
    ) -> Result<Response<proto::TopUpWalletResponse>, Status> {
        let (number, amount, currency) = requests::top_up(request.get_ref(), &self.engine.limits)?;
        match self
            .engine
            .store
            .execute(Command::TopUp { number, amount, currency, now: now() })
            .await
            .map_err(ApiError::from)?
        {
            CommandOutcome::TopUp { account, posting_id } => Ok(Response::new(proto::TopUpWalletResponse {
                account: Some(convert::account_to_proto(&account)),
                posting_id,
            })),
            _ => Err(ApiError::Internal("top up: unexpected outcome".into()).into()),
        }
    }

    async fn list_accounts(
        &self,
        request: Request<proto::ListAccountsRequest>,
    ) -> Result<Response<proto::ListAccountsResponse>, Status> {
        let prefix = requests::list_accounts(request.get_ref())?;
        let accounts = self.engine.store.accounts(&prefix, limits::MAX_LIST).await.map_err(ApiError::from)?;
        Ok(Response::new(proto::ListAccountsResponse {
            accounts: accounts.iter().map(convert::account_to_proto).collect(),
        }))
    }

    async fn list_postings(
        &self,
        request: Request<proto::ListPostingsRequest>,
    ) -> Result<Response<proto::ListPostingsResponse>, Status> {
        let (after, limit) = requests::list_postings(request.get_ref())?;
        let postings = self.engine.store.postings(after, limit).await.map_err(ApiError::from)?;
        Ok(Response::new(proto::ListPostingsResponse {
            postings: postings.iter().map(convert::posting_to_proto).collect(),
        }))
    }

    async fn verify_ledger(
        &self,
        _request: Request<proto::VerifyLedgerRequest>,
    ) -> Result<Response<proto::VerifyLedgerResponse>, Status> {
        let report = self.engine.store.verify().await.map_err(ApiError::from)?;
        if !report.ok() {
            tracing::error!(violations = report.violation_count, "ledger verification found violations");
        }
        Ok(Response::new(proto::VerifyLedgerResponse {
            ok: report.ok(),
            violations: report.violations,
            accounts_checked: report.accounts_checked,
            postings_checked: report.postings_checked,
            trades_checked: report.trades_checked,
        }))
    }

    async fn add_carrier_prefixes(
        &self,
        request: Request<proto::AddCarrierPrefixesRequest>,
    ) -> Result<Response<proto::AddCarrierPrefixesResponse>, Status> {
        let (carrier, prefixes) = requests::add_carrier_prefixes(request.get_ref())?;
        match self.engine.store.execute(Command::AddPrefixes { carrier, prefixes }).await.map_err(ApiError::from)? {
            CommandOutcome::Prefixes(p) => Ok(Response::new(proto::AddCarrierPrefixesResponse {
                ip_prefixes: p.iter().map(ToString::to_string).collect(),
            })),
            _ => Err(ApiError::Internal("add prefixes: unexpected outcome".into()).into()),
        }
    }

    async fn get_statement(
        &self,
        request: Request<proto::GetStatementRequest>,
    ) -> Result<Response<proto::Statement>, Status> {
        let (carrier, number, month) = requests::admin_statement(request.get_ref())?;
        let data = self.engine.store.statement(&carrier, &number, month).await.map_err(ApiError::from)?;
        Ok(Response::new(convert::statement_to_proto(&data, month)))
    }

    async fn prune_leases(
        &self,
        _request: Request<proto::PruneLeasesRequest>,
    ) -> Result<Response<proto::PruneLeasesResponse>, Status> {
        let deleted = self.engine.prune_leases().await.map_err(ApiError::from)?;
        Ok(Response::new(proto::PruneLeasesResponse { deleted }))
    }

    async fn get_receipt_keys(
        &self,
        _request: Request<proto::GetReceiptKeysRequest>,
    ) -> Result<Response<proto::ReceiptKeys>, Status> {
        Ok(Response::new(convert::receipt_keys_to_proto(&self.engine.receipts.published())))
    }

    async fn rotate_receipt_key(
        &self,
        _request: Request<proto::RotateReceiptKeyRequest>,
    ) -> Result<Response<proto::ReceiptKeys>, Status> {
        let engine = self.engine.clone();
        let published = tokio::task::spawn_blocking(move || engine.receipts.rotate(now()))
            .await
            .map_err(|e| ApiError::Internal(format!("rotation task: {e}")))??;
        Ok(Response::new(convert::receipt_keys_to_proto(&published)))
    }

    async fn dispute_trade(
        &self,
        request: Request<proto::DisputeTradeRequest>,
    ) -> Result<Response<proto::DisputeReport>, Status> {
        let id = requests::dispute_trade(request.get_ref())?;
        let store = &self.engine.store;
        let trade = store.trade(&id).await.map_err(ApiError::from)?.ok_or(ApiError::NotFound("trade"))?;
        let Some(receipt) = convert::receipt_for_shop(&trade) else {
            return Err(ApiError::FailedPrecondition(format!(
                "trade_id: trade is {} and has no receipt",
                trade.state.name()
            ))
            .into());
        };
        let enrolled = store.handset(&trade.request.payer).await.map_err(ApiError::from)?;
        let kept = match &trade.receipt {
            Some(Receipt::Countersigned { handset_key, .. }) => Some(*handset_key),
            Some(Receipt::Legacy { .. }) | None => None,
        };
        let key = kept.or(enrolled.as_ref().map(|h| h.public_key));
        let receipt_public_key = <[u8; 8]>::try_from(receipt.receipt_key_id.as_slice())
            .ok()
            .and_then(|id| self.engine.receipts.public_key(ReceiptKeyId::from_bytes(id)))
            .map_or_else(Vec::new, |k| k.to_vec());
        tracing::info!(trade_id = %trade.id, "dispute report made");
        Ok(Response::new(proto::DisputeReport {
            trade_id: trade.id.to_string(),
            shop_id: trade.shop.to_string(),
            subscriber_number: trade.request.payer.as_str().to_owned(),
            carrier_id: trade.carrier.as_ref().map_or_else(String::new, ToString::to_string),
            handset_public_key: key.map_or_else(Vec::new, |k| k.to_vec()),
            key_from_receipt: kept.is_some(),
            key_enrolled_now: key.is_some() && enrolled.as_ref().map(|h| h.public_key) == key,
            enrolled_at_ms: enrolled.as_ref().map_or(0, |h| convert::ms(h.enrolled_at)),
            receipt: Some(receipt),
            receipt_public_key,
        }))
    }
}
