//! List queries: AIP-158 pagination and an AIP-160 filter subset.
//!
//! Owns page sizes, page tokens and filters. A page token is opaque to
//! clients: the last id of the page and a fingerprint of the query, signed
//! with the store's page key (HMAC-SHA256), so a tampered token, or one from
//! another query, is refused with `INVALID_ARGUMENT` instead of silently
//! listing something else. Paging by "after this id" keeps pages stable while
//! tokens are created or deleted between calls. It must never trust a page
//! token it did not sign.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::time::SystemTime;

use crate::domain::quote_input;
use crate::error::Error;

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;
const TAG_LEN: usize = 16;

type HmacSha256 = hmac::Hmac<Sha256>;

/// AIP-158: 0 → the default, above the maximum → the maximum, negative → error.
pub fn page_size(requested: i32) -> Result<usize, Error> {
    match requested {
        n if n < 0 => Err(Error::invalid("page_size", "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

/// Signs and checks page tokens for one kind of query.
pub struct Pager {
    key: [u8; 32],
    /// What the token is bound to: the resource and every request field that
    /// shapes the result set (not page_size, which may change between pages).
    fingerprint: [u8; 8],
}

impl Pager {
    pub fn new(key: [u8; 32], query: &[&str]) -> Pager {
        let mut h = Sha256::new();
        for part in query {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        let digest = h.finalize();
        Pager {
            key,
            fingerprint: digest[..8].try_into().expect("8 bytes"),
        }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    /// The token for the page after `last_id`.
    pub fn encode(&self, last_id: &str) -> String {
        let mut body = self.fingerprint.to_vec();
        body.extend_from_slice(last_id.as_bytes());
        let mut mac = self.mac();
        mac.update(&body);
        body.extend_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(body)
    }

    /// The id to list after; `None` for an empty token (the first page).
    pub fn decode(&self, token: &str) -> Result<Option<String>, Error> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || Error::invalid("page_token", "not a page token issued for this query");
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        if raw.len() < 8 + TAG_LEN {
            return Err(bad());
        }
        let (body, tag) = raw.split_at(raw.len() - TAG_LEN);
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_truncated_left(tag).map_err(|_| bad())?;
        let (fingerprint, id) = body.split_at(8);
        if fingerprint != self.fingerprint {
            return Err(bad());
        }
        String::from_utf8(id.to_vec()).map(Some).map_err(|_| bad())
    }
}

impl Pager {
    /// Takes one page of at most `size` items and the token for the next
    /// page (empty when this is the last), keyed by each item's id.
    pub fn page<T>(
        &self,
        items: impl Iterator<Item = T>,
        size: usize,
        id: impl Fn(&T) -> &str,
    ) -> (Vec<T>, String) {
        let mut page: Vec<T> = items.take(size + 1).collect();
        if page.len() <= size {
            return (page, String::new());
        }
        page.truncate(size);
        let next = page
            .last()
            .map(|last| self.encode(id(last)))
            .unwrap_or_default();
        (page, next)
    }
}

/// How a term compares: `=` (ASCII case ignored), `:` (has, exact), or
/// `<` / `>` on a time field (strictly before or after an RFC 3339 instant).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    Has(String),
    Before(SystemTime),
    After(SystemTime),
}

/// One `field = value`, `field:value`, `field < time` or `field > time`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Term {
    field: String,
    op: Op,
}

/// A parsed filter: terms joined with AND. Fields are checked against the
/// ones a resource supports, so a typo is an error and not an empty list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterExpr {
    terms: Vec<Term>,
}

/// The fields a resource's filter supports, by how they compare.
pub struct Fields<'a> {
    /// Scalars, compared with `=`.
    pub eq: &'a [&'a str],
    /// Repeated fields, compared with `:`.
    pub has: &'a [&'a str],
    /// Instants, compared with `<` and `>`.
    pub time: &'a [&'a str],
    /// Fields whose values are one of a set (an enum's names, the module
    /// catalogue): any other value is refused rather than matching nothing.
    pub one_of: &'a [(&'a str, &'a [&'a str])],
}

