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
