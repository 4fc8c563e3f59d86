//! [`plan`] for every transition and refusal (docs/contract.md §1–§2, §3.1),
//! as one table against one small world, plus the rules a table can't show
//! (ids never reused, revisions and etags along a token's life).

use super::*;
use crate::domain::{
    AccountStatus, AccountType, Audit, EventKind, MODULE_ACCESS_MANAGEMENT,
    MODULE_PLATFORM_ACCOUNT_MANAGEMENT, Subject, Token, TokenStatus,
};
use crate::error::reason::*;
use crate::secret;
use crate::state::IdSet;
use crate::state::testkit::{World, actor, modules, reason_of};

/// The world every case plans against.
struct Fx {
    w: World,
    /// Active, with every module the cases need.
    acme: AccountId,
    /// Disabled after `iced` was created.
    frozen: AccountId,
    /// Another active account, with `spotlight`.
    other: AccountId,
    /// acme, active, `billing`.
    active: TokenId,
    /// acme, disabled, `commerce`.
    disabled: TokenId,
    /// acme, deleted (a tombstone), `helpdesk`.
    tomb: TokenId,
    /// frozen, active (its account is disabled), `billing`.
    iced: TokenId,
    /// other, active, `spotlight`.
    stranger: TokenId,
    /// Never issued.
    never: TokenId,
}

const ACME: &[&str] = &["billing", "commerce", "helpdesk", "spotlight"];
const STALE: &str = "0000000000000000";

fn fx() -> Fx {
    let mut w = World::default();
    let acme = w.account(AccountType::Client, ACME);
    let frozen = w.account(AccountType::Client, &["billing"]);
    let other = w.account(AccountType::Vendor, &["spotlight"]);
    let (active, _) = w.token(&acme, &["billing"]);
    w.commit(update_token(
        &active,
        TokenPatch {
            icon: Some(Some("https://acme.example/a.png".into())),
            ..TokenPatch::default()
        },
    ));
    let (disabled, _) = w.token(&acme, &["commerce"]);
    w.disable_token(&disabled);
    let (tomb, _) = w.token(&acme, &["helpdesk"]);
    w.delete_token(&tomb);
    let (iced, _) = w.token(&frozen, &["billing"]);
    w.set_account_status(&frozen, AccountStatus::Disabled);
    let (stranger, _) = w.token(&other, &["spotlight"]);
    // Free in this world: every id drawn so far is a different number.
    let never = (1..)
        .map(TokenId::from_number)
        .find(|id| !w.state.token_id_taken(id))
        .unwrap();
    Fx {
        w,
        acme,
        frozen,
        other,
        active,
        disabled,
        tomb,
        iced,
        stranger,
        never,
    }
}

fn etag_of(f: &Fx, id: &TokenId) -> Option<String> {
    Some(f.w.token_rec(id).etag())
}

fn update_token(id: &TokenId, patch: TokenPatch) -> Command {
    Command::UpdateToken {
        id: id.clone(),
        etag: None,
        patch,
    }
}

fn update_account(id: &AccountId, patch: AccountPatch) -> Command {
    Command::UpdateAccount {
        id: id.clone(),
        etag: None,
        patch,
    }
}

fn account_modules(id: &AccountId, mods: &[&str]) -> Command {
    update_account(
        id,
        AccountPatch {
            modules: Some(modules(mods)),
            ..AccountPatch::default()
        },
    )
}

fn delete(id: &TokenId, etag: Option<String>, allow_missing: bool) -> Command {
    Command::DeleteToken {
        id: id.clone(),
        etag,
        allow_missing,
    }
}

fn new_token(account: &AccountId, mods: &[&str]) -> NewToken {
    NewToken {
        account_id: account.clone(),
        name: "deploy".into(),
        description: "from CI".into(),
        icon: Some("https://example.com/i.png".into()),
        modules: modules(mods),
        expiry: None,
        preset: None,
    }
}

fn token(s: &Subject) -> &Token {
    match s {
        Subject::Token(t) => t,
        Subject::Account(_) => panic!("expected a token"),
    }
}

fn account(s: &Subject) -> &Account {
    match s {
        Subject::Account(a) => a,
        Subject::Token(_) => panic!("expected an account"),
    }
}

