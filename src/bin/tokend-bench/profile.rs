//! Where a delete's CPU goes: tokend (or the floor server) alone, one
//! delete run at a given number of clients, recorded by `perf record` from
//! the moment the items are seeded to the last answer (scripts/profile.sh
//! turns the samples into microseconds per delete). Owns starting and
//! stopping perf; it must never record the seeding, which is creates, not
//! deletes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::peers::{Peer, THREAD_ROLES, Tokend};
use crate::scenarios;

/// Deletes in the recorded run: long enough for a few thousand samples.
const DELETES: usize = 20_000;

pub async fn deletes(clients: usize, floor: bool, perf_data: &Path) {
    let root = tempfile::tempdir_in(std::env::temp_dir()).expect("temp dir");
    let server = Arc::new(if floor {
        Tokend::start_floor(root.path()).await
    } else {
        Tokend::start(root.path()).await
    });
    let items = scenarios::seed(&server, DELETES, 32).await;
    let mut perf = tokio::process::Command::new("perf")
        .args(["record", "-q", "-F", "999", "-e", "cpu-clock"])
        .args(["--call-graph", "dwarf,16384", "-p"])
        .arg(server.pid().to_string())
        .arg("-o")
        .arg(perf_data)
        .spawn()
        .expect("perf (Debian's linux-perf) on the PATH");
    // perf attaches to every thread before the first delete.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = scenarios::delete_all(&server, clients, items).await;
    // SIGINT: perf writes its file and exits.
    let pid = perf.id().expect("perf is running") as i32;
    // SAFETY: a plain kill(2) of our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    perf.wait().await.expect("perf exits");
    // The server's CPU per delete by thread, then all of it last: the
    // script reads the last field.
    let threads: String = THREAD_ROLES
        .iter()
        .zip(t.thread_cpu_us)
        .map(|(role, us)| format!(" {}_us={us:.1}", role.split(' ').next().unwrap_or(role)))
        .collect();
    println!(
        "clients={clients} deletes={DELETES} per_second={:.0}{threads} server_cpu_us={:.1}",
        t.per_second, t.cpu_us
    );
}
