//! The scale scenario's section of BENCHMARKS.md, and how it gets there. A
//! scale run replaces the section in the existing file (or appends it); a
//! full run, which writes the file from scratch, carries the previous
//! file's section over verbatim: it comes from a run of its own and names
//! its own commit and date. The section is everything from its heading to
//! the next `## ` heading, so it must hold none itself.

use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{ACCOUNTS, DESCRIPTION_CHARS, Footprint, SHRINK_FLAG, Scale, VERIFIERS, VERIFIES};
use super::{LISTS, PAGE, RETENTION, SAMPLE, UNSCOPED_LISTS, WRITERS};

pub const HEADING: &str = "## Scale: memory, disk and start-up per token";

/// Where the heading starts in `doc`, as a line of its own.
fn heading_at(doc: &str) -> Option<usize> {
    doc.match_indices(HEADING).map(|(at, _)| at).find(|&at| {
        let rest = &doc[at + HEADING.len()..];
        (at == 0 || doc[..at].ends_with('\n')) && (rest.is_empty() || rest.starts_with('\n'))
    })
}

/// The scale section of `doc`: its heading up to the next `## ` heading.
pub fn section(doc: &str) -> Option<&str> {
    let start = heading_at(doc)?;
    let body = start + HEADING.len();
    let end = doc[body..]
        .find("\n## ")
        .map_or(doc.len(), |k| body + k + 1);
    Some(&doc[start..end])
}

/// `doc` with its scale section replaced by `new`, or with `new` appended.
pub fn splice(doc: &str, new: &str) -> String {
    let new = new.trim_end();
    match (heading_at(doc), section(doc)) {
        (Some(start), Some(old)) => {
            let after = &doc[start + old.len()..];
            let gap = if after.is_empty() { "\n" } else { "\n\n" };
            format!("{}{new}{gap}{after}", &doc[..start])
        }
        _ if doc.trim().is_empty() => format!("{new}\n"),
        _ => format!("{}\n\n{new}\n", doc.trim_end()),
    }
}

/// A full run's report, with the scale section of the file it replaces
/// (`out`, if it has one) carried over at its end.
pub fn carry_over(report: String, out: &Path) -> String {
    let previous = std::fs::read_to_string(out).unwrap_or_default();
    match section(&previous) {
        Some(old) => splice(&report, old),
        None => report,
    }
}

/// Puts `new` into the report at `out`, in place of its scale section.
pub fn write_into(out: &Path, new: &str) {
    let previous = std::fs::read_to_string(out).unwrap_or_default();
    std::fs::write(out, splice(&previous, new)).expect("write the report");
}

fn size(bytes: f64) -> String {
    let mib = bytes / (1024.0 * 1024.0);
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

fn rss(f: &Footprint) -> String {
    size(f.rss_kib as f64 * 1024.0)
}

fn time(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// RSS and disk of `f` over `empty`, per token, in bytes.
fn per_token(f: &Footprint, empty: &Footprint, n: usize) -> (String, String) {
    let per = |a: u64, b: u64| format!("{:.0} B", (a as f64 - b as f64) / n.max(1) as f64);
    (
        per(f.rss_kib * 1024, empty.rss_kib * 1024),
        per(f.disk, empty.disk),
    )
}

/// The commit checked out (`git rev-parse --short HEAD`), marked when the
/// work tree has changes: taken when the run starts, which is what the
/// binary was built from (`scripts/bench.sh` builds first).
pub fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if !changes.is_empty() => format!("{head} with local changes"),
        _ => head,
    }
}

