//! [`TokenCache`], a verifier that lives in the caller's process.
//!
//! Owns a copy of the tokens one credential may see, kept current by a
//! `WatchTokens` stream: it lists them (the stream's `send_initial` snapshot,
//! which, unlike `ListTokens`, comes with the revision it reflects), then
//! follows every change. A gateway verifies each request's secret against
//! that copy in memory: the first time it meets a secret it asks the server
//! (`VerifyToken`; the cache never sees secret hashes otherwise), then it
//! answers locally, applying deletions and disables as they stream in.
//!
//! On a broken stream it reconnects and resumes from the revision after the
//! last one it heard, so it misses nothing; when the server has compacted
//! that far (`REVISION_COMPACTED`), it lists again (both are
//! [`Follow`]'s, the one resumable watch of this crate). While disconnected it
//! keeps answering for at most `max_staleness`, then refuses (fails closed):
//! a cache that cannot hear deletions must not vouch for a token.
//!
//! It must never keep or log a plain secret (only SHA-256 hashes of those
//! the server confirmed), nor answer `Valid` for a token whose deletion it
//! has heard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;
use tonic::Status;
use tonic::transport::Channel;

use super::watch::{Backoff, Follow, Start, Update};
use super::{Bearer, TokenClient};
use crate::proto::{self as pb, token_service_client::TokenServiceClient};
use crate::secret::{self, SecretHash};

#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// The account to follow; empty: every account the credential may see.
    pub account_id: String,
    /// How long the cache keeps answering after its stream broke.
    pub max_staleness: Duration,
    /// Wait between reconnection attempts.
    pub retry: Duration,
    /// A confirmed secret is confirmed with the server again after this
    /// long. Deletions and token disables reach the cache on the stream at
    /// once; an account's disable has no token event, and takes this long.
    /// While disconnected (its stream down, and the server not answering),
    /// the cache answers from memory instead, within `max_staleness`.
    pub revalidate_after: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            account_id: String::new(),
            max_staleness: Duration::from_secs(30),
            retry: Duration::from_millis(500),
            revalidate_after: Duration::from_secs(60),
        }
    }
}

/// What a secret is worth, as the cache (or, on first sight, the server)
/// decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid {
        token_id: String,
        account_id: String,
        modules: Vec<String>,
        /// When the token stops being valid (the cache answers `Expired`
        /// from then on); `None`: never.
        expire_time: Option<SystemTime>,
    },
    Malformed,
    NotFound,
    Disabled,
    AccountDisabled,
    /// Past the token's `expire_time`: decided from the cache's own clock,
    /// at the instant, before the deletion that follows is heard.
    Expired,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Fail closed: disconnected for longer than `max_staleness`.
    #[error("token cache stale: disconnected for {0:?}")]
    Stale(Duration),
    /// The server could not be asked about a secret the cache has not met.
    #[error("verifying with the server: {0}")]
    Server(Status),
}

/// How the cache has been kept current, for operators and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Verifications the server was asked for (secrets met for the first
    /// time, or due for revalidation), answered or not.
    pub server_verifications: u64,
    /// Reconnections that resumed from the last revision heard.
    pub resumes: u64,
    /// Full listings after the first (the resume point was compacted).
    pub resyncs: u64,
}

/// What the cache knows of a secret it met before.
struct Local {
    verdict: Verdict,
    /// Confirmed longer than `revalidate_after` ago: the server is asked
    /// again (an account's disable has no token event), and this stands
    /// only while the cache is disconnected (its stream down, and the
    /// server not answering), within `max_staleness`.
    due: bool,
}

/// A token as the cache needs it.
struct Entry {
    account_id: String,
    status: i32,
    modules: Vec<String>,
    expire_time: Option<SystemTime>,
}

#[derive(Default)]
struct Known {
    /// Every token the stream has told of; deleted ones stay as tombstones
    /// (ids are never reused), so a deleted secret is refused locally.
    tokens: HashMap<String, Entry>,
    /// Hashes of secrets the server confirmed, to the token they belong to.
    secrets: HashMap<SecretHash, (String, Instant)>,
}

struct Shared {
    known: RwLock<Known>,
    /// The last revision heard; `None` until the first listing completed.
    revision: watch::Sender<Option<i64>>,
    /// Since when the stream is down; `None` while connected.
    down_since: Mutex<Option<Instant>>,
    server_verifications: AtomicU64,
    resumes: AtomicU64,
    resyncs: AtomicU64,
}

/// A token verifier kept current by a watch stream. Cheap to clone; the
/// stream stops when the last clone is dropped.
#[derive(Clone)]
pub struct TokenCache {
    shared: Arc<Shared>,
    client: TokenClient,
    config: Arc<CacheConfig>,
    _follower: Arc<AbortOnDropHandle<()>>,
}

