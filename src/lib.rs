//! syncpay — a synchronous settlement server.
//!
//! Crate map:
//! - [`domain`]: ids, money, the trade state machine, the ledger and the
//!   approval cryptography. Pure and synchronous.
//! - [`store`]: the only module that knows sled: records, group-committed
//!   durable transactions, ledger verification.
//! - [`client`]: connecting and authenticating gRPC clients.
//! - [`proto`]: the generated `syncpay.v1` gRPC types.

pub mod carrier;
pub mod client;
pub mod domain;
pub mod proto;
pub mod store;
pub mod sync_server;