impl Fields<'_> {
    /// `value` checked against `field`'s set, if it has one; `=` ignores
    /// ASCII case, as it does when matching.
    fn check(&self, field: &str, value: &str, ignore_case: bool) -> Result<(), Error> {
        let Some((_, set)) = self.one_of.iter().find(|(f, _)| *f == field) else {
            return Ok(());
        };
        let known = set.iter().any(|v| {
            if ignore_case {
                v.eq_ignore_ascii_case(value)
            } else {
                *v == value
            }
        });
        if known {
            return Ok(());
        }
        Err(Error::invalid(
            "filter",
            format!(
                "{field} is one of {}, not {:?}",
                set.join(", "),
                quote_input(value)
            ),
        ))
    }
}

impl FilterExpr {
    /// No term: everything matches.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Parses `a = b AND c:d AND name = "quoted value" AND t < "2027-01-01T00:00:00Z"`;
    /// in a quoted value, a backslash takes the next character as it is
    /// (`\"` a quote, `\\` a backslash).
    pub fn parse(input: &str, fields: &Fields) -> Result<FilterExpr, Error> {
        let words = split_words(input)?;
        let mut terms = Vec::new();
        let mut rest = words.as_slice();
        while !rest.is_empty() {
            let (term, after) = parse_term(rest, fields)?;
            terms.push(term);
            rest = match after {
                [] => after,
                [and, more @ ..] if and.eq_ignore_ascii_case("AND") && !more.is_empty() => more,
                [other, ..] => {
                    return Err(Error::invalid(
                        "filter",
                        format!("expected AND, found {:?}", quote_input(other)),
                    ));
                }
            };
        }
        Ok(FilterExpr { terms })
    }

    /// True when every term matches. `values(field)` gives the resource's
    /// values for a field (one for scalars, any number for repeated fields),
    /// `time(field)` its instant, if it has one: a resource without one
    /// matches neither `<` nor `>`.
    pub fn matches<'a>(
        &self,
        values: impl Fn(&str) -> Vec<&'a str>,
        time: impl Fn(&str) -> Option<SystemTime>,
    ) -> bool {
        self.terms.iter().all(|t| match &t.op {
            Op::Eq(want) => values(&t.field)
                .iter()
                .any(|v| v.eq_ignore_ascii_case(want)),
            Op::Has(want) => values(&t.field).iter().any(|v| v == want),
            Op::Before(at) => time(&t.field).is_some_and(|v| v < *at),
            Op::After(at) => time(&t.field).is_some_and(|v| v > *at),
        })
    }
}

