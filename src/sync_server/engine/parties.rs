//! Shops, carriers, subscribers and their handsets, registers, and who
//! holds a credential.

use crate::domain::{CarrierId, IpPrefix, Principal, RegisterId, ShopId, SubscriberNumber};
use crate::store::{
    CarrierRecord, CloseRegisterRefusal, CreateCarrierRefusal, CreateShopRefusal, EnrollHandsetRefusal,
    EnrollSubscriberRefusal, Failure, Funding, HandsetRecord, NewCarrier, NewHandset, NewRegister, NewShop,
    NewSubscriber, OpenRegisterRefusal, RegisterRecord, ShopRecord, SubscriberRecord,
};

use super::super::limits::MAX_LIST;
use super::{now, Engine, EngineError};

impl Engine {
    /// A new shop, known by the hash of its credential.
    pub async fn create_shop(
        &self,
        id: ShopId,
        display_name: String,
        token_hash: [u8; 32],
    ) -> Result<ShopRecord, EngineError<CreateShopRefusal>> {
        let shop = NewShop { id, display_name, token_hash, max_shops: self.limits.max_shops, now: now() };
        let created = self.store.create_shop(shop).await?;
        tracing::info!(shop = %created.id, "shop created");
        Ok(created)
    }

    /// A new carrier with the prefixes it leases and its fee on billed
    /// charges, known by the hash of its credential.
    pub async fn create_carrier(
        &self,
        id: CarrierId,
        display_name: String,
        prefixes: Vec<IpPrefix>,
        fee_bps: u32,
        resolve_mode: crate::domain::ResolveMode,
        token_hash: [u8; 32],
    ) -> Result<CarrierRecord, EngineError<CreateCarrierRefusal>> {
        let carrier = NewCarrier { id, display_name, token_hash, prefixes, fee_bps, resolve_mode, now: now() };
        let created = self.store.create_carrier(carrier).await?;
        tracing::info!(carrier = %created.id, resolve_mode = resolve_mode.name(), "carrier created");
        Ok(created)
    }

    pub async fn enroll_subscriber(
        &self,
        carrier: CarrierId,
        number: SubscriberNumber,
        funding: Funding,
    ) -> Result<SubscriberRecord, EngineError<EnrollSubscriberRefusal>> {
        Ok(self.store.enroll_subscriber(NewSubscriber { carrier, number, funding, now: now() }).await?)
    }

    pub async fn enroll_handset(
        &self,
        carrier: CarrierId,
        number: SubscriberNumber,
        public_key: [u8; 32],
    ) -> Result<HandsetRecord, EngineError<EnrollHandsetRefusal>> {
        Ok(self.store.enroll_handset(NewHandset { carrier, number, public_key, now: now() }).await?)
    }

    /// Opens a register with a fresh id.
    pub async fn open_register(
        &self,
        shop: ShopId,
        label: String,
    ) -> Result<RegisterRecord, EngineError<OpenRegisterRefusal>> {
        let id = RegisterId::generate().map_err(|e| EngineError::Internal(e.to_string()))?;
        let register =
            NewRegister { shop, id, label, max_registers: self.limits.max_open_registers_per_shop, now: now() };
        Ok(self.store.open_register(register).await?)
    }

    pub async fn close_register(
        &self,
        shop: &ShopId,
        id: RegisterId,
    ) -> Result<RegisterRecord, EngineError<CloseRegisterRefusal>> {
        Ok(self.store.close_register(shop, id, now()).await?)
    }

    /// The shop's registers, open and closed (one page).
    pub async fn registers(&self, shop: &ShopId) -> Result<Vec<RegisterRecord>, Failure> {
        self.store.registers(shop, MAX_LIST).await
    }

    /// Who holds a credential (by SHA-256 of its token).
    pub fn principal(&self, token_hash: &[u8; 32]) -> Result<Option<Principal>, Failure> {
        self.store.principal(token_hash)
    }

    /// Whether the shop or carrier a certificate names exists.
    pub fn party_exists(&self, principal: &Principal) -> Result<bool, Failure> {
        self.store.party_exists(principal)
    }
}
