//! The API error type and the one place where errors become gRPC statuses.
//! Internal errors are logged here, once, and the caller gets a generic
//! message.

use tonic::{Code, Status};

use crate::domain::IdError;
use crate::store::StoreError;

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
    Unauthenticated(&'static str),
    #[error("{0}")]
    PermissionDenied(&'static str),
    #[error("{0}")]
    Unavailable(String),
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

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(what),
            StoreError::AlreadyExists(m) => ApiError::AlreadyExists(m),
            StoreError::FailedPrecondition(m) => ApiError::FailedPrecondition(m),
            StoreError::LimitExceeded(m) | StoreError::RateLimited(m) => ApiError::ResourceExhausted(m),
            StoreError::Stopped => ApiError::Unavailable("the store is not accepting writes".into()),
            StoreError::Corrupt(m) | StoreError::Io(m) => ApiError::Internal(m),
        }
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
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                Status::new(Code::Internal, "internal error; the operator's log has the details")
            }
        }
    }
}
