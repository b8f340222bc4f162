//! `syncpay bench` end to end, kept tiny (1 s per target, 4 trades in
//! flight) so the default test run stays fast: the child servers start,
//! trades settle on both syncpay and the transport ceiling, and the JSON
//! result and the SVG chart are written with the figures the report uses.
//! The scale modes likewise: a few hundred open trades and their memory, a
//! few hundred settled into a kept store and the restart probe on it.

mod common;

use std::process::Command;

#[test]
fn bench_runs_both_targets_and_writes_json_and_svg() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (json, svg) = (dir.path().join("bench.json"), dir.path().join("bench.svg"));
    let out = Command::new(env!("CARGO_BIN_EXE_syncpay"))
        .args(["bench", "--duration", "1s", "--inflight", "4", "--shops", "2", "--handsets", "4", "--out"])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("run syncpay bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("valid JSON");
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{report}");
    for (result, name) in results.iter().zip(["syncpay", "ceiling"]) {
        assert_eq!(result["name"], name);
        assert!(result["settled"].as_u64().is_some_and(|n| n > 0), "{result}");
        assert!(result["latency_ms"]["p99"].as_f64().is_some_and(|ms| ms > 0.0), "{result}");
        assert!(result["server_cpu_us_per_trade"].as_f64().is_some(), "{result}");
        assert!(result["server_peak_rss_bytes"].as_u64().is_some_and(|b| b > 0), "{result}");
        assert_eq!(result["errors"], serde_json::json!({}), "{result}");
    }
    assert!(results[0]["disk_bytes_per_settled"].as_f64().is_some_and(|b| b > 0.0));
    assert!(report["syncpay_over_ceiling"].as_f64().is_some_and(|r| r > 0.0));
    let chart = std::fs::read_to_string(&svg).expect("svg written");
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>") && chart.contains("polyline"));
}

/// `--rate`: trades start on a schedule (open loop), so no more settle in
/// the window than were due in it, however fast the server is; the
/// CreateTrade answer is reported as the first part of each latency.
#[test]
fn rate_mode_starts_trades_on_schedule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("rate.json");
    let report = bench(
        &[
            "--mode",
            "syncpay",
            "--rate",
            "40",
            "--duration",
            "2s",
            "--inflight",
            "16",
            "--shops",
            "2",
            "--handsets",
            "4",
        ],
        &json,
    );
    assert_eq!(report["config"]["rate_per_s"], 40, "{report}");
    let result = &report["results"][0];
    let settled = result["settled"].as_u64().expect("settled");
    // 80 were due in the 2-s window: never more settle in it (a closed
    // loop of 16 settles ~160 here), however fast the server; fewer may,
    // on a loaded machine.
    assert!((1..=81).contains(&settled), "{settled} settled at 40/s for 2 s: {result}");
    assert_eq!(result["errors"], serde_json::json!({}), "{result}");
    let (create, whole) = (result["create_latency_ms"]["p50"].as_f64(), result["latency_ms"]["p50"].as_f64());
    assert!(create.zip(whole).is_some_and(|(c, w)| c > 0.0 && c <= w), "{result}");
}

fn bench(args: &[&str], json: &std::path::Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_syncpay"))
        .arg("bench")
        .args(args)
        .arg("--out")
        .arg(json)
        .output()
        .expect("run syncpay bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&std::fs::read_to_string(json).expect("json written")).expect("valid JSON")
}

#[test]
fn open_trades_mode_reports_memory_with_none_and_all_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = bench(
        &["--open-trades", "200", "--warmup", "10", "--shops", "2", "--handsets", "4", "--inflight", "8"],
        &dir.path().join("open.json"),
    );
    let open = &report["result"]["open_trades"];
    assert_eq!(open["created"], 200, "{open}");
    assert_eq!(open["offered"], 200, "{open}");
    assert_eq!(open["errors"], serde_json::json!({}), "{open}");
    assert_eq!(open["final_events_of_open_trades"], serde_json::json!({}), "nothing expired or settled: {open}");
    assert_eq!(open["warmup"]["settled"], 10, "{open}");
    for reading in ["memory_0_open", "memory_n_open"] {
        assert!(open[reading]["rss_bytes"].as_u64().is_some_and(|b| b > 0), "{open}");
        assert!(open[reading]["hwm_bytes"].as_u64() >= open[reading]["rss_bytes"].as_u64(), "{open}");
    }
    assert!(open["rss_bytes_per_open_trade"].as_f64().is_some(), "{open}");
    assert!(open["disk_bytes_per_open_trade"].as_f64().is_some_and(|b| b > 0.0), "{open}");
    assert!(open["create_s"].as_f64().is_some_and(|s| s > 0.0), "{open}");
    assert!(open["note"].as_str().is_some_and(|n| n.contains("page cache")), "{open}");
}

