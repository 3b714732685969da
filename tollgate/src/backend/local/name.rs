//! Lock names to file names.
//!
//! The scheme is DistributedLock.FileSystem's, so that both libraries agree on the file for a
//! name: a cleaned prefix of the name, then 32 characters of base32 (RFC 4648 alphabet, bits
//! taken low-first) of the SHA-512 of the UTF-8 name, then `.lock`; at most 64 characters.
//! The hash covers the exact name, so names that clean to the same prefix (or differ only in
//! case) still get different files, and no name can reach outside the directory.

use crate::backend::kit::names::{sha512_base32, HASH_CHARS};

const SUFFIX: &str = ".lock";
const MAX_FILE_NAME: usize = 64;
const MAX_PREFIX: usize = MAX_FILE_NAME - HASH_CHARS - SUFFIX.len();

/// The lock file name for `name` (not a path: no directory part, never `.` or `..`).
pub fn file_name(name: &str) -> String {
    let mut file = String::with_capacity(MAX_FILE_NAME);
    file.extend(name.chars().take(MAX_PREFIX).map(|c| {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            c
        } else {
            '_'
        }
    }));
    file.push_str(&sha512_base32(name.as_bytes()));
    file.push_str(SUFFIX);
    file
}

#[cfg(test)]
mod tests {
    use super::file_name;

    #[test]
    fn matches_distributed_lock_vectors() {
        assert_eq!(file_name(""), "P6AD62YPPHO33YTKIBUM5WBQHQVBCSXA.lock");
        assert_eq!(file_name("ABC"), "ABCZJ4QR6TVN4A3KMGQ4BUKHOWQYFRLXSB3.lock");
        assert_eq!(
            file_name("cool<>!/:x\\zzz"),
            "cool_____x_zzzATJSHZSADXN7WTL4DBU6JULFTEDVFF3L.lock"
        );
    }

    #[test]
    fn hostile_names_stay_inside_the_directory() {
        let long = "x".repeat(10_000);
        let names = [
            "..",
            ".",
            "/",
            "a/../../etc/passwd",
            "nul\0byte",
            "\"quoted\"",
            "😀🔒",
            &long,
        ];
        for name in names {
            let file = file_name(name);
            assert!(file.len() <= 64, "{file}");
            assert!(!file.contains('/') && !file.contains('\0'), "{file}");
            assert!(file != "." && file != "..");
            assert!(file.ends_with(".lock"));
        }
    }

    #[test]
    fn case_sensitive_and_distinct() {
        assert_ne!(file_name("abc"), file_name("ABC"));
        assert_ne!(file_name("a/b"), file_name("a_b"));
        assert_ne!(file_name("é"), file_name("e"));
    }
}
