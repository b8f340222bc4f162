//! Hostile input at the gRPC boundary: every field of every request, when
//! malformed, is `INVALID_ARGUMENT` naming the field; bytes that are no
//! valid message (garbage, invalid UTF-8 in a string, a cut-off field) are
//! `INVALID_ARGUMENT` too; duplicate fields follow protobuf's last-one-wins
//! and are then validated like any other. And property tests send
//! arbitrary requests, structured and raw, to every RPC of a real server:
//! never `INTERNAL` (or `UNKNOWN`), never a panic, and the server still
//! serves afterwards.

mod common;

use common::raw::{self, UNARY_METHODS};
use common::TestServer;
use proptest::prelude::*;
use prost::Message;
use syncpay::client::{with_token, AuthedChannel};
use syncpay::proto;
use tonic::Code;

const NUMBER: &str = "+818033330001";

/// The party that may call `path`'s service.
fn token_for<'a>(path: &str, shop: &'a str, carrier: &'a str, admin: &'a str) -> &'a str {
    if path.contains("RegisterService") {
        shop
    } else if path.contains("CarrierService") {
        carrier
    } else {
        admin
    }
}

struct World {
    t: TestServer,
    shop: String,
    carrier: String,
    register_id: String,
}

async fn world() -> World {
    let t = TestServer::start().await;
    let shop = t.create_shop("acme", "Acme").await;
    let carrier = t.create_carrier("docomo", "Docomo").await;
    let register_id = t
        .shop(&shop)
        .await
        .open_register(proto::OpenRegisterRequest { label: "till".into() })
        .await
        .expect("open")
        .into_inner()
        .register_id;
    World { t, shop, carrier, register_id }
}

impl World {
    async fn channel(&self, path: &str) -> AuthedChannel {
        let token = token_for(path, &self.shop, &self.carrier, &self.t.config.admin_token);
        with_token(self.t.channel().await, token).expect("token")
    }

    /// Sends `message` to `path`; asserts INVALID_ARGUMENT naming `field`.
    async fn check<M: Message>(&self, path: &str, message: &M, field: &str) {
        let result = raw::unary(self.channel(path).await, path, message.encode_to_vec()).await;
        let status = result.expect_err(&format!("{path} must refuse a bad {field}"));
        assert_eq!(status.code(), Code::InvalidArgument, "{path} {field}: {status:?}");
        assert!(status.message().starts_with(field), "{path}: {:?} does not name {field}", status.message());
    }

    /// Sends `body` as the HTTP/2 request body of a call to `path`, as the
    /// party that may call it, with extra `headers`.
    async fn http(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
        let token = token_for(path, &self.shop, &self.carrier, &self.t.config.admin_token);
        raw::http_call(self.t.channel().await, path, token, headers, body).await
    }

    /// Sends raw bytes to `path`; the status.
    async fn raw_status(&self, path: &str, bytes: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
        if path.ends_with("WatchTrades") {
            return raw::first_of_stream(self.channel(path).await, path, bytes).await.map(|m| m.unwrap_or_default());
        }
        raw::unary(self.channel(path).await, path, bytes).await
    }
}

fn trade(register: &str) -> proto::CreateTradeRequest {
    proto::CreateTradeRequest {
        register_id: register.into(),
        amount_minor: 1200,
        currency: "JPY".into(),
        description: "book".into(),
        ttl_seconds: 60,
        idempotency_key: String::new(),
        payer: Some(proto::create_trade_request::Payer::SubscriberNumber(NUMBER.into())),
    }
}

const TRD: &str = "trd_0000000000000000000000000A";

/// Ids of the wrong form: empty, wrong prefix, short, long, outside the
/// alphabet, out of 128-bit range, padded, lookalike Unicode.
fn bad_ids(prefix: &str) -> Vec<String> {
    let other = if prefix == "trd_" { "reg_" } else { "trd_" };
    vec![
        String::new(),
        format!("{other}0000000000000000000000000A"),
        format!("{prefix}short"),
        format!("{prefix}0000000000000000000000000AA"),
        format!("{prefix}000000000000000000000000U0"),
        format!("{prefix}Z000000000000000000000000A"),
        format!(" {prefix}0000000000000000000000000A"),
        format!("{prefix}0000000000000000000000000\u{0410}"),
        format!("{prefix}0000000000000000000000000\u{0}"),
    ]
}

