//! The domain: tokens, accounts, revisions and events as plain Rust values.
//!
//! Owns the shapes of the product and the rules that a single value must obey
//! (id formats, name characters, lengths, the module catalogue), and how
//! input is quoted back in a message ([`quote_input`]: never a secret). It
//! must never know about protobuf, gRPC or sled: the service layer
//! translates to and from the wire, and the store layer to and from its own
//! on-disk records (`store/record.rs`), so that no change here silently
//! changes the storage format. (A [`Token`] still deserialises from such a record, for a test that
//! reads one straight from sled.)

use sha2::{Digest, Sha256};
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::error::Error;

/// A position in the one global, ordered history of committed changes.
/// Revisions only increase. On the embedded store they are consecutive (but
/// for the jump a restored store starts with: `store::snapshot::RESTORE_GAP`);
/// on etcd they are etcd's own and skip the numbers etcd spends on writes
/// that are not events, which is why watch streams judge gaps by each
/// event's predecessor, never by `revision == last + 1` (see [`crate::hub`]).
/// Revision 0 means "nothing yet".
pub type Revision = u64;

/// Who made a change: the id of the calling token, or `bootstrap` for what
/// tokend itself creates on first start. Shared text rather than a
/// `String`: every token's audit trail holds one or more, and an `Arc<str>`
/// is 8 bytes smaller in each and cloned into events without copying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(pub std::sync::Arc<str>);

impl Actor {
    /// The actor of the deletions tokend makes itself when a token's
    /// expiry passes (`crate::expiry`).
    pub fn expiry() -> Actor {
        Actor("expiry".into())
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The length of every `PREFIX-NNNN-NNNN` id.
const ID_LEN: usize = 13;

/// `PREFIX-NNNN-NNNN` ids, validated once at the edge so that the rest of the
/// code can trust them. Held inline rather than as a `String`: ids are keys
/// of every in-memory index, whose copy-on-write nodes clone their keys on
/// each commit, and an inline id clones without allocating. Byte order is
/// string order, so sorting is unchanged.
macro_rules! numbered_id {
    ($name:ident, $prefix:literal, $what:literal) => {
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; ID_LEN]);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Parses `PREFIX-NNNN-NNNN` (N a digit).
            pub fn parse(s: &str) -> Result<Self, Error> {
                Self::parse_field("id", s)
            }

            /// [`Self::parse`], for a request's `field`: its refusal names it.
            pub fn parse_field(field: &'static str, s: &str) -> Result<Self, Error> {
                match s.as_bytes().try_into() {
                    Ok(bytes) if is_numbered_id(s, $prefix) => Ok(Self(bytes)),
                    _ => Err(Error::invalid(
                        field,
                        concat!("not ", $what, " id: expected ", $prefix, "-NNNN-NNNN"),
                    )),
                }
            }

            /// Builds the id from a number below 10^8 (the store draws them at random).
            pub fn from_number(n: u32) -> Self {
                let n = n % 100_000_000;
                let s = format!(concat!($prefix, "-{:04}-{:04}"), n / 10_000, n % 10_000);
                Self(s.as_bytes().try_into().expect("a numbered id's length"))
            }

            pub fn as_str(&self) -> &str {
                std::str::from_utf8(&self.0).expect("ids are ASCII, checked when parsed")
            }

            /// The id's number, below 10^8: the inverse of [`Self::from_number`].
            pub fn number(&self) -> u32 {
                self.0
                    .iter()
                    .filter(|b| b.is_ascii_digit())
                    .fold(0, |n, b| n * 10 + u32::from(b - b'0'))
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name))
                    .field(&self.as_str())
                    .finish()
            }
        }
    };
}

numbered_id!(TokenId, "TKN", "a token");
numbered_id!(AccountId, "ACC", "an account");

fn is_numbered_id(s: &str, prefix: &str) -> bool {
    let Some(rest) = s.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 9
        && b[4] == b'-'
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[5..].iter().all(u8::is_ascii_digit)
}

/// The permission areas a platform knows. A token's modules must be a subset
/// of its account's; an account's must come from this catalogue, so a typo is
/// refused instead of silently granting nothing. In alphabetical order (see
/// [`Modules`]). A stored record naming a module this list lacks does not
/// read (it would otherwise lose a permission when next written): a new
/// module is added to every tokend of a deployment before any record uses
/// it, and none is ever removed.
pub const MODULE_CATALOGUE: &[&str] = &[
    "access-management",
    "account-management",
    "billing",
    "catalog-management",
    "commerce",
    "extensions",
    "helpdesk",
    "platform-account-management",
    "program-management",
    "spotlight",
];

