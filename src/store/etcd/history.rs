//! Replays: the events a watch stream asks for with `start_revision`, or
//! reads back after falling behind the live fan-out.
//!
//! Owns the newest events kept in memory (the pump hands them over as it
//! publishes) and reading older ones from etcd's own history, as long as
//! etcd has not compacted it. It must never serve an event past this
//! replica's state (a stream would see it before the state that holds it),
//! nor a replay across a hole: after a reload the kept events are dropped,
//! and etcd's answer for a compacted revision is `REVISION_COMPACTED`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use etcd_client::{GetOptions, WatchOptions};

use super::Inner;
use super::keyspace::decode_record;
use super::retry::{attempt, retried, unavailable};
use crate::domain::{Event, Revision, TokenId};
use crate::error::Error;

/// Recent events kept in memory for streams that fall briefly behind;
/// older ones are read back from etcd's own history.
const RECENT_EVENTS: usize = 4096;

impl Inner {
    /// Keeps `events`, just applied, for replays.
    pub(super) fn remember(&self, events: &[Arc<Event>]) {
        let mut recent = self.recent.lock().expect("recent events");
        for e in events {
            if recent.len() == RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(e.clone());
        }
    }

    /// Drops the kept events: the state was reloaded past a hole in them.
    pub(super) fn forget_recent(&self) {
        self.recent.lock().expect("recent events").clear();
    }

    /// Events with revision ≥ `from` up to this replica's state, at most
    /// `max`: from memory when they are all still there, else from etcd.
    pub(super) async fn events(
        &self,
        from: Revision,
        max: usize,
    ) -> Result<Vec<Arc<Event>>, Error> {
        let head = self.state().revision();
        if from > head {
            return Ok(Vec::new());
        }
        // etcd's history before the origin is a restore's, not events.
        let oldest = self.origin.oldest();
        if from < oldest {
            return Err(Error::Compacted {
                requested: from,
                oldest,
            });
        }
        {
            let recent = self.recent.lock().expect("recent events");
            if recent.front().is_some_and(|e| e.revision <= from) {
                return Ok(recent
                    .iter()
                    .filter(|e| e.revision >= from && e.revision <= head)
                    .take(max)
                    .cloned()
                    .collect());
            }
        }
        history(self, from, head, max).await
    }

    /// Token `id`'s events before `before` (0: up to this replica's state),
    /// newest first, at most `max`: the puts of its record key, walked back
    /// one version at a time (each a get at the revision before the last
    /// put found) until its first version, or until etcd has compacted the
    /// revision asked for.
    pub(super) async fn token_events(
        &self,
        id: &TokenId,
        before: Revision,
        max: usize,
    ) -> Result<Vec<Arc<Event>>, Error> {
        let head = self.state().revision();
        let mut at = if before == 0 {
            head
        } else {
            head.min(before - 1)
        };
        let key = &self.keys.token(id);
        let mut out = Vec::new();
        // Below the origin's oldest (a cursor from before a restore) etcd
        // holds only the restore's puts, and an etcd revision of 0 or less
        // would read the newest version instead: nothing older is listed.
        while out.len() < max && at >= self.origin.oldest() {
            let options = GetOptions::new().with_revision(self.origin.etcd(at));
            // Compacted is an answer, not a failure to try again.
            let got = retried("reading a token's history", &self.client, |mut c| {
                let options = options.clone();
                async move {
                    match c.get(key.as_str(), Some(options)).await {
                        Err(etcd_client::Error::GRpcStatus(s))
                            if s.code() == tonic::Code::OutOfRange =>
                        {
                            Ok(None)
                        }
                        answer => answer.map(Some),
                    }
                }
            })
            .await?;
            let Some(r) = got else {
                // Compacted: the oldest revision left is past `at`.
                self.compacted.fetch_max(at + 1, Ordering::AcqRel);
                break;
            };
            // Absent then, or put by the restore that made the prefix.
            let Some(kv) = r
                .kvs()
                .first()
                .filter(|kv| self.origin.is_event(kv.mod_revision()))
            else {
                break;
            };
            let put = self.origin.revision(kv.mod_revision());
            out.push(Arc::new(decode_record(kv.value())?.into_event(put)));
            if kv.version() <= 1 {
                break;
            }
            at = put - 1;
        }
        Ok(out)
    }
}

/// Events in `from..=head` (at most `max`) from etcd's own history, for a
/// stream further behind than the events kept in memory.
async fn history(
    inner: &Inner,
    from: Revision,
    head: Revision,
    max: usize,
) -> Result<Vec<Arc<Event>>, Error> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(inner.origin.etcd(from))
        .with_prev_key();
    let mut stream = attempt(
        inner
            .client
            .clone()
            .watch(inner.keys.records(), Some(options)),
    )
    .await
    .map_err(|e| unavailable("reading history", e))?;
    let mut out: Vec<Arc<Event>> = Vec::new();
    loop {
        // Not bounded as one call is: etcd may take a while to read a long
        // history before its first answer, and a catch-up cut short would
        // only start over. A member that hangs is given up by HTTP/2's
        // pings (`connect.rs`), which ends this stream.
        let r = stream
            .message()
            .await
            .map_err(|e| unavailable("reading history", e))?
            .ok_or_else(|| unavailable("reading history", "the stream ended"))?;
        if r.canceled() {
            let oldest = inner
                .origin
                .revision(r.compact_revision())
                .max(inner.origin.oldest());
            inner.compacted.fetch_max(oldest, Ordering::AcqRel);
            return Err(Error::Compacted {
                requested: from,
                oldest,
            });
        }
        let mut at_head = false;
        for e in r.events() {
            let Some(kv) = e.kv() else { continue };
            let put = inner.origin.revision(kv.mod_revision());
            if put > head || out.len() == max {
                return Ok(out);
            }
            at_head = put == head;
            // The secret index is not part of an event: the kind and the
            // record are all a stream needs.
            let event = decode_record(kv.value())?.into_event(put);
            // A roll's successor has the revision reserved before its put,
            // which may be below `from` when the put is not.
            if event.revision >= from {
                out.push(Arc::new(event));
            }
        }
        // All of the head's puts are in this response: etcd never splits
        // one revision's events.
        if at_head {
            return Ok(out);
        }
    }
}
