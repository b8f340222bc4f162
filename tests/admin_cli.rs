//! `syncpay admin` as a user runs it: the real binary against a real
//! server. `verify` exits 0 on a sound ledger and 1, listing violations,
//! after the store is tampered with behind the server's back.

mod common;

use std::process::Command;

use common::TestServer;
use syncpay::domain::Amount;
use syncpay::store::sled::codec;
use syncpay::store::AccountRecord;

fn admin(t: &TestServer, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_syncpay"))
        .arg("admin")
        .args(["--server", &t.server.url()])
        .args(["--token-file", &t.data_dir.join("admin.token").display().to_string()])
        .args(args)
        .output()
        .expect("run syncpay admin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_exits_non_zero_and_lists_violations() {
    let t = TestServer::start().await;
    let out = admin(&t, &["create-carrier", "docomo", "Docomo", "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"carrier_id\":\"docomo\""));
    let carrier_token = String::from_utf8_lossy(&out.stdout)
        .split("\"token\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("token in JSON")
        .to_owned();
    t.carrier(&carrier_token)
        .await
        .enroll_subscriber(syncpay::proto::EnrollSubscriberRequest {
            subscriber_number: "+818050000001".into(),
            funding: syncpay::proto::Funding::Wallet as i32,
            ..Default::default()
        })
        .await
        .expect("enroll");
    let out = admin(&t, &["top-up", "+818050000001", "1000", "JPY"]);
    assert!(out.status.success(), "{out:?}");

    let out = admin(&t, &["verify"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ledger verifies"));
    let out = admin(&t, &["verify", "--json"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"ok\":true"));

    // Tamper with the wallet's stored totals while the server is down.
    let store_dir = t.config.store_dir.clone();
    let t = {
        let TestServer { server, data_dir, config, .. } = t;
        server.shutdown().await.expect("shutdown");
        // The store's segment size, which sled checks against its conf.
        let db = sled::Config::new()
            .path(&store_dir)
            .segment_size(syncpay::store::sled::NEW_STORE_SEGMENT_SIZE)
            .open()
            .expect("open sled");
        let accounts = db.open_tree("accounts").expect("tree");
        let key = b"wallet:+818050000001:JPY";
        let mut record: AccountRecord =
            codec::decode(&accounts.get(key).expect("get").expect("wallet")).expect("decode");
        record.balance.credits = Amount::new(5_000);
        accounts.insert(key, codec::encode(&record).expect("encode")).expect("insert");
        db.flush().expect("flush");
        drop(accounts);
        drop(db);
        TestServer::start_with(config, data_dir, None).await
    };
    let out = admin(&t, &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("violation: account wallet:"), "{stdout}");
    assert!(stdout.contains("do not sum to zero"), "{stdout}");
    assert!(
        !stdout.contains("+818050000001") || stdout.contains("wallet:+*"),
        "numbers are masked in violations: {stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("ledger violation"));

    // Unreachable server and missing token file: clear errors, non-zero.
    let out = Command::new(env!("CARGO_BIN_EXE_syncpay"))
        .args(["admin", "--token-file", "/nonexistent/admin.token", "verify"])
        .output()
        .expect("run");
    // Exit 2: a usage problem (see the exit codes in src/cli/mod.rs).
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("operator token"), "{out:?}");
}
