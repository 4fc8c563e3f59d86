//! [`State::verify`] for every [`Standing`] (docs/contract.md §3.2), and
//! [`State::apply`] keeping its indexes consistent with each other.

use super::testkit::{World, actor, modules};
use super::*;
use crate::command::{Command, NewToken};
use crate::domain::{AccountType, EventKind};
use crate::secret::Secret;

/// Every index agrees with the others: each live token has a hash, which
/// finds it, each token is listed under its own account and nowhere else.
fn assert_consistent(s: &State) {
    for (id, live) in s.tokens.iter() {
        let hash = live
            .secret
            .expect("every live token a plan made has a hash");
        assert_eq!(s.token_with_secret(id, &hash).map(|t| &t.id), Some(id));
        assert!(
            s.token_with_secret(id, &[0; 32]).is_none(),
            "{id}: another hash"
        );
    }
    for (id, t) in s.tokens.iter().map(|(id, l)| (id, &l.token)) {
        assert_eq!(t.id, *id);
        assert!(!t.is_deleted(), "{id}: memory holds live tokens only");
        assert!(s.token_id_taken(id), "{id}: its number is issued");
        let listed = s.account_tokens.get(&t.account_id);
        assert!(
            listed.is_some_and(|ids| ids.contains(id)),
            "{id} under its account"
        );
        assert!(s.secret_of(id).is_some(), "{id}: a live token has a hash");
    }
    for (account, ids) in s.account_tokens.iter() {
        for id in ids.iter() {
            assert_eq!(s.token(id).map(|t| &t.account_id), Some(account));
        }
    }
    let listed: usize = s.account_tokens.values().map(|ids| ids.len()).sum();
    assert_eq!(listed, s.tokens.len(), "each token listed once");
    let expiring: Vec<(SystemTime, TokenId)> = s
        .tokens_after(None, None)
        .filter(|t| !t.is_deleted())
        .filter_map(|t| t.expire_time.map(|at| (at, t.id.clone())))
        .collect();
    assert_eq!(
        s.expiring.len(),
        expiring.len(),
        "one expiry entry per live token that expires"
    );
    assert!(expiring.iter().all(|k| s.expiring.contains(k)));
}

#[test]
fn apply_keeps_the_indexes_consistent_through_every_kind_of_change() {
    let mut w = World::default();
    assert_consistent(&w.state);
    let acme = w.account(AccountType::Client, &["billing", "commerce"]);
    let other = w.account(AccountType::Vendor, &["billing"]);
    assert_consistent(&w.state);
    let (a, sa) = w.token(&acme, &["billing"]);
    let (b, sb) = w.token(&acme, &[]);
    let (c, sc) = w.token(&other, &["billing"]);
    assert_consistent(&w.state);
    // Expiries set, moved, removed and set again: one index entry at most.
    let soon = w.now + std::time::Duration::from_secs(60);
    let later = soon + std::time::Duration::from_secs(60);
    for at in [Some(soon), Some(later), None, Some(soon)] {
        w.commit(Command::UpdateToken {
            id: c.clone(),
            etag: None,
            patch: crate::command::TokenPatch {
                expire_time: Some(at),
                ..Default::default()
            },
        });
        assert_consistent(&w.state);
    }
    for (id, secret) in [(&a, &sa), (&b, &sb), (&c, &sc)] {
        assert_eq!(w.state.secret_of(id), Some(&secret.hash()));
        assert_eq!(
            w.state.token_with_secret(id, &secret.hash()).unwrap().id,
            *id
        );
    }
    w.disable_token(&a);
    w.commit(Command::EnableToken {
        id: a.clone(),
        etag: None,
    });
    w.set_account_status(&acme, AccountStatus::Disabled);
    assert_consistent(&w.state);
    // Nothing but a deletion touches a token's hash.
    assert_eq!(w.state.secret_of(&a), Some(&sa.hash()));

    w.delete_token(&b);
    assert_consistent(&w.state);
    assert_eq!(w.state.secret_of(&b), None);
    assert!(w.state.token_with_secret(&b, &sb.hash()).is_none());
    assert!(w.state.token_id_taken(&b), "a tombstone keeps its id");
    assert!(w.state.token(&b).is_none(), "the tombstone is the store's");
    assert_eq!(w.state.issued().len(), 3);
    // The others keep theirs.
    assert_eq!(w.state.token_with_secret(&a, &sa.hash()).unwrap().id, a);
    assert_eq!(w.state.token_with_secret(&c, &sc.hash()).unwrap().id, c);
    // A secret verifies its own token only.
    assert!(w.state.token_with_secret(&a, &sc.hash()).is_none());

    w.delete_token(&c);
    w.delete_token(&a);
    assert_consistent(&w.state);
    assert!(w.state.tokens.is_empty());
    assert_eq!(w.state.revision(), w.log.len() as Revision);
}

