//! tokend: an API-token service that issues tokens, verifies them, and deletes
//! them so that every subscriber knows in real time.
//!
//! Where things live, following one delete from the wire to the watchers:
//! - [`auth`]: who is calling (bearer tokens) and what they may do.
//! - [`service`]: the gRPC handlers; `DeleteToken` builds a [`command::Command`].
//! - [`command`]: what each mutation does, as a pure plan against a [`state::State`].
//! - [`store`]: commits plans durably under the next global revision (sled by default).
//! - [`watch`]: fans committed events out to `WatchTokens` streams.
//! - [`expiry`]: deletes tokens whose expiry passed, as the actor `expiry`.
//! - [`leaks`]: revokes secrets a scanner reports (gRPC, and GitHub's
//!   secret-scanning partner protocol on a port of its own).
//! - [`domain`], [`secret`], [`error`], [`query`]: the plain types and rules.
//! - [`server`], [`listener`], [`tls`], [`telemetry`], [`traces`], [`cli`] and [`console`]: the `tokend` binary around all of it
//!   ([`listener`]: the port's defences against connection floods; [`tls`]:
//!   handshakes, and why one failed).
//! - [`dial`]: why a connection tokend made as a client failed (to etcd, or
//!   the CLI's to a server), as the cause and the flag to fix.
//! - [`client`]: for other Rust programs, [`client::TokenCache`], a verifier
//!   in their own memory that the watch stream keeps current.

pub mod auth;
pub mod bootstrap;
pub mod caller;
pub mod cli;
pub mod client;
pub mod command;
pub mod console;
pub mod dial;
pub mod domain;
pub mod error;
pub mod expiry;
pub mod hub;
pub mod leaks;
pub mod listener;
pub mod proto;
pub mod query;
pub mod secret;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod traces;
pub mod watch;
pub mod web;
