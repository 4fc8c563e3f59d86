use super::pack_format::*;
use super::*;
use crate::domain::{Actor, AuditEntry};
use crate::store::record;
use std::time::{Duration, UNIX_EPOCH};

fn tombstone(number: u32, account: &str) -> Token {
    let mut t = Token {
        id: TokenId::from_number(number),
        account_id: AccountId::parse(account).unwrap(),
        name: format!("t{number}"),
        description: "d".repeat(200),
        icon: None,
        status: crate::domain::TokenStatus::Deleted,
        modules: Default::default(),
        revision: 2,
        audit: Default::default(),
        last_access_time: None,
        expire_time: None,
        replaces: None,
        replaced_by: None,
    };
    let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    t.audit.created = Some(AuditEntry {
        at,
        by: Actor("TKN-0000-0001".into()),
    });
    t.audit.deleted = Some(AuditEntry {
        at,
        by: Actor("TKN-0000-0001".into()),
    });
    t
}

fn tree() -> sled::Tree {
    let db = sled::Config::new().temporary(true).open().unwrap();
    db.open_tree("tokend").unwrap()
}

fn put_whole(tree: &sled::Tree, t: &Token) {
    tree.insert(
        tombstone_key(&t.id),
        record::encode::<record::TokenRecord>(t),
    )
    .unwrap();
}

fn shrunk(t: &Token) -> Old {
    Old {
        id: t.id.clone(),
        shrunk: record::encode_shrunk(t).unwrap(),
        in_place: false,
    }
}

/// The numbers pack value `v` under `key` holds.
fn read(key: &[u8], v: &[u8]) -> Result<Vec<u32>, Error> {
    Ok(entries(key, &unpack(v)?)?.iter().map(|e| e.0).collect())
}

fn numbers(ts: &[Token]) -> Vec<u32> {
    ts.iter().map(|t| t.id.number()).collect()
}

#[test]
fn packed_and_whole_tombstones_list_as_one_sequence_in_id_order() {
    let tree = tree();
    let (a, b) = ("ACC-0000-0001", "ACC-0000-0002");
    // Packed ones, and whole ones around and between them.
    let all: Vec<Token> = [3, 5, 9, 20_002, 20_007, 50_000]
        .into_iter()
        .enumerate()
        .map(|(i, n)| tombstone(n, if i % 2 == 0 { a } else { b }))
        .collect();
    for t in &all {
        put_whole(&tree, t);
    }
    let old = [&all[0], &all[2], &all[4]].map(shrunk).into();
    assert_eq!(pack(&tree, old).unwrap(), 3);
    assert_eq!(tree.scan_prefix(P_PACK).count(), 1);
    assert_eq!(tree.scan_prefix("d/").count(), 3);

    let every = list(&tree, None, None, 100).unwrap();
    assert_eq!(numbers(&every), numbers(&all));
    // Packed ones come back shrunk, whole ones whole.
    assert!(every[0].description.is_empty() && every[1].description.len() == 200);
    // Pages: after each id, at most two.
    let mut after = None;
    let mut paged = Vec::new();
    loop {
        let page = list(&tree, None, after.as_ref(), 2).unwrap();
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().id.clone());
        paged.extend(page);
    }
    assert_eq!(numbers(&paged), numbers(&all));
    let of_a = list(&tree, Some(&AccountId::parse(a).unwrap()), None, 100).unwrap();
    assert_eq!(numbers(&of_a), vec![3, 9, 20_007]);
    // By id, from either place.
    for t in &all {
        assert_eq!(get(&tree, &t.id).unwrap().unwrap().id, t.id);
    }
    assert!(get(&tree, &TokenId::from_number(4)).unwrap().is_none());
}

#[test]
fn a_tombstone_in_both_places_counts_once_and_a_pack_merges_new_entries() {
    let tree = tree();
    let ts: Vec<Token> = [10, 20, 30].map(|n| tombstone(n, "ACC-0000-0001")).to_vec();
    for t in &ts {
        put_whole(&tree, t);
    }
    pack(&tree, vec![shrunk(&ts[0])]).unwrap();
    pack(&tree, vec![shrunk(&ts[2])]).unwrap();
    // A replay at open may write one whole again.
    put_whole(&tree, &ts[0]);
    let every = list(&tree, None, None, 100).unwrap();
    assert_eq!(numbers(&every), vec![10, 20, 30]);
    assert_eq!(every[0].description.len(), 200, "d/ wins");
    let pack_value = tree.get(pack_key(10)).unwrap().unwrap();
    assert_eq!(read(&pack_key(10), &pack_value).unwrap(), vec![10, 30]);
}

