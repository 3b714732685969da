//! Lock names to `GET_LOCK` names, as DistributedLock.MySql maps them.
//!
//! `GET_LOCK` names are at most 64 characters and case-insensitive, and the server cuts them
//! at the first NUL. A name that is already lower case, non-empty, at most 64 characters and
//! free of NUL is used as it is; any other name becomes
//! its lower-cased prefix (`__empty__` for the empty name) followed by 32 lower-case base32
//! characters of the SHA-512 of the exact name, 64 characters at most. Since the hash covers
//! the exact name, `"ABC"` and `"abc"` stay different locks.

use crate::backend::kit::names::{sha512_base32, HASH_CHARS};

use crate::{Error, Result};

/// The longest name `GET_LOCK` accepts, in characters.
pub const MAX_LENGTH: usize = 64;

/// The `GET_LOCK` name for `name`.
pub fn lock_name(name: &str) -> String {
    let length = name.chars().count();
    if !name.is_empty()
        && length <= MAX_LENGTH
        && !name.contains('\0')
        && name.to_lowercase() == name
    {
        return name.to_owned();
    }
    let lowered = if name.is_empty() {
        String::from("__empty__")
    } else {
        name.to_lowercase()
    };
    let mut mapped: String = lowered
        .chars()
        .filter(|&c| c != '\0')
        .take(MAX_LENGTH - HASH_CHARS)
        .collect();
    mapped.push_str(&sha512_base32(name.as_bytes()).to_lowercase());
    mapped
}

/// Checks a name for exact-name mode: `GET_LOCK` must be able to take it as it is.
pub fn exact_name(name: &str) -> Result<String> {
    if name.is_empty() {
        return Err(Error::invalid("exact MySQL lock names cannot be empty"));
    }
    if name.contains('\0') {
        return Err(Error::invalid(format!(
            "exact MySQL lock names cannot contain NUL (the server cuts them there): {name:?}"
        )));
    }
    if name.chars().count() > MAX_LENGTH {
        return Err(Error::invalid(format!(
            "exact MySQL lock names are at most {MAX_LENGTH} characters: {name:?}"
        )));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::{exact_name, lock_name};

    #[test]
    fn matches_distributed_lock_vectors() {
        assert_eq!(lock_name(""), "__empty__p6ad62yppho33ytkibum5wbqhqvbcsxa");
        assert_eq!(lock_name("ABC"), "abczj4qr6tvn4a3kmgq4bukhowqyfrlxsb3");
        assert_eq!(lock_name("abc"), "abc");
        let long = "a".repeat(65);
        let mapped = lock_name(&long);
        assert_eq!(mapped.chars().count(), 64);
        assert!(mapped.starts_with(&"a".repeat(32)));
        assert_eq!(lock_name(&"a".repeat(64)), "a".repeat(64));
    }

    #[test]
    fn case_sensitive_for_users() {
        assert_ne!(
            lock_name("ABC").to_lowercase(),
            lock_name("abc").to_lowercase()
        );
        assert_ne!(lock_name("Straße"), lock_name("STRASSE"));
        for name in ["😀🔒", "a\0b", &"漢".repeat(100)] {
            assert!(lock_name(name).chars().count() <= 64);
        }
        // The server cuts names at NUL: no mapped name may contain one.
        let cut = ["a", "a\0", "a\0b", "a\0c"].map(lock_name);
        assert!(cut.iter().all(|mapped| !mapped.contains('\0')));
        for (index, mapped) in cut.iter().enumerate() {
            assert!(!cut[index + 1..].contains(mapped), "{cut:?}");
        }
    }

    #[test]
    fn exact_mode() {
        assert!(exact_name("").is_err());
        assert!(exact_name(&"x".repeat(65)).is_err());
        assert!(exact_name("a\0b").is_err());
        assert_eq!(exact_name("Mixed").unwrap(), "Mixed");
    }
}