/// The module that lets a token manage its own account's tokens (docs/contract.md §4).
pub const MODULE_ACCESS_MANAGEMENT: &str = "access-management";
/// The module that, on an `OPERATIONS` account, manages every account.
pub const MODULE_PLATFORM_ACCOUNT_MANAGEMENT: &str = "platform-account-management";

/// A set of modules of [`MODULE_CATALOGUE`]: one bit per module, by its
/// place in the catalogue. Every token and account holds one, so it is a
/// copy of two bytes rather than a set of strings (some 350 bytes on the
/// heap for two modules). The catalogue is in alphabetical order, so
/// modules come out of a set sorted by name.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Modules(u16);

const _: () = assert!(
    !MODULE_CATALOGUE.is_empty() && MODULE_CATALOGUE.len() <= 16,
    "a module is a bit of Modules' u16"
);

impl Modules {
    pub fn new() -> Modules {
        Modules(0)
    }

    /// Every module of the catalogue.
    pub fn all() -> Modules {
        Modules(u16::MAX >> (16 - MODULE_CATALOGUE.len()))
    }

    fn bit(module: &str) -> Option<u16> {
        MODULE_CATALOGUE
            .iter()
            .position(|m| *m == module)
            .map(|i| 1 << i)
    }

    /// Adds a module of the catalogue; `false` (and no change) for any other name.
    pub fn insert(&mut self, module: &str) -> bool {
        Self::bit(module).inspect(|b| self.0 |= b).is_some()
    }

    pub fn remove(&mut self, module: &str) {
        if let Some(b) = Self::bit(module) {
            self.0 &= !b;
        }
    }

    pub fn contains(&self, module: &str) -> bool {
        Self::bit(module).is_some_and(|b| self.0 & b != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// The modules, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &'static str> + use<> {
        let bits = self.0;
        MODULE_CATALOGUE
            .iter()
            .enumerate()
            .filter(move |(i, _)| bits & (1 << i) != 0)
            .map(|(_, m)| *m)
    }

    /// The modules of this set that `other` does not have, sorted by name.
    pub fn difference(&self, other: &Modules) -> impl Iterator<Item = &'static str> + use<> {
        Modules(self.0 & !other.0).iter()
    }
}

impl fmt::Debug for Modules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// Validates a list of module slugs against the catalogue; duplicates collapse.
pub fn parse_modules<S: AsRef<str>>(field: &'static str, list: &[S]) -> Result<Modules, Error> {
    let mut out = Modules::new();
    for m in list.iter().map(AsRef::as_ref) {
        if !out.insert(m) {
            return Err(Error::invalid(
                field,
                format!(
                    "unknown module {:?}; known modules: {}",
                    quote_input(m),
                    MODULE_CATALOGUE.join(", ")
                ),
            ));
        }
    }
    Ok(out)
}

pub const NAME_MAX_CHARS: usize = 200;
pub const DESCRIPTION_MAX_CHARS: usize = 2000;
pub const ICON_MAX_CHARS: usize = 2048;

