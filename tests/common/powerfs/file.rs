//! One regular file of the power-cut file system: its durable bytes in a
//! backing file, and what was written since its last fsync in memory.
//!
//! Owns the page-cache model of a single file: reads see the durable bytes
//! overlaid with the pending ones; `sync` makes the pending ones durable;
//! `cut` drops them, or keeps a sector- or page-aligned prefix (a torn
//! write). It must never write the backing file except in `sync` and `cut`:
//! the backing file is the disk.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use rand::RngExt;
use rand::rngs::StdRng;

pub const PAGE: u64 = 4096;
const SECTOR: u64 = 512;

/// A change not yet durable, in the order the kernel sent it.
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

/// What a cut did to one file.
#[derive(Default, Debug, Clone, Copy)]
pub struct Cut {
    /// Bytes written and never synced that the cut dropped.
    pub dropped: u64,
    /// Bytes of a torn write's prefix that reached the disk anyway.
    pub torn_kept: u64,
    pub torn: bool,
}

pub struct FileData {
    /// The disk: created at the first sync.
    path: PathBuf,
    backing: Option<File>,
    /// Size as the running system sees it.
    len: u64,
    /// Size of the backing file.
    durable_len: u64,
    /// Backing bytes at or past this offset were cut off by a truncation
    /// since the last sync: they read as zeros, not as the disk's.
    stale_from: u64,
    /// Dirty pages: the running system's content of every page a pending
    /// write or truncation touched.
    pages: BTreeMap<u64, Box<[u8]>>,
    pending: Vec<Pending>,
}

impl FileData {
    /// The file as the disk has it (`path` may not exist: empty).
    pub fn open(path: PathBuf) -> io::Result<FileData> {
        let (backing, durable_len) = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => {
                let len = f.metadata()?.len();
                (Some(f), len)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, 0),
            Err(e) => return Err(e),
        };
        Ok(FileData {
            path,
            backing,
            len: durable_len,
            durable_len,
            stale_from: u64::MAX,
            pages: BTreeMap::new(),
            pending: Vec::new(),
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Bytes written or truncations made since the last sync.
    pub fn dirty(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Page `p` as the disk has it, zeros past its end or a truncation.
    fn disk_page(&self, p: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        let start = p * PAGE;
        let limit = self.durable_len.min(self.stale_from);
        if let Some(f) = &self.backing
            && start < limit
        {
            let n = (limit - start).min(PAGE) as usize;
            f.read_exact_at(&mut buf[..n], start)?;
        }
        Ok(())
    }

    fn page_mut(&mut self, p: u64) -> io::Result<&mut [u8]> {
        if !self.pages.contains_key(&p) {
            let mut buf = vec![0u8; PAGE as usize].into_boxed_slice();
            self.disk_page(p, &mut buf)?;
            self.pages.insert(p, buf);
        }
        Ok(self.pages.get_mut(&p).expect("just inserted"))
    }

    pub fn read(&self, offset: u64, size: u64) -> io::Result<Vec<u8>> {
        let end = (offset + size).min(self.len);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        let mut scratch = vec![0u8; PAGE as usize];
        while at < end {
            let p = at / PAGE;
            let from = (at % PAGE) as usize;
            let to = ((end - p * PAGE).min(PAGE)) as usize;
            match self.pages.get(&p) {
                Some(page) => out.extend_from_slice(&page[from..to]),
                None => {
                    self.disk_page(p, &mut scratch)?;
                    out.extend_from_slice(&scratch[from..to]);
                }
            }
            at = p * PAGE + to as u64;
        }
        Ok(out)
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let p = at / PAGE;
            let from = (at % PAGE) as usize;
            let n = (PAGE as usize - from).min(data.len() - done);
            self.page_mut(p)?[from..from + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        self.len = self.len.max(offset + data.len() as u64);
        self.pending.push(Pending::Write(offset, data.to_vec()));
        Ok(())
    }

    pub fn set_len(&mut self, len: u64) -> io::Result<()> {
        if len < self.len {
            self.stale_from = self.stale_from.min(len);
            let first_gone = len.div_ceil(PAGE);
            self.pages.retain(|p, _| *p < first_gone);
            if !len.is_multiple_of(PAGE) {
                // The page that keeps a head: its tail must read as zeros
                // if the file grows again.
                let keep = (len % PAGE) as usize;
                self.page_mut(len / PAGE)?[keep..].fill(0);
            }
        }
        self.len = len;
        self.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn backing(&mut self) -> io::Result<&File> {
        if self.backing.is_none() {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)?;
            self.backing = Some(f);
        }
        Ok(self.backing.as_ref().expect("just opened"))
    }

    fn apply(&mut self, pending: &[Pending]) -> io::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let f = self.backing()?;
        for p in pending {
            match p {
                Pending::Write(offset, data) => f.write_all_at(data, *offset)?,
                Pending::SetLen(len) => f.set_len(*len)?,
            }
        }
        Ok(())
    }

    /// Forgets the in-memory state: what the disk has is what is left.
    fn settle(&mut self) -> io::Result<()> {
        self.pending.clear();
        self.pages.clear();
        self.stale_from = u64::MAX;
        self.durable_len = match &self.backing {
            Some(f) => f.metadata()?.len(),
            None => 0,
        };
        self.len = self.durable_len;
        Ok(())
    }

    /// fsync / fdatasync: everything pending reaches the disk, in order.
    /// Returns how many bytes it made durable.
    pub fn sync(&mut self) -> io::Result<u64> {
        let pending = std::mem::take(&mut self.pending);
        self.apply(&pending)?;
        let len = self.len;
        self.settle()?;
        debug_assert_eq!(self.len, len);
        Ok(written(&pending))
    }

    /// Power cut: the pending changes are lost, except, with `tear`, a
    /// random prefix of them: whole changes, then (maybe) the head of the
    /// next write up to a 512-byte sector or 4096-byte page boundary of the
    /// file. A write that crosses no such boundary is never split.
    pub fn cut(&mut self, tear: Option<&mut StdRng>) -> io::Result<Cut> {
        let pending = std::mem::take(&mut self.pending);
        let total = written(&pending);
        let mut cut = Cut {
            dropped: total,
            ..Cut::default()
        };
        if let Some(rng) = tear
            && !pending.is_empty()
        {
            let whole = rng.random_range(0..pending.len());
            self.apply(&pending[..whole])?;
            let mut kept = written(&pending[..whole]);
            if let Pending::Write(offset, data) = &pending[whole] {
                let unit = if rng.random_bool(0.5) { SECTOR } else { PAGE };
                let end = offset + data.len() as u64;
                let first = (offset / unit + 1) * unit;
                if first < end {
                    let steps = (end - 1 - first) / unit + 1;
                    let at = first + rng.random_range(0..steps) * unit;
                    let head = &data[..(at - offset) as usize];
                    self.apply(&[Pending::Write(*offset, head.to_vec())])?;
                    kept += head.len() as u64;
                }
            }
            cut = Cut {
                dropped: total - kept,
                torn_kept: kept,
                torn: true,
            };
        }
        self.settle()?;
        Ok(cut)
    }
}

fn written(pending: &[Pending]) -> u64 {
    pending
        .iter()
        .map(|p| match p {
            Pending::Write(_, d) => d.len() as u64,
            Pending::SetLen(_) => 0,
        })
        .sum()
}
