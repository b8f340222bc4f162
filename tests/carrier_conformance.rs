//! The carrier conformance check (`syncpay::conformance`) against relays
//! whose behaviour is known: the simulated carrier (`terminal_sim`), which
//! follows docs/CARRIER.md and must pass every step, over plaintext and
//! mutual TLS; the same relay with one planted breach of the contract at a
//! time (`terminal_sim::Deviation`, or a handset policy), each of which must
//! fail exactly the steps that can see it, with the fault named; a relay
//! with the wrong credential; and the command line end to end
//! (`syncpay carrier-conformance` against `syncpay carrier-sim`).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::binary::Running;
use syncpay::client::{connect_tls, ClientTls};
use syncpay::conformance::{self, Report, Sandbox, SandboxAuth, SandboxConfig, Step, TestSubscribers, Waits};
use syncpay::domain::{CarrierId, SubscriberNumber};
use syncpay::sync_server::tls::TlsFiles;
use syncpay::terminal_sim::{CarrierSim, Deviation, Policy, SimConfig};
use tonic::transport::Channel;

const APPROVER: &str = "+819000000001";
const DECLINER: &str = "+819000000002";
const TOKEN: &str = "sandbox-carrier-token";
const WAIT: Duration = Duration::from_secs(30);

fn subscribers() -> TestSubscribers {
    TestSubscribers {
        approver: SubscriberNumber::parse(APPROVER).expect("number"),
        decliner: SubscriberNumber::parse(DECLINER).expect("number"),
        keys: Default::default(),
    }
}

fn docomo() -> CarrierId {
    CarrierId::parse("docomo").expect("carrier")
}

async fn sandbox(auth: SandboxAuth) -> Sandbox {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    Sandbox::start(listener, SandboxConfig { carrier: docomo(), auth }).await.expect("sandbox")
}

/// Runs the check against a CarrierSim connected over `channel` with
/// `token` (empty over TLS), hosting the approver (with `approver`) and
/// the decliner.
/// The check's waits, with a shorter watch for what must not come: the
/// simulated relay is in this process, so an extra answer it sends comes
/// within milliseconds, and eight runs of the full wait add up.
fn waits() -> Waits {
    Waits { quiet: Duration::from_secs(1), ..Waits::default() }
}

async fn check_sim(sandbox: &Sandbox, channel: Channel, token: &str, config: SimConfig, approver: Policy) -> Report {
    let sim = CarrierSim::start_with(channel, token, config).expect("sim");
    sim.add_handset(APPROVER, approver).await.expect("approver");
    sim.add_handset(DECLINER, Policy::Decline).await.expect("decliner");
    let report = conformance::run(sandbox, &subscribers(), &waits()).await;
    for line in report.lines() {
        eprintln!("{line}");
    }
    sim.shutdown().await.expect("sim stops");
    report
}

/// The plaintext run of a simulator with one deviation, its approver
/// approving.
async fn deviant_run(deviation: Deviation) -> Report {
    plaintext_run(SimConfig { deviation: Some(deviation), ..SimConfig::default() }, Policy::Approve).await
}

async fn plaintext_run(config: SimConfig, approver: Policy) -> Report {
    let sandbox = sandbox(SandboxAuth::Token(TOKEN.into())).await;
    let channel = syncpay::client::connect(&sandbox.url()).await.expect("connect");
    let report = check_sim(&sandbox, channel, TOKEN, config, approver).await;
    sandbox.shutdown().await;
    report
}

/// The failed steps, and each failure's detail containing its words.
fn assert_faults(report: &Report, expected: &[(Step, &str)]) {
    let failed: BTreeSet<&str> = report.failed().into_iter().collect();
    let want: BTreeSet<&str> = expected.iter().map(|(s, _)| s.name()).collect();
    assert_eq!(failed, want, "failed steps:\n{}", report.lines().join("\n"));
    for (step, words) in expected {
        let detail = &report.step(*step).expect("step reported").detail;
        assert!(detail.contains(words), "{}: {detail:?} does not name the fault ({words:?})", step.name());
    }
    assert!(!report.passed());
}

