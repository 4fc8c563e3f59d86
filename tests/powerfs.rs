//! The power-cut file system itself (tests/common/powerfs): what a cut keeps
//! and drops, through the real kernel mount, with std's file calls.
//!
//! Owns the proof that the file system models durability as documented:
//! unsynced writes and directory changes are lost, synced ones kept, a torn
//! write keeps a sector- or page-aligned prefix, and before a cut every read
//! (and mmap) sees the writes. It must never hold a file open across a cut.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::powerfs::PowerFs;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

fn write_file(path: &Path, bytes: &[u8], sync: bool) {
    let mut f = File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    if sync {
        f.sync_data().unwrap();
    }
}

#[test]
fn a_write_is_kept_by_a_cut_only_once_fsynced() {
    let mut fs = PowerFs::mount();
    let (synced, unsynced) = (fs.path().join("synced"), fs.path().join("unsynced"));
    write_file(&synced, b"durable", true);
    write_file(&unsynced, b"volatile", false);
    sync_dir(fs.path());
    // Before the cut, as in a page cache: the unsynced bytes are read back.
    assert_eq!(fs::read(&unsynced).unwrap(), b"volatile");
    // Appended and overwritten after the sync: lost at the cut.
    let f = OpenOptions::new().write(true).open(&synced).unwrap();
    f.write_all_at(b"DUR", 0).unwrap();
    f.write_all_at(b" and more", 7).unwrap();
    drop(f);
    assert_eq!(fs::read(&synced).unwrap(), b"DURable and more");

    let dropped = fs.cut(None);
    assert_eq!(fs::read(&synced).unwrap(), b"durable");
    assert_eq!(
        fs::read(&unsynced).unwrap(),
        b"",
        "its name was synced, its bytes not"
    );
    assert_eq!(dropped.dropped_bytes, 8 + 3 + 9);
    assert_eq!(dropped.dropped_entries, 0);
}

#[test]
fn creates_renames_and_unlinks_are_undone_by_a_cut_unless_the_directory_was_fsynced() {
    let mut fs = PowerFs::mount();
    let root = fs.path().to_path_buf();
    let sub = root.join("sub");
    fs::create_dir(&sub).unwrap();
    sync_dir(&root);
    write_file(&sub.join("a.tmp"), b"a", true);
    write_file(&sub.join("gone"), b"g", true);
    sync_dir(&sub);
    // Not made durable: a rename, an unlink, a create (whose bytes were
    // synced: fsync of a file does not make its name durable).
    fs::rename(sub.join("a.tmp"), sub.join("a")).unwrap();
    fs::remove_file(sub.join("gone")).unwrap();
    write_file(&sub.join("new"), b"n", true);
    fs::create_dir(root.join("newdir")).unwrap();
    assert!(sub.join("a").exists() && !sub.join("gone").exists());

    let dropped = fs.cut(None);
    let mut names: Vec<_> = fs::read_dir(&sub)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a.tmp", "gone"]);
    assert_eq!(fs::read(sub.join("gone")).unwrap(), b"g");
    assert!(!root.join("newdir").exists());
    // a.tmp → a (2 names), gone, new, newdir.
    assert_eq!(dropped.dropped_entries, 5);

    // Made durable this time.
    fs::rename(sub.join("a.tmp"), sub.join("a")).unwrap();
    sync_dir(&sub);
    fs.cut(None);
    assert_eq!(fs::read(sub.join("a")).unwrap(), b"a");
    assert!(!sub.join("a.tmp").exists());
}

#[test]
fn a_truncation_reads_as_zeros_until_synced_and_is_undone_by_a_cut() {
    let mut fs = PowerFs::mount();
    let path = fs.path().join("f");
    write_file(&path, &[7u8; 10_000], true);
    sync_dir(fs.path());
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(100).unwrap();
    f.set_len(9_000).unwrap();
    drop(f);
    let now = fs::read(&path).unwrap();
    assert_eq!(now.len(), 9_000);
    assert!(now[..100].iter().all(|b| *b == 7) && now[100..].iter().all(|b| *b == 0));
    fs.cut(None);
    assert_eq!(fs::read(&path).unwrap(), vec![7u8; 10_000]);
}

