//! The snapshot file: the whole store at one revision, for backups, restores
//! and moving between backends (`tokend snapshot save|restore`).
//!
//! Owns writing a [`State`] as a snapshot file and reading one back,
//! checked, as a [`Snapshot`]. It must never write a plain secret (the
//! secret index holds SHA-256 hashes, as the stores do), and never hand out
//! a [`Snapshot`] from bytes whose checksum, version or structure is wrong:
//! a restore trusts what this module returns.
//!
//! Format version 1, UTF-8 text, one item per line (`\n`):
//!
//! ```text
//! TOKEND-SNAPSHOT 1
//! {"format":1,"revision":R,"accounts":N,"tokens":M,"secrets":K,"page_key":"<64 hex>","events":"none"}
//! a {…AccountRecord…}          × N, in id order
//! t {…TokenRecord…}            × M, in id order, tombstones included
//! s <64 hex sha256> <TKN-id>   × K, the secret index: live tokens only
//! sha256 <64 hex>
//! ```
//!
//! Records are the JSON shapes of `record.rs`, the storage format of both
//! backends. The last line is the SHA-256 of every byte before it: a flipped
//! byte or a cut-off file fails it. The snapshot keeps no event history,
//! and a store restored from it starts its log [`RESTORE_GAP`] revisions
//! after R ([`Snapshot::restored_head`]): a watcher resuming from R or
//! earlier, or from a revision the original store wrote after the snapshot,
//! gets OUT_OF_RANGE (compacted), never a replay that would be wrong, nor
//! the restored store's own changes under numbers it already holds. Last-access times
//! are not kept either.

use std::collections::HashSet;
use std::io::{self, Write};

use base16ct::lower::encode_string as hex;
use itertools::Itertools;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::record::{self, AccountRecord, TokenRecord};
use crate::domain::{Account, Revision, Token, TokenId};
use crate::secret::SecretHash;
use crate::state::State;

/// How many revisions a restored store skips past the snapshot's. The store
/// the snapshot came from may have gone on writing after it, and its
/// watchers and caches hold those revisions: had the restored store
/// numbered its own changes from R + 1, one resuming from R + 5 would skip
/// the restored store's first four changes and take its fifth for the
/// change it was waiting for. Past the gap, every such revision is below
/// the restored store's oldest, so resuming from it is refused as
/// compacted, and the caller re-syncs (etcd's `snapshot restore
/// --bump-revision --mark-compacted`, made the default). A trillion: more
/// than the original could write after the snapshot (a year and a half at
/// the benchmark's top rate), and room for millions of restores in an
/// `int64`.
pub const RESTORE_GAP: Revision = 1_000_000_000_000;

/// The highest revision a snapshot may hold: its restore, [`RESTORE_GAP`]
/// later, still fits an `int64`.
const MAX_REVISION: Revision = i64::MAX as Revision - RESTORE_GAP;

/// Records reserved up front at most, whatever a header claims.
const PREALLOCATE: usize = 1 << 16;
const MAGIC: &str = "TOKEND-SNAPSHOT ";
pub const FORMAT_VERSION: u32 = 1;
const TRAILER: &str = "sha256 ";

/// The second line of the file.
#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    revision: Revision,
    accounts: usize,
    tokens: usize,
    secrets: usize,
    page_key: String,
    /// Always "none": documents in the file itself that no history is kept.
    events: String,
}

/// A checked snapshot, ready to restore.
pub struct Snapshot {
    pub revision: Revision,
    pub page_key: [u8; 32],
    pub accounts: Vec<Account>,
    /// Tombstones included: their ids stay taken.
    pub tokens: Vec<Token>,
    /// The secret index: the hash of each live token's secret.
    pub secrets: Vec<(SecretHash, TokenId)>,
}

/// What a written snapshot holds.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub revision: Revision,
    pub accounts: usize,
    pub tokens: usize,
    pub live_secrets: usize,
}

