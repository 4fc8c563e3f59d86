//! Secrets: generated, formatted, checked and hashed here and nowhere else.
//!
//! Format (docs/contract.md §1): `idt:TKN-NNNN-NNNN:<opaque>`, where `<opaque>` is 40
//! base62 characters from the OS CSPRNG followed by 6 base62 characters that
//! hold a CRC32 of everything before them. The checksum lets a secret scanner
//! (or [`parse`]) reject look-alikes offline, without touching the store.
//!
//! This module must never log a secret, and [`Secret`]'s `Debug` never shows
//! one: only the SHA-256 ([`SecretHash`]) is ever stored.

use sha2::{Digest, Sha256};
use std::fmt;

use crate::domain::TokenId;

const PREFIX: &str = "idt:";
const RANDOM_CHARS: usize = 40;
const CHECK_CHARS: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// `idt:` + `TKN-NNNN-NNNN` + `:` + 46.
pub const SECRET_LEN: usize = PREFIX.len() + 13 + 1 + RANDOM_CHARS + CHECK_CHARS;

/// A plain secret. Exists only between generation and the create response.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// SHA-256 of a secret: the only form the store keeps.
pub type SecretHash = [u8; 32];

impl Secret {
    /// A fresh secret for `id` from the OS CSPRNG.
    pub fn generate(id: &TokenId) -> Secret {
        let mut s = String::with_capacity(SECRET_LEN);
        s.push_str(PREFIX);
        s.push_str(id.as_str());
        s.push(':');
        let mut filled = 0;
        let mut buf = [0u8; 64];
        while filled < RANDOM_CHARS {
            getrandom::fill(&mut buf).expect("the OS random number generator failed");
            for c in buf.iter().filter_map(|&b| base62_of(b)) {
                if filled == RANDOM_CHARS {
                    break;
                }
                s.push(c);
                filled += 1;
            }
        }
        let check = crc32fast::hash(s.as_bytes());
        s.push_str(&base62_fixed(check));
        Secret(s)
    }

    /// The text to hand to the client, once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> SecretHash {
        hash(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a string is not one of our secrets. Deliberately coarse: it must not
/// help anybody build a valid-looking one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Checks shape and checksum, and returns the token id the secret names.
/// Decided offline: no store access.
pub fn parse(s: &str) -> Result<TokenId, Malformed> {
    if s.len() != SECRET_LEN || !s.is_ascii() {
        return Err(Malformed);
    }
    let rest = s.strip_prefix(PREFIX).ok_or(Malformed)?;
    let (id, opaque) = rest.split_at(13);
    let id = TokenId::parse(id).map_err(|_| Malformed)?;
    let opaque = opaque.strip_prefix(':').ok_or(Malformed)?;
    if !opaque.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Malformed);
    }
    let (body, check) = s.split_at(s.len() - CHECK_CHARS);
    if base62_fixed(crc32fast::hash(body.as_bytes())) != check {
        return Err(Malformed);
    }
    Ok(id)
}

/// SHA-256 of a secret: what the stores keep, and what a presented secret's
/// token must hold for it to verify.
pub fn hash(s: &str) -> SecretHash {
    Sha256::digest(s.as_bytes()).into()
}

/// The base62 character a random byte stands for, or `None` for a byte
/// rejected so that every character stays equally likely (rejection
/// sampling): 248 = 4 * 62 is the largest multiple of 62 that fits in a byte.
fn base62_of(b: u8) -> Option<char> {
    (b < 248).then(|| BASE62[(b % 62) as usize] as char)
}

fn base62_fixed(mut n: u32) -> String {
    let mut out = [b'0'; CHECK_CHARS];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out.to_vec()).expect("base62 is ASCII")
}

#[cfg(test)]
mod tests;
