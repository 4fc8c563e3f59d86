//! Every token number ever issued, in a few bits each: what keeps an id from
//! being issued twice once its tombstone has left memory.
//!
//! Owns the set and the search for a free number. The space is the 10^8
//! numbers of `TKN-NNNN-NNNN`, cut into chunks of 4,096 bits (512 bytes),
//! kept in a persistent map so that a clone of the [`State`](super::State)
//! stays O(1): adding a number copies one chunk, not the set. A full space
//! is 12.5 MB; a chunk exists only once a number in it was issued. It must
//! never forget a number: nothing removes one.

use std::sync::Arc;

use imbl::OrdMap;

/// Numbers below this exist (`TKN-0000-0000` to `TKN-9999-9999`).
pub const SPACE: u32 = 100_000_000;
const CHUNK_BITS: u32 = 4096;
const WORDS: usize = (CHUNK_BITS / 64) as usize;

type Chunk = [u64; WORDS];

#[derive(Clone, Default)]
pub struct IdSet {
    chunks: OrdMap<u32, Arc<Chunk>>,
    len: u64,
}

fn place(n: u32) -> (u32, usize, u64) {
    let bit = n % CHUNK_BITS;
    (n / CHUNK_BITS, (bit / 64) as usize, 1 << (bit % 64))
}

impl IdSet {
    /// How many numbers were issued.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, n: u32) -> bool {
        let (chunk, word, mask) = place(n);
        self.chunks.get(&chunk).is_some_and(|c| c[word] & mask != 0)
    }

    /// Adds `n`; false if it was there already.
    pub fn insert(&mut self, n: u32) -> bool {
        debug_assert!(n < SPACE, "a token number is below 10^8");
        let (chunk, word, mask) = place(n);
        let c = Arc::make_mut(
            self.chunks
                .entry(chunk)
                .or_insert_with(|| Arc::new([0; WORDS])),
        );
        let fresh = c[word] & mask == 0;
        c[word] |= mask;
        self.len += u64::from(fresh);
        fresh
    }

    /// The first number not in the set at or after `from` (wrapping around
    /// to 1 after the last), or `None` when every one is taken. At most one
    /// step per chunk of the space, whatever the set holds: creation stays
    /// fast as the space fills.
    pub fn free_from(&self, from: u32) -> Option<u32> {
        let from = from.clamp(1, SPACE - 1);
        self.free_between(from, SPACE)
            .or_else(|| self.free_between(1, from))
    }

    /// The first free number in `lo..hi`.
    fn free_between(&self, lo: u32, hi: u32) -> Option<u32> {
        let mut n = lo;
        while n < hi {
            let (chunk, first_word, _) = place(n);
            let Some(c) = self.chunks.get(&chunk) else {
                return Some(n);
            };
            let base = chunk * CHUNK_BITS;
            for (w, word) in c.iter().enumerate().skip(first_word) {
                // Bits below `n` in its own word count as taken.
                let below = if w == first_word {
                    (1u64 << (n % 64)) - 1
                } else {
                    0
                };
                let free = !(word | below);
                if free != 0 {
                    let found = base + w as u32 * 64 + free.trailing_zeros();
                    return (found < hi).then_some(found);
                }
            }
            n = base + CHUNK_BITS;
        }
        None
    }
}

#[cfg(test)]
impl IdSet {
    /// Every number in `0..below` (whole chunks: `below` rounded up to
    /// 4,096), built in one go: inserting tens of millions is slow.
    pub(crate) fn filled(below: u32) -> IdSet {
        let full = Arc::new([u64::MAX; WORDS]);
        let chunks = below.div_ceil(CHUNK_BITS);
        IdSet {
            chunks: (0..chunks).map(|c| (c, full.clone())).collect(),
            len: u64::from(chunks * CHUNK_BITS),
        }
    }
}

#[cfg(test)]
impl FromIterator<u32> for IdSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        let mut set = IdSet::default();
        for n in iter {
            set.insert(n);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_stay_once_added_and_clones_do_not_share_changes() {
        let mut a: IdSet = [1, 4095, 4096, SPACE - 1].into_iter().collect();
        assert_eq!(a.len(), 4);
        assert!(!a.insert(4096), "already there");
        let b = a.clone();
        a.insert(7);
        assert!(a.contains(7) && !b.contains(7));
        for n in [1, 4095, 4096, SPACE - 1] {
            assert!(a.contains(n) && b.contains(n));
        }
        assert!(!a.contains(2) && !a.contains(0));
        assert_eq!((a.len(), b.len()), (5, 4));
    }

    #[test]
    fn the_free_search_skips_taken_runs_and_wraps() {
        // A whole chunk and the start of the next taken.
        let mut s: IdSet = (1..4096 + 70).collect();
        assert_eq!(s.free_from(1), Some(4096 + 70));
        assert_eq!(s.free_from(5), Some(4096 + 70));
        assert_eq!(s.free_from(4096 + 71), Some(4096 + 71));
        // The end of the space taken: wraps to the first free from 1.
        for n in SPACE - 3..SPACE {
            s.insert(n);
        }
        assert_eq!(s.free_from(SPACE - 3), Some(4096 + 70));
        // A hole in the middle of a word.
        s.insert(4096 + 70);
        let mut t = s.clone();
        assert_eq!(t.free_from(100), Some(4096 + 71));
        for n in 4096 + 71..2 * 4096 {
            t.insert(n);
        }
        assert_eq!(t.free_from(100), Some(2 * 4096));
    }

    #[test]
    fn a_full_space_has_no_free_number() {
        let s = IdSet::filled(SPACE);
        assert_eq!(s.free_from(12345), None);
        let mut almost = s.clone();
        let (chunk, word, mask) = place(77_777_777);
        Arc::make_mut(almost.chunks.get_mut(&chunk).unwrap())[word] &= !mask;
        assert_eq!(almost.free_from(99_000_000), Some(77_777_777));
        assert_eq!(almost.free_from(1), Some(77_777_777));
    }
}
