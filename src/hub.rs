//! The hub: the live fan-out of durable events, from the one task of a store
//! that publishes them to every watch stream.
//!
//! Owns the broadcast ring and the rule that makes gaps visible: each event
//! is published with the revision of the event published before it, so a
//! subscriber can tell "nothing lies between what I sent and this" without
//! assuming consecutive revisions. It sits below both the stores (which
//! publish) and the watch streams (which subscribe), so neither depends on
//! the other. It must never carry an event that is not durable, nor block
//! its publisher: a subscriber that falls behind the ring is told it lagged
//! and goes back to the store's log.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::domain::{Event, Revision};
use crate::telemetry;

/// The live fan-out of durable events. The store publishes each event once it
/// is durable and the state that includes it is visible, in revision order.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Published>,
    /// Registered once (make the hub after the exporter is installed).
    published: metrics::Counter,
}

/// An event as the hub carries it: with the revision of the event published
/// before it, so a follower knows whether anything lies between the last
/// event it sent and this one.
#[derive(Clone)]
pub struct Published {
    pub after: Revision,
    pub event: Arc<Event>,
}

impl Hub {
    /// `capacity` events are kept for receivers that fall behind; a receiver
    /// further behind than that is told it lagged and re-reads the log.
    pub fn new(capacity: usize) -> Hub {
        Hub {
            tx: broadcast::channel(capacity.max(16)).0,
            published: metrics::counter!(telemetry::EVENTS_PUBLISHED),
        }
    }

    /// Publishes `event`, whose predecessor in the store's history is at
    /// revision `after` (0: none). Called by one publisher, in order.
    pub fn publish(&self, after: Revision, event: Arc<Event>) {
        self.published.increment(1);
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(Published { after, event });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.tx.subscribe()
    }
}
