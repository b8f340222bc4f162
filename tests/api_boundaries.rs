//! The API's edges: who may call what, how bad input is answered, health
//! and reflection for generic clients.

mod common;

use common::{code_of, TestServer};
use syncpay::proto;
use tonic::Code;

#[tokio::test]
async fn each_service_admits_only_its_own_party() {
    let t = TestServer::start().await;
    let shop_token = t.create_shop("acme", "Acme Books").await;
    let carrier_token = t.create_carrier("docomo", "Docomo").await;

    // No credential, a wrong one, and a malformed header.
    let anonymous = proto::register_service_client::RegisterServiceClient::new(t.channel().await);
    assert_eq!(code_of(anonymous.clone().list_registers(proto::ListRegistersRequest {}).await), Code::Unauthenticated);
    let mut forged = t.shop("sp_shop_0000000000000000").await;
    assert_eq!(code_of(forged.list_registers(proto::ListRegistersRequest {}).await), Code::Unauthenticated);

    // A shop cannot use the carrier or admin services, and so on.
    let mut shop_as_admin = proto::admin_service_client::AdminServiceClient::new(t.authed(&shop_token).await);
    assert_eq!(code_of(shop_as_admin.verify_ledger(proto::VerifyLedgerRequest {}).await), Code::PermissionDenied);
    let mut shop_as_carrier = t.carrier(&shop_token).await;
    let enroll = proto::EnrollSubscriberRequest {
        subscriber_number: "+818012345678".into(),
        funding: proto::Funding::Wallet as i32,
        ..Default::default()
    };
    assert_eq!(code_of(shop_as_carrier.enroll_subscriber(enroll.clone()).await), Code::PermissionDenied);
    let mut carrier_as_shop = t.shop(&carrier_token).await;
    assert_eq!(code_of(carrier_as_shop.list_registers(proto::ListRegistersRequest {}).await), Code::PermissionDenied);
    let mut admin_as_shop = t.shop(&t.config.admin_token).await;
    assert_eq!(code_of(admin_as_shop.list_registers(proto::ListRegistersRequest {}).await), Code::PermissionDenied);

    // And each party can use its own.
    assert!(t.shop(&shop_token).await.list_registers(proto::ListRegistersRequest {}).await.is_ok());
    assert!(t.carrier(&carrier_token).await.enroll_subscriber(enroll).await.is_ok());
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let t = TestServer::start().await;
    let shop_token = t.create_shop("acme", "Acme Books").await;
    let mut shop = t.shop(&shop_token).await;
    let register =
        shop.open_register(proto::OpenRegisterRequest { label: "till 1".into() }).await.expect("open").into_inner();
    let good = proto::CreateTradeRequest {
        register_id: register.register_id.clone(),
        amount_minor: 1200,
        currency: "JPY".into(),
        description: "book".into(),
        ttl_seconds: 60,
        idempotency_key: String::new(),
        payer: Some(proto::create_trade_request::Payer::SubscriberNumber("+818012345678".into())),
    };
    let check = |req: proto::CreateTradeRequest, field: &'static str| {
        let mut shop = shop.clone();
        async move {
            let status = shop.create_trade(req).await.expect_err("must be refused");
            assert_eq!(status.code(), Code::InvalidArgument, "{field}: {}", status.message());
            assert!(status.message().starts_with(field), "{field}: {}", status.message());
        }
    };
    check(proto::CreateTradeRequest { amount_minor: 0, ..good.clone() }, "amount_minor").await;
    check(proto::CreateTradeRequest { amount_minor: u64::MAX, ..good.clone() }, "amount_minor").await;
    check(proto::CreateTradeRequest { currency: "XYZ".into(), ..good.clone() }, "currency").await;
    check(proto::CreateTradeRequest { currency: "jpy".into(), ..good.clone() }, "currency").await;
    check(proto::CreateTradeRequest { currency: String::new(), ..good.clone() }, "currency").await;
    check(proto::CreateTradeRequest { register_id: "reg_nope".into(), ..good.clone() }, "register_id").await;
    check(proto::CreateTradeRequest { register_id: String::new(), ..good.clone() }, "register_id").await;
    check(proto::CreateTradeRequest { description: "x".repeat(141), ..good.clone() }, "description").await;
    check(proto::CreateTradeRequest { description: "a\u{0}b".into(), ..good.clone() }, "description").await;
    check(proto::CreateTradeRequest { ttl_seconds: 901, ..good.clone() }, "ttl_seconds").await;
    check(proto::CreateTradeRequest { ttl_seconds: u32::MAX, ..good.clone() }, "ttl_seconds").await;
    check(proto::CreateTradeRequest { idempotency_key: "has space".into(), ..good.clone() }, "idempotency_key").await;
    check(proto::CreateTradeRequest { payer: None, ..good.clone() }, "payer").await;
    check(
        proto::CreateTradeRequest {
            payer: Some(proto::create_trade_request::Payer::SubscriberNumber("08012345678".into())),
            ..good.clone()
        },
        "subscriber_number",
    )
    .await;

    let status = shop.get_trade(proto::GetTradeRequest { trade_id: "trd_short".into() }).await.expect_err("bad id");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("trade_id"));
    let status = shop.open_register(proto::OpenRegisterRequest { label: " ".into() }).await.expect_err("blank");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("label"));

    // A well-formed id of a register that is not the shop's is NOT_FOUND.
    let other = syncpay::domain::RegisterId::generate().expect("id").to_string();
    let status = shop
        .create_trade(proto::CreateTradeRequest { register_id: other, ..good.clone() })
        .await
        .expect_err("unknown register");
    assert_eq!(status.code(), Code::NotFound);

    // The good request itself is fine.
    assert!(shop.create_trade(good).await.is_ok());
}

