//! Arbitrary bytes through prost decoding of every request message and the
//! server's validating conversions (`sync_server::requests`), plus the
//! client-certificate identity parser, the approval payload parser and the
//! offline receipt check. Asserts: no panic; every refusal is
//! INVALID_ARGUMENT naming a known field; what decodes re-encodes to a
//! message that decodes equal; a payload that parses encodes back to the
//! same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use syncpay::domain::receipt::ReceiptSigner;
use syncpay::domain::{ApprovalPayload, ShopId, UnixMs};
use syncpay::proto;
use syncpay::register::{verify_receipt, ReceiptKeySet};
use syncpay::sync_server::error::ApiError;
use syncpay::sync_server::limits::Limits;
use syncpay::sync_server::requests::{self, FIELDS};
use syncpay::identity;

fn refused(e: ApiError) {
    match &e {
        ApiError::InvalidArgument { field, message } => {
            assert!(FIELDS.contains(field), "unlisted field in {e:?}");
            assert!(!message.is_empty());
        }
        other => panic!("validation answered {other:?}"),
    }
}

fn check<M: Message + Default + PartialEq + std::fmt::Debug, T>(
    bytes: &[u8],
    validate: impl Fn(&M) -> Result<T, ApiError>,
) {
    let Ok(message) = M::decode(bytes) else { return };
    if let Err(e) = validate(&message) {
        refused(e);
    }
    let again = M::decode(message.encode_to_vec().as_slice()).expect("a decoded message re-encodes");
    assert_eq!(again, message);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let limits = Limits::default();
    match selector % 27 {
        0 => check::<proto::OpenRegisterRequest, _>(bytes, requests::open_register),
        1 => check::<proto::CloseRegisterRequest, _>(bytes, requests::close_register),
        2 => check::<proto::CreateTradeRequest, _>(bytes, |m| requests::create_trade(m, &limits)),
        3 => check::<proto::GetTradeRequest, _>(bytes, requests::get_trade),
        4 => check::<proto::AwaitTradeRequest, _>(bytes, requests::await_trade),
        5 => check::<proto::CancelTradeRequest, _>(bytes, requests::cancel_trade),
        6 => check::<proto::RefundTradeRequest, _>(bytes, |m| requests::refund_trade(m, &limits)),
        7 => check::<proto::WatchTradesRequest, _>(bytes, requests::watch_trades),
        8 => check::<proto::RelayUp, _>(bytes, requests::relay_up),
        9 => check::<proto::EnrollSubscriberRequest, _>(bytes, |m| requests::enroll_subscriber(m, &limits)),
        10 => check::<proto::EnrollHandsetRequest, _>(bytes, requests::enroll_handset),
        11 => check::<proto::CreateShopRequest, _>(bytes, requests::create_shop),
        12 => check::<proto::CreateCarrierRequest, _>(bytes, requests::create_carrier),
        13 => check::<proto::TopUpWalletRequest, _>(bytes, |m| requests::top_up(m, &limits)),
        14 => check::<proto::ListAccountsRequest, _>(bytes, requests::list_accounts),
        15 => check::<proto::ListPostingsRequest, _>(bytes, requests::list_postings),
        16 => check::<proto::ReportLeasesRequest, _>(bytes, requests::report_leases),
        17 => check::<proto::AcceptShopRequest, _>(bytes, |m| requests::shop_acceptance(&m.shop_id)),
        18 => check::<proto::GetStatementRequest, _>(bytes, requests::admin_statement),
        19 => check::<proto::GetPayoutReportRequest, _>(bytes, requests::payout_report),
        20 => check::<proto::AddCarrierPrefixesRequest, _>(bytes, requests::add_carrier_prefixes),
        21 => check::<proto::CreateCarrierRequest, _>(bytes, requests::create_carrier),
        22 => {
            let _ = identity::principal_from_cert(bytes);
        }
        24 => check::<proto::DisputeTradeRequest, _>(bytes, requests::dispute_trade),
        26 => check::<proto::BackupStoreRequest, _>(bytes, requests::backup_store),
        25 => {
            if let Ok(p) = ApprovalPayload::parse(bytes) {
                assert_eq!(p.to_bytes(), bytes, "a parsed payload encodes back to its bytes");
            }
            if let Ok(receipt) = proto::ApprovalReceipt::decode(bytes) {
                let keys = ReceiptKeySet::new(vec![ReceiptSigner::from_seed([7; 32], UnixMs(0)).published()])
                    .expect("one valid key");
                let shop = ShopId::parse("acme").expect("shop");
                let _ = verify_receipt(&receipt, &keys, &shop);
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(bytes) {
                if let Ok(p) = identity::principal_from_uri(text) {
                    assert_eq!(identity::identity_uri(&p), text, "an identity URI has one spelling");
                }
            }
        }
    }
});
