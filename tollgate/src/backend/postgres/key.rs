//! PostgreSQL advisory lock keys, compatible bit for bit with `PostgresAdvisoryLockKey` of the
//! .NET library DistributedLock.Postgres, so that .NET and Rust services sharing one database
//! exclude each other when they use the same name.
//!
//! A name becomes a key by the first of these rules that applies:
//!
//! 1. An ASCII string of at most [`AdvisoryKey::MAX_ASCII_LEN`] (9) characters is packed into
//!    the pair space. Starting from 0, each character's 7-bit code is shifted in from the right,
//!    then one 0 bit, then seven 1 bits for each missing character (9 minus the length). That
//!    is `7 × len + 1 + 7 × (9 − len) = 64` bits, split high/low into the two `i32`s:
//!    `""` → `0x7FFF_FFFF_FFFF_FFFF`, `"a"` → `0xC2FF_FFFF_FFFF_FFFF`,
//!    `"abcdefghi"` → `0xC38B_1E4C_B9B3_E8D2`. Distinct strings give distinct keys (the 0 bit
//!    marks where the characters end).
//! 2. Exactly 16 hex digits: a 64-bit key (`"ffffffffffffffff"` is `-1`).
//! 3. 8 hex digits, a comma, 8 hex digits: a pair of 32-bit keys.
//! 4. Anything else, when hashing is allowed: the first 8 bytes of the SHA-1 of the UTF-8 name,
//!    read little-endian, as a 64-bit key.
//!
//! Hex digits may be upper or lower case. Like .NET's `int.Parse` with
//! `NumberStyles.AllowHexSpecifier`, each 8-character hex part may end in NUL characters after
//! at least one hex digit (`"1234567\0"` reads as `0x01234567`); nothing else (signs, spaces,
//! `0x`) is accepted.
//!
//! A key prints (with [`Display`](fmt::Display)) as a string that parses back to the same key:
//! a pair whose bits are a rule-1 packing prints as that ASCII string, other pairs as
//! `xxxxxxxx,xxxxxxxx` and 64-bit keys as 16 hex digits (lower case). The alternate form
//! (`{:#}`) always prints the hex form.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use sha1::{Digest, Sha1};

use crate::{Error, Result};

/// A PostgreSQL advisory lock key.
///
/// The two variants are separate key spaces in PostgreSQL: `Single(0)` and `Pair(0, 0)` are
/// different locks. Build one from a name with [`AdvisoryKey::from_name`] or [`str::parse`]
/// (which allows hashing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdvisoryKey {
    /// One 64-bit key.
    Single(i64),
    /// A pair of 32-bit keys (a separate key space from 64-bit keys).
    Pair(i32, i32),
}

/// Bits per packed ASCII character.
const ASCII_CHAR_BITS: u32 = 7;
/// The largest ASCII code, also seven 1 bits of padding.
const ASCII_CHAR_MASK: u64 = (1 << ASCII_CHAR_BITS) - 1;
/// Hex digits in each 32-bit part of a hex name.
const HEX_PART_LEN: usize = 8;
/// Length of a 64-bit hex name.
const HEX_LEN: usize = 2 * HEX_PART_LEN;
/// Length of a pair hex name.
const SEPARATED_HEX_LEN: usize = HEX_LEN + 1;
/// What separates the two parts of a pair hex name.
const HEX_SEPARATOR: u8 = b',';

impl AdvisoryKey {
    /// The longest ASCII name that is packed into a key without hashing.
    pub const MAX_ASCII_LEN: usize = 9;

    /// A key in the 64-bit key space.
    pub const fn from_i64(key: i64) -> Self {
        AdvisoryKey::Single(key)
    }

    /// A key in the key space of pairs of 32-bit keys.
    pub const fn from_pair(key1: i32, key2: i32) -> Self {
        AdvisoryKey::Pair(key1, key2)
    }