fn parse_term<'a>(words: &'a [String], fields: &Fields) -> Result<(Term, &'a [String]), Error> {
    let bad = |msg: String| Error::invalid("filter", msg);
    // `field:value` may come as one word.
    if let Some((field, value)) = words[0].split_once(':') {
        if !fields.has.contains(&field) {
            return Err(bad(format!(
                "`:` is not supported on {:?}",
                quote_input(field)
            )));
        }
        let (value, rest) = if value.is_empty() {
            let v = words
                .get(1)
                .ok_or_else(|| bad("missing value after `:`".into()))?;
            (v.clone(), &words[2..])
        } else {
            (value.to_string(), &words[1..])
        };
        let value = unquote(&value);
        fields.check(field, &value, false)?;
        let term = Term {
            field: field.to_string(),
            op: Op::Has(value),
        };
        return Ok((term, rest));
    }
    let (field, op, value) = match words {
        [f, op, v, ..] => (f.as_str(), op.as_str(), unquote(v)),
        _ => return Err(bad("expected `field = value`".into())),
    };
    if fields.has.contains(&field) {
        return Err(bad(format!(
            "{field} is compared with `:`, as in {field}:{}",
            fields
                .one_of
                .iter()
                .find(|(f, _)| *f == field)
                .and_then(|(_, set)| set.first())
                .unwrap_or(&"value")
        )));
    }
    let known: Vec<&str> = [fields.eq, fields.time].concat();
    if !known.contains(&field) {
        return Err(bad(format!(
            "unknown field {:?}; supported: {}",
            quote_input(field),
            [fields.eq, fields.has, fields.time].concat().join(", ")
        )));
    }
    let is_time = fields.time.contains(&field);
    let instant = || {
        value
            .parse::<prost_types::Timestamp>()
            .ok()
            .and_then(|t| SystemTime::try_from(t).ok())
            .ok_or_else(|| {
                bad(format!(
                    "{field} compares with an RFC 3339 instant such as \"2027-01-01T00:00:00Z\", not {:?}",
                    quote_input(&value)
                ))
            })
    };
    let op = match op {
        "=" if !is_time => {
            fields.check(field, &value, true)?;
            Op::Eq(value.clone())
        }
        "<" if is_time => Op::Before(instant()?),
        ">" if is_time => Op::After(instant()?),
        _ => {
            let supported = if is_time { "< and >" } else { "= and :" };
            return Err(bad(format!(
                "unsupported operator {:?} on {field}; supported: {supported}",
                quote_input(op)
            )));
        }
    };
    let term = Term {
        field: field.to_string(),
        op,
    };
    Ok((term, &words[3..]))
}

fn unquote(s: &str) -> String {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
        .to_string()
}

