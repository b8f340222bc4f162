//! The gRPC codec of `syncpay.v1`: prost, except that a message that does
//! not decode (bad wire format, invalid UTF-8 in a string field, …) is
//! `INVALID_ARGUMENT` rather than tonic-prost's `INTERNAL`: a caller's
//! mistake must never look like a server fault. `build.rs` points the
//! generated clients and servers here.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Prost encoding; decoding errors are `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct SyncpayCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for SyncpayCodec<T, U> {
    fn default() -> Self {
        SyncpayCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for SyncpayCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder { inner: ProstDecoder::new(BufferSettings::default()) }
    }
}

/// Decodes with prost and reports a malformed message as the caller's.
#[derive(Debug, Clone)]
pub struct CheckedDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: prost::Message + Default> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner.decode(buf).map_err(|status| {
            Status::invalid_argument(format!("request: not a valid protobuf message: {}", status.message()))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