#[tokio::test]
async fn the_simulated_carrier_passes_every_step_over_mutual_tls() {
    syncpay::client::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = common::make_pki(dir.path(), &["acme"], &["docomo"]);
    let files = TlsFiles {
        cert: pki.server.cert.clone(),
        key: pki.server.key.clone(),
        client_ca: pki.ca_cert.clone(),
        client_crl: None,
    };
    let sandbox = sandbox(SandboxAuth::Tls(files)).await;
    assert!(sandbox.url().starts_with("https://"));
    let cert = |who: &str| {
        ClientTls::from_files(&pki.ca_cert, pki.dir.join(format!("{who}.pem")), pki.dir.join(format!("{who}.key")))
            .expect("client files")
    };
    let channel = connect_tls(&sandbox.url(), &cert("carrier-docomo")).await.expect("tls");
    let report = check_sim(&sandbox, channel, "", SimConfig::default(), Policy::Approve).await;
    assert!(report.passed(), "{}", report.lines().join("\n"));
    assert_eq!(report.steps.iter().map(|s| s.step).collect::<Vec<_>>(), Step::ALL);
    sandbox.shutdown().await;

    // A shop's certificate is refused, and the connect step says so.
    let sandbox = sandbox_tls_again(&pki).await;
    let channel = connect_tls(&sandbox.url(), &cert("shop-acme")).await.expect("tls");
    let sim = CarrierSim::start(channel, "").expect("sim");
    let _ = sim.add_handset(APPROVER, Policy::Approve).await.expect_err("refused");
    let waits = Waits { connect: Duration::from_millis(500), ..Waits::default() };
    let report = conformance::run(&sandbox, &subscribers(), &waits).await;
    let connect = report.step(Step::Connect).expect("connect");
    assert!(!connect.passed);
    assert!(connect.detail.contains("refused for their credentials"), "{}", connect.detail);
    assert!(connect.detail.contains("carrier credential"), "{}", connect.detail);
    assert_eq!(report.failed().len(), Step::ALL.len(), "nothing runs without the relay");
    sim.shutdown().await.expect("sim");
    sandbox.shutdown().await;
}

async fn sandbox_tls_again(pki: &syncpay::pki::PkiFiles) -> Sandbox {
    let files = TlsFiles {
        cert: pki.server.cert.clone(),
        key: pki.server.key.clone(),
        client_ca: pki.ca_cert.clone(),
        client_crl: None,
    };
    sandbox(SandboxAuth::Tls(files)).await
}

#[tokio::test]
async fn the_simulated_carrier_passes_every_step_over_plaintext() {
    let report = plaintext_run(SimConfig::default(), Policy::Approve).await;
    assert!(report.passed(), "{}", report.lines().join("\n"));
}