/// A token or account name: 1–200 characters of letters, digits, space and
/// `-` `.` `'` `"` (docs/contract.md §1). Leading or trailing spaces are refused rather
/// than trimmed, so what is stored is exactly what was sent.
pub fn parse_name(field: &'static str, s: &str) -> Result<String, Error> {
    let n = s.chars().count();
    if n == 0 {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if n > NAME_MAX_CHARS {
        return Err(Error::invalid(
            field,
            format!("is {n} characters long; at most {NAME_MAX_CHARS} are allowed"),
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, ' ' | '-' | '.' | '\'' | '"')))
    {
        return Err(Error::invalid(
            field,
            format!("contains {c:?}; allowed are letters, digits, space and - . ' \""),
        ));
    }
    if s.starts_with(' ') || s.ends_with(' ') {
        return Err(Error::invalid(field, "must not start or end with a space"));
    }
    Ok(s.to_string())
}

/// Free text, with line breaks and tabs, but no other control character
/// (a NUL, or a terminal's escape sequences, would reach every page, table
/// and log line that shows it).
pub fn parse_description(field: &'static str, s: &str) -> Result<String, Error> {
    let n = s.chars().count();
    if n > DESCRIPTION_MAX_CHARS {
        return Err(Error::invalid(
            field,
            format!("is {n} characters long; at most {DESCRIPTION_MAX_CHARS} are allowed"),
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(Error::invalid(
            field,
            format!("contains the control character {c:?}; only line breaks and tabs are allowed"),
        ));
    }
    Ok(s.to_string())
}

/// An optional icon URL: empty for none, else an `http://` or `https://`
/// URL (the scheme in any case) with a host, kept as written. None of the
/// characters RFC 3986 never allows in a URL (space and other whitespace,
/// controls, `" < > \ ^ { | }` and the backquote), anywhere, the fragment
/// included: so it is safe wherever a client puts it, an HTML attribute
/// included. Other characters are the client's to encode (an IDN host, a
/// path in any script), as a browser's `URL` does.
pub fn parse_icon(field: &'static str, s: &str) -> Result<Option<String>, Error> {
    if s.is_empty() {
        return Ok(None);
    }
    let after_scheme = ["https://", "http://"].into_iter().find_map(|scheme| {
        s.get(..scheme.len())
            .filter(|p| p.eq_ignore_ascii_case(scheme))
            .map(|_| &s[scheme.len()..])
    });
    let authority = after_scheme.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
    let host = authority.map(|a| a.rsplit('@').next().unwrap_or_default());
    let has_host = host.is_some_and(|h| !h.is_empty() && !h.starts_with(':'));
    let never = |c: char| c.is_whitespace() || c.is_control() || "\"<>\\^`{|}".contains(c);
    if !has_host || s.chars().any(never) || s.chars().count() > ICON_MAX_CHARS {
        return Err(Error::invalid(
            field,
            format!(
                "must be an http or https URL with a host, of at most {ICON_MAX_CHARS} characters, without spaces, quotes or < > \\ ^ ` {{ | }}"
            ),
        ));
    }
    Ok(Some(s.to_string()))
}

/// User input as an error (or a log line) quotes it back: shortened, so
/// that a 5 MB field does not come back as a 5 MB message, and with every
/// run of [`HIDDEN_RUN`] or more letters and digits hidden, since that may
/// be a secret pasted into the wrong field (a secret's random part is 46 of
/// them: `crate::secret`). Messages reach clients, proxies and their logs:
/// they must never carry a secret (docs/contract.md §9).
pub fn quote_input(s: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::new();
    // Each piece: a run of letters and digits, then the one character that
    // ended it (if any). Past MAX characters, the rest is cut anyway.
    for piece in s.split_inclusive(|c: char| !c.is_ascii_alphanumeric()) {
        let run = piece.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
        out.push_str(if run.len() >= HIDDEN_RUN {
            "[hidden]"
        } else {
            run
        });
        out.push_str(&piece[run.len()..]);
        if out.chars().count() > MAX {
            break;
        }
    }
    shorten(&out, MAX)
}

/// `s` cut to `max` characters, `…` marking the cut: for text tokend did
/// not make (a reporter's URL) that it records or logs.
pub fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((end, _)) => format!("{}…", &s[..end]),
    }
}

/// Seconds from 1970 to the last second of year 9999: the latest instant
/// tokend carries, as RFC 3339 and protobuf's `Timestamp` allow.
pub const LATEST_SECONDS: u64 = 253_402_300_799;

/// `at + d`, or the latest instant tokend carries if that is later (a
/// lifetime that runs past the year 9999 ends there).
pub fn at_most_latest(at: SystemTime, d: Duration) -> SystemTime {
    let latest = SystemTime::UNIX_EPOCH + Duration::from_secs(LATEST_SECONDS);
    at.checked_add(d).map_or(latest, |t| t.min(latest))
}

/// A duration in the largest whole unit it is a multiple of: "90 days",
/// not humantime's "2months 29days 2h 52m 48s" (its month is 30.44 days).
pub fn in_words(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = [(86_400, "day"), (3600, "hour"), (60, "minute")]
        .into_iter()
        .find(|(size, _)| s.is_multiple_of(*size))
        .map_or((s, "second"), |(size, unit)| (s / size, unit));
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// The shortest run of letters and digits [`quote_input`] hides. Far below
/// a secret's random part, and far above a module name, a filter's field or
/// an update mask's path.
pub const HIDDEN_RUN: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenStatus {
    Active,
    Disabled,
    Deleted,
}

impl TokenStatus {
    pub const ALL: [TokenStatus; 3] = [
        TokenStatus::Active,
        TokenStatus::Disabled,
        TokenStatus::Deleted,
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountType {
    Client,
    Vendor,
    Operations,
}

impl AccountType {
    pub const ALL: [AccountType; 3] = [
        AccountType::Client,
        AccountType::Vendor,
        AccountType::Operations,
    ];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
    Disabled,
}

impl AccountStatus {
    pub const ALL: [AccountStatus; 2] = [AccountStatus::Active, AccountStatus::Disabled];
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: SystemTime,
    pub by: Actor,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    pub created: Option<AuditEntry>,
    pub updated: Option<AuditEntry>,
    pub enabled: Option<AuditEntry>,
    pub disabled: Option<AuditEntry>,
    pub deleted: Option<AuditEntry>,
}

/// An API token as the platform sees it. It never holds the secret: the store
/// keeps only the secret's SHA-256, beside the token, until deletion erases it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub id: TokenId,
    pub account_id: AccountId,
    pub name: String,
    pub description: String,
    pub icon: Option<String>,
    pub status: TokenStatus,
    pub modules: Modules,
    /// The token's own version: 1 at create, +1 on every change.
    pub revision: u64,
    pub audit: Audit,
    /// Approximate; kept apart from the record (see `store::AccessLog`) so that
    /// verification never changes `revision` or `etag`.
    pub last_access_time: Option<SystemTime>,
    /// From this instant the secret is refused; tokend then deletes the
    /// token (`crate::expiry`). `None`: never.
    pub expire_time: Option<SystemTime>,
    /// The token this one was rolled from (`command::roll`).
    pub replaces: Option<TokenId>,
    /// The token this one was rolled into: it only waits for its grace to
    /// end, and is never rolled again.
    pub replaced_by: Option<TokenId>,
}

impl Token {
    pub fn etag(&self) -> String {
        etag(self.id.as_str(), self.revision)
    }

    pub fn is_deleted(&self) -> bool {
        self.status == TokenStatus::Deleted
    }

    /// Whether the token's expiry has passed at `now`. Decided from the
    /// record alone, so every verifier refuses on time, whether or not the
    /// deletion that follows has happened yet.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expire_time.is_some_and(|at| at <= now)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub kind: AccountType,
    pub status: AccountStatus,
    pub modules: Modules,
    /// The account's own version: 1 at create, +1 on every change.
    pub revision: u64,
    pub audit: Audit,
    /// The longest a token of this account may live (`crate::command`
    /// applies it); `None`: no limit.
    pub max_token_lifetime: Option<Duration>,
}

impl Account {
    pub fn etag(&self) -> String {
        etag(self.id.as_str(), self.revision)
    }
}

/// Opaque to clients: a short hash of (id, version), so nobody mistakes it for
/// a number to do arithmetic on. Unquoted hex, easy to pass from a shell.
fn etag(id: &str, revision: u64) -> String {
    let digest = Sha256::new()
        .chain_update(id.as_bytes())
        .chain_update(revision.to_be_bytes())
        .finalize();
    base16ct::lower::encode_string(&digest[..8])
}

/// What a committed change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Created,
    Updated,
    Enabled,
    Disabled,
    Deleted,
}

/// The record a change leaves behind, as it is after the change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    Token(Token),
    Account(Account),
}

/// One committed change: the unit of the event log and of every watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub revision: Revision,
    pub kind: EventKind,
    pub subject: Subject,
    pub time: SystemTime,
    pub actor: Actor,
}