/// Refusals the request's form cannot predict use the code that says what
/// to do: a WatchTrades cursor beyond the shop's last event is OUT_OF_RANGE
/// (the cursor is not from this server's history, e.g. after a restore
/// from an older backup: re-read from a cursor you trust), naming the
/// field and the last event; the last event itself is fine. And an
/// AwaitTrade may wait at most its documented maximum: 60 000 ms is taken,
/// a millisecond more is INVALID_ARGUMENT naming `wait_ms`.
#[tokio::test]
async fn a_cursor_beyond_the_last_event_is_out_of_range_and_waits_are_bounded() {
    let t = TestServer::start().await;
    let shop_token = t.create_shop("acme", "Acme Books").await;
    let mut shop = t.shop(&shop_token).await;
    let register =
        shop.open_register(proto::OpenRegisterRequest { label: "till 1".into() }).await.expect("open").into_inner();
    let created = shop
        .create_trade(proto::CreateTradeRequest {
            register_id: register.register_id.clone(),
            amount_minor: 1200,
            currency: "JPY".into(),
            ttl_seconds: 60,
            payer: Some(proto::create_trade_request::Payer::SubscriberNumber("+818012345678".into())),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    // One event (the trade failed at once: nobody is enrolled).
    let watch = |after_sequence| proto::WatchTradesRequest { after_sequence, register_id: String::new() };
    assert!(shop.watch_trades(watch(1)).await.is_ok(), "resuming at the last event");
    for beyond in [2, u64::MAX] {
        let status = shop.watch_trades(watch(beyond)).await.expect_err("beyond the last event");
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert!(status.message().starts_with("after_sequence"), "{status:?}");
        assert!(status.message().contains("(1)"), "names the last event: {status:?}");
    }

    let wait = |wait_ms| proto::AwaitTradeRequest { trade_id: created.trade_id.clone(), wait_ms };
    assert!(shop.await_trade(wait(60_000)).await.is_ok(), "the maximum wait");
    for too_long in [60_001, u32::MAX] {
        let status = shop.await_trade(wait(too_long)).await.expect_err("beyond the maximum");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with("wait_ms"), "{status:?}");
    }
}

#[tokio::test]
async fn health_and_reflection_serve_generic_clients() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse, ServerReflectionRequest,
    };

    let t = TestServer::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(t.channel().await);
    for service in ["syncpay.v1.RegisterService", "syncpay.v1.CarrierService", "syncpay.v1.AdminService", ""] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{service}");
    }

    let mut reflection = ServerReflectionClient::new(t.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter(vec![request])).await.expect("reflection").into_inner();
    let response = responses.next().await.expect("one response").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in
        ["syncpay.v1.RegisterService", "syncpay.v1.CarrierService", "syncpay.v1.AdminService", "grpc.health.v1.Health"]
    {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }

    // A generic client can fetch the descriptor of a service's file.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("syncpay.v1.RegisterService".into())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter(vec![request])).await.expect("reflection").into_inner();
    let response = responses.next().await.expect("one response").expect("ok");
    let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}
