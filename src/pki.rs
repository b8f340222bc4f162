//! A development PKI, so a new user needs no OpenSSL: a CA, a server
//! certificate and client certificates for the operator, shops and
//! carriers, written as PEM files into one folder, private keys with mode
//! 0600. Client certificates carry the caller's identity as a SAN URI (see
//! `crate::identity`). Keys are ECDSA P-256.
//!
//! Layout of the folder:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca.key` | the CA (keep `ca.key` off the server) |
//! | `server.pem`, `server.key` | the server; SANs `localhost`, `127.0.0.1`, `::1` and any given names |
//! | `admin.pem`, `admin.key` | the operator (`syncpay://admin`) |
//! | `shop-<id>.pem`, `shop-<id>.key` | a shop (`syncpay://shop/<id>`) |
//! | `carrier-<id>.pem`, `carrier-<id>.key` | a carrier (`syncpay://carrier/<id>`) |
//! | `crl.pem`, `revoked.txt` | the CA's revocation list and the serials in it (`revoke` writes both) |
//!
//! Existing files are never overwritten: issuing a name twice fails.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::rngs::SysRng;
use rand::TryRng;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::domain::Principal;
use crate::identity::identity_uri;

/// Validity of the CA and of what it issues, unless told otherwise.
pub const DEFAULT_CA_DAYS: i64 = 3650;
pub const DEFAULT_CERT_DAYS: i64 = 397;
/// Names every server certificate has, so local clients always verify.
pub const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> PkiError {
    PkiError::File { path: path.display().to_string(), message: message.to_string() }
}

/// The files of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What `init` wrote.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub server: CertFiles,
    pub admin: CertFiles,
    pub clients: Vec<(Principal, CertFiles)>,
}

/// What to issue on `init`.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Extra DNS names or IP addresses for the server certificate.
    pub server_names: Vec<String>,
    pub shops: Vec<crate::domain::ShopId>,
    pub carriers: Vec<crate::domain::CarrierId>,
}

/// Writes `content` to a new file (never overwriting); `private` files get
/// mode 0600 from the moment they exist.
fn write_new(path: &Path, content: &[u8], private: bool) -> Result<(), PkiError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(|e| file_error(path, e))?;
    file.write_all(content).map_err(|e| file_error(path, e))?;
    file.sync_all().map_err(|e| file_error(path, e))
}

fn serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    SysRng.try_fill_bytes(&mut bytes).map_err(|e| PkiError::Invalid(format!("entropy: {e}")))?;
    // Positive and without a leading zero byte, as DER integers want.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn validity(params: &mut CertificateParams, days: i64) {
    validity_until(params, OffsetDateTime::now_utc() + Duration::days(days));
}

fn validity_until(params: &mut CertificateParams, not_after: OffsetDateTime) {
    // An hour of slack for clocks that are a little behind.
    params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    params.not_after = not_after;
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "syncpay development PKI");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// File stem for a principal's certificate.
pub fn file_stem(principal: &Principal) -> String {
    match principal {
        Principal::Admin => "admin".to_owned(),
        Principal::Shop(id) => format!("shop-{id}"),
        Principal::Carrier(id) => format!("carrier-{id}"),
    }
}

/// The CA, loaded from a PKI folder.
pub struct Ca {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Creates `ca.pem` and `ca.key` in `dir` (created if missing).
    pub fn create(dir: &Path, days: i64) -> Result<Ca, PkiError> {
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("syncpay development CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(serial()?);
        validity(&mut params, days);
        let cert = params.self_signed(&key)?;
        write_new(&dir.join("ca.key"), key.serialize_pem().as_bytes(), true)?;
        write_new(&dir.join("ca.pem"), cert.pem().as_bytes(), false)?;
        Ok(Ca { dir: dir.to_owned(), issuer: Issuer::new(params, key) })
    }

    /// Loads the CA of an existing PKI folder.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))
        };
        let key = KeyPair::from_pem(&read("ca.key")?)?;
        let issuer = Issuer::from_ca_cert_pem(&read("ca.pem")?, key)?;
        Ok(Ca { dir: dir.to_owned(), issuer })
    }

    fn issue(
        &self,
        stem: &str,
        mut params: CertificateParams,
        not_after: OffsetDateTime,
    ) -> Result<CertFiles, PkiError> {
        let files = CertFiles { cert: self.dir.join(format!("{stem}.pem")), key: self.dir.join(format!("{stem}.key")) };
        for path in [&files.cert, &files.key] {
            if path.exists() {
                return Err(file_error(path, "exists already; remove it to issue a new one"));
            }
        }
        let key = KeyPair::generate()?;
        params.serial_number = Some(serial()?);
        params.use_authority_key_identifier_extension = true;
        validity_until(&mut params, not_after);
        let cert = params.signed_by(&key, &self.issuer)?;
        write_new(&files.key, key.serialize_pem().as_bytes(), true)?;
        write_new(&files.cert, cert.pem().as_bytes(), false)?;
        Ok(files)
    }

    /// `server.pem`/`server.key` for `localhost`, `127.0.0.1`, `::1` and
    /// `extra_names`.
    pub fn issue_server(&self, extra_names: &[String], days: i64) -> Result<CertFiles, PkiError> {
        let mut names: Vec<String> = LOCAL_NAMES.iter().map(|s| (*s).to_owned()).collect();
        for n in extra_names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = name("syncpay server");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue("server", params, OffsetDateTime::now_utc() + Duration::days(days))
    }

    /// A client certificate naming `principal`, valid for `days`.
    pub fn issue_client(&self, principal: &Principal, days: i64) -> Result<CertFiles, PkiError> {
        self.issue_client_until(principal, OffsetDateTime::now_utc() + Duration::days(days))
    }

    /// A client certificate naming `principal` that expires at `not_after`
    /// (tests use one that expires within seconds).
    pub fn issue_client_until(&self, principal: &Principal, not_after: OffsetDateTime) -> Result<CertFiles, PkiError> {
        let uri = identity_uri(principal);
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&uri);
        params.subject_alt_names =
            vec![SanType::URI(uri.clone().try_into().map_err(|_| PkiError::Invalid(format!("bad URI {uri}")))?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(&file_stem(principal), params, not_after)
    }

    /// Adds the certificate at `cert_path` to the CA's revocation list and
    /// rewrites `crl.pem` (the server reads it with `--client-crl`, and
    /// again on reload).
    pub fn revoke(&self, cert_path: &Path) -> Result<PathBuf, PkiError> {
        let pem = std::fs::read(cert_path).map_err(|e| file_error(cert_path, e))?;
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem)
            .map_err(|e| file_error(cert_path, format!("bad PEM: {e}")))?;
        let (_, cert) = <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<_>>::from_der(&der)
            .map_err(|_| file_error(cert_path, "not a certificate"))?;
        let revoked_serial = SerialNumber::from_slice(cert.raw_serial());
        let list_path = self.dir.join("revoked.txt");
        let mut serials: Vec<String> = match std::fs::read_to_string(&list_path) {
            Ok(text) => text.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(file_error(&list_path, e)),
        };
        let hex: String = revoked_serial.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        if !serials.contains(&hex) {
            serials.push(hex);
        }
        let now = OffsetDateTime::now_utc();
        let mut revoked = Vec::new();
        for s in &serials {
            let bytes = (0..s.len())
                .step_by(2)
                .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| file_error(&list_path, "holds a malformed serial"))?;
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: now,
                reason_code: Some(RevocationReason::Unspecified),
                invalidity_date: None,
            });
        }
        let crl = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(30),
            crl_number: serial()?,
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)?;
        // Both files are replaced whole: written aside, then renamed.
        let replace = |path: &Path, content: &[u8]| -> Result<(), PkiError> {
            let tmp = path.with_extension("tmp");
            let _ = std::fs::remove_file(&tmp);
            write_new(&tmp, content, false)?;
            std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
        };
        replace(&list_path, (serials.join("\n") + "\n").as_bytes())?;
        let crl_path = self.dir.join("crl.pem");
        replace(&crl_path, crl.pem()?.as_bytes())?;
        Ok(crl_path)
    }
}

