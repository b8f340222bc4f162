//! The request-size limit, enforced on the gRPC framing of every request
//! body before anything is decoded: each message's 5-byte prefix declares
//! its length, and a length above the limit ends the call at once with
//! `RESOURCE_EXHAUSTED` naming the limit (tonic itself would answer
//! `OUT_OF_RANGE`). Works per message, so it covers the long-lived relay
//! stream too.
//!
//! The same scan refuses framing that is the caller's mistake with
//! `INVALID_ARGUMENT`, where tonic would answer `INTERNAL` (which a
//! caller's mistake must never get): a body that ends inside a message; a
//! call that takes exactly one request message (unary and server-streaming
//! methods, known from the services' descriptors) whose body holds none;
//! a message whose compressed flag is set although the call names no
//! `grpc-encoding` (or `identity`), or is neither 0 nor 1. gRPC's
//! compression spec asks for `INTERNAL` for that ill-constructed message;
//! this server keeps `INTERNAL` for its own faults. A call naming an
//! encoding this server does not support (it supports none) is answered
//! `UNIMPLEMENTED` by tonic, with `grpc-accept-encoding`, as that spec says.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

use super::error;

/// A gRPC message prefix: compression flag and big-endian u32 length.
const PREFIX_LEN: usize = 5;

/// Paths (`/package.Service/Method`) of every method the server serves
/// that takes exactly one request message (all but client streams), read
/// from the embedded descriptor sets of syncpay.v1 and grpc.health.v1.
/// Reflection's only method is a bidirectional stream, so it is not here.
pub fn single_message_methods() -> HashSet<String> {
    use prost::Message;
    let mut paths = HashSet::new();
    for set in [crate::proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET] {
        // Embedded at build time, so it decodes; were it not to, calls
        // without a message would get tonic's answer, nothing worse.
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else { continue };
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                for method in service.method.iter().filter(|m| !m.client_streaming()) {
                    paths.insert(format!("/{package}.{}/{}", service.name(), method.name()));
                }
            }
        }
    }
    paths
}

/// Wraps every request body of a service in a [`LimitedBody`].
#[derive(Debug, Clone)]
pub struct MessageLimitLayer {
    max: usize,
    single: Arc<HashSet<String>>,
}

impl MessageLimitLayer {
    pub fn new(max: usize) -> Self {
        MessageLimitLayer { max, single: Arc::new(single_message_methods()) }
    }
}

impl<S> tower_layer::Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimit { inner, max: self.max, single: self.single.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
    max: usize,
    single: Arc<HashSet<String>>,
}

impl<S> tower_service::Service<http::Request<tonic::body::Body>> for MessageLimit<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let rules = Rules {
            max: self.max,
            needs_message: self.single.contains(request.uri().path()),
            // An encoding other than identity: tonic decompresses it, or
            // answers UNIMPLEMENTED before reading the body.
            encoded: request.headers().get("grpc-encoding").is_some_and(|e| e.as_bytes() != b"identity"),
        };
        self.inner.call(request.map(|body| tonic::body::Body::new(LimitedBody::with_rules(body, rules))))
    }
}

/// Where the scanner is in the framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Collecting a prefix; `got` of its bytes seen so far.
    Prefix { got: usize },
    /// Inside a message with this many bytes still to come.
    Message { remaining: u64 },
}

/// What a request body must satisfy.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Largest message, in bytes.
    pub max: usize,
    /// The call takes exactly one message, so a body without one is refused.
    pub needs_message: bool,
    /// The call names a `grpc-encoding` other than identity, so the
    /// compressed flag may be set.
    pub encoded: bool,
}

/// A request body that checks each message's prefix as the bytes pass
/// through, without copying or buffering them.
pub struct LimitedBody<B> {
    inner: B,
    rules: Rules,
    framing: Framing,
    prefix: [u8; PREFIX_LEN],
    /// Message prefixes seen so far.
    messages: u64,
    failed: bool,
}

impl<B> LimitedBody<B> {
    /// Only the size limit (any number of messages, none compressed).
    pub fn new(inner: B, max: usize) -> Self {
        Self::with_rules(inner, Rules { max, needs_message: false, encoded: false })
    }

    pub fn with_rules(inner: B, rules: Rules) -> Self {
        LimitedBody {
            inner,
            rules,
            framing: Framing::Prefix { got: 0 },
            prefix: [0; PREFIX_LEN],
            messages: 0,
            failed: false,
        }
    }

    /// The body ended without the one message the call needs.
    fn owes_message(&self) -> bool {
        self.rules.needs_message && self.messages == 0
    }

