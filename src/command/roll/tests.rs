//! Rolls in [`plan`] and [`State`], on the test world's own clock: what the
//! successor inherits, how the old token retires (at the end of the grace,
//! or at once), and every refusal.

use std::time::{Duration, SystemTime};

use super::*;
use crate::command::{Command, NewAccount, NewToken};
use crate::domain::{AccountId, AccountStatus, AccountType};
use crate::error::reason::*;
use crate::secret::Secret;
use crate::state::Standing;
use crate::state::testkit::{World, modules, reason_of};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

fn roll(id: &TokenId, grace: Duration) -> Command {
    Command::RollToken(Roll {
        id: id.clone(),
        etag: None,
        grace,
        expiry: None,
    })
}

fn account(w: &mut World, max: Option<Duration>) -> AccountId {
    let (change, _) = w.commit(Command::CreateAccount(NewAccount {
        name: "Acme".into(),
        kind: AccountType::Client,
        modules: modules(&["billing", "helpdesk"]),
        max_token_lifetime: max,
    }));
    match change.subject {
        Subject::Account(a) => a.id,
        Subject::Token(_) => unreachable!("an account was created"),
    }
}

fn token(w: &mut World, account: &AccountId, expiry: Option<Expiry>) -> (Token, Secret) {
    let (change, secret) = w.commit(Command::CreateToken(NewToken {
        account_id: account.clone(),
        name: "deploy bot".into(),
        description: "ships the release".into(),
        icon: Some("https://example.com/bot.png".into()),
        modules: modules(&["billing"]),
        expiry,
        preset: None,
    }));
    match change.subject {
        Subject::Token(t) => (t, secret.expect("a fresh token has a secret")),
        Subject::Account(_) => unreachable!("a token was created"),
    }
}

/// Commits a roll: (successor, old token after, the successor's secret).
fn rolled(w: &mut World, cmd: Command) -> (Token, Token, Secret) {
    let first = w.state.revision() + 1;
    let (changes, secret) = w.commit_all(cmd);
    let [created, retired] = &changes[..] else {
        panic!("a roll plans two changes, got {}", changes.len())
    };
    // The successor first: at no revision is neither token usable.
    assert_eq!(created.kind, EventKind::Created);
    let events: Vec<_> = w.log.iter().rev().take(2).rev().collect();
    assert_eq!(events[0].revision, first);
    assert_eq!(events[1].revision, first + 1);
    let (Subject::Token(s), Subject::Token(o)) = (&created.subject, &retired.subject) else {
        panic!("a roll changes two tokens")
    };
    (
        s.clone(),
        o.clone(),
        secret.expect("the successor has a secret"),
    )
}

fn standing(w: &World, secret: &Secret, at: SystemTime) -> Standing {
    w.state.verify(secret.expose(), at).standing
}

#[test]
fn a_roll_with_grace_makes_a_successor_and_ends_the_old_secret_when_the_grace_ends() {
    let mut w = World::default();
    let acc = account(&mut w, None);
    let (old, old_secret) = token(&mut w, &acc, None);
    let rolled_at = w.now;
    let (successor, after, secret) = rolled(&mut w, roll(&old.id, HOUR));

    // The successor: a new id and secret, the same everything else.
    assert_ne!(successor.id, old.id);
    assert_eq!(successor.replaces.as_ref(), Some(&old.id));
    assert_eq!(
        (
            &successor.account_id,
            &successor.name,
            &successor.description,
            &successor.icon,
            &successor.modules
        ),
        (
            &old.account_id,
            &old.name,
            &old.description,
            &old.icon,
            &old.modules
        )
    );
    assert_eq!(successor.expire_time, None, "the old one never expired");
    assert_eq!(w.log[w.log.len() - 2].kind, EventKind::Created);

    // The old token: replaced, expiring at the end of the grace.
    assert_eq!(after.replaced_by.as_ref(), Some(&successor.id));
    assert_eq!(after.expire_time, Some(rolled_at + HOUR));
    assert_eq!(after.revision, old.revision + 1);
    assert_eq!(w.log[w.log.len() - 1].kind, EventKind::Updated);

    // Both secrets work during the grace; then only the successor's.
    let during = rolled_at + HOUR - Duration::from_secs(1);
    assert_eq!(standing(&w, &old_secret, during), Standing::Valid);
    assert_eq!(standing(&w, &secret, during), Standing::Valid);
    assert_eq!(
        standing(&w, &old_secret, rolled_at + HOUR),
        Standing::Expired
    );
    assert_eq!(standing(&w, &secret, rolled_at + HOUR), Standing::Valid);
    let due: Vec<_> = w
        .state
        .expired_by(rolled_at + HOUR)
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(due, vec![old.id.clone()]);
}

#[test]
fn a_roll_without_grace_deletes_the_old_token_in_the_same_commit() {
    let mut w = World::default();
    let acc = account(&mut w, None);
    let (old, old_secret) = token(&mut w, &acc, None);
    let (successor, after, secret) = rolled(&mut w, roll(&old.id, Duration::ZERO));
    assert_eq!(after.status, TokenStatus::Deleted);
    assert_eq!(after.replaced_by.as_ref(), Some(&successor.id));
    assert!(after.audit.deleted.is_some());
    assert_eq!(w.log[w.log.len() - 1].kind, EventKind::Deleted);
    assert_eq!(w.state.secret_of(&old.id), None, "the old hash is erased");
    assert_eq!(standing(&w, &old_secret, w.now), Standing::NotFound);
    assert_eq!(standing(&w, &secret, w.now), Standing::Valid);
}