impl TokenCache {
    /// Lists the tokens `credential` may see and starts following changes.
    /// Returns once the listing is complete, or the server's refusal (a bad
    /// credential, an account it may not watch) if the first attempt failed.
    pub async fn connect(
        channel: Channel,
        credential: &str,
        config: CacheConfig,
    ) -> Result<TokenCache, Status> {
        let bearer = Bearer::new(credential)
            .ok_or_else(|| Status::invalid_argument("the credential is not printable ASCII"))?;
        let client = TokenServiceClient::with_interceptor(channel, bearer);
        let shared = Arc::new(Shared {
            known: RwLock::new(Known::default()),
            revision: watch::channel(None).0,
            down_since: Mutex::new(None),
            server_verifications: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
        });
        let config = Arc::new(config);
        // The first stream opens here, so that its refusal reaches the caller.
        let follow = Follow::new(client.clone(), Start::Listing)
            .account(config.account_id.clone())
            .backoff(Backoff::constant(config.retry))
            .connect()
            .await?;
        let follower = tokio::spawn(keep_current(shared.clone(), follow));
        let guard = AbortOnDropHandle::new(follower);
        let mut revision = shared.revision.subscribe();
        revision
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Status::unavailable("the watch stream ended before the listing"))?;
        Ok(TokenCache {
            shared,
            client,
            config,
            _follower: Arc::new(guard),
        })
    }

    /// Verifies a secret: in memory for secrets met before, by the server
    /// for new ones. Fails closed once disconnected past `max_staleness`.
    pub async fn verify(&self, plain: &str) -> Result<Verdict, CacheError> {
        self.disconnected()?;
        if secret::parse(plain).is_err() {
            return Ok(Verdict::Malformed);
        }
        let hash = secret::hash(plain);
        if let Some(Local {
            verdict,
            due: false,
        }) = self.local(&hash)
        {
            return Ok(verdict);
        }
        self.shared
            .server_verifications
            .fetch_add(1, Ordering::Relaxed);
        let mut client = self.client.clone();
        let call = client.verify_token(pb::VerifyTokenRequest {
            secret: plain.to_string(),
        });
        // Bounded: past `max_staleness` nothing the cache knows still
        // stands, and a gateway must not wait on a connection that died
        // silently for as long as TCP takes to notice.
        let asked = tokio::time::timeout(self.config.max_staleness, call).await;
        let r = match asked {
            Ok(Ok(r)) => r.into_inner(),
            failed => {
                // With its stream down too, the cache is disconnected: it
                // answers what it knows, within `max_staleness`, as it does
                // for secrets not yet due (a gateway must not refuse every
                // known secret through a short tokend restart). Read again
                // after the call: the stream may have applied a delete, or
                // the bound passed, meanwhile. With the stream up, the
                // server's refusal stands (a fenced replica refuses because
                // it may be missing a delete).
                if self.disconnected()?
                    && let Some(Local { verdict, .. }) = self.local(&hash)
                {
                    return Ok(verdict);
                }
                return Err(CacheError::Server(match failed {
                    Ok(Err(status)) => status,
                    _ => {
                        Status::deadline_exceeded("the server did not answer within max_staleness")
                    }
                }));
            }
        };
        let result = pb::VerifyResult::try_from(r.result).unwrap_or_default();
        // Remember the secret when the decision rests on the token alone,
        // which the stream keeps current; an account's status it does not.
        if let (
            pb::VerifyResult::Valid | pb::VerifyResult::Disabled | pb::VerifyResult::Expired,
            Some(t),
        ) = (result, &r.token)
        {
            let mut known = self.shared.known.write().expect("cache lock");
            known.secrets.insert(hash, (t.id.clone(), Instant::now()));
        }
        Ok(match (result, r.token) {
            (pb::VerifyResult::Valid, Some(t)) => Verdict::Valid {
                expire_time: t.expire_time.and_then(|at| SystemTime::try_from(at).ok()),
                token_id: t.id,
                account_id: t.account_id,
                modules: t.modules,
            },
            (pb::VerifyResult::Disabled, _) => Verdict::Disabled,
            (pb::VerifyResult::AccountDisabled, _) => Verdict::AccountDisabled,
            (pb::VerifyResult::Expired, _) => Verdict::Expired,
            (pb::VerifyResult::Malformed, _) => Verdict::Malformed,
            _ => Verdict::NotFound,
        })
    }

    /// Whether the stream is down; refused (fail closed) once it has been
    /// for longer than `max_staleness`.
    fn disconnected(&self) -> Result<bool, CacheError> {
        match *self.shared.down_since.lock().expect("cache lock") {
            Some(since) if since.elapsed() > self.config.max_staleness => {
                Err(CacheError::Stale(since.elapsed()))
            }
            since => Ok(since.is_some()),
        }
    }

    /// The answer from memory, if the cache knows this secret's token.
    fn local(&self, hash: &SecretHash) -> Option<Local> {
        let known = self.shared.known.read().expect("cache lock");
        let (id, confirmed) = known.secrets.get(hash)?;
        let due = confirmed.elapsed() > self.config.revalidate_after;
        // Confirmed by the server but not yet heard on the stream (a token
        // created a moment ago): ask again rather than guess.
        let entry = known.tokens.get(id)?;
        let status = pb::TokenStatus::try_from(entry.status);
        let live = matches!(
            status,
            Ok(pb::TokenStatus::Active | pb::TokenStatus::Disabled)
        );
        let verdict = if live && entry.expire_time.is_some_and(|at| at <= SystemTime::now()) {
            Verdict::Expired
        } else {
            match status {
                Ok(pb::TokenStatus::Active) => Verdict::Valid {
                    token_id: id.clone(),
                    account_id: entry.account_id.clone(),
                    modules: entry.modules.clone(),
                    expire_time: entry.expire_time,
                },
                Ok(pb::TokenStatus::Disabled) => Verdict::Disabled,
                _ => Verdict::NotFound,
            }
        };
        Some(Local { verdict, due })
    }

    /// The last revision the cache has applied.
    pub fn revision(&self) -> i64 {
        self.shared.revision.borrow().unwrap_or(0)
    }

    /// Waits until the cache has applied `revision` (e.g. a delete's): from
    /// then on its answers include that change.
    pub async fn caught_up(&self, revision: i64) {
        let mut rx = self.shared.revision.subscribe();
        // The sender lives in `shared`, which `self` holds: never closed.
        let _ = rx.wait_for(|r| r.is_some_and(|r| r >= revision)).await;
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            server_verifications: self.shared.server_verifications.load(Ordering::Relaxed),
            resumes: self.shared.resumes.load(Ordering::Relaxed),
            resyncs: self.shared.resyncs.load(Ordering::Relaxed),
        }
    }
}