/// Splits on whitespace, keeping "quoted strings" whole and `=` apart.
fn split_words(input: &str) -> Result<Vec<String>, Error> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = input.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                cur.push('"');
                // A backslash takes the next character as it is: a name
                // may hold `"` (and `\`), and a filter must reach it.
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => cur.push(c),
                            None => return Err(Error::invalid("filter", "unterminated quote")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(Error::invalid("filter", "unterminated quote")),
                    }
                }
                cur.push('"');
            }
            '=' | '<' | '>' => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
                words.push(c.to_string());
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_follow_aip_158() {
        assert_eq!(page_size(0).unwrap(), 50);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(5000).unwrap(), 1000);
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn page_tokens_round_trip_and_refuse_tampering_and_other_queries() {
        let p = Pager::new([7; 32], &["tokens", "ACC-1111-1111", "", "false"]);
        let t = p.encode("TKN-0000-0042");
        assert_eq!(p.decode(&t).unwrap().as_deref(), Some("TKN-0000-0042"));
        assert_eq!(p.decode("").unwrap(), None);

        let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        raw[10] ^= 1;
        assert!(p.decode(&URL_SAFE_NO_PAD.encode(&raw)).is_err());
        assert!(p.decode("garbage!").is_err());

        let other = Pager::new([7; 32], &["tokens", "ACC-2222-2222", "", "false"]);
        assert!(other.decode(&t).is_err());
        let other_key = Pager::new([8; 32], &["tokens", "ACC-1111-1111", "", "false"]);
        assert!(other_key.decode(&t).is_err());

        // Too short to hold a fingerprint and a tag: refused, not a panic.
        for n in [1, 8, 16, 23] {
            assert!(
                p.decode(&URL_SAFE_NO_PAD.encode(vec![0u8; n])).is_err(),
                "{n}"
            );
        }
        assert_eq!(p.decode(&p.encode("")).unwrap().as_deref(), Some(""));
    }

    #[test]
    fn a_page_holds_at_most_size_items_and_names_the_last_for_the_next() {
        let p = Pager::new([7; 32], &["tokens"]);
        let ids = ["a", "b", "c", "d", "e"];
        let (page, next) = p.page(ids.iter(), 2, |id| id);
        assert_eq!(page, [&"a", &"b"]);
        assert_eq!(p.decode(&next).unwrap().as_deref(), Some("b"));
        for size in [5, 6] {
            let (page, next) = p.page(ids.iter(), size, |id| id);
            assert_eq!(page.len(), 5, "{size}");
            assert_eq!(next, "", "the last page has no next token");
        }
        let (page, next) = p.page(ids.iter(), 4, |id| id);
        assert_eq!(
            (page.len(), p.decode(&next).unwrap()),
            (4, Some("d".into()))
        );
    }

    #[test]
    fn filters_parse_the_supported_subset() {
        const FIELDS: Fields = Fields {
            eq: &["status", "name"],
            has: &["modules"],
            time: &["expire_time"],
            one_of: &[
                ("status", &["ACTIVE", "DISABLED"]),
                ("modules", &["commerce", "helpdesk"]),
            ],
        };
        let f = FilterExpr::parse(
            r#"status = active AND name="ci deploy" AND modules:commerce"#,
            &FIELDS,
        )
        .unwrap();
        let values = |field: &str| match field {
            "status" => vec!["ACTIVE"],
            "name" => vec!["ci deploy"],
            "modules" => vec!["billing", "commerce"],
            _ => vec![],
        };
        let expires = |field: &str| match field {
            "expire_time" => "2027-01-01T00:00:00Z"
                .parse::<prost_types::Timestamp>()
                .ok()
                .and_then(|t| SystemTime::try_from(t).ok()),
            _ => None,
        };
        assert!(f.matches(values, expires));
        let quoted = FilterExpr::parse(r#"name = "say \"hi\" \\o/""#, &FIELDS).unwrap();
        assert!(quoted.matches(|_| vec![r#"say "hi" \o/"#], expires));
        assert!(FilterExpr::parse(r#"name = "open \""#, &FIELDS).is_err());
        let g = FilterExpr::parse("modules:helpdesk", &FIELDS).unwrap();
        assert!(!g.matches(values, expires));
        // `=` ignores ASCII case and nothing else; `:` is exact.
        for (filter, want) in [
            ("status = Active", true),
            ("status = disabled", false),
            ("status = ACTIVE AND name = \"CI DEPLOY\"", true),
            ("name = ci", false),
            ("expire_time < \"2027-01-01T00:00:01Z\"", true),
            ("expire_time<2027-01-01T00:00:00Z", false),
            ("expire_time > \"2026-12-31T23:59:59.5+01:00\"", true),
            (
                "status = active AND expire_time > \"2027-01-01T00:00:00Z\"",
                false,
            ),
        ] {
            let f = FilterExpr::parse(filter, &FIELDS).unwrap();
            assert_eq!(f.matches(values, expires), want, "{filter}");
        }
        // Without an expiry, a token matches neither side.
        let before = FilterExpr::parse("expire_time < \"9999-01-01T00:00:00Z\"", &FIELDS).unwrap();
        let after = FilterExpr::parse("expire_time > \"1970-01-01T00:00:00Z\"", &FIELDS).unwrap();
        assert!(!before.matches(values, |_| None) && !after.matches(values, |_| None));
        for bad in [
            "colour = red",
            "status",
            "status > 1",
            "name = \"open",
            "status = A OR status = B",
            "expire_time = \"2027-01-01T00:00:00Z\"",
            "expire_time < tomorrow",
            "name < b",
        ] {
            assert!(FilterExpr::parse(bad, &FIELDS).is_err(), "{bad}");
        }
        // A value outside its field's set is refused, saying which it takes,
        // rather than matching nothing; so is `=` on a field compared with `:`.
        for (bad, says) in [
            (
                "status = TOKEN_STATUS_ACTIVE",
                "status is one of ACTIVE, DISABLED, not \"TOKEN_STATUS_ACTIVE\"",
            ),
            (
                "status = \"\"",
                "status is one of ACTIVE, DISABLED, not \"\"",
            ),
            (
                "modules:Commerce",
                "modules is one of commerce, helpdesk, not \"Commerce\"",
            ),
            (
                "modules = commerce",
                "modules is compared with `:`, as in modules:commerce",
            ),
        ] {
            let e = FilterExpr::parse(bad, &FIELDS).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
