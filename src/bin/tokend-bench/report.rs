//! BENCHMARKS.md: the machine, the versions, one table per scenario with
//! tokend, etcd and the ratio, the floors, and the targets with whether this
//! run met them. Only formatting lives here.

use std::fmt::Write;

use crate::peers::THREAD_ROLES;
use crate::scenarios::{FanOut, Latency, Throughput};

/// One configuration's run in the tracing scenario.
pub struct TracedRun {
    pub label: &'static str,
    pub verifies: Throughput,
    pub deletes: Throughput,
}

/// The tracing scenario: every run, and the spans the receiver got.
pub struct Tracing {
    pub runs: Vec<TracedRun>,
    pub spans: u64,
}

pub struct Report {
    smoke: bool,
    /// Rounds of the deletes and lookups scenarios.
    rounds: usize,
    tracing: String,
    etcd_version: String,
    floors: String,
    fan_out: Vec<String>,
    deletes: Vec<String>,
    lookups: Vec<String>,
    catch_up: String,
    memory: String,
    checks: Vec<String>,
    cache_refusal: String,
    /// tokend on the etcd backend: deletes and verifies.
    distributed: Vec<String>,
    // What the targets are judged on, kept as measured; `targets` derives
    // the verdicts when the report is rendered.
    /// (watchers, tokend, etcd, floor) receipt p99, for every fan-out.
    fan_out_p99: Vec<(usize, f64, f64, f64)>,
    /// (ratio, at how many streams): from the largest fan-out.
    memory_ratio: Option<(f64, usize)>,
    /// (clients, tokend, etcd, floor) for every delete run.
    delete_runs: Vec<(usize, Throughput, Throughput, Throughput)>,
    /// tokend's verifies at 32 clients: the CPU of its cheapest call.
    verify_32: Option<Throughput>,
    /// Each side's best lookups/s over all client counts.
    best_lookups: (f64, f64),
}