/// A key given to the check (from a file) is the one it checks against,
/// whatever the relay enrolls; and the sandbox refuses a wrong token.
#[tokio::test]
async fn a_given_key_is_what_the_check_verifies_with() {
    let sandbox = sandbox(SandboxAuth::Token(TOKEN.into())).await;
    let mut wrong = syncpay::proto::carrier_service_client::CarrierServiceClient::new(
        syncpay::client::with_token(syncpay::client::connect(&sandbox.url()).await.expect("connect"), "nope")
            .expect("token"),
    );
    let refused =
        wrong.accept_shop(syncpay::proto::AcceptShopRequest { shop_id: "acme".into() }).await.expect_err("wrong token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let sim = CarrierSim::start(syncpay::client::connect(&sandbox.url()).await.expect("connect"), TOKEN).expect("sim");
    sim.add_handset(APPROVER, Policy::Approve).await.expect("approver");
    sim.add_handset(DECLINER, Policy::Decline).await.expect("decliner");
    let mut given = subscribers();
    let not_the_handsets = ed25519_dalek::SigningKey::from_bytes(&[42; 32]).verifying_key().to_bytes();
    given.keys.insert(given.approver.clone(), not_the_handsets);
    let report = conformance::run(&sandbox, &given, &waits()).await;
    let connect = report.step(Step::Connect).expect("connect");
    assert!(connect.detail.contains("approver's (+*********001) key from its key file"), "{}", connect.detail);
    let approve = report.step(Step::Approve).expect("approve");
    assert!(!approve.passed);
    assert!(approve.detail.contains("does not verify over the offer's approve_payload"), "{}", approve.detail);
    assert!(report.step(Step::Decline).expect("decline").passed, "the decliner's enrolled key is used");
    sim.shutdown().await.expect("sim");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_relay_that_never_acknowledges_is_named() {
    let report = deviant_run(Deviation::NeverAck).await;
    assert_faults(
        &report,
        &[
            (Step::Ack, "no acknowledgement of the offer"),
            (Step::Redelivery, "no acknowledgement of the offer"),
            (Step::Withdrawal, "no acknowledgement of the withdrawal"),
            (Step::OfferAfterWithdrawal, "no acknowledgement of the withdrawal"),
            (Step::Reconnect, "did not acknowledge the replayed offer"),
        ],
    );
}

#[tokio::test]
async fn a_relay_that_acknowledges_the_wrong_delivery_id_is_named() {
    let report = deviant_run(Deviation::AckWrongId).await;
    assert_faults(
        &report,
        &[
            (Step::Ack, "which the sandbox never sent"),
            (Step::Redelivery, "which the sandbox never sent"),
            (Step::Withdrawal, "which the sandbox never sent"),
            (Step::OfferAfterWithdrawal, "which the sandbox never sent"),
            (Step::Reconnect, "did not acknowledge the replayed offer"),
        ],
    );
}

#[tokio::test]
async fn a_relay_that_shows_every_copy_and_forgets_withdrawals_is_named() {
    let report = deviant_run(Deviation::Forgetful).await;
    assert_faults(&report, &[(Step::OfferAfterWithdrawal, "remember withdrawn trades")]);
}

#[tokio::test]
async fn a_relay_that_ignores_withdrawals_and_answers_anyway_is_named() {
    let report = plaintext_run(
        SimConfig { deviation: Some(Deviation::IgnoreWithdrawals), ..SimConfig::default() },
        Policy::Approve,
    )
    .await;
    assert_faults(&report, &[(Step::OfferAfterWithdrawal, "whose withdrawal (CANCELLED) came before its offer")]);
}

#[tokio::test]
async fn a_relay_that_signs_other_bytes_than_the_offer_carries_is_named() {
    let report = plaintext_run(
        SimConfig { deviation: Some(Deviation::SignTrimmedText), ..SimConfig::default() },
        Policy::Approve,
    )
    .await;
    // Only the offers whose texts have spaces to trim show it.
    assert_faults(
        &report,
        &[(Step::Approve, "display texts trimmed of spaces"), (Step::Decline, "display texts trimmed of spaces")],
    );
    let detail = &report.step(Step::Approve).expect("approve").detail;
    assert!(detail.contains("signed bytes other than the offer's approve_payload"), "{detail}");
}

#[tokio::test]
async fn a_relay_that_does_not_reconnect_is_named() {
    let report = deviant_run(Deviation::NoReconnect).await;
    assert_faults(&report, &[(Step::Reconnect, "did not reconnect within 30 s")]);
}

#[tokio::test]
async fn a_handset_that_answers_twice_is_named() {
    let report = plaintext_run(SimConfig::default(), Policy::AnswerTwice).await;
    let approve = report.step(Step::Approve).expect("approve");
    assert!(!approve.passed);
    assert!(approve.detail.contains("2 times for 1 delivery of its offer"), "{}", approve.detail);
    for step in [Step::Connect, Step::Ack, Step::Decline] {
        assert!(report.step(step).expect("step").passed, "{}", report.lines().join("\n"));
    }
}

#[tokio::test]
async fn a_relay_that_never_connects_fails_every_step_within_the_connect_wait() {
    let sandbox = sandbox(SandboxAuth::Token(TOKEN.into())).await;
    let waits = Waits { connect: Duration::from_millis(300), ..Waits::default() };
    let started = std::time::Instant::now();
    let report = conformance::run(&sandbox, &subscribers(), &waits).await;
    assert!(started.elapsed() < WAIT);
    let connect = report.step(Step::Connect).expect("connect");
    assert!(connect.detail.contains("no relay stream open"), "{}", connect.detail);
    assert!(connect.detail.contains("no handset key for the approver"), "{}", connect.detail);
    assert_eq!(report.failed().len(), Step::ALL.len());
    assert_eq!(report.to_json()["passed"], false);
    sandbox.shutdown().await;
}

/// The commands as an operator runs them: `syncpay carrier-conformance`
/// with the carrier's token, and the relay under test started against the
/// sandbox it announces.
#[test]
fn the_command_passes_the_simulated_carrier_cli_and_prints_json() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("carrier.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
    let token_file = token_file.display().to_string();
    let mut check = common::binary::syncpay()
        .args([
            "carrier-conformance",
            "--listen",
            "127.0.0.1:0",
            "--carrier",
            "docomo",
            "--token-file",
            &token_file,
            "--approver",
            APPROVER,
            "--decliner",
            DECLINER,
            "--json",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // The announcement, on stderr.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = check.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[check] {line}");
            let _ = tx.send(line);
        }
    });
    let url = loop {
        let line = rx.recv_timeout(common::binary::CHILD_WAIT).expect("the sandbox announced itself");
        if let Some(rest) = line.strip_prefix("syncpay carrier-conformance sandbox on ") {
            break rest.split_whitespace().next().expect("url").to_owned();
        }
    };
    let relay = Running::spawn(
        &[
            "carrier-sim",
            "--server",
            &url,
            "--token-file",
            &token_file,
            "--handsets",
            "1",
            "--first-number",
            APPROVER,
            "--handset",
            &format!("{DECLINER}=decline"),
        ],
        "stderr",
    );
    let mut stdout = String::new();
    check.stdout.take().expect("stdout").read_to_string(&mut stdout).expect("read the report");
    let status = check.wait().expect("exit");
    drop(relay);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON value");
    assert_eq!(status.code(), Some(0), "{report:#}");
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["carrier"], "docomo");
    let steps: Vec<&str> =
        report["steps"].as_array().expect("steps").iter().filter_map(|s| s["step"].as_str()).collect();
    assert_eq!(steps, Step::ALL.map(Step::name));
}