/// Strings that are no printable, bounded text.
fn bad_texts(max: usize) -> Vec<String> {
    vec!["x".repeat(max + 1), "a\u{0}b".into(), "a\nb".into(), "a\u{7}".into(), "1\u{202E}00".into(), "\u{200B}".into()]
}

fn bad_numbers() -> Vec<String> {
    [
        "",
        "08012345678",
        "+0812345678",
        "+81",
        "+8180123456789012",
        "+81 80 1234",
        "＋818012345678",
        "+81801234567\u{0}",
        "818012345678",
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test]
async fn every_field_of_every_request_is_validated_naming_the_field() {
    let w = world().await;
    const REG: &str = "/syncpay.v1.RegisterService/";
    let path = |m: &str| format!("{REG}{m}");

    for bad in ["".to_owned(), " ".to_owned()].into_iter().chain(bad_texts(64)) {
        w.check(&path("OpenRegister"), &proto::OpenRegisterRequest { label: bad }, "label").await;
    }
    for bad in bad_ids("reg_") {
        w.check(&path("CloseRegister"), &proto::CloseRegisterRequest { register_id: bad.clone() }, "register_id").await;
        w.check(
            &path("CreateTrade"),
            &proto::CreateTradeRequest { register_id: bad.clone(), ..trade("") },
            "register_id",
        )
        .await;
        if !bad.is_empty() {
            // (Empty means "every register" here.)
            let watch = proto::WatchTradesRequest { after_sequence: 0, register_id: bad };
            w.check(&path("WatchTrades"), &watch, "register_id").await;
        }
    }
    let good = trade(&w.register_id);
    for amount in [0, 1_000_000_000_001, u64::MAX] {
        w.check(
            &path("CreateTrade"),
            &proto::CreateTradeRequest { amount_minor: amount, ..good.clone() },
            "amount_minor",
        )
        .await;
        let refund =
            proto::RefundTradeRequest { trade_id: TRD.into(), amount_minor: amount, idempotency_key: String::new() };
        w.check(&path("RefundTrade"), &refund, "amount_minor").await;
    }
    for currency in ["", "jpy", "XYZ", "JP", "JPYY", "J\u{0}Y", "ＪＰＹ"] {
        w.check(
            &path("CreateTrade"),
            &proto::CreateTradeRequest { currency: currency.into(), ..good.clone() },
            "currency",
        )
        .await;
    }
    for bad in bad_texts(140) {
        w.check(&path("CreateTrade"), &proto::CreateTradeRequest { description: bad, ..good.clone() }, "description")
            .await;
    }
    for ttl in [901, 3600, u32::MAX] {
        w.check(&path("CreateTrade"), &proto::CreateTradeRequest { ttl_seconds: ttl, ..good.clone() }, "ttl_seconds")
            .await;
    }
    for key in ["x".repeat(65), "a b".into(), "é".into(), "a\u{0}".into(), "\t".into()] {
        w.check(
            &path("CreateTrade"),
            &proto::CreateTradeRequest { idempotency_key: key.clone(), ..good.clone() },
            "idempotency_key",
        )
        .await;
        let refund = proto::RefundTradeRequest { trade_id: TRD.into(), amount_minor: 1, idempotency_key: key };
        w.check(&path("RefundTrade"), &refund, "idempotency_key").await;
    }
    w.check(&path("CreateTrade"), &proto::CreateTradeRequest { payer: None, ..good.clone() }, "payer").await;
    for number in bad_numbers() {
        let payer = Some(proto::create_trade_request::Payer::SubscriberNumber(number));
        w.check(&path("CreateTrade"), &proto::CreateTradeRequest { payer, ..good.clone() }, "subscriber_number").await;
    }
    for bad in bad_ids("trd_") {
        w.check(&path("GetTrade"), &proto::GetTradeRequest { trade_id: bad.clone() }, "trade_id").await;
        w.check(&path("AwaitTrade"), &proto::AwaitTradeRequest { trade_id: bad.clone(), wait_ms: 1 }, "trade_id").await;
        w.check(&path("CancelTrade"), &proto::CancelTradeRequest { trade_id: bad.clone() }, "trade_id").await;
        let refund =
            proto::RefundTradeRequest { trade_id: bad.clone(), amount_minor: 1, idempotency_key: String::new() };
        w.check(&path("RefundTrade"), &refund, "trade_id").await;
        let dispute = proto::DisputeTradeRequest { trade_id: bad };
        w.check("/syncpay.v1.AdminService/DisputeTrade", &dispute, "trade_id").await;
    }
    // Longer than the documented maximum (60 s) is refused, not clamped.
    for wait_ms in [60_001, u32::MAX] {
        w.check(&path("AwaitTrade"), &proto::AwaitTradeRequest { trade_id: TRD.into(), wait_ms }, "wait_ms").await;
    }
    // (A cursor beyond the shop's last event is OUT_OF_RANGE, not a
    // malformed field: tests/api_boundaries.rs.)

    const CAR: &str = "/syncpay.v1.CarrierService/";
    for number in bad_numbers() {
        let enroll =
            proto::EnrollSubscriberRequest { subscriber_number: number.clone(), funding: 1, ..Default::default() };
        w.check(&format!("{CAR}EnrollSubscriber"), &enroll, "subscriber_number").await;
        let handset = proto::EnrollHandsetRequest { subscriber_number: number.clone(), public_key: vec![9; 32] };
        w.check(&format!("{CAR}EnrollHandset"), &handset, "subscriber_number").await;
        let top_up = proto::TopUpWalletRequest { subscriber_number: number, amount_minor: 1, currency: "JPY".into() };
        w.check("/syncpay.v1.AdminService/TopUpWallet", &top_up, "subscriber_number").await;
    }
    for funding in [0, 3, -1, i32::MAX] {
        let enroll = proto::EnrollSubscriberRequest { subscriber_number: NUMBER.into(), funding, ..Default::default() };
        w.check(&format!("{CAR}EnrollSubscriber"), &enroll, "funding").await;
    }
    // CARRIER_BILL needs its currency and a positive cap.
    let bill = proto::Funding::CarrierBill as i32;
    let enroll =
        proto::EnrollSubscriberRequest { subscriber_number: NUMBER.into(), funding: bill, ..Default::default() };
    w.check(&format!("{CAR}EnrollSubscriber"), &enroll, "bill_currency").await;
    for cap in [0, u64::MAX] {
        let enroll = proto::EnrollSubscriberRequest {
            subscriber_number: NUMBER.into(),
            funding: bill,
            bill_currency: "JPY".into(),
            monthly_cap_minor: cap,
        };
        w.check(&format!("{CAR}EnrollSubscriber"), &enroll, "monthly_cap_minor").await;
    }
    let mut identity = vec![0u8; 32];
    identity[0] = 1;
    for key in [vec![], vec![9; 31], vec![9; 33], vec![0xff; 32], identity, vec![0; 32]] {
        let handset = proto::EnrollHandsetRequest { subscriber_number: NUMBER.into(), public_key: key };
        w.check(&format!("{CAR}EnrollHandset"), &handset, "public_key").await;
    }

    const ADM: &str = "/syncpay.v1.AdminService/";
    for id in ["", "Acme", "a b", "-a", &"a".repeat(33), "acme\u{0}", "ａcme"] {
        let shop = proto::CreateShopRequest { shop_id: id.into(), display_name: "A".into() };
        w.check(&format!("{ADM}CreateShop"), &shop, "shop_id").await;
        let carrier =
            proto::CreateCarrierRequest { carrier_id: id.into(), display_name: "A".into(), ..Default::default() };
        w.check(&format!("{ADM}CreateCarrier"), &carrier, "carrier_id").await;
    }
    for name in ["".to_owned(), " ".to_owned()].into_iter().chain(bad_texts(64)) {
        let shop = proto::CreateShopRequest { shop_id: "newshop".into(), display_name: name.clone() };
        w.check(&format!("{ADM}CreateShop"), &shop, "display_name").await;
        let carrier =
            proto::CreateCarrierRequest { carrier_id: "newcarrier".into(), display_name: name, ..Default::default() };
        w.check(&format!("{ADM}CreateCarrier"), &carrier, "display_name").await;
    }
    for amount in [0, u64::MAX] {
        let top_up = proto::TopUpWalletRequest {
            subscriber_number: NUMBER.into(),
            amount_minor: amount,
            currency: "JPY".into(),
        };
        w.check(&format!("{ADM}TopUpWallet"), &top_up, "amount_minor").await;
    }
    let top_up =
        proto::TopUpWalletRequest { subscriber_number: NUMBER.into(), amount_minor: 1, currency: "EUR1".into() };
    w.check(&format!("{ADM}TopUpWallet"), &top_up, "currency").await;
    for prefix in bad_texts(128) {
        w.check(&format!("{ADM}ListAccounts"), &proto::ListAccountsRequest { prefix }, "prefix").await;
    }

    // The good request itself is fine.
    assert!(w.t.shop(&w.shop).await.create_trade(good).await.is_ok());
}

#[tokio::test]
async fn undecodable_duplicate_and_unknown_fields_follow_protobuf_and_are_never_internal() {
    let w = world().await;
    let create = "/syncpay.v1.RegisterService/CreateTrade";
    let good = trade(&w.register_id).encode_to_vec();

    // Invalid UTF-8 in a string field (currency, field 3).
    let mut bad_utf8 = good.clone();
    bad_utf8.extend_from_slice(&[0x1a, 0x02, 0xff, 0xfe]);
    // Garbage, a length running past the end, a field cut off.
    let cases = vec![
        ("invalid UTF-8", bad_utf8),
        ("garbage", vec![0xff; 16]),
        ("length past the end", vec![0x0a, 0x7f, b'r']),
        ("cut-off varint", vec![0x10, 0xff]),
        ("group wire type", vec![0x0b, 0x0c]),
    ];
    for (what, bytes) in cases {
        let status = w.raw_status(create, bytes).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().starts_with("request: not a valid protobuf message"), "{what}: {}", status.message());
    }

    // A duplicate scalar: the last one wins, then is validated.
    let mut duplicate = good.clone();
    duplicate.extend_from_slice(&[0x10, 0x00]); // amount_minor = 0
    let status = w.raw_status(create, duplicate).await.expect_err("amount 0 wins");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("amount_minor"), "{}", status.message());
    // A duplicate oneof member: the last one wins, then is validated.
    let mut twice = good.clone();
    twice.extend_from_slice(&[0x3a, 0x03, b'0', b'8', b'0']);
    let status = w.raw_status(create, twice).await.expect_err("the last payer wins");
    assert!(status.message().starts_with("subscriber_number"), "{}", status.message());
    // An unknown field is ignored (proto3), so the request is served.
    let mut unknown = good.clone();
    unknown.extend_from_slice(&[0xf8, 0x06, 0x01]); // field 111 = 1
    assert!(w.raw_status(create, unknown).await.is_ok());
    // An empty message is every field at its default: refused by name.
    let status = w.raw_status(create, Vec::new()).await.expect_err("empty");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_call_without_a_message_or_with_a_bad_compressed_flag_is_the_callers_mistake() {
    let w = world().await;
    let call = |path, headers, body| w.http(path, headers, body);
    let refused = |what: &str, path: &str, result: Result<Vec<u8>, tonic::Status>, code: Code| {
        let status = result.expect_err(&format!("{what} to {path} was served"));
        assert_eq!(status.code(), code, "{what} to {path}: {status:?}");
        assert!(status.message().starts_with("request: ") || code != Code::InvalidArgument, "{what}: {status:?}");
        status
    };
    let list = proto::ListRegistersRequest {}.encode_to_vec();
    let health = "/grpc.health.v1.Health/Check";

    // No message at all (HEADERS with END_STREAM): every call that takes
    // exactly one request message, the server stream and health included.
    let singles = UNARY_METHODS.iter().copied().chain(["/syncpay.v1.RegisterService/WatchTrades", health]);
    for path in singles {
        let status = refused("an empty body", path, call(path, &[], Vec::new()).await, Code::InvalidArgument);
        assert!(status.message().contains("no message"), "{path}: {status:?}");
    }
    // A client stream may hold no message: the relay is not refused for it.
    let relay = "/syncpay.v1.CarrierService/Relay";
    if let Err(status) = call(relay, &[], Vec::new()).await {
        assert!(!matches!(status.code(), Code::Internal | Code::Unknown | Code::InvalidArgument), "{status:?}");
    }

    // The compressed flag without an encoding to decompress with, or with
    // `identity`; a flag that is neither 0 nor 1.
    let path = "/syncpay.v1.RegisterService/ListRegisters";
    for (what, headers, flag) in [
        ("compressed flag without grpc-encoding", &[][..], 1u8),
        ("compressed flag with grpc-encoding identity", &[("grpc-encoding", "identity")][..], 1),
        ("compressed flag 2", &[][..], 2),
        ("compressed flag 255", &[][..], 255),
    ] {
        let status = refused(what, path, call(path, headers, raw::frame(flag, &list)).await, Code::InvalidArgument);
        assert!(status.message().contains("compressed flag"), "{what}: {status:?}");
    }
    // An encoding this server does not support: UNIMPLEMENTED, naming what
    // it accepts (gRPC's compression spec).
    let gzip = call(path, &[("grpc-encoding", "gzip")], raw::frame(1, &list)).await;
    let status = refused("grpc-encoding gzip", path, gzip, Code::Unimplemented);
    assert!(status.metadata().get("grpc-accept-encoding").is_some(), "{status:?}");

    // The same framing, done right, is served.
    assert!(call(path, &[], raw::frame(0, &list)).await.is_ok());
    assert!(call(health, &[], raw::frame(0, &[])).await.is_ok());
}

