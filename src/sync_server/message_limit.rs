//! The request-size limit, enforced on the gRPC framing of every request
//! body before anything is decoded: each message's 5-byte prefix declares
//! its length, and a length above the limit ends the call at once with
//! `RESOURCE_EXHAUSTED` naming the limit (tonic itself would answer
//! `OUT_OF_RANGE`). A body that ends inside a message is `INVALID_ARGUMENT`
//! (tonic would answer `INTERNAL`, which a caller's mistake must never get).
//! Works per message, so it covers the long-lived relay stream too.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;

use super::error;

/// A gRPC message prefix: compression flag and big-endian u32 length.
const PREFIX_LEN: usize = 5;

/// Wraps every request body of a service in a [`LimitedBody`].
#[derive(Debug, Clone, Copy)]
pub struct MessageLimitLayer {
    max: usize,
}

impl MessageLimitLayer {
    pub fn new(max: usize) -> Self {
        MessageLimitLayer { max }
    }
}

impl<S> tower_layer::Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimit { inner, max: self.max }
    }
}

#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
    max: usize,
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
        let max = self.max;
        self.inner.call(request.map(|body| tonic::body::Body::new(LimitedBody::new(body, max))))
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

/// A request body that checks each message's declared length as the bytes
/// pass through, without copying or buffering them.
pub struct LimitedBody<B> {
    inner: B,
    max: usize,
    framing: Framing,
    prefix: [u8; PREFIX_LEN],
    failed: bool,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, max: usize) -> Self {
        LimitedBody { inner, max, framing: Framing::Prefix { got: 0 }, prefix: [0; PREFIX_LEN], failed: false }
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
                    let len =
                        u64::from(u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]));
                    if len > u64::try_from(self.max).unwrap_or(u64::MAX) {
                        return Err(error::message_too_large(self.max, len));
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
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
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
    fn refuses_a_declared_length_above_the_limit_before_its_bytes_arrive() {
        let mut body = LimitedBody::new((), 4);
        let status = body.scan(&framed(5, b"")).expect_err("too large");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().starts_with("request size: a message may be at most 4 bytes"));
        let mut body = LimitedBody::new((), usize::MAX);
        assert!(body.scan(&framed(u32::MAX, b"")).is_ok());
    }
}