#[test]
fn a_tombstone_format_4_shrank_in_place_reads_and_is_packed() {
    let tree = tree();
    let t = tombstone(42, "ACC-0000-0001");
    // Format 4's shape: `S` + the shrunk record, under `d/`.
    let value = [&b"S"[..], &record::encode_shrunk(&t).unwrap()].concat();
    tree.insert(tombstone_key(&t.id), value).unwrap();
    let read = get(&tree, &t.id).unwrap().unwrap();
    assert_eq!((read.name.as_str(), read.description.as_str()), ("t42", ""));
    let old = Old {
        in_place: true,
        ..shrunk(&read)
    };
    assert_eq!(pack(&tree, vec![old]).unwrap(), 1);
    assert!(tree.get(tombstone_key(&t.id)).unwrap().is_none());
    assert_eq!(get(&tree, &t.id).unwrap().unwrap(), read);
    assert_eq!(numbers(&list(&tree, None, None, 10).unwrap()), vec![42]);
}

#[test]
fn a_damaged_pack_is_an_error_and_is_never_rewritten() {
    let tree = tree();
    let t = tombstone(7, "ACC-0000-0001");
    put_whole(&tree, &t);
    let damaged = &b"P\x00\x00\x00\x07\x00\xffshort"[..];
    tree.insert(pack_key(7), damaged).unwrap();
    assert!(list(&tree, None, None, 10).is_err());
    // Its tombstone is shrunk in place instead, the pack left as it was.
    assert_eq!(pack(&tree, vec![shrunk(&t)]).unwrap(), 1);
    assert_eq!(&*tree.get(pack_key(7)).unwrap().unwrap(), damaged);
    let in_place = tree.get(tombstone_key(&t.id)).unwrap().unwrap();
    assert_eq!(in_place[0], b'S');
    let entry = |n: u32| [&n.to_be_bytes()[..], &[0, 0]].concat();
    let z = |raw: &[u8]| {
        [
            &b"Z"[..],
            &miniz_oxide::deflate::compress_to_vec_zlib(raw, 1),
        ]
        .concat()
    };
    let mut flipped = z(&[&entry(1)[..], &entry(2)].concat());
    *flipped.last_mut().unwrap() ^= 1;
    for (key, bad) in [
        (pack_key(0), b"".to_vec()),
        (pack_key(0), b"X".to_vec()),
        (pack_key(0), b"P\x00\x00".to_vec()),
        (pack_key(0), [&b"P"[..], &entry(2), &entry(1)].concat()),
        (pack_key(0), [&b"P"[..], &entry(TOKEN_ID_SPACE)].concat()),
        (pack_key(5), [&b"P"[..], &entry(1)].concat()),
        (pack_key(TOKEN_ID_SPACE), b"P".to_vec()),
        (b"p/\x00".to_vec(), b"P".to_vec()),
        // Compressed: not zlib, cut short, a byte changed (its
        // checksum), bad entries inside, or inflating past any pack
        // tokend writes (a few KB that would take 2 MB).
        (pack_key(0), b"Zshort".to_vec()),
        (pack_key(0), flipped),
        (
            pack_key(0),
            z(&[&entry(1)[..], &entry(2)].concat())[..8].to_vec(),
        ),
        (pack_key(0), z(&[&entry(2)[..], &entry(1)].concat())),
        (pack_key(0), z(&vec![0; 2 * MAX_UNPACKED])),
    ] {
        assert!(read(&key, &bad).is_err(), "{key:?} {bad:?}");
    }
    assert!(read(&pack_key(0), b"P").unwrap().is_empty());
    assert!(read(&pack_key(0), &z(b"")).unwrap().is_empty());
    assert_eq!(
        read(&pack_key(0), &z(&[&entry(1)[..], &entry(2)].concat())).unwrap(),
        vec![1, 2]
    );
}

#[test]
fn a_format_5_pack_reads_and_is_compressed_when_next_written() {
    let tree = tree();
    let ts: Vec<Token> = [100, 101, 102]
        .map(|n| tombstone(n, "ACC-0000-0001"))
        .to_vec();
    // Format 5's shape: `P` and the entries as they are.
    let mut v5 = b"P".to_vec();
    for t in &ts[..2] {
        let r = record::encode_shrunk(t).unwrap();
        v5.extend_from_slice(&t.id.number().to_be_bytes());
        v5.extend_from_slice(&(r.len() as u16).to_be_bytes());
        v5.extend_from_slice(&r);
    }
    tree.insert(pack_key(100), v5.clone()).unwrap();
    assert_eq!(get(&tree, &ts[1].id).unwrap().unwrap().name, "t101");
    assert_eq!(
        numbers(&list(&tree, None, None, 10).unwrap()),
        vec![100, 101]
    );
    put_whole(&tree, &ts[2]);
    assert_eq!(pack(&tree, vec![shrunk(&ts[2])]).unwrap(), 1);
    let rewritten = tree.get(pack_key(100)).unwrap().unwrap();
    assert_eq!(rewritten[0], b'Z');
    assert!(rewritten.len() < v5.len(), "smaller with a third entry");
    assert_eq!(
        read(&pack_key(100), &rewritten).unwrap(),
        vec![100, 101, 102]
    );
    for t in &ts {
        let got = get(&tree, &t.id).unwrap().unwrap();
        assert_eq!(
            (got.name.as_str(), got.audit.deleted),
            (t.name.as_str(), t.audit.deleted.clone())
        );
    }
}

