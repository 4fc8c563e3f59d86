//! The permission rules of docs/contract.md §4 and the revocations of §8.10,
//! as tables over a handful of callers.

use super::*;
use crate::domain::{TokenId, parse_modules};
use crate::error::reason;
use crate::state::testkit::{World, reason_of};

const PAM: &str = MODULE_PLATFORM_ACCOUNT_MANAGEMENT;
const AM: &str = MODULE_ACCESS_MANAGEMENT;

struct Callers {
    w: World,
    ops: AccountId,
    client: AccountId,
    /// OPERATIONS + platform-account-management.
    operator: Caller,
    /// OPERATIONS, access-management only: manages its own account.
    ops_manager: Caller,
    /// CLIENT + access-management.
    manager: Caller,
    /// CLIENT, billing only: VerifyToken only.
    plain: Caller,
    /// CLIENT account with platform-account-management in its modules: not
    /// an operator (the rule needs an OPERATIONS account).
    client_pam: Caller,
}

fn caller(w: &World, id: &TokenId) -> Caller {
    let token = w.token_rec(id);
    let account = w.account_rec(&token.account_id);
    Caller { token, account }
}

fn callers() -> Callers {
    let mut w = World::default();
    let ops = w.account(AccountType::Operations, &[AM, PAM, "billing"]);
    let client = w.account(AccountType::Client, &[AM, PAM, "billing"]);
    let (operator, _) = w.token(&ops, &[AM, PAM]);
    let (ops_manager, _) = w.token(&ops, &[AM]);
    let (manager, _) = w.token(&client, &[AM]);
    let (plain, _) = w.token(&client, &["billing"]);
    let (client_pam, _) = w.token(&client, &[PAM]);
    Callers {
        operator: caller(&w, &operator),
        ops_manager: caller(&w, &ops_manager),
        manager: caller(&w, &manager),
        plain: caller(&w, &plain),
        client_pam: caller(&w, &client_pam),
        w,
        ops,
        client,
    }
}

fn denied(r: Result<(), Error>) -> bool {
    match r {
        Ok(()) => false,
        Err(e) => {
            assert_eq!(reason_of(&e), reason::PERMISSION_DENIED, "{e}");
            true
        }
    }
}

#[test]
fn each_kind_of_caller_may_do_what_section_4_says() {
    let c = callers();
    let pam = parse_modules("m", &[PAM]).unwrap();
    let billing = parse_modules("m", &["billing"]).unwrap();
    // (caller, operator, manager, may grant PAM, sees the other account)
    let table = [
        ("operator", &c.operator, true, true, true, true),
        ("ops manager", &c.ops_manager, false, true, false, false),
        ("manager", &c.manager, false, true, false, false),
        ("plain", &c.plain, false, false, false, false),
        ("client with PAM", &c.client_pam, false, false, false, false),
    ];
    for (name, caller, operator, manager, grants_pam, sees_other) in table {
        let own = caller.token.account_id.clone();
        let other = if own == c.ops {
            c.client.clone()
        } else {
            c.ops.clone()
        };
        assert_eq!(caller.is_operator(), operator, "{name}: is_operator");
        assert_eq!(
            !denied(caller.require_operator("this")),
            operator,
            "{name}: require_operator"
        );
        assert_eq!(
            !denied(caller.require_manager()),
            manager,
            "{name}: require_manager"
        );
        assert_eq!(
            !denied(caller.may_grant(&pam)),
            grants_pam,
            "{name}: may grant PAM"
        );
        assert!(
            !denied(caller.may_grant(&billing)),
            "{name}: anyone may grant others"
        );
        assert!(!denied(caller.may_grant(&Modules::new())), "{name}");
        assert_eq!(
            !denied(caller.may_show_deleted(true)),
            operator,
            "{name}: show_deleted"
        );
        assert!(!denied(caller.may_show_deleted(false)), "{name}");
        assert!(caller.sees(&own), "{name}: its own account");
        assert_eq!(caller.sees(&other), sees_other, "{name}: another account");
        let scope = caller.default_scope();
        assert_eq!(scope, (!operator).then_some(own), "{name}: default scope");
        assert_eq!(
            caller.actor(),
            Actor(caller.token.id.as_str().into()),
            "{name}"
        );
    }
}