/// One arbitrary request: a method and either raw bytes or a message built
/// from arbitrary field values.
#[derive(Debug, Clone)]
struct Arbitrary {
    method: usize,
    raw: Option<Vec<u8>>,
    texts: [String; 4],
    numbers: [u64; 2],
    small: u32,
    signed: i32,
    bytes: Vec<u8>,
}

fn arbitrary_request() -> impl Strategy<Value = Arbitrary> {
    let text = prop_oneof![
        any::<String>(),
        "[a-z0-9_-]{0,40}",
        "(trd|reg)_[0-9A-Z]{24,28}",
        "\\+[0-9]{0,16}",
        "[A-Z]{3}",
        Just(String::new()),
    ];
    (
        0..UNARY_METHODS.len() + 1,
        prop::option::weighted(0.3, prop::collection::vec(any::<u8>(), 0..200)),
        [text.clone(), text.clone(), text.clone(), text],
        (any::<u64>(), prop_oneof![Just(0u64), 1..2_000_000u64, Just(u64::MAX)]),
        any::<u32>(),
        any::<i32>(),
        prop::collection::vec(any::<u8>(), 0..100),
    )
        .prop_map(|(method, raw, texts, (n0, n1), small, signed, bytes)| Arbitrary {
            method,
            raw,
            texts,
            numbers: [n0, n1],
            small,
            signed,
            bytes,
        })
}

