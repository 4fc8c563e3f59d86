use super::*;
use std::io::Write;

fn entry(n: u8) -> Entry {
    Entry {
        secret: match n % 3 {
            0 => SecretOp::Keep,
            1 => SecretOp::Set([n; 32]),
            _ => SecretOp::Erase,
        },
        event: vec![n; n as usize * 7 + 1],
    }
}

fn same(a: &[Entry], b: &[Entry]) -> bool {
    let key = |e: &Entry| {
        let op = match &e.secret {
            SecretOp::Keep => (0, [0; 32]),
            SecretOp::Set(h) => (1, *h),
            SecretOp::Erase => (2, [0; 32]),
        };
        (op, e.event.clone())
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
}

fn append(wal: &mut Wal, e: Entry) {
    wal.append(&encode_payload([(&e.secret, &e.event[..])]))
        .unwrap();
}

/// Where open keeps aside the torn bytes of the first segment in `dir`.
fn torn(dir: &Path) -> PathBuf {
    dir.join(format!("{}.torn", segment_name(0)))
}

/// Writes batches 1..=n, one entry each plus batch 2 with three, and
/// cuts the segment back to its records, as on a file system without
/// preallocation (`a_preallocated_segment_ends_where_its_zeros_start`
/// keeps the zeros).
fn written(dir: &Path, n: u8) -> PathBuf {
    let path = written_preallocated(dir, n);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(records_len(&std::fs::read(&path).unwrap()))
        .unwrap();
    path
}

/// Where each of a segment's records starts, and where the last ends.
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = vec![0];
    let mut at = 0;
    while let Ok((_, size)) = check_record(&bytes[at..]) {
        at += size;
        starts.push(at);
    }
    starts
}

/// Where a segment's zeros start.
fn records_len(bytes: &[u8]) -> u64 {
    *record_starts(bytes).last().unwrap() as u64
}

fn written_preallocated(dir: &Path, n: u8) -> PathBuf {
    let (mut wal, old) = Wal::open(dir).unwrap();
    assert!(old.is_empty());
    for i in 1..=n {
        let batch: Vec<Entry> = if i == 2 {
            (20..23).map(entry).collect()
        } else {
            vec![entry(i)]
        };
        wal.append(&encode_payload(
            batch.iter().map(|e| (&e.secret, &e.event[..])),
        ))
        .unwrap();
    }
    dir.join(segment_name(0))
}

#[test]
fn batches_read_back_in_order_across_segments() {
    let tmp = tempfile::tempdir().unwrap();
    written(tmp.path(), 3);
    let (mut wal, back) = Wal::open(tmp.path()).unwrap();
    assert_eq!(back.len(), 3);
    assert!(same(&back[1], &(20..23).map(entry).collect::<Vec<_>>()));
    assert!(same(&back[2], &[entry(3)]));
    append(&mut wal, entry(9));
    let closed_below = wal.rotate().unwrap();
    append(&mut wal, entry(10));
    drop(wal);
    let (_, back) = Wal::open(tmp.path()).unwrap();
    assert_eq!(back.len(), 5);
    assert!(same(&back[4], &[entry(10)]));

    Wal::remove_before(tmp.path(), closed_below).unwrap();
    let (_, back) = Wal::open(tmp.path()).unwrap();
    assert_eq!(back.len(), 1, "only the segment after the rotation");
}

#[test]
fn a_torn_last_record_is_cut_off_and_the_rest_kept() {
    for cut in [1, HEADER - 1, HEADER + 3] {
        let tmp = tempfile::tempdir().unwrap();
        let path = written(tmp.path(), 3);
        let full = std::fs::metadata(&path).unwrap().len();
        // The last record (batch 3's) loses its end.
        let starts = record_starts(&std::fs::read(&path).unwrap());
        let last = (starts[3] - starts[2]) as u64;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(full - last + cut as u64)
            .unwrap();
        let (_, back) = Wal::open(tmp.path()).unwrap();
        assert_eq!(back.len(), 2, "cut at {cut}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), full - last);
    }
}

#[test]
fn a_preallocated_segment_ends_where_its_zeros_start() {
    let tmp = tempfile::tempdir().unwrap();
    let path = written_preallocated(tmp.path(), 3);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, PREALLOCATE, "allocated ahead");
    let end = records_len(&bytes) as usize;
    let (mut wal, back) = Wal::open(tmp.path()).unwrap();
    assert_eq!(back.len(), 3);
    assert!(!torn(tmp.path()).exists(), "zeros are not a torn write");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing cut");
    // Appends go where the records end, not after the zeros.
    append(&mut wal, entry(7));
    let next = std::fs::read(tmp.path().join(segment_name(1))).unwrap();
    assert!(same(
        &parse_payload(check_record(&next).unwrap().0).unwrap(),
        &[entry(7)]
    ));
    drop(wal);
    // A record cut short over the zeros (the part of an unanswered
    // write that reached the disk) is a torn write.
    let tmp = tempfile::tempdir().unwrap();
    let path = written_preallocated(tmp.path(), 3);
    let mut damaged = bytes.clone();
    damaged[end - 3..end].fill(0);
    std::fs::write(&path, &damaged).unwrap();
    let (_, back) = Wal::open(tmp.path()).unwrap();
    assert_eq!(back.len(), 2, "batch 3 dropped");
    assert!(torn(tmp.path()).exists());
}