/// Exactly `N` bytes of hex (either case).
fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    (s.len() == 2 * N && base16ct::mixed::decode(s, &mut out).is_ok()).then_some(out)
}

/// Hashes everything written through it.
struct Hashing<W> {
    out: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Writes `state` (consistent at `state.revision()`), the `tombstones`
/// (in id order, none of them live in `state`: memory holds none) and the
/// page key as a snapshot file to `out`. Blocking: run it off the async
/// workers.
pub fn write(
    state: &State,
    tombstones: &[Token],
    page_key: &[u8; 32],
    out: impl Write,
) -> io::Result<Summary> {
    let accounts: Vec<_> = state.accounts_after(None).collect();
    let tokens: Vec<&Token> = state
        .tokens_after(None, None)
        .map(|t| &**t)
        .merge_by(tombstones, |a, b| a.id < b.id)
        .collect();
    let secrets: Vec<_> = tokens
        .iter()
        .filter_map(|t| state.secret_of(&t.id).map(|h| (h, &t.id)))
        .collect();
    let header = Header {
        format: FORMAT_VERSION,
        revision: state.revision(),
        accounts: accounts.len(),
        tokens: tokens.len(),
        secrets: secrets.len(),
        page_key: hex(page_key),
        events: "none".into(),
    };
    let mut w = Hashing {
        out: io::BufWriter::with_capacity(64 * 1024, out),
        hash: Sha256::new(),
    };
    writeln!(w, "{MAGIC}{FORMAT_VERSION}")?;
    serde_json::to_writer(&mut w, &header)?;
    w.write_all(b"\n")?;
    for a in &accounts {
        w.write_all(b"a ")?;
        w.write_all(&record::encode::<AccountRecord>(a))?;
        w.write_all(b"\n")?;
    }
    for t in &tokens {
        w.write_all(b"t ")?;
        w.write_all(&record::encode::<TokenRecord>(t))?;
        w.write_all(b"\n")?;
    }
    for (hash, id) in &secrets {
        writeln!(w, "s {} {}", hex(&hash[..]), id.as_str())?;
    }
    let Hashing { mut out, hash } = w;
    writeln!(out, "{TRAILER}{}", hex(&hash.finalize()))?;
    out.flush()?;
    Ok(Summary {
        revision: header.revision,
        accounts: header.accounts,
        tokens: header.tokens,
        live_secrets: header.secrets,
    })
}

impl Snapshot {
    /// The revision a store restored from this snapshot is at: its next
    /// change is the one after, and nothing at or below it is served as
    /// history ([`RESTORE_GAP`]).
    pub fn restored_head(&self) -> Revision {
        self.revision + RESTORE_GAP
    }

