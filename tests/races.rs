//! Races, checked against a sequential model.
//!
//! Each round releases a dozen calls at once on a few tokens of one account:
//! deletes (with the round's etag, a wrong one or none, some `allow_missing`),
//! renames, disables, enables, and creates in the same account; a watcher
//! opens mid-round from the round's first revision, so it switches from
//! replay to live while deletes are in flight.
//!
//! The server's answer must be explainable by ONE order of the calls:
//! - the events of the round, in revision order, are exactly the calls that
//!   answered "changed", each the change the model makes from the state
//!   before it (the model decides NOT_FOUND, ABORTED, FAILED_PRECONDITION
//!   and no-ops in the order the server checks them);
//! - every call that failed or changed nothing is explained by a state the
//!   model passed through while that call was in flight (a state is
//!   possible for a call only if it could have been current between the
//!   call's send and its answer);
//! - the final state is the model's, and every watcher heard exactly the log.
//!
//! Seeded: the seed is printed; `TOKEND_RACE_SEED=<n>` replays one run.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokend::proto as pb;
use tonic::Code;

const ROUNDS: usize = 300;
const CALLS_PER_ROUND: usize = 12;

#[derive(Clone, Debug)]
enum Act {
    Create { account: String, name: String },
    Delete { allow_missing: bool },
    Rename(String),
    Disable,
    Enable,
}

#[derive(Clone, Debug)]
struct Call {
    act: Act,
    /// Empty for creates.
    id: String,
    /// Empty: unconditional.
    etag: String,
}

/// What a call did, as the server said or the model predicts.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// A new version of the token; the event names it.
    Changed(Version),
    /// OK, and nothing changed: a rename to the same name (answered with
    /// the token as it is), an allow_missing delete of a missing token.
    Unchanged(Option<Version>),
    Failed(Code),
}

/// The model's view of a token: what a sequential implementation knows.
#[derive(Clone, Debug, PartialEq)]
struct Version {
    id: String,
    status: i32,
    name: String,
    revision: i64,
}

