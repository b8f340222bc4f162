//! The command-line clients end to end, as scripts use them (`--json`):
//! `admin` creates a shop and a carrier, `carrier-sim` hosts the handsets,
//! `shop` opens a register, charges (SETTLED exits 0, DECLINED exits 1),
//! reads, refunds and watches; `admin accounts` shows the money. Errors
//! map to the documented exit codes.

mod common;

use common::binary::{run, Running};
use common::TestServer;
use serde_json::Value;

const APPROVER: &str = "+818060000001";
const DECLINER: &str = "+818060000002";

fn json_of(out: &std::process::Output) -> Value {
    assert!(out.status.code().is_some(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout:?} {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_charge_with_carrier_sim_and_admin_accounts() {
    let t = TestServer::start().await;
    let url = t.server.url();
    let admin_token = t.data_dir.join("admin.token").display().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = |args: &[&str]| {
        let mut all = vec!["admin", "--server", &url, "--token-file", &admin_token, "--json"];
        all.extend_from_slice(args);
        run(&all)
    };

    let out = admin(&["create-shop", "acme", "Acme Books"]);
    let shop_token = dir.path().join("shop.token");
    std::fs::write(&shop_token, json_of(&out)["token"].as_str().expect("token")).expect("write");
    let out = admin(&["create-carrier", "docomo", "Docomo"]);
    let carrier_token = dir.path().join("carrier.token");
    std::fs::write(&carrier_token, json_of(&out)["token"].as_str().expect("token")).expect("write");

    let carrier_token_arg = carrier_token.display().to_string();
    let handset_arg = format!("{DECLINER}=decline");
    let mut sim = Running::spawn(
        &[
            "carrier-sim",
            "--server",
            &url,
            "--token-file",
            &carrier_token_arg,
            "--handsets",
            "1",
            "--first-number",
            APPROVER,
            "--handset",
            &handset_arg,
            "--json",
        ],
        "stdout",
    );
    let ready: Value = sim.wait_line(|l| serde_json::from_str::<Value>(l).ok().filter(|v| v["event"] == "ready"));
    assert_eq!(ready["handsets"].as_array().map(Vec::len), Some(2), "{ready}");
    let out = admin(&["top-up", APPROVER, "5000", "JPY"]);
    assert_eq!(json_of(&out)["balance_minor"], 5000);

    let token_arg = shop_token.display().to_string();
    let shop = |args: &[&str]| {
        let mut all = vec!["shop", "--server", &url, "--token-file", &token_arg, "--json"];
        all.extend_from_slice(args);
        run(&all)
    };
    let out = shop(&["open", "Front desk"]);
    let register = json_of(&out)["register_id"].as_str().expect("register").to_owned();

    let out = shop(&["charge", "--register", &register, APPROVER, "1200", "JPY", "--description", "Two books"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let trade = json_of(&out);
    assert_eq!(trade["state"], "SETTLED", "{trade}");
    assert_eq!(trade["amount_minor"], 1200);
    let code = trade["binding_code"].as_str().expect("binding code");
    assert!(code.len() == 6 && code.chars().all(|c| c.is_ascii_digit()), "{code}");
    assert!(trade["receipt"]["signature"].as_str().is_some_and(|s| s.len() == 128), "{trade}");
    assert!(!trade.to_string().contains(APPROVER), "the shop never sees the number: {trade}");
    let trade_id = trade["trade_id"].as_str().expect("id").to_owned();
    // The carrier saw the offer with the same binding code.
    sim.wait_line(|l| {
        serde_json::from_str::<Value>(l)
            .ok()
            .filter(|v| v["event"] == "offer_shown" && v["trade_id"] == trade_id.as_str())
    });

    let out = shop(&["charge", "--register", &register, DECLINER, "700", "JPY"]);
    assert_eq!(out.status.code(), Some(1), "a declined charge exits 1: {out:?}");
    assert_eq!(json_of(&out)["state"], "DECLINED");

    let out = shop(&["status", &trade_id]);
    assert_eq!(json_of(&out)["state"], "SETTLED");
    let out = shop(&["refund", &trade_id, "200", "--idempotency-key", "r1"]);
    let refund = json_of(&out);
    assert_eq!((refund["amount_minor"].as_u64(), refund["trade"]["refunded_minor"].as_u64()), (Some(200), Some(200)));

    // Events: PENDING, OFFERED, SETTLED, REFUNDED of the first trade and
    // three of the declined one, in order; resumable from any cursor.
    let out = shop(&["watch", "--count", "7"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let events: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let sequences: Vec<u64> = events.iter().filter_map(|e| e["sequence"].as_u64()).collect();
    assert_eq!(sequences, (1..=7).collect::<Vec<_>>());
    assert!(events.iter().any(|e| e["kind"] == "REFUNDED" && e["refund_minor"] == 200));
    let out = shop(&["watch", "--after", "5", "--count", "2"]);
    let resumed: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["sequence"].as_u64())
        .collect();
    assert_eq!(resumed, vec![6, 7]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("resume with --after 7"));

    let out = admin(&["accounts"]);
    let accounts = json_of(&out);
    let balance = |name: &str| {
        accounts.as_array().expect("array").iter().find(|a| a["name"] == name).map(|a| a["balance_minor"].clone())
    };
    assert_eq!(balance("shop:acme:JPY"), Some(Value::from(1000)), "{accounts}");
    let out = admin(&["verify"]);
    assert_eq!(json_of(&out)["ok"], true);

    // Exit codes: refused by the server 4, usage 2, unreachable 3.
    let out = shop(&["charge", "--register", &register, APPROVER, "0", "JPY"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("amount_minor"), "{out:?}");
    let out = run(&["shop", "--server", &url, "--token-file", "/nonexistent", "registers"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = run(&["shop", "--server", "http://127.0.0.1:1", "--token-file", &token_arg, "registers"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    sim.terminate();
    let status = sim.wait_exit();
    assert_eq!(status.code(), Some(0));
    assert!(sim.rest().iter().any(|l| l.contains("\"event\":\"stopped\"")));
    t.server.shutdown().await.expect("shutdown");
}