#[test]
fn apply_moves_the_revision_and_replaces_the_record() {
    let mut w = World::default();
    let acme = w.account(AccountType::Client, &[]);
    assert_eq!(w.state.revision(), 1);
    let (id, _) = w.token(&acme, &[]);
    assert_eq!(w.state.revision(), 2);
    let mut renamed = (*w.token_rec(&id)).clone();
    renamed.name = "renamed".into();
    let change = Change {
        kind: EventKind::Updated,
        subject: Subject::Token(renamed.clone()),
        secret: SecretOp::Keep,
    };
    // Revisions need not be consecutive (etcd): the state takes the one given.
    w.state.apply(&change, 10);
    assert_eq!(w.state.revision(), 10);
    assert_eq!(**w.state.token(&id).unwrap(), renamed);
    assert_eq!(w.state.tokens_after(Some(&acme), None).count(), 1);
    assert_consistent(&w.state);
}

#[test]
#[should_panic(expected = "revisions increase")]
fn apply_refuses_a_revision_it_already_has() {
    let mut w = World::default();
    let acme = w.account(AccountType::Client, &[]);
    let change = Change {
        kind: EventKind::Updated,
        subject: Subject::Account((*w.account_rec(&acme)).clone()),
        secret: SecretOp::Keep,
    };
    w.state.apply(&change, 1);
}

#[test]
fn restore_builds_what_apply_built() {
    let mut w = World::default();
    let acme = w.account(AccountType::Client, &["billing"]);
    let other = w.account(AccountType::Operations, &[]);
    let (a, _) = w.token(&acme, &["billing"]);
    let (b, _) = w.token(&acme, &[]);
    w.token(&other, &[]);
    w.delete_token(&b);
    w.disable_token(&a);
    let s = &w.state;
    let restored = State::restore(
        s.revision(),
        s.accounts_after(None).map(|a| (**a).clone()),
        s.tokens_after(None, None)
            .map(|t| ((**t).clone(), s.secret_of(&t.id).copied())),
        s.issued.clone(),
    );
    assert_eq!(restored.revision, s.revision);
    assert_eq!(restored.issued.len(), 3, "the deleted token's number too");
    assert!(restored.token_id_taken(&b) && restored.token(&b).is_none());
    assert!(restored.tokens == s.tokens);
    assert!(restored.accounts == s.accounts);
    assert!(restored.account_tokens == s.account_tokens);
    assert_consistent(&restored);
}

#[test]
fn tombstones_are_counted_by_account_as_applied_and_as_restored() {
    let mut w = World::default();
    let acme = w.account(AccountType::Client, &["billing"]);
    let other = w.account(AccountType::Operations, &[]);
    let (a, _) = w.token(&acme, &[]);
    let (b, _) = w.token(&acme, &[]);
    let (c, _) = w.token(&other, &[]);
    w.token(&other, &[]);
    for id in [&a, &b, &c] {
        w.delete_token(id);
    }
    let s = &w.state;
    let counts = |s: &State| [Some(&acme), Some(&other), None].map(|a| s.tombstones_of(a));
    assert_eq!(counts(s), [2, 1, 3]);
    // From the tombstones themselves (etcd's load), or from stored counts
    // (sled's): the same.
    let live = || {
        s.tokens_after(None, None)
            .map(|t| ((**t).clone(), s.secret_of(&t.id).copied()))
    };
    let accounts = || s.accounts_after(None).map(|a| (**a).clone());
    let from_tombstones = State::restore(
        s.revision(),
        accounts(),
        live().chain(w.tombstones().into_iter().map(|t| (t, None))),
        s.issued.clone(),
    );
    assert_eq!(counts(&from_tombstones), [2, 1, 3]);
    let mut r = Restore::new(s.issued.clone());
    accounts().for_each(|a| r.account(a));
    live().for_each(|(t, h)| r.token(t, h));
    r.tombstones(acme.clone(), 2);
    r.tombstones(other.clone(), 1);
    assert_eq!(counts(&r.finish(s.revision())), [2, 1, 3]);
}

