//! Authentication. Two modes, fixed when the server starts:
//!
//! - **Certificates** (the server has TLS): the verified client
//!   certificate names the principal (see `tls.rs`); the named shop or
//!   carrier must exist. Any `authorization` header is ignored, so a bearer
//!   token can never stand in for, or override, a certificate's identity.
//! - **Tokens** (plaintext, loopback only, for development and the demo):
//!   every request carries `authorization: Bearer <token>`; the token names
//!   one principal. Only token hashes are stored.
//!
//! Each service admits one kind of principal and puts it into the
//! request's extensions for the handlers. Credentials are resolved through
//! the engine; refusals become statuses in `error.rs`.

use std::sync::Arc;

use rand::rngs::SysRng;
use rand::TryRng;
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::domain::{CarrierId, Principal, ShopId};
use crate::identity::principal_from_cert;

use super::engine::Engine;
use super::error::{self, ApiError};

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new secret token: a kind prefix and 256 random bits in hex.
pub fn new_token(kind: &str) -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    SysRng.try_fill_bytes(&mut bytes).map_err(|e| ApiError::Internal(format!("entropy: {e}")))?;
    let mut out = format!("sp_{kind}_");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    Ok(out)
}

/// The kinds of caller, one per service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    Admin,
    Shop,
    Carrier,
}

/// How callers prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// The TLS client certificate is the credential.
    Certificates,
    /// A bearer token is the credential (plaintext development mode).
    Tokens,
}

pub struct Authenticator {
    engine: Arc<Engine>,
    admin_hash: [u8; 32],
    mode: AuthMode,
}

/// Longest authorization header considered; anything longer is refused
/// before hashing.
const MAX_AUTH_HEADER: usize = 512;

impl Authenticator {
    pub fn new(engine: Arc<Engine>, admin_token: &str, mode: AuthMode) -> Self {
        Authenticator { engine, admin_hash: token_hash(admin_token), mode }
    }

    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, ApiError> {
        match self.mode {
            AuthMode::Certificates => self.by_certificate(request),
            AuthMode::Tokens => self.by_token(request),
        }
    }

    fn by_certificate<T>(&self, request: &Request<T>) -> Result<Principal, ApiError> {
        let unauthenticated = |m: &str| ApiError::Unauthenticated(m.to_owned());
        // rustls has verified the chain to the client CA (and the CRL)
        // during the handshake; here we only read the name.
        let certs = request.peer_certs().ok_or_else(|| unauthenticated("a client certificate is required"))?;
        let leaf = certs.first().ok_or_else(|| unauthenticated("a client certificate is required"))?;
        let principal = principal_from_cert(leaf).map_err(|e| ApiError::Unauthenticated(e.to_string()))?;
        match self.engine.party_exists(&principal)? {
            true => Ok(principal),
            false => Err(unauthenticated("the client certificate names no known shop or carrier")),
        }
    }

    fn by_token<T>(&self, request: &Request<T>) -> Result<Principal, ApiError> {
        let unauthenticated = |m: &str| ApiError::Unauthenticated(m.to_owned());
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| unauthenticated("missing authorization: Bearer <token>"))?;
        let text = header.to_str().map_err(|_| unauthenticated("authorization is not text"))?;
        if text.len() > MAX_AUTH_HEADER {
            return Err(unauthenticated("authorization is too long"));
        }
        let token =
            text.strip_prefix("Bearer ").ok_or_else(|| unauthenticated("authorization must be 'Bearer <token>'"))?;
        let hash = token_hash(token);
        if hash == self.admin_hash {
            return Ok(Principal::Admin);
        }
        self.engine.principal(&hash)?.ok_or_else(|| unauthenticated("unknown credential"))
    }
}

/// The interceptor for a service that admits only `party`.
pub fn interceptor(
    auth: Arc<Authenticator>,
    party: Party,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let principal = auth.authenticate(&request).map_err(error::status)?;
        let ok = matches!(
            (&principal, party),
            (Principal::Admin, Party::Admin)
                | (Principal::Shop(_), Party::Shop)
                | (Principal::Carrier(_), Party::Carrier)
        );
        if !ok {
            return Err(error::status(ApiError::PermissionDenied(match party {
                Party::Admin => "this service needs the operator credential",
                Party::Shop => "this service needs a shop credential",
                Party::Carrier => "this service needs a carrier credential",
            })));
        }
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// The calling shop (set by the interceptor).
pub fn shop<T>(request: &Request<T>) -> Result<ShopId, ApiError> {
    match request.extensions().get::<Principal>() {
        Some(Principal::Shop(id)) => Ok(id.clone()),
        _ => Err(ApiError::PermissionDenied("this service needs a shop credential")),
    }
}

/// The calling carrier (set by the interceptor).
pub fn carrier<T>(request: &Request<T>) -> Result<CarrierId, ApiError> {
    match request.extensions().get::<Principal>() {
        Some(Principal::Carrier(id)) => Ok(id.clone()),
        _ => Err(ApiError::PermissionDenied("this service needs a carrier credential")),
    }
}
