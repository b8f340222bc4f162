//! Client-side plumbing shared by the register library, the simulator and
//! the CLI: connecting a channel and attaching the bearer credential.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct BearerAuth {
    header: MetadataValue<Ascii>,
}

impl BearerAuth {
    /// Fails if the token is not valid header text.
    pub fn new(token: &str) -> Result<Self, Status> {
        let header =
            format!("Bearer {token}").parse().map_err(|_| Status::invalid_argument("token: not valid header text"))?;
        Ok(BearerAuth { header })
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert("authorization", self.header.clone());
        Ok(request)
    }
}

/// A channel with credentials, ready for any generated client:
/// `RegisterServiceClient::new(authed)`.
pub type AuthedChannel = InterceptedService<Channel, BearerAuth>;

/// Connects to `url` (e.g. `http://127.0.0.1:7700`).
pub async fn connect(url: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.to_owned())?.connect().await
}

/// Wraps a channel with a credential.
pub fn with_token(channel: Channel, token: &str) -> Result<AuthedChannel, Status> {
    Ok(InterceptedService::new(channel, BearerAuth::new(token)?))
}

/// Why a bounded unary call failed.
#[derive(Debug)]
pub enum CallError {
    /// No answer within the local time limit.
    Timeout,
    /// The server answered with an error.
    Status(Status),
}

/// A request that tells the server its deadline (`grpc-timeout`).
pub fn request_with_timeout<T>(message: T, timeout: std::time::Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Runs one unary call under `timeout`, whether or not the server honours
/// the `grpc-timeout` it was sent.
pub async fn call_with_timeout<T>(
    timeout: std::time::Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(timeout, call).await {
        Err(_elapsed) => Err(CallError::Timeout),
        Ok(Err(status)) => Err(CallError::Status(status)),
        Ok(Ok(response)) => Ok(response.into_inner()),
    }
}
