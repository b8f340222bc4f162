//! syncpay — a synchronous settlement server.
//!
//! Crate map:
//! - [`domain`]: ids, money, the trade state machine, the ledger and the
//!   approval cryptography. Pure and synchronous.
//! - [`store`]: the storage boundary (typed operations, refusals, records,
//!   ledger verification) and its backends; `store::sled` is the only
//!   module that knows sled.
//! - [`sync_server`]: the engine (every use case: trade orchestration,
//!   expiry, event fan-out) and the gRPC edge over it;
//!   `sync_server::start(config, listener)`.
//! - [`carrier`]: the carrier-gateway trait and the relay-stream gateway.
//! - [`conformance`]: the carrier conformance check: a sandbox playing
//!   `CarrierService` for a relay under test, and the steps that judge it.
//! - [`metrics`]: every metric name and the helpers that record them.
//! - [`identity`]: the caller's identity as a client certificate names it.
//! - [`child`]: running `syncpay` as a child process (the benchmark, the
//!   operational tests).
//! - [`client`]: connecting (plaintext or mutual TLS) and authenticating
//!   gRPC clients.
//! - [`codec`]: the prost codec that reports malformed requests as
//!   `INVALID_ARGUMENT`.
//! - [`pg_cluster`]: throwaway PostgreSQL clusters (primary and standby)
//!   for the tests and the benchmark.
//! - [`hex`]: lowercase hex for key files and receipts in JSON.
//! - [`pki`]: the development PKI (CA, server and client certificates).
//! - [`proto`]: the generated `syncpay.v1` gRPC types.
//! - [`register`]: the virtual register, the shop-side client library,
//!   and the offline receipt check (`register::verify_receipt`).
//! - [`terminal_sim`]: a simulated carrier relay hosting simulated handsets
//!   and browser phones.
//! - [`web`]: the web pages (sample shop, handset page, operator console)
//!   and what `syncpay demo --web` starts.

pub mod carrier;
pub mod child;
pub mod client;
pub mod codec;
pub mod conformance;
pub mod domain;
pub mod hex;
pub mod identity;
pub mod metrics;
pub mod pg_cluster;
pub mod pki;
pub mod proto;
pub mod register;
pub mod store;
pub mod sync_server;
pub mod terminal_sim;
pub mod web;