#[test]
fn a_grace_never_extends_the_old_token_and_the_successor_gets_its_lifetime_again() {
    let mut w = World::default();
    let acc = account(&mut w, None);
    let created = w.now;
    let (old, _) = token(&mut w, &acc, Some(Expiry::After(30 * DAY)));
    w.now = created + 29 * DAY + 23 * HOUR;
    let rolled_at = w.now;
    let (successor, after, _) = rolled(&mut w, roll(&old.id, 2 * DAY));
    assert_eq!(
        after.expire_time, old.expire_time,
        "not pushed past its own expiry"
    );
    assert_eq!(successor.expire_time, Some(rolled_at + 30 * DAY));
}

/// A token that lives to the last second tokend carries (the end of the
/// year 9999, as protobuf's `Timestamp` allows), rolled later: the
/// successor's default lifetime would run past it, and ends there instead
/// (past it, the answer would carry an instant no client can read). An
/// account limit too long to add to now (from a damaged or hand-made
/// record) gives the same, rather than a panic while planning.
#[test]
fn a_lifetime_that_runs_past_the_year_9999_ends_there() {
    let latest = SystemTime::UNIX_EPOCH + Duration::from_secs(crate::domain::LATEST_SECONDS);
    let mut w = World::default();
    let acc = account(&mut w, None);
    let (old, _) = token(&mut w, &acc, Some(Expiry::At(latest)));
    w.now += DAY;
    let (successor, _, _) = rolled(&mut w, roll(&old.id, HOUR));
    assert_eq!(successor.expire_time, Some(latest));

    let unbounded = account(&mut w, Some(Duration::MAX));
    let (forever, _) = token(&mut w, &unbounded, None);
    assert_eq!(forever.expire_time, Some(latest));
}

#[test]
fn the_successors_default_lifetime_stays_within_the_accounts_limit_and_an_asked_one_is_checked() {
    let mut w = World::default();
    let acc = account(&mut w, None);
    let (old, _) = token(&mut w, &acc, Some(Expiry::After(90 * DAY)));
    w.commit(Command::UpdateAccount {
        id: acc.clone(),
        etag: None,
        patch: crate::command::AccountPatch {
            max_token_lifetime: Some(Some(30 * DAY)),
            ..Default::default()
        },
    });
    let asked = |expiry| {
        Command::RollToken(Roll {
            id: old.id.clone(),
            etag: None,
            grace: HOUR,
            expiry: Some(expiry),
        })
    };
    assert_eq!(
        reason_of(&w.plan(&asked(Expiry::After(31 * DAY))).err().unwrap()),
        LIFETIME_EXCEEDED
    );
    let rolled_at = w.now;
    let (successor, _, _) = rolled(&mut w, roll(&old.id, HOUR));
    assert_eq!(successor.expire_time, Some(rolled_at + 30 * DAY));
}

#[test]
fn rolls_are_refused_with_a_precise_reason_and_plan_nothing() {
    let mut w = World::default();
    let acc = account(&mut w, None);
    let refusal = |w: &World, cmd: &Command| match w.plan(cmd) {
        Err(e) => reason_of(&e),
        Ok(_) => panic!("{cmd:?} was not refused"),
    };

    let (disabled, _) = token(&mut w, &acc, None);
    w.disable_token(&disabled.id);
    assert_eq!(refusal(&w, &roll(&disabled.id, HOUR)), TOKEN_NOT_ACTIVE);

    let (replaced, _) = token(&mut w, &acc, None);
    let (successor, _, _) = rolled(&mut w, roll(&replaced.id, HOUR));
    assert_eq!(refusal(&w, &roll(&replaced.id, HOUR)), TOKEN_REPLACED);
    // The successor itself may be rolled in turn.
    rolled(&mut w, roll(&successor.id, HOUR));

    let (deleted, _) = token(&mut w, &acc, None);
    w.delete_token(&deleted.id);
    assert_eq!(refusal(&w, &roll(&deleted.id, HOUR)), TOKEN_NOT_FOUND);

    let (expiring, _) = token(&mut w, &acc, Some(Expiry::After(HOUR)));
    let (stale, _) = token(&mut w, &acc, None);
    let stale_etag = stale.etag();
    w.commit(Command::UpdateToken {
        id: stale.id.clone(),
        etag: None,
        patch: crate::command::TokenPatch {
            name: Some("renamed".into()),
            ..Default::default()
        },
    });
    let with_etag = Command::RollToken(Roll {
        id: stale.id.clone(),
        etag: Some(stale_etag),
        grace: HOUR,
        expiry: None,
    });
    assert_eq!(refusal(&w, &with_etag), ETAG_MISMATCH);

    w.set_account_status(&acc, AccountStatus::Disabled);
    assert_eq!(refusal(&w, &roll(&stale.id, HOUR)), ACCOUNT_DISABLED);
    w.set_account_status(&acc, AccountStatus::Active);

    w.now += 2 * HOUR;
    assert_eq!(refusal(&w, &roll(&expiring.id, HOUR)), TOKEN_EXPIRED);
}
