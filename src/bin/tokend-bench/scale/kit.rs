//! What the scale scenario's phases share: server processes stopped with
//! SIGTERM, their footprint, a pool of clients working through numbered
//! jobs, and progress lines for long loads.

use std::future::Future;
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::Footprint;
use crate::peers::status_kib;
use crate::scenarios::{Latency, histogram};

/// A server process: stopped with SIGTERM by [`Server::stop`], killed if
/// dropped before (a failed run).
pub struct Server {
    pub child: Child,
    pub what: &'static str,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics if the process has exited (it was to be serving).
    pub fn alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait for a server") {
            panic!("{} exited during start-up: {status}", self.what);
        }
    }

    pub async fn stop(mut self) {
        // SAFETY: signals our own child, not reaped yet, so the pid is its.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.child.try_wait().expect("wait for a server").is_none() {
            assert!(Instant::now() < deadline, "{} ignored SIGTERM", self.what);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Memory and disk after 2 s of quiet.
    pub async fn footprint(&self, dir: &Path, startup: Duration) -> Footprint {
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Where the disk goes, for the log (tokend: sled's `db/`, the
        // write-ahead log's `wal/`).
        let parts: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                format!(
                    "{} {:.1} MB",
                    e.file_name().to_string_lossy(),
                    disk_usage(&e.path()) as f64 / 1e6
                )
            })
            .collect();
        eprintln!("scale: {} on disk: {}", self.what, parts.join(", "));
        Footprint {
            rss_kib: status_kib(self.pid(), "VmRSS"),
            anon_kib: status_kib(self.pid(), "RssAnon"),
            peak_kib: status_kib(self.pid(), "VmHWM"),
            disk: disk_usage(dir),
            startup,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Allocated bytes of `path` and everything under it, like `du -s`.
/// Files that vanish meanwhile (sled's and etcd's own) count as nothing.
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            total += disk_usage(&entry.path());
        }
    }
    total
}

pub fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// Counts finished work and prints a line at every tenth, or every 100,000.
pub struct Progress {
    what: String,
    total: usize,
    step: usize,
    done: AtomicUsize,
    started: Instant,
    /// When the last line was printed, and at what count.
    last: Mutex<(Instant, usize)>,
}

impl Progress {
    pub fn new(what: String, total: usize) -> Arc<Progress> {
        let now = Instant::now();
        Arc::new(Progress {
            what,
            total,
            step: (total / 10).clamp(1, 100_000),
            done: AtomicUsize::new(0),
            started: now,
            last: Mutex::new((now, 0)),
        })
    }

    pub fn add(&self, k: usize) {
        let before = self.done.fetch_add(k, Ordering::Relaxed);
        let after = before + k;
        if after / self.step == before / self.step && after < self.total {
            return;
        }
        let mut last = self.last.lock().unwrap();
        let recent = (after - last.1) as f64 / last.0.elapsed().as_secs_f64();
        *last = (Instant::now(), after);
        eprintln!(
            "scale: {} {after} / {}, {:.0}/s ({recent:.0}/s lately)",
            self.what,
            self.total,
            self.rate()
        );
    }

    pub fn rate(&self) -> f64 {
        self.done.load(Ordering::Relaxed) as f64 / self.started.elapsed().as_secs_f64()
    }
}

/// `conns.len()` workers, one per connection, each taking the next of
/// `jobs` indices until none is left and running `work` on it.
pub async fn pool<C, T, W, F>(conns: Vec<C>, jobs: usize, work: W) -> Vec<T>
where
    C: Clone + Send + 'static,
    T: Send + 'static,
    W: Fn(C, usize) -> F + Clone + Send + 'static,
    F: Future<Output = T> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for c in conns {
        let (next, work) = (next.clone(), work.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return out;
                }
                out.push(work(c.clone(), i).await);
            }
        });
    }
    let mut all = Vec::with_capacity(jobs);
    while let Some(out) = tasks.join_next().await {
        all.extend(out.expect("a scale worker"));
    }
    all
}

pub fn latency(micros: impl IntoIterator<Item = u64>) -> Latency {
    let mut h = histogram();
    for us in micros {
        h.record(us).unwrap();
    }
    Latency::of(&h)
}