fn path_of(a: &Arbitrary) -> &'static str {
    UNARY_METHODS.get(a.method).copied().unwrap_or("/syncpay.v1.RegisterService/WatchTrades")
}

/// The message `a` stands for, encoded.
fn encode(a: &Arbitrary) -> Vec<u8> {
    if let Some(raw) = &a.raw {
        return raw.clone();
    }
    let [t0, t1, t2, t3] = a.texts.clone();
    let [n0, n1] = a.numbers;
    let name = path_of(a).rsplit('/').next().unwrap_or_default();
    match name {
        "OpenRegister" => proto::OpenRegisterRequest { label: t0 }.encode_to_vec(),
        "CloseRegister" => proto::CloseRegisterRequest { register_id: t0 }.encode_to_vec(),
        "ListRegisters" => proto::ListRegistersRequest {}.encode_to_vec(),
        "CreateTrade" => proto::CreateTradeRequest {
            register_id: t0,
            amount_minor: n1,
            currency: t1,
            description: t2,
            ttl_seconds: a.small % 2000,
            idempotency_key: String::new(),
            payer: (a.signed % 2 == 0).then_some(proto::create_trade_request::Payer::SubscriberNumber(t3)),
        }
        .encode_to_vec(),
        "GetTrade" => proto::GetTradeRequest { trade_id: t0 }.encode_to_vec(),
        "AwaitTrade" => proto::AwaitTradeRequest { trade_id: t0, wait_ms: a.small % 100 }.encode_to_vec(),
        "CancelTrade" => proto::CancelTradeRequest { trade_id: t0 }.encode_to_vec(),
        "RefundTrade" => {
            proto::RefundTradeRequest { trade_id: t0, amount_minor: n1, idempotency_key: t1 }.encode_to_vec()
        }
        "WatchTrades" => proto::WatchTradesRequest { after_sequence: n0 % 3, register_id: t0 }.encode_to_vec(),
        "EnrollSubscriber" => {
            proto::EnrollSubscriberRequest { subscriber_number: t0, funding: a.signed % 3, ..Default::default() }
                .encode_to_vec()
        }
        "EnrollHandset" => {
            proto::EnrollHandsetRequest { subscriber_number: t0, public_key: a.bytes.clone() }.encode_to_vec()
        }
        "CreateShop" => proto::CreateShopRequest { shop_id: t0, display_name: t1 }.encode_to_vec(),
        "CreateCarrier" => {
            proto::CreateCarrierRequest { carrier_id: t0, display_name: t1, ..Default::default() }.encode_to_vec()
        }
        "TopUpWallet" => {
            proto::TopUpWalletRequest { subscriber_number: t0, amount_minor: n1, currency: t1 }.encode_to_vec()
        }
        "ListAccounts" => proto::ListAccountsRequest { prefix: t0 }.encode_to_vec(),
        "ListPostings" => proto::ListPostingsRequest { after_posting_id: n0, limit: a.small }.encode_to_vec(),
        "GetPayoutReport" => proto::GetPayoutReportRequest {
            from_ms: i64::from(a.signed),
            to_ms: i64::try_from(n0 % (1 << 62)).unwrap_or(0),
        }
        .encode_to_vec(),
        "ReportLeases" => proto::ReportLeasesRequest {
            starts: vec![proto::LeaseStart {
                ip: t0,
                port_lo: a.small % 70_000,
                port_hi: a.small % 90_000,
                subscriber_number: t1,
                start_ms: i64::from(a.signed),
            }],
            stops: vec![proto::LeaseStop { ip: t2, port_lo: a.small, port_hi: 0, end_ms: -1 }],
        }
        .encode_to_vec(),
        "AcceptShop" => proto::AcceptShopRequest { shop_id: t0 }.encode_to_vec(),
        "RevokeShop" => proto::RevokeShopRequest { shop_id: t0 }.encode_to_vec(),
        "GetStatement" => {
            proto::GetStatementRequest { carrier_id: t0, subscriber_number: t1, month: t2 }.encode_to_vec()
        }
        "AddCarrierPrefixes" => {
            proto::AddCarrierPrefixesRequest { carrier_id: t0, ip_prefixes: vec![t1, t2] }.encode_to_vec()
        }
        "DisputeTrade" => proto::DisputeTradeRequest { trade_id: t0 }.encode_to_vec(),
        "GetReceiptKeys" => proto::GetReceiptKeysRequest {}.encode_to_vec(),
        _ => proto::VerifyLedgerRequest {}.encode_to_vec(),
    }
}

#[test]
fn arbitrary_requests_to_every_rpc_are_never_internal() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let w = runtime.block_on(async {
        let w = world().await;
        // Something for the requests to find: an enrolled, funded buyer.
        let mut carrier = w.t.carrier(&w.carrier).await;
        carrier
            .enroll_subscriber(proto::EnrollSubscriberRequest {
                subscriber_number: NUMBER.into(),
                funding: 1,
                ..Default::default()
            })
            .await
            .expect("enroll");
        w.t.top_up(NUMBER, 10_000, "JPY").await;
        w
    });
    let config = ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(&arbitrary_request(), |a| {
            let path = path_of(&a);
            let result = runtime.block_on(w.raw_status(path, encode(&a)));
            if let Err(status) = result {
                prop_assert!(
                    !matches!(status.code(), Code::Internal | Code::Unknown),
                    "{path} answered {status:?} to {a:?}"
                );
            }
            Ok(())
        })
        .expect("no input is answered INTERNAL");
    // Still serving, ledger intact.
    runtime.block_on(async {
        assert!(w.t.shop(&w.shop).await.list_registers(proto::ListRegistersRequest {}).await.is_ok());
        w.t.assert_ledger_ok().await;
    });
}