/// The section for `s`, run on `machine` against `etcd_version`.
pub fn render(s: &Scale, machine: &str, etcd_version: &str) -> String {
    let n = s.tokens;
    let nf = format!("{}", Thousands(n));
    let old = s.old.as_ref();
    let of = old.map_or(String::new(), |o| {
        format!("{}", Thousands(o.count as usize))
    });
    // The store the old tombstones were added to: the live one, compacted
    // when this tokend compacts.
    let base = s.tokend.live_compacted.as_ref().unwrap_or(&s.tokend.live);
    let base_name = if s.tokend.live_compacted.is_some() {
        "the compacted live store"
    } else {
        "the live store"
    };
    let (t, e) = (&s.tokend, &s.etcd);
    let took = match s.took.as_secs_f64() {
        secs if secs < 120.0 => format!("{secs:.0} s"),
        secs => format!("{:.0} minutes", secs / 60.0),
    };
    let date = &humantime::format_rfc3339_seconds(SystemTime::now()).to_string()[..10];
    let mut w = String::new();
    let _ = writeln!(w, "{HEADING}\n");
    let _ = writeln!(
        w,
        "From a run of its own, not the full run above: `scripts/bench.sh --scale {n}` at \
         {}, {date}, {took}. {machine}; {etcd_version}, one member, with \
         `--quota-backend-bytes` 8 GiB.\n",
        s.commit,
    );
    let _ = writeln!(
        w,
        "tokend on sled, release build, with {nf} tokens over {ACCOUNTS} accounts: each with \
         a {DESCRIPTION_CHARS}-character description, a short name and two modules, every \
         other one expiring 30–395 days ahead; created with `CreateToken` from {WRITERS} \
         clients ({:.0}/s), then deleted with `DeleteToken` from {WRITERS} clients ({:.0}/s). \
         etcd holds {nf} records of the same size (tokend's value for a live token: {} \
         bytes on average, under a {}-byte key), put and then deleted one key per request \
         from {} clients ({:.0} and {:.0}/s), as tokend's etcd backend writes a token. \
         Every row is read after a clean restart (SIGTERM, wait, \
         start on the same data dir) and 2 s of quiet: RSS is the server's `VmRSS`, disk \
         what its data dir allocates (`du -s`), start-up from spawning the process until it \
         answers (tokend: gRPC health `SERVING`; etcd: a `Get`).\n",
        t.create_rate,
        t.delete_rate,
        s.record_bytes.0,
        s.record_bytes.1,
        super::etcd::CLIENTS,
        e.create_rate,
        e.delete_rate,
    );
    let _ = writeln!(
        w,
        "| | tokend RSS | tokend disk | tokend start-up | etcd RSS | etcd disk | etcd start-up |\n\
         |---|---|---|---|---|---|---|"
    );
    let row = |w: &mut String, label: &str, t: &Footprint, e: Option<&Footprint>| {
        let (er, ed, es) = e.map_or(("—".into(), "—".into(), "—".into()), |e| {
            (rss(e), size(e.disk as f64), time(e.startup))
        });
        let _ = writeln!(
            w,
            "| {label} | {} | {} | {} | {er} | {ed} | {es} |",
            rss(t),
            size(t.disk as f64),
            time(t.startup)
        );
    };
    row(&mut w, "empty", &t.empty, Some(&e.empty));
    row(&mut w, &format!("{nf} live"), &t.live, Some(&e.live));
    if let Some(f) = &t.live_compacted {
        row(&mut w, "the same, after `tokend compact`", f, None);
    }
    match old {
        Ok(o) => row(
            &mut w,
            &format!("the same and {of} old tombstones (packed)"),
            &o.footprint,
            None,
        ),
        Err(_) => {
            let _ = writeln!(
                w,
                "| the same and old tombstones (packed) | not measured | | | — | — | — |"
            );
        }
    }
    row(
        &mut w,
        &format!("{nf} created and deleted (etcd: compacted, defragmented)"),
        &t.deleted,
        Some(&e.deleted),
    );
    match &s.shrunk {
        Ok((f, _, compacted)) => {
            row(&mut w, "the same, old tombstones shrunk", f, None);
            if let Some(c) = compacted {
                row(&mut w, "the same, after `tokend compact`", c, None);
            }
        }
        Err(_) => {
            let _ = writeln!(
                w,
                "| the same, old tombstones shrunk | not measured | | | — | — | — |"
            );
        }
    }

    let _ = writeln!(
        w,
        "\nPer token: the row's RSS and disk minus the empty server's, divided by {nf}; \
         for the old tombstones added, minus {base_name}'s, divided by their count.\n\n\
         | per token | tokend memory | tokend disk | etcd memory | etcd disk |\n\
         |---|---|---|---|---|"
    );
    let per_row =
        |w: &mut String, label: &str, t: (String, String), e: Option<(String, String)>| {
            let (em, ed) = e.unwrap_or(("—".into(), "—".into()));
            let _ = writeln!(w, "| {label} | {} | {} | {em} | {ed} |", t.0, t.1);
        };
    per_row(
        &mut w,
        "live",
        per_token(&t.live, &t.empty, n),
        Some(per_token(&e.live, &e.empty, n)),
    );
    if let Some(f) = &t.live_compacted {
        per_row(
            &mut w,
            "live, after `tokend compact`",
            per_token(f, &t.empty, n),
            None,
        );
    }
    if let Ok(o) = old {
        per_row(
            &mut w,
            &format!("old tombstone, packed, among {of}"),
            per_token(&o.footprint, base, o.count as usize),
            None,
        );
    }
    per_row(
        &mut w,
        "created and deleted (tokend: its tombstone)",
        per_token(&t.deleted, &t.empty, n),
        Some(per_token(&e.deleted, &e.empty, n)),
    );
    if let Ok((f, _, compacted)) = &s.shrunk {
        per_row(
            &mut w,
            "old tombstone, shrunk",
            per_token(f, &t.empty, n),
            None,
        );
        if let Some(c) = compacted {
            per_row(
                &mut w,
                "old tombstone, shrunk, after `tokend compact`",
                per_token(c, &t.empty, n),
                None,
            );
        }
    }

    let ms =
        |l: &crate::scenarios::Latency| format!("{:.2} / {:.2} / {:.2} ms", l.p50, l.p99, l.max);
    let _ = writeln!(
        w,
        "\nWith {nf} live tokens (p50 / p99 / max): `VerifyToken` of {} of them, {} \
         calls from {VERIFIERS} clients: **{}**. `ListTokens`, first page ({PAGE}) of one \
         account's tokens (about {}) with a filter, `status = ACTIVE`, `name = \"…\"`, \
         `modules:billing AND status = ACTIVE` and `expire_time < \"…\"` in turn, {LISTS} \
         calls one at a time: **{}**. The same unscoped and unfiltered (all {nf} counted \
         for `total_size`), {UNSCOPED_LISTS} calls: {}.\n",
        Thousands(SAMPLE.min(n)),
        Thousands(VERIFIES),
        ms(&s.verify),
        Thousands(n.div_ceil(ACCOUNTS)),
        ms(&s.list),
        ms(&s.unscoped_list),
    );
    let anon = |f: &Footprint| size(f.anon_kib as f64 * 1024.0);
    let peak = |f: &Footprint| {
        format!(
            "{} ({:.2}× what it settled at)",
            size(f.peak_kib as f64 * 1024.0),
            f.peak_kib as f64 / f.rss_kib.max(1) as f64
        )
    };
    let _ = write!(
        w,
        "tokend's peak during start-up (`VmHWM`), with {nf} live tokens: {}; after \
         `tokend compact`: {}; with old tombstones too: {}. ",
        peak(&t.live),
        t.live_compacted.as_ref().map_or_else(|| "—".into(), peak),
        old.map_or_else(|_| "—".into(), |o| peak(&o.footprint)),
    );
    let _ = match old {
        Ok(o) => write!(
            w,
            "The {of} old tombstones were added to a copy of {base_name}, stopped, \
             through the shrinker's own pack write (`tokend::store::add_old_tombstones`, \
             `--features bench`; made through the API, that many would take hours and tens \
             of GB before the shrinker packed them), in {:.0} s. They take the lowest \
             numbers never issued, so their packs are denser than those of tokens issued \
             at random numbers (the row above of tombstones made through the API shows \
             those). `GetToken` with `show_deleted` of {} of them, spread over all, one \
             at a time: {}. The first page of an unscoped `ListTokens` with \
             `show_deleted` (`total_size` from the counts tokend keeps): {}; the same with \
             a filter (`name = \"old 1\"`, matched on every tombstone for `total_size`): \
             {}. ",
            o.written_in.as_secs_f64(),
            Thousands(super::OLD_GETS as usize),
            ms(&o.get),
            time(o.deleted_list),
            time(o.deleted_list_filtered),
        ),
        Err(why) => write!(
            w,
            "Old tombstones added to the live store were not measured: {why}. "
        ),
    };
    let _ = write!(
        w,
        "etcd's RSS includes its bbolt database, mapped into memory; the anonymous part, \
         with {nf} keys, was {} (tokend's {}). Right after deleting, compacting and \
         defragmenting, before its restart, etcd had {} RSS and {} on disk. etcd keeps \
         nothing of a deleted key once compacted; tokend keeps each deleted token's \
         tombstone for good (README, *Known limits*). tokend ran with `--retention \
         {RETENTION}`, so that its disk is the tokens' own: the event log it keeps is \
         bounded by `--retention` apart from them (the default, 100,000 events, is \
         sized in README, *Sizing*). etcd's history is compacted.",
        anon(&e.live),
        anon(&t.live),
        rss(&s.etcd_compacted),
        size(s.etcd_compacted.disk as f64),
    );
    let _ = match &s.shrunk {
        Ok((_, waited, _)) => writeln!(
            w,
            " Old tombstones: tokend restarted with `{SHRINK_FLAG} 0s` shrank them in {:.0} s \
             (until `tokend_tombstones_shrunk_total` reached {nf}, or stopped rising for a \
             minute); then it was restarted again with the flag still set.",
            waited.as_secs_f64()
        ),
        Err(why) => writeln!(w, " Old tombstones were not measured: {why}."),
    };
    w
}

/// `1234567` as `1,234,567`.
struct Thousands(usize);

impl std::fmt::Display for Thousands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.0.to_string();
        for (k, c) in digits.chars().enumerate() {
            if k > 0 && (digits.len() - k).is_multiple_of(3) {
                f.write_str(",")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}