impl Shared {
    fn mark_up(&self) {
        *self.down_since.lock().expect("cache lock") = None;
    }

    fn mark_down(&self) {
        self.down_since
            .lock()
            .expect("cache lock")
            .get_or_insert_with(Instant::now);
    }

    /// Every change up to `revision` is applied.
    fn applied(&self, revision: i64) {
        self.revision.send_modify(|r| {
            *r = Some(r.map_or(revision, |r| r.max(revision)));
        });
    }
}

/// Applies what the follower hears, for as long as the cache lives. A
/// listing (SNAPSHOT events, then SYNCED) is collected apart and swapped in
/// whole at SYNCED, so that answers never come from half a listing. The
/// cache counts as connected once a stream resumed, or a listing is
/// complete: until then, deletions made while it was away are not known.
async fn keep_current(shared: Arc<Shared>, mut follow: Follow) {
    let mut listing: Option<HashMap<String, Entry>> = None;
    loop {
        match follow.next().await {
            Update::Snapshot(event) => {
                if let Some(t) = event.token {
                    listing
                        .get_or_insert_with(HashMap::new)
                        .insert(t.id.clone(), entry(t));
                }
            }
            Update::Synced(event) => {
                let fresh = listing.take().unwrap_or_default();
                shared.known.write().expect("cache lock").relisted(fresh);
                shared.mark_up();
                shared.applied(event.revision);
            }
            Update::Change(event) => {
                if let Some(t) = event.token {
                    let mut known = shared.known.write().expect("cache lock");
                    known.tokens.insert(t.id.clone(), entry(t));
                }
                shared.applied(event.revision);
            }
            // Nothing changed up to its revision.
            Update::Progress(event) => shared.applied(event.revision),
            // The server replays what was missed, in order, before anything newer.
            Update::Resumed { .. } => {
                shared.resumes.fetch_add(1, Ordering::Relaxed);
                shared.mark_up();
            }
            // Fell behind the server's history: a listing follows at once.
            Update::Relisting { from } => {
                listing = None;
                shared.mark_down();
                shared.resyncs.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(from, "token cache: resume point compacted; listing again");
            }
            Update::Disconnected { status, .. } | Update::OpenFailed { status, .. } => {
                listing = None;
                shared.mark_down();
                tracing::debug!(%status, "token cache: watch stream interrupted");
            }
        }
    }
}

impl Known {
    /// Takes a complete listing in. Tokens known before and not listed now
    /// were deleted while the cache could not hear: they stay as
    /// tombstones, so that their secrets are refused locally.
    fn relisted(&mut self, fresh: HashMap<String, Entry>) {
        for (id, old) in self.tokens.iter_mut() {
            if !fresh.contains_key(id) {
                old.status = pb::TokenStatus::Deleted as i32;
            }
        }
        self.tokens.extend(fresh);
    }
}

fn entry(t: pb::Token) -> Entry {
    Entry {
        account_id: t.account_id,
        status: t.status,
        modules: t.modules,
        expire_time: t.expire_time.and_then(|at| SystemTime::try_from(at).ok()),
    }
}
