//! Test harness: a real tokend (gRPC over loopback, sled in a temp dir) and
//! real tonic clients. Nothing is mocked.
//!
//! With `TOKEND_TEST_ETCD=host:port,…` (scripts/test.sh's second pass) every
//! server the suite starts keeps its records on that etcd cluster instead,
//! under a key prefix named after its data dir: the same tests, the other
//! backend. Tests of what only the embedded store has (its files, its disk)
//! say so with [`sled_only`].
//!
//! The harness owns what it starts: temp data dirs, loopback ports, servers,
//! child processes and etcd clusters, none of which outlives the test that
//! made it (a dropped [`Process`] or [`etcd::EtcdCluster`] is killed; a
//! [`TestServer`] ends with the test's runtime). It must never mock a part
//! of tokend, nor share state between tests: each test starts its own
//! servers on its own data dirs (on etcd, under its own key prefix).
//!
//! - [`api`]: gRPC clients and one helper per call the suite makes often.
//! - [`server`]: [`TestServer`], tokend started in this process, restartable.
//! - [`process`]: [`Process`], the `tokend` binary spawned as a child.
//! - [`pki`]: a certificate authority and certificates made for one test.
//! - [`otlp`]: an OTLP trace receiver, for tests/traces.rs.
//! - [`backend`]: sled or the test etcd cluster, [`sled_only`] tests, and
//!   the log files a sled test reads.
//! - [`etcd`]: etcd clusters of its own, for tests/replicas.rs.
//! - [`workload`], [`checks`]: the crash suites' load, ledger and
//!   kill-and-restart cycles, and what a restart owes the clients.
//! - [`powerfs`]: a FUSE file system that loses what was not fsynced at a
//!   power cut, for tests/powercut.rs.
//!
//! Every test binary includes this module and uses a part of it, hence the
//! `allow(dead_code)`.

#![allow(dead_code)]

pub mod api;
pub mod backend;
pub mod checks;
pub mod etcd;
pub mod otlp;
pub mod pki;
pub mod powerfs;
pub mod process;
pub mod server;
pub mod workload;

// A test binary may take nothing from one of them.
#[allow(unused_imports)]
pub use self::{api::*, backend::*, process::*, server::*};
