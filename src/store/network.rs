//! Network identity and carrier billing in the store: carrier prefixes
//! (longest-prefix match by point reads over the prefix lengths in use),
//! lease records (a reverse range scan per lookup), shop acceptance, cap
//! use, bill lines and payout entries.
//!
//! Range scans are not available inside a sled transaction, so the two
//! operations that need one — the overlap check of new prefixes and the
//! lease lookup of a network-identity trade — run on the writer thread
//! just before the command's transaction (`prepare`). The writer is the
//! only writer, so what they read is exactly what the transaction sees.

use crate::domain::{
    carrier_fee, Amount, CarrierId, Currency, IpKey, IpPrefix, Month, PortRange, ShopId, SubscriberNumber, TradeId,
    UnixMs,
};

use super::commands::{abort, Tx, TxResult};
use super::records::{
    self, BillLine, CapUsage, CarrierTerms, LeaseMark, LeaseRecord, NetworkIdentity, PayoutEntry, PrefixRecord,
    SubscriberRecord,
};
use super::{keys, Shared, Store, StoreError, T};

/// A lookup walks at most this many lease records of one address (older
/// than the instant asked about, newest first) looking for one whose port
/// block holds the port. Behind CGNAT every other block's newer records are
/// walked past; 4096 is far more blocks than one address has, so hitting it
/// means corrupt or hostile reports, and the lookup answers "nobody".
pub const MAX_LEASE_WALK: usize = 4096;

/// One lease start or stop, validated at the edge; `index` is its position
/// in the request, for error messages.
#[derive(Debug, Clone)]
pub struct LeaseReport {
    pub ip: IpKey,
    pub ports: PortRange,
    pub at: UnixMs,
    /// `Some` for a start.
    pub subscriber: Option<SubscriberNumber>,
    pub index: usize,
}

/// What a network identity resolved to, or why it did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Found {
        carrier: CarrierId,
        subscriber: SubscriberNumber,
    },
    /// The address is in a carrier's range but that carrier has not
    /// accepted the shop.
    NotAccepted,
    /// No carrier owns the range, or nobody held the address (and port)
    /// at that instant. One variant for both, so no answer tells them apart.
    Miss,
}

fn lengths_in_use(bitmap: Option<&[u8]>) -> impl Iterator<Item = u8> + '_ {
    // Longest first: the first prefix found is the longest match.
    (0..=128u8).rev().filter(move |len| {
        bitmap.and_then(|b| b.get(usize::from(len / 8))).is_some_and(|byte| byte & (1 << (len % 8)) != 0)
    })
}

/// Longest-prefix match: the carrier owning `addr`, by one point read per
/// prefix length in use (at most 129, in practice a handful).
pub(crate) fn carrier_of(shared_network: &sled::Tree, addr: IpKey) -> Result<Option<PrefixRecord>, StoreError> {
    let bitmap = shared_network.get(keys::net::LENGTHS)?;
    for len in lengths_in_use(bitmap.as_deref()) {
        if let Some(v) = shared_network.get(keys::net::prefix(&IpPrefix::containing(addr, len)))? {
            return records::decode(&v).map(Some);
        }
    }
    Ok(None)
}

