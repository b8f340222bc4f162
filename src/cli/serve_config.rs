//! `serve`'s configuration: built-in defaults, then a TOML file, then
//! environment variables, then flags, each overriding the one before
//! (layered with figment). Every setting is one row of [`SETTINGS`]: its key
//! in the file, its environment variable and its flag. Validation looks at
//! every setting and reports every problem at once, each with where the
//! value came from.
//!
//! Sections: top level (listen, data_dir, durability, cache_mib), `[log]`,
//! `[metrics]`, `[console]`, `[limits]`. A new section (TLS, say) is new rows in
//! `SETTINGS`, a field in [`ServeConfig`] and its checks in `resolve`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use syncpay::store::sled::Durability;
use syncpay::sync_server::limits::{self, Limits};
use syncpay::sync_server::rate_limit::Rate;
use syncpay::sync_server::tls::TlsFiles;

/// Most connections one node may hold to PostgreSQL (`store.pool_size`).
const MAX_POOL_SIZE: u64 = syncpay::store::postgres::pool::MAX_POOL_SIZE as u64;

/// Bounds of `store.poll_ms`, how often a PostgreSQL node reads what other
/// nodes committed besides LISTEN/NOTIFY: below 10 ms the polls alone would
/// load the database; a day is far beyond any use but lets a test prove
/// that the notifications do the waking.
const MIN_POLL_MS: u64 = 10;
const MAX_POLL_MS: u64 = 86_400_000;

/// Bounds of sled's page cache, in MiB.
const MIN_CACHE_MIB: u64 = 8;
const MAX_CACHE_MIB: u64 = 65_536;

use super::LogFormat;

/// One configurable setting.
pub struct Setting {
    /// Key in the TOML file (`section.name` inside a section).
    pub key: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Dedicated flag, if any (every key can also be set with `--set`).
    pub flag: Option<&'static str>,
    /// The built-in default, as it would be written in the file.
    pub default: &'static str,
}

/// Every setting `serve` knows. Keys not listed here are errors in a
/// config file (typos must not pass silently).
pub const SETTINGS: &[Setting] = &[
    Setting { key: "listen", env: "SYNCPAY_LISTEN", flag: Some("--listen"), default: "\"127.0.0.1:7700\"" },
    Setting { key: "data_dir", env: "SYNCPAY_DATA_DIR", flag: Some("--data-dir"), default: "\"syncpay-data\"" },
    Setting { key: "durability", env: "SYNCPAY_DURABILITY", flag: Some("--durability"), default: "\"fsync\"" },
    Setting { key: "cache_mib", env: "SYNCPAY_CACHE_MIB", flag: None, default: "24" },
    Setting { key: "store.url", env: "SYNCPAY_STORE_URL", flag: None, default: "\"\"" },
    Setting { key: "store.pool_size", env: "SYNCPAY_STORE_POOL_SIZE", flag: None, default: "16" },
    Setting { key: "store.poll_ms", env: "SYNCPAY_STORE_POLL_MS", flag: None, default: "200" },
    Setting { key: "store.notify", env: "SYNCPAY_STORE_NOTIFY", flag: None, default: "true" },
    Setting { key: "log.format", env: "SYNCPAY_LOG_FORMAT", flag: Some("--log-format"), default: "\"human\"" },
    Setting { key: "log.level", env: "SYNCPAY_LOG_LEVEL", flag: Some("--log-level"), default: "\"info\"" },
    Setting {
        key: "metrics.listen",
        env: "SYNCPAY_METRICS_LISTEN",
        flag: Some("--metrics-listen"),
        default: "\"127.0.0.1:9700\"",
    },
    Setting {
        key: "metrics.allow_non_loopback",
        env: "SYNCPAY_METRICS_ALLOW_NON_LOOPBACK",
        flag: None,
        default: "false",
    },
    Setting {
        key: "console.listen",
        env: "SYNCPAY_CONSOLE_LISTEN",
        flag: Some("--console-listen"),
        default: "\"127.0.0.1:7780\"",
    },
    Setting { key: "tls.cert", env: "SYNCPAY_TLS_CERT", flag: Some("--tls-cert"), default: "\"\"" },
    Setting { key: "tls.key", env: "SYNCPAY_TLS_KEY", flag: Some("--tls-key"), default: "\"\"" },
    Setting { key: "tls.client_ca", env: "SYNCPAY_CLIENT_CA", flag: Some("--client-ca"), default: "\"\"" },
    Setting { key: "tls.client_crl", env: "SYNCPAY_CLIENT_CRL", flag: Some("--client-crl"), default: "\"\"" },
    Setting {
        key: "limits.max_amount_minor",
        env: "SYNCPAY_LIMITS_MAX_AMOUNT_MINOR",
        flag: None,
        default: "1000000000000",
    },
    Setting {
        key: "limits.max_open_trades_per_register",
        env: "SYNCPAY_LIMITS_MAX_OPEN_TRADES_PER_REGISTER",
        flag: None,
        default: "10000",
    },
    Setting {
        key: "limits.max_open_registers_per_shop",
        env: "SYNCPAY_LIMITS_MAX_OPEN_REGISTERS_PER_SHOP",
        flag: None,
        default: "1000",
    },
    Setting { key: "limits.max_shops", env: "SYNCPAY_LIMITS_MAX_SHOPS", flag: None, default: "1000000" },
    Setting { key: "limits.min_ttl_seconds", env: "SYNCPAY_LIMITS_MIN_TTL_SECONDS", flag: None, default: "1" },
    Setting {
        key: "limits.default_ttl_seconds",
        env: "SYNCPAY_LIMITS_DEFAULT_TTL_SECONDS",
        flag: None,
        default: "120",
    },
    Setting { key: "limits.max_ttl_seconds", env: "SYNCPAY_LIMITS_MAX_TTL_SECONDS", flag: None, default: "900" },
    Setting {
        key: "limits.shop_trades_per_second",
        env: "SYNCPAY_LIMITS_SHOP_TRADES_PER_SECOND",
        flag: None,
        default: "50",
    },
    Setting {
        key: "limits.subscriber_offers_per_minute",
        env: "SYNCPAY_LIMITS_SUBSCRIBER_OFFERS_PER_MINUTE",
        flag: None,
        default: "5",
    },
];

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "SYNCPAY_CONFIG";

