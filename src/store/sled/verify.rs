//! The sled backend's view for ledger verification: its trees as they are
//! on the writer thread, between two write groups, so the checks see one
//! consistent state.

use super::codec::Record;

use crate::domain::{AccountName, CarrierId, Currency, Month, ShopId, SubscriberNumber, TradeId, UnixMs};
use crate::store::records::{
    AccountRecord, BillLine, CapUsage, PayoutEntry, PayoutRecord, PostingRecord, RegisterRecord, RemittanceRecord,
    TradeRecord,
};
use crate::store::verify::LedgerView;
use crate::store::Failure;

use super::tx::T;
use super::{codec, io, keys, Shared};

pub(crate) struct View<'a>(pub &'a Shared);

impl View<'_> {
    fn each<V: Record>(
        &self,
        items: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
        visit: &mut dyn FnMut(sled::IVec, V) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        for item in items {
            let (k, v) = item.map_err(io)?;
            visit(k, codec::decode(&v)?)?;
        }
        Ok(())
    }
}

impl LedgerView for View<'_> {
    /// The cap use's own key: `U ‖ carrier 0 number 0 ‖ currency ‖ month`.
    type CapKey = Vec<u8>;

    fn for_each_posting(&self, visit: &mut dyn FnMut(PostingRecord) -> Result<(), Failure>) -> Result<(), Failure> {
        self.each(self.0.tree(T::Postings).iter(), &mut |_, p| visit(p))
    }

    fn for_each_account(
        &self,
        visit: &mut dyn FnMut(AccountRecord, bool) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        self.each(self.0.tree(T::Accounts).iter(), &mut |k, a: AccountRecord| {
            let under_its_name = k.as_ref() == keys::account(&a.name).as_slice();
            visit(a, under_its_name)
        })
    }

    fn account(&self, name: &AccountName) -> Result<Option<AccountRecord>, Failure> {
        self.0.get(T::Accounts, &keys::account(name))
    }

    fn for_each_bill_line(&self, visit: &mut dyn FnMut(BillLine) -> Result<(), Failure>) -> Result<(), Failure> {
        self.each(self.0.tree(T::Network).scan_prefix(b"B"), &mut |_, l| visit(l))
    }

    fn cap_key(&self, carrier: &CarrierId, number: &SubscriberNumber, currency: Currency, month: Month) -> Vec<u8> {
        keys::net::cap_usage(carrier, number, currency, month)
    }

    fn for_each_cap_use(&self, visit: &mut dyn FnMut(Vec<u8>, CapUsage) -> Result<(), Failure>) -> Result<(), Failure> {
        self.each(self.0.tree(T::Network).scan_prefix(b"U"), &mut |k, u| visit(k.to_vec(), u))
    }

    fn trade(&self, id: &TradeId) -> Result<Option<TradeRecord>, Failure> {
        self.0.get(T::Trades, id.as_bytes())
    }

    fn for_each_trade(&self, visit: &mut dyn FnMut(TradeRecord) -> Result<(), Failure>) -> Result<(), Failure> {
        self.each(self.0.tree(T::Trades).iter(), &mut |_, t| visit(t))
    }

    fn has_deadline(&self, trade: &TradeRecord) -> Result<bool, Failure> {
        self.0.tree(T::Deadlines).contains_key(keys::deadline(trade.expires_at, &trade.id)).map_err(io)
    }

    fn for_each_register(&self, visit: &mut dyn FnMut(RegisterRecord) -> Result<(), Failure>) -> Result<(), Failure> {
        self.each(self.0.tree(T::Registers).iter(), &mut |_, r| visit(r))
    }

    fn for_each_payout(&self, visit: &mut dyn FnMut(PayoutRecord) -> Result<(), Failure>) -> Result<(), Failure> {
        self.each(self.0.tree(T::Network).scan_prefix(b"O"), &mut |_, p| visit(p))
    }

    /// Entries are `S ‖ shop 0 ‖ at (8) ‖ set (8)`: the shop and instant
    /// come from the key.
    fn for_each_payout_entry(
        &self,
        visit: &mut dyn FnMut(ShopId, UnixMs, PayoutEntry) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        self.each(self.0.tree(T::Network).scan_prefix(b"S"), &mut |k, e| {
            let bad = || Failure::Corrupt("payout entry key".into());
            let rest = k.get(1..).ok_or_else(bad)?;
            let nul = rest.iter().position(|b| *b == 0).ok_or_else(bad)?;
            let shop = std::str::from_utf8(&rest[..nul]).ok().and_then(|s| ShopId::parse(s).ok()).ok_or_else(bad)?;
            let at: [u8; 8] = rest.get(nul + 1..nul + 9).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
            visit(shop, UnixMs(u64::from_be_bytes(at)), e)
        })
    }

    fn for_each_remittance(
        &self,
        visit: &mut dyn FnMut(RemittanceRecord) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        self.each(self.0.tree(T::Network).scan_prefix(b"R"), &mut |_, r| visit(r))
    }
}
