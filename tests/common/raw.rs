//! Calls with arbitrary request bytes: a codec that sends bytes as they are
//! and hands back the answer's bytes, so tests can send what no generated
//! client would (garbage, invalid UTF-8, duplicate fields).

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

#[derive(Debug, Clone, Default)]
pub struct RawCodec;

#[derive(Debug, Clone, Default)]
pub struct RawEncoder;

#[derive(Debug, Clone, Default)]
pub struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// Every unary method of the three services, by path.
pub const UNARY_METHODS: &[&str] = &[
    "/syncpay.v1.RegisterService/OpenRegister",
    "/syncpay.v1.RegisterService/CloseRegister",
    "/syncpay.v1.RegisterService/ListRegisters",
    "/syncpay.v1.RegisterService/CreateTrade",
    "/syncpay.v1.RegisterService/GetTrade",
    "/syncpay.v1.RegisterService/AwaitTrade",
    "/syncpay.v1.RegisterService/CancelTrade",
    "/syncpay.v1.RegisterService/RefundTrade",
    "/syncpay.v1.CarrierService/EnrollSubscriber",
    "/syncpay.v1.CarrierService/EnrollHandset",
    "/syncpay.v1.AdminService/CreateShop",
    "/syncpay.v1.AdminService/CreateCarrier",
    "/syncpay.v1.AdminService/TopUpWallet",
    "/syncpay.v1.AdminService/ListAccounts",
    "/syncpay.v1.AdminService/ListPostings",
    "/syncpay.v1.AdminService/VerifyLedger",
    "/syncpay.v1.RegisterService/GetPayoutReport",
    "/syncpay.v1.CarrierService/ReportLeases",
    "/syncpay.v1.CarrierService/AcceptShop",
    "/syncpay.v1.CarrierService/RevokeShop",
    "/syncpay.v1.CarrierService/GetStatement",
    "/syncpay.v1.AdminService/AddCarrierPrefixes",
    "/syncpay.v1.AdminService/GetStatement",
    "/syncpay.v1.RegisterService/GetReceiptKeys",
    "/syncpay.v1.AdminService/GetReceiptKeys",
    "/syncpay.v1.AdminService/DisputeTrade",
];

/// One unary call with `body` as the request message's bytes.
pub async fn unary<T>(service: T, path: &str, body: Vec<u8>) -> Result<Vec<u8>, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(service);
    grpc.ready().await.map_err(|e| Status::unavailable(format!("not ready: {}", e.into())))?;
    let path = http::uri::PathAndQuery::try_from(path).map_err(|e| Status::invalid_argument(e.to_string()))?;
    grpc.unary(tonic::Request::new(body), path, RawCodec).await.map(|r| r.into_inner())
}

/// One server-streaming call; the first item or the call's error.
pub async fn first_of_stream<T>(service: T, path: &str, body: Vec<u8>) -> Result<Option<Vec<u8>>, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(service);
    grpc.ready().await.map_err(|e| Status::unavailable(format!("not ready: {}", e.into())))?;
    let path = http::uri::PathAndQuery::try_from(path).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut stream = grpc.server_streaming(tonic::Request::new(body), path, RawCodec).await?.into_inner();
    match tokio::time::timeout(std::time::Duration::from_millis(200), stream.message()).await {
        Ok(r) => r,
        Err(_) => Ok(None),
    }
}

/// A gRPC message as it goes on the wire: the compressed flag, the
/// big-endian length, the bytes.
pub fn frame(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&u32::try_from(message.len()).expect("small message").to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// A call whose HTTP/2 request body is `body` exactly (no framing added:
/// build it with [`frame`], or send nothing at all), with `token` as the
/// bearer credential (none if empty) and extra `headers`. The status the
/// server answered, or the response body's bytes.
pub async fn http_call(
    channel: tonic::transport::Channel,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    use http_body_util::BodyExt;
    use tower_service::Service;
    let mut request = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if !token.is_empty() {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request =
        request.body(tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(body)))).expect("request");
    let mut channel = channel;
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.map_err(|e| Status::unavailable(e.to_string()))?;
    let response = channel.call(request).await.map_err(|e| Status::unavailable(e.to_string()))?;
    // A trailers-only answer carries the status in the headers.
    if let Some(status) = Status::from_header_map(response.headers()) {
        if status.code() != tonic::Code::Ok {
            return Err(status);
        }
    }
    let collected = response.into_body().collect().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let trailers = collected.trailers().cloned();
    let bytes = collected.to_bytes().to_vec();
    match trailers.as_ref().and_then(Status::from_header_map) {
        Some(status) if status.code() != tonic::Code::Ok => Err(status),
        _ => Ok(bytes),
    }
}