    /// Advances the framing over `data`; refuses a message above the limit.
    fn scan(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            match self.framing {
                Framing::Prefix { got } => {
                    let take = (PREFIX_LEN - got).min(data.len());
                    self.prefix[got..got + take].copy_from_slice(&data[..take]);
                    data = &data[take..];
                    let got = got + take;
                    if got < PREFIX_LEN {
                        self.framing = Framing::Prefix { got };
                        continue;
                    }
                    self.messages = self.messages.saturating_add(1);
                    match self.prefix[0] {
                        0 => {}
                        1 if self.rules.encoded => {}
                        1 => return Err(error::compressed_without_encoding()),
                        flag => return Err(error::bad_compressed_flag(flag)),
                    }
                    let len =
                        u64::from(u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]));
                    let max = self.rules.max;
                    if len > u64::try_from(max).unwrap_or(u64::MAX) {
                        return Err(error::message_too_large(max, len));
                    }
                    self.framing =
                        if len == 0 { Framing::Prefix { got: 0 } } else { Framing::Message { remaining: len } };
                }
                Framing::Message { remaining } => {
                    let available = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    let take = remaining.min(available);
                    // `take` is at most `data.len()`, so it fits in usize.
                    data = &data[usize::try_from(take).unwrap_or(data.len())..];
                    let remaining = remaining - take;
                    self.framing =
                        if remaining == 0 { Framing::Prefix { got: 0 } } else { Framing::Message { remaining } };
                }
            }
        }
        Ok(())
    }

    fn mid_message(&self) -> bool {
        self.framing != Framing::Prefix { got: 0 }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes, Error = Status> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    if let Err(status) = self.scan(&data) {
                        self.failed = true;
                        return Poll::Ready(Some(Err(status)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(status))) => Poll::Ready(Some(Err(status))),
            Poll::Ready(None) => {
                if self.mid_message() {
                    self.failed = true;
                    return Poll::Ready(Some(Err(error::truncated_message())));
                }
                if self.owes_message() {
                    self.failed = true;
                    return Poll::Ready(Some(Err(error::no_message())));
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // A body that owes a message is not over until it has said so
        // (tonic replaces a body that is already over with an empty one).
        self.failed || (self.inner.is_end_stream() && !self.owes_message())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(len: u32, body: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn scans_messages_split_anywhere() {
        let mut stream = framed(3, b"abc");
        stream.extend(framed(0, b""));
        stream.extend(framed(4, b"wxyz"));
        // Every split of the stream into two chunks frames the same.
        for cut in 0..=stream.len() {
            let mut body = LimitedBody::new((), 4);
            body.scan(&stream[..cut]).expect("within the limit");
            body.scan(&stream[cut..]).expect("within the limit");
            assert!(!body.mid_message(), "cut at {cut}");
        }
        let mut body = LimitedBody::new((), 4);
        body.scan(&stream[..7]).expect("ok");
        assert!(body.mid_message());
    }

    #[test]
    fn refuses_a_compressed_flag_without_an_encoding_and_any_other_flag() {
        let rules = |encoded| Rules { max: 16, needs_message: false, encoded };
        let mut compressed = framed(3, b"abc");
        compressed[0] = 1;
        let status = LimitedBody::with_rules((), rules(false)).scan(&compressed).expect_err("no encoding");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(LimitedBody::with_rules((), rules(true)).scan(&compressed).is_ok(), "gzip, say, names one");
        compressed[0] = 2;
        let status = LimitedBody::with_rules((), rules(true)).scan(&compressed).expect_err("flag 2");
        assert!(status.message().contains("compressed flag is 2"), "{status:?}");
    }

    #[test]
    fn a_call_taking_one_message_owes_one_until_a_prefix_arrives() {
        let mut body = LimitedBody::with_rules((), Rules { max: 16, needs_message: true, encoded: false });
        assert!(body.owes_message());
        body.scan(&framed(0, b"")).expect("an empty message is a message");
        assert!(!body.owes_message());
        assert!(!LimitedBody::new((), 16).owes_message(), "a client stream may hold none");
    }

    #[test]
    fn the_single_message_methods_are_every_method_but_client_streams() {
        let single = single_message_methods();
        for path in [
            "/syncpay.v1.RegisterService/CreateTrade",
            "/syncpay.v1.RegisterService/WatchTrades",
            "/syncpay.v1.AdminService/VerifyLedger",
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
        ] {
            assert!(single.contains(path), "{path}");
        }
        assert!(!single.contains("/syncpay.v1.CarrierService/Relay"));
    }

    #[test]
    fn refuses_a_declared_length_above_the_limit_before_its_bytes_arrive() {
        let mut body = LimitedBody::new((), 4);
        let status = body.scan(&framed(5, b"")).expect_err("too large");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().starts_with("request size: a message may be at most 4 bytes"));
        let mut body = LimitedBody::new((), usize::MAX);
        assert!(body.scan(&framed(u32::MAX, b"")).is_ok());
    }
}
