//! `syncpay serve --check-config` as an operator runs it: settings come
//! from a TOML file, the environment and flags, each overriding the one
//! before, and an invalid configuration is reported whole (every problem,
//! each with where it came from) with exit code 2.

mod common;

use common::binary::syncpay;

#[test]
fn flags_override_env_override_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("syncpay.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1111\"\ndata_dir = \"from-file\"\ndurability = \"flush-only\"\n\
         [log]\nformat = \"json\"\nlevel = \"debug\"\n[limits]\nmax_ttl_seconds = 600\n",
    )
    .expect("write");
    let out = syncpay()
        .args(["serve", "--config", &file.display().to_string(), "--check-config", "--listen", "127.0.0.1:3333"])
        .args(["--set", "limits.default_ttl_seconds=90"])
        .env("SYNCPAY_LISTEN", "127.0.0.1:2222")
        .env("SYNCPAY_DATA_DIR", "from-env")
        .env("SYNCPAY_LOG_FORMAT", "human")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let line = |key: &str| -> String {
        stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    // flag > env > file > default, each with its origin.
    assert_eq!(line("listen"), "listen = \"127.0.0.1:3333\" # flag --listen");
    assert_eq!(line("data_dir"), "data_dir = \"from-env\" # environment variable SYNCPAY_DATA_DIR");
    assert_eq!(line("log.format"), "log.format = \"human\" # environment variable SYNCPAY_LOG_FORMAT");
    assert!(line("durability").starts_with("durability = \"flush-only\" # config file"), "{stdout}");
    assert!(line("log.level").starts_with("log.level = \"debug\" # config file"), "{stdout}");
    assert!(line("limits.max_ttl_seconds").starts_with("limits.max_ttl_seconds = 600 # config file"), "{stdout}");
    assert_eq!(
        line("limits.default_ttl_seconds"),
        "limits.default_ttl_seconds = 90 # flag --set limits.default_ttl_seconds"
    );
    assert_eq!(line("metrics.listen"), "metrics.listen = \"127.0.0.1:9700\" # built-in default");
    // Checking creates nothing.
    assert!(!std::path::Path::new("from-env").exists() && !std::path::Path::new("from-file").exists());
}

#[test]
fn check_config_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("syncpay.toml");
    std::fs::write(
        &file,
        "listen = \"0.0.0.0:7700\"\ndata_dri = \"typo\"\n[limits]\nmin_ttl_seconds = 60\n\
         default_ttl_seconds = 30\nmax_ttl_seconds = 1800\n",
    )
    .expect("write");
    let out = syncpay()
        .args(["serve", "--check-config", "--metrics-listen", "nowhere", "--log-format", "xml"])
        .env("SYNCPAY_CONFIG", &file)
        .env("SYNCPAY_DURABILITY", "sometimes")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr.lines().filter(|l| l.trim_start().starts_with("- ")).collect();
    for needle in [
        "listen = \"0.0.0.0:7700\" (config file",
        "data_dri (config file",
        "limits.max_ttl_seconds = 1800 (config file",
        "durability = \"sometimes\" (environment variable SYNCPAY_DURABILITY)",
        "metrics.listen = \"nowhere\" (flag --metrics-listen)",
        "log.format = \"xml\" (flag --log-format)",
    ] {
        assert!(problems.iter().any(|p| p.contains(needle)), "missing {needle:?} in:\n{stderr}");
    }
    assert!(stderr.contains(&format!("the configuration has {} problem(s)", problems.len())), "{stderr}");

    // With the TTLs in range, their order is checked too.
    std::fs::write(&file, "[limits]\nmin_ttl_seconds = 60\ndefault_ttl_seconds = 30\n").expect("write");
    let out =
        syncpay().args(["serve", "--check-config", "--config", &file.display().to_string()]).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("min_ttl_seconds (60) <= default_ttl_seconds (30)"));

    // The shipped example is valid as it stands.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/syncpay.example.toml");
    let out = syncpay().args(["serve", "--check-config", "--config", example]).output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// Runs `serve --check-config` with `args`; the exit code and the problem
/// lines.
fn check_config(args: &[&str]) -> (Option<i32>, Vec<String>) {
    let out = syncpay().args(["serve", "--check-config"]).args(args).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems = stderr.lines().filter(|l| l.trim_start().starts_with("- ")).map(str::to_owned).collect();
    (out.status.code(), problems)
}

#[test]
fn check_config_refuses_what_the_docs_forbid_naming_the_key_and_the_bound() {
    // A metrics endpoint off loopback (plain HTTP, no authentication), and
    // limits raised above their built-in values, all reported at once.
    let (code, problems) = check_config(&[
        "--metrics-listen",
        "0.0.0.0:9700",
        "--set",
        "limits.shop_trades_per_second=1000000",
        "--set",
        "limits.subscriber_offers_per_minute=6",
    ]);
    assert_eq!(code, Some(2), "{problems:#?}");
    let has = |needle: &[&str]| problems.iter().any(|p| needle.iter().all(|n| p.contains(n)));
    assert!(has(&["metrics.listen = \"0.0.0.0:9700\" (flag --metrics-listen)", "loopback"]), "{problems:#?}");
    assert!(has(&["limits.shop_trades_per_second = 1000000", "50"]), "{problems:#?}");
    assert!(has(&["limits.subscriber_offers_per_minute = 6", "5"]), "{problems:#?}");
    assert_eq!(problems.len(), 3, "{problems:#?}");

    // Said on purpose, a non-loopback metrics endpoint is allowed; so are
    // limits at or below their values, and 0 (rate limits off).
    let (code, problems) = check_config(&[
        "--metrics-listen",
        "0.0.0.0:9700",
        "--set",
        "metrics.allow_non_loopback=true",
        "--set",
        "limits.shop_trades_per_second=50",
        "--set",
        "limits.subscriber_offers_per_minute=0",
    ]);
    assert_eq!(code, Some(0), "{problems:#?}");
    let (code, problems) = check_config(&["--metrics-listen", "[::1]:9700"]);
    assert_eq!(code, Some(0), "{problems:#?}");
}
