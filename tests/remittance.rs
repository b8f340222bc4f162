//! Carrier remittances on the store itself, on every backend of
//! `common/backends.rs`: a remittance moves exactly its amount from the
//! system remittance account to the carrier's remitted account, never
//! more than the carrier owes the shop for the month (concurrent ones
//! included), an idempotent retry returns the original and a conflicting
//! one names the field; the carrier statement pages by shop and its sums
//! equal the ledger; and, on PostgreSQL, VerifyLedger's payout and
//! remittance checks each fail on an inconsistency planted with SQL
//! (the sled backend's planted tests are in `src/store/sled/remit_tests.rs`
//! and `payout_tests.rs`, which reach its trees).

mod common;

use std::sync::Arc;

use common::backends::{backends, pg_url, BackendFactory, Fsync, POSTGRES};
use syncpay::domain::{AccountName, Amount, Currency, Month, UnixMs};
use syncpay::store::fixture::{billed_month, jpy, BilledMonth, FEB_2027};
use syncpay::store::{
    CarrierStatementLine, CarrierStatementRefusal, NewPayout, NewRemittance, PayoutAmount, RemittanceField,
    RemittanceRefusal, Remitted, Store, StoreError,
};

/// 2027-02-10: after January ended (the store does not check that; the
/// engine does, see tests/operator.rs).
const REMITTED_AT: UnixMs = FEB_2027;

struct World {
    _dir: tempfile::TempDir,
    store: Store,
    m: BilledMonth,
}

async fn world(backend: &BackendFactory) -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = (backend.open)(dir.path(), Fsync::Off);
    let m = billed_month(store.clone()).await;
    World { _dir: dir, store, m }
}

fn jan() -> Month {
    Month::parse("2027-01").expect("month")
}

impl World {
    fn remittance(&self, minor: u64, key: &str) -> NewRemittance {
        NewRemittance {
            carrier: self.m.docomo.clone(),
            shop: self.m.acme.clone(),
            month: jan(),
            currency: jpy(),
            amount: Amount::new(minor),
            idempotency_key: key.to_owned(),
            now: REMITTED_AT,
        }
    }

    async fn remit(&self, minor: u64, key: &str) -> Result<Remitted, StoreError<RemittanceRefusal>> {
        self.store.remit(self.remittance(minor, key)).await
    }

    async fn net(&self, name: AccountName) -> i128 {
        self.store.account(&name).await.expect("read").map_or(0, |a| a.balance.net())
    }

    async fn violations(&self) -> Vec<String> {
        self.store.verify().await.expect("verify").violations
    }