/// What the command line said about configuration (flags are text here so
/// that a bad flag value is reported with every other problem).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub config: Option<PathBuf>,
    /// (flag, value) for the dedicated flags, e.g. ("--listen", "127.0.0.1:0").
    pub values: Vec<(&'static str, String)>,
    /// `--set key=value`, in order.
    pub sets: Vec<String>,
}

/// Which store holds the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// The embedded sled store in `data_dir` (the default).
    Sled,
    /// PostgreSQL at `url` (`store.url`), reading other nodes' commits
    /// every `poll` (`store.poll_ms`) and on their notifications when
    /// `notify` (`store.notify`), with at most `pool_size`
    /// connections from this node.
    Postgres { url: String, pool_size: usize, poll: Duration, notify: bool },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub store: StoreChoice,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// sled's page cache in bytes (`cache_mib` × 2^20).
    pub cache_bytes: u64,
    pub log_format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `info,syncpay=debug`.
    pub log_level: String,
    /// `None` when metrics are off.
    pub metrics_listen: Option<SocketAddr>,
    /// The operator console's listener; `None` when off. Loopback unless
    /// TLS is on (then it serves HTTPS with the server's certificate).
    pub console_listen: Option<SocketAddr>,
    /// The console address was set (file, environment or flag), so it
    /// must bind; the built-in default may be busy (another server on
    /// this machine), and then serve runs without a console.
    pub console_required: bool,
    pub limits: Limits,
    /// Mutual TLS, when `tls.cert`, `tls.key` and `tls.client_ca` are set.
    pub tls: Option<TlsFiles>,
    /// Every setting as `(key, value, where it came from)`, for
    /// `--check-config`.
    pub effective: Vec<(String, String, String)>,
}

/// One layer of values (defaults, environment or flags) as a figment
/// provider whose metadata names each value's origin.
struct Layer {
    name: &'static str,
    /// (key, origin, value).
    entries: Vec<(String, String, Value)>,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        let origins: Arc<HashMap<String, String>> =
            Arc::new(self.entries.iter().map(|(k, origin, _)| (k.clone(), origin.clone())).collect());
        Metadata::named(self.name).interpolater(move |_profile: &Profile, keys: &[&str]| {
            let key = keys.join(".");
            origins.get(&key).cloned().unwrap_or(key)
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (key, _, value) in &self.entries {
            insert(&mut root, key, value.clone());
        }
        Ok(Profile::Default.collect(root))
    }
}

/// Inserts `value` at a dotted key, creating sections as needed.
fn insert(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_owned(), value);
        }
        Some((section, rest)) => {
            let entry = dict.entry(section.to_owned()).or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            } else {
                *entry = Value::from(Dict::new());
                if let Value::Dict(_, inner) = entry {
                    insert(inner, rest, value);
                }
            }
        }
    }
}

fn parse_value(text: &str) -> Value {
    text.parse::<Value>().unwrap_or_else(|never| match never {})
}

fn defaults() -> Layer {
    Layer {
        name: "default",
        entries: SETTINGS.iter().map(|s| (s.key.to_owned(), "built-in default".to_owned(), default_value(s))).collect(),
    }
}

fn default_value(s: &Setting) -> Value {
    // Defaults are written as TOML values; strings are quoted.
    match s.default.strip_prefix('"').and_then(|d| d.strip_suffix('"')) {
        Some(text) => Value::from(text.to_owned()),
        None => parse_value(s.default),
    }
}

fn environment(env: &dyn Fn(&str) -> Option<String>) -> Layer {
    let entries = SETTINGS
        .iter()
        .filter_map(|s| {
            env(s.env).map(|v| (s.key.to_owned(), format!("environment variable {}", s.env), parse_value(&v)))
        })
        .collect();
    Layer { name: "environment", entries }
}

