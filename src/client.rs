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
