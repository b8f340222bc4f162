//! Network identity in the sled backend: carrier prefixes (longest-prefix
//! match by point reads over the prefix lengths in use), lease records (a
//! reverse range scan per lookup), shop acceptance, and resolving a
//! network identity for a shop.
//!
//! Range scans are not available inside a sled transaction, so the two
//! operations that need one — the overlap check of new prefixes and the
//! lease lookup of a network-identity trade — run on the writer thread just
//! before the write's transaction (`WriteOp::prepare`). The writer is the
//! only writer, so what they read is exactly what the transaction sees.

use crate::domain::{CarrierId, IpKey, IpPrefix, PortRange, ResolveMode, ShopId, SubscriberNumber, UnixMs};
use crate::store::records::{CarrierRecord, NetworkIdentity, ShopRecord, SubscriberRecord};
use crate::store::{
    AcceptanceRefusal, AddPrefixesRefusal, Failure, LeaseList, LeaseRefusal, LeaseReport, LeasesRecorded, NoRefusal,
    PrefixOverlap, Resolution, Route,
};

use super::codec::{self, CarrierTerms, LeaseMark, LeaseRecord, PrefixRecord};
use super::tx::{corrupt, refuse, Step, Tx, TxResult, T};
use super::writer::{Admissions, Cx, WriteOp};
use super::{io, keys, Shared, SledStore};

/// A lookup walks at most this many lease records of one address (older
/// than the instant asked about, newest first) looking for one whose port
/// block holds the port. Behind CGNAT every other block's newer records are
/// walked past; 4096 is far more blocks than one address has, so hitting it
/// means corrupt or hostile reports, and the lookup answers "nobody".
pub const MAX_LEASE_WALK: usize = 4096;

/// Lease records deleted per write when pruning, so one prune never holds
/// the writer long.
const DELETE_BATCH: usize = 10_000;

fn mode_of(network: &sled::Tree, carrier: &CarrierId) -> Result<ResolveMode, Failure> {
    match network.get(keys::net::resolve_mode(carrier)).map_err(io)? {
        Some(v) => codec::decode(&v),
        None => Ok(ResolveMode::Push),
    }
}

fn mode_of_tx(tx: &Tx, carrier: &CarrierId) -> TxResult<ResolveMode> {
    Ok(tx.get::<ResolveMode>(T::Network, &keys::net::resolve_mode(carrier))?.unwrap_or(ResolveMode::Push))
}

pub(crate) fn put_resolve_mode(tx: &Tx, carrier: &CarrierId, mode: ResolveMode) -> TxResult<()> {
    tx.put(T::Network, &keys::net::resolve_mode(carrier), &mode)
}

/// The carrier owning `addr`'s range, its mode, and whether it accepts
/// `shop` (plain reads: the engine asks before the trade's write).
pub(crate) fn route(shared: &Shared, addr: IpKey, shop: &ShopId) -> Result<Option<Route>, Failure> {
    let network = shared.tree(T::Network);
    let Some(owner) = carrier_of(network, addr)? else {
        return Ok(None);
    };
    let mode = mode_of(network, &owner.carrier)?;
    let accepted = network.get(keys::net::acceptance(&owner.carrier, shop)).map_err(io)?.is_some();
    Ok(Some(Route { carrier: owner.carrier, mode, accepted }))
}

/// A carrier's choice of resolve mode.
pub(crate) struct SetResolveMode {
    pub carrier: CarrierId,
    pub mode: ResolveMode,
}

impl WriteOp for SetResolveMode {
    type Output = ResolveMode;
    type Refusal = NoRefusal;

    fn apply(&self, tx: &Tx, _cx: &mut Cx, _: &Admissions) -> Step<ResolveMode, NoRefusal> {
        put_resolve_mode(tx, &self.carrier, self.mode)?;
        Ok(self.mode)
    }
}

fn lengths_in_use(bitmap: Option<&[u8]>) -> impl Iterator<Item = u8> + '_ {
    // Longest first: the first prefix found is the longest match.
    (0..=128u8).rev().filter(move |len| {
        bitmap.and_then(|b| b.get(usize::from(len / 8))).is_some_and(|byte| byte & (1 << (len % 8)) != 0)
    })
}