#[test]
fn tokens_and_accounts_list_in_id_order_after_a_cursor() {
    let mut w = World::default();
    let acme = w.account(AccountType::Client, &[]);
    let other = w.account(AccountType::Client, &[]);
    let mut mine: Vec<TokenId> = (0..4).map(|_| w.token(&acme, &[]).0).collect();
    let theirs = w.token(&other, &[]).0;
    w.delete_token(&mine[1]);
    mine.remove(1);
    mine.sort();
    let mut all = mine.clone();
    all.push(theirs.clone());
    all.sort();
    let ids = |it: Box<dyn Iterator<Item = &Arc<Token>> + Send + '_>| {
        it.map(|t| t.id.clone()).collect::<Vec<_>>()
    };
    let s = &w.state;
    // Live tokens only: tombstones are the store's.
    assert_eq!(ids(s.tokens_after(Some(&acme), None)), mine);
    assert_eq!(ids(s.tokens_after(Some(&acme), Some(&mine[0]))), mine[1..]);
    assert_eq!(
        ids(s.tokens_after(Some(&acme), Some(&mine[2]))),
        Vec::<TokenId>::new()
    );
    assert_eq!(ids(s.tokens_after(Some(&other), None)), vec![theirs]);
    assert_eq!(ids(s.tokens_after(None, None)), all);
    assert_eq!(ids(s.tokens_after(None, Some(&all[2]))), all[3..]);
    let nobody = AccountId::from_number(99_999_999);
    assert_eq!(s.tokens_after(Some(&nobody), None).count(), 0);

    let mut accounts = vec![acme.clone(), other.clone()];
    accounts.sort();
    let listed: Vec<AccountId> = s.accounts_after(None).map(|a| a.id.clone()).collect();
    assert_eq!(listed, accounts);
    let rest: Vec<AccountId> = s
        .accounts_after(Some(&accounts[0]))
        .map(|a| a.id.clone())
        .collect();
    assert_eq!(rest, accounts[1..]);
    assert!(s.account_id_taken(&acme));
    assert!(!s.account_id_taken(&nobody));
    assert!(s.account(&nobody).is_none());
}

#[test]
fn a_change_becomes_the_event_its_watchers_see() {
    let mut w = World::default();
    let acme = w.account(AccountType::Client, &[]);
    let (id, _) = w.token(&acme, &[]);
    let change = Change {
        kind: EventKind::Deleted,
        subject: Subject::Token((*w.token_rec(&id)).clone()),
        secret: SecretOp::Erase,
    };
    let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(5);
    let e = change.event(42, at, actor());
    assert_eq!(e.revision, 42);
    assert_eq!(e.kind, EventKind::Deleted);
    assert_eq!(e.subject, change.subject);
    assert_eq!((e.time, e.actor), (at, actor()));
}

/// One line of the verification table.
struct Verifies {
    name: &'static str,
    secret: String,
    standing: Standing,
    /// The records the answer carries: none for Malformed and NotFound.
    token: Option<TokenId>,
    account: Option<AccountId>,
}