enum Expect {
    /// An error with this reason; nothing changes.
    Refused(&'static str),
    /// `ABORTED` / `ETAG_MISMATCH`, naming the record's current etag.
    StaleEtag,
    /// No write: answered with the record as it is.
    Unchanged,
    /// No write and no record (`allow_missing` of a missing token).
    Missing,
    /// A change of this kind; the function checks what the case changes,
    /// on top of the rules every change obeys (see [`check_change`]).
    Changed(EventKind, fn(&Fx, &Subject)),
}
use Expect::*;

struct Case {
    name: &'static str,
    cmd: fn(&Fx) -> Command,
    expect: Expect,
}

fn no_more(_: &Fx, _: &Subject) {}

fn cases() -> Vec<Case> {
    vec![
        // ---- CreateAccount
        Case {
            name: "create account",
            cmd: |_| {
                Command::CreateAccount(NewAccount {
                    name: "Globex".into(),
                    kind: AccountType::Operations,
                    modules: modules(&["billing", MODULE_ACCESS_MANAGEMENT]),
                    max_token_lifetime: None,
                })
            },
            expect: Changed(EventKind::Created, |_, s| {
                let a = account(s);
                assert_eq!(a.name, "Globex");
                assert_eq!(a.kind, AccountType::Operations);
                assert_eq!(a.status, AccountStatus::Active);
                assert_eq!(a.modules, modules(&["billing", MODULE_ACCESS_MANAGEMENT]));
            }),
        },
        // ---- UpdateAccount
        Case {
            name: "update unknown account",
            cmd: |_| {
                update_account(
                    &AccountId::from_number(99_999_999),
                    AccountPatch {
                        name: Some("x".into()),
                        ..AccountPatch::default()
                    },
                )
            },
            expect: Refused(ACCOUNT_NOT_FOUND),
        },
        Case {
            name: "rename account",
            cmd: |f| {
                update_account(
                    &f.acme,
                    AccountPatch {
                        name: Some("Acme Corp".into()),
                        ..AccountPatch::default()
                    },
                )
            },
            expect: Changed(EventKind::Updated, |f, s| {
                let (a, before) = (account(s), f.w.account_rec(&f.acme));
                assert_eq!(a.name, "Acme Corp");
                assert_eq!((&a.modules, a.status), (&before.modules, before.status));
            }),
        },
        Case {
            name: "rename account with the current etag",
            cmd: |f| Command::UpdateAccount {
                id: f.acme.clone(),
                etag: Some(f.w.account_rec(&f.acme).etag()),
                patch: AccountPatch {
                    name: Some("Acme Corp".into()),
                    ..AccountPatch::default()
                },
            },
            expect: Changed(EventKind::Updated, no_more),
        },
        Case {
            name: "update account with a stale etag",
            cmd: |f| Command::UpdateAccount {
                id: f.acme.clone(),
                etag: Some(STALE.into()),
                patch: AccountPatch {
                    name: Some("Acme Corp".into()),
                    ..AccountPatch::default()
                },
            },
            expect: StaleEtag,
        },
        Case {
            name: "stale etag beats MODULE_IN_USE",
            cmd: |f| Command::UpdateAccount {
                id: f.acme.clone(),
                etag: Some(STALE.into()),
                patch: AccountPatch {
                    modules: Some(Modules::new()),
                    ..AccountPatch::default()
                },
            },
            expect: StaleEtag,
        },
        Case {
            name: "account update to what it is: no-op",
            cmd: |f| {
                let a = f.w.account_rec(&f.acme);
                update_account(
                    &f.acme,
                    AccountPatch {
                        name: Some(a.name.clone()),
                        status: Some(a.status),
                        modules: Some(a.modules),
                        max_token_lifetime: Some(a.max_token_lifetime),
                    },
                )
            },
            expect: Unchanged,
        },
        Case {
            name: "empty account patch: no-op",
            cmd: |f| update_account(&f.acme, AccountPatch::default()),
            expect: Unchanged,
        },
        Case {
            name: "disable account (an update, not a disable)",
            cmd: |f| {
                update_account(
                    &f.acme,
                    AccountPatch {
                        status: Some(AccountStatus::Disabled),
                        ..AccountPatch::default()
                    },
                )
            },
            expect: Changed(EventKind::Updated, |_, s| {
                assert_eq!(account(s).status, AccountStatus::Disabled);
            }),
        },
        Case {
            name: "enable a disabled account",
            cmd: |f| {
                update_account(
                    &f.frozen,
                    AccountPatch {
                        status: Some(AccountStatus::Active),
                        ..AccountPatch::default()
                    },
                )
            },
            expect: Changed(EventKind::Updated, |_, s| {
                assert_eq!(account(s).status, AccountStatus::Active);
            }),
        },
        Case {
            name: "add an account module",
            cmd: |f| account_modules(&f.acme, &[ACME, &["extensions"]].concat()),
            expect: Changed(EventKind::Updated, |_, s| {
                assert!(account(s).modules.contains("extensions"));
            }),
        },
        Case {
            name: "drop a module an active token holds: MODULE_IN_USE",
            cmd: |f| account_modules(&f.acme, &["commerce", "helpdesk", "spotlight"]),
            expect: Refused(MODULE_IN_USE),
        },
        Case {
            name: "drop a module a disabled token holds: MODULE_IN_USE",
            cmd: |f| account_modules(&f.acme, &["billing", "helpdesk", "spotlight"]),
            expect: Refused(MODULE_IN_USE),
        },
        Case {
            name: "drop a module only a tombstone holds",
            cmd: |f| account_modules(&f.acme, &["billing", "commerce", "spotlight"]),
            expect: Changed(EventKind::Updated, |_, s| {
                assert!(!account(s).modules.contains("helpdesk"));
            }),
        },
        Case {
            name: "drop a module only another account's token holds",
            cmd: |f| account_modules(&f.acme, &["billing", "commerce", "helpdesk"]),
            expect: Changed(EventKind::Updated, |_, s| {
                assert!(!account(s).modules.contains("spotlight"));
            }),
        },
        Case {
            name: "drop the module of a token in a disabled account: MODULE_IN_USE",
            cmd: |f| account_modules(&f.frozen, &[]),
            expect: Refused(MODULE_IN_USE),
        },
        // ---- CreateToken
        Case {
            name: "create token",
            cmd: |f| Command::CreateToken(new_token(&f.acme, &["billing", "commerce"])),
            expect: Changed(EventKind::Created, |f, s| {
                let t = token(s);
                assert_eq!(t.account_id, f.acme);
                assert_eq!(
                    (t.name.as_str(), t.description.as_str()),
                    ("deploy", "from CI")
                );
                assert_eq!(t.icon.as_deref(), Some("https://example.com/i.png"));
                assert_eq!(t.modules, modules(&["billing", "commerce"]));
                assert_eq!(t.last_access_time, None);
            }),
        },
        Case {
            name: "create token with every module of its account",
            cmd: |f| Command::CreateToken(new_token(&f.acme, ACME)),
            expect: Changed(EventKind::Created, no_more),
        },
        Case {
            name: "create token in an unknown account",
            cmd: |_| Command::CreateToken(new_token(&AccountId::from_number(99_999_999), &[])),
            expect: Refused(ACCOUNT_NOT_FOUND),
        },
        Case {
            name: "create token in a disabled account",
            cmd: |f| Command::CreateToken(new_token(&f.frozen, &["billing"])),
            expect: Refused(ACCOUNT_DISABLED),
        },
        Case {
            name: "create token with a module its account lacks",
            cmd: |f| Command::CreateToken(new_token(&f.acme, &["billing", "extensions"])),
            expect: Refused(MODULE_NOT_IN_ACCOUNT),
        },
        Case {
            name: "create token with another account's module",
            cmd: |f| Command::CreateToken(new_token(&f.other, &["billing"])),
            expect: Refused(MODULE_NOT_IN_ACCOUNT),
        },
        Case {
            name: "create token with a free preset id (bootstrap)",
            cmd: |f| {
                Command::CreateToken(NewToken {
                    preset: Some((f.never.clone(), [7; 32])),
                    ..new_token(&f.acme, &[])
                })
            },
            expect: Changed(EventKind::Created, |f, s| assert_eq!(token(s).id, f.never)),
        },
        Case {
            name: "preset id of a live token: TOKEN_ID_TAKEN",
            cmd: |f| {
                Command::CreateToken(NewToken {
                    preset: Some((f.active.clone(), [7; 32])),
                    ..new_token(&f.acme, &[])
                })
            },
            expect: Refused(TOKEN_ID_TAKEN),
        },
        Case {
            name: "preset id of a tombstone: TOKEN_ID_TAKEN",
            cmd: |f| {
                Command::CreateToken(NewToken {
                    preset: Some((f.tomb.clone(), [7; 32])),
                    ..new_token(&f.acme, &[])
                })
            },
            expect: Refused(TOKEN_ID_TAKEN),
        },
        // ---- UpdateToken
        Case {
            name: "rename token",
            cmd: |f| {
                update_token(
                    &f.active,
                    TokenPatch {
                        name: Some("renamed".into()),
                        ..TokenPatch::default()
                    },
                )
            },
            expect: Changed(EventKind::Updated, |f, s| {
                let (t, before) = (token(s), f.w.token_rec(&f.active));
                assert_eq!(t.name, "renamed");
                assert_eq!(t.description, before.description);
                assert_eq!(t.modules, before.modules);
            }),
        },
        Case {
            name: "update every field with the current etag",
            cmd: |f| Command::UpdateToken {
                id: f.active.clone(),
                etag: etag_of(f, &f.active),
                patch: TokenPatch {
                    name: Some("renamed".into()),
                    description: Some("new words".into()),
                    icon: Some(Some("http://example.com/x".into())),
                    modules: Some(modules(&["commerce", "spotlight"])),
                    expire_time: None,
                },
            },
            expect: Changed(EventKind::Updated, |_, s| {
                let t = token(s);
                assert_eq!(
                    (t.name.as_str(), t.description.as_str()),
                    ("renamed", "new words")
                );
                assert_eq!(t.icon.as_deref(), Some("http://example.com/x"));
                assert_eq!(t.modules, modules(&["commerce", "spotlight"]));
            }),
        },
        Case {
            name: "clear the icon",
            cmd: |f| {
                update_token(
                    &f.active,
                    TokenPatch {
                        icon: Some(None),
                        ..TokenPatch::default()
                    },
                )
            },
            expect: Changed(EventKind::Updated, |f, s| {
                assert!(f.w.token_rec(&f.active).icon.is_some());
                assert_eq!(token(s).icon, None);
            }),
        },
        Case {
            name: "update a disabled token: stays disabled",
            cmd: |f| {
                update_token(
                    &f.disabled,
                    TokenPatch {
                        description: Some("still here".into()),
                        ..TokenPatch::default()
                    },
                )
            },
            expect: Changed(EventKind::Updated, |_, s| {
                assert_eq!(token(s).description, "still here");
            }),
        },
        Case {
            name: "update a token of a disabled account",
            cmd: |f| {
                update_token(
                    &f.iced,
                    TokenPatch {
                        name: Some("iced".into()),
                        ..TokenPatch::default()
                    },
                )
            },
            expect: Changed(EventKind::Updated, no_more),
        },
        Case {
            name: "drop every module of a token",
            cmd: |f| {
                update_token(
                    &f.active,
                    TokenPatch {
                        modules: Some(Modules::new()),
                        ..TokenPatch::default()
                    },
                )
            },
            expect: Changed(EventKind::Updated, |_, s| {
                assert!(token(s).modules.is_empty())
            }),
        },
        Case {
            name: "give a token a module its account lacks",
            cmd: |f| {
                update_token(
                    &f.active,
                    TokenPatch {
                        modules: Some(modules(&["billing", MODULE_PLATFORM_ACCOUNT_MANAGEMENT])),
                        ..TokenPatch::default()
                    },
                )
            },
            expect: Refused(MODULE_NOT_IN_ACCOUNT),
        },
        Case {
            name: "token update to what it is: no-op",
            cmd: |f| {
                let t = f.w.token_rec(&f.active);
                update_token(
                    &f.active,
                    TokenPatch {
                        name: Some(t.name.clone()),
                        description: Some(t.description.clone()),
                        icon: Some(t.icon.clone()),
                        modules: Some(t.modules),
                        expire_time: Some(t.expire_time),
                    },
                )
            },
            expect: Unchanged,
        },
        Case {
            name: "empty token patch with the current etag: no-op",
            cmd: |f| Command::UpdateToken {
                id: f.active.clone(),
                etag: etag_of(f, &f.active),
                patch: TokenPatch::default(),
            },
            expect: Unchanged,
        },
        Case {
            name: "no-op token update with a stale etag",
            cmd: |f| Command::UpdateToken {
                id: f.active.clone(),
                etag: Some(STALE.into()),
                patch: TokenPatch::default(),
            },
            expect: StaleEtag,
        },
        Case {
            name: "update a tombstone",
            cmd: |f| {
                update_token(
                    &f.tomb,
                    TokenPatch {
                        name: Some("back".into()),
                        ..TokenPatch::default()
                    },
                )
            },
            expect: Refused(TOKEN_NOT_FOUND),
        },
        Case {
            name: "update a never-issued token",
            cmd: |f| update_token(&f.never, TokenPatch::default()),
            expect: Refused(TOKEN_NOT_FOUND),
        },
        // ---- EnableToken / DisableToken
        Case {
            name: "enable a disabled token",
            cmd: |f| Command::EnableToken {
                id: f.disabled.clone(),
                etag: etag_of(f, &f.disabled),
            },
            expect: Changed(EventKind::Enabled, no_more),
        },
        Case {
            name: "enable an active token: TOKEN_NOT_DISABLED",
            cmd: |f| Command::EnableToken {
                id: f.active.clone(),
                etag: None,
            },
            expect: Refused(TOKEN_NOT_DISABLED),
        },
        Case {
            name: "enable with a stale etag",
            cmd: |f| Command::EnableToken {
                id: f.disabled.clone(),
                etag: Some(STALE.into()),
            },
            expect: StaleEtag,
        },
        Case {
            name: "enable a tombstone",
            cmd: |f| Command::EnableToken {
                id: f.tomb.clone(),
                etag: None,
            },
            expect: Refused(TOKEN_NOT_FOUND),
        },
        Case {
            name: "enable a never-issued token",
            cmd: |f| Command::EnableToken {
                id: f.never.clone(),
                etag: None,
            },
            expect: Refused(TOKEN_NOT_FOUND),
        },
        Case {
            name: "disable an active token",
            cmd: |f| Command::DisableToken {
                id: f.active.clone(),
                etag: etag_of(f, &f.active),
            },
            expect: Changed(EventKind::Disabled, no_more),
        },
        Case {
            name: "disable a token of a disabled account",
            cmd: |f| Command::DisableToken {
                id: f.iced.clone(),
                etag: None,
            },
            expect: Changed(EventKind::Disabled, no_more),
        },
        Case {
            name: "disable a disabled token: TOKEN_NOT_ACTIVE",
            cmd: |f| Command::DisableToken {
                id: f.disabled.clone(),
                etag: None,
            },
            expect: Refused(TOKEN_NOT_ACTIVE),
        },
        Case {
            name: "disable with a stale etag",
            cmd: |f| Command::DisableToken {
                id: f.active.clone(),
                etag: Some(STALE.into()),
            },
            expect: StaleEtag,
        },
        Case {
            name: "disable a tombstone",
            cmd: |f| Command::DisableToken {
                id: f.tomb.clone(),
                etag: None,
            },
            expect: Refused(TOKEN_NOT_FOUND),
        },
        // ---- DeleteToken
        Case {
            name: "delete an active token",
            cmd: |f| delete(&f.active, None, false),
            expect: Changed(EventKind::Deleted, no_more),
        },
        Case {
            name: "delete a disabled token with the current etag",
            cmd: |f| delete(&f.disabled, etag_of(f, &f.disabled), false),
            expect: Changed(EventKind::Deleted, no_more),
        },
        Case {
            name: "delete a token of a disabled account",
            cmd: |f| delete(&f.iced, None, true),
            expect: Changed(EventKind::Deleted, no_more),
        },
        Case {
            name: "delete another account's token (scoping is the service's)",
            cmd: |f| delete(&f.stranger, None, false),
            expect: Changed(EventKind::Deleted, no_more),
        },
        Case {
            name: "delete with a stale etag",
            cmd: |f| delete(&f.active, Some(STALE.into()), false),
            expect: StaleEtag,
        },
        Case {
            name: "allow_missing does not excuse a stale etag on a live token",
            cmd: |f| delete(&f.active, Some(STALE.into()), true),
            expect: StaleEtag,
        },
        Case {
            name: "delete a tombstone",
            cmd: |f| delete(&f.tomb, None, false),
            expect: Refused(TOKEN_NOT_FOUND),
        },
        Case {
            name: "delete a tombstone with its last etag",
            cmd: |f| delete(&f.tomb, etag_of(f, &f.tomb), false),
            expect: Refused(TOKEN_NOT_FOUND),
        },
        Case {
            name: "delete a tombstone, allow_missing",
            cmd: |f| delete(&f.tomb, Some(STALE.into()), true),
            expect: Missing,
        },
        Case {
            name: "delete a never-issued token",
            cmd: |f| delete(&f.never, None, false),
            expect: Refused(TOKEN_NOT_FOUND),
        },
        Case {
            name: "delete a never-issued token, allow_missing",
            cmd: |f| delete(&f.never, None, true),
            expect: Missing,
        },
    ]
}

/// The record a command names, as it is now.
fn target(f: &Fx, cmd: &Command) -> Option<Subject> {
    let token = |id: &TokenId| f.w.state.token(id).map(|t| Subject::Token((**t).clone()));
    match cmd {
        Command::CreateAccount(_) | Command::CreateToken(_) => None,
        Command::UpdateAccount { id, .. } => {
            f.w.state
                .account(id)
                .map(|a| Subject::Account((**a).clone()))
        }
        Command::UpdateToken { id, .. }
        | Command::EnableToken { id, .. }
        | Command::DisableToken { id, .. }
        | Command::DeleteToken { id, .. } => token(id),
        Command::RollToken(r) => token(&r.id),
    }
}

#[test]
fn plan_decides_every_transition_and_refusal() {
    let f = fx();
    for case in cases() {
        let cmd = (case.cmd)(&f);
        let before = target(&f, &cmd);
        let planned = f.w.plan(&cmd);
        let name = case.name;
        match (case.expect, planned) {
            (Refused(want), Err(e)) => assert_eq!(reason_of(&e), want, "{name}: {e}"),
            (StaleEtag, Err(Error::EtagMismatch { current, .. })) => {
                let now = match before.as_ref().expect("a record to be stale against") {
                    Subject::Token(t) => t.etag(),
                    Subject::Account(a) => a.etag(),
                };
                assert_eq!(current, now, "{name}: the error names the current etag");
            }
            (Unchanged, Ok(Plan::Unchanged(Some(s)))) => {
                assert_eq!(Some(s), before, "{name}: answered with the record as it is");
            }
            (Missing, Ok(Plan::Unchanged(None))) => {}
            (Changed(kind, check), Ok(Plan::Change(changes, secret))) => {
                let [change] = &changes[..] else {
                    panic!("{name}: {} changes, expected one", changes.len())
                };
                check_change(
                    &f,
                    name,
                    &cmd,
                    before.as_ref(),
                    kind,
                    change,
                    secret.as_ref(),
                );
                check(&f, &change.subject);
            }
            (_, Err(e)) => panic!("{name}: unexpected error {e:?}"),
            (_, Ok(Plan::Unchanged(s))) => panic!("{name}: unexpected no-op {s:?}"),
            (_, Ok(Plan::Change(c, _))) => panic!("{name}: unexpected change {:?}", c[0].subject),
        }
    }
}

/// What every change obeys: a new record starts at revision 1 with only a
/// `created` stamp; a change to an existing one bumps its revision by one,
/// changes its etag, stamps exactly the audit entry of its kind with this
/// instant and actor, keeps its id and account, and moves its status as the
/// kind says. A created token gets a fresh id and the hash of the secret it
/// is answered with; a deletion erases the hash; nothing else touches it.
fn check_change(
    f: &Fx,
    name: &str,
    cmd: &Command,
    before: Option<&Subject>,
    kind: EventKind,
    change: &Change,
    secret: Option<&Secret>,
) {
    assert_eq!(change.kind, kind, "{name}");
    let stamp = Some(AuditEntry {
        at: f.w.now,
        by: actor(),
    });
    let (revision, audit) = match &change.subject {
        Subject::Token(t) => (t.revision, &t.audit),
        Subject::Account(a) => (a.revision, &a.audit),
    };
    let Some(before) = before else {
        assert_eq!(kind, EventKind::Created, "{name}");
        assert_eq!(revision, 1, "{name}: a new record's revision");
        let created = Audit {
            created: stamp,
            ..Audit::default()
        };
        assert_eq!(*audit, created, "{name}: a new record's audit");
        match (&change.subject, cmd) {
            (Subject::Account(a), _) => {
                assert!(!f.w.state.account_id_taken(&a.id), "{name}: fresh id");
                assert!(
                    change.secret == SecretOp::Keep,
                    "{name}: an account has no secret"
                );
                assert!(secret.is_none());
            }
            (Subject::Token(t), Command::CreateToken(new)) => {
                assert!(!f.w.state.token_id_taken(&t.id), "{name}: fresh id");
                assert_eq!(t.status, TokenStatus::Active, "{name}");
                match (&new.preset, secret) {
                    (Some((id, hash)), None) => {
                        assert_eq!(t.id, *id, "{name}");
                        assert!(change.secret == SecretOp::Set(*hash), "{name}: preset hash");
                    }
                    (None, Some(secret)) => {
                        assert_eq!(secret::parse(secret.expose()), Ok(t.id.clone()), "{name}");
                        assert!(
                            change.secret == SecretOp::Set(secret.hash()),
                            "{name}: the hash of the secret answered"
                        );
                    }
                    _ => panic!("{name}: a secret exactly when none was preset"),
                }
            }
            (Subject::Token(_), _) => panic!("{name}: only CreateToken creates a token"),
        }
        return;
    };
    assert_ne!(kind, EventKind::Created, "{name}");
    assert!(secret.is_none(), "{name}: only a new token has a secret");
    let (old_revision, old_audit) = match before {
        Subject::Token(t) => (t.revision, &t.audit),
        Subject::Account(a) => (a.revision, &a.audit),
    };
    assert_eq!(revision, old_revision + 1, "{name}: record revision +1");
    let mut want = old_audit.clone();
    *match kind {
        EventKind::Updated => &mut want.updated,
        EventKind::Enabled => &mut want.enabled,
        EventKind::Disabled => &mut want.disabled,
        EventKind::Deleted => &mut want.deleted,
        EventKind::Created => unreachable!(),
    } = stamp;
    assert_eq!(*audit, want, "{name}: exactly the {kind:?} stamp moves");
    match (before, &change.subject) {
        (Subject::Token(old), Subject::Token(new)) => {
            assert_ne!(old.etag(), new.etag(), "{name}: the etag changes");
            assert_eq!((&old.id, &old.account_id), (&new.id, &new.account_id));
            let status = match kind {
                EventKind::Enabled => TokenStatus::Active,
                EventKind::Disabled => TokenStatus::Disabled,
                EventKind::Deleted => TokenStatus::Deleted,
                _ => old.status,
            };
            assert_eq!(new.status, status, "{name}");
            assert_eq!(new.last_access_time, old.last_access_time, "{name}");
            assert!(
                f.w.state.secret_of(&old.id).is_some(),
                "a live token's hash"
            );
            let op = if kind == EventKind::Deleted {
                SecretOp::Erase
            } else {
                SecretOp::Keep
            };
            assert!(change.secret == op, "{name}: the secret op");
        }
        (Subject::Account(old), Subject::Account(new)) => {
            assert_ne!(old.etag(), new.etag(), "{name}: the etag changes");
            assert_eq!((&old.id, old.kind), (&new.id, new.kind), "{name}");
            assert!(change.secret == SecretOp::Keep, "{name}");
        }
        _ => panic!("{name}: the change is to another kind of record"),
    }
}

#[test]
fn a_token_life_bumps_its_revision_and_etag_once_per_change() {
    let mut f = fx();
    let id = f.active.clone();
    let first = f.w.token_rec(&id).revision;
    let mut etags = vec![f.w.token_rec(&id).etag()];
    let life = [
        update_token(
            &id,
            TokenPatch {
                name: Some("v2".into()),
                ..TokenPatch::default()
            },
        ),
        Command::DisableToken {
            id: id.clone(),
            etag: None,
        },
        Command::EnableToken {
            id: id.clone(),
            etag: None,
        },
        delete(&id, None, false),
    ];
    for (step, cmd) in life.into_iter().enumerate() {
        let revision = f.w.state.revision();
        // The etag read before the change confirms it...
        let cmd = with_etag(cmd, etags.last().unwrap().clone());
        f.w.commit(cmd.clone());
        assert_eq!(
            f.w.state.revision(),
            revision + 1,
            "one global revision per change"
        );
        let t = f.w.token_rec(&id);
        assert_eq!(t.revision, first + step as u64 + 1);
        assert!(!etags.contains(&t.etag()), "an etag is never repeated");
        etags.push(t.etag());
        // ...and is stale once it went through.
        if t.status != TokenStatus::Deleted {
            let again = f.w.plan(&cmd);
            assert!(
                matches!(again, Err(Error::EtagMismatch { .. })),
                "step {step}"
            );
        }
    }
    // The audit keeps each stamp at the instant of its own change.
    let t = f.w.token_rec(&id);
    let at = |e: &Option<AuditEntry>| e.as_ref().unwrap().at;
    assert!(at(&t.audit.created) < at(&t.audit.updated));
    assert!(at(&t.audit.updated) < at(&t.audit.disabled));
    assert!(at(&t.audit.disabled) < at(&t.audit.enabled));
    assert!(at(&t.audit.enabled) < at(&t.audit.deleted));
}

fn with_etag(cmd: Command, etag: String) -> Command {
    match cmd {
        Command::UpdateToken { id, patch, .. } => Command::UpdateToken {
            id,
            etag: Some(etag),
            patch,
        },
        Command::EnableToken { id, .. } => Command::EnableToken {
            id,
            etag: Some(etag),
        },
        Command::DisableToken { id, .. } => Command::DisableToken {
            id,
            etag: Some(etag),
        },
        Command::DeleteToken {
            id, allow_missing, ..
        } => Command::DeleteToken {
            id,
            etag: Some(etag),
            allow_missing,
        },
        other => other,
    }
}

#[test]
fn a_deleted_token_answers_not_found_to_every_mutation_and_loses_its_hash() {
    let mut f = fx();
    let id = f.active.clone();
    let hash = *f.w.state.secret_of(&id).unwrap();
    f.w.delete_token(&id);
    assert!(f.w.state.secret_of(&id).is_none());
    assert!(f.w.state.token_with_secret(&id, &hash).is_none());
    let etag = etag_of(&f, &id);
    for cmd in [
        update_token(
            &id,
            TokenPatch {
                name: Some("back".into()),
                ..TokenPatch::default()
            },
        ),
        Command::EnableToken {
            id: id.clone(),
            etag: etag.clone(),
        },
        Command::DisableToken {
            id: id.clone(),
            etag: etag.clone(),
        },
        delete(&id, etag.clone(), false),
    ] {
        let e = f.w.plan(&cmd).err().expect("refused");
        assert_eq!(reason_of(&e), TOKEN_NOT_FOUND, "{cmd:?}");
    }
    // Its module no longer pins its account's modules.
    let kept: Vec<&str> = ACME.iter().copied().filter(|m| *m != "billing").collect();
    f.w.commit(account_modules(&f.acme, &kept));
}

#[test]
fn deleted_ids_are_never_drawn_again() {
    let mut w = World::default();
    let account = w.account(AccountType::Client, &[]);
    let (id, _) = w.token(&account, &[]);
    w.delete_token(&id);
    assert!(w.state.secret_of(&id).is_none());

    // Memory keeps no tombstone, only its number: a draw of it moves on.
    assert!(w.state.token(&id).is_none() && w.state.token_id_taken(&id));
    let n = id.number();
    assert_ne!(w.state.issued().free_from(n), Some(n));
    assert_eq!(w.state.issued().free_from(n), Some(n + 1));
    for _ in 0..100 {
        assert!(!w.state.token_id_taken(&fresh_token_id(&w.state).unwrap()));
    }
}

#[test]
fn creation_is_refused_clearly_once_the_id_limit_is_reached() {
    let mut w = World::default();
    let account = w.account(AccountType::Client, &[]);
    let acc = (*w.account_rec(&account)).clone();
    let state_with = |issued| State::restore(1, [acc.clone()], [], issued);
    let create = Command::CreateToken(new_token(&account, &[]));
    let ctx = Ctx {
        now: std::time::SystemTime::now(),
        actor: &actor(),
    };
    // Just under the limit: a token is still made, on a free number.
    let under = state_with(IdSet::filled(TOKEN_ID_LIMIT as u32 - 4096));
    assert!(under.issued().len() < TOKEN_ID_LIMIT);
    let Plan::Change(changes, _) = plan(&under, &create, &ctx).expect("under the limit") else {
        panic!("a change")
    };
    assert!(!under.token_id_taken(&token(&changes[0].subject).id));
    // At it: refused with RESOURCE_EXHAUSTED and a reason that says why,
    // though ten million numbers are still free.
    let at = state_with(IdSet::filled(TOKEN_ID_LIMIT as u32));
    let Err(e) = plan(&at, &create, &ctx) else {
        panic!("made a token past the limit")
    };
    assert_eq!(reason_of(&e), TOKEN_IDS_EXHAUSTED);
    assert!(e.to_string().contains("90000000"), "{e}");
    let status = tonic::Status::from(e);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
}

#[test]
fn fresh_ids_give_up_after_a_thousand_taken_draws() {
    let mut calls = 0;
    let taken = fresh_id(
        |_: &TokenId| true,
        TokenId::from_number,
        || {
            calls += 1;
            calls
        },
    );
    assert!(taken.is_err());
    assert_eq!(calls, 1_000);
    let mut tries = 0;
    let id = fresh_id(
        |id: &TokenId| id.as_str() != "TKN-0000-0999",
        TokenId::from_number,
        || {
            tries += 1;
            tries
        },
    );
    assert_eq!(id.unwrap().as_str(), "TKN-0000-0999");
}

#[test]
fn draws_stay_in_the_id_space() {
    for _ in 0..1_000 {
        let n = draw();
        assert!((1..100_000_000).contains(&n), "{n}");
    }
}

#[test]
fn a_created_account_gets_a_fresh_id_and_a_created_token_its_own_secret() {
    let f = fx();
    let Plan::Change(mut changes, _) =
        f.w.plan(&Command::CreateAccount(NewAccount {
            name: "Initech".into(),
            kind: AccountType::Client,
            modules: Modules::new(),
            max_token_lifetime: None,
        }))
        .unwrap()
    else {
        panic!("a change")
    };
    let change = changes.remove(0);
    assert!(!f.w.state.account_id_taken(&account(&change.subject).id));
    // Two creations of the same request make two tokens with two secrets.
    let cmd = Command::CreateToken(new_token(&f.acme, &[]));
    let (Ok(Plan::Change(a, Some(sa))), Ok(Plan::Change(b, Some(sb)))) =
        (f.w.plan(&cmd), f.w.plan(&cmd))
    else {
        panic!("two changes with secrets")
    };
    assert_ne!(token(&a[0].subject).id, token(&b[0].subject).id);
    assert_ne!(sa.hash(), sb.hash());
}
