//! `syncpay pki …`: the development PKI, so a new user needs no OpenSSL.
//! `init` makes a CA, the server certificate and client certificates;
//! `issue` adds a client; `revoke` writes the CA's revocation list.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use syncpay::domain::Principal;
use syncpay::domain::{CarrierId, ShopId};
use syncpay::pki::{self, Ca, InitOptions, DEFAULT_CERT_DAYS};

#[derive(Args)]
pub struct PkiArgs {
    /// The PKI folder.
    #[arg(long, env = "SYNCPAY_PKI_DIR", default_value = "syncpay-pki", global = true)]
    dir: PathBuf,
    #[command(subcommand)]
    command: PkiCommand,
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a CA, a server certificate (localhost, 127.0.0.1, ::1 and
    /// any --server-name) and client certificates for the operator and each
    /// --shop and --carrier. Keys are written with mode 0600.
    Init {
        /// Another DNS name or IP address for the server certificate.
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// A shop id to issue a client certificate for.
        #[arg(long = "shop")]
        shops: Vec<String>,
        /// A carrier id to issue a client certificate for.
        #[arg(long = "carrier")]
        carriers: Vec<String>,
    },
    /// Issue one more client certificate from the folder's CA.
    Issue {
        #[command(subcommand)]
        who: Who,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = DEFAULT_CERT_DAYS)]
        days: i64,
    },
    /// Revoke a certificate: adds it to `crl.pem`; serve with
    /// `--client-crl <dir>/crl.pem` and send the server SIGHUP.
    Revoke {
        /// The certificate file to revoke.
        cert: PathBuf,
    },
}

#[derive(Subcommand)]
enum Who {
    Shop { id: String },
    Carrier { id: String },
    Admin,
}

pub fn run(args: PkiArgs) -> anyhow::Result<()> {
    match args.command {
        PkiCommand::Init { server_names, shops, carriers } => {
            let options = InitOptions {
                server_names,
                shops: shops
                    .iter()
                    .map(|s| ShopId::parse(s).with_context(|| format!("--shop {s}")))
                    .collect::<Result<_, _>>()?,
                carriers: carriers
                    .iter()
                    .map(|c| CarrierId::parse(c).with_context(|| format!("--carrier {c}")))
                    .collect::<Result<_, _>>()?,
            };
            let files = pki::init(&args.dir, &options)?;
            let dir = args.dir.display();
            println!("CA:      {dir}/ca.pem (its key {dir}/ca.key: keep it off the server)");
            println!("server:  {} {}", files.server.cert.display(), files.server.key.display());
            println!("admin:   {} {}", files.admin.cert.display(), files.admin.key.display());
            for (principal, f) in &files.clients {
                println!("{:<8} {} {}", format!("{}:", kind(principal)), f.cert.display(), f.key.display());
            }
            println!();
            println!("serve:   syncpay serve --tls-cert {dir}/server.pem --tls-key {dir}/server.key --client-ca {dir}/ca.pem");
            println!("clients connect to https://localhost:7700 trusting {dir}/ca.pem with their own .pem/.key pair.");
            println!("The shops and carriers must also be created (syncpay admin create-shop / create-carrier).");
        }
        PkiCommand::Issue { who, days } => {
            let principal = match who {
                Who::Shop { id } => Principal::Shop(ShopId::parse(&id).with_context(|| format!("shop id {id}"))?),
                Who::Carrier { id } => {
                    Principal::Carrier(CarrierId::parse(&id).with_context(|| format!("carrier id {id}"))?)
                }
                Who::Admin => Principal::Admin,
            };
            let ca = Ca::load(&args.dir)?;
            let files = ca.issue_client(&principal, days)?;
            println!("{} {}", files.cert.display(), files.key.display());
        }
        PkiCommand::Revoke { cert } => {
            let ca = Ca::load(&args.dir)?;
            let crl = ca.revoke(&cert)?;
            println!("revoked {}; the list is {} (reload the server: kill -HUP <pid>)", cert.display(), crl.display());
        }
    }
    Ok(())
}

fn kind(p: &Principal) -> &'static str {
    match p {
        Principal::Admin => "admin",
        Principal::Shop(_) => "shop",
        Principal::Carrier(_) => "carrier",
    }
}
