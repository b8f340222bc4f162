//! Shops, carriers, subscribers, handsets and registers in the sled
//! backend, with the credentials that name them.

use crate::domain::{CarrierId, Principal, RegisterId, ShopId, SubscriberNumber, UnixMs};
use crate::store::records::{CarrierRecord, HandsetRecord, RegisterRecord, ShopRecord, SubscriberRecord};
use crate::store::{
    CloseRegisterRefusal, CreateCarrierRefusal, CreateShopRefusal, EnrollHandsetRefusal, EnrollSubscriberRefusal,
    NewCarrier, NewHandset, NewRegister, NewShop, NewSubscriber, OpenRegisterRefusal,
};

use super::keys;
use super::network::{check_overlaps, put_prefixes, put_resolve_mode, put_terms};
use super::tx::{corrupt, refuse, Step, Tx, TxResult, T};
use super::writer::{Admissions, Cx, WriteOp};
use super::Shared;

impl WriteOp for NewShop {
    type Output = ShopRecord;
    type Refusal = CreateShopRefusal;

    fn apply(&self, tx: &Tx, cx: &mut Cx, _: &Admissions) -> Step<ShopRecord, CreateShopRefusal> {
        let key = self.id.as_str().as_bytes();
        if tx.get::<ShopRecord>(T::Shops, key)?.is_some() {
            return refuse(CreateShopRefusal::Exists(self.id.clone()));
        }
        let count = tx.next(b"shops")?;
        if count > u64::from(self.max_shops) {
            return refuse(CreateShopRefusal::TooMany { max: self.max_shops });
        }
        let shop = ShopRecord {
            id: self.id.clone(),
            display_name: self.display_name.clone(),
            next_event_seq: 1,
            created_at: self.now,
        };
        tx.put(T::Shops, key, &shop)?;
        tx.put(T::Credentials, &self.token_hash, &Principal::Shop(self.id.clone()))?;
        cx.heads.push((self.id.clone(), 0));
        Ok(shop)
    }
}

impl WriteOp for NewCarrier {
    type Output = CarrierRecord;
    type Refusal = CreateCarrierRefusal;

    /// Prefixes of different carriers never overlap: checked with a range
    /// scan before the transaction (which cannot scan).
    fn prepare(&mut self, shared: &Shared) -> Step<(), CreateCarrierRefusal> {
        check_overlaps(shared, &self.id, &self.prefixes).map_err(|s| s.map(CreateCarrierRefusal::Overlap))
    }

    fn groupable(&self) -> bool {
        false
    }

    fn apply(&self, tx: &Tx, _cx: &mut Cx, _: &Admissions) -> Step<CarrierRecord, CreateCarrierRefusal> {
        let key = self.id.as_str().as_bytes();
        if tx.get::<CarrierRecord>(T::Carriers, key)?.is_some() {
            return refuse(CreateCarrierRefusal::Exists(self.id.clone()));
        }
        let carrier =
            CarrierRecord { id: self.id.clone(), display_name: self.display_name.clone(), created_at: self.now };
        tx.put(T::Carriers, key, &carrier)?;
        tx.put(T::Credentials, &self.token_hash, &Principal::Carrier(self.id.clone()))?;
        put_prefixes(tx, &self.id, &self.prefixes)?;
        put_terms(tx, &self.id, self.fee_bps)?;
        put_resolve_mode(tx, &self.id, self.resolve_mode)?;
        Ok(carrier)
    }
}

impl WriteOp for NewSubscriber {
    type Output = SubscriberRecord;
    type Refusal = EnrollSubscriberRefusal;

    fn apply(&self, tx: &Tx, _cx: &mut Cx, _: &Admissions) -> Step<SubscriberRecord, EnrollSubscriberRefusal> {
        let key = self.number.as_str().as_bytes();
        if let Some(existing) = tx.get::<SubscriberRecord>(T::Subscribers, key)? {
            if existing.carrier != self.carrier {
                return refuse(EnrollSubscriberRefusal::OtherCarrier);
            }
        }
        let record = SubscriberRecord {
            number: self.number.clone(),
            carrier: self.carrier.clone(),
            funding: self.funding,
            enrolled_at: self.now,
        };
        tx.put(T::Subscribers, key, &record)?;
        Ok(record)
    }
}

