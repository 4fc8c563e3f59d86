//! Which members the etcd client sends calls to: the ones that answer.
//!
//! The client spreads calls over the members at random (tonic's balancer
//! counts every connection as equally loaded). A member that hangs (a
//! paused or wedged process, or a network path to it that drops packets)
//! keeps its connections open, so it keeps its share of new calls, watches
//! and lease keep-alives, each lost until its own timeout: a read tried
//! again for 10 s could land on it at every try, and a replica whose lease
//! keep-alive it held stopped verifying for seconds at a time.
//!
//! So this task asks every member's gRPC health service (`grpc.health.v1`,
//! which etcd serves to anyone) once a second, on a connection of its own,
//! and takes a member that does not answer SERVING within
//! [`PROBE_TIMEOUT`] out of the client's rotation. It puts it back as soon
//! as it answers again. The streams a replica holds are then taken again
//! (they may be on that member); calls already sent are left to their own
//! bound (`ATTEMPT` in `mod.rs`).
//!
//! etcd answers a health check from memory: a member whose disk stalls, or
//! that lost its quorum, still answers SERVING and stays in the rotation;
//! calls to it are bounded and tried again (`ATTEMPT` in `mod.rs`).
//!
//! Each member's place in the rotation is a gauge,
//! `tokend_etcd_member_in_rotation{member}`, for operators to alert on.
//!
//! Owns the probes and which members are in the rotation. It must never
//! take a member out in a round where none answered: that says more about
//! this replica (starved of CPU, cut off) than about any member, and the
//! client's own calls would have nowhere left to go. Members come back
//! before others leave, so the rotation is never empty. It must never send
//! the etcd user's password or token: a probe carries only what every
//! connection does (the client certificate, with TLS).

use std::time::Duration;

use etcd_client::Client;
use futures_util::future::join_all;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::connect;
use crate::error::Error;
use crate::store::Endpoints;
use crate::telemetry;

/// How often every member is asked.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a member has to answer. etcd answers a health check from
/// memory, without the raft log or the disk: a loaded member answers in
/// milliseconds, and one that hangs never does.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One member as the rotation sees it.
pub(super) struct Member {
    /// As the client knows it: what it is added and removed by.
    url: String,
    health: HealthClient<Channel>,
    in_rotation: bool,
}

impl Member {
    /// Logs that this member left the rotation, and why.
    fn said_out(&self, why: &str) {
        tracing::warn!(member = %self.url, why = %why, "etcd member does not answer: out of rotation until it does");
    }

    /// Shows whether it is in the rotation to whoever scrapes the metrics:
    /// a member out of it for long is an operator's to look at, though
    /// this replica goes on without it.
    fn show(&self) {
        let member = self.url.clone();
        let value = if self.in_rotation { 1.0 } else { 0.0 };
        metrics::gauge!(telemetry::ETCD_MEMBER_IN_ROTATION, "member" => member).set(value);
    }
}

/// Every member, asked once (within [`PROBE_TIMEOUT`]) before the client
/// connects: only those that answered start in the rotation, so that a
/// member down or hanging as this replica starts gets none of its calls,
/// not even the login. When none answers, all start in it, and the
/// client's own failure says why (TLS, nothing listening). Empty for a
/// cluster of one: with a single member there is no other to send a call
/// to.
pub(super) async fn survey(endpoints: &Endpoints) -> Result<Vec<Member>, Error> {
    let mut members = probes(endpoints)?;
    let answers = join_all(members.iter().map(|m| probe(m.health.clone()))).await;
    if answers.iter().any(Result::is_ok) {
        for (member, answer) in members.iter_mut().zip(answers) {
            if let Err(why) = answer {
                member.in_rotation = false;
                member.said_out(&why);
            }
        }
    }
    members.iter().for_each(Member::show);
    Ok(members)
}

/// The members the client connects to: those in the rotation, or every
/// one when there are no probes.
pub(super) fn in_rotation(members: &[Member], endpoints: &Endpoints) -> Vec<String> {
    if members.is_empty() {
        return endpoints.urls();
    }
    members
        .iter()
        .filter(|m| m.in_rotation)
        .map(|m| m.url.clone())
        .collect()
}

