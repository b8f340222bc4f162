//! The register client's error type: what the server said (gRPC code and
//! message, kept intact), what it said that breaks the contract, and our own
//! deadlines.

use crate::domain::RegisterId;

/// Why a register call did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The server refused or failed the call; `code` and `message` are the
    /// server's own (e.g. `InvalidArgument`, "amount_minor: must be > 0").
    #[error("{code:?}: {message}")]
    Rpc { code: tonic::Code, message: String },
    /// No answer (or no final state) before the caller's deadline.
    #[error("timed out")]
    Timeout,
    /// The register is not among the calling shop's registers.
    #[error("register {0} is not one of this shop's registers")]
    UnknownRegister(RegisterId),
    /// The server answered with something the contract rules out (another
    /// register's trade, an unknown state, a sequence going backwards…).
    #[error("server broke the contract: {0}")]
    Protocol(String),
}

impl RegisterError {
    /// The gRPC code when the server answered with an error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            RegisterError::Rpc { code, .. } => Some(*code),
            RegisterError::Timeout | RegisterError::UnknownRegister(_) | RegisterError::Protocol(_) => None,
        }
    }
}

impl From<tonic::Status> for RegisterError {
    fn from(status: tonic::Status) -> Self {
        RegisterError::Rpc { code: status.code(), message: status.message().to_owned() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_keeps_its_code_and_message() {
        let err = RegisterError::from(tonic::Status::invalid_argument("amount_minor: must be > 0"));
        assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
        assert_eq!(
            err,
            RegisterError::Rpc { code: tonic::Code::InvalidArgument, message: "amount_minor: must be > 0".to_owned() }
        );
        assert!(err.to_string().contains("amount_minor"));
        assert_eq!(RegisterError::Timeout.code(), None);
    }
}
