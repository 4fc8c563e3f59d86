//! The kernel's side of the power-cut file system: each FUSE request
//! answered from the [`Tree`].
//!
//! Owns the translation of requests into the tree's operations, and which
//! requests count as durability: `fsync`/`fdatasync` of a file and `fsync`
//! of a directory, nothing else (`flush` on close is not; `sync_file_range`
//! never reaches a FUSE file system). It must never answer `ENOSYS` to an
//! fsync (the kernel would take that as "nothing to do" and report success
//! from then on), nor ask for direct I/O: the kernel's page cache stays in
//! front, so mmap works.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::tree::{Body, Kind, Tree};

/// Only the kernel changes the tree while mounted, and a cut remounts, so
/// what the kernel caches can never go stale.
const TTL: Duration = Duration::from_secs(3600);

pub struct PowerFuse(pub Arc<Mutex<Tree>>);

fn err(e: i32) -> Errno {
    Errno::from_i32(e)
}

fn answer_empty(reply: ReplyEmpty, r: Result<(), i32>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(err(e)),
    }
}

fn answer_entry(reply: ReplyEntry, r: Result<FileAttr, i32>) {
    match r {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(err(e)),
    }
}

fn answer_attr(reply: ReplyAttr, r: Result<FileAttr, i32>) {
    match r {
        Ok(a) => reply.attr(&TTL, &a),
        Err(e) => reply.error(err(e)),
    }
}

fn attr(tree: &Tree, ino: u64) -> Result<FileAttr, i32> {
    let m = tree.meta.get(&ino).ok_or(libc::ENOENT)?;
    let (size, kind, nlink) = match tree.nodes.get(&ino).ok_or(libc::ENOENT)? {
        Body::File(f) => (f.len(), FileType::RegularFile, 1),
        Body::Dir(_) => (4096, FileType::Directory, 2),
    };
    Ok(FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: m.mtime,
        mtime: m.mtime,
        ctime: m.mtime,
        crtime: m.mtime,
        kind,
        perm: m.perm,
        nlink,
        uid: m.uid,
        gid: m.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    })
}

impl PowerFuse {
    fn with<T>(&self, f: impl FnOnce(&mut Tree) -> Result<T, i32>) -> Result<T, i32> {
        f(&mut self.0.lock().unwrap())
    }

    fn touch(tree: &mut Tree, ino: u64) {
        if let Some(m) = tree.meta.get_mut(&ino) {
            m.mtime = SystemTime::now();
        }
    }

    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: Kind,
        mode: u32,
        umask: u32,
    ) -> Result<FileAttr, i32> {
        self.with(|t| {
            let perm = (mode & !umask & 0o7777) as u16;
            let ino = t.make(parent.0, name, kind, perm, (req.uid(), req.gid()))?;
            Self::touch(t, parent.0);
            attr(t, ino)
        })
    }
}

impl Filesystem for PowerFuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        answer_entry(reply, self.with(|t| attr(t, t.lookup(parent.0, name)?)))
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        answer_attr(reply, self.with(|t| attr(t, ino.0)))
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.with(|t| {
            if let Some(len) = size {
                t.file_mut(ino.0)?
                    .set_len(len)
                    .map_err(super::tree::errno)?;
                Self::touch(t, ino.0);
            }
            let m = t.meta.get_mut(&ino.0).ok_or(libc::ENOENT)?;
            if let Some(mode) = mode {
                m.perm = (mode & 0o7777) as u16;
            }
            m.uid = uid.unwrap_or(m.uid);
            m.gid = gid.unwrap_or(m.gid);
            match mtime {
                Some(TimeOrNow::SpecificTime(at)) => m.mtime = at,
                Some(TimeOrNow::Now) => m.mtime = SystemTime::now(),
                None => {}
            }
            attr(t, ino.0)
        });
        answer_attr(reply, r)
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        answer_entry(reply, self.make(req, parent, name, Kind::File, mode, umask))
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        answer_entry(reply, self.make(req, parent, name, Kind::Dir, mode, umask))
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer_empty(reply, self.with(|t| t.remove(parent.0, name, false)))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer_empty(reply, self.with(|t| t.remove(parent.0, name, true)))
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        answer_empty(
            reply,
            self.with(|t| t.rename(parent.0, name, newparent.0, newname, no_replace)),
        )
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No FOPEN_KEEP_CACHE and no FOPEN_DIRECT_IO: the kernel caches
        // pages between opens of a file and drops them at the next open.
        match self.with(|t| attr(t, ino.0)) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(err(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let r = self.with(|t| {
            t.file_mut(ino.0)?
                .read(offset, size as u64)
                .map_err(super::tree::errno)
        });
        match r {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(err(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.with(|t| {
            t.file_mut(ino.0)?
                .write(offset, data)
                .map_err(super::tree::errno)?;
            Self::touch(t, ino.0);
            Ok(())
        });
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(err(e)),
        }
    }

    /// fallocate(2) in its plain mode (what the write-ahead log uses): the
    /// file grows to hold the range, reading zeros, durable only at the
    /// next fsync, like a truncate up. Other modes are refused, as many
    /// file systems do.
    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let r = self.with(|t| {
            let file = t.file_mut(ino.0)?;
            if offset + length > file.len() {
                file.set_len(offset + length).map_err(super::tree::errno)?;
            }
            Self::touch(t, ino.0);
            Ok(())
        });
        answer_empty(reply, r)
    }

    /// close(): not durability.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        answer_empty(reply, self.with(|t| t.sync_file(ino.0)))
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.with(|t| {
            let d = t.dir(ino.0)?;
            let mut all = vec![(ino.0, FileType::Directory, OsStr::new(".").to_owned())];
            all.push((ino.0, FileType::Directory, OsStr::new("..").to_owned()));
            for (name, child) in d {
                let kind = match t.meta.get(child).map(|m| m.kind) {
                    Some(Kind::Dir) => FileType::Directory,
                    _ => FileType::RegularFile,
                };
                all.push((*child, kind, name.clone()));
            }
            Ok(all)
        });
        match r {
            Ok(all) => {
                for (i, (child, kind, name)) in all.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*child), (i + 1) as u64, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        answer_empty(reply, self.with(|t| t.sync_dir(ino.0)))
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        // A roomy, made-up disk: sled and tokend only read it for reports.
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let existing = self.with(|t| t.lookup(parent.0, name));
        let r = match existing {
            Ok(_) if flags & libc::O_EXCL != 0 => Err(libc::EEXIST),
            Ok(ino) => self.with(|t| {
                if flags & libc::O_TRUNC != 0 {
                    t.file_mut(ino)?.set_len(0).map_err(super::tree::errno)?;
                }
                attr(t, ino)
            }),
            Err(_) => self.make(req, parent, name, Kind::File, mode, umask),
        };
        match r {
            Ok(a) => reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(err(e)),
        }
    }
}
