//! PowerFs: a FUSE file system for tests that can lose power, after the idea
//! of LazyFS (etcd's robustness suite). Mounted in this process on a temp
//! dir; what is written through it stays in memory, as in a page cache,
//! until an fsync makes it durable in a backing directory; [`PowerFs::cut`]
//! drops everything that was not, as a power cut would.
//!
//! Durable means what POSIX promises, no more: `fsync`/`fdatasync` of a
//! file makes its bytes and size durable ([`file`]); a create, rename or
//! unlink only with an fsync of its directory ([`tree`]). Close,
//! `sync_file_range` and `flush` are not durability. A cut may tear the
//! writes it drops: keep a prefix of a file's pending writes, ended at a
//! 512-byte sector or 4096-byte page boundary. The backing directory holds
//! one file per inode (its durable bytes); the durable namespace is kept by
//! the [`tree::Tree`] alongside.
//!
//! Owns the mount, the unmount (`fusermount3 -u -z` first: fuser's own
//! unmount can hang) and the remount that a cut is. It must never cut while
//! a process still uses the mount: callers kill the program under test and
//! wait for it to exit first, and hold no file open on it themselves. Needs
//! /dev/fuse, root and `fusermount3` (Debian's `fuse3`, which
//! scripts/test.sh installs).

mod file;
mod fuse;
mod tree;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption};
use rand::rngs::StdRng;

pub use self::tree::Totals;
use self::tree::Tree;

pub struct PowerFs {
    // Dropped after the session: the mount point must outlive the mount.
    session: Option<BackgroundSession>,
    tree: Arc<Mutex<Tree>>,
    mount: tempfile::TempDir,
    _backing: tempfile::TempDir,
}

impl PowerFs {
    /// An empty file system, mounted on a new temp dir. Panics with the
    /// reason if FUSE cannot be used here.
    pub fn mount() -> PowerFs {
        let backing = tempfile::tempdir().unwrap();
        let mount = tempfile::tempdir().unwrap();
        let mut fs = PowerFs {
            session: None,
            tree: Arc::new(Mutex::new(Tree::new(backing.path().to_path_buf()))),
            mount,
            _backing: backing,
        };
        fs.attach();
        fs
    }

    fn attach(&mut self) {
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("powerfs".into())];
        let fs = fuse::PowerFuse(self.tree.clone());
        let session = fuser::spawn_mount(fs, self.mount.path(), &config).unwrap_or_else(|e| {
            panic!(
                "mounting the power-cut file system on {} failed: {e} \
                 (needs /dev/fuse, root, and fusermount3 from Debian's fuse3)",
                self.mount.path().display()
            )
        });
        self.session = Some(session);
    }

    /// Lazy unmount: the mount point is free at once; the kernel lets go of
    /// the file system when nothing uses it any more, which ends the
    /// session's thread. With `wait`, waits for that (a cut must not run
    /// while a request could still arrive).
    fn detach(&mut self, wait: bool) {
        let Some(session) = self.session.take() else {
            return;
        };
        let status = std::process::Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(self.mount.path())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("fusermount3 -u -z {} failed", self.mount.path().display());
        }
        if !wait {
            // Not joined: a panicking test may drop this before the
            // process that still has files open on it.
            return;
        }
        let since = std::time::Instant::now();
        while !session.guard.is_finished() {
            assert!(
                since.elapsed() < Duration::from_secs(20),
                "the power-cut file system is still in use 20 s after its unmount: \
                 a process (or this test) holds a file open on it"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = session.join();
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.mount.path()
    }

    /// The power cut: every write not fsynced, every directory change whose
    /// directory was not fsynced, is lost; with `tear`, some files keep a
    /// torn prefix of their lost writes. Unmounts, cuts, mounts again (the
    /// kernel's caches go with the old mount). What the cut dropped.
    pub fn cut(&mut self, tear: Option<&mut StdRng>) -> Totals {
        self.detach(true);
        let dropped = self.tree.lock().unwrap().cut(tear).expect("cutting power");
        self.attach();
        dropped
    }

    /// Totals since it was mounted first.
    pub fn totals(&self) -> Totals {
        self.tree.lock().unwrap().totals
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        self.detach(false);
    }
}