    /// Reads and checks a whole snapshot file: what it is, its checksum
    /// (before anything else is believed), its version, every record, and
    /// that the secret index names live tokens only. The error says what is
    /// wrong, in one line.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
        if !bytes.starts_with(MAGIC.as_bytes()) {
            return Err("not a tokend snapshot (it does not start with TOKEND-SNAPSHOT)".into());
        }
        let body_end = bytes
            .strip_suffix(b"\n")
            .and_then(|b| b.iter().rposition(|&c| c == b'\n'))
            .map(|i| i + 1)
            .filter(|&i| bytes[i..].starts_with(TRAILER.as_bytes()))
            .ok_or("truncated: the checksum line at the end is missing")?;
        let (body, trailer) = bytes.split_at(body_end);
        let expected = std::str::from_utf8(&trailer[TRAILER.len()..trailer.len() - 1])
            .ok()
            .and_then(unhex::<32>)
            .ok_or("truncated or corrupt: the checksum line is malformed")?;
        if Sha256::digest(body)[..] != expected[..] {
            return Err("corrupt: the SHA-256 checksum does not match the contents".into());
        }
        let text = std::str::from_utf8(body).map_err(|_| "corrupt: not UTF-8".to_string())?;
        let mut lines = text.lines();
        let version = lines.next().unwrap_or_default()[MAGIC.len()..].trim();
        if version != FORMAT_VERSION.to_string() {
            return Err(format!(
                "snapshot format version {version:?} is not supported (this tokend reads {FORMAT_VERSION})"
            ));
        }
        let header: Header = serde_json::from_str(lines.next().unwrap_or_default())
            .map_err(|e| format!("bad header: {e}"))?;
        if header.format != FORMAT_VERSION {
            return Err(format!("header names format {}", header.format));
        }
        let page_key = unhex::<32>(&header.page_key).ok_or("bad header: page_key")?;
        // Revisions travel as int64 (the API, etcd), and a restore adds the
        // gap: a crafted header must not wrap either.
        if header.revision > MAX_REVISION {
            return Err(format!(
                "bad header: revision {} is beyond {MAX_REVISION}",
                header.revision
            ));
        }
        let mut snap = Snapshot {
            revision: header.revision,
            page_key,
            // The counts are checked after parsing; a crafted header must
            // not make the allocation itself (the checksum is no signature).
            accounts: Vec::with_capacity(header.accounts.min(PREALLOCATE)),
            tokens: Vec::with_capacity(header.tokens.min(PREALLOCATE)),
            secrets: Vec::with_capacity(header.secrets.min(PREALLOCATE)),
        };
        for (n, line) in lines.enumerate() {
            let at = |e: String| format!("line {}: {e}", n + 3);
            match line.split_once(' ') {
                Some(("a", json)) => snap
                    .accounts
                    .push(record::decode::<AccountRecord>(json.as_bytes()).map_err(&at)?),
                Some(("t", json)) => snap
                    .tokens
                    .push(record::decode::<TokenRecord>(json.as_bytes()).map_err(&at)?),
                Some(("s", rest)) => {
                    let (h, id) = rest
                        .split_once(' ')
                        .ok_or_else(|| at("bad secret".into()))?;
                    let hash = unhex::<32>(h).ok_or_else(|| at("bad secret hash".into()))?;
                    let id = TokenId::parse(id).map_err(|e| at(e.to_string()))?;
                    snap.secrets.push((hash, id));
                }
                _ => return Err(at("not a record line".into())),
            }
        }
        snap.check(&header)?;
        Ok(snap)
    }

    /// What the format promises beyond each line: the counts of the header,
    /// unique ids, tokens of known accounts, and an index of live tokens.
    fn check(&self, h: &Header) -> Result<(), String> {
        let counts = (self.accounts.len(), self.tokens.len(), self.secrets.len());
        if counts != (h.accounts, h.tokens, h.secrets) {
            return Err(format!(
                "the header counts {} accounts, {} tokens, {} secrets; the file holds {counts:?}",
                h.accounts, h.tokens, h.secrets
            ));
        }
        let accounts: HashSet<_> = self.accounts.iter().map(|a| &a.id).collect();
        if accounts.len() != self.accounts.len() {
            return Err("an account id appears twice".into());
        }
        let mut live = HashSet::new();
        let mut seen = HashSet::new();
        for t in &self.tokens {
            if !seen.insert(&t.id) {
                return Err(format!("token {} appears twice", t.id));
            }
            if !accounts.contains(&t.account_id) {
                return Err(format!("token {} names a missing account", t.id));
            }
            if !t.is_deleted() {
                live.insert(&t.id);
            }
        }
        let mut hashes = HashSet::new();
        for (hash, id) in &self.secrets {
            if !live.remove(id) || !hashes.insert(hash) {
                return Err(format!(
                    "the secret index names {id} twice, or a token that is not live"
                ));
            }
        }
        Ok(())
    }