#[test]
fn fill_then_restart_settles_a_new_trade_after_a_stop_and_after_a_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let store_arg = store.to_str().expect("utf-8 path");
    let report = bench(
        &["--fill", "200", "--keep-store", store_arg, "--shops", "2", "--handsets", "4", "--inflight", "32"],
        &dir.path().join("fill.json"),
    );
    let fill = &report["result"]["fill"];
    assert_eq!(fill["settled"], 200, "{fill}");
    assert!(fill["memory_after_fill"]["rss_bytes"].as_u64().is_some_and(|b| b > 0), "{fill}");
    assert!(fill["disk_bytes_per_settled"].as_f64().is_some_and(|b| b > 0.0), "{fill}");
    check_restarts(&report["result"]["restart"], 200);

    // The kept store can be probed again without a fill.
    let again = bench(&["--restart-only", store_arg], &dir.path().join("restart.json"));
    let restart = &again["result"]["restart"];
    assert!(restart["first_start"]["spawn_to_serving_s"].as_f64().is_some_and(|s| s > 0.0), "{restart}");
    check_restarts(restart, 200);
}

fn check_restarts(restart: &serde_json::Value, settled: u64) {
    assert_eq!(restart["settled_in_store"], settled, "{restart}");
    assert_eq!(restart["final_stop_clean"], true, "{restart}");
    let probes = restart["probes"].as_array().expect("probes");
    assert_eq!(probes.len(), 2, "{restart}");
    for (probe, stop) in probes.iter().zip(["SIGTERM", "SIGKILL"]) {
        assert!(probe["stop"].as_str().is_some_and(|s| s.starts_with(stop)), "{probe}");
        assert_eq!(probe["final_state"], "TRADE_STATE_SETTLED", "{probe}");
        let at = |phase: &str| probe[phase].as_f64().unwrap_or_else(|| panic!("{phase} missing: {probe}"));
        let (listening, created, settled) =
            (at("spawn_to_listening_s"), at("spawn_to_trade_created_s"), at("spawn_to_first_settled_s"));
        assert!(0.0 < listening && listening <= created && created <= settled, "{probe}");
        assert!(at("spawn_to_serving_s") > 0.0 && at("spawn_to_carrier_connected_s") > 0.0, "{probe}");
        assert!(probe["memory_after"]["rss_bytes"].as_u64().is_some_and(|b| b > 0), "{probe}");
    }
}

/// The PostgreSQL targets (issue 15): sled, then one and two `serve` nodes
/// on a throwaway cluster the bench starts itself, in one run, with the
/// database's costs per trade and the ratios to sled.
#[test]
fn bench_runs_postgres_with_one_and_two_nodes_beside_sled() {
    if common::pg::tools().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let report = bench(
        &[
            "--mode",
            "syncpay",
            "--postgres",
            "cluster",
            "--duration",
            "1s",
            "--inflight",
            "4",
            "--shops",
            "2",
            "--handsets",
            "4",
        ],
        &dir.path().join("pg.json"),
    );
    let results = report["results"].as_array().expect("results");
    let names: Vec<&str> = results.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["syncpay", "postgres-1-node", "postgres-2-nodes"], "{report}");
    for result in &results[1..] {
        assert!(result["settled"].as_u64().is_some_and(|n| n > 0), "{result}");
        assert_eq!(result["errors"], serde_json::json!({}), "{result}");
        let db = &result["database"];
        assert!(db["statements_per_trade"].as_f64().is_some_and(|n| n > 0.0), "{db}");
        assert!(db["wal_bytes_per_trade"].as_f64().is_some_and(|n| n > 0.0), "{db}");
        assert!(db["top_statements"].as_array().is_some_and(|s| !s.is_empty()), "{db}");
    }
    for name in ["postgres-1-node", "postgres-2-nodes"] {
        assert!(report["over_sled"][name].as_f64().is_some_and(|r| r > 0.0), "{report}");
    }
}
