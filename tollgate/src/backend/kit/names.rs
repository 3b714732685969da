//! The name-hashing helper of DistributedLock's name mappings (its file-system and MySQL
//! providers agree on it), written once.

use sha2::{Digest, Sha512};

/// How many base32 characters of the hash a mapped name carries.
pub(crate) const HASH_CHARS: usize = 32;

/// 32 base32 characters (RFC 4648 alphabet, upper case, bits taken low-first) of the
/// SHA-512 of `bytes`: 160 bits, well inside SHA-512's 512.
pub(crate) fn sha512_base32(bytes: &[u8]) -> String {
    const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha512::digest(bytes);
    let mut out = String::with_capacity(HASH_CHARS);
    let (mut buffer, mut bits) = (0u32, 0u32);
    let mut bytes = digest.iter();
    while out.len() < HASH_CHARS {
        if bits < 5 {
            buffer |= u32::from(*bytes.next().unwrap_or(&0)) << bits;
            bits += 8;
        }
        out.push(char::from(BASE32[(buffer & 31) as usize]));
        buffer >>= 5;
        bits -= 5;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::sha512_base32;

    #[test]
    fn distributed_lock_vector() {
        // DistributedLock.MySql maps "" to "__empty__" + the lower-cased hash of "".
        assert_eq!(
            sha512_base32(b"").to_lowercase(),
            "p6ad62yppho33ytkibum5wbqhqvbcsxa"
        );
    }
}