    pub fn summary(&self) -> Summary {
        Summary {
            revision: self.revision,
            accounts: self.accounts.len(),
            tokens: self.tokens.len(),
            live_secrets: self.secrets.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AccountType;
    use crate::state::testkit::World;

    /// A state with a live, a disabled and a deleted token, as a file.
    fn written() -> (World, Vec<u8>) {
        let mut w = World::default();
        let acc = w.account(AccountType::Client, &["commerce"]);
        w.token(&acc, &["commerce"]);
        let (disabled, _) = w.token(&acc, &["commerce"]);
        w.disable_token(&disabled);
        let (deleted, _) = w.token(&acc, &["commerce"]);
        w.delete_token(&deleted);
        let mut bytes = Vec::new();
        write(&w.state, &w.tombstones(), &[7; 32], &mut bytes).unwrap();
        (w, bytes)
    }

    /// `body` with a trailer that matches it.
    fn sealed(body: &str) -> Vec<u8> {
        format!("{body}{TRAILER}{}\n", hex(&Sha256::digest(body.as_bytes()))).into_bytes()
    }

    fn body(bytes: &[u8]) -> String {
        let text = std::str::from_utf8(bytes).unwrap();
        text[..text.trim_end().rfind('\n').unwrap() + 1].to_string()
    }

    #[test]
    fn what_is_written_reads_back_record_for_record() {
        let (w, bytes) = written();
        let s = Snapshot::decode(&bytes).unwrap();
        assert_eq!(s.revision, w.state.revision());
        assert_eq!(s.page_key, [7; 32]);
        assert_eq!(
            (s.accounts.len(), s.tokens.len(), s.secrets.len()),
            (1, 3, 2)
        );
        for t in &s.tokens {
            let kept = w.token_rec(&t.id);
            assert_eq!(
                record::encode::<TokenRecord>(t),
                record::encode::<TokenRecord>(&kept)
            );
            let hash = s.secrets.iter().find(|(_, id)| *id == t.id).map(|(h, _)| h);
            assert_eq!(hash, w.state.secret_of(&t.id));
        }
    }

    #[test]
    fn a_sealed_file_that_breaks_the_format_is_refused() {
        let (_, bytes) = written();
        let body = body(&bytes);
        // A record line dropped: the header's counts disagree.
        let mut lines: Vec<&str> = body.lines().collect();
        lines.remove(3);
        let short = sealed(&(lines.join("\n") + "\n"));
        let e = Snapshot::decode(&short).err().unwrap();
        assert!(e.contains("header counts"), "{e}");
        // The index naming the deleted token instead of a live one.
        let deleted = body
            .lines()
            .filter(|l| l.starts_with("t ") && l.contains("\"Deleted\""))
            .map(|l| l.split('"').nth(3).unwrap().to_string())
            .next()
            .unwrap();
        let s_line = body.lines().find(|l| l.starts_with("s ")).unwrap();
        let (prefix, _) = s_line.rsplit_once(' ').unwrap();
        let forged = body.replacen(s_line, &format!("{prefix} {deleted}"), 1);
        let e = Snapshot::decode(&sealed(&forged)).err().unwrap();
        assert!(e.contains("not live"), "{e}");
        // An unknown line kind.
        let odd = body.replacen("\nt ", "\nx ", 1);
        let e = Snapshot::decode(&sealed(&odd)).err().unwrap();
        assert!(e.contains("not a record line"), "{e}");
        // A revision whose restore would not fit an int64 (or wrap).
        let (_, bytes) = written();
        let revision = Snapshot::decode(&bytes).unwrap().revision;
        let huge = body.replacen(
            &format!("\"revision\":{revision},"),
            &format!("\"revision\":{},", u64::MAX - 1),
            1,
        );
        let e = Snapshot::decode(&sealed(&huge)).err().unwrap();
        assert!(e.contains("bad header: revision"), "{e}");
        let edge = body.replacen(
            &format!("\"revision\":{revision},"),
            &format!("\"revision\":{MAX_REVISION},"),
            1,
        );
        let s = Snapshot::decode(&sealed(&edge)).unwrap();
        assert_eq!(s.restored_head(), i64::MAX as Revision);
    }
}
