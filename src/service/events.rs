//! `WatchTokens` and `ListTokenEvents`: a token's changes as they happen,
//! and its history.
//!
//! Owns those requests' shapes (where a watch starts, its filter, a history
//! page's token) and who may read a deleted token's trail. What a stream
//! sends and in which order is `crate::watch`'s; this file must never
//! filter or reorder events itself, and never send an event whose caller's
//! scope `crate::watch` has not checked.

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Status};

use super::tokens::token_id_in;
use super::{Service, convert};
use crate::auth::caller;
use crate::error::Error;
use crate::proto as pb;
use crate::query::{Pager, page_size};
use crate::watch::{Filter, Notice, Start};

pub(super) type EventStream = Pin<Box<dyn Stream<Item = Result<pb::EncodedEvent, Status>> + Send>>;

impl Service {
    pub(super) async fn watch(
        &self,
        request: Request<pb::WatchTokensRequest>,
    ) -> Result<EventStream, Error> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let start_revision = convert::revision_from("start_revision", r.start_revision)?;
        let start = match (r.send_initial, start_revision) {
            (true, 0) => Start::Snapshot,
            (true, _) => {
                return Err(Error::invalid(
                    "start_revision",
                    "cannot be combined with send_initial: a snapshot starts at the current revision",
                ));
            }
            (false, 0) => Start::Now,
            (false, n) => Start::At(n),
        };
        let account = self.scope(&caller, &r.account_id)?;
        let kinds = r
            .types
            .iter()
            .map(|&t| convert::event_kind_from(t))
            .collect::<Result<_, _>>()?;
        let filter = Filter {
            account,
            kinds,
            credential: Some(caller),
        };
        let stream = self.watchers.open(filter, start).await?;
        let (encoded, store) = (self.encoded.clone(), self.store.clone());
        let stream = stream.map(move |item| match item {
            Ok(Notice::Change(event)) => Ok(encoded.get(&event)),
            Ok(other) => Ok(pb::EncodedEvent::new(&convert::notice(&other, |id| {
                store.last_access(id)
            }))),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Box::pin(stream))
    }

    pub(super) async fn token_events(
        &self,
        request: Request<pb::ListTokenEventsRequest>,
    ) -> Result<pb::ListTokenEventsResponse, Error> {
        let id = token_id_in("token_id", &request.get_ref().token_id)?;
        let caller = self.authorize_token(&request, &id)?;
        let r = request.into_inner();
        let size = page_size(r.page_size)?;
        // A tombstone's trail ends in the tombstone: operators only, as with
        // show_deleted.
        let found = match self.store.state().token(&id) {
            Some(_) => true,
            None => caller.is_operator() && self.store.tombstone(&id).await?.is_some(),
        };
        if !found {
            return Err(Error::token_not_found(&id));
        }
        // Pages go back in time: a page token is the last revision shown.
        let pager = Pager::new(self.store.page_key(), &["token_events", id.as_str()]);
        let before = match pager.decode(&r.page_token)? {
            None => 0,
            Some(rev) => rev
                .parse()
                .map_err(|_| Error::Internal("a signed page token without a revision".into()))?,
        };
        let mut events = self.store.token_events(&id, before, size + 1).await?;
        // After the read, which may have learnt of a compaction.
        let head = self.store.state().revision();
        let oldest_revision = self.store.oldest_revision(head).await? as i64;
        let next_page_token = if events.len() > size {
            events.truncate(size);
            events
                .last()
                .map(|e| pager.encode(&e.revision.to_string()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListTokenEventsResponse {
            events: events.iter().map(|e| convert::change_event(e)).collect(),
            next_page_token,
            oldest_revision,
        })
    }
}
