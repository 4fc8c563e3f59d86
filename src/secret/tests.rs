//! Secrets as docs/contract.md §1 spells them: shape, checksum, hash, and
//! never shown.

use super::*;

#[test]
fn generated_secrets_parse_and_name_their_token() {
    let id = TokenId::parse("TKN-1234-5678").unwrap();
    let a = Secret::generate(&id);
    let b = Secret::generate(&id);
    assert_ne!(a, b);
    assert_eq!(a.expose().len(), SECRET_LEN);
    assert!(a.expose().starts_with("idt:TKN-1234-5678:"));
    assert_eq!(parse(a.expose()), Ok(id));
    assert_ne!(a.hash(), b.hash());
}

#[test]
fn any_single_character_change_is_caught_by_the_checksum() {
    let id = TokenId::parse("TKN-0000-0042").unwrap();
    let s = Secret::generate(&id).expose().to_string();
    let start = PREFIX.len() + 14;
    for i in start..s.len() {
        let mut bytes = s.clone().into_bytes();
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        let forged = String::from_utf8(bytes).unwrap();
        assert_eq!(parse(&forged), Err(Malformed), "position {i}");
    }
}

#[test]
fn look_alikes_are_malformed() {
    for bad in [
        "",
        "idt:",
        "Bearer xyz",
        "idt:TKN-1234-5678:short",
        &format!("idt:TKN-1234-5678:{}", "é".repeat(23)),
        &format!("xdt:TKN-1234-5678:{}", "a".repeat(46)),
        &format!("idt:TKN-1234-5678:{}", "a".repeat(46)),
    ] {
        assert_eq!(parse(bad), Err(Malformed), "{bad}");
    }
}

#[test]
fn debug_never_shows_the_secret() {
    let s = Secret::generate(&TokenId::parse("TKN-1111-2222").unwrap());
    assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
}

#[test]
fn a_secret_is_64_ascii_characters() {
    assert_eq!(SECRET_LEN, 64);
    let s = Secret::generate(&TokenId::parse("TKN-9999-0000").unwrap());
    assert!(s.expose().is_ascii());
    assert_eq!(s.expose().len(), 64);
}

#[test]
fn the_checksum_is_zlib_crc32_in_six_base62_digits_most_significant_first() {
    // Computed independently: Python's zlib.crc32 of the 58 characters is
    // 0x4adc3fed, which is 1MzpW9 in fixed-width base62.
    let body = format!("idt:TKN-1234-5678:{}{}", "A".repeat(20), "z".repeat(20));
    assert_eq!(crc32fast::hash(body.as_bytes()), 0x4adc_3fed);
    assert_eq!(base62_fixed(0x4adc_3fed), "1MzpW9");
    assert_eq!(
        parse(&format!("{body}1MzpW9")),
        Ok(TokenId::parse("TKN-1234-5678").unwrap())
    );
    for (n, digits) in [
        (0, "000000"),
        (61, "00000z"),
        (62, "000010"),
        (u32::MAX, "4gfFC3"),
    ] {
        assert_eq!(base62_fixed(n), digits, "{n}");
    }
}

#[test]
fn random_bytes_map_to_base62_without_bias() {
    for (b, want) in [
        (0, Some('0')),
        (9, Some('9')),
        (10, Some('A')),
        (36, Some('a')),
        (61, Some('z')),
        (62, Some('0')),
        (247, Some('z')),
        // 248..=255 would favour 0..7: rejected.
        (248, None),
        (255, None),
    ] {
        assert_eq!(base62_of(b), want, "{b}");
    }
}

#[test]
fn generated_secrets_use_every_base62_character() {
    let id = TokenId::parse("TKN-1234-5678").unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        let s = Secret::generate(&id);
        let random = &s.expose()[PREFIX.len() + 14..SECRET_LEN - CHECK_CHARS];
        assert_eq!(random.len(), RANDOM_CHARS);
        seen.extend(random.chars());
    }
    // 4000 uniform draws miss one of 62 characters with probability ~1e-26.
    assert_eq!(seen.len(), 62);
}

#[test]
fn a_secret_hash_is_the_sha256_of_the_whole_string() {
    let s = Secret::generate(&TokenId::parse("TKN-1234-5678").unwrap());
    let want: SecretHash = Sha256::digest(s.expose().as_bytes()).into();
    assert_eq!(s.hash(), want);
    assert_eq!(hash(s.expose()), want);
    // The empty string's SHA-256 starts e3b0c442.
    assert_eq!(hash("")[..4], [0xe3, 0xb0, 0xc4, 0x42]);
}