/// A Python interpreter with grpcio, grpcio-tools and cryptography, or why
/// not. `SYNCPAY_PYTHON` names one; otherwise `python3` on the path, then
/// the distribution's `/usr/bin/python3` (where Debian's python3-grpcio
/// lands when `python3` is another installation). Under `CI` its absence
/// fails the test.
fn python_with_grpc() -> Option<String> {
    let candidates: Vec<String> = match std::env::var("SYNCPAY_PYTHON") {
        Ok(p) => vec![p],
        Err(_) => vec!["python3".into(), "/usr/bin/python3".into()],
    };
    for python in &candidates {
        let ok = std::process::Command::new(python)
            .args(["-c", "import grpc, grpc_tools, cryptography"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(python.clone());
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI: python3 with grpcio, grpcio-tools and cryptography is required (tried {candidates:?})"
    );
    eprintln!("SKIPPED the Python relay: no python3 with grpcio, grpcio-tools and cryptography ({candidates:?})");
    None
}

/// The relay written in Python from docs/CARRIER.md, docs/APPROVAL.md and
/// the proto alone (scripts/python_relay.py) passes every step: the
/// evidence that the guides are enough to build a conforming relay.
#[tokio::test]
async fn the_python_relay_written_from_the_guides_passes_every_step() {
    let Some(python) = python_with_grpc() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("carrier.token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let sandbox = sandbox(SandboxAuth::Token(TOKEN.into())).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/python_relay.py");
    let relay = std::process::Command::new(&python)
        .arg(script)
        .args(["--server", &sandbox.url(), "--token-file"])
        .arg(&token_file)
        .args(["--handset", &format!("{APPROVER}=approve"), "--handset", &format!("{DECLINER}=decline")])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start the Python relay");
    // Killed when the test ends, passing or not.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _relay = Kill(relay);
    // Compiling the proto at start takes a moment: the default wait.
    let report = conformance::run(&sandbox, &subscribers(), &Waits::default()).await;
    for line in report.lines() {
        eprintln!("{line}");
    }
    assert!(report.passed(), "{}", report.lines().join("\n"));
    sandbox.shutdown().await;
}

/// The same Python relay against a real server: a purchase approved on
/// its handset settles, one declined ends DECLINED.
#[tokio::test]
async fn the_python_relay_settles_and_declines_real_trades() {
    let Some(python) = python_with_grpc() else { return };
    let t = common::TestServer::start().await;
    let shop_token = t.create_shop("acme", "Acme Books").await;
    let carrier_token = t.create_carrier("docomo", "Docomo").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("carrier.token");
    std::fs::write(&token_file, &carrier_token).expect("token");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/python_relay.py");
    let mut relay = std::process::Command::new(&python)
        .arg(script)
        .args(["--server", &t.server.url(), "--token-file"])
        .arg(&token_file)
        .args(["--handset", &format!("{APPROVER}=approve"), "--handset", &format!("{DECLINER}=decline")])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the Python relay");
    let stderr = relay.stderr.take().expect("stderr");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _relay = Kill(relay);
    // The relay enrolls its subscribers itself and says so; the wallet is
    // topped up once it has.
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            let _ = tx.send(line);
        }
    });
    // Read on a blocking thread: this runtime also runs the server.
    tokio::task::spawn_blocking(move || {
        let mut enrolled = 0;
        while enrolled < 2 {
            let line = lines.recv_timeout(common::binary::CHILD_WAIT).expect("the relay enrolled its handsets");
            enrolled += usize::from(line.starts_with("python-relay: enrolled "));
        }
    })
    .await
    .expect("enrolled");
    t.top_up(APPROVER, 10_000, "JPY").await;
    let register =
        syncpay::register::VirtualRegister::open(t.channel().await, &shop_token, "till").await.expect("register");
    let charge = |payer: &str| syncpay::register::ChargeRequest {
        ttl_seconds: 60,
        ..syncpay::register::ChargeRequest::new(payer, 1_200, "JPY", "Tea for two ")
    };
    // The relay may still be opening its stream: the offer waits in the
    // outbox for it.
    let settled = register.charge(charge(APPROVER)).await.expect("charge");
    assert_eq!(settled.state, syncpay::proto::TradeState::Settled as i32, "{settled:?}");
    let declined = register.charge(charge(DECLINER)).await.expect("charge");
    assert_eq!(declined.state, syncpay::proto::TradeState::Declined as i32, "{declined:?}");
    t.assert_ledger_ok().await;
}