impl Version {
    fn of(t: &pb::Token) -> Version {
        Version {
            id: t.id.clone(),
            status: t.status,
            name: t.name.clone(),
            revision: t.revision,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Model {
    tokens: BTreeMap<String, (Version, String)>, // id → (version, etag)
}

const ACTIVE: i32 = pb::TokenStatus::Active as i32;
const DISABLED: i32 = pb::TokenStatus::Disabled as i32;
const DELETED: i32 = pb::TokenStatus::Deleted as i32;

impl Model {
    /// What a sequential server does with `call` in this state. For a create
    /// the id is the one the server chose (ids are random, the model cannot
    /// know them); it must be new.
    fn step(&self, call: &Call, created_id: &str) -> Outcome {
        if let Act::Create { name, .. } = &call.act {
            assert!(
                !self.tokens.contains_key(created_id),
                "{created_id} reissued"
            );
            return Outcome::Changed(Version {
                id: created_id.to_string(),
                status: ACTIVE,
                name: name.clone(),
                revision: 1,
            });
        }
        let live = self
            .tokens
            .get(&call.id)
            .filter(|(v, _)| v.status != DELETED);
        let Some((v, etag)) = live else {
            return match call.act {
                Act::Delete {
                    allow_missing: true,
                } => Outcome::Unchanged(None),
                _ => Outcome::Failed(Code::NotFound),
            };
        };
        if !call.etag.is_empty() && call.etag != *etag {
            return Outcome::Failed(Code::Aborted);
        }
        let mut next = v.clone();
        match &call.act {
            Act::Create { .. } => unreachable!(),
            Act::Delete { .. } => next.status = DELETED,
            Act::Rename(name) if *name == v.name => return Outcome::Unchanged(Some(v.clone())),
            Act::Rename(name) => next.name = name.clone(),
            Act::Disable if v.status != ACTIVE => return Outcome::Failed(Code::FailedPrecondition),
            Act::Disable => next.status = DISABLED,
            Act::Enable if v.status != DISABLED => {
                return Outcome::Failed(Code::FailedPrecondition);
            }
            Act::Enable => next.status = ACTIVE,
        }
        next.revision += 1;
        Outcome::Changed(next)
    }

    fn apply(&mut self, t: &pb::Token) {
        self.tokens
            .insert(t.id.clone(), (Version::of(t), t.etag.clone()));
    }
}

/// A call and the server's answer, with when it was sent and answered.
#[derive(Debug)]
struct Done {
    call: Call,
    sent: Instant,
    answered: Instant,
    /// The token in an OK answer (a change, or a no-op rename).
    token: Option<pb::Token>,
    /// A delete's answer names its event's revision.
    revision: i64,
    /// None: OK.
    code: Option<Code>,
}

impl Done {
    /// What the call said, read as a no-op or a refusal.
    fn unchanged_or_failed(&self) -> Outcome {
        match self.code {
            Some(code) => Outcome::Failed(code),
            None => Outcome::Unchanged(self.token.as_ref().map(Version::of)),
        }
    }
}

async fn perform(mut c: Tokens, call: Call) -> Done {
    let sent = Instant::now();
    let (id, etag) = (call.id.clone(), call.etag.clone());
    let r: Result<(Option<pb::Token>, i64), tonic::Status> = match &call.act {
        Act::Create { account, name } => c
            .create_token(pb::CreateTokenRequest {
                account_id: account.clone(),
                name: name.clone(),
                modules: vec!["commerce".into()],
                ..Default::default()
            })
            .await
            .map(|r| (r.into_inner().token, 0)),
        Act::Delete { allow_missing } => c
            .delete_token(pb::DeleteTokenRequest {
                id,
                etag,
                allow_missing: *allow_missing,
                validate_only: false,
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.token, r.revision)
            }),
        Act::Rename(name) => c
            .update_token(pb::UpdateTokenRequest {
                token: Some(pb::Token {
                    id,
                    name: name.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into()],
                }),
                etag,
            })
            .await
            .map(|r| (Some(r.into_inner()), 0)),
        Act::Disable => c
            .disable_token(pb::DisableTokenRequest { id, etag })
            .await
            .map(|r| (Some(r.into_inner()), 0)),
        Act::Enable => c
            .enable_token(pb::EnableTokenRequest { id, etag })
            .await
            .map(|r| (Some(r.into_inner()), 0)),
    };
    let answered = Instant::now();
    let (token, revision, code) = match r {
        Err(s) => (None, 0, Some(s.code())),
        Ok((token, revision)) => (token, revision, None),
    };
    Done {
        call,
        sent,
        answered,
        token,
        revision,
        code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_agree_with_a_sequential_model() {
    let seed: u64 = std::env::var("TOKEND_RACE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("race test seed {seed}: rerun with TOKEND_RACE_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let s = TestServer::start().await;
    let account = create_account(&s, ALL_MODULES).await.id;
    let mut c = s.tokens().await;
    let base = head(&mut c).await;
    // Several connections, so calls race in the server, not in one socket.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(s.tokens().await);
    }
    let mut log_stream = watch_from(&mut c, base + 1).await;

    let mut model = Model::default();
    let mut round_base = base;
    let (mut changes, mut refusals, mut no_ops) = (0, 0, 0);
    for round in 0..ROUNDS {
        let context = format!("seed {seed}, round {round}");
        let calls = schedule(&mut rng, &model, &account);
        let gate = Arc::new(tokio::sync::Barrier::new(calls.len() + 1));
        let mut running = tokio::task::JoinSet::new();
        for (i, call) in calls.into_iter().enumerate() {
            let (c, gate) = (clients[i % clients.len()].clone(), gate.clone());
            running.spawn(async move {
                gate.wait().await;
                perform(c, call).await
            });
        }
        // A stream opened while the calls land: replay, then live.
        let switcher = {
            let mut c = clients[0].clone();
            let delay = Duration::from_micros(rng.random_range(0..3000));
            let from = round_base + 1;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                watch_from(&mut c, from).await
            })
        };
        gate.wait().await;
        let mut done = Vec::new();
        while let Some(d) = running.join_next().await {
            done.push(d.unwrap());
        }

        // The round's log, from the stream that has been open all along.
        let round_head = head(&mut c).await;
        let mut events = Vec::new();
        while (events
            .last()
            .map_or(round_base, |e: &pb::TokenEvent| e.revision))
            < round_head
        {
            events.push(next_change(&mut log_stream).await);
        }
        let mut prev = round_base;
        for e in &events {
            assert_follows(prev, e.revision, &format!("{context}: gap in the log"));
            prev = e.revision;
        }
        let mut switcher = switcher.await.unwrap();
        for e in &events {
            let heard = next_change(&mut switcher).await;
            assert_eq!(&heard, e, "{context}: the mid-round stream heard otherwise");
        }

        let states = linearize(&model, &done, &events, &context);
        model = states.last().unwrap().1.clone();
        round_base = round_head;
        changes += events.len();
        let refused = done.iter().filter(|d| d.code.is_some()).count();
        refusals += refused;
        no_ops += done.len() - events.len() - refused;
    }

    // The final state is the model's.
    for (id, (v, etag)) in &model.tokens {
        let t = get(&mut c, id, true).await.unwrap();
        assert_eq!(Version::of(&t), *v, "seed {seed}: final state of {id}");
        assert_eq!(t.etag, *etag, "seed {seed}: final etag of {id}");
    }
    println!(
        "{ROUNDS} rounds of {CALLS_PER_ROUND} concurrent calls: {changes} changes, \
         {refusals} refusals, {no_ops} no-ops, all explained by one order"
    );
    assert!(changes > ROUNDS && refusals > ROUNDS, "the rounds raced");
}

/// A dozen calls on at most three live tokens (plus creates in the same
/// account), with etags from the state the round starts in, wrong ones, or
/// none.
fn schedule(rng: &mut StdRng, model: &Model, account: &str) -> Vec<Call> {
    let live: Vec<(&String, &String)> = model
        .tokens
        .iter()
        .filter(|(_, (v, _))| v.status != DELETED)
        .map(|(id, (_, etag))| (id, etag))
        .collect();
    let targets: Vec<_> = live.iter().rev().take(3).collect();
    // Deleted ones too, now and then: deletes and changes of a tombstone.
    let tombstone = model
        .tokens
        .iter()
        .find(|(_, (v, _))| v.status == DELETED)
        .map(|(id, (_, etag))| (id, etag));
    (0..CALLS_PER_ROUND)
        .map(|_| {
            let pick = rng.random_range(0..10);
            if targets.is_empty() || pick < 2 {
                return Call {
                    act: Act::Create {
                        account: account.to_string(),
                        name: format!("t{}", rng.random_range(0..1000)),
                    },
                    id: String::new(),
                    etag: String::new(),
                };
            }
            let (id, etag) = match tombstone {
                Some(t) if pick == 2 => t,
                _ => *targets[rng.random_range(0..targets.len())],
            };
            let act = match rng.random_range(0..8) {
                0..=2 => Act::Delete {
                    allow_missing: rng.random_bool(0.3),
                },
                3 | 4 => Act::Rename(format!("n{}", rng.random_range(0..3))),
                5 => Act::Enable,
                _ => Act::Disable,
            };
            let etag = match rng.random_range(0..3) {
                0 => etag.clone(),
                1 => "0123456789abcdef".into(),
                _ => String::new(),
            };
            Call {
                act,
                id: id.clone(),
                etag,
            }
        })
        .collect()
}

/// The states the model passes through, each with the index of the call
/// that led to it (None: the round's start).
type States = Vec<(Option<usize>, Model)>;

/// Finds an order of the calls that explains the round: the events, each
/// paired with a call answered with that very token version which the model,
/// from the state before, changes into it; and every other call explained
/// by [`explain`]. A version can be the answer of two calls (a rename and a
/// same-name rename): which one authored it is a choice, so choices are
/// searched (rounds are small) until one explains everything.
fn linearize(start: &Model, done: &[Done], events: &[pb::TokenEvent], context: &str) -> States {
    let mut states = vec![(None, start.clone())];
    search(&mut states, done, events).unwrap_or_else(|why| panic!("{context}: {why}"));
    states
}

fn search(states: &mut States, done: &[Done], events: &[pb::TokenEvent]) -> Result<(), String> {
    let Some((e, rest)) = events.split_first() else {
        // Every call whose answer says it changed something has its event.
        let changers: Vec<usize> = states.iter().filter_map(|(by, _)| *by).collect();
        for (i, d) in done.iter().enumerate() {
            let changed = d.revision > 0 || matches!(d.call.act, Act::Create { .. });
            if changed && d.code.is_none() && !changers.contains(&i) {
                return Err(format!("{:?} answered changed, no event", d.call));
            }
        }
        return explain(states, done);
    };
    let t = e.token.as_ref().expect("change events carry the token");
    let model = states.last().unwrap().1.clone();
    let mut why = format!("event {e:?} is not what the model makes of any call answered with it");
    for (i, d) in done.iter().enumerate() {
        let free = !states.iter().any(|(by, _)| *by == Some(i));
        let answered_with_it =
            d.token.as_ref() == Some(t) && (d.revision == 0 || d.revision == e.revision);
        if !(free && answered_with_it)
            || model.step(&d.call, &t.id) != Outcome::Changed(Version::of(t))
        {
            continue;
        }
        let mut next = model.clone();
        next.apply(t);
        states.push((Some(i), next));
        match search(states, done, rest) {
            Ok(()) => return Ok(()),
            Err(w) => why = w,
        }
        states.pop();
    }
    Err(why)
}

/// Every refusal and no-op must match the model in a state that could have
/// been current while the call was in flight: state j is current from its
/// call's commit to the next one's, and a commit lies between its call's
/// send and answer.
fn explain(states: &States, done: &[Done]) -> Result<(), String> {
    let changers: Vec<usize> = states.iter().filter_map(|(by, _)| *by).collect();
    for (i, d) in done.iter().enumerate() {
        if changers.contains(&i) {
            continue;
        }
        let said = d.unchanged_or_failed();
        let possible = states.iter().enumerate().any(|(j, (by, model))| {
            let begun = by.is_none_or(|i| done[i].sent <= d.answered);
            let not_ended = states
                .get(j + 1)
                .is_none_or(|(next, _)| d.sent <= done[next.unwrap()].answered);
            begun && not_ended && model.step(&d.call, "") == said
        });
        if !possible {
            return Err(format!(
                "{:?} answered {said:?}, which no state while it ran explains",
                d.call
            ));
        }
    }
    Ok(())
}