/// The subscriber, if it belongs to `carrier` (another carrier's
/// subscriber is the same as none, so a carrier learns nothing of them).
pub(crate) fn own_subscriber(
    tx: &Tx,
    carrier: &CarrierId,
    number: &SubscriberNumber,
) -> TxResult<Option<SubscriberRecord>> {
    Ok(tx.get::<SubscriberRecord>(T::Subscribers, number.as_str().as_bytes())?.filter(|s| &s.carrier == carrier))
}

impl WriteOp for NewHandset {
    type Output = HandsetRecord;
    type Refusal = EnrollHandsetRefusal;

    fn apply(&self, tx: &Tx, _cx: &mut Cx, _: &Admissions) -> Step<HandsetRecord, EnrollHandsetRefusal> {
        if own_subscriber(tx, &self.carrier, &self.number)?.is_none() {
            return refuse(EnrollHandsetRefusal::UnknownSubscriber);
        }
        let record = HandsetRecord { number: self.number.clone(), public_key: self.public_key, enrolled_at: self.now };
        tx.put(T::Handsets, self.number.as_str().as_bytes(), &record)?;
        Ok(record)
    }
}

impl WriteOp for NewRegister {
    type Output = RegisterRecord;
    type Refusal = OpenRegisterRefusal;

    fn apply(&self, tx: &Tx, _cx: &mut Cx, _: &Admissions) -> Step<RegisterRecord, OpenRegisterRefusal> {
        let open_count = registers_open(tx, &self.shop)?;
        if open_count >= self.max_registers {
            return refuse(OpenRegisterRefusal::TooMany { max: self.max_registers });
        }
        let key = keys::register(&self.shop, &self.id);
        if tx.get::<RegisterRecord>(T::Registers, &key)?.is_some() {
            return corrupt("register id collision");
        }
        let record = RegisterRecord {
            id: self.id,
            shop: self.shop.clone(),
            label: self.label.clone(),
            open: true,
            opened_at: self.now,
            closed_at: None,
            open_trades: 0,
        };
        tx.put(T::Registers, &key, &record)?;
        set_registers_open(tx, &self.shop, open_count.saturating_add(1))?;
        Ok(record)
    }
}

/// Closes a register that has no open trades.
pub(crate) struct CloseRegister {
    pub shop: ShopId,
    pub id: RegisterId,
    pub now: UnixMs,
}

impl WriteOp for CloseRegister {
    type Output = RegisterRecord;
    type Refusal = CloseRegisterRefusal;

    fn apply(&self, tx: &Tx, _cx: &mut Cx, _: &Admissions) -> Step<RegisterRecord, CloseRegisterRefusal> {
        let key = keys::register(&self.shop, &self.id);
        let Some(mut record) = tx.get::<RegisterRecord>(T::Registers, &key)? else {
            return refuse(CloseRegisterRefusal::UnknownRegister);
        };
        if !record.open {
            return refuse(CloseRegisterRefusal::AlreadyClosed);
        }
        if record.open_trades > 0 {
            return refuse(CloseRegisterRefusal::OpenTrades(record.open_trades));
        }
        record.open = false;
        record.closed_at = Some(self.now);
        tx.put(T::Registers, &key, &record)?;
        let open_count = registers_open(tx, &self.shop)?;
        set_registers_open(tx, &self.shop, open_count.saturating_sub(1))?;
        Ok(record)
    }
}

/// Open registers per shop live in the meta tree under `open_registers/<shop>`.
fn registers_open(tx: &Tx, shop: &ShopId) -> TxResult<u32> {
    match tx.tree(T::Meta)?.get(keys::open_registers(shop))? {
        Some(v) => match <[u8; 4]>::try_from(v.as_ref()) {
            Ok(b) => Ok(u32::from_be_bytes(b)),
            Err(_) => corrupt("open register count width"),
        },
        None => Ok(0),
    }
}

fn set_registers_open(tx: &Tx, shop: &ShopId, n: u32) -> TxResult<()> {
    tx.tree(T::Meta)?.insert(keys::open_registers(shop), &n.to_be_bytes())?;
    Ok(())
}
