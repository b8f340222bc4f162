//! `syncpay carrier-sim`: a simulated carrier relay (`terminal_sim`) with N
//! handsets against any server, until Ctrl-C or SIGTERM. Enrolls the
//! handsets, keeps the relay stream open, answers offers by policy and
//! prints what happens. The carrier knows its subscribers' numbers, so they
//! are printed in full here (and only here). With `--web` it also serves
//! the handset page (`syncpay::web::phone`) for browser phones, whose keys
//! are made in the page.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use syncpay::domain::SubscriberNumber;
use syncpay::proto;
use syncpay::terminal_sim::{CarrierSim, PhoneFunding, Policy, SimCounters, SimEvent};

use super::{connection, print_json, read_token, Connect, Connection, Exit};

#[derive(Args)]
pub struct CarrierSimArgs {
    #[command(flatten)]
    connect: Connect,
    /// File holding the carrier's token (from `syncpay admin
    /// create-carrier`); not used with --tls-*.
    #[arg(long, env = "SYNCPAY_CARRIER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The token itself, read from SYNCPAY_CARRIER_TOKEN (environment only).
    #[arg(skip = std::env::var("SYNCPAY_CARRIER_TOKEN").ok())]
    token: Option<String>,
    /// How many handsets to host, numbered up from --first-number.
    #[arg(long, default_value_t = 3)]
    handsets: u32,
    /// The first handset's E.164 number.
    #[arg(long, default_value = "+819000000001")]
    first_number: String,
    /// How every handset answers: approve, decline, ignore, bad-signature,
    /// answer-twice or approve-after-MS (e.g. approve-after-1500).
    #[arg(long, default_value = "approve")]
    policy: String,
    /// A handset with its own policy, NUMBER=POLICY (repeatable; added to,
    /// or overriding, the numbered ones).
    #[arg(long = "handset", value_name = "NUMBER=POLICY")]
    extra: Vec<String>,
    /// Enroll a handset for direct carrier billing with a monthly cap,
    /// NUMBER=CURRENCY:CAP_MINOR (repeatable), e.g. +819000000001=JPY:10000.
    #[arg(long = "billed", value_name = "NUMBER=CURRENCY:CAP")]
    billed: Vec<String>,
    /// A lease starting now: IP=NUMBER or IP:LO-HI=NUMBER for a CGNAT
    /// port block (repeatable). In ask mode it stays in the simulated
    /// carrier's own table, which answers the server's resolve requests;
    /// in push mode it is reported (ReportLeases).
    #[arg(long = "lease", value_name = "IP[:LO-HI]=NUMBER")]
    leases: Vec<String>,
    /// The carrier's resolve mode, set at the server when leases are
    /// given: `ask` (the default: leases stay here) or `push`.
    #[arg(long, default_value = "ask", value_parser = ["ask", "push"])]
    resolve_mode: String,
    /// Accept a shop (lets it name this carrier's payers by network
    /// identity and charge carrier bills; repeatable).
    #[arg(long = "accept", value_name = "SHOP_ID")]
    accept: Vec<String>,
    /// Serve the handset page on this loopback address (anyone who can
    /// open it can answer for its phones, so it never leaves this
    /// computer). Its phones are the --web-phone numbers, or the first
    /// number; their keys are made in the browser.
    #[arg(long, value_name = "ADDR")]
    web: Option<std::net::SocketAddr>,
    /// A phone of the handset page, NUMBER or NUMBER=LABEL (repeatable;
    /// wallet-funded unless --billed names it). It replaces a simulated
    /// handset of the same number.
    #[arg(long = "web-phone", value_name = "NUMBER[=LABEL]")]
    web_phones: Vec<String>,
    /// Print events as JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

/// `198.51.100.7=+81…` or `198.51.100.7:1024-2047=+81…` (IPv6 with a port
/// block in brackets: `[2001:db8::1]:1024-2047=+81…`).
fn parse_lease(text: &str, now: i64) -> Result<proto::LeaseStart, String> {
    let (addr, number) =
        text.rsplit_once('=').ok_or_else(|| format!("--lease {text:?}: expected IP[:LO-HI]=NUMBER"))?;
    let (ip, ports) = match addr.strip_prefix('[').and_then(|r| r.split_once("]:")) {
        Some((ip, ports)) => (ip, Some(ports)),
        None => match addr.rsplit_once(':') {
            Some((ip, ports)) if !ip.contains(':') => (ip, Some(ports)),
            _ => (addr, None),
        },
    };
    let (port_lo, port_hi) = match ports {
        None => (0, 0),
        Some(p) => {
            let (lo, hi) = p.split_once('-').ok_or_else(|| format!("--lease {text:?}: ports as LO-HI"))?;
            let parse = |v: &str| v.parse::<u32>().map_err(|_| format!("--lease {text:?}: port {v:?}"));
            (parse(lo)?, parse(hi)?)
        }
    };
    Ok(proto::LeaseStart { ip: ip.into(), port_lo, port_hi, subscriber_number: number.into(), start_ms: now })
}

/// Most handsets one simulator hosts from the command line.
const MAX_HANDSETS: u32 = 1000;
/// How long to wait for the first relay connection before giving up.
const CONNECT_WAIT: Duration = Duration::from_secs(30);

fn parse_policy(text: &str) -> Result<Policy, String> {
    Ok(match text {
        "approve" => Policy::Approve,
        "decline" => Policy::Decline,
        "ignore" => Policy::Ignore,
        "bad-signature" => Policy::BadSignature,
        "answer-twice" => Policy::AnswerTwice,
        other => match other.strip_prefix("approve-after-").map(str::parse::<u64>) {
            Some(Ok(ms)) => Policy::ApproveAfter(Duration::from_millis(ms)),
            _ => {
                return Err(format!(
                "policy {other:?}: expected approve, decline, ignore, bad-signature, answer-twice or approve-after-MS"
            ))
            }
        },
    })
}

/// `+819000000001`, 3 → the first three numbers counting up.
fn numbers(first: &str, count: u32) -> Result<Vec<String>, String> {
    let first = SubscriberNumber::parse(first).map_err(|e| format!("--first-number: {e}"))?;
    let digits = &first.as_str()[1..];
    let start: u64 = digits.parse().map_err(|_| "--first-number: not digits".to_owned())?;
    (0..u64::from(count))
        .map(|i| {
            let n = start.checked_add(i).ok_or("--first-number: too large")?;
            let text = format!("+{n:0width$}", width = digits.len());
            SubscriberNumber::parse(&text).map(|_| text).map_err(|e| format!("handset {i}: {e}"))
        })
        .collect()
}

pub async fn run(args: CarrierSimArgs) -> anyhow::Result<()> {
    super::init_logging("warn");
    let mut signals = super::serve::StopSignals::install()?;
    if args.handsets > MAX_HANDSETS {
        return Err(Exit::usage(format!("--handsets: at most {MAX_HANDSETS}")));
    }
    let policy = parse_policy(&args.policy).map_err(Exit::usage)?;
    let mut plan: Vec<(String, Policy)> =
        numbers(&args.first_number, args.handsets).map_err(Exit::usage)?.into_iter().map(|n| (n, policy)).collect();
    for extra in &args.extra {
        let (number, p) =
            extra.split_once('=').ok_or_else(|| Exit::usage(format!("--handset {extra:?}: expected NUMBER=POLICY")))?;
        let p = parse_policy(p).map_err(Exit::usage)?;
        match plan.iter_mut().find(|(n, _)| n == number) {
            Some(entry) => entry.1 = p,
            None => plan.push((number.to_owned(), p)),
        }
    }

    let web_phones = web_phones(&args)?;
    plan.retain(|(n, _)| !web_phones.iter().any(|(w, _, _)| w.as_str() == n));

    // Over mutual TLS the carrier's certificate is the credential: no token.
    let conn =
        connection(&args.connect, || read_token(args.token.as_deref(), args.token_file.as_deref(), "carrier")).await?;
    let server = args.connect.url();
    let sim = std::sync::Arc::new(CarrierSim::start(conn.channel.clone(), &conn.token)?);
    for (number, policy) in &plan {
        sim.add_handset(number, *policy).await.with_context(|| format!("enrolling handset {number}"))?;
    }
    for (number, _, funding) in &web_phones {
        sim.add_browser_phone(number.as_str(), *funding)
            .await
            .with_context(|| format!("enrolling browser phone {}", number.as_str()))?;
    }
    sim.wait_connected(CONNECT_WAIT).await.context("waiting for the relay stream")?;
    network_setup(&args, &conn, &sim).await?;
    let page = match args.web {
        Some(addr) => {
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding --web {addr}"))?;
            let entries = web_phones
                .iter()
                .map(|(number, label, _)| syncpay::web::phone::PhoneEntry {
                    number: number.clone(),
                    label: label.clone(),
                })
                .collect();
            let page = syncpay::web::phone::start(listener, sim.clone(), "Simulated carrier", entries)?;
            if !args.json {
                println!("handset page: {}", page.url());
                for (number, label, _) in &web_phones {
                    println!("  {}  {label}", page.phone_url(number));
                }
            }
            Some(page)
        }
        None => None,
    };
    if args.json {
        let handsets: Vec<_> = plan.iter().map(|(n, p)| json!({"number": n, "policy": format!("{p:?}")})).collect();
        print_json(&json!({"event": "ready", "server": server, "handsets": handsets}));
    } else {
        println!("carrier-sim ready: relay connected to {}, {} handsets", server, plan.len());
        for (n, p) in &plan {
            println!("  {n}  {p:?}");
        }
        println!("(Ctrl-C to stop)");
    }

    let signal = signals.stopped();
    tokio::pin!(signal);
    let mut last_counters = sim.counters();
    let mut last_event: Option<SimEvent> = None;
    loop {
        let changed = tokio::select! {
            c = sim.wait_for_counters(Duration::from_secs(3600), |c| *c != last_counters) => c,
            _ = &mut signal => break,
        };
        if let Ok(c) = changed {
            last_counters = c;
        }
        let transcript = sim.transcript();
        let start = last_event.as_ref().and_then(|l| transcript.iter().rposition(|e| e == l)).map_or(0, |i| i + 1);
        for event in &transcript[start..] {
            print_event(event, args.json);
        }
        if let Some(last) = transcript.last() {
            last_event = Some(last.clone());
        }
    }
    let counters = sim.counters();
    if let Some(page) = page {
        page.shutdown().await;
    }
    match std::sync::Arc::try_unwrap(sim) {
        Ok(sim) => sim.shutdown().await?,
        // Still shared by a page task that has not let go: dropping stops it.
        Err(sim) => drop(sim),
    }
    print_summary(&counters, args.json);
    Ok(())
}

/// The handset page's phones: (number, label, funding). Billed when
/// `--billed` names the number, else wallet-funded.
fn web_phones(args: &CarrierSimArgs) -> anyhow::Result<Vec<(SubscriberNumber, String, PhoneFunding)>> {
    let Some(addr) = args.web else {
        if !args.web_phones.is_empty() {
            return Err(Exit::usage("--web-phone needs --web ADDR"));
        }
        return Ok(Vec::new());
    };
    if !addr.ip().is_loopback() {
        return Err(Exit::usage(format!(
            "--web {addr}: the handset page answers for its phones without a login, so it listens only on loopback"
        )));
    }
    let texts = if args.web_phones.is_empty() { vec![args.first_number.clone()] } else { args.web_phones.clone() };
    let mut out = Vec::new();
    for text in texts {
        let (number, label) = match text.split_once('=') {
            Some((n, l)) => (n.to_owned(), l.to_owned()),
            None => (text.clone(), String::new()),
        };
        let number = SubscriberNumber::parse(&number).map_err(|e| Exit::usage(format!("--web-phone {text:?}: {e}")))?;
        let billed = args.billed.iter().find_map(|b| {
            let (n, terms) = b.split_once('=')?;
            (n == number.as_str()).then_some(terms)
        });
        let funding = match billed {
            Some(terms) => {
                let (currency, cap) =
                    terms.split_once(':').ok_or_else(|| Exit::usage(format!("--billed {terms:?}: CURRENCY:CAP")))?;
                let currency = syncpay::domain::Currency::parse(currency)
                    .map_err(|e| Exit::usage(format!("--billed {terms:?}: {e}")))?;
                let cap: u64 =
                    cap.parse().map_err(|_| Exit::usage(format!("--billed {terms:?}: cap in minor units")))?;
                PhoneFunding::Bill { currency, monthly_cap: syncpay::domain::Amount::new(cap) }
            }
            None => PhoneFunding::Wallet,
        };
        let label = if label.is_empty() {
            match funding {
                PhoneFunding::Wallet => format!("{} · wallet", number.as_str()),
                PhoneFunding::Bill { .. } => format!("{} · phone bill", number.as_str()),
            }
        } else {
            label
        };
        out.push((number, label, funding));
    }
    Ok(out)
}

fn state(s: proto::TradeState) -> &'static str {
    s.as_str_name().strip_prefix("TRADE_STATE_").unwrap_or("UNKNOWN")
}