fn flags(flags: &Flags, problems: &mut Vec<String>) -> Layer {
    let mut entries = Vec::new();
    for (flag, value) in &flags.values {
        match SETTINGS.iter().find(|s| s.flag == Some(*flag)) {
            Some(s) => entries.push((s.key.to_owned(), format!("flag {flag}"), parse_value(value))),
            None => problems.push(format!("flag {flag}: not a configuration flag")),
        }
    }
    for set in &flags.sets {
        match set.split_once('=') {
            Some((key, value)) if SETTINGS.iter().any(|s| s.key == key.trim()) => {
                let key = key.trim();
                entries.push((key.to_owned(), format!("flag --set {key}"), parse_value(value.trim())));
            }
            Some((key, _)) => problems.push(format!("flag --set {key}: unknown setting (known: {})", known_keys())),
            None => problems.push(format!("flag --set {set:?}: expected KEY=VALUE")),
        }
    }
    Layer { name: "flags", entries }
}

fn known_keys() -> String {
    SETTINGS.iter().map(|s| s.key).collect::<Vec<_>>().join(", ")
}

/// Loads and validates the configuration; `Err` lists every problem.
/// `env` reads an environment variable (injected so tests need not touch
/// the process environment).
pub fn load(cli: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<ServeConfig, Vec<String>> {
    let mut problems = Vec::new();
    let config_path = cli.config.clone().or_else(|| env(CONFIG_ENV).filter(|p| !p.is_empty()).map(PathBuf::from));
    let flag_layer = flags(cli, &mut problems);
    let env_layer = environment(env);

    let mut figment = Figment::new().merge(defaults());
    if let Some(path) = &config_path {
        match file_problem(path) {
            Some(problem) => problems.push(problem),
            None => {
                let with_file = figment.clone().merge(Toml::file_exact(path));
                // A file that does not parse is one problem; the rest is
                // still checked without it.
                match with_file.extract::<Dict>() {
                    Ok(dict) => {
                        unknown_keys(&dict, "", path, &mut problems);
                        figment = with_file;
                    }
                    Err(e) => problems.push(format!("config file {}: {e}", path.display())),
                }
            }
        }
    }
    let figment = figment.merge(env_layer).merge(flag_layer);
    match resolve(&figment, config_path.as_deref(), &mut problems) {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(problems),
    }
}

fn file_problem(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => None,
        Ok(_) => Some(format!("config file {}: not a file", path.display())),
        Err(e) => Some(format!("config file {}: {e}", path.display())),
    }
}

/// Reports keys in the file that no setting has.
fn unknown_keys(dict: &Dict, prefix: &str, path: &Path, problems: &mut Vec<String>) {
    for (name, value) in dict {
        let key = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        let is_section = SETTINGS.iter().any(|s| s.key.starts_with(&format!("{key}.")));
        match value {
            Value::Dict(_, inner) if is_section => unknown_keys(inner, &key, path, problems),
            _ if SETTINGS.iter().any(|s| s.key == key) => {}
            _ => problems.push(format!("{key} (config file {}): unknown setting", path.display())),
        }
    }
}

/// Where a key's value came from, for messages.
fn origin(figment: &Figment, key: &str, config_path: Option<&Path>) -> String {
    match figment.find_metadata(key) {
        Some(md) if md.source.is_some() => {
            format!("config file {}", config_path.map_or_else(|| "?".to_owned(), |p| p.display().to_string()))
        }
        Some(md) => {
            let parts: Vec<&str> = key.split('.').collect();
            md.interpolate(&Profile::Default, &parts)
        }
        None => "unknown".to_owned(),
    }
}