    /// The key for `name`, exactly as DistributedLock's
    /// `new PostgresAdvisoryLockKey(name, allowHashing)` computes it (see the
    /// [module documentation](self) for the rules).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `name` fits none of the exact forms (ASCII of at most 9
    /// characters, 16 hex digits, or 8 hex digits, a comma and 8 hex digits) and
    /// `allow_hashing` is false.
    pub fn from_name(name: &str, allow_hashing: bool) -> Result<Self> {
        if let Some(bits) = encode_ascii(name) {
            Ok(Self::from_bits_pair(bits))
        } else if let Some(key) = parse_hex(name) {
            Ok(key)
        } else if allow_hashing {
            Ok(AdvisoryKey::Single(hash_name(name)))
        } else {
            Err(Error::invalid(format!(
                "the name {name:?} is not a PostgreSQL advisory lock key: allow hashing, or use \
                 (1) an ASCII string of at most {max} characters, (2) {HEX_LEN} hex digits (a \
                 64-bit key, e.g. \"7fffffffffffffff\"), or (3) {HEX_PART_LEN} hex digits, a \
                 comma and {HEX_PART_LEN} hex digits (a pair of 32-bit keys, e.g. \
                 \"7fffffff,00000001\")",
                max = Self::MAX_ASCII_LEN,
            )))
        }
    }

    /// True for a key in the 64-bit key space ([`AdvisoryKey::Single`]).
    pub const fn is_single(&self) -> bool {
        matches!(self, AdvisoryKey::Single(_))
    }

    /// The key's 64 bits as two 32-bit halves, high first.
    ///
    /// For a pair this is the pair itself; for a 64-bit key it is how PostgreSQL stores it in
    /// `pg_locks` (`classid` = high half, `objid` = low half, with `objsubid` = 1 for a 64-bit
    /// key and 2 for a pair).
    pub const fn halves(&self) -> (i32, i32) {
        match *self {
            AdvisoryKey::Single(key) => ((key >> 32) as i32, key as i32),
            AdvisoryKey::Pair(key1, key2) => (key1, key2),
        }
    }

    /// The pair whose 64 bits, high half first, are `bits`.
    const fn from_bits_pair(bits: u64) -> Self {
        AdvisoryKey::Pair((bits >> 32) as i32, bits as i32)
    }

    /// The key's 64 bits (a pair's halves combined high first).
    const fn bits(&self) -> u64 {
        let (high, low) = self.halves();
        ((high as u32 as u64) << 32) | low as u32 as u64
    }
}

impl From<i64> for AdvisoryKey {
    fn from(key: i64) -> Self {
        AdvisoryKey::Single(key)
    }
}

impl From<(i32, i32)> for AdvisoryKey {
    fn from((key1, key2): (i32, i32)) -> Self {
        AdvisoryKey::Pair(key1, key2)
    }
}

impl FromStr for AdvisoryKey {
    type Err = Error;

    /// [`AdvisoryKey::from_name`] with hashing allowed, so it never fails.
    fn from_str(name: &str) -> Result<Self> {
        AdvisoryKey::from_name(name, true)
    }
}

impl fmt::Display for AdvisoryKey {
    /// Prints a string that [`AdvisoryKey::from_name`] parses back to this key, even without
    /// hashing: the ASCII name for a pair that is an ASCII packing (which may contain control
    /// characters, e.g. nine NULs for `Pair(0, 0)`), else `xxxxxxxx,xxxxxxxx` for a pair and 16
    /// hex digits for a 64-bit key. `{:#}` always prints the hex forms.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AdvisoryKey::Single(key) => write!(f, "{key:016x}"),
            AdvisoryKey::Pair(key1, key2) => {
                if !f.alternate() {
                    if let Some((chars, len)) = decode_ascii(self.bits()) {
                        return chars[..len]
                            .iter()
                            .try_for_each(|&c| f.write_char(char::from(c)));
                    }
                }
                write!(f, "{key1:08x},{key2:08x}")
            }
        }
    }
}