fn print_event(e: &SimEvent, json: bool) {
    let (kind, text, value) = match e {
        SimEvent::RelayConnected { connection } => {
            ("relay_connected", format!("relay connected (connection {connection})"), json!({"connection": connection}))
        }
        SimEvent::RelayLost { connection, reason } => (
            "relay_lost",
            format!("relay lost (connection {connection}): {reason}; reconnecting"),
            json!({"connection": connection, "reason": reason}),
        ),
        SimEvent::OfferShown {
            number,
            trade_id,
            shop_name,
            register_label,
            amount,
            currency,
            description,
            binding_code,
            ..
        } => (
            "offer_shown",
            format!(
                "{} shows {trade_id}: {shop_name} / {register_label}: {} \"{description}\" code {binding_code}",
                number.as_str(),
                currency.format(*amount)
            ),
            json!({
                "number": number.as_str(),
                "trade_id": trade_id.to_string(),
                "shop_name": shop_name,
                "register_label": register_label,
                "amount_minor": amount.minor(),
                "currency": currency.code(),
                "description": description,
                "binding_code": binding_code,
            }),
        ),
        SimEvent::OfferIgnored { number, trade_id, reason } => (
            "offer_ignored",
            format!("offer {trade_id} not shown: {reason}"),
            json!({"number": number.as_ref().map(|n| n.as_str().to_owned()), "trade_id": trade_id, "reason": reason}),
        ),
        SimEvent::Answered { number, trade_id, decision, signature_valid } => (
            "answered",
            format!(
                "{} answers {trade_id}: {decision:?}{}",
                number.as_str(),
                if *signature_valid { "" } else { " (corrupted signature)" }
            ),
            json!({
                "number": number.as_str(),
                "trade_id": trade_id.to_string(),
                "decision": format!("{decision:?}"),
                "signature_valid": signature_valid,
            }),
        ),
        SimEvent::Withdrawn { number, trade_id, state: s } => (
            "withdrawn",
            format!("offer {trade_id} withdrawn ({})", state(*s)),
            json!({
                "number": number.as_ref().map(|n| n.as_str().to_owned()),
                "trade_id": trade_id.to_string(),
                "state": state(*s),
            }),
        ),
        SimEvent::AnswerResult(r) => (
            "answer_result",
            format!(
                "server: {} {}{}",
                r.trade_id,
                state(r.state),
                if r.accepted { String::new() } else { format!(" (answer not taken: {})", r.message) }
            ),
            json!({
                "trade_id": r.trade_id.to_string(),
                "accepted": r.accepted,
                "state": state(r.state),
                "message": r.message,
            }),
        ),
    };
    if json {
        let mut value = value;
        if let Some(map) = value.as_object_mut() {
            map.insert("event".to_owned(), json!(kind));
        }
        print_json(&value);
    } else {
        println!("{text}");
    }
}