#[test]
fn a_pack_key_that_does_not_read_stops_only_its_own_tombstone() {
    let tree = tree();
    let ts: Vec<Token> = [5, 9].map(|n| tombstone(n, "ACC-0000-0001")).to_vec();
    for t in &ts {
        put_whole(&tree, t);
    }
    // A key beyond the id space, the one `pack_of(5)` finds.
    tree.insert(b"p/\x00\x00\x00", &b"P"[..]).unwrap();
    assert_eq!(pack(&tree, ts.iter().map(shrunk).collect()).unwrap(), 2);
    for t in &ts {
        assert_eq!(tree.get(tombstone_key(&t.id)).unwrap().unwrap()[0], b'S');
    }
}

#[test]
fn packs_split_past_their_size_and_move_down_for_lower_numbers() {
    let tree = tree();
    let all: Vec<Token> = (1_000..3_000)
        .map(|n| tombstone(n, "ACC-0000-0001"))
        .collect();
    for t in &all {
        put_whole(&tree, t);
    }
    // In slices, as the shrinker packs them.
    for slice in all.chunks(300) {
        assert_eq!(
            pack(&tree, slice.iter().map(shrunk).collect()).unwrap(),
            slice.len() as u64
        );
    }
    assert_eq!(tree.scan_prefix("d/").count(), 0);
    let packs: Vec<_> = tree.scan_prefix(P_PACK).map(|kv| kv.unwrap()).collect();
    assert!(packs.len() > 1, "split");
    // Split by their size before compression; compressed, a fraction.
    let sizes: Vec<(usize, usize)> = packs
        .iter()
        .map(|(_, v)| (unpack(v).unwrap().len(), v.len()))
        .collect();
    assert!(
        sizes.iter().all(|&(raw, stored)| {
            (MAX_PACK_BYTES / 4..=MAX_PACK_BYTES).contains(&raw) && stored * 3 < raw
        }),
        "{sizes:?}"
    );
    assert_eq!(pack_first(&packs[0].0).unwrap(), 1_000);
    // One below every pack: the first pack moves down to it.
    let low = tombstone(10, "ACC-0000-0001");
    put_whole(&tree, &low);
    assert_eq!(pack(&tree, vec![shrunk(&low)]).unwrap(), 1);
    assert!(tree.get(pack_key(1_000)).unwrap().is_none());
    assert!(tree.get(pack_key(10)).unwrap().is_some());
    let every = list(&tree, None, None, 5_000).unwrap();
    let want: Vec<u32> = std::iter::once(10).chain(1_000..3_000).collect();
    assert_eq!(numbers(&every), want);
    for n in [10, 1_000, 1_999, 2_999] {
        assert!(
            get(&tree, &TokenId::from_number(n)).unwrap().is_some(),
            "{n}"
        );
    }
    for n in [11, 999, 3_000] {
        assert!(
            get(&tree, &TokenId::from_number(n)).unwrap().is_none(),
            "{n}"
        );
    }
    // Pages from inside a pack.
    let page = list(&tree, None, Some(&TokenId::from_number(1_500)), 3).unwrap();
    assert_eq!(numbers(&page), vec![1_501, 1_502, 1_503]);
}

#[test]
fn many_packs_worth_in_one_pass_split_evenly_to_the_last() {
    let tree = tree();
    let many: Vec<Old> = (10_000..70_000)
        .map(|n| shrunk(&tombstone(n, "ACC-0000-0001")))
        .collect();
    assert_eq!(pack(&tree, many).unwrap(), 60_000);
    let raw: Vec<usize> = tree
        .scan_prefix(P_PACK)
        .map(|kv| unpack(&kv.unwrap().1).unwrap().len())
        .collect();
    assert!(raw.len() > 50, "{} packs", raw.len());
    assert!(
        raw.iter()
            .all(|r| (MAX_PACK_BYTES / 2 - 1_000..=MAX_PACK_BYTES).contains(r)),
        "{raw:?}"
    );
    assert_eq!(list(&tree, None, None, 100_000).unwrap().len(), 60_000);
}
