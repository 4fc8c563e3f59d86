//! Each change event encoded once, however many watch streams carry it.
//!
//! Owns a short ring of the newest events' encodings, by revision. The
//! first stream to send a change encodes it; every other stream sending it
//! shares those bytes. At a thousand streams an event was converted and
//! encoded a thousand times, the largest part of what a stream spent per
//! event beyond tonic and HTTP/2. An event older than the ring (a stream
//! catching up from the log) is encoded for the stream that asks and not
//! kept, so the ring's memory is fixed. It must never answer with bytes of
//! another revision: a revision names one event for the life of a store.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use super::convert;
use crate::domain::{Event, Revision};
use crate::proto::EncodedEvent;

/// Newest events kept: more than a commit batch publishes at once, so that
/// streams a few events apart still share.
const KEEP: usize = 256;

#[derive(Default)]
pub struct EncodedEvents {
    /// Ascending by revision.
    ring: Mutex<VecDeque<(Revision, EncodedEvent)>>,
}

impl EncodedEvents {
    pub fn get(&self, event: &Event) -> EncodedEvent {
        let found = |ring: &VecDeque<(Revision, EncodedEvent)>| {
            ring.binary_search_by_key(&event.revision, |(r, _)| *r)
                .ok()
                .map(|i| ring[i].1.clone())
        };
        if let Some(hit) = found(&self.lock()) {
            return hit;
        }
        // Encoded outside the lock: streams sending other events need not
        // wait for it. Two streams may both encode a new event; the first
        // one kept wins.
        let encoded = EncodedEvent::new(&convert::change_event(event));
        let mut ring = self.lock();
        if let Some(hit) = found(&ring) {
            return hit;
        }
        if ring.back().is_none_or(|(r, _)| *r < event.revision) {
            ring.push_back((event.revision, encoded.clone()));
            if ring.len() > KEEP {
                ring.pop_front();
            }
        }
        encoded
    }

    /// A panic elsewhere cannot leave the ring half-changed (each change is
    /// one push or pop), so a poisoned lock is still a good ring.
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Revision, EncodedEvent)>> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;
    use crate::domain::{AccountType, EventKind, Subject};
    use crate::state::testkit::{World, actor};

    /// The same token changed at `revisions`, one event each.
    fn events(revisions: &[Revision]) -> Vec<Event> {
        let mut w = World::default();
        let account = w.account(AccountType::Client, &["billing"]);
        let (id, _) = w.token(&account, &["billing"]);
        let token = w.token_rec(&id);
        revisions
            .iter()
            .map(|&revision| Event {
                revision,
                kind: EventKind::Updated,
                subject: Subject::Token(Arc::unwrap_or_clone(token.clone())),
                time: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(revision),
                actor: actor(),
            })
            .collect()
    }

    fn is_encoding_of(bytes: &EncodedEvent, event: &Event) -> bool {
        bytes.event().unwrap() == convert::change_event(event)
    }

    #[test]
    fn each_revision_gets_its_own_events_bytes_and_keeps_them_once() {
        let encoded = EncodedEvents::default();
        let events = events(&[3, 5, 9]);
        for _ in 0..2 {
            for e in &events {
                assert!(
                    is_encoding_of(&encoded.get(e), e),
                    "revision {}",
                    e.revision
                );
            }
        }
        let kept: Vec<_> = encoded.lock().iter().map(|(r, _)| *r).collect();
        assert_eq!(kept, [3, 5, 9]);
    }

    #[test]
    fn an_event_older_than_the_newest_kept_is_encoded_and_not_kept() {
        let encoded = EncodedEvents::default();
        let events = events(&[7, 4]);
        encoded.get(&events[0]);
        assert!(is_encoding_of(&encoded.get(&events[1]), &events[1]));
        let kept: Vec<_> = encoded.lock().iter().map(|(r, _)| *r).collect();
        assert_eq!(kept, [7]);
    }

    #[test]
    fn the_ring_keeps_only_the_newest() {
        let encoded = EncodedEvents::default();
        let revisions: Vec<Revision> = (1..=KEEP as u64 + 10).collect();
        for e in events(&revisions) {
            encoded.get(&e);
        }
        let ring = encoded.lock();
        assert_eq!(ring.len(), KEEP);
        assert_eq!(ring.front().map(|(r, _)| *r), Some(11));
    }
}