#[test]
fn a_last_record_that_fails_its_checksum_is_a_torn_write_and_zeros_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let path = written(tmp.path(), 3);
    let mut bytes = std::fs::read(&path).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(Wal::open(tmp.path()).unwrap().1.len(), 2);

    let tmp = tempfile::tempdir().unwrap();
    let path = written(tmp.path(), 3);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&[0; 4096]).unwrap();
    assert_eq!(Wal::open(tmp.path()).unwrap().1.len(), 3);
    assert!(!torn(tmp.path()).exists());
}

#[test]
fn a_batch_is_compressed_when_that_makes_it_smaller() {
    // Batch 2's three entries compress; an entry of 32 random bytes
    // and one more does not, and is kept as it is.
    let tmp = tempfile::tempdir().unwrap();
    let path = written(tmp.path(), 3);
    let bytes = std::fs::read(&path).unwrap();
    let starts = record_starts(&bytes);
    let (payload, _) = check_record(&bytes[starts[1]..]).unwrap();
    assert_eq!(payload[0], COMPRESSED);
    let batch: Vec<Entry> = (20..23).map(entry).collect();
    let plain = encode_payload(batch.iter().map(|e| (&e.secret, &e.event[..])));
    assert!(
        payload.len() < plain.len() / 2,
        "{} of {}",
        payload.len(),
        plain.len()
    );

    let mut hash = [0u8; 32];
    getrandom::fill(&mut hash).unwrap();
    let odd = SecretOp::Set(hash);
    let plain = encode_payload([(&odd, &[7u8][..])]);
    let record = frame(&plain);
    assert_eq!(&record[HEADER..], &plain[..], "kept as it is");
    assert!(same(
        &parse_payload(&record[HEADER..]).unwrap(),
        &[Entry {
            secret: odd,
            event: vec![7]
        }]
    ));
}

#[test]
fn a_segment_of_uncompressed_records_reads_back_beside_compressed_ones() {
    // Format 8 wrote every record uncompressed: a segment it left, with
    // compressed records appended after (a crash, an upgrade, another
    // crash) reads back whole, in order.
    let tmp = tempfile::tempdir().unwrap();
    let old: Vec<Entry> = (30..33).map(entry).collect();
    let payload = encode_payload(old.iter().map(|e| (&e.secret, &e.event[..])));
    let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    std::fs::write(tmp.path().join(segment_name(0)), &bytes).unwrap();
    let (mut wal, back) = Wal::open(tmp.path()).unwrap();
    assert_eq!(back.len(), 1);
    assert!(same(&back[0], &old));
    append(&mut wal, entry(40));
    drop(wal);
    let (_, back) = Wal::open(tmp.path()).unwrap();
    assert_eq!(back.len(), 2);
    assert!(same(&back[0], &old) && same(&back[1], &[entry(40)]));
}

#[test]
fn a_checked_record_that_does_not_inflate_is_refused() {
    // Its checksum holds (the damage was written as it is), so it is no
    // torn write: corruption, refused, nothing cut.
    let tmp = tempfile::tempdir().unwrap();
    let path = written(tmp.path(), 3);
    let mut bytes = std::fs::read(&path).unwrap();
    let second = record_starts(&bytes)[1];
    let payload_at = second + HEADER;
    let len = u32::from_le_bytes(bytes[second..second + 4].try_into().unwrap()) as usize;
    assert_eq!(bytes[payload_at], COMPRESSED);
    // It claims one byte more than it inflates to.
    let claimed = u32::from_le_bytes(bytes[payload_at + 1..payload_at + 5].try_into().unwrap());
    bytes[payload_at + 1..payload_at + 5].copy_from_slice(&(claimed + 1).to_le_bytes());
    let crc = crc32fast::hash(&bytes[payload_at..payload_at + len]);
    bytes[second + 4..second + 8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let e = Wal::open(tmp.path()).err().expect("refused");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("does not inflate"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing cut");
}

#[test]
fn damage_followed_by_intact_records_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = written(tmp.path(), 3);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[HEADER + 2] ^= 0xff; // inside batch 1's payload
    std::fs::write(&path, &bytes).unwrap();
    let e = Wal::open(tmp.path()).err().expect("refused");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("checksum"), "{e}");
    // Nothing was cut: the evidence stays for an operator to look at.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn a_damaged_length_with_intact_records_after_it_is_refused() {
    // A flipped bit in batch 2's length makes it claim to run past the
    // end of the file; batch 3 after it is intact, so this cannot be a
    // torn last write.
    let tmp = tempfile::tempdir().unwrap();
    let path = written(tmp.path(), 3);
    let mut bytes = std::fs::read(&path).unwrap();
    let second = record_starts(&bytes)[1];
    bytes[second + 2] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let e = Wal::open(tmp.path()).err().expect("refused");
    assert!(e.to_string().contains("cut short"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing cut");
}

#[test]
fn a_torn_header_over_garbage_is_a_torn_write() {
    // The header's sector never reached the disk (zeros) while a later
    // one of the same unanswered write did.
    let tmp = tempfile::tempdir().unwrap();
    let path = written(tmp.path(), 2);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&[0; 8]).unwrap();
    f.write_all(&[0x5a; 100]).unwrap();
    drop(f);
    assert_eq!(Wal::open(tmp.path()).unwrap().1.len(), 2);
    let aside = std::fs::read(torn(tmp.path())).unwrap();
    assert_eq!(aside.len(), 108, "the dropped bytes are kept aside");
}

#[test]
fn a_torn_record_in_a_segment_that_is_not_the_last_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = written(tmp.path(), 3);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 2)
        .unwrap();
    // A later segment exists: the cut record was followed by more log.
    let (mut wal, _) = Wal::open(tmp.path()).unwrap();
    append(&mut wal, entry(5));
    drop(wal);
    // Re-tear the first segment (open repaired it) behind the new one.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&[9, 0, 0, 0, 1])
        .unwrap();
    assert!(Wal::open(tmp.path()).is_err());
}