fn carrier_of_tx(tx: &Tx, addr: IpKey) -> TxResult<Option<PrefixRecord>> {
    let bitmap = tx.tree(T::Network)?.get(keys::net::LENGTHS)?;
    for len in lengths_in_use(bitmap.as_deref()) {
        if let Some(p) = tx.get::<PrefixRecord>(T::Network, &keys::net::prefix(&IpPrefix::containing(addr, len)))? {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Who held `addr` (and `port`) at `at`: the newest lease record at or
/// before `at` whose port range answers the port decides — a start names
/// the holder, a stop means nobody. Older records are superseded by it.
pub(crate) fn lease_holder(
    leases: &sled::Tree,
    addr: IpKey,
    port: Option<u16>,
    at: UnixMs,
) -> Result<Option<(CarrierId, SubscriberNumber)>, StoreError> {
    let from = keys::lease(&addr, UnixMs(0), 0, false);
    let to = keys::lease(&addr, at, u16::MAX, true);
    for item in leases.range(from..=to).rev().take(MAX_LEASE_WALK) {
        let (_, v) = item?;
        let record: LeaseRecord = records::decode(&v)?;
        if !record.ports.answers(port) {
            continue;
        }
        return Ok(match record.mark {
            LeaseMark::Start { carrier, subscriber } => Some((carrier, subscriber)),
            LeaseMark::Stop { .. } => None,
        });
    }
    Ok(None)
}

/// Resolves a network identity for `shop` (writer thread, before the
/// transaction). Acceptance is checked before the lease: an unaccepted shop
/// learns only that the address is in some carrier's range (public routing
/// data), never whether anyone held it.
pub(crate) fn resolve(shared: &Shared, shop: &ShopId, id: &NetworkIdentity) -> Result<Resolution, StoreError> {
    let network = &shared.trees[T::Network as usize];
    let Some(owner) = carrier_of(network, id.ip)? else {
        return Ok(Resolution::Miss);
    };
    if network.get(keys::net::acceptance(&owner.carrier, shop))?.is_none() {
        return Ok(Resolution::NotAccepted);
    }
    match lease_holder(&shared.trees[T::Leases as usize], id.ip, id.port, id.observed_at)? {
        // A lease is only taken from the carrier that owns the range.
        Some((carrier, subscriber)) if carrier == owner.carrier => Ok(Resolution::Found { carrier, subscriber }),
        Some(_) | None => Ok(Resolution::Miss),
    }
}

/// Refuses prefixes that overlap another carrier's (writer thread, before
/// the transaction). A carrier's own prefixes may nest or repeat.
pub(crate) fn check_overlaps(shared: &Shared, carrier: &CarrierId, prefixes: &[IpPrefix]) -> Result<(), StoreError> {
    let network = &shared.trees[T::Network as usize];
    let bitmap = network.get(keys::net::LENGTHS)?;
    for (i, p) in prefixes.iter().enumerate() {
        let conflict = |other: &PrefixRecord| {
            StoreError::FailedPrecondition(format!(
                "ip_prefixes[{i}]: {p} overlaps {} of carrier {}",
                other.prefix, other.carrier
            ))
        };
        // Existing prefixes that contain this one…
        for len in lengths_in_use(bitmap.as_deref()).filter(|l| *l <= p.len()) {
            if let Some(v) = network.get(keys::net::prefix(&IpPrefix::containing(p.network(), len)))? {
                let other: PrefixRecord = records::decode(&v)?;
                if &other.carrier != carrier {
                    return Err(conflict(&other));
                }
            }
        }
        // …and those inside it: their networks sort between its first and
        // last address.
        let mut from = vec![b'P'];
        from.extend_from_slice(&p.network().0);
        let mut to = vec![b'P'];
        to.extend_from_slice(&p.last().0);
        to.push(u8::MAX);
        for item in network.range(from..=to) {
            let (_, v) = item?;
            let other: PrefixRecord = records::decode(&v)?;
            if &other.carrier != carrier && p.overlaps(&other.prefix) {
                return Err(conflict(&other));
            }
        }
        // Two new prefixes of one request belong to the same carrier.
    }
    Ok(())
}

/// Writes prefixes (already checked by `check_overlaps`) and marks their
/// lengths in use.
pub(super) fn put_prefixes(tx: &Tx, carrier: &CarrierId, prefixes: &[IpPrefix]) -> TxResult<()> {
    let tree = tx.tree(T::Network)?;
    let mut bitmap = match tree.get(keys::net::LENGTHS)? {
        Some(v) if v.len() == 17 => v.to_vec(),
        Some(_) => return abort(StoreError::Corrupt("prefix length bitmap width".into())),
        None => vec![0u8; 17],
    };
    for p in prefixes {
        let slot = usize::from(p.len() / 8);
        if let Some(byte) = bitmap.get_mut(slot) {
            *byte |= 1 << (p.len() % 8);
        }
        tx.put(T::Network, &keys::net::prefix(p), &PrefixRecord { carrier: carrier.clone(), prefix: *p })?;
    }
    tree.insert(keys::net::LENGTHS, bitmap)?;
    Ok(())
}

pub(super) fn put_terms(tx: &Tx, carrier: &CarrierId, fee_bps: u32) -> TxResult<()> {
    tx.put(T::Network, &keys::net::terms(carrier), &CarrierTerms { fee_bps })
}

pub(super) fn fee_bps(tx: &Tx, carrier: &CarrierId) -> TxResult<u32> {
    Ok(tx.get::<CarrierTerms>(T::Network, &keys::net::terms(carrier))?.map_or(0, |t| t.fee_bps))
}

pub(super) fn accepted(tx: &Tx, carrier: &CarrierId, shop: &ShopId) -> TxResult<bool> {
    Ok(tx.tree(T::Network)?.get(keys::net::acceptance(carrier, shop))?.is_some())
}

pub(super) fn set_acceptance(tx: &Tx, carrier: &CarrierId, shop: &ShopId, accept: bool) -> TxResult<()> {
    if tx.get::<records::ShopRecord>(T::Shops, shop.as_str().as_bytes())?.is_none() {
        return abort(StoreError::NotFound("shop"));
    }
    let key = keys::net::acceptance(carrier, shop);
    if accept {
        tx.tree(T::Network)?.insert(key, &[][..])?;
    } else {
        tx.del(T::Network, &key)?;
    }
    Ok(())
}

/// Records a batch of lease starts and stops. Every address must be in the
/// carrier's own prefixes and every subscriber the carrier's own; the
/// first entry that is not aborts the batch, named. Writing a record under
/// an existing key replaces it with the same content for a repeat.
pub(super) fn report_leases(
    tx: &Tx,
    carrier: &CarrierId,
    starts: &[LeaseReport],
    stops: &[LeaseReport],
) -> TxResult<(u32, u32)> {
    for (list, name) in [(starts, "starts"), (stops, "stops")] {
        for r in list {
            match carrier_of_tx(tx, r.ip)? {
                Some(p) if &p.carrier == carrier => {}
                _ => {
                    return abort(StoreError::FailedPrecondition(format!(
                        "{name}[{}].ip: the address is not in this carrier's prefixes",
                        r.index
                    )))
                }
            }
            let mark = match &r.subscriber {
                Some(number) => {
                    match tx.get::<SubscriberRecord>(T::Subscribers, number.as_str().as_bytes())? {
                        Some(s) if &s.carrier == carrier => {}
                        _ => {
                            return abort(StoreError::FailedPrecondition(format!(
                                "{name}[{}].subscriber_number: not a subscriber of this carrier",
                                r.index
                            )))
                        }
                    }
                    LeaseMark::Start { carrier: carrier.clone(), subscriber: number.clone() }
                }
                None => LeaseMark::Stop { carrier: carrier.clone() },
            };
            let key = keys::lease(&r.ip, r.at, r.ports.lo(), r.subscriber.is_some());
            tx.put(T::Leases, &key, &LeaseRecord { ports: r.ports, mark })?;
        }
    }
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    Ok((count(starts.len()), count(stops.len())))
}

/// The carrier-billed half of a settlement, decided before any posting:
/// `Ok(None)` if the cap allows the charge.
pub(super) struct BillCharge {
    pub bill: crate::domain::AccountName,
    pub fee: Amount,
    pub fee_bps: u32,
    pub usage_key: Vec<u8>,
    pub usage: CapUsage,
    pub month: Month,
}

/// Checks the monthly cap for a charge of `amount` settled at `now`;
/// `None` means the charge would exceed it (or is in another currency than
/// the bill, whose cap in that currency is zero).
#[allow(clippy::too_many_arguments)]
pub(super) fn plan_charge(
    tx: &Tx,
    carrier: &CarrierId,
    number: &SubscriberNumber,
    bill_currency: Currency,
    cap: Amount,
    amount: Amount,
    currency: Currency,
    now: UnixMs,
) -> TxResult<Option<BillCharge>> {
    if currency != bill_currency {
        return Ok(None);
    }
    let month = Month::of(now);
    let usage_key = keys::net::cap_usage(carrier, number, currency, month);
    let used = tx.get::<CapUsage>(T::Network, &usage_key)?.map_or(Amount::ZERO, |u| u.used);
    match used.checked_add(amount) {
        Ok(total) if total <= cap => {
            let fee_bps = fee_bps(tx, carrier)?;
            Ok(Some(BillCharge {
                bill: crate::domain::AccountName::CarrierBill(carrier.clone(), number.clone(), currency),
                fee: carrier_fee(amount, fee_bps),
                fee_bps,
                usage_key,
                usage: CapUsage { cap, used: total },
                month,
            }))
        }
        _ => Ok(None),
    }
}

/// Files what a carrier-billed settlement wrote: cap use, the bill line and
/// its index by trade.
#[allow(clippy::too_many_arguments)]
pub(super) fn record_charge(
    tx: &Tx,
    plan: &BillCharge,
    carrier: &CarrierId,
    number: &SubscriberNumber,
    trade: TradeId,
    set_id: u64,
    shop: &ShopId,
    shop_name: &str,
    amount: Amount,
    currency: Currency,
    now: UnixMs,
) -> TxResult<()> {
    tx.put(T::Network, &plan.usage_key, &plan.usage)?;
    let line_key = keys::net::bill_line(carrier, number, plan.month, set_id);
    let line = BillLine {
        trade,
        set_id,
        shop: shop.clone(),
        shop_name: shop_name.to_owned(),
        amount,
        currency,
        fee: plan.fee,
        fee_bps: plan.fee_bps,
        settled_at: now,
        refunded: Amount::ZERO,
    };
    tx.put(T::Network, &line_key, &line)?;
    tx.tree(T::Network)?.insert(keys::net::bill_of_trade(&trade), line_key)?;
    Ok(())
}

/// The bill line of a carrier-billed trade, with its key.
pub(super) fn bill_line_of(tx: &Tx, trade: &TradeId) -> TxResult<Option<(Vec<u8>, BillLine)>> {
    let Some(key) = tx.tree(T::Network)?.get(keys::net::bill_of_trade(trade))? else {
        return Ok(None);
    };
    match tx.get::<BillLine>(T::Network, &key)? {
        Some(line) => Ok(Some((key.to_vec(), line))),
        None => abort(StoreError::Corrupt("bill index names a missing line".into())),
    }
}

/// A refund of a carrier-billed charge: the line records it and the cap of
/// the charge's month is freed by it.
pub(super) fn record_bill_refund(
    tx: &Tx,
    carrier: &CarrierId,
    number: &SubscriberNumber,
    line_key: &[u8],
    mut line: BillLine,
    amount: Amount,
) -> TxResult<()> {
    let month = Month::of(line.settled_at);
    let Ok(refunded) = line.refunded.checked_add(amount) else {
        return abort(StoreError::Corrupt("bill line refunds overflow".into()));
    };
    line.refunded = refunded;
    tx.put(T::Network, line_key, &line)?;
    let usage_key = keys::net::cap_usage(carrier, number, line.currency, month);
    let Some(mut usage) = tx.get::<CapUsage>(T::Network, &usage_key)? else {
        return abort(StoreError::Corrupt("a billed month has no cap use".into()));
    };
    let Ok(used) = usage.used.checked_sub(amount) else {
        return abort(StoreError::Corrupt("cap use below zero".into()));
    };
    usage.used = used;
    tx.put(T::Network, &usage_key, &usage)
}

pub(super) fn record_payout(tx: &Tx, shop: &ShopId, at: UnixMs, set_id: u64, entry: &PayoutEntry) -> TxResult<()> {
    tx.put(T::Network, &keys::net::payout(shop, at, set_id), entry)
}

/// A subscriber's bill for one month.
#[derive(Debug, Clone)]
pub struct StatementData {
    pub subscriber: SubscriberRecord,
    pub lines: Vec<BillLine>,
    pub usage: Option<CapUsage>,
}

/// Payout entries read per report at most; a longer period must be split.
pub const MAX_PAYOUT_ENTRIES: usize = 1_000_000;

impl Store {
    /// The bill of `number` at `carrier` for `month`; NOT_FOUND unless the
    /// number is the carrier's carrier-billed subscriber.
    pub async fn statement(
        &self,
        carrier: &CarrierId,
        number: &SubscriberNumber,
        month: Month,
    ) -> Result<StatementData, StoreError> {
        let subscriber: SubscriberRecord = match self.get(T::Subscribers, number.as_str().as_bytes())? {
            Some(s @ SubscriberRecord { funding: records::Funding::CarrierBill { .. }, .. })
                if &s.carrier == carrier =>
            {
                s
            }
            _ => return Err(StoreError::NotFound("carrier-billed subscriber")),
        };
        let lines = self.scan(T::Network, &keys::net::bill_month(carrier, number, month), usize::MAX)?;
        let usage = match &subscriber.funding {
            records::Funding::CarrierBill { currency, .. } => {
                self.get(T::Network, &keys::net::cap_usage(carrier, number, *currency, month))?
            }
            records::Funding::Wallet => None,
        };
        self.durable(StatementData { subscriber, lines, usage }).await
    }

    /// The shop's payout entries committed in `[from, to)`.
    pub async fn payout_entries(
        &self,
        shop: &ShopId,
        from: UnixMs,
        to: UnixMs,
    ) -> Result<Vec<PayoutEntry>, StoreError> {
        let mut out = Vec::new();
        let range = keys::net::payout(shop, from, 0)..keys::net::payout(shop, to, 0);
        for item in self.tree(T::Network).range(range) {
            if out.len() >= MAX_PAYOUT_ENTRIES {
                return Err(StoreError::LimitExceeded(format!(
                    "more than {MAX_PAYOUT_ENTRIES} payout entries in the period; ask for a shorter one"
                )));
            }
            let (_, v) = item?;
            out.push(records::decode(&v)?);
        }
        self.durable(out).await
    }

    /// Who held `addr` (and `port`) at `at`, if anyone. Synchronous: for
    /// tools and the lease benchmark; trades resolve on the writer thread.
    pub fn lease_holder(
        &self,
        addr: IpKey,
        port: Option<u16>,
        at: UnixMs,
    ) -> Result<Option<(CarrierId, SubscriberNumber)>, StoreError> {
        lease_holder(self.tree(T::Leases), addr, port, at)
    }

    /// A plain point read of one lease key, as the benchmark's baseline.
    #[doc(hidden)]
    pub fn lease_point_read(&self, addr: IpKey, at: UnixMs, port_lo: u16) -> Result<bool, StoreError> {
        Ok(self.tree(T::Leases).get(keys::lease(&addr, at, port_lo, true))?.is_some())
    }

    /// How many lease records are stored (walks the tree: for tools).
    pub fn lease_count(&self) -> usize {
        self.tree(T::Leases).len()
    }

    /// Deletes lease records that no lookup may reach any more: for each
    /// address and port range, every record older than `cutoff` except the
    /// newest such one (which still answers lookups at or after `cutoff`).
    /// Lookups older than `cutoff` are refused at the edge. Scans outside
    /// the writer (deleting a record already superseded stays correct
    /// whatever is added meanwhile) and deletes in bounded commands.
    pub async fn prune_leases(&self, cutoff: UnixMs) -> Result<u64, StoreError> {
        const DELETE_BATCH: usize = 10_000;
        let mut doomed: Vec<Vec<u8>> = Vec::new();
        let mut deleted = 0u64;
        // Newest record older than the cutoff per (port range) of the
        // current address: (ports, key).
        let mut current_addr: Option<[u8; 16]> = None;
        let mut newest: Vec<(PortRange, Vec<u8>)> = Vec::new();
        for item in self.tree(T::Leases).iter() {
            let (k, v) = item?;
            let (Some(addr), Some(at)) = (k.get(..16), k.get(16..24)) else {
                return Err(StoreError::Corrupt("lease key width".into()));
            };
            let addr: [u8; 16] = addr.try_into().map_err(|_| StoreError::Corrupt("lease key".into()))?;
            let at = u64::from_be_bytes(at.try_into().map_err(|_| StoreError::Corrupt("lease key".into()))?);
            if current_addr != Some(addr) {
                current_addr = Some(addr);
                newest.clear();
            }
            if at >= cutoff.0 {
                continue;
            }
            let record: LeaseRecord = records::decode(&v)?;
            match newest.iter_mut().find(|(p, _)| *p == record.ports) {
                // Keys ascend, so this record supersedes the one kept.
                Some((_, kept)) => doomed.push(std::mem::replace(kept, k.to_vec())),
                None => newest.push((record.ports, k.to_vec())),
            }
            if doomed.len() >= DELETE_BATCH {
                deleted += self.delete_leases(std::mem::take(&mut doomed)).await?;
            }
        }
        if !doomed.is_empty() {
            deleted += self.delete_leases(doomed).await?;
        }
        Ok(deleted)
    }

    async fn delete_leases(&self, keys: Vec<Vec<u8>>) -> Result<u64, StoreError> {
        let n = u64::try_from(keys.len()).unwrap_or(u64::MAX);
        self.execute(super::Command::DeleteLeases { keys }).await?;
        Ok(n)
    }
}