fn cpu(t: &Throughput) -> String {
    format!("{:.0} / {:.0}", t.cpu_us, t.load_cpu_us)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

fn lat(l: &Latency) -> String {
    format!("{:.2} / {:.2} / {:.2}", l.p50, l.p99, l.max)
}

impl Report {
    pub fn new(smoke: bool, rounds: usize, etcd_version: String) -> Report {
        Report {
            smoke,
            rounds,
            tracing: String::new(),
            etcd_version,
            floors: String::new(),
            fan_out: Vec::new(),
            deletes: Vec::new(),
            lookups: Vec::new(),
            catch_up: String::new(),
            memory: String::new(),
            checks: Vec::new(),
            cache_refusal: String::new(),
            distributed: Vec::new(),
            fan_out_p99: Vec::new(),
            memory_ratio: None,
            delete_runs: Vec::new(),
            best_lookups: (0.0, 0.0),
            verify_32: None,
        }
    }

    /// (target, this run, met, the floor's figure) for every target this
    /// run measured.
    fn targets(&self) -> Vec<(String, String, bool, String)> {
        let none = || "—".to_string();
        let mut out = Vec::new();
        for &(clients, t, e, f) in &self.delete_runs {
            let (r, floor) = (
                ratio(t.per_second, e.per_second),
                ratio(f.per_second, e.per_second),
            );
            out.push((
                format!("deletes/s at {clients} clients ≥ 1.25× etcd's"),
                format!("{r:.2}×"),
                r >= 1.25,
                format!("{floor:.2}×"),
            ));
        }
        for &(clients, t, _, f) in &self.delete_runs {
            let r = ratio(t.per_second, f.per_second);
            out.push((
                format!("deletes/s at {clients} clients ≥ 0.75× the floor's (moonshot)"),
                format!("{r:.2}×"),
                r >= 0.75,
                none(),
            ));
        }
        for &(watchers, t, e, f) in &self.fan_out_p99 {
            let bound = if watchers >= 1_000 { 0.5 } else { 1.0 };
            let (r, floor) = (ratio(t, e), ratio(f, e));
            out.push((
                format!("fan-out receipt p99 at {watchers} watchers ≤ {bound}× etcd's"),
                format!("{r:.2}×"),
                r <= bound,
                format!("{floor:.2}×"),
            ));
        }
        for &(watchers, t, _, f) in &self.fan_out_p99 {
            let r = ratio(t, f);
            out.push((
                format!("fan-out receipt p99 at {watchers} watchers ≤ 1.3× the floor's"),
                format!("{r:.2}×"),
                r <= 1.3,
                none(),
            ));
        }
        if let Some(&(_, t, _, f)) = self.delete_runs.iter().find(|r| r.0 == 32) {
            let r = ratio(t.cpu_us, f.cpu_us);
            out.push((
                "server CPU per delete at 32 clients ≤ 2× the floor's".into(),
                format!("{r:.2}× ({:.0} / {:.0} µs)", t.cpu_us, f.cpu_us),
                r <= 2.0,
                none(),
            ));
            let per_fsync = t.per_fsync.unwrap_or(0.0);
            out.push((
                "≥ 8 deletes per fsync at 32 clients".into(),
                format!("{per_fsync:.1}"),
                per_fsync >= 8.0,
                format!("{:.1}", f.per_fsync.unwrap_or(0.0)),
            ));
        }
        if let Some((r, streams)) = self.memory_ratio {
            out.push((
                "memory per idle stream ≤ 0.15× etcd's".into(),
                format!("{r:.2}× (at {streams} streams)"),
                r <= 0.15,
                none(),
            ));
        }
        if self.best_lookups.1 > 0.0 {
            let r = ratio(self.best_lookups.0, self.best_lookups.1);
            out.push((
                "verifies/s ≥ 3× etcd's gets/s (each at its best C)".into(),
                format!("{r:.2}×"),
                r >= 3.0,
                none(),
            ));
        }
        out
    }

    /// `sled`: (live records, value scale, CPU µs per delete) of
    /// `scenarios::sled_floor`, tokend's JSON sizes first.
    pub fn floors(&mut self, fsyncs_per_s: f64, grpc: (Latency, f64), sled: [(u32, f64, f64); 2]) {
        let [(tokens, _, json), (_, scale, compact)] = sled;
        self.floors = format!(
            "| raw `write(512 B)` + `fdatasync`, one at a time, on the data disk | {fsyncs_per_s:.0} /s |\n\
             | gRPC empty call (health check), one at a time, loopback | p50 {:.3} ms, {:.0} calls/s |\n\
             | sled 0.34 alone: a delete's two writes as tokend's applier makes them (remove the \
             live record, insert the tombstone; tokend's JSON values) in a tree of {tokens} live \
             records, one thread, nothing else | {json:.1} µs CPU per delete |\n\
             | the same with values {:.0}% of that size (a compact binary encoding's) | {compact:.1} µs CPU per delete |\n",
            grpc.0.p50,
            grpc.1,
            scale * 100.0,
        );
    }

    /// tokend, etcd and the floor: each its median of `rounds` runs, but
    /// for memory per idle stream, which is from its first run.
    pub fn fan_out(
        &mut self,
        (watchers, rate, rounds): (usize, f64, usize),
        t: &FanOut,
        e: &FanOut,
        f: &FanOut,
    ) {
        let (r, floor) = (
            ratio(t.receipt.p99, e.receipt.p99),
            ratio(f.receipt.p99, e.receipt.p99),
        );
        self.fan_out.push(format!(
            "| {watchers} (median of {rounds} rounds) | {rate} | {} | {} | **{r:.2}** | {} | {floor:.2} | {} | {} |",
            lat(&t.receipt),
            lat(&e.receipt),
            lat(&f.receipt),
            lat(&t.reply),
            lat(&e.reply),
        ));
        self.fan_out_p99
            .push((watchers, t.receipt.p99, e.receipt.p99, f.receipt.p99));
        // Memory per idle stream: from the largest fan-out.
        let r = ratio(t.kib_per_idle_stream, e.kib_per_idle_stream);
        self.memory = format!(
            "| {watchers} | {:.1} KiB | {:.1} KiB | **{r:.2}** |",
            t.kib_per_idle_stream, e.kib_per_idle_stream
        );
        self.memory_ratio = Some((r, watchers));
    }

    /// tokend, etcd and the floor: each its median round.
    pub fn deletes(&mut self, clients: usize, t: &Throughput, e: &Throughput, f: &Throughput) {
        let per_fsync = |x: &Throughput| x.per_fsync.unwrap_or(0.0);
        let in_fsync = |x: &Throughput| x.in_fsync.unwrap_or(0.0) * 100.0;
        self.deletes.push(format!(
            "| {clients} | {:.0} | {:.0} | {:.0} | **{:.2}** | {:.2} | {:.2} / {:.2} / {:.2} | \
             {:.1} / {:.1} / {:.1} | {:.0}% / {:.0}% / {:.0}% | {} | {} | {} |",
            t.per_second,
            e.per_second,
            f.per_second,
            ratio(t.per_second, e.per_second),
            ratio(f.per_second, e.per_second),
            t.latency.p99,
            e.latency.p99,
            f.latency.p99,
            per_fsync(t),
            per_fsync(e),
            per_fsync(f),
            in_fsync(t),
            in_fsync(e),
            in_fsync(f),
            cpu(t),
            cpu(e),
            cpu(f),
        ));
        self.delete_runs.push((clients, *t, *e, *f));
    }

    /// Section 2's CPU per delete by thread, from the delete runs.
    fn thread_split(&self) -> String {
        let mut table = String::from("| C |");
        for role in THREAD_ROLES.iter().chain(&["other", "all"]) {
            table += &format!(" {role} |");
        }
        table += &format!("\n|---|{}\n", "---|".repeat(THREAD_ROLES.len() + 2));
        let split = |x: &Throughput| -> Vec<f64> {
            let named: f64 = x.thread_cpu_us.iter().sum();
            let mut parts = x.thread_cpu_us.to_vec();
            parts.extend([(x.cpu_us - named).max(0.0), x.cpu_us]);
            parts
        };
        for (clients, t, _, f) in &self.delete_runs {
            table += &format!("| {clients} |");
            for (a, b) in split(t).into_iter().zip(split(f)) {
                table += &format!(" {a:.1} / {b:.1} |");
            }
            table += "\n";
        }
        table
    }

    pub fn lookups(&mut self, clients: usize, t: &Throughput, e: &Throughput) {
        let r = ratio(t.per_second, e.per_second);
        self.lookups.push(format!(
            "| {clients} | {:.0} | {:.0} | **{r:.2}** | {:.2} | {:.2} | {} | {} |",
            t.per_second,
            e.per_second,
            t.latency.p99,
            e.latency.p99,
            cpu(t),
            cpu(e)
        ));
        if clients == 32 {
            self.verify_32 = Some(*t);
        }
        let (bt, be) = &mut self.best_lookups;
        *bt = bt.max(t.per_second);
        *be = be.max(e.per_second);
    }

    /// tokend on etcd (`d`) against tokend on sled and etcd itself.
    pub fn distributed_deletes(
        &mut self,
        clients: usize,
        d: &Throughput,
        t: &Throughput,
        e: &Throughput,
    ) {
        self.distributed(clients, "deletes", d, t, e);
    }

    pub fn distributed_lookups(
        &mut self,
        clients: usize,
        d: &Throughput,
        t: &Throughput,
        e: &Throughput,
    ) {
        self.distributed(clients, "verifies", d, t, e);
    }

    fn distributed(
        &mut self,
        clients: usize,
        what: &str,
        d: &Throughput,
        t: &Throughput,
        e: &Throughput,
    ) {
        self.distributed.push(format!(
            "| {what} | {clients} | {:.0} | {:.2} | **{:.2}** | **{:.2}** | {} |",
            d.per_second,
            d.latency.p99,
            ratio(d.per_second, t.per_second),
            ratio(d.per_second, e.per_second),
            cpu(d),
        ));
    }

    pub fn checks(&mut self, clients: usize, t: &Throughput) {
        self.checks.push(format!(
            "| {clients} | {:.0} | {} | {} |",
            t.per_second,
            lat(&t.latency),
            cpu(t)
        ));
    }

    pub fn cache_refusal(&mut self, deletes: usize, l: Latency) {
        self.cache_refusal = format!(
            "From a delete's answer to a `TokenCache` in another process refusing the \
             secret, over {deletes} deletes one at a time: {} ms (p50 / p99 / max).",
            lat(&l)
        );
    }

    /// Leaked secrets: from sending a `ReportLeakedSecrets` to the secret
    /// refused by a cache in another process, and by `Check`.
    pub fn leak_refusal(&mut self, reports: usize, cache: Latency, check: Latency) {
        self.cache_refusal.push_str(&format!(
            "\n\nFrom sending a leak report (`ReportLeakedSecrets`, one secret each, {reports} \
             one at a time) to the secret refused: by a `TokenCache` in another process \
             {} ms, by `Check` {} ms (p50 / p99 / max; the report's own round trip included).",
            lat(&cache),
            lat(&check)
        ));
    }

    /// Tracing's cost: each configuration's mean over its runs, and the
    /// ratio to tracing off.
    pub fn tracing(&mut self, t: Tracing) {
        let mut labels: Vec<&str> = Vec::new();
        for run in &t.runs {
            if !labels.contains(&run.label) {
                labels.push(run.label);
            }
        }
        let mean = |label: &str, f: &dyn Fn(&TracedRun) -> f64| {
            let of: Vec<f64> = t.runs.iter().filter(|r| r.label == label).map(f).collect();
            of.iter().sum::<f64>() / of.len().max(1) as f64
        };
        let verifies = |label: &str| mean(label, &|r| r.verifies.per_second);
        let deletes = |label: &str| mean(label, &|r| r.deletes.per_second);
        let off = labels.first().copied().unwrap_or("off");
        let mut rows = String::new();
        for label in &labels {
            let _ = writeln!(
                rows,
                "| {label} | {:.0} | **{:.2}** | {:.0} | {:.0} | **{:.2}** | {:.0} |",
                verifies(label),
                ratio(verifies(label), verifies(off)),
                mean(label, &|r| r.verifies.cpu_us),
                deletes(label),
                ratio(deletes(label), deletes(off)),
                mean(label, &|r| r.deletes.cpu_us),
            );
        }
        self.tracing = format!(
            "\n## 9. Tracing overhead (tokend only)\n\n\
             tokend exporting OpenTelemetry spans (`--otlp-endpoint`) to an OTLP receiver in \
             the load tool's process, as to a collector on the same node (its CPU is on the \
             same cores), sampled with `OTEL_TRACES_SAMPLER=parentbased_traceidratio` at 100% \
             and at 1% of calls, against tracing off: verifies and deletes from 32 clients, \
             each configuration its own tokend with the same seed, every run three times in \
             rotated order; figures are the mean of the three. A sampled delete is \
             three spans (the RPC, its commit, and its batch's fsync, shared); a verify is \
             one. The receiver got {} spans in all. CPU is the server's, µs per call.\n\n\
             | tracing | verifies/s | ÷ off | CPU µs | deletes/s | ÷ off | CPU µs |\n\
             |---|---|---|---|---|---|---|\n{rows}",
            t.spans
        );
    }

    pub fn catch_up(&mut self, behind: i64, t: std::time::Duration, e: std::time::Duration) {
        self.catch_up = format!(
            "| {behind} | {:.0} ms | {:.0} ms | **{:.2}** |",
            t.as_secs_f64() * 1e3,
            e.as_secs_f64() * 1e3,
            ratio(t.as_secs_f64(), e.as_secs_f64())
        );
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let w = &mut s;
        let _ = writeln!(w, "# tokend vs etcd\n");
        if self.smoke {
            let _ = writeln!(w, "**Smoke run: tiny sizes, the figures mean nothing.**\n");
        }
        let _ = writeln!(
            w,
            "Written by `scripts/bench.sh` (the `tokend-bench` tool) from one run on one \
             machine: each scenario ran against tokend and etcd in turn (fan-out and deletes \
             also against the floor, section 6). Deletes and lookups (sections 2 and 3) ran \
             in {} rounds, and each fan-out (section 1) in the rounds its row gives: each \
             server once per round, after a quiet second, in an order rotated every round, \
             and each server's row is its median round, by rate (by receipt p99 for a \
             fan-out; memory per stream, section 4, is from each server's first round). On \
             this shared \
             machine one run moves by up to a third with the neighbours' load; interleaved \
             rounds spread that over every server. The other scenarios ran once, tokend on \
             etcd (section 8) too. \
             Ratios are tokend ÷ etcd; for latencies lower is better, for rates higher.\n",
            self.rounds
        );
        let _ = writeln!(w, "## Machine and versions\n");
        let _ = writeln!(w, "- {}", machine());
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        let _ = writeln!(
            w,
            "- tokend {} ({profile} build)",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            w,
            "- {}, one member, default settings (durability: WAL fsync before every reply)",
            self.etcd_version
        );
        let _ = writeln!(
            w,
            "- both on loopback, data in one temp dir on the same disk, logs at warning level; \
             the load tool runs on the same 2 cores\n"
        );

        let _ = writeln!(
            w,
            "## Targets\n\nThe floor's column is the same figure for the floor (section 6): \
             where it misses a target too, the stack and the machine stop it, not tokend.\n\n\
             | target | this run | met | the floor |\n|---|---|---|---|"
        );
        for (what, measured, met, floor) in self.targets() {
            let _ = writeln!(
                w,
                "| {what} | {measured} | {} | {floor} |",
                if met { "yes" } else { "**no**" }
            );
        }

        let _ = writeln!(
            w,
            "\n## 1. Fan-out latency\n\nW watch streams on every change (250 per connection); \
             deletes at a fixed rate from one more client. *Receipt* is from sending the \
             delete to each watcher receiving its event (etcd notifies watchers before it \
             replies, so latency counted from the reply would flatter it); *reply* is from \
             sending the delete to its answer. Milliseconds, p50 / p99 / max; the p99 ratios \
             are tokend's and the floor's ÷ etcd's.\n\n\
             | W | deletes/s | tokend receipt | etcd receipt | p99 ratio | floor receipt | floor p99 ratio | tokend reply | etcd reply |\n\
             |---|---|---|---|---|---|---|---|---|"
        );
        for row in &self.fan_out {
            let _ = writeln!(w, "{row}");
        }

        let _ = writeln!(
            w,
            "\n## 2. Durable deletes\n\nC clients, each on its own connection, delete \
             pre-created items as fast as they are answered. Deletes per fsync: tokend's \
             commits (`tokend_fsync_duration_seconds_count`), etcd's WAL fsyncs \
             (`etcd_disk_wal_fsync_duration_seconds_count`). CPU: time on a CPU per delete over \
             the run, server / load tool (this process, which shares the cores), summed over \
             each process's threads from the scheduler's count in nanoseconds \
             (`/proc/<pid>/task/*/schedstat`; on a kernel without it, `stat`'s user and system \
             ticks, at 100 Hz; a thread that ended during the run is missing). \
             The floor's fsyncs are its own batches, counted like tokend's. Time in fsync: \
             the share of the run's wall time those fsyncs took (the histograms' `_sum`; \
             tokend's and the floor's include the log's `write`); one sync runs at a time, \
             so the rest is the writer's work around its syncs and its wait for requests.\n\n\
             | C | tokend deletes/s | etcd deletes/s | floor deletes/s | ratio | floor ratio | p99 ms tokend / etcd / floor | deletes/fsync tokend / etcd / floor | time in fsync tokend / etcd / floor | tokend CPU µs | etcd CPU µs | floor CPU µs |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for row in &self.deletes {
            let _ = writeln!(w, "{row}");
        }
        let _ = writeln!(
            w,
            "\nThe same server CPU per delete by thread, µs, tokend / the floor, grouped by \
             the threads' names: the async runtime's workers (gRPC, and on tokend also \
             authentication and planning), the writer thread (the log's write and sync, \
             publishing, answering), tokend's applier (sled) and sled's own I/O pool; \
             *other* is every other thread. The floor has no applier and no sled: what \
             tokend spends there, and beyond the floor in the other columns, is its own.\n\n{}",
            self.thread_split()
        );

        let _ = writeln!(
            w,
            "\n## 3. Verify vs get\n\nC clients, each on its own connection, look up random \
             items among those seeded: tokend `VerifyToken` with the secret, etcd `Get` of the \
             key (its default, linearizable read). CPU: per lookup, server / load tool, as above.\n\n\
             | C | tokend verifies/s | etcd gets/s | ratio | tokend p99 ms | etcd p99 ms | tokend CPU µs | etcd CPU µs |\n\
             |---|---|---|---|---|---|---|---|"
        );
        for row in &self.lookups {
            let _ = writeln!(w, "{row}");
        }

        let _ = writeln!(
            w,
            "\n## 4. Memory per idle watch stream\n\nServer RSS growth after opening the \
             streams, measured before any event flows, divided by their number: \
             in each server's first run of the largest fan-out (its later rounds reuse \
             the memory the first one's streams freed).\n\n\
             | streams | tokend | etcd | ratio |\n|---|---|---|---|\n{}",
            self.memory
        );

        let _ = writeln!(
            w,
            "\n## 5. Catch-up\n\nA watcher resuming that many revisions back: time from \
             opening the stream to hearing the change at the head.\n\n\
             | behind | tokend | etcd | ratio |\n|---|---|---|---|\n{}",
            self.catch_up
        );

        let _ = writeln!(
            w,
            "\n## 6. Floors\n\n| floor | this run |\n|---|---|\n{}\n\
             **The floor server** (`src/bin/tokend-bench/floor.rs`) speaks tokend's \
             `TokenService` on the same tonic stack and is driven by the same client code. It \
             keeps tokend's group commit and nothing else (tokend plans on the caller's task; \
             this has nothing to plan): each delete joins the next batch on the caller's task, \
             the first one while the writer thread sleeps commits the batch itself at once if \
             the load is calm (no commit ran while the last four were queued), else waits one \
             turn of the scheduler, then wakes the writer, as tokend's do; whoever commits \
             appends the batch in one write to a log allocated ahead in 4 MiB steps (as \
             tokend's log segments are), `fdatasync`s once, then answers and broadcasts \
             the events to every watch stream. No authentication, no state, no database, no \
             retained log, no per-call metrics or logs. Its figures in sections 1 and 2 are \
             what a durable, watched delete costs on this stack and machine before tokend does \
             any work of its own.",
            self.floors
        );
        if !self.checks.is_empty() || !self.cache_refusal.is_empty() {
            let _ = writeln!(
                w,
                "\n## 7. In a mesh (tokend only)\n\nEnvoy's ext_authz `Check` from C \
                 sidecar clients, each on its own connection, with random seeded secrets \
                 (etcd has no counterpart). Latency in ms, p50 / p99 / max; CPU µs per \
                 Check, server / load tool.\n\n\
                 | C | checks/s | latency | CPU µs |\n|---|---|---|---|"
            );
            for row in &self.checks {
                let _ = writeln!(w, "{row}");
            }
            let _ = writeln!(w, "\n{}", self.cache_refusal);
        }
        if !self.distributed.is_empty() {
            let _ = writeln!(
                w,
                "\n## 8. Going distributed: tokend on the etcd backend\n\n\
                 tokend started with `--store etcd://…` on the same one-member etcd as the \
                 peer above, doing the work of sections 2 and 3 (verifies over a tenth as \
                 many tokens). One replica: it waits for no other. Ratios against tokend on \
                 sled and against etcd's own delete / get; CPU is the tokend process only \
                 (etcd's work for it is not counted).\n\n\
                 | call | C | per second | p99 ms | ÷ tokend on sled | ÷ etcd | CPU µs |\n\
                 |---|---|---|---|---|---|---|"
            );
            for row in &self.distributed {
                let _ = writeln!(w, "{row}");
            }
        }
        if let Some(budget) = self.cpu_budget() {
            let _ = writeln!(w, "\n{budget}");
        }
        let _ = write!(w, "{}", self.tracing);
        s
    }

    /// What 1.25× etcd's deletes/s at 32 clients would leave for each delete
    /// on this machine's cores, against what this run spent: the load tool
    /// shares the cores, so its cycles count against the budget too.
    fn cpu_budget(&self) -> Option<String> {
        let &(_, delete, etcd, _) = self.delete_runs.iter().find(|r| r.0 == 32)?;
        let verify = self.verify_32?;
        let etcd_rate = etcd.per_second;
        let (delete_server, delete_load) = (delete.cpu_us, delete.load_cpu_us);
        let (verify_server, verify_load) = (verify.cpu_us, verify.load_cpu_us);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let budget = cores * 1e6 / (1.25 * etcd_rate);
        Some(format!(
            "**CPU budget at 32 clients.** 1.25× etcd's {etcd_rate:.0} deletes/s leaves \
             {budget:.0} µs of CPU per delete on {cores} cores, for server and load tool \
             together. This run spent {:.0} µs per tokend delete ({delete_server:.0} server, \
             {delete_load:.0} load tool). A verify, tokend's cheapest call, which touches no \
             disk, spent {:.0} µs ({verify_server:.0} server, {verify_load:.0} load tool).",
            delete_server + delete_load,
            verify_server + verify_load,
        ))
    }
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB memory, Linux")
}