/// A probe for each member, with the client's TLS (its CA, its
/// certificate), on connections made when first used; none for a cluster
/// of one.
fn probes(endpoints: &Endpoints) -> Result<Vec<Member>, Error> {
    let urls = endpoints.urls();
    if urls.len() < 2 {
        return Ok(Vec::new());
    }
    let tls = connect::tls(endpoints)?;
    urls.into_iter()
        .map(|url| {
            // The client's own pings: a connection to a member that went
            // silent is given up, so one that comes back is probed afresh.
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| Error::invalid("store", format!("{url}: {e}")))?
                .connect_timeout(PROBE_TIMEOUT)
                .http2_keep_alive_interval(connect::KEEP_ALIVE_EVERY)
                .keep_alive_timeout(connect::KEEP_ALIVE_TIMEOUT)
                .keep_alive_while_idle(true);
            if let Some(tls) = &tls {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| Error::invalid("store", format!("{url}: {e}")))?;
            }
            Ok(Member {
                url,
                health: HealthClient::new(endpoint.connect_lazy()),
                in_rotation: true,
            })
        })
        .collect()
}

/// Asks every member each [`PROBE_EVERY`], and keeps the client's rotation
/// to the ones that answered, for as long as the store is open. Each time
/// a member leaves it, `left` moves: the streams this replica holds (its
/// watches, its lease's keep-alive) may be on that member, and their
/// holders take them again, through the members left.
pub(super) async fn keep_rotation(
    client: Client,
    mut members: Vec<Member>,
    left: watch::Sender<u64>,
) {
    if members.is_empty() {
        // Holding `left` open: its receivers wait on it.
        return std::future::pending().await;
    }
    // The survey asked a moment ago: the first round is a period on.
    let start = tokio::time::Instant::now() + PROBE_EVERY;
    let mut every = tokio::time::interval_at(start, PROBE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Said once per spell, not every second.
    let mut none_answer = false;
    loop {
        every.tick().await;
        let answers = join_all(members.iter().map(|m| probe(m.health.clone()))).await;
        if answers.iter().all(Result::is_err) {
            if !none_answer {
                none_answer = true;
                let why = answers.into_iter().filter_map(Result::err).next();
                tracing::warn!(why = ?why, "no etcd member answers its health probe: the client's rotation is left as it is");
            }
            continue;
        }
        none_answer = false;
        // Back first, then out: the rotation is never left empty between.
        for (member, answer) in members.iter_mut().zip(&answers) {
            if member.in_rotation || answer.is_err() {
                continue;
            }
            match client.add_endpoint(&member.url).await {
                Ok(()) => {
                    member.in_rotation = true;
                    tracing::info!(member = %member.url, "etcd member answers again: back in rotation");
                }
                Err(e) => {
                    tracing::warn!(member = %member.url, error = %e, "etcd member answers again, but the client did not take it back")
                }
            }
        }
        for (member, answer) in members.iter_mut().zip(&answers) {
            let Err(why) = answer else { continue };
            if !member.in_rotation {
                continue;
            }
            match client.remove_endpoint(&member.url).await {
                Ok(()) => {
                    member.in_rotation = false;
                    left.send_modify(|n| *n += 1);
                    member.said_out(why);
                }
                Err(e) => {
                    tracing::warn!(member = %member.url, error = %e, "etcd member does not answer, but the client did not let it go")
                }
            }
        }
        members.iter().for_each(Member::show);
    }
}

/// Whether a member answered SERVING within [`PROBE_TIMEOUT`], or what it
/// did instead.
async fn probe(mut health: HealthClient<Channel>) -> Result<(), String> {
    let asked = health.check(HealthCheckRequest {
        service: String::new(),
    });
    match tokio::time::timeout(PROBE_TIMEOUT, asked).await {
        Ok(Ok(r)) if r.get_ref().status() == ServingStatus::Serving => Ok(()),
        Ok(Ok(r)) => Err(format!("health {:?}", r.get_ref().status())),
        Ok(Err(e)) => Err(format!("{:?}: {}", e.code(), e.message())),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}
