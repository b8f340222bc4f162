//! The caller's identity as a client certificate names it: exactly one
//! subject-alternative-name URI of the `syncpay` scheme, `syncpay://admin`,
//! `syncpay://shop/<shop id>` or `syncpay://carrier/<carrier id>`. The
//! common name is for people only and is never read. A certificate with no
//! such URI, or more than one, names nobody. The development PKI writes
//! these URIs; the server's TLS layer reads them.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::domain::{CarrierId, Principal, ShopId};

/// The URI scheme that carries a caller's identity in a certificate.
pub const IDENTITY_SCHEME: &str = "syncpay://";

/// Why a certificate names no caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the client certificate cannot be parsed")]
    Unparsable,
    #[error("the client certificate names no syncpay identity (a SAN URI syncpay://shop/<id>, syncpay://carrier/<id> or syncpay://admin)")]
    Missing,
    #[error("the client certificate names more than one syncpay identity")]
    Ambiguous,
    #[error("the client certificate's syncpay identity is malformed")]
    Malformed,
}

/// The certificate URI for a principal.
pub fn identity_uri(principal: &Principal) -> String {
    match principal {
        Principal::Admin => format!("{IDENTITY_SCHEME}admin"),
        Principal::Shop(id) => format!("{IDENTITY_SCHEME}shop/{id}"),
        Principal::Carrier(id) => format!("{IDENTITY_SCHEME}carrier/{id}"),
    }
}

/// The principal a `syncpay://` URI names.
pub fn principal_from_uri(uri: &str) -> Result<Principal, IdentityError> {
    let rest = uri.strip_prefix(IDENTITY_SCHEME).ok_or(IdentityError::Malformed)?;
    if rest == "admin" {
        return Ok(Principal::Admin);
    }
    if let Some(id) = rest.strip_prefix("shop/") {
        return ShopId::parse(id).map(Principal::Shop).map_err(|_| IdentityError::Malformed);
    }
    if let Some(id) = rest.strip_prefix("carrier/") {
        return CarrierId::parse(id).map(Principal::Carrier).map_err(|_| IdentityError::Malformed);
    }
    Err(IdentityError::Malformed)
}

/// The principal a (verified) client certificate names.
pub fn principal_from_cert(der: &[u8]) -> Result<Principal, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparsable)?;
    let san = cert.subject_alternative_name().map_err(|_| IdentityError::Unparsable)?;
    let mut found = None;
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        if let GeneralName::URI(uri) = name {
            // Any URI of our scheme counts, so a second one (even a
            // malformed one) makes the certificate ambiguous.
            if uri.get(..IDENTITY_SCHEME.len()).is_some_and(|s| s.eq_ignore_ascii_case(IDENTITY_SCHEME)) {
                if found.is_some() {
                    return Err(IdentityError::Ambiguous);
                }
                found = Some(*uri);
            }
        }
    }
    principal_from_uri(found.ok_or(IdentityError::Missing)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris_round_trip_and_refuse_anything_else() {
        let shop = Principal::Shop(ShopId::parse("acme").expect("valid"));
        let carrier = Principal::Carrier(CarrierId::parse("docomo").expect("valid"));
        for p in [Principal::Admin, shop, carrier] {
            assert_eq!(principal_from_uri(&identity_uri(&p)), Ok(p));
        }
        for bad in [
            "syncpay://",
            "syncpay://admin/",
            "syncpay://shop/",
            "syncpay://shop/Acme",
            "syncpay://shop/a/b",
            "syncpay://carrier/",
            "syncpay://operator",
            "https://shop/acme",
            "syncpay:shop/acme",
        ] {
            assert!(principal_from_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(principal_from_cert(b""), Err(IdentityError::Unparsable));
        assert_eq!(principal_from_cert(&[0x30, 0x03, 0x02, 0x01, 0x00]), Err(IdentityError::Unparsable));
    }
}