/// Creates a CA, the server certificate, the operator's certificate and one
/// per shop and carrier in `dir`.
pub fn init(dir: &Path, options: &InitOptions) -> Result<PkiFiles, PkiError> {
    if dir.join("ca.key").exists() {
        return Err(file_error(&dir.join("ca.key"), "a CA exists already in this folder"));
    }
    let ca = Ca::create(dir, DEFAULT_CA_DAYS)?;
    let server = ca.issue_server(&options.server_names, DEFAULT_CERT_DAYS)?;
    let admin = ca.issue_client(&Principal::Admin, DEFAULT_CERT_DAYS)?;
    let mut clients = Vec::new();
    let principals = options
        .shops
        .iter()
        .map(|s| Principal::Shop(s.clone()))
        .chain(options.carriers.iter().map(|c| Principal::Carrier(c.clone())));
    for p in principals {
        let files = ca.issue_client(&p, DEFAULT_CERT_DAYS)?;
        clients.push((p, files));
    }
    Ok(PkiFiles { dir: dir.to_owned(), ca_cert: dir.join("ca.pem"), server, admin, clients })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CarrierId, ShopId};
    use crate::identity::principal_from_cert;

    #[test]
    fn init_writes_private_keys_and_certificates_naming_their_holders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = InitOptions {
            server_names: vec!["pay.example".into()],
            shops: vec![ShopId::parse("acme").expect("valid")],
            carriers: vec![CarrierId::parse("docomo").expect("valid")],
        };
        let files = init(dir.path(), &options).expect("init");
        assert_eq!(files.clients.len(), 2);
        #[cfg(unix)]
        for entry in std::fs::read_dir(dir.path()).expect("list") {
            use std::os::unix::fs::PermissionsExt;
            let path = entry.expect("entry").path();
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            let is_key = path.extension().is_some_and(|e| e == "key");
            assert_eq!(mode, if is_key { 0o600 } else { 0o644 }, "{}", path.display());
        }
        use rustls::pki_types::pem::PemObject;
        for (principal, cert) in files.clients.iter().cloned().chain([(Principal::Admin, files.admin.clone())]) {
            let der = rustls::pki_types::CertificateDer::from_pem_file(&cert.cert).expect("pem");
            assert_eq!(principal_from_cert(&der), Ok(principal));
        }
        // Every client certificate says clientAuth, as the server requires.
        for cert in files.clients.iter().map(|(_, c)| c).chain([&files.admin]) {
            let der = rustls::pki_types::CertificateDer::from_pem_file(&cert.cert).expect("pem");
            assert!(crate::sync_server::tls::names_client_auth(&der), "{}", cert.cert.display());
        }
        // The server certificate names nobody as a client, and is none.
        let der = rustls::pki_types::CertificateDer::from_pem_file(&files.server.cert).expect("pem");
        assert!(principal_from_cert(&der).is_err());
        assert!(!crate::sync_server::tls::names_client_auth(&der));
        // Nothing is overwritten.
        assert!(init(dir.path(), &options).is_err());
        let ca = Ca::load(dir.path()).expect("load");
        assert!(ca.issue_client(&Principal::Admin, 1).is_err());
        let crl = ca.revoke(&files.admin.cert).expect("revoke");
        assert!(std::fs::read_to_string(crl).expect("crl").contains("X509 CRL"));
    }
}