/// Reads each setting, collecting problems; returns the config when every
/// setting could be read (range problems may still have been added).
fn resolve(figment: &Figment, config_path: Option<&Path>, problems: &mut Vec<String>) -> Option<ServeConfig> {
    let mut effective = Vec::new();
    let mut get = |key: &str, problems: &mut Vec<String>| -> Option<(Value, String)> {
        let from = origin(figment, key, config_path);
        match figment.find_value(key) {
            Ok(v) => {
                effective.push((key.to_owned(), display(&v), from.clone()));
                Some((v, from))
            }
            Err(e) => {
                problems.push(format!("{key}: {e}"));
                None
            }
        }
    };
    let mut check = |key: &str, problems: &mut Vec<String>, parse: &dyn Fn(&Value) -> Result<(), String>| {
        if let Some((v, from)) = get(key, problems) {
            if let Err(why) = parse(&v) {
                problems.push(format!("{key} = {} ({from}): {why}", display(&v)));
            }
        }
    };

    // Each setting is parsed into a slot; a failed parse leaves it empty.
    let listen = std::cell::Cell::new(None::<SocketAddr>);
    let data_dir = std::cell::RefCell::new(None::<PathBuf>);
    let durability = std::cell::Cell::new(None::<Durability>);
    let log_format = std::cell::Cell::new(None::<LogFormat>);
    let log_level = std::cell::RefCell::new(None::<String>);
    let metrics = std::cell::Cell::new(None::<Option<SocketAddr>>);
    let console = std::cell::Cell::new(None::<Option<SocketAddr>>);
    let numbers = std::cell::RefCell::new(BTreeMap::<&'static str, u64>::new());
    let store_url = std::cell::RefCell::new(None::<String>);

    // TLS first: it decides which listen addresses are allowed.
    let tls_paths = std::cell::RefCell::new(BTreeMap::<&'static str, PathBuf>::new());
    for key in ["tls.cert", "tls.key", "tls.client_ca", "tls.client_crl"] {
        check(key, problems, &|v| {
            let text = string(v)?;
            if text.is_empty() {
                return Ok(());
            }
            let path = PathBuf::from(text);
            if !path.is_file() {
                return Err("no such file".into());
            }
            tls_paths.borrow_mut().insert(key, path);
            Ok(())
        });
    }
    let tls = {
        let mut paths = tls_paths.borrow_mut();
        let (cert, key, ca, crl) = (
            paths.remove("tls.cert"),
            paths.remove("tls.key"),
            paths.remove("tls.client_ca"),
            paths.remove("tls.client_crl"),
        );
        match (cert, key, ca) {
            (Some(cert), Some(key), Some(client_ca)) => Some(TlsFiles { cert, key, client_ca, client_crl: crl }),
            (None, None, None) => {
                if crl.is_some() {
                    problems.push("tls.client_crl: needs tls.cert, tls.key and tls.client_ca".into());
                }
                None
            }
            _ => {
                problems
                    .push("tls: tls.cert, tls.key and tls.client_ca go together (mutual TLS needs all three)".into());
                None
            }
        }
    };
    let tls_on = tls.is_some() || problems.iter().any(|p| p.starts_with("tls"));
    check("listen", problems, &|v| {
        let addr = socket_addr(v)?;
        if !tls_on && !addr.ip().is_loopback() {
            return Err("without TLS syncpay listens only on loopback (127.0.0.1 or ::1); set tls.cert, \
                        tls.key and tls.client_ca (`syncpay pki init` makes a development set)"
                .into());
        }
        listen.set(Some(addr));
        Ok(())
    });
    check("data_dir", problems, &|v| {
        let text = string(v)?;
        if text.trim().is_empty() {
            return Err("must name a folder".into());
        }
        let path = PathBuf::from(text);
        if path.exists() && !path.is_dir() {
            return Err("exists and is not a folder".into());
        }
        *data_dir.borrow_mut() = Some(path);
        Ok(())
    });
    check("store.url", problems, &|v| {
        let text = string(v)?;
        if text.is_empty() {
            return Ok(());
        }
        syncpay::store::postgres::pool::parse_url(&text)?;
        *store_url.borrow_mut() = Some(text);
        Ok(())
    });
    check("durability", problems, &|v| {
        durability.set(Some(match string(v)?.as_str() {
            "fsync" => Durability::Fsync,
            "flush-only" => Durability::FlushOnly,
            _ => return Err("must be \"fsync\" or \"flush-only\"".into()),
        }));
        Ok(())
    });
    check("log.format", problems, &|v| {
        log_format.set(Some(match string(v)?.as_str() {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            _ => return Err("must be \"human\" or \"json\"".into()),
        }));
        Ok(())
    });
    check("log.level", problems, &|v| {
        let text = string(v)?;
        tracing_subscriber::EnvFilter::try_new(&text).map_err(|e| format!("not a log filter ({e})"))?;
        *log_level.borrow_mut() = Some(text);
        Ok(())
    });
    // The metrics endpoint is plain HTTP without authentication, with or
    // without TLS on the gRPC listener: off loopback only when said so.
    let metrics_anywhere = std::cell::Cell::new(false);
    let notify = std::cell::Cell::new(true);
    check("store.notify", problems, &|v| {
        notify.set(boolean(v)?);
        Ok(())
    });
    check("metrics.allow_non_loopback", problems, &|v| {
        metrics_anywhere.set(boolean(v)?);
        Ok(())
    });
    check("metrics.listen", problems, &|v| {
        if matches!(v, Value::String(_, s) if s == "off") {
            metrics.set(Some(None));
            return Ok(());
        }
        let addr = socket_addr(v).map_err(|e| format!("{e}, or \"off\""))?;
        if !addr.ip().is_loopback() && !metrics_anywhere.get() {
            return Err("the metrics endpoint is plain HTTP without authentication, so it listens only on \
                        loopback (127.0.0.1 or ::1); scrape it through a tunnel or a local agent, or set \
                        metrics.allow_non_loopback = true to serve it on a network you trust"
                .into());
        }
        metrics.set(Some(Some(addr)));
        Ok(())
    });
    check("console.listen", problems, &|v| {
        if matches!(v, Value::String(_, s) if s == "off") {
            console.set(Some(None));
            return Ok(());
        }
        let addr = socket_addr(v).map_err(|e| format!("{e}, or \"off\""))?;
        // The console takes the operator token at its login: in plaintext
        // it must not leave this computer.
        if !tls_on && !addr.ip().is_loopback() {
            return Err("without TLS the console listens only on loopback (127.0.0.1 or ::1); with tls.* set it \
                        serves HTTPS and may listen anywhere"
                .into());
        }
        console.set(Some(Some(addr)));
        Ok(())
    });
    /// How a number's bounds read in a refusal.
    #[derive(Clone, Copy)]
    enum Bound {
        /// Any value in range.
        Range,
        /// A limit: the maximum is the built-in value (`limits.rs` says
        /// why each has its size), which configuration may only lower.
        Limit,
        /// A rate limit: as `Limit`, or 0 for none (benchmarks, loopback
        /// tests; `serve` warns).
        Rate,
    }
    let bounds: [(&'static str, u64, u64, Bound); 12] = [
        ("cache_mib", MIN_CACHE_MIB, MAX_CACHE_MIB, Bound::Range),
        ("store.pool_size", 1, MAX_POOL_SIZE, Bound::Range),
        ("store.poll_ms", MIN_POLL_MS, MAX_POLL_MS, Bound::Range),
        ("limits.max_amount_minor", 1, limits::MAX_AMOUNT_MINOR, Bound::Limit),
        ("limits.max_open_trades_per_register", 1, u64::from(limits::MAX_OPEN_TRADES_PER_REGISTER), Bound::Limit),
        ("limits.max_open_registers_per_shop", 1, u64::from(limits::MAX_OPEN_REGISTERS_PER_SHOP), Bound::Limit),
        ("limits.max_shops", 1, u64::from(limits::MAX_SHOPS), Bound::Limit),
        ("limits.min_ttl_seconds", limits::MIN_TTL.as_secs(), limits::MAX_TTL.as_secs(), Bound::Limit),
        ("limits.default_ttl_seconds", limits::MIN_TTL.as_secs(), limits::MAX_TTL.as_secs(), Bound::Limit),
        ("limits.max_ttl_seconds", limits::MIN_TTL.as_secs(), limits::MAX_TTL.as_secs(), Bound::Limit),
        ("limits.shop_trades_per_second", 1, u64::from(limits::SHOP_TRADES.count), Bound::Rate),
        ("limits.subscriber_offers_per_minute", 1, u64::from(limits::SUBSCRIBER_OFFERS.count), Bound::Rate),
    ];
    for (key, min, max, bound) in bounds {
        check(key, problems, &|v| {
            let n = number(v)?;
            let off = matches!(bound, Bound::Rate) && n == 0;
            if (n < min || n > max) && !off {
                return Err(match bound {
                    Bound::Range => format!("must be {min}..={max}"),
                    Bound::Limit => format!(
                        "must be {min}..={max}; {max} is the built-in limit, which configuration may lower but not raise"
                    ),
                    Bound::Rate => format!(
                        "must be {min}..={max}, or 0 for no limit; {max} is the built-in limit, which configuration \
                         may lower but not raise"
                    ),
                });
            }
            numbers.borrow_mut().insert(key, n);
            Ok(())
        });
    }

    // Relations between settings, checked when both sides are readable.
    let numbers = numbers.into_inner();
    let ttl = |k: &str| numbers.get(k).copied();
    if let (Some(min), Some(default), Some(max)) =
        (ttl("limits.min_ttl_seconds"), ttl("limits.default_ttl_seconds"), ttl("limits.max_ttl_seconds"))
    {
        if !(min <= default && default <= max) {
            problems.push(format!(
                "limits: min_ttl_seconds ({min}) <= default_ttl_seconds ({default}) <= max_ttl_seconds ({max}) does not hold"
            ));
        }
    }
    if let (Some(listen), Some(Some(metrics))) = (listen.get(), metrics.get()) {
        if listen.port() != 0 && listen == metrics {
            problems.push(format!("metrics.listen: {metrics} is the gRPC listen address; use another port"));
        }
    }
    if let Some(Some(console)) = console.get() {
        let taken = [("listen", listen.get()), ("metrics.listen", metrics.get().flatten())];
        for (key, other) in taken {
            if other.is_some_and(|o| console.port() != 0 && o == console) {
                problems.push(format!("console.listen: {console} is the {key} address; use another port"));
            }
        }
    }

    let u32_of = |k: &str| ttl(k).and_then(|n| u32::try_from(n).ok());
    let limits = Limits {
        max_amount_minor: ttl("limits.max_amount_minor")?,
        max_open_trades_per_register: u32_of("limits.max_open_trades_per_register")?,
        max_open_registers_per_shop: u32_of("limits.max_open_registers_per_shop")?,
        max_shops: u32_of("limits.max_shops")?,
        default_ttl: Duration::from_secs(ttl("limits.default_ttl_seconds")?),
        min_ttl: Duration::from_secs(ttl("limits.min_ttl_seconds")?),
        max_ttl: Duration::from_secs(ttl("limits.max_ttl_seconds")?),
        shop_trades: Rate::new(u32_of("limits.shop_trades_per_second")?, Duration::from_secs(1)),
        subscriber_offers: Rate::new(u32_of("limits.subscriber_offers_per_minute")?, Duration::from_secs(60)),
        ..Limits::default()
    };
    let data_dir = data_dir.into_inner()?;
    let log_level = log_level.into_inner()?;
    let store = match store_url.into_inner() {
        None => StoreChoice::Sled,
        Some(url) => StoreChoice::Postgres {
            url,
            pool_size: usize::try_from(ttl("store.pool_size")?).ok()?,
            poll: Duration::from_millis(ttl("store.poll_ms")?),
            notify: notify.get(),
        },
    };
    // A password in the URL is never printed (`--check-config`).
    for (key, value, _) in effective.iter_mut() {
        if key == "store.url" {
            *value = format!("{:?}", syncpay::store::postgres::pool::redact_url(value.trim_matches('"')));
        }
    }
    Some(ServeConfig {
        store,
        listen: listen.get()?,
        data_dir,
        durability: durability.get()?,
        cache_bytes: ttl("cache_mib")?.checked_mul(1 << 20)?,
        log_format: log_format.get()?,
        log_level,
        metrics_listen: metrics.get()?,
        console_listen: console.get()?,
        console_required: effective.iter().any(|(k, _, origin)| k == "console.listen" && origin != "built-in default"),
        limits,
        tls,
        effective,
    })
}

fn display(v: &Value) -> String {
    match v {
        Value::String(_, s) => format!("{s:?}"),
        Value::Num(_, n) => n
            .to_i128()
            .or_else(|| n.to_u128().and_then(|u| i128::try_from(u).ok()))
            .map_or_else(|| format!("{n:?}"), |n| n.to_string()),
        Value::Bool(_, b) => b.to_string(),
        other => format!("{:?}", other.to_actual()),
    }
}

fn string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(_, s) => Ok(s.clone()),
        other => Err(format!("must be a string, not {}", other.to_actual())),
    }
}

fn boolean(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(_, b) => Ok(*b),
        Value::String(_, s) if s == "true" => Ok(true),
        Value::String(_, s) if s == "false" => Ok(false),
        other => Err(format!("must be true or false, not {}", other.to_actual())),
    }
}

