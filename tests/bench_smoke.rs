//! `syncpay bench` end to end, kept tiny (1 s per target, 4 trades in
//! flight) so the default test run stays fast: the child servers start,
//! trades settle on both syncpay and the transport ceiling, and the JSON
//! result and the SVG chart are written with the figures the report uses.

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