/// fallocate(2) (the write-ahead log allocates its segments ahead) grows the
/// file with zeros, durable only once fsynced.
#[test]
fn an_allocation_reads_as_zeros_and_is_undone_by_a_cut_unless_fsynced() {
    use rustix::fs::{FallocateFlags, fallocate};
    let mut fs = PowerFs::mount();
    let path = fs.path().join("f");
    write_file(&path, &[7u8; 10], true);
    sync_dir(fs.path());
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    fallocate(&f, FallocateFlags::empty(), 0, 1 << 20).unwrap();
    drop(f);
    let now = fs::read(&path).unwrap();
    assert_eq!(now.len(), 1 << 20);
    assert!(now[10..].iter().all(|b| *b == 0));
    fs.cut(None);
    assert_eq!(fs::read(&path).unwrap(), vec![7u8; 10]);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    fallocate(&f, FallocateFlags::empty(), 0, 1 << 20).unwrap();
    f.sync_data().unwrap();
    drop(f);
    fs.cut(None);
    assert_eq!(fs::metadata(&path).unwrap().len(), 1 << 20);
}

/// Fills the second page of `path` with `byte` through a shared mapping;
/// with `msync`, msync(MS_SYNC), which the kernel passes on as an fsync.
fn write_mapped(path: &Path, byte: u8, msync: bool) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: a fresh shared mapping of a file this test owns, unmapped
    // before the file is closed.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let bytes = std::slice::from_raw_parts_mut(p as *mut u8, 8192);
        assert_eq!(bytes[0], 1, "mapped reads see the file");
        bytes[4096..].fill(byte);
        if msync {
            assert_eq!(libc::msync(p, 8192, libc::MS_SYNC), 0);
        }
        assert_eq!(libc::munmap(p, 8192), 0);
    }
}

/// The second page of `path` is all `byte`, the first all 1.
fn pages_are(path: &Path, byte: u8) -> bool {
    let b = fs::read(path).unwrap();
    b.len() == 8192 && b[..4096].iter().all(|x| *x == 1) && b[4096..].iter().all(|x| *x == byte)
}

#[test]
fn mmap_writes_go_through_the_page_cache_and_are_durable_after_msync() {
    let mut fs = PowerFs::mount();
    let path = fs.path().join("m");
    write_file(&path, &[1u8; 8192], true);
    sync_dir(fs.path());
    // Written back at close: seen, not durable.
    write_mapped(&path, 2, false);
    assert!(pages_are(&path, 2));
    fs.cut(None);
    assert!(
        pages_are(&path, 1),
        "an unsynced mapped write survived the cut"
    );
    write_mapped(&path, 3, true);
    fs.cut(None);
    assert!(
        pages_are(&path, 3),
        "msync(MS_SYNC) did not make it durable"
    );
}

#[test]
fn a_torn_write_keeps_a_sector_aligned_prefix_of_what_was_written() {
    let mut fs = PowerFs::mount();
    let mut rng = StdRng::seed_from_u64(7);
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8 + 1).collect();
    let mut torn = 0;
    for round in 0..40 {
        let path = fs.path().join(format!("t{round}"));
        write_file(&path, b"", true);
        sync_dir(fs.path());
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        // One write from offset 100: a cut inside it lands on a boundary
        // of the file, not of the write.
        f.write_all_at(&data, 100).unwrap();
        drop(f);
        let dropped = fs.cut(Some(&mut rng));
        let kept = fs::read(&path).unwrap();
        if kept.is_empty() {
            continue;
        }
        torn += 1;
        assert_eq!(kept.len() % 512, 0, "torn at {}", kept.len());
        assert!(kept.len() < 100 + data.len());
        assert_eq!(&kept[..100], &[0u8; 100]);
        assert_eq!(&kept[100..], &data[..kept.len() - 100]);
        assert_eq!(dropped.torn_bytes, kept.len() as u64 - 100);
        assert_eq!(dropped.torn_files, 1);
    }
    assert!(torn >= 5, "only {torn} of 40 cuts tore the write");
}