    async fn statement(&self, month: Month, after: Option<&str>, limit: usize) -> Vec<CarrierStatementLine> {
        let after = after.map(|a| syncpay::domain::ShopId::parse(a).expect("shop"));
        self.store.carrier_statement(&self.m.docomo, month, after.as_ref(), limit).await.expect("statement")
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T, StoreError<RemittanceRefusal>>) -> RemittanceRefusal {
    match r {
        Err(StoreError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_remittance_moves_exactly_its_amount_and_never_more_than_is_owed() {
    for backend in backends() {
        let w = world(backend).await;
        assert_eq!(w.violations().await, Vec::<String>::new(), "{backend:?}: the month verifies");
        let first = w.remit(5_000, "rm-1").await.expect("remit");
        assert!(!first.replayed);
        assert_eq!(first.remittance.amount, Amount::new(5_000));
        assert_eq!(first.remittance.reference, format!("SYNCPAY-RM-{:011}", first.remittance.remittance_id));
        assert_eq!(first.line.sales.owed(), i128::from(BilledMonth::ACME_JAN_OWED), "{backend:?}");
        assert_eq!(first.line.remitted, 5_000);
        assert_eq!(first.line.outstanding(), 6_200);
        // More than the rest is refused and names what is outstanding.
        assert_eq!(
            refused(w.remit(6_201, "rm-2").await),
            RemittanceRefusal::Exceeds { outstanding: Amount::new(6_200) },
            "{backend:?}"
        );
        let second = w.remit(6_200, "rm-2").await.expect("the rest");
        assert_eq!(second.line.outstanding(), 0);
        assert_eq!(refused(w.remit(1, "rm-3").await), RemittanceRefusal::Exceeds { outstanding: Amount::ZERO });
        // February is another month: owed only its own sale.
        let feb = NewRemittance { month: Month::of(FEB_2027), ..w.remittance(976, "rm-feb") };
        assert_eq!(
            refused(w.store.remit(feb.clone()).await),
            RemittanceRefusal::Exceeds { outstanding: Amount::new(BilledMonth::ACME_FEB_OWED) }
        );
        // A month without sales owes nothing.
        let dec = NewRemittance { month: Month::parse("2026-12").expect("m"), ..w.remittance(1, "rm-dec") };
        assert_eq!(refused(w.store.remit(dec).await), RemittanceRefusal::Exceeds { outstanding: Amount::ZERO });
        // Unknown parties.
        let nobody = NewRemittance {
            carrier: syncpay::domain::CarrierId::parse("nobody").expect("id"),
            ..w.remittance(1, "rm-x")
        };
        assert_eq!(refused(w.store.remit(nobody).await), RemittanceRefusal::UnknownCarrier);
        let noshop =
            NewRemittance { shop: syncpay::domain::ShopId::parse("noshop").expect("id"), ..w.remittance(1, "rm-y") };
        assert_eq!(refused(w.store.remit(noshop).await), RemittanceRefusal::UnknownShop);

        let remitted = i128::from(BilledMonth::ACME_JAN_OWED);
        assert_eq!(w.net(AccountName::SystemRemittance(jpy())).await, -remitted, "{backend:?}");
        assert_eq!(w.net(AccountName::CarrierRemitted(w.m.docomo.clone(), jpy())).await, remitted);
        // The shop's payable is not touched: the carrier's money settles
        // what the server already credited the shop.
        assert_eq!(
            w.net(AccountName::ShopPayable(w.m.acme.clone(), jpy())).await,
            i128::from(BilledMonth::ACME_JAN_OWED + BilledMonth::ACME_FEB_OWED + 3_000)
        );
        assert_eq!(w.violations().await, Vec::<String>::new(), "{backend:?}: remittances verify");
    }
}

#[tokio::test]
async fn concurrent_remittances_never_together_exceed_what_is_owed() {
    for backend in backends() {
        let w = Arc::new(world(backend).await);
        let mut tasks = Vec::new();
        for i in 0..24 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move { w.remit(1_000, &format!("c-{i}")).await }));
        }
        let (mut ok, mut short) = (0, 0);
        for t in tasks {
            match t.await.expect("task") {
                Ok(_) => ok += 1,
                Err(StoreError::Refused(RemittanceRefusal::Exceeds { .. })) => short += 1,
                Err(e) => panic!("{backend:?}: {e:?}"),
            }
        }
        // 11 200 owed: eleven remittances of 1 000 fit, the rest do not.
        assert_eq!((ok, short), (11, 13), "{backend:?}");
        assert_eq!(w.net(AccountName::CarrierRemitted(w.m.docomo.clone(), jpy())).await, 11_000);
        assert_eq!(w.violations().await, Vec::<String>::new(), "{backend:?}");
    }
}

#[tokio::test]
async fn a_repeated_key_returns_the_original_and_a_conflicting_one_names_the_field() {
    for backend in backends() {
        let w = world(backend).await;
        let first = w.remit(4_000, "k").await.expect("remit");
        let again = w.remit(4_000, "k").await.expect("retry");
        assert!(again.replayed, "{backend:?}");
        assert_eq!(again.remittance, first.remittance);
        assert_eq!(again.line.remitted, 4_000, "{backend:?}: remitted once");
        let differs = |r| match refused(r) {
            RemittanceRefusal::Differs(f) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!(differs(w.remit(4_001, "k").await), RemittanceField::Amount);
        let other_shop = NewRemittance { shop: w.m.beta.clone(), ..w.remittance(4_000, "k") };
        assert_eq!(differs(w.store.remit(other_shop).await), RemittanceField::Shop);
        let other_month = NewRemittance { month: Month::of(FEB_2027), ..w.remittance(4_000, "k") };
        assert_eq!(differs(w.store.remit(other_month).await), RemittanceField::Month);
        let usd = Currency::parse("USD").expect("usd");
        let other_currency = NewRemittance { currency: usd, ..w.remittance(4_000, "k") };
        assert_eq!(differs(w.store.remit(other_currency).await), RemittanceField::Currency);
        // A payout key of the same text is another namespace.
        let payout = NewPayout {
            shop: w.m.acme.clone(),
            currency: jpy(),
            amount: PayoutAmount::Exact(Amount::new(1)),
            idempotency_key: "k".into(),
            now: REMITTED_AT,
        };
        w.store.payout_shop(payout).await.expect("a payout with the same key text");
        assert_eq!(w.net(AccountName::CarrierRemitted(w.m.docomo.clone(), jpy())).await, 4_000);
        assert_eq!(w.violations().await, Vec::<String>::new(), "{backend:?}");
    }
}

#[tokio::test]
async fn the_carrier_statement_pages_by_shop_and_sums_to_the_ledger() {
    for backend in backends() {
        let w = world(backend).await;
        w.remit(1_200, "s-1").await.expect("remit");
        let beta = NewRemittance { shop: w.m.beta.clone(), ..w.remittance(3_900, "s-2") };
        w.store.remit(beta).await.expect("remit beta");
        let all = w.statement(jan(), None, 1000).await;
        let view: Vec<(String, i128, u128, i128, u64)> = all
            .iter()
            .map(|l| (l.shop.to_string(), l.sales.owed(), l.remitted, l.outstanding(), l.sales.settlements))
            .collect();
        assert_eq!(
            view,
            vec![("acme".into(), 11_200, 1_200, 10_000, 2), ("beta".into(), 3_900, 3_900, 0, 1)],
            "{backend:?}: wallet sales and February are not in it"
        );
        assert_eq!((all[0].sales.gross, all[0].sales.fee, all[0].sales.refunded), (12_000, 300, 500));
        let first = w.statement(jan(), None, 1).await;
        assert_eq!(first, all[..1].to_vec(), "{backend:?}: one shop per page");
        let second = w.statement(jan(), Some("acme"), 1).await;
        assert_eq!(second, all[1..].to_vec(), "{backend:?}");
        assert!(w.statement(jan(), Some("beta"), 1).await.is_empty());
        let feb = w.statement(Month::of(FEB_2027), None, 1000).await;
        assert_eq!(feb.len(), 1);
        assert_eq!(feb[0].sales.owed(), i128::from(BilledMonth::ACME_FEB_OWED));
        // Statement totals against the ledger: all the carrier's months
        // owed = −(its bills + fees); remitted = its remitted account.
        let owed: i128 = all.iter().chain(feb.iter()).map(|l| l.sales.owed()).sum();
        let mut bills_and_fees = 0i128;
        for a in w.store.accounts("", 1000).await.expect("accounts") {
            if matches!(&a.name, AccountName::CarrierBill(c, ..) | AccountName::CarrierFees(c, _) if *c == w.m.docomo) {
                bills_and_fees += a.balance.net();
            }
        }
        assert_eq!(owed, -bills_and_fees, "{backend:?}");
        let remitted: u128 = all.iter().map(|l| l.remitted).sum();
        assert_eq!(
            w.net(AccountName::CarrierRemitted(w.m.docomo.clone(), jpy())).await,
            i128::try_from(remitted).expect("small")
        );
        let nobody = syncpay::domain::CarrierId::parse("nobody").expect("id");
        assert!(matches!(
            w.store.carrier_statement(&nobody, jan(), None, 10).await,
            Err(StoreError::Refused(CarrierStatementRefusal::UnknownCarrier))
        ));
    }
}

// Planted inconsistencies on PostgreSQL ------------------------------------

/// A client on the test's database with triggers off (the cluster's
/// superuser may), to change what the schema otherwise keeps immutable.
async fn raw(dir: &std::path::Path) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg_url(dir), tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client.batch_execute("SET session_replication_role = replica").await.expect("triggers off");
    client
}

/// A PostgreSQL world, or `None` without PostgreSQL (failing with CI set).
async fn pg_world() -> Option<World> {
    if backends().iter().all(|b| b.name != POSTGRES.name) {
        return None;
    }
    Some(world(&POSTGRES).await)
}

async fn assert_caught(w: &World, sql: &str, expect: &[&str]) {
    let c = raw(w._dir.path()).await;
    let n = c.execute(sql, &[]).await.expect(sql);
    assert!(n > 0, "{sql} changed nothing");
    let v = w.violations().await;
    for e in expect {
        assert!(v.iter().any(|v| v.contains(e)), "{sql}: want {e:?} in {v:?}");
    }
}

#[tokio::test]
async fn postgres_verify_catches_a_payout_that_disagrees_with_its_postings() {
    let Some(w) = pg_world().await else { return };
    let payout = NewPayout {
        shop: w.m.acme.clone(),
        currency: jpy(),
        amount: PayoutAmount::Exact(Amount::new(400)),
        idempotency_key: "po".into(),
        now: REMITTED_AT,
    };
    w.store.payout_shop(payout).await.expect("payout");
    assert_eq!(w.violations().await, Vec::<String>::new());
    assert_caught(&w, "UPDATE payouts SET amount = 40", &["disagrees with its postings", "payouts sum to 40"]).await;
}

#[tokio::test]
async fn postgres_verify_catches_a_payout_set_without_its_record() {
    let Some(w) = pg_world().await else { return };
    let payout = NewPayout {
        shop: w.m.acme.clone(),
        currency: jpy(),
        amount: PayoutAmount::WholeBalance,
        idempotency_key: "po".into(),
        now: REMITTED_AT,
    };
    w.store.payout_shop(payout).await.expect("payout");
    assert_caught(&w, "DELETE FROM payouts", &["is a payout without a payout record"]).await;
}

#[tokio::test]
async fn postgres_verify_catches_a_remittance_that_disagrees_with_its_postings() {
    let Some(w) = pg_world().await else { return };
    w.remit(5_000, "rm").await.expect("remit");
    assert_eq!(w.violations().await, Vec::<String>::new());
    assert_caught(&w, "UPDATE remittances SET amount = 50", &["disagrees with its postings", "remittances sum to 50"])
        .await;
}

#[tokio::test]
async fn postgres_verify_catches_a_remittance_set_without_its_record() {
    let Some(w) = pg_world().await else { return };
    w.remit(5_000, "rm").await.expect("remit");
    assert_caught(&w, "DELETE FROM remittances", &["is a remittance without a remittance record"]).await;
}

#[tokio::test]
async fn postgres_verify_catches_a_remittance_beyond_what_is_owed() {
    let Some(w) = pg_world().await else { return };
    w.remit(5_000, "rm").await.expect("remit");
    // Filed under a month with nothing owed; its postings still agree.
    assert_caught(
        &w,
        "UPDATE remittances SET month = 202703",
        &["remitted 5000 JPY to shop acme for 2027-03 but owed 0"],
    )
    .await;
    assert_eq!(w.violations().await.len(), 1, "only that: {:?}", w.violations().await);
}

#[tokio::test]
async fn postgres_verify_catches_payout_entries_that_disagree_with_the_bills() {
    let Some(w) = pg_world().await else { return };
    assert_caught(
        &w,
        "UPDATE payout_entries SET gross = gross + 1 WHERE kind = 'SETTLEMENT' AND carrier IS NOT NULL AND shop = 'beta'",
        &["carrier docomo's billed sales in JPY net 16076 by the payout entries but 16075 by its bills and fees"],
    )
    .await;
}