fn print_summary(c: &SimCounters, json: bool) {
    if json {
        print_json(&json!({
            "event": "stopped",
            "connections": c.connections,
            "offers_received": c.offers_received,
            "answers_sent": c.answers_sent,
            "answer_results_received": c.answer_results_received,
        }));
    } else {
        println!(
            "carrier-sim stopped: {} connection(s), {} offers, {} answers sent, {} results",
            c.connections, c.offers_received, c.answers_sent, c.answer_results_received
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_and_numbers_parse() {
        assert_eq!(parse_policy("approve"), Ok(Policy::Approve));
        assert_eq!(parse_policy("approve-after-1500"), Ok(Policy::ApproveAfter(Duration::from_millis(1500))));
        assert!(parse_policy("maybe").is_err());
        assert_eq!(numbers("+819000000009", 2), Ok(vec!["+819000000009".to_owned(), "+819000000010".to_owned()]));
        assert!(numbers("0900", 1).is_err());
    }
}

/// Carrier billing and network identity from the command line: billed
/// enrollments, shop acceptances, then the resolve mode and the leases
/// (kept here in ask mode, one ReportLeases batch in push mode).
async fn network_setup(args: &CarrierSimArgs, conn: &Connection, sim: &CarrierSim) -> anyhow::Result<()> {
    if args.billed.is_empty() && args.leases.is_empty() && args.accept.is_empty() {
        return Ok(());
    }
    let mut carrier = proto::carrier_service_client::CarrierServiceClient::new(conn.authed()?);
    for b in &args.billed {
        let (number, terms) =
            b.split_once('=').ok_or_else(|| Exit::usage(format!("--billed {b:?}: NUMBER=CURRENCY:CAP")))?;
        let (currency, cap) =
            terms.split_once(':').ok_or_else(|| Exit::usage(format!("--billed {b:?}: NUMBER=CURRENCY:CAP")))?;
        let cap: u64 = cap.parse().map_err(|_| Exit::usage(format!("--billed {b:?}: cap in minor units")))?;
        carrier
            .enroll_subscriber(proto::EnrollSubscriberRequest {
                subscriber_number: number.into(),
                funding: proto::Funding::CarrierBill as i32,
                bill_currency: currency.into(),
                monthly_cap_minor: cap,
            })
            .await?;
    }
    for shop in &args.accept {
        carrier.accept_shop(proto::AcceptShopRequest { shop_id: shop.clone() }).await?;
    }
    if !args.leases.is_empty() {
        let now = i64::try_from(syncpay::sync_server::engine::now().0)?;
        let starts =
            args.leases.iter().map(|l| parse_lease(l, now)).collect::<Result<Vec<_>, _>>().map_err(Exit::usage)?;
        let push = args.resolve_mode == "push";
        let mode = if push { proto::ResolveMode::Push } else { proto::ResolveMode::Ask };
        carrier.set_resolve_mode(proto::SetResolveModeRequest { mode: mode as i32 }).await?;
        if push {
            let r = carrier.report_leases(proto::ReportLeasesRequest { starts, stops: vec![] }).await?.into_inner();
            if !args.json {
                println!("reported {} leases (push mode)", r.starts_recorded);
            }
        } else {
            for l in &starts {
                let ports = (u16::try_from(l.port_lo)?, u16::try_from(l.port_hi)?);
                sim.lease(&l.ip, ports, &l.subscriber_number, u64::try_from(l.start_ms)?)?;
            }
            if !args.json {
                println!("kept {} leases in the carrier's own table (ask mode)", starts.len());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod lease_tests {
    use super::parse_lease;

    #[test]
    fn lease_flags_parse() {
        let l = parse_lease("198.51.100.7=+819000000001", 5).expect("whole");
        assert_eq!((l.ip.as_str(), l.port_lo, l.port_hi, l.start_ms), ("198.51.100.7", 0, 0, 5));
        let l = parse_lease("198.51.100.7:1024-2047=+819000000001", 5).expect("block");
        assert_eq!((l.port_lo, l.port_hi), (1024, 2047));
        let l = parse_lease("2001:db8::1=+819000000001", 5).expect("v6");
        assert_eq!((l.ip.as_str(), l.port_lo), ("2001:db8::1", 0));
        let l = parse_lease("[2001:db8::1]:10-20=+819000000001", 5).expect("v6 block");
        assert_eq!((l.ip.as_str(), l.port_lo, l.port_hi), ("2001:db8::1", 10, 20));
        assert!(parse_lease("198.51.100.7", 5).is_err());
        assert!(parse_lease("198.51.100.7:x-2=+8190", 5).is_err());
    }
}
