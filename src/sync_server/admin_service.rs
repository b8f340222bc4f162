//! `AdminService`: the operator's API: shops, carriers, wallet top-ups,
//! accounts, postings, ledger verification, receipt keys and disputes,
//! shop payouts, carrier remittances and statements, trade histories,
//! suspension and credential rotation.
//! Each handler validates its request, calls one engine use case and
//! presents the result.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto::{self, admin_service_server::AdminService};
use crate::store::Receipt;

use super::auth::{new_token, token_hash};
use super::convert;
use super::engine::{Dispute, DisputeRefusal, Engine};
use super::error::ApiError;
use super::register_service::payout_report;
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
        let shop = self.engine.create_shop(id, display_name, token_hash(&token)).await?;
        Ok(Response::new(proto::CreateShopResponse { shop_id: shop.id.to_string(), token }))
    }

    async fn create_carrier(
        &self,
        request: Request<proto::CreateCarrierRequest>,
    ) -> Result<Response<proto::CreateCarrierResponse>, Status> {
        let requests::NewCarrier { id, display_name, prefixes, fee_bps, resolve_mode } =
            requests::create_carrier(request.get_ref())?;
        let token = new_token("carrier")?;
        let carrier =
            self.engine.create_carrier(id, display_name, prefixes, fee_bps, resolve_mode, token_hash(&token)).await?;
        Ok(Response::new(proto::CreateCarrierResponse { carrier_id: carrier.id.to_string(), token }))
    }

    async fn top_up_wallet(
        &self,
        request: Request<proto::TopUpWalletRequest>,
    ) -> Result<Response<proto::TopUpWalletResponse>, Status> {
        let (number, amount, currency) = requests::top_up(request.get_ref(), self.engine.limits())?;
        let topped = self.engine.top_up(number, amount, currency).await?;
        Ok(Response::new(proto::TopUpWalletResponse {
            account: Some(convert::account_to_proto(&topped.account)),
            posting_id: topped.posting_id,
        }))
    }

    async fn list_accounts(
        &self,
        request: Request<proto::ListAccountsRequest>,
    ) -> Result<Response<proto::ListAccountsResponse>, Status> {
        let prefix = requests::list_accounts(request.get_ref())?;
        let accounts = self.engine.accounts(&prefix).await.map_err(ApiError::from)?;
        Ok(Response::new(proto::ListAccountsResponse {
            accounts: accounts.iter().map(convert::account_to_proto).collect(),
        }))
    }

    async fn list_postings(
        &self,
        request: Request<proto::ListPostingsRequest>,
    ) -> Result<Response<proto::ListPostingsResponse>, Status> {
        let (after, limit) = requests::list_postings(request.get_ref())?;
        let postings = self.engine.postings(after, limit).await.map_err(ApiError::from)?;
        Ok(Response::new(proto::ListPostingsResponse {
            postings: postings.iter().map(convert::posting_to_proto).collect(),
        }))
    }

    async fn verify_ledger(
        &self,
        _request: Request<proto::VerifyLedgerRequest>,
    ) -> Result<Response<proto::VerifyLedgerResponse>, Status> {
        let report = self.engine.verify().await.map_err(ApiError::from)?;
        Ok(Response::new(proto::VerifyLedgerResponse {
            ok: report.ok(),
            violations: report.violations,
            accounts_checked: report.accounts_checked,
            postings_checked: report.postings_checked,
            trades_checked: report.trades_checked,
        }))
    }

    async fn backup_store(
        &self,
        request: Request<proto::BackupStoreRequest>,
    ) -> Result<Response<proto::BackupStoreResponse>, Status> {
        let dir = requests::backup_store(request.get_ref())?;
        let manifest = self.engine.backup(dir.clone()).await?;
        Ok(Response::new(convert::backup_to_proto(&dir, &manifest)))
    }

    async fn add_carrier_prefixes(
        &self,
        request: Request<proto::AddCarrierPrefixesRequest>,
    ) -> Result<Response<proto::AddCarrierPrefixesResponse>, Status> {
        let (carrier, prefixes) = requests::add_carrier_prefixes(request.get_ref())?;
        let prefixes = self.engine.add_prefixes(&carrier, prefixes).await?;
        Ok(Response::new(proto::AddCarrierPrefixesResponse {
            ip_prefixes: prefixes.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn get_statement(
        &self,
        request: Request<proto::GetStatementRequest>,
    ) -> Result<Response<proto::Statement>, Status> {
        let (carrier, number, month) = requests::admin_statement(request.get_ref())?;
        let data = self.engine.statement(&carrier, &number, month).await?;
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
        Ok(Response::new(convert::receipt_keys_to_proto(&self.engine.receipt_keys())))
    }

    async fn rotate_receipt_key(
        &self,
        _request: Request<proto::RotateReceiptKeyRequest>,
    ) -> Result<Response<proto::ReceiptKeys>, Status> {
        let published = self.engine.rotate_receipt_key().await?;
        Ok(Response::new(convert::receipt_keys_to_proto(&published)))
    }

    async fn dispute_trade(
        &self,
        request: Request<proto::DisputeTradeRequest>,
    ) -> Result<Response<proto::DisputeReport>, Status> {
        let id = requests::dispute_trade(request.get_ref())?;
        let Dispute { trade, enrolled, receipt_public_key } = self.engine.dispute(id).await?;
        let Some(receipt) = convert::receipt_for_shop(&trade) else {
            return Err(ApiError::from(DisputeRefusal::NoReceipt(trade.state)).into());
        };
        let kept = match &trade.receipt {
            Some(Receipt::Countersigned { handset_key, .. }) => Some(*handset_key),
            Some(Receipt::Legacy { .. }) | None => None,
        };
        let key = kept.or(enrolled.as_ref().map(|h| h.public_key));
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
            receipt_public_key: receipt_public_key.map_or_else(Vec::new, |k| k.to_vec()),
        }))
    }

    async fn payout_shop(
        &self,
        request: Request<proto::PayoutShopRequest>,
    ) -> Result<Response<proto::PayoutShopResponse>, Status> {
        let requests::Payout { shop, currency, amount, idempotency_key } = requests::payout_shop(request.get_ref())?;
        let paid = self.engine.payout_shop(shop, currency, amount, idempotency_key).await?;
        Ok(Response::new(proto::PayoutShopResponse {
            payout: Some(convert::payout_to_proto(&paid.payout)),
            payable_balance_minor: i64::try_from(paid.payable.balance.net()).unwrap_or(i64::MAX),
            replayed: paid.replayed,
        }))
    }

    async fn get_shop_payout_report(
        &self,
        request: Request<proto::GetShopPayoutReportRequest>,
    ) -> Result<Response<proto::PayoutReport>, Status> {
        let r = request.get_ref();
        let (shop, from, to) = requests::shop_payout_report(r)?;
        if self.engine.shop(&shop).await.map_err(ApiError::from)?.is_none() {
            return Err(ApiError::NotFound("shop").into());
        }
        let entries = self.engine.payout_entries(&shop, from, to).await?;
        Ok(Response::new(payout_report(&shop, &entries, r.from_ms, r.to_ms)))
    }

    async fn record_remittance(
        &self,
        request: Request<proto::RecordRemittanceRequest>,
    ) -> Result<Response<proto::RecordRemittanceResponse>, Status> {
        let remittance = requests::record_remittance(request.get_ref())?;
        let done = self.engine.remit(remittance).await?;
        Ok(Response::new(proto::RecordRemittanceResponse {
            remittance: Some(convert::remittance_to_proto(&done.remittance)),
            line: Some(convert::statement_line_to_proto(&done.line)),
            replayed: done.replayed,
        }))
    }

    async fn get_carrier_statement(
        &self,
        request: Request<proto::GetCarrierStatementRequest>,
    ) -> Result<Response<proto::CarrierStatement>, Status> {
        let (carrier, month, after, limit) = requests::carrier_month_statement(request.get_ref())?;
        let lines = self.engine.carrier_statement(&carrier, month, after.as_ref(), limit).await?;
        Ok(Response::new(convert::carrier_statement_to_proto(&carrier, month, &lines, limit)))
    }

    async fn get_trade_history(
        &self,
        request: Request<proto::GetTradeHistoryRequest>,
    ) -> Result<Response<proto::TradeHistory>, Status> {
        let id = requests::trade_history(request.get_ref())?;
        match self.engine.trade_history(&id).await.map_err(ApiError::from)? {
            Some(history) => Ok(Response::new(convert::trade_history_to_proto(&history, self.engine.secret()))),
            None => Err(ApiError::NotFound("trade").into()),
        }
    }

    async fn list_shops(
        &self,
        request: Request<proto::ListShopsRequest>,
    ) -> Result<Response<proto::ListShopsResponse>, Status> {
        let (after, limit) = requests::list_shops(request.get_ref())?;
        let shops = self.engine.shops(after.as_ref(), limit).await.map_err(ApiError::from)?;
        let next = match shops.last() {
            Some(last) if shops.len() == limit => last.shop.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListShopsResponse {
            shops: shops.iter().map(convert::shop_info).collect(),
            next_after_shop_id: next,
        }))
    }

    async fn list_carriers(
        &self,
        request: Request<proto::ListCarriersRequest>,
    ) -> Result<Response<proto::ListCarriersResponse>, Status> {
        let (after, limit) = requests::list_carriers(request.get_ref())?;
        let carriers = self.engine.carriers(after.as_ref(), limit).await.map_err(ApiError::from)?;
        let next = match carriers.last() {
            Some(last) if carriers.len() == limit => last.id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListCarriersResponse {
            carriers: carriers.iter().map(convert::carrier_info).collect(),
            next_after_carrier_id: next,
        }))
    }

    async fn suspend_shop(
        &self,
        request: Request<proto::SuspendShopRequest>,
    ) -> Result<Response<proto::ShopInfo>, Status> {
        let shop = requests::shop_acceptance(&request.get_ref().shop_id)?;
        let status = self.engine.set_shop_suspended(&shop, true).await?;
        Ok(Response::new(convert::shop_info(&status)))
    }

    async fn resume_shop(
        &self,
        request: Request<proto::ResumeShopRequest>,
    ) -> Result<Response<proto::ShopInfo>, Status> {
        let shop = requests::shop_acceptance(&request.get_ref().shop_id)?;
        let status = self.engine.set_shop_suspended(&shop, false).await?;
        Ok(Response::new(convert::shop_info(&status)))
    }

    async fn rotate_credential(
        &self,
        request: Request<proto::RotateCredentialRequest>,
    ) -> Result<Response<proto::RotateCredentialResponse>, Status> {
        let party = requests::rotate_credential(request.get_ref())?;
        let prefix = match &party {
            crate::domain::Principal::Carrier(_) => "carrier",
            crate::domain::Principal::Shop(_) | crate::domain::Principal::Admin => "shop",
        };
        let token = new_token(prefix)?;
        self.engine.rotate_credential(&party, token_hash(&token)).await?;
        Ok(Response::new(proto::RotateCredentialResponse { token }))
    }
}