/// Longest-prefix match: the carrier owning `addr`, by one point read per
/// prefix length in use (at most 129, in practice a handful).
fn carrier_of(network: &sled::Tree, addr: IpKey) -> Result<Option<PrefixRecord>, Failure> {
    let bitmap = network.get(keys::net::LENGTHS).map_err(io)?;
    for len in lengths_in_use(bitmap.as_deref()) {
        if let Some(v) = network.get(keys::net::prefix(&IpPrefix::containing(addr, len))).map_err(io)? {
            return codec::decode(&v).map(Some);
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
fn lease_holder(
    leases: &sled::Tree,
    addr: IpKey,
    port: Option<u16>,
    at: UnixMs,
) -> Result<Option<(CarrierId, SubscriberNumber)>, Failure> {
    let from = keys::lease(&addr, UnixMs(0), 0, false);
    let to = keys::lease(&addr, at, u16::MAX, true);
    for item in leases.range(from..=to).rev().take(MAX_LEASE_WALK) {
        let (_, v) = item.map_err(io)?;
        let record: LeaseRecord = codec::decode(&v)?;
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
pub(crate) fn resolve(shared: &Shared, shop: &ShopId, id: &NetworkIdentity) -> Result<Resolution, Failure> {
    let network = shared.tree(T::Network);
    let Some(owner) = carrier_of(network, id.ip)? else {
        return Ok(Resolution::Miss);
    };
    if network.get(keys::net::acceptance(&owner.carrier, shop)).map_err(io)?.is_none() {
        return Ok(Resolution::NotAccepted);
    }
    match lease_holder(shared.tree(T::Leases), id.ip, id.port, id.observed_at)? {
        // A lease is only taken from the carrier that owns the range.
        Some((carrier, subscriber)) if carrier == owner.carrier => Ok(Resolution::Found { carrier, subscriber }),
        Some(_) | None => Ok(Resolution::Miss),
    }
}

/// Refuses prefixes that overlap another carrier's (writer thread, before
/// the transaction). A carrier's own prefixes may nest or repeat.
pub(crate) fn check_overlaps(shared: &Shared, carrier: &CarrierId, prefixes: &[IpPrefix]) -> Step<(), PrefixOverlap> {
    let network = shared.tree(T::Network);
    let bitmap = network.get(keys::net::LENGTHS).map_err(io)?;
    for (index, p) in prefixes.iter().enumerate() {
        let conflict = |other: PrefixRecord| {
            refuse(PrefixOverlap { index, prefix: *p, other: other.prefix, carrier: other.carrier })
        };
        // Existing prefixes that contain this one…
        for len in lengths_in_use(bitmap.as_deref()).filter(|l| *l <= p.len()) {
            if let Some(v) = network.get(keys::net::prefix(&IpPrefix::containing(p.network(), len))).map_err(io)? {
                let other: PrefixRecord = codec::decode(&v)?;
                if &other.carrier != carrier {
                    return conflict(other);
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
            let (_, v) = item.map_err(io)?;
            let other: PrefixRecord = codec::decode(&v)?;
            if &other.carrier != carrier && p.overlaps(&other.prefix) {
                return conflict(other);
            }
        }
        // Two new prefixes of one request belong to the same carrier.
    }
    Ok(())
}

/// Writes prefixes (already checked by `check_overlaps`) and marks their
/// lengths in use.
pub(crate) fn put_prefixes(tx: &Tx, carrier: &CarrierId, prefixes: &[IpPrefix]) -> TxResult<()> {
    let tree = tx.tree(T::Network)?;
    let mut bitmap = match tree.get(keys::net::LENGTHS)? {
        Some(v) if v.len() == 17 => v.to_vec(),
        Some(_) => return corrupt("prefix length bitmap width"),
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

pub(crate) fn put_terms(tx: &Tx, carrier: &CarrierId, fee_bps: u32) -> TxResult<()> {
    tx.put(T::Network, &keys::net::terms(carrier), &CarrierTerms { fee_bps })
}

pub(crate) fn fee_bps(tx: &Tx, carrier: &CarrierId) -> TxResult<u32> {
    Ok(tx.get::<CarrierTerms>(T::Network, &keys::net::terms(carrier))?.map_or(0, |t| t.fee_bps))
}

pub(crate) fn accepted(tx: &Tx, carrier: &CarrierId, shop: &ShopId) -> TxResult<bool> {
    Ok(tx.tree(T::Network)?.get(keys::net::acceptance(carrier, shop))?.is_some())
}

/// More prefixes for an existing carrier.
pub(crate) struct AddPrefixes {
    pub carrier: CarrierId,
    pub prefixes: Vec<IpPrefix>,
}

impl WriteOp for AddPrefixes {
    type Output = Vec<IpPrefix>;
    type Refusal = AddPrefixesRefusal;

    fn prepare(&mut self, shared: &Shared) -> Step<(), AddPrefixesRefusal> {
        check_overlaps(shared, &self.carrier, &self.prefixes).map_err(|s| s.map(AddPrefixesRefusal::Overlap))
    }

    fn groupable(&self) -> bool {
        false
    }

    fn apply(&self, tx: &Tx, _cx: &mut Cx, _: &Admissions) -> Step<Vec<IpPrefix>, AddPrefixesRefusal> {
        if tx.get::<CarrierRecord>(T::Carriers, self.carrier.as_str().as_bytes())?.is_none() {
            return refuse(AddPrefixesRefusal::UnknownCarrier);
        }
        put_prefixes(tx, &self.carrier, &self.prefixes)?;
        Ok(self.prefixes.clone())
    }
}

/// The carrier accepts (or revokes) a shop.
pub(crate) struct SetAcceptance {
    pub carrier: CarrierId,
    pub shop: ShopId,
    pub accept: bool,
}

impl WriteOp for SetAcceptance {
    type Output = bool;
    type Refusal = AcceptanceRefusal;

    fn apply(&self, tx: &Tx, _cx: &mut Cx, _: &Admissions) -> Step<bool, AcceptanceRefusal> {
        if tx.get::<ShopRecord>(T::Shops, self.shop.as_str().as_bytes())?.is_none() {
            return refuse(AcceptanceRefusal::UnknownShop);
        }
        let key = keys::net::acceptance(&self.carrier, &self.shop);
        if self.accept {
            tx.tree(T::Network)?.insert(key, &[][..])?;
        } else {
            tx.del(T::Network, &key)?;
        }
        Ok(self.accept)
    }
}

/// A batch of lease starts and stops. Every address must be in the
/// carrier's own prefixes and every subscriber the carrier's own; the first
/// entry that is not refuses the batch, named. Writing a record under an
/// existing key replaces it with the same content for a repeat.
pub(crate) struct ReportLeases {
    pub carrier: CarrierId,
    pub starts: Vec<LeaseReport>,
    pub stops: Vec<LeaseReport>,
}

impl WriteOp for ReportLeases {
    type Output = LeasesRecorded;
    type Refusal = LeaseRefusal;

    fn apply(&self, tx: &Tx, _cx: &mut Cx, _: &Admissions) -> Step<LeasesRecorded, LeaseRefusal> {
        // A carrier in ask mode keeps its leases: none is stored here. The
        // mode is read in this transaction, so a batch never lands after
        // the carrier chose ask.
        let first = self.starts.first().map(|r| (LeaseList::Starts, r.index));
        if let Some((list, index)) = first.or_else(|| self.stops.first().map(|r| (LeaseList::Stops, r.index))) {
            if mode_of_tx(tx, &self.carrier)? == ResolveMode::Ask {
                return refuse(LeaseRefusal::AskMode { list, index });
            }
        }
        for (reports, list) in [(&self.starts, LeaseList::Starts), (&self.stops, LeaseList::Stops)] {
            for r in reports {
                match carrier_of_tx(tx, r.ip)? {
                    Some(p) if p.carrier == self.carrier => {}
                    _ => return refuse(LeaseRefusal::OutsidePrefixes { list, index: r.index }),
                }
                let mark = match &r.subscriber {
                    Some(number) => {
                        match tx.get::<SubscriberRecord>(T::Subscribers, number.as_str().as_bytes())? {
                            Some(s) if s.carrier == self.carrier => {}
                            _ => return refuse(LeaseRefusal::NotOwnSubscriber { list, index: r.index }),
                        }
                        LeaseMark::Start { carrier: self.carrier.clone(), subscriber: number.clone() }
                    }
                    None => LeaseMark::Stop { carrier: self.carrier.clone() },
                };
                let key = keys::lease(&r.ip, r.at, r.ports.lo(), r.subscriber.is_some());
                tx.put(T::Leases, &key, &LeaseRecord { ports: r.ports, mark })?;
            }
        }
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(LeasesRecorded { starts: count(self.starts.len()), stops: count(self.stops.len()) })
    }
}

/// Lease records chosen by [`SledStore::prune`].
struct DeleteLeases {
    keys: Vec<Vec<u8>>,
}

impl WriteOp for DeleteLeases {
    type Output = ();
    type Refusal = crate::store::NoRefusal;

    fn apply(&self, tx: &Tx, _cx: &mut Cx, _: &Admissions) -> Step<(), Self::Refusal> {
        for k in &self.keys {
            tx.del(T::Leases, k)?;
        }
        Ok(())
    }
}

impl SledStore {
    /// Who held `addr` (and `port`) at `at`, if anyone.
    pub(crate) fn lookup_lease(
        &self,
        addr: IpKey,
        port: Option<u16>,
        at: UnixMs,
    ) -> Result<Option<(CarrierId, SubscriberNumber)>, Failure> {
        lease_holder(self.tree(T::Leases), addr, port, at)
    }

    /// A plain point read of one lease key, as the lease benchmark's
    /// baseline.
    #[doc(hidden)]
    pub fn lease_point_read(&self, addr: IpKey, at: UnixMs, port_lo: u16) -> Result<bool, Failure> {
        Ok(self.tree(T::Leases).get(keys::lease(&addr, at, port_lo, true)).map_err(io)?.is_some())
    }

    /// Deletes lease records that no lookup may reach any more: for each
    /// address and port range, every record older than `cutoff` except the
    /// newest such one (which still answers lookups at or after `cutoff`).
    /// Lookups older than `cutoff` are refused at the edge. Scans outside
    /// the writer (deleting a record already superseded stays correct
    /// whatever is added meanwhile) and deletes in bounded writes.
    pub(crate) async fn prune(&self, cutoff: UnixMs) -> Result<u64, Failure> {
        let mut doomed: Vec<Vec<u8>> = Vec::new();
        let mut deleted = 0u64;
        // Newest record older than the cutoff per (port range) of the
        // current address: (ports, key).
        let mut current_addr: Option<[u8; 16]> = None;
        let mut newest: Vec<(PortRange, Vec<u8>)> = Vec::new();
        for item in self.tree(T::Leases).iter() {
            let (k, v) = item.map_err(io)?;
            let (Some(addr), Some(at)) = (k.get(..16), k.get(16..24)) else {
                return Err(Failure::Corrupt("lease key width".into()));
            };
            let addr: [u8; 16] = addr.try_into().map_err(|_| Failure::Corrupt("lease key".into()))?;
            let at = u64::from_be_bytes(at.try_into().map_err(|_| Failure::Corrupt("lease key".into()))?);
            if current_addr != Some(addr) {
                current_addr = Some(addr);
                newest.clear();
            }
            if at >= cutoff.0 {
                continue;
            }
            let record: LeaseRecord = codec::decode(&v)?;
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

    async fn delete_leases(&self, keys: Vec<Vec<u8>>) -> Result<u64, Failure> {
        let n = u64::try_from(keys.len()).unwrap_or(u64::MAX);
        super::never_refused(self.write(DeleteLeases { keys }).await)?;
        Ok(n)
    }
}