#[test]
fn a_credential_stays_valid_while_its_token_and_account_are_active() {
    let mut c = callers();
    assert!(c.manager.still_valid(&c.w.state));
    c.w.disable_token(&c.manager.token.id);
    assert!(!c.manager.still_valid(&c.w.state), "token disabled");
    c.w.commit(crate::command::Command::EnableToken {
        id: c.manager.token.id.clone(),
        etag: None,
    });
    assert!(c.manager.still_valid(&c.w.state), "enabled again");
    c.w.set_account_status(&c.client, AccountStatus::Disabled);
    assert!(!c.manager.still_valid(&c.w.state), "account disabled");
    assert!(
        c.operator.still_valid(&c.w.state),
        "other accounts unaffected"
    );
    c.w.delete_token(&c.operator.token.id);
    assert!(!c.operator.still_valid(&c.w.state), "token deleted");
    // A state that never heard of the credential.
    assert!(!c.plain.still_valid(&State::default()));
    let mut only_token = World::default();
    let acme = only_token.account(AccountType::Client, &[]);
    let (id, _) = only_token.token(&acme, &[]);
    let stranger = Caller {
        token: only_token.token_rec(&id),
        account: c.plain.account.clone(),
    };
    assert!(
        !stranger.still_valid(&only_token.state),
        "its account unknown"
    );
}

#[test]
fn bearer_takes_the_credential_of_an_authorization_header() {
    for (header, want) in [
        ("Bearer abc", Some("abc")),
        ("bearer abc", Some("abc")),
        ("BEARER abc", Some("abc")),
        ("  Bearer   abc  ", Some("abc")),
        ("Bearer", None),
        ("Basic abc", None),
        ("Bearerabc", None),
        ("abc", None),
        ("", None),
    ] {
        assert_eq!(bearer(header), want, "{header:?}");
    }
}

#[test]
fn revokes_names_every_change_that_ends_a_stream() {
    let c = callers();
    let with = |caller: &Caller, f: &dyn Fn(&mut Token)| {
        let mut t = (*caller.token).clone();
        f(&mut t);
        Subject::Token(t)
    };
    let account = |caller: &Caller, status| {
        let mut a = (*caller.account).clone();
        a.status = status;
        Subject::Account(a)
    };
    let disabled = |t: &mut Token| t.status = TokenStatus::Disabled;
    let deleted = |t: &mut Token| t.status = TokenStatus::Deleted;
    let renamed = |t: &mut Token| t.name = "renamed".into();
    let no_am = |t: &mut Token| {
        t.modules.remove(AM);
    };
    let no_pam = |t: &mut Token| {
        t.modules.remove(PAM);
    };
    let stripped = Some("stripped of the modules this stream needs");
    let table: [(&str, &Caller, Subject, Option<&str>); 13] = [
        (
            "manager disabled",
            &c.manager,
            with(&c.manager, &disabled),
            Some("disabled"),
        ),
        (
            "manager deleted",
            &c.manager,
            with(&c.manager, &deleted),
            Some("deleted"),
        ),
        (
            "manager renamed",
            &c.manager,
            with(&c.manager, &renamed),
            None,
        ),
        (
            "manager loses AM",
            &c.manager,
            with(&c.manager, &no_am),
            stripped,
        ),
        (
            "account disabled",
            &c.manager,
            account(&c.manager, AccountStatus::Disabled),
            Some("disabled with its account"),
        ),
        (
            "account updated, still active",
            &c.manager,
            account(&c.manager, AccountStatus::Active),
            None,
        ),
        (
            "another account disabled",
            &c.manager,
            account(&c.operator, AccountStatus::Disabled),
            None,
        ),
        (
            "another token deleted",
            &c.manager,
            with(&c.plain, &deleted),
            None,
        ),
        (
            "operator loses PAM",
            &c.operator,
            with(&c.operator, &no_pam),
            stripped,
        ),
        // Operator rights alone make a manager: losing AM keeps them.
        (
            "operator loses AM",
            &c.operator,
            with(&c.operator, &no_am),
            None,
        ),
        (
            "operator renamed",
            &c.operator,
            with(&c.operator, &renamed),
            None,
        ),
        // Not an operator to begin with: losing PAM strips nothing it used.
        (
            "ops manager loses PAM",
            &c.ops_manager,
            with(&c.ops_manager, &no_pam),
            None,
        ),
        (
            "ops manager loses AM",
            &c.ops_manager,
            with(&c.ops_manager, &no_am),
            stripped,
        ),
    ];
    for (name, caller, subject, want) in table {
        assert_eq!(revokes(caller, &subject), want, "{name}");
    }
}
