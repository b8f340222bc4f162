//! VerifyLedger's remittance checks on a real sled store, each seen
//! failing on an inconsistency planted in the trees below the boundary:
//! a record that disagrees with its postings, a remittance set without
//! its record, a remittance beyond what is owed (postings and totals
//! consistent), and payout entries that disagree with the carrier's bills
//! and fees. (The semantics on every backend: `tests/remittance.rs`.)

use std::sync::Arc;

use super::*;
use crate::domain::{Amount, Month};
use crate::store::fixture::{billed_month, jpy, BilledMonth, FEB_2027};
use crate::store::records::RemittanceRecord;
use crate::store::{NewRemittance, PayoutEntry, Store};

struct R {
    _dir: tempfile::TempDir,
    sled: SledStore,
    store: Store,
    m: BilledMonth,
}

async fn world() -> R {
    let dir = tempfile::tempdir().expect("tempdir");
    let sled = SledStore::open(StoreConfig::new(dir.path())).expect("open");
    let store: Store = Arc::new(sled.clone());
    let m = billed_month(store.clone()).await;
    R { _dir: dir, sled, store, m }
}

impl R {
    async fn remit(&self, minor: u64) -> RemittanceRecord {
        let r = NewRemittance {
            carrier: self.m.docomo.clone(),
            shop: self.m.acme.clone(),
            month: Month::parse("2027-01").expect("month"),
            currency: jpy(),
            amount: Amount::new(minor),
            idempotency_key: "rm".into(),
            now: FEB_2027,
        };
        self.store.remit(r).await.expect("remit").remittance
    }

    async fn violations(&self) -> Vec<String> {
        self.store.verify().await.expect("verify").violations
    }

    fn key(r: &RemittanceRecord) -> Vec<u8> {
        keys::net::remittance(&r.carrier, r.month, &r.shop, r.currency, r.remittance_id)
    }

    /// Writes a remittance record behind the ledger's back.
    fn plant(&self, key: &[u8], r: &RemittanceRecord) {
        self.sled.tree(T::Network).insert(key, codec::encode(r).expect("encode")).expect("insert");
    }
}

#[tokio::test]
async fn verify_catches_a_remittance_that_disagrees_with_its_postings() {
    let w = world().await;
    let r = w.remit(5_000).await;
    assert_eq!(w.violations().await, Vec::<String>::new());
    w.plant(&R::key(&r), &RemittanceRecord { amount: Amount::new(50), ..r.clone() });
    let v = w.violations().await;
    assert!(v.iter().any(|v| v.contains("disagrees with its postings")), "{v:?}");
    assert!(v.iter().any(|v| v.contains("remittances sum to 50")), "{v:?}");
}

#[tokio::test]
async fn verify_catches_a_remittance_set_without_its_record() {
    let w = world().await;
    let r = w.remit(5_000).await;
    w.sled.tree(T::Network).remove(R::key(&r)).expect("remove");
    let v = w.violations().await;
    assert!(v.iter().any(|v| v.contains("is a remittance without a remittance record")), "{v:?}");
}

#[tokio::test]
async fn verify_catches_a_remittance_beyond_what_is_owed() {
    let w = world().await;
    let r = w.remit(5_000).await;
    // The same remittance filed under March, when nothing was owed: its
    // postings and the accounts still agree with it.
    w.sled.tree(T::Network).remove(R::key(&r)).expect("remove");
    let march = RemittanceRecord { month: Month::parse("2027-03").expect("m"), ..r };
    w.plant(&R::key(&march), &march);
    let v = w.violations().await;
    assert_eq!(v, vec!["carrier docomo remitted 5000 JPY to shop acme for 2027-03 but owed 0".to_owned()]);
}

#[tokio::test]
async fn verify_catches_payout_entries_that_disagree_with_the_bills() {
    let w = world().await;
    assert_eq!(w.violations().await, Vec::<String>::new());
    // Raise beta's settlement entry by one.
    let prefix = [&b"S"[..], w.m.beta.as_str().as_bytes(), b"\0"].concat();
    let (k, v) = w.sled.tree(T::Network).scan_prefix(&prefix).next().expect("an entry").expect("read");
    let PayoutEntry::Settlement { trade, carrier, currency, gross, fee } = codec::decode(&v).expect("decode") else {
        panic!("beta's first entry is its sale");
    };
    let planted = PayoutEntry::Settlement { trade, carrier, currency, gross: Amount::new(gross.minor() + 1), fee };
    w.sled.tree(T::Network).insert(k, codec::encode(&planted).expect("encode")).expect("insert");
    let v = w.violations().await;
    assert_eq!(
        v,
        vec!["carrier docomo's billed sales in JPY net 16076 by the payout entries but 16075 by its bills and fees"
            .to_owned()]
    );
}

#[tokio::test]
async fn verify_catches_a_zero_remittance_in_a_currency_no_account_holds() {
    let w = world().await;
    let r = w.remit(5_000).await;
    let usd = crate::domain::Currency::parse("USD").expect("usd");
    let planted = RemittanceRecord { remittance_id: 9_999, amount: Amount::ZERO, currency: usd, ..r };
    w.plant(&R::key(&planted), &planted);
    let v = w.violations().await;
    for want in [
        "remittance 9999 has no posting set",
        "remittance 9999 is of zero",
        "carrier docomo's remittances in USD sum to 0 but no remitted account holds them",
        "remittances in USD sum to 0 but no remittance account holds them",
    ] {
        assert!(v.iter().any(|v| v == want), "want {want:?} in {v:?}");
    }
}