impl Event {
    pub fn token(&self) -> Option<&Token> {
        match &self.subject {
            Subject::Token(t) => Some(t),
            Subject::Account(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_a_set_of_the_catalogue_sorted_by_name() {
        // One bit each, and iteration in catalogue order is name order.
        assert!(MODULE_CATALOGUE.len() <= 16);
        assert!(MODULE_CATALOGUE.is_sorted());
        let m = parse_modules("m", &["helpdesk", "billing", "helpdesk"]).unwrap();
        assert_eq!(m.iter().collect::<Vec<_>>(), ["billing", "helpdesk"]);
        assert_eq!(m.len(), 2);
        assert!(m.contains("billing") && !m.contains("commerce") && !m.contains("nope"));
        let billing = parse_modules("m", &["billing"]).unwrap();
        assert_eq!(m.difference(&billing).collect::<Vec<_>>(), ["helpdesk"]);
        assert_eq!(billing.difference(&m).count(), 0);
        assert_eq!(Modules::all().iter().collect::<Vec<_>>(), MODULE_CATALOGUE);
        assert_eq!(format!("{m:?}"), r#"{"billing", "helpdesk"}"#);
        let mut unknown = Modules::new();
        assert!(!unknown.insert("billingx") && unknown.is_empty());
        let e = parse_modules("token.modules", &["billing", "Billing"]).unwrap_err();
        assert!(e.to_string().contains(r#"unknown module "Billing""#), "{e}");
    }

    #[test]
    fn input_quoted_back_is_short_and_hides_what_may_be_a_secret() {
        assert_eq!(quote_input("billingx"), "billingx");
        assert_eq!(quote_input("name = \"a b\""), "name = \"a b\"");
        let run = "a".repeat(HIDDEN_RUN);
        assert_eq!(quote_input(&run[1..]), run[1..]);
        assert_eq!(quote_input(&run), "[hidden]");
        let secret = crate::secret::Secret::generate(&TokenId::from_number(7));
        let random = secret.expose().rsplit(':').next().unwrap();
        assert_eq!(
            quote_input(&format!("x {} y", secret.expose())),
            "x idt:TKN-0000-0007:[hidden] y"
        );
        assert!(!quote_input(random).contains(&random[..HIDDEN_RUN / 2]));
        // Long input is cut at 64 characters, a hidden run counted as shown.
        let long = "ab-".repeat(40);
        assert_eq!(quote_input(&long), format!("{}…", &long[..64]));
        let hidden = format!("{} {}", "z".repeat(5 << 20), "ab-".repeat(40));
        assert_eq!(
            quote_input(&hidden),
            format!("[hidden] {}…", &"ab-".repeat(40)[..55])
        );
    }

    #[test]
    fn ids_parse_exactly_the_documented_shape() {
        assert!(TokenId::parse("TKN-1234-5678").is_ok());
        assert!(AccountId::parse("ACC-0000-0001").is_ok());
        for bad in [
            "",
            "TKN-1234-567",
            "TKN-1234-56789",
            "tkn-1234-5678",
            "ACC-1234-5678x",
            "TKN_1234_5678",
            "TKN-12a4-5678",
            "TKN-١٢٣٤-5678",
        ] {
            assert!(TokenId::parse(bad).is_err(), "{bad}");
        }
        assert!(TokenId::parse("ACC-1234-5678").is_err());
        assert_eq!(TokenId::from_number(12_345).as_str(), "TKN-0001-2345");
    }

    #[test]
    fn an_icon_is_an_http_url_with_a_host() {
        for good in [
            "https://cdn.example.com/a.png",
            "HTTP://x.y/a.png",
            "https://x.y:8443/i/a.png?v=2#top",
            "https://bücher.example/logo.png",
            "http://[::1]:8080/a%20b.png",
        ] {
            assert_eq!(
                parse_icon("icon", good).unwrap().as_deref(),
                Some(good),
                "{good}"
            );
        }
        assert_eq!(parse_icon("icon", "").unwrap(), None);
        let too_long = format!("https://x.y/{}", "a".repeat(ICON_MAX_CHARS));
        for bad in [
            "http://",
            "https://",
            "https://:443/a.png",
            "https://\"><script>",
            "https://x.y/a.png#\"><script>alert(1)</script>",
            "https://x.y/a.png# onerror=alert(1)",
            "https://x.y/a\"onerror=\"alert(1).png",
            "https://x.y/a.png#\n",
            "https://x.y/{a}.png",
            "https://x.y/a b.png",
            "javascript:alert(1)",
            "ftp://x.y/a.png",
            "//x.y/a.png",
            "/a.png",
            too_long.as_str(),
        ] {
            assert!(parse_icon("icon", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_follow_the_platform_rules() {
        assert!(parse_name("name", "ci-deploy v2.0 'prod' \"eu\"").is_ok());
        assert!(parse_name("name", "Zoë 東京").is_ok());
        assert!(parse_name("name", &"a".repeat(200)).is_ok());
        assert!(parse_name("name", &"a".repeat(201)).is_err());
        for bad in [
            "",
            "a/b",
            "a_b",
            "semi;colon",
            "tab\tname",
            " lead",
            "trail ",
        ] {
            assert!(parse_name("name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn descriptions_take_line_breaks_and_tabs_but_no_other_control_character() {
        let ok = "Ships the release.\r\nOwner:\tplatform team — Zoë 東京";
        assert_eq!(parse_description("description", ok).unwrap(), ok);
        for bad in [
            "a\u{0}b",
            "red \u{1b}[31m",
            "bell \u{7}",
            "next line \u{85}",
        ] {
            let e = parse_description("description", bad).unwrap_err();
            assert!(e.to_string().contains("control character"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn modules_must_come_from_the_catalogue() {
        let ok = parse_modules("modules", &["commerce", "commerce"]).unwrap();
        assert_eq!(ok.len(), 1);
        assert!(parse_modules("modules", &["comerce"]).is_err());
    }

    #[test]
    fn etag_changes_with_revision_and_is_opaque() {
        assert_ne!(etag("TKN-0000-0001", 1), etag("TKN-0000-0001", 2));
        assert_eq!(etag("TKN-0000-0001", 1).len(), 16);
    }
}