fn socket_addr(v: &Value) -> Result<SocketAddr, String> {
    string(v)?.parse::<SocketAddr>().map_err(|_| "must be an address like 127.0.0.1:7700".to_owned())
}

fn number(v: &Value) -> Result<u64, String> {
    match v {
        Value::Num(_, n) => n
            .to_u128()
            .and_then(|n| u64::try_from(n).ok())
            .or_else(|| n.to_i128().and_then(|n| u64::try_from(n).ok()))
            .ok_or_else(|| "must be a whole number >= 0".to_owned()),
        Value::String(_, s) => s.trim().parse::<u64>().map_err(|_| "must be a whole number".to_owned()),
        other => Err(format!("must be a whole number, not {}", other.to_actual())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        file: Option<&str>,
        env: &[(&str, &str)],
        flags_in: &[(&'static str, &str)],
    ) -> Result<ServeConfig, Vec<String>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("syncpay.toml");
        let config = file.map(|text| {
            std::fs::write(&path, text).expect("write");
            path.clone()
        });
        let env: HashMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let cli =
            Flags { config, values: flags_in.iter().map(|(f, v)| (*f, (*v).to_owned())).collect(), sets: Vec::new() };
        load(&cli, &|k| env.get(k).cloned())
    }

    #[test]
    fn the_store_is_sled_unless_a_postgres_url_is_given_in_any_layer() {
        assert_eq!(check(None, &[], &[]).expect("defaults").store, StoreChoice::Sled);
        let url = "postgres://syncpay:secret@127.0.0.1:5432,127.0.0.1:5433/syncpay?target_session_attrs=read-write";
        let file = format!("[store]\nurl = \"{url}\"\npool_size = 4\n");
        let c = check(Some(&file), &[], &[]).expect("valid");
        let poll = Duration::from_millis(200);
        assert_eq!(c.store, StoreChoice::Postgres { url: url.to_owned(), pool_size: 4, poll, notify: true });
        // The environment overrides the file; the password is never shown.
        let c = check(Some(&file), &[("SYNCPAY_STORE_URL", "postgres://other@localhost/db")], &[]).expect("valid");
        assert_eq!(
            c.store,
            StoreChoice::Postgres { url: "postgres://other@localhost/db".into(), pool_size: 4, poll, notify: true }
        );
        let c = check(Some(&file), &[("SYNCPAY_STORE_NOTIFY", "false"), ("SYNCPAY_STORE_POLL_MS", "60000")], &[])
            .expect("valid");
        let poll = Duration::from_secs(60);
        assert_eq!(c.store, StoreChoice::Postgres { url: url.to_owned(), pool_size: 4, poll, notify: false });
        let c = check(Some(&file), &[], &[]).expect("valid");
        let shown = c.effective.iter().find(|(k, _, _)| k == "store.url").expect("listed");
        assert!(!shown.1.contains("secret") && shown.1.contains("syncpay:***@"), "{shown:?}");
        // Refusals name the key.
        for (env, needle) in [
            (("SYNCPAY_STORE_URL", "postgres://u@db.example.com/db"), "not loopback"),
            (("SYNCPAY_STORE_URL", "mysql://u@127.0.0.1/db"), "postgres://"),
            (("SYNCPAY_STORE_URL", "postgres://u@127.0.0.1:5432"), "names no database"),
            (("SYNCPAY_STORE_POOL_SIZE", "0"), "must be 1..=256"),
        ] {
            let problems = check(None, &[env], &[]).expect_err("refused");
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(&env.0.replace("SYNCPAY_STORE_", "store.").to_lowercase())
                        && p.contains(needle)),
                "{env:?}: {problems:?}"
            );
        }
    }

    #[test]
    fn defaults_are_a_single_loopback_machine() {
        let c = check(None, &[], &[]).expect("defaults are valid");
        assert_eq!(c.listen, "127.0.0.1:7700".parse().expect("addr"));
        assert_eq!(c.data_dir, PathBuf::from("syncpay-data"));
        assert_eq!(c.durability, Durability::Fsync);
        assert_eq!(c.cache_bytes, syncpay::store::sled::DEFAULT_CACHE_BYTES);
        assert_eq!(c.log_format, LogFormat::Human);
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9700".parse().expect("addr")));
        assert_eq!(c.console_listen, Some("127.0.0.1:7780".parse().expect("addr")));
        assert!(!c.console_required, "the default console may give way to a busy port");
        assert_eq!(c.limits.default_ttl, limits::DEFAULT_TTL);
        assert_eq!(c.limits.max_ttl, limits::MAX_TTL);
        assert_eq!(c.limits.max_amount_minor, limits::MAX_AMOUNT_MINOR);
    }

    #[test]
    fn the_console_stays_on_loopback_without_tls_and_off_the_other_ports() {
        let c = check(None, &[("SYNCPAY_CONSOLE_LISTEN", "off")], &[]).expect("off");
        assert_eq!(c.console_listen, None);
        let c = check(None, &[], &[("--console-listen", "[::1]:0")]).expect("loopback");
        assert_eq!(c.console_listen, Some("[::1]:0".parse().expect("addr")));
        assert!(c.console_required, "an address that was asked for must bind");
        let problems = check(None, &[], &[("--console-listen", "0.0.0.0:7780")]).expect_err("plaintext off loopback");
        assert!(problems.iter().any(|p| p.starts_with("console.listen") && p.contains("loopback")), "{problems:?}");
        let problems = check(None, &[], &[("--console-listen", "127.0.0.1:9700")]).expect_err("taken");
        assert!(problems.iter().any(|p| p.contains("is the metrics.listen address")), "{problems:?}");
        let problems = check(None, &[], &[("--console-listen", "127.0.0.1:7700")]).expect_err("taken");
        assert!(problems.iter().any(|p| p.contains("is the listen address")), "{problems:?}");
        let problems = check(None, &[], &[("--console-listen", "console")]).expect_err("not an address");
        assert!(problems.iter().any(|p| p.starts_with("console.listen = \"console\"")), "{problems:?}");
    }

    #[test]
    fn flags_override_env_override_file() {
        let file = "listen = \"127.0.0.1:1001\"\ndata_dir = \"from-file\"\ndurability = \"flush-only\"\n[limits]\nmax_ttl_seconds = 600\n";
        let env = [("SYNCPAY_LISTEN", "127.0.0.1:1002"), ("SYNCPAY_DATA_DIR", "from-env")];
        let c = check(Some(file), &env, &[("--listen", "127.0.0.1:1003")]).expect("valid");
        assert_eq!(c.listen.port(), 1003);
        assert_eq!(c.data_dir, PathBuf::from("from-env"));
        assert_eq!(c.durability, Durability::FlushOnly);
        assert_eq!(c.limits.max_ttl, Duration::from_secs(600));
        let from = |k: &str| c.effective.iter().find(|(key, _, _)| key == k).map(|(_, _, o)| o.clone());
        assert_eq!(from("listen").as_deref(), Some("flag --listen"));
        assert_eq!(from("data_dir").as_deref(), Some("environment variable SYNCPAY_DATA_DIR"));
        assert!(from("durability").is_some_and(|o| o.starts_with("config file")), "{:?}", from("durability"));
        assert_eq!(from("log.level").as_deref(), Some("built-in default"));
    }

    #[test]
    fn the_page_cache_is_set_in_mib_within_bounds() {
        let c = check(Some("cache_mib = 16\n"), &[], &[]).expect("valid");
        assert_eq!(c.cache_bytes, 16 << 20);
        for bad in ["7", "65537", "-1", "\"lots\""] {
            let problems = check(None, &[("SYNCPAY_CACHE_MIB", bad)], &[]).expect_err("out of bounds");
            assert!(problems.iter().any(|p| p.starts_with("cache_mib")), "{bad}: {problems:?}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let file = "listen = \"0.0.0.0:7700\"\nlistne = 1\n[limits]\nmin_ttl_seconds = 60\ndefault_ttl_seconds = 30\nmax_ttl_seconds = 1200\n[log]\nformat = \"xml\"\n";
        let env = [("SYNCPAY_DURABILITY", "sometimes"), ("SYNCPAY_LIMITS_MAX_SHOPS", "many")];
        let problems = check(Some(file), &env, &[("--metrics-listen", "nowhere")]).expect_err("invalid");
        let text = problems.join("\n");
        for needle in [
            "listen = \"0.0.0.0:7700\"",
            "listne",
            "limits.max_ttl_seconds = 1200",
            "log.format = \"xml\"",
            "durability = \"sometimes\" (environment variable SYNCPAY_DURABILITY)",
            "limits.max_shops",
            "metrics.listen = \"nowhere\" (flag --metrics-listen)",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert!(problems.len() >= 7, "{text}");
        // The TTL relation is checked when all three are in range.
        let file = "[limits]\nmin_ttl_seconds = 60\ndefault_ttl_seconds = 30\n";
        let problems = check(Some(file), &[], &[]).expect_err("invalid");
        assert!(
            problems.iter().any(|p| p.contains("min_ttl_seconds (60) <= default_ttl_seconds (30)")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_broken_or_missing_file_is_one_problem_among_others() {
        let problems = check(Some("listen = "), &[("SYNCPAY_LOG_FORMAT", "yaml")], &[]).expect_err("invalid");
        assert!(problems.iter().any(|p| p.starts_with("config file")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("log.format")), "{problems:?}");
        let cli = Flags { config: Some(PathBuf::from("/nonexistent/syncpay.toml")), ..Flags::default() };
        let problems = load(&cli, &|_| None).expect_err("missing file");
        assert!(problems[0].contains("/nonexistent/syncpay.toml"), "{problems:?}");
    }

    #[test]
    fn set_reaches_any_key_and_metrics_can_be_off() {
        let cli = Flags {
            sets: vec!["limits.max_amount_minor=5000".into(), "metrics.listen=off".into(), "nope=1".into()],
            ..Flags::default()
        };
        let problems = load(&cli, &|_| None).expect_err("unknown key");
        assert_eq!(problems.len(), 1, "{problems:?}");
        let cli = Flags { sets: cli.sets[..2].to_vec(), ..Flags::default() };
        let c = load(&cli, &|_| None).expect("valid");
        assert_eq!(c.limits.max_amount_minor, 5000);
        assert_eq!(c.metrics_listen, None);
    }

    #[test]
    fn limits_may_be_lowered_never_raised_and_metrics_stay_on_loopback_unless_said() {
        let problems = check(
            None,
            &[("SYNCPAY_LIMITS_SHOP_TRADES_PER_SECOND", "51"), ("SYNCPAY_METRICS_LISTEN", "192.0.2.1:9700")],
            &[],
        )
        .expect_err("raised");
        assert!(
            problems.iter().any(|p| p.starts_with("limits.shop_trades_per_second = 51") && p.contains("1..=50")),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.starts_with("metrics.listen = \"192.0.2.1:9700\"")), "{problems:?}");
        assert_eq!(problems.len(), 2, "{problems:?}");
        let c = check(
            Some("[metrics]\nlisten = \"0.0.0.0:9700\"\nallow_non_loopback = true\n[limits]\nshop_trades_per_second = 0\n"),
            &[("SYNCPAY_LIMITS_SUBSCRIBER_OFFERS_PER_MINUTE", "2")],
            &[],
        )
        .expect("lowered, off, and acknowledged");
        assert_eq!(c.limits.shop_trades.count, 0);
        assert_eq!(c.limits.subscriber_offers.count, 2);
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9700".parse().expect("addr")));
        let problems = check(None, &[("SYNCPAY_METRICS_ALLOW_NON_LOOPBACK", "yes")], &[]).expect_err("not a bool");
        assert!(problems[0].starts_with("metrics.allow_non_loopback"), "{problems:?}");
    }

    #[test]
    fn the_example_config_is_valid_and_names_every_setting() {
        let text = include_str!("../../syncpay.example.toml");
        let c = check(Some(text), &[], &[]).expect("the example is valid");
        assert_eq!(c.listen.port(), 7700);
        for s in SETTINGS {
            let name = s.key.rsplit('.').next().unwrap_or(s.key);
            assert!(text.contains(&format!("{name} =")), "example lacks {}", s.key);
            assert!(text.contains(s.env), "example lacks {}", s.env);
        }
    }
}
