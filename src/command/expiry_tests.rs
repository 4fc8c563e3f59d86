//! Expiry in [`plan`] and [`State`], on the test world's own clock: where
//! the instant falls, what an account's limit allows, and what an expired
//! token still accepts (only its deletion).

use std::time::{Duration, SystemTime};

use super::*;
use crate::domain::AccountType;
use crate::error::reason::*;
use crate::state::Standing;
use crate::state::testkit::{World, modules, reason_of};

const HOUR: Duration = Duration::from_secs(3600);

fn create(account: &AccountId, expiry: Option<Expiry>) -> Command {
    Command::CreateToken(NewToken {
        account_id: account.clone(),
        name: "expiring".into(),
        description: String::new(),
        icon: None,
        modules: modules(&[]),
        expiry,
        preset: None,
    })
}

fn set_expiry(id: &TokenId, at: Option<SystemTime>) -> Command {
    Command::UpdateToken {
        id: id.clone(),
        etag: None,
        patch: TokenPatch {
            expire_time: Some(at),
            ..TokenPatch::default()
        },
    }
}

/// An account whose tokens may live `max` at most (none: no limit).
fn account(w: &mut World, max: Option<Duration>) -> AccountId {
    let (change, _) = w.commit(Command::CreateAccount(NewAccount {
        name: "Limited".into(),
        kind: AccountType::Client,
        modules: modules(&[]),
        max_token_lifetime: max,
    }));
    match change.subject {
        Subject::Account(a) => a.id,
        Subject::Token(_) => unreachable!("an account was created"),
    }
}

/// Creates a token and returns it with its secret.
fn token(w: &mut World, cmd: Command) -> (Token, crate::secret::Secret) {
    match w.commit(cmd) {
        (
            Change {
                subject: Subject::Token(t),
                ..
            },
            Some(secret),
        ) => (t, secret),
        _ => unreachable!("a token was created"),
    }
}

fn refusal(w: &World, cmd: &Command) -> &'static str {
    match w.plan(cmd) {
        Err(e) => reason_of(&e),
        Ok(_) => panic!("{cmd:?} was not refused"),
    }
}

#[test]
fn a_token_is_refused_from_its_expiry_instant_and_listed_as_due_until_deleted() {
    let mut w = World::default();
    let acc = account(&mut w, None);
    let created_at = w.now;
    let (t, secret) = token(&mut w, create(&acc, Some(Expiry::After(HOUR))));
    let at = created_at + HOUR;
    assert_eq!(
        t.expire_time,
        Some(at),
        "a lifetime counts from the commit's clock"
    );

    let standing = |w: &World, now| w.state.verify(secret.expose(), now).standing;
    assert_eq!(standing(&w, at - Duration::from_nanos(1)), Standing::Valid);
    assert_eq!(standing(&w, at), Standing::Expired);
    let due = |w: &World, now| -> Vec<TokenId> {
        w.state.expired_by(now).map(|t| t.id.clone()).collect()
    };
    assert!(due(&w, at - Duration::from_nanos(1)).is_empty());
    assert_eq!(due(&w, at), vec![t.id.clone()]);

    // From the instant on, only its deletion is accepted.
    w.now = at;
    assert_eq!(
        refusal(
            &w,
            &Command::DisableToken {
                id: t.id.clone(),
                etag: None
            }
        ),
        TOKEN_EXPIRED
    );
    assert_eq!(
        refusal(&w, &set_expiry(&t.id, Some(at + HOUR))),
        TOKEN_EXPIRED
    );
    w.delete_token(&t.id);
    assert!(due(&w, at + HOUR).is_empty(), "a tombstone is never due");
    assert_eq!(standing(&w, at), Standing::NotFound);
}

#[test]
fn an_accounts_limit_gives_a_default_expiry_and_refuses_anything_later_or_none() {
    let mut w = World::default();
    let acc = account(&mut w, Some(HOUR));
    let now = w.now;
    let (defaulted, _) = token(&mut w, create(&acc, None));
    assert_eq!(defaulted.expire_time, Some(now + HOUR));

    let limit = w.now + HOUR;
    let (at_limit, _) = token(&mut w, create(&acc, Some(Expiry::At(limit))));
    assert_eq!(at_limit.expire_time, Some(limit));
    let beyond = Some(Expiry::At(w.now + HOUR + Duration::from_nanos(1)));
    assert_eq!(refusal(&w, &create(&acc, beyond)), LIFETIME_EXCEEDED);
    assert_eq!(
        refusal(&w, &create(&acc, Some(Expiry::After(2 * HOUR)))),
        LIFETIME_EXCEEDED
    );
    assert_eq!(
        refusal(&w, &create(&acc, Some(Expiry::At(w.now)))),
        INVALID_ARGUMENT
    );
    // An update may move the expiry within the limit from its own time,
    // but not remove it.
    assert_eq!(
        refusal(&w, &set_expiry(&defaulted.id, None)),
        LIFETIME_EXCEEDED
    );
    let moved = w.now + HOUR;
    w.commit(set_expiry(&defaulted.id, Some(moved)));

    // Without a limit, an expiry can be removed.
    let free = account(&mut w, None);
    let (t, _) = token(&mut w, create(&free, Some(Expiry::After(HOUR))));
    w.commit(set_expiry(&t.id, None));
    assert_eq!(w.token_rec(&t.id).expire_time, None);
    assert_eq!(
        w.state.expired_by(w.now + 1000 * HOUR).count(),
        2,
        "the two limited ones"
    );
}