/// Rule 1: the packing of an ASCII name of at most 9 characters, or `None` for other names.
fn encode_ascii(name: &str) -> Option<u64> {
    // .NET checks the UTF-16 length; for an all-ASCII string it equals the byte length.
    if name.len() > AdvisoryKey::MAX_ASCII_LEN || !name.is_ascii() {
        return None;
    }
    let mut bits = name
        .bytes()
        .fold(0u64, |bits, c| (bits << ASCII_CHAR_BITS) | u64::from(c));
    bits <<= 1; // the 0 bit that ends the characters
    for _ in name.len()..AdvisoryKey::MAX_ASCII_LEN {
        bits = (bits << ASCII_CHAR_BITS) | ASCII_CHAR_MASK;
    }
    Some(bits)
}

/// The inverse of [`encode_ascii`]: the characters (first `len` of the array) if `bits` is a
/// packing, or `None`.
fn decode_ascii(mut bits: u64) -> Option<([u8; AdvisoryKey::MAX_ASCII_LEN], usize)> {
    // Each missing character left seven 1 bits at the bottom. The group holding the 0 bit is
    // never all 1s, so stripping whole groups of 1s finds the length exactly.
    let mut len = AdvisoryKey::MAX_ASCII_LEN;
    while len > 0 && bits & ASCII_CHAR_MASK == ASCII_CHAR_MASK {
        len -= 1;
        bits >>= ASCII_CHAR_BITS;
    }
    if bits & 1 != 0 {
        return None;
    }
    bits >>= 1;
    let mut chars = [0u8; AdvisoryKey::MAX_ASCII_LEN];
    for c in chars[..len].iter_mut().rev() {
        *c = (bits & ASCII_CHAR_MASK) as u8;
        bits >>= ASCII_CHAR_BITS;
    }
    Some((chars, len))
}

/// Rules 2 and 3: 16 hex digits, or 8 hex digits, a comma and 8 hex digits.
fn parse_hex(name: &str) -> Option<AdvisoryKey> {
    // Every character of an accepted name is ASCII, so byte positions are .NET's UTF-16
    // positions.
    let bytes = name.as_bytes();
    let separated = match bytes.len() {
        HEX_LEN => false,
        SEPARATED_HEX_LEN if bytes[HEX_PART_LEN] == HEX_SEPARATOR => true,
        _ => return None,
    };
    let high = parse_hex_part(&bytes[..HEX_PART_LEN])?;
    let low = parse_hex_part(&bytes[bytes.len() - HEX_PART_LEN..])?;
    let bits = (u64::from(high) << 32) | u64::from(low);
    Some(if separated {
        AdvisoryKey::from_bits_pair(bits)
    } else {
        AdvisoryKey::Single(bits as i64)
    })
}

/// One 8-character hex part, as .NET's `int.TryParse(part, NumberStyles.AllowHexSpecifier)`
/// reads it: at least one hex digit, then only NULs (which .NET ignores at the end of a number).
fn parse_hex_part(part: &[u8]) -> Option<u32> {
    let end = part.iter().rposition(|&c| c != 0)? + 1;
    part[..end].iter().try_fold(0u32, |value, &c| {
        let digit = char::from(c).to_digit(16)?;
        Some((value << 4) | digit)
    })
}

