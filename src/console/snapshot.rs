//! `tokend snapshot save|restore`: backups of a running server, restored
//! into a new data dir (format and what a snapshot holds:
//! `crate::store::snapshot`).
//!
//! Owns the files: `save` makes its temp file (mode 0600, since a snapshot
//! holds secret hashes) beside the target before it asks the server for
//! anything, checks what the server sent (checksum and every record), and
//! only then gives it the target's name (fsync, rename, fsync of the dir). `restore` checks the whole file before it creates
//! anything. It must never leave a half-written snapshot under the final
//! name, nor write anything from a file that failed its checks.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{Conn, Failure, exit, fail};
use crate::cli::{Output, SnapshotCommand};
use crate::proto as pb;
use crate::store::snapshot::{Snapshot, Summary};
use crate::store::{Backend, SledStore};

pub async fn run(cmd: SnapshotCommand) -> Result<(), Failure> {
    match cmd {
        SnapshotCommand::Save { client, file } => {
            let started = Instant::now();
            let cannot_write = |e: std::io::Error| {
                fail(
                    exit::FAILED,
                    format!("cannot write {}: {e}", file.display()),
                )
            };
            // Before anything is downloaded: a path that cannot be written
            // fails at once, not after the whole store crossed the wire.
            let staged = Staged::create(&file).map_err(cannot_write)?;
            let stopped = crate::cli::stop_signal()
                .map_err(|e| fail(exit::FAILED, format!("cannot handle Ctrl-C: {e}")))?;
            let download = async {
                let conn = Conn::open(&client).await?;
                let mut chunks = conn
                    .accounts()
                    .save_snapshot(pb::SaveSnapshotRequest {})
                    .await?
                    .into_inner();
                let mut bytes = Vec::new();
                while let Some(chunk) = chunks.message().await? {
                    bytes.extend_from_slice(&chunk.data);
                }
                Ok::<_, Failure>(bytes)
            };
            // Stopped (Ctrl-C, a cron job's timeout) while it downloads: the
            // temp file goes with `staged` instead of staying behind,
            // hidden, beside the file, and the file is left as it was.
            let bytes = tokio::select! {
                bytes = download => bytes?,
                (signal, code) = stopped => {
                    return Err(fail(
                        code,
                        format!("stopped by {signal}: nothing written to {}", file.display()),
                    ));
                }
            };
            let summary = Snapshot::decode(&bytes)
                .map_err(|e| fail(exit::FAILED, format!("the server sent a bad snapshot: {e}")))?
                .summary();
            staged.commit(&bytes).map_err(cannot_write)?;
            match client.output {
                Output::Json => say!(
                    "{}",
                    serde_json::json!({
                        "file": file.display().to_string(),
                        "revision": summary.revision,
                        "accounts": summary.accounts,
                        "tokens": summary.tokens,
                        "live_tokens": summary.live_secrets,
                        "bytes": bytes.len(),
                    })
                ),
                Output::Table => say!(
                    "saved {}: {}, {} bytes in {:.2?}",
                    file.display(),
                    describe(&summary),
                    bytes.len(),
                    started.elapsed()
                ),
            }
            Ok(())
        }
        SnapshotCommand::Restore {
            file,
            data_dir,
            store,
            etcd,
        } => {
            let store = etcd
                .store(&store)
                .map_err(|e| fail(exit::USAGE, e.to_string()))?;
            if store == Backend::Sled && data_dir.is_none() {
                return Err(fail(
                    exit::USAGE,
                    "--data-dir is required to restore into sled",
                ));
            }
            let started = Instant::now();
            let bytes = std::fs::read(&file)
                .map_err(|e| fail(exit::USAGE, format!("cannot read {}: {e}", file.display())))?;
            let snapshot = Snapshot::decode(&bytes).map_err(|e| {
                fail(
                    exit::FAILED,
                    format!("{} refused, nothing written: {e}", file.display()),
                )
            })?;
            let target = restore_into(&store, data_dir.as_deref(), &snapshot).await?;
            say!(
                "restored {} into {target}: {} in {:.2?}",
                file.display(),
                describe(&snapshot.summary()),
                started.elapsed()
            );
            say!(
                "its next change is revision {}: watchers and caches of the original resuming \
                 from any revision before it re-sync",
                snapshot.restored_head() + 1
            );
            say!(
                "the snapshot holds no operator.token: copy it into the data dir, or serve with --operator-token-file"
            );
            Ok(())
        }
    }
}

/// Writes `snapshot` where `store` says; what it was written into.
async fn restore_into(
    store: &Backend,
    data_dir: Option<&Path>,
    snapshot: &Snapshot,
) -> Result<String, Failure> {
    let failed = |e: crate::error::Error| fail(exit::FAILED, e.to_string());
    match store {
        Backend::Sled => {
            let dir = data_dir.expect("checked before reading the file");
            SledStore::restore_into(dir, snapshot).map_err(failed)?;
            Ok(dir.display().to_string())
        }
        #[cfg(feature = "etcd")]
        Backend::Etcd { endpoints, prefix } => {
            crate::store::EtcdStore::restore_into(endpoints, prefix, snapshot)
                .await
                .map_err(failed)?;
            Ok(format!("etcd prefix {prefix}"))
        }
        #[cfg(not(feature = "etcd"))]
        Backend::Etcd { .. } => Err(fail(
            exit::USAGE,
            "this tokend was built without the etcd backend (cargo feature `etcd`)",
        )),
    }
}

fn describe(s: &Summary) -> String {
    format!(
        "revision {}, {} accounts, {} tokens ({} live)",
        s.revision, s.accounts, s.tokens, s.live_secrets
    )
}

/// A snapshot's file while it is made: a temp file beside it (mode 0600),
/// written and synced, then renamed over it, and the rename made durable by
/// syncing the directory. Removed if dropped unfinished.
struct Staged {
    file: PathBuf,
    dir: PathBuf,
    tmp: PathBuf,
    /// `None` once renamed into place.
    out: Option<std::fs::File>,
}

impl Staged {
    fn create(file: &Path) -> std::io::Result<Staged> {
        let dir = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = file
            .file_name()
            .ok_or_else(|| std::io::Error::other("the path names no file"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        Ok(Staged {
            file: file.to_path_buf(),
            dir,
            tmp,
            out: Some(out),
        })
    }

    fn commit(mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut out = self.out.take().expect("committed once");
        let written = (|| {
            out.write_all(bytes)?;
            out.sync_all()?;
            std::fs::rename(&self.tmp, &self.file)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        written?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
