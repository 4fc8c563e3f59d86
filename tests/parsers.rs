//! Property tests for everything that parses client input: the secret
//! format, ids, page tokens and filters never panic, accept exactly what they
//! should, and round-trip what the server itself produces.
//!
//! These are the fuzz targets: CI runs 2,000 cases each (about a second);
//! `PROPTEST_CASES=1000000 cargo test --test parsers` runs a long campaign.

use proptest::prelude::*;
use tokend::domain::{AccountId, TokenId, parse_icon, parse_name, quote_input};
use tokend::query::{Fields, FilterExpr, Pager};
use tokend::secret::{self, Secret};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn secret_parse_never_panics(s in ".{0,80}") {
        let _ = secret::parse(&s);
    }

    #[test]
    fn generated_secrets_parse_and_any_one_byte_change_is_refused(
        n in 0u32..100_000_000, pos in 18usize..64, byte in 0x21u8..0x7f
    ) {
        let id = TokenId::from_number(n);
        let s = Secret::generate(&id);
        prop_assert_eq!(secret::parse(s.expose()), Ok(id));
        let mut bytes = s.expose().as_bytes().to_vec();
        // Another printable byte: never the one already there.
        bytes[pos] = if bytes[pos] == byte { 0x21 + (byte - 0x20) % 0x5e } else { byte };
        let forged = String::from_utf8(bytes).unwrap();
        prop_assert!(secret::parse(&forged).is_err());
    }

    #[test]
    fn ids_accept_exactly_prefix_four_digits_dash_four_digits(s in "(TKN|ACC|TKX)-([0-9]{4}|[0-9A]{4})-[0-9]{3,5}") {
        let shaped = s.starts_with("TKN-")
            && s.len() == 13
            && s[4..8].bytes().all(|b| b.is_ascii_digit());
        prop_assert_eq!(TokenId::parse(&s).is_ok(), shaped);
        let _ = AccountId::parse(&s);
    }

    #[test]
    fn page_tokens_never_panic_and_round_trip(junk in ".{0,64}", id in "TKN-[0-9]{4}-[0-9]{4}") {
        let pager = Pager::new([3; 32], &["tokens", "", "", "live"]);
        let _ = pager.decode(&junk);
        let token = pager.encode(&id);
        prop_assert_eq!(pager.decode(&token).unwrap(), Some(id));
    }

    #[test]
    fn filters_and_names_never_panic(s in ".{0,120}") {
        let fields = Fields {
            eq: &["status", "name"],
            has: &["modules"],
            time: &["expire_time"],
            one_of: &[("status", &["ACTIVE"]), ("modules", &["billing"])],
        };
        let _ = FilterExpr::parse(&s, &fields);
        let _ = FilterExpr::parse(&format!("expire_time < {s}"), &fields);
        let _ = FilterExpr::parse(&format!("name = \"{s}"), &fields);
        let _ = parse_name("name", &s);
        let _ = quote_input(&s);
        let _ = parse_icon("icon", &s);
    }
}