/// Rule 4: the first 8 bytes of the SHA-1 of the UTF-8 name, little-endian.
fn hash_name(name: &str) -> i64 {
    let digest = Sha1::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn exact(name: &str) -> AdvisoryKey {
        AdvisoryKey::from_name(name, false)
            .unwrap_or_else(|e| panic!("{name:?} should parse without hashing: {e}"))
    }

    fn hashed(name: &str) -> AdvisoryKey {
        AdvisoryKey::from_name(name, true).unwrap()
    }

    fn rejected(name: &str) -> bool {
        matches!(
            AdvisoryKey::from_name(name, false),
            Err(Error::InvalidArgument(_))
        )
    }

    #[test]
    fn ascii_vectors_from_the_issue() {
        assert_eq!(exact("").bits(), 0x7FFF_FFFF_FFFF_FFFF);
        assert_eq!(exact("a").bits(), 0xC2FF_FFFF_FFFF_FFFF);
        assert_eq!(exact("abcdefghi").bits(), 0xC38B_1E4C_B9B3_E8D2);
        // Split high/low into the pair.
        assert_eq!(exact(""), AdvisoryKey::Pair(0x7FFF_FFFF, -1));
        assert_eq!(exact("a"), AdvisoryKey::Pair(0xC2FF_FFFFu32 as i32, -1));
        assert_eq!(
            exact("abcdefghi"),
            AdvisoryKey::Pair(0xC38B_1E4Cu32 as i32, 0xB9B3_E8D2u32 as i32)
        );
    }

    #[test]
    fn more_ascii_vectors() {
        // Computed independently (Python) from the same layout.
        assert_eq!(exact("\0").bits(), 0x00FF_FFFF_FFFF_FFFF);
        assert_eq!(exact("\x7f").bits(), 0xFEFF_FFFF_FFFF_FFFF);
        assert_eq!(exact(&"\x7f".repeat(8)).bits(), 0xFFFF_FFFF_FFFF_FF7F);
        assert_eq!(exact(&"\x7f".repeat(9)).bits(), 0xFFFF_FFFF_FFFF_FFFE);
        assert_eq!(exact("ASCII").bits(), 0x834E_1C99_2FFF_FFFF);
        assert_eq!(exact("1,2").bits(), 0x62B1_93FF_FFFF_FFFF);
        assert_eq!(exact(&"\0".repeat(9)), AdvisoryKey::Pair(0, 0));
        // Hashing allowed changes nothing for exact names.
        for name in [
            "",
            "a",
            "abcdefghi",
            "ASCII",
            "0123456789abcdef",
            "01234567,89abcdef",
        ] {
            assert_eq!(hashed(name), exact(name));
        }
    }

    #[test]
    fn hash_vector_from_the_issue() {
        let name = "漢".repeat(18);
        assert_eq!(
            hashed(&name),
            AdvisoryKey::Single(-5_707_277_204_051_710_361)
        );
        assert_eq!(name.parse::<AdvisoryKey>().unwrap(), hashed(&name));
        assert!(rejected(&name));
    }

    #[test]
    fn names_that_need_hashing() {
        // Too long for ASCII packing; non-ASCII even when short (DistributedLock rejects "漢字"
        // without hashing).
        for name in ["aaaaaaaaaa", "漢字", "é", "some very long name"] {
            assert!(rejected(name), "{name:?}");
            let key = hashed(name);
            assert!(key.is_single(), "{name:?}");
            assert_eq!(key, AdvisoryKey::Single(hash_name(name)));
        }
        assert_ne!(hashed("some very long name"), hashed("same very long name"));
        let message = AdvisoryKey::from_name("aaaaaaaaaa", false)
            .unwrap_err()
            .to_string();
        assert!(message.contains("\"aaaaaaaaaa\""), "{message}");
        assert!(message.contains("hex digits"), "{message}");
    }

    #[test]
    fn hex_names() {
        assert_eq!(exact("0000000000000000"), AdvisoryKey::Single(0));
        assert_eq!(exact("0000000000000001"), AdvisoryKey::Single(1));
        assert_eq!(exact("8000000000000000"), AdvisoryKey::Single(i64::MIN));
        assert_eq!(exact("7fffffffffffffff"), AdvisoryKey::Single(i64::MAX));
        assert_eq!(exact("FFFFFFFFFFFFFFFF"), AdvisoryKey::Single(-1));
        assert_eq!(
            exact("0123456789AbCdEf"),
            AdvisoryKey::Single(0x0123_4567_89AB_CDEF)
        );
        assert_eq!(exact("00000000,00000000"), AdvisoryKey::Pair(0, 0));
        assert_eq!(exact("00000003,ffffffff"), AdvisoryKey::Pair(3, -1));
        assert_eq!(
            exact("80000000,7FFFFFFF"),
            AdvisoryKey::Pair(i32::MIN, i32::MAX)
        );
    }

    #[test]
    fn malformed_hex_names_are_not_exact() {
        for name in [
            "000000000000000g",
            "0x00000000000000",
            "+000000000000000",
            " 000000000000000",
            "000000000000000 ",
            "00000000;00000000",
            "0000000,000000000",
            "00000000,0000000g",
            "00000000,-0000001",
            "000000000000000",
            "00000000000000000",
            "000000000,0000000",
            "0000000000000000,",
            concat!("\0\0\0\0\0\0\0\0", "00000000"), // first part has no digit
            concat!("\0", "000000000000000"),        // leading NUL
            concat!("0000", "\0", "00000000000"),    // NUL inside a part
            "00000000\0\0\0\0\0\0\0\0",              // second part has no digit
            "０００００００００００００００",        // full-width digits
        ] {
            assert!(rejected(name), "{name:?}");
            assert_eq!(
                hashed(name),
                AdvisoryKey::Single(hash_name(name)),
                "{name:?}"
            );
        }
    }

    #[test]
    fn hex_parts_may_end_in_nuls_like_dotnet() {
        // .NET's hex int parsing ignores trailing NULs after at least one digit.
        assert_eq!(
            exact(concat!("1234567\0", "89abcdef")),
            AdvisoryKey::Single(0x0123_4567_89AB_CDEF)
        );
        assert_eq!(
            exact("1\0\0\0\0\0\0\0,2\0\0\0\0\0\0\0"),
            AdvisoryKey::Pair(1, 2)
        );
        assert_eq!(
            exact(concat!("0\0\0\0\0\0\0\0", "0000000f")),
            AdvisoryKey::Single(0xF)
        );
    }

    #[test]
    fn key_spaces_are_separate() {
        assert_ne!(AdvisoryKey::Single(0), AdvisoryKey::Pair(0, 0));
        assert_ne!(exact("0000000000000000"), exact("00000000,00000000"));
        assert_eq!(exact(&"\0".repeat(9)), exact("00000000,00000000"));
        assert_ne!(exact(""), exact("\0"));
        assert_ne!(exact("\0"), exact("a"));
        assert_ne!(exact("base38"), exact("base37"));
        assert_ne!(exact("ASCII"), exact("ASCIi"));
    }

    #[test]
    fn printing() {
        assert_eq!(AdvisoryKey::Single(0).to_string(), "0000000000000000");
        assert_eq!(AdvisoryKey::Single(1).to_string(), "0000000000000001");
        assert_eq!(AdvisoryKey::Single(-1).to_string(), "ffffffffffffffff");
        assert_eq!(
            AdvisoryKey::Single(i64::MIN).to_string(),
            "8000000000000000"
        );
        assert_eq!(AdvisoryKey::Pair(3, -1).to_string(), "00000003,ffffffff");
        assert_eq!(AdvisoryKey::Pair(-1, -1).to_string(), "ffffffff,ffffffff");
        assert_eq!(AdvisoryKey::Pair(0, 0).to_string(), "\0".repeat(9));
        assert_eq!(exact("abcdefghi").to_string(), "abcdefghi");
        assert_eq!(exact("").to_string(), "");
        // The alternate form is always hex.
        assert_eq!(
            format!("{:#}", AdvisoryKey::Pair(0, 0)),
            "00000000,00000000"
        );
        assert_eq!(format!("{:#}", exact("a")), "c2ffffff,ffffffff");
        assert_eq!(format!("{:#}", AdvisoryKey::Single(1)), "0000000000000001");
    }

    #[test]
    fn keys_round_trip_through_their_names() {
        let mut keys = vec![
            AdvisoryKey::Single(0),
            AdvisoryKey::Single(1),
            AdvisoryKey::Single(-1),
            AdvisoryKey::Single(i64::MIN),
            AdvisoryKey::Single(i64::MAX),
            AdvisoryKey::Pair(0, 0),
            AdvisoryKey::Pair(-1, -1),
            AdvisoryKey::Pair(3, -1),
            AdvisoryKey::Pair(i32::MIN, i32::MAX),
            AdvisoryKey::Pair(i32::MAX, i32::MIN),
        ];
        // Plus pseudo-random keys (xorshift64*), about half of them ASCII packings.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..200_000 {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            keys.push(if i % 2 == 0 {
                AdvisoryKey::Single(bits as i64)
            } else {
                AdvisoryKey::from_bits_pair(bits)
            });
        }
        let mut packings = 0;
        for key in keys {
            let name = key.to_string();
            assert_eq!(exact(&name), key, "{name:?}");
            assert_eq!(hashed(&name), key, "{name:?}");
            assert_eq!(name.parse::<AdvisoryKey>().unwrap(), key, "{name:?}");
            assert_eq!(exact(&format!("{key:#}")), key);
            if name.len() <= AdvisoryKey::MAX_ASCII_LEN {
                packings += 1;
            }
        }
        assert!(packings > 40_000, "{packings}");
    }

    #[test]
    fn every_repeated_ascii_character_round_trips() {
        let mut seen = HashMap::new();
        seen.insert(exact(""), String::new());
        for code in 0u8..=127 {
            for len in 1..=AdvisoryKey::MAX_ASCII_LEN {
                let name = char::from(code).to_string().repeat(len);
                let key = exact(&name);
                assert!(!key.is_single(), "{name:?}");
                assert_eq!(hashed(&name), key, "{name:?}");
                assert_eq!(key.to_string(), name);
                assert_eq!(exact(&key.to_string()), key);
                if let Some(other) = seen.insert(key, name.clone()) {
                    panic!("{name:?} and {other:?} both map to {key:?}");
                }
            }
        }
        assert_eq!(seen.len(), 128 * AdvisoryKey::MAX_ASCII_LEN + 1);
    }

    #[test]
    fn ascii_packing_is_a_bijection_on_short_strings() {
        // Every string of up to 3 characters over a varied alphabet decodes back to itself.
        let alphabet = [0u8, 1, b'0', b',', b'a', b'Z', 0x7E, 0x7F].map(char::from);
        let mut names = vec![String::new()];
        let mut shorter = vec![String::new()];
        for _ in 0..3 {
            shorter = shorter
                .iter()
                .flat_map(|n| alphabet.iter().map(move |&c| format!("{n}{c}")))
                .collect();
            names.extend(shorter.iter().cloned());
        }
        let mut seen = HashMap::new();
        for name in &names {
            let key = exact(name);
            assert_eq!(&key.to_string(), name);
            assert!(seen.insert(key, name).is_none(), "{name:?}");
        }
        assert_eq!(names.len(), 1 + 8 + 64 + 512);
    }

    #[test]
    fn constructors_and_accessors() {
        assert_eq!(AdvisoryKey::from_i64(5), AdvisoryKey::Single(5));
        assert_eq!(AdvisoryKey::from(5i64), AdvisoryKey::Single(5));
        assert_eq!(AdvisoryKey::from_pair(1, 2), AdvisoryKey::Pair(1, 2));
        assert_eq!(AdvisoryKey::from((1, 2)), AdvisoryKey::Pair(1, 2));
        assert!(AdvisoryKey::Single(0).is_single());
        assert!(!AdvisoryKey::Pair(0, 0).is_single());
        assert_eq!(AdvisoryKey::Single(i64::MIN).halves(), (i32::MIN, 0));
        assert_eq!(AdvisoryKey::Single(-1).halves(), (-1, -1));
        assert_eq!(AdvisoryKey::Single(0x1_0000_0002).halves(), (1, 2));
        assert_eq!(AdvisoryKey::Pair(3, -1).halves(), (3, -1));
        assert_eq!(AdvisoryKey::Pair(-1, 3).bits(), 0xFFFF_FFFF_0000_0003);
    }
}