#[test]
fn verify_tells_every_standing_apart() {
    let mut w = World::default();
    let acme = w.account(AccountType::Client, &["billing"]);
    let frozen = w.account(AccountType::Client, &["billing"]);
    let (valid, valid_secret) = w.token(&acme, &["billing"]);
    let (off, off_secret) = w.token(&acme, &[]);
    w.disable_token(&off);
    let (gone, gone_secret) = w.token(&acme, &[]);
    w.delete_token(&gone);
    let (iced, iced_secret) = w.token(&frozen, &[]);
    let (both, both_secret) = w.token(&frozen, &[]);
    w.disable_token(&both);
    w.set_account_status(&frozen, AccountStatus::Disabled);
    // A preset hash (bootstrap) of a secret that names another id: the hash
    // is indexed, but the secret does not name the token it belongs to.
    let never = (1..)
        .map(TokenId::from_number)
        .find(|id| !w.state.token_id_taken(id))
        .unwrap();
    let elsewhere = Secret::generate(&never);
    let preset = TokenId::from_number(99_999_998);
    w.commit(Command::CreateToken(NewToken {
        account_id: acme.clone(),
        name: "preset".into(),
        description: String::new(),
        icon: None,
        modules: modules(&[]),
        expiry: None,
        preset: Some((preset.clone(), elsewhere.hash())),
    }));
    assert_consistent(&w.state);

    let good = valid_secret.expose().to_string();
    let mut bad_checksum = good.clone().into_bytes();
    let last = bad_checksum.len() - 1;
    bad_checksum[last] = if bad_checksum[last] == b'0' {
        b'1'
    } else {
        b'0'
    };
    let bad_checksum = String::from_utf8(bad_checksum).unwrap();
    let renamed = good.replacen(valid.as_str(), never.as_str(), 1);

    let known = |standing, secret: &Secret, token: &TokenId, account: &AccountId| Verifies {
        name: "",
        secret: secret.expose().to_string(),
        standing,
        token: Some(token.clone()),
        account: Some(account.clone()),
    };
    let nothing = |name, secret: String, standing| Verifies {
        name,
        secret,
        standing,
        token: None,
        account: None,
    };
    let table = [
        Verifies {
            name: "an active token of an active account",
            ..known(Standing::Valid, &valid_secret, &valid, &acme)
        },
        Verifies {
            name: "a disabled token",
            ..known(Standing::Disabled, &off_secret, &off, &acme)
        },
        Verifies {
            name: "an active token of a disabled account",
            ..known(Standing::AccountDisabled, &iced_secret, &iced, &frozen)
        },
        Verifies {
            name: "a disabled token of a disabled account: the token first",
            ..known(Standing::Disabled, &both_secret, &both, &frozen)
        },
        nothing("empty", String::new(), Standing::Malformed),
        nothing("not ours", "ghp_abcdef".into(), Standing::Malformed),
        nothing("a bad checksum", bad_checksum, Standing::Malformed),
        nothing("another id, same checksum", renamed, Standing::Malformed),
        nothing("a trailing space", format!("{good} "), Standing::Malformed),
        nothing(
            "upper-case prefix",
            good.replacen("idt:", "IDT:", 1),
            Standing::Malformed,
        ),
        nothing(
            "deleted",
            gone_secret.expose().to_string(),
            Standing::NotFound,
        ),
        nothing(
            "never issued",
            Secret::generate(&never).expose().to_string(),
            Standing::NotFound,
        ),
        nothing(
            "a second secret for a live id",
            Secret::generate(&valid).expose().to_string(),
            Standing::NotFound,
        ),
        nothing(
            "a stored hash whose secret names another id",
            elsewhere.expose().to_string(),
            Standing::NotFound,
        ),
    ];
    for case in table {
        let v = w.state.verify(&case.secret, SystemTime::now());
        let name = case.name;
        assert_eq!(v.standing, case.standing, "{name}");
        assert_eq!(v.token.map(|t| t.id.clone()), case.token, "{name}: token");
        assert_eq!(
            v.account.map(|a| a.id.clone()),
            case.account,
            "{name}: account"
        );
    }
}

#[test]
fn verify_fails_closed_on_a_state_no_command_can_build() {
    // Restored from records that disagree (a tombstone whose hash was not
    // erased, a token whose account is missing): never VALID. The
    // tombstone's hash is not even kept.
    let mut w = World::default();
    let acme = w.account(AccountType::Client, &[]);
    let (gone, gone_secret) = w.token(&acme, &[]);
    let (orphan, orphan_secret) = w.token(&acme, &[]);
    let mut tombstone = (*w.token_rec(&gone)).clone();
    tombstone.status = TokenStatus::Deleted;
    let mut orphaned = (*w.token_rec(&orphan)).clone();
    orphaned.account_id = AccountId::from_number(99_999_999);
    let s = State::restore(
        w.state.revision(),
        [(*w.account_rec(&acme)).clone()],
        [
            (tombstone, Some(gone_secret.hash())),
            (orphaned, Some(orphan_secret.hash())),
        ],
        crate::state::IdSet::default(),
    );
    assert!(s.secret_of(&gone).is_none());
    assert!(s.token_with_secret(&gone, &gone_secret.hash()).is_none());
    assert!(s.token_id_taken(&gone), "its number stays issued");
    let v = s.verify(gone_secret.expose(), SystemTime::now());
    assert_eq!(v.standing, Standing::NotFound);
    assert!(v.token.is_none() && v.account.is_none());
    let v = s.verify(orphan_secret.expose(), SystemTime::now());
    assert_eq!(v.standing, Standing::AccountDisabled);
    assert_eq!(v.token.map(|t| t.id.clone()), Some(orphan));
    assert!(v.account.is_none());
}
