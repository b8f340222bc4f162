//! The API error type and the one place where errors become gRPC statuses.
//! Internal errors are logged here, once, and the caller gets a generic
//! message. Typed refusals become [`ApiError`]s in `refusal.rs`; everything
//! that answers a caller with a status (handlers, the authentication
//! interceptor, the relay stream, the framing limit) gets it from here.

use tonic::{Code, Status};

use crate::carrier::relay::RelayEnd;
use crate::domain::IdError;
use crate::store::Failure;

use super::engine::EngineError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The message starts with the field at fault.
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// A position beyond what exists now (the message starts with the
    /// field); unlike INVALID_ARGUMENT it may become valid later.
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(&'static str),
    #[error("{0}")]
    Unavailable(String),
    /// An operation this server's store backend does not offer.
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: &'static str, message: impl std::fmt::Display) -> ApiError {
        ApiError::InvalidArgument { field, message: message.to_string() }
    }

    /// Names the field of a malformed id.
    pub fn bad_id(field: &'static str, e: IdError) -> ApiError {
        ApiError::invalid(field, e)
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e {
            ApiError::InvalidArgument { .. } => Status::new(Code::InvalidArgument, e.to_string()),
            ApiError::NotFound(_) => Status::new(Code::NotFound, e.to_string()),
            ApiError::AlreadyExists(m) => Status::new(Code::AlreadyExists, m),
            ApiError::FailedPrecondition(m) => Status::new(Code::FailedPrecondition, m),
            ApiError::ResourceExhausted(m) => Status::new(Code::ResourceExhausted, m),
            ApiError::OutOfRange(m) => Status::new(Code::OutOfRange, m),
            ApiError::Unauthenticated(m) => Status::new(Code::Unauthenticated, m),
            ApiError::PermissionDenied(m) => Status::new(Code::PermissionDenied, m),
            ApiError::Unavailable(m) => Status::new(Code::Unavailable, m),
            ApiError::Unimplemented(m) => Status::new(Code::Unimplemented, m),
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                Status::new(Code::Internal, "internal error; the operator's log has the details")
            }
        }
    }
}

/// A use case's error as the caller's status (what `?` in a handler does).
impl<R: Into<ApiError>> From<EngineError<R>> for Status {
    fn from(e: EngineError<R>) -> Status {
        ApiError::from(e).into()
    }
}

impl From<Failure> for Status {
    fn from(f: Failure) -> Status {
        ApiError::from(f).into()
    }
}

/// The status for anything that says itself as an [`ApiError`].
pub fn status(e: impl Into<ApiError>) -> Status {
    e.into().into()
}

/// The last message of a relay stream the server ends.
pub fn relay_end(end: RelayEnd) -> Status {
    match end {
        RelayEnd::Replaced => Status::new(Code::Aborted, "replaced by a newer relay stream of this carrier"),
        RelayEnd::ShuttingDown => Status::new(
            Code::Unavailable,
            "server is shutting down; reconnect, and unacknowledged messages are sent again",
        ),
        RelayEnd::Edge(status) => status,
    }
}

/// The status a relay stream ends with when its queue overflowed.
pub fn relay_queue_overflow(depth: usize) -> Status {
    Status::new(
        Code::ResourceExhausted,
        format!(
            "relay queue depth: more than {depth} messages waited for this carrier; reconnect to resume from the outbox"
        ),
    )
}

/// The status for a request message above the size limit.
pub fn message_too_large(max: usize, len: u64) -> Status {
    Status::new(
        Code::ResourceExhausted,
        format!("request size: a message may be at most {max} bytes; this one has {len}"),
    )
}

/// The status for a request body that ends inside a gRPC message.
pub fn truncated_message() -> Status {
    Status::new(Code::InvalidArgument, "request: the body ended inside a gRPC message (truncated)")
}

/// The status for a call that takes one request message and got none.
pub fn no_message() -> Status {
    Status::new(Code::InvalidArgument, "request: the body holds no message; this call takes exactly one")
}

/// The status for a compressed message in a call that names no encoding.
pub fn compressed_without_encoding() -> Status {
    Status::new(
        Code::InvalidArgument,
        "request: a message has the compressed flag set, but the call names no grpc-encoding to decompress it with \
         (this server takes uncompressed messages)",
    )
}

/// The status for a message whose compressed flag is neither 0 nor 1.
pub fn bad_compressed_flag(flag: u8) -> Status {
    Status::new(Code::InvalidArgument, format!("request: a message's compressed flag is {flag}; it must be 0 or 1"))
}
