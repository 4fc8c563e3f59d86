//! The power-cut file system's namespace: which names each directory holds
//! as the running system sees them, and which of those a power cut keeps.
//!
//! Owns the POSIX-minimum rule for directory entries: a create, rename or
//! unlink is durable only once its directory was fsynced (ext4's ordered
//! mode keeps more; we model what an application may rely on). Also owns the
//! cut itself: every file loses what it never synced, and the namespace
//! goes back to the last fsync of each directory. It must never let a
//! running system's read see the durable view, nor a cut keep anything
//! not synced, except the torn prefix a file may keep.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use rand::RngExt;
use rand::rngs::StdRng;

use super::file::FileData;

pub const ROOT: u64 = 1;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    File,
    Dir,
}

/// What a node is, kept across cuts for every inode a durable entry may
/// name.
#[derive(Clone, Copy)]
pub struct Meta {
    pub kind: Kind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

pub enum Body {
    Dir(BTreeMap<OsString, u64>),
    File(FileData),
}

/// Totals since the file system was made.
#[derive(Default, Debug, Clone, Copy)]
pub struct Totals {
    pub cuts: u64,
    /// Bytes written, not synced, lost at a cut.
    pub dropped_bytes: u64,
    /// Directory entries whose create, rename or unlink a cut undid.
    pub dropped_entries: u64,
    /// Files a cut tore, and the bytes of their torn prefixes kept.
    pub torn_files: u64,
    pub torn_bytes: u64,
    pub synced_bytes: u64,
    pub dir_syncs: u64,
}

pub struct Tree {
    backing: PathBuf,
    next_ino: u64,
    pub meta: HashMap<u64, Meta>,
    /// The running system's view.
    pub nodes: HashMap<u64, Body>,
    /// Each directory's entries as of its last fsync (none: empty).
    durable: HashMap<u64, BTreeMap<OsString, u64>>,
    pub totals: Totals,
}

impl Tree {
    /// An empty file system whose file bytes live in `backing`.
    pub fn new(backing: PathBuf) -> Tree {
        let mut t = Tree {
            backing,
            next_ino: ROOT + 1,
            meta: HashMap::new(),
            nodes: HashMap::new(),
            durable: HashMap::new(),
            totals: Totals::default(),
        };
        t.meta.insert(ROOT, new_meta(Kind::Dir, 0o755, 0, 0));
        t.nodes.insert(ROOT, Body::Dir(BTreeMap::new()));
        t
    }

    fn backing_path(&self, ino: u64) -> PathBuf {
        self.backing.join(format!("{ino}"))
    }

