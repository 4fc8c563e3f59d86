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
//!
//! It also carries the end: [`Hub::close`] (the server shutting down) wakes
//! every subscriber once, through the same ring, so that a caught-up watch
//! stream waits on one thing only. A per-stream shutdown future would lock
//! one mutex, shared by every stream, on every poll of every stream; so
//! would asking the cancellation token whether it fired (`is_cancelled`
//! takes that lock too), which is why each `recv` reads a flag instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::domain::{Event, Revision};
use crate::telemetry;

/// The live fan-out of durable events. The store publishes each event once it
/// is durable and the state that includes it is visible, in revision order.
#[derive(Clone)]
pub struct Hub {
    /// `None` is the close: it wakes every receiver, which then reads the
    /// `closing` flag (a receiver that lagged past it reads the flag too).
    tx: broadcast::Sender<Option<Published>>,
    closing: Arc<Closing>,
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

/// The most events the hub keeps. tokio allocates its ring whole, at the
/// next power of two, and every slot keeps the last event it held alive
/// (about a kilobyte with its token): a million is a gigabyte already, and
/// a watcher that far behind is better served by the log.
pub const MAX_CAPACITY: usize = 1 << 20;

impl Hub {
    /// `capacity` events are kept for receivers that fall behind; a receiver
    /// further behind than that is told it lagged and re-reads the log.
    /// From one to [`MAX_CAPACITY`] (`tokend serve` refuses others): tokio's
    /// ring cannot be empty, and a huge one would take the machine's memory.
    pub fn new(capacity: usize) -> Hub {
        Hub {
            tx: broadcast::channel(capacity.clamp(1, MAX_CAPACITY)).0,
            closing: Arc::new(Closing {
                flag: AtomicBool::new(false),
                token: CancellationToken::new(),
            }),
            published: metrics::counter!(telemetry::EVENTS_PUBLISHED),
        }
    }

    /// Publishes `event`, whose predecessor in the store's history is at
    /// revision `after` (0: none). Called by one publisher, in order.
    pub fn publish(&self, after: Revision, event: Arc<Event>) {
        self.published.increment(1);
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(Some(Published { after, event }));
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
            closing: self.closing.clone(),
        }
    }

    /// Ends every subscription, now and later: each receiver's next `recv`
    /// after the events already in its ring answers `Closed`.
    pub fn close(&self) {
        // The flag first: a receiver that subscribes after the wake-up below
        // went out still sees it.
        self.closing.flag.store(true, Ordering::Release);
        self.closing.token.cancel();
        let _ = self.tx.send(None);
    }

    pub fn is_closing(&self) -> bool {
        self.closing.is_closing()
    }
}

/// The hub's end, as its subscribers see it: a flag read on every `recv`
/// (one atomic load), and the token that wakes a subscriber waiting on
/// something else.
struct Closing {
    flag: AtomicBool,
    token: CancellationToken,
}

impl Closing {
    fn is_closing(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

/// One subscriber's end of the hub.
pub struct Subscription {
    rx: broadcast::Receiver<Option<Published>>,
    closing: Arc<Closing>,
}

impl Subscription {
    /// The next event published after this subscription began: `Lagged`
    /// when the ring dropped some for this receiver, `Closed` once the hub
    /// is closing.
    pub async fn recv(&mut self) -> Result<Published, RecvError> {
        if self.closing.is_closing() {
            return Err(RecvError::Closed);
        }
        match self.rx.recv().await {
            Ok(Some(p)) => Ok(p),
            Ok(None) | Err(RecvError::Closed) => Err(RecvError::Closed),
            Err(lagged) => Err(lagged),
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.is_closing()
    }

    /// Resolves once the hub is closing: for a subscriber waiting on
    /// something else than [`Subscription::recv`] (a log read). Not for
    /// every poll of every stream: each poll of it takes a shared lock.
    pub fn closing(&self) -> WaitForCancellationFuture<'_> {
        self.closing.token.cancelled()
    }
}