/// The sequence numbers of the segments in `dir`.
fn sequences(dir: &Path) -> Vec<u64> {
    segments(dir).unwrap().into_iter().map(|(s, _)| s).collect()
}

#[test]
fn the_next_segment_is_made_ahead_and_the_rotation_takes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(tmp.path()).unwrap();
    // Open made the first one ahead.
    assert_eq!(sequences(tmp.path()), [0, 1]);
    // Taken, not made again (which `create_new` would refuse).
    assert_eq!(wal.rotate().unwrap(), 1);
    assert_eq!(sequences(tmp.path()), [0, 1]);
    // The applier makes the one after the current, once however often it
    // is asked; the rotation takes it, and appends go there.
    let spare = wal.spare();
    spare.prepare().unwrap();
    spare.prepare().unwrap();
    assert_eq!(sequences(tmp.path()), [0, 1, 2]);
    assert_eq!(wal.rotate().unwrap(), 2);
    append(&mut wal, entry(4));
    let bytes = std::fs::read(tmp.path().join(segment_name(2))).unwrap();
    assert!(same(
        &parse_payload(check_record(&bytes).unwrap().0).unwrap(),
        &[entry(4)]
    ));
    // None made (no checkpoint ran in between): the rotation makes its own.
    assert_eq!(wal.rotate().unwrap(), 3);
    assert_eq!(sequences(tmp.path()), [0, 1, 2, 3]);
    // A prepare after that makes the one after the current, not 3 again.
    spare.prepare().unwrap();
    assert_eq!(sequences(tmp.path()), [0, 1, 2, 3, 4]);
}

#[test]
fn a_torn_write_before_the_segment_made_ahead_is_cut_and_that_segment_written_next() {
    let tmp = tempfile::tempdir().unwrap();
    let path = written(tmp.path(), 3);
    assert_eq!(sequences(tmp.path()), [0, 1], "1 made ahead, all zeros");
    let bytes = std::fs::read(&path).unwrap();
    let cut = record_starts(&bytes)[2] + HEADER + 1;
    std::fs::write(&path, &bytes[..cut]).unwrap();
    // Segment 0 is the last that holds anything: its torn batch 3 is cut
    // off, not refused as damage followed by more log.
    let (mut wal, back) = Wal::open(tmp.path()).unwrap();
    assert_eq!(back.len(), 2);
    // Appends go to the zeros made ahead; the next is made ahead of them.
    append(&mut wal, entry(8));
    assert_eq!(sequences(tmp.path()), [0, 1, 2]);
    let next = std::fs::read(tmp.path().join(segment_name(1))).unwrap();
    assert!(same(
        &parse_payload(check_record(&next).unwrap().0).unwrap(),
        &[entry(8)]
    ));
    drop(wal);
    let (_, back) = Wal::open(tmp.path()).unwrap();
    assert_eq!(back.len(), 3);
}

#[test]
fn bytes_kept_aside_are_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let segment = tmp.path().join(segment_name(0));
    let first = keep_aside(&segment, b"first").unwrap();
    let second = keep_aside(&segment, b"second").unwrap();
    assert_eq!(first, torn(tmp.path()));
    assert_eq!(
        second,
        tmp.path().join(format!("{}.torn.1", segment_name(0)))
    );
    assert_eq!(std::fs::read(first).unwrap(), b"first");
    assert_eq!(std::fs::read(second).unwrap(), b"second");
}
