//! `AdminService`: the operator's API: shops, carriers, wallet top-ups,
//! accounts, postings and ledger verification. Each handler validates its
//! request, calls one engine use case and presents the result.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto::{self, admin_service_server::AdminService};

use super::auth::{new_token, token_hash};
use super::convert;
use super::engine::Engine;
use super::error::ApiError;
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
        let requests::NewCarrier { id, display_name, prefixes, fee_bps } = requests::create_carrier(request.get_ref())?;
        let token = new_token("carrier")?;
        let carrier = self.engine.create_carrier(id, display_name, prefixes, fee_bps, token_hash(&token)).await?;
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
}