    pub fn dir(&self, ino: u64) -> Result<&BTreeMap<OsString, u64>, i32> {
        match self.nodes.get(&ino) {
            Some(Body::Dir(d)) => Ok(d),
            Some(Body::File(_)) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, i32> {
        match self.nodes.get_mut(&ino) {
            Some(Body::Dir(d)) => Ok(d),
            Some(Body::File(_)) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    pub fn file_mut(&mut self, ino: u64) -> Result<&mut FileData, i32> {
        match self.nodes.get_mut(&ino) {
            Some(Body::File(f)) => Ok(f),
            Some(Body::Dir(_)) => Err(libc::EISDIR),
            None => Err(libc::ENOENT),
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, i32> {
        self.dir(parent)?.get(name).copied().ok_or(libc::ENOENT)
    }

    /// A new node named `name` in `parent`.
    pub fn make(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        owner: (u32, u32),
    ) -> Result<u64, i32> {
        if self.dir(parent)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let body = match kind {
            Kind::Dir => Body::Dir(BTreeMap::new()),
            Kind::File => Body::File(FileData::open(self.backing_path(ino)).map_err(errno)?),
        };
        self.meta
            .insert(ino, new_meta(kind, perm, owner.0, owner.1));
        self.nodes.insert(ino, body);
        self.dir_mut(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// unlink (`want_dir` false) or rmdir (true). The node stays readable
    /// through open handles until the next cut.
    pub fn remove(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), i32> {
        let ino = self.lookup(parent, name)?;
        match (self.nodes.get(&ino), want_dir) {
            (Some(Body::Dir(d)), true) if !d.is_empty() => return Err(libc::ENOTEMPTY),
            (Some(Body::Dir(_)), false) => return Err(libc::EISDIR),
            (Some(Body::File(_)), true) => return Err(libc::ENOTDIR),
            _ => {}
        }
        self.dir_mut(parent)?.remove(name);
        Ok(())
    }

    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), i32> {
        let ino = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        if let Ok(existing) = self.lookup(new_parent, new_name) {
            if existing == ino {
                return Ok(());
            }
            if no_replace {
                return Err(libc::EEXIST);
            }
            let moving_dir = self.meta[&ino].kind == Kind::Dir;
            self.remove(new_parent, new_name, moving_dir)?;
        }
        self.dir_mut(parent)?.remove(name);
        self.dir_mut(new_parent)?.insert(new_name.to_owned(), ino);
        Ok(())
    }

    /// fsync of a file: its bytes and size are durable (not its name).
    pub fn sync_file(&mut self, ino: u64) -> Result<(), i32> {
        let n = self.file_mut(ino)?.sync().map_err(errno)?;
        self.totals.synced_bytes += n;
        Ok(())
    }

    /// fsync of a directory: its entries, as they are now, are durable.
    pub fn sync_dir(&mut self, ino: u64) -> Result<(), i32> {
        let entries = self.dir(ino)?.clone();
        self.durable.insert(ino, entries);
        self.totals.dir_syncs += 1;
        Ok(())
    }

    /// The power cut. Each file keeps what it synced (with `tear`, a torn
    /// prefix of its pending writes now and then); each directory gets its
    /// entries back as of its last fsync; every node no durable entry
    /// reaches is gone, its backing file too.
    pub fn cut(&mut self, mut tear: Option<&mut StdRng>) -> io::Result<Totals> {
        let before = self.totals;
        for body in self.nodes.values_mut() {
            if let Body::File(f) = body
                && f.dirty()
            {
                let torn = match tear.as_deref_mut() {
                    Some(rng) => rng.random_bool(0.5).then_some(rng),
                    None => None,
                };
                let c = f.cut(torn)?;
                self.totals.dropped_bytes += c.dropped;
                self.totals.torn_bytes += c.torn_kept;
                self.totals.torn_files += c.torn as u64;
            }
        }
        // Entries the cut undoes, in the directories that survive it.
        for (ino, body) in &self.nodes {
            if let (Body::Dir(now), Some(m)) = (body, self.meta.get(ino))
                && m.kind == Kind::Dir
            {
                let empty = BTreeMap::new();
                let kept = self.durable.get(ino).unwrap_or(&empty);
                let names: HashSet<&OsString> = now.keys().chain(kept.keys()).collect();
                let undone = names.iter().filter(|n| now.get(**n) != kept.get(**n));
                self.totals.dropped_entries += undone.count() as u64;
            }
        }
        self.nodes.clear();
        let mut seen = HashSet::new();
        self.rebuild(ROOT, &mut seen)?;
        self.meta.retain(|ino, _| seen.contains(ino));
        self.durable.retain(|ino, _| seen.contains(ino));
        for entry in std::fs::read_dir(&self.backing)? {
            let entry = entry?;
            let ino = entry.file_name().to_string_lossy().parse::<u64>();
            if !ino.is_ok_and(|i| seen.contains(&i)) {
                std::fs::remove_file(entry.path())?;
            }
        }
        self.totals.cuts += 1;
        let t = self.totals;
        Ok(Totals {
            cuts: 1,
            dropped_bytes: t.dropped_bytes - before.dropped_bytes,
            dropped_entries: t.dropped_entries - before.dropped_entries,
            torn_files: t.torn_files - before.torn_files,
            torn_bytes: t.torn_bytes - before.torn_bytes,
            synced_bytes: 0,
            dir_syncs: 0,
        })
    }

    /// The durable tree under `ino`. A directory a durable entry names
    /// twice (a rename synced in both directories) is kept once.
    fn rebuild(&mut self, ino: u64, seen: &mut HashSet<u64>) -> io::Result<()> {
        seen.insert(ino);
        let Some(kind) = self.meta.get(&ino).map(|m| m.kind) else {
            return Ok(());
        };
        match kind {
            Kind::File => {
                let f = FileData::open(self.backing_path(ino))?;
                self.nodes.insert(ino, Body::File(f));
            }
            Kind::Dir => {
                let mut entries = self.durable.get(&ino).cloned().unwrap_or_default();
                entries.retain(|_, child| {
                    self.meta.contains_key(child)
                        && !(seen.contains(child) && self.meta[child].kind == Kind::Dir)
                });
                for child in entries.values() {
                    if !seen.contains(child) {
                        self.rebuild(*child, seen)?;
                    }
                }
                self.durable.insert(ino, entries.clone());
                self.nodes.insert(ino, Body::Dir(entries));
            }
        }
        Ok(())
    }
}

fn new_meta(kind: Kind, perm: u16, uid: u32, gid: u32) -> Meta {
    Meta {
        kind,
        perm,
        uid,
        gid,
        mtime: SystemTime::now(),
    }
}

pub fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}
