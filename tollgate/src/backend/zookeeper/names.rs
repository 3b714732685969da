//! Paths as DistributedLock.ZooKeeper makes them, so that .NET and Rust processes that use
//! the same name under the same directory meet on the same node.
//!
//! A name that ZooKeeper accepts as a node name is used verbatim. Otherwise it is made into
//! one: the empty name becomes `EMPTY`; `.` and `..` (and `zookeeper` directly under the
//! root) get a `_` appended; and `/`, NUL, the control characters U+0001–U+001F and
//! U+007F–U+009F, surrogates and the private-use area (U+D800–U+F8FF) and U+FFF0–U+FFFF each
//! become `_`, counted in UTF-16 code units as .NET does (a character above U+FFFF is two).
//! A name that had to change gets the base64 of the SHA-512 of its UTF-8 appended (with `/`
//! in the hash made `_`), so that two names that change alike stay distinct.

use sha2::{Digest, Sha512};

use crate::{Error, Result};

/// Whether ZooKeeper rejects `c` in a node name (for a character above U+FFFF: both of its
/// UTF-16 code units are in the rejected surrogate range).
fn rejected(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{e000}'..='\u{f8ff}' | '\u{fff0}'..='\u{ffff}'
    ) || u32::from(c) > 0xffff
}

/// `name` as a node name directly under `directory` (a valid path, `/` for the root).
pub(crate) fn child_path(directory: &str, name: &str) -> String {
    let at_root = directory == "/";
    let converted = match name {
        "" => Some(String::from("EMPTY")),
        "." | ".." => Some(format!("{name}_")),
        "zookeeper" if at_root => Some(String::from("zookeeper_")),
        _ if name.chars().any(|c| c == '/' || rejected(c)) => {
            let mut converted = String::with_capacity(name.len());
            for c in name.chars() {
                match c {
                    c if u32::from(c) > 0xffff => converted.push_str("__"),
                    c if c == '/' || rejected(c) => converted.push('_'),
                    c => converted.push(c),
                }
            }
            Some(converted)
        }
        _ => None,
    };
    let safe = match converted {
        None => name.to_owned(),
        Some(converted) => {
            use base64::Engine as _;
            let hash =
                base64::engine::general_purpose::STANDARD.encode(Sha512::digest(name.as_bytes()));
            format!("{converted}{hash}").replace('/', "_")
        }
    };
    if at_root {
        format!("/{safe}")
    } else {
        format!("{directory}/{safe}")
    }
}

/// Checks a directory path as ZooKeeper would: absolute, no empty, `.` or `..` segment, no
/// trailing `/` (but for the root), no character ZooKeeper rejects.
pub(crate) fn check_directory(path: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid(format!("zookeeper path {path:?} {why}")));
    if !path.starts_with('/') {
        return bad("must start with /");
    }
    if path == "/" {
        return Ok(());
    }
    if path.ends_with('/') {
        return bad("must not end with /");
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return bad("has an empty segment (//)"),
            "." | ".." => return bad("has a . or .. segment"),
            _ if segment.chars().any(rejected) => {
                return bad("has a character ZooKeeper rejects in node names")
            }
            _ => {}
        }
    }
    Ok(())
}

/// The sequence number of a child named `prefix` followed by ZooKeeper's sequence suffix (ten
/// characters, or eleven starting with `-` after the 32-bit counter wrapped, either an
/// optionally signed decimal), as DistributedLock reads it; `None` for any other child.
pub(crate) fn sequence(child: &str, prefix: &str) -> Option<i32> {
    let suffix = child.strip_prefix(prefix)?;
    let digits = match suffix.len() {
        10 if !suffix.starts_with('+') => suffix.strip_prefix('-').unwrap_or(suffix),
        11 if suffix.starts_with('-') => &suffix[1..],
        _ => return None,
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    suffix.parse().ok()
}

/// Puts sequence numbers in creation order across the 32-bit wrap: sorted as unsigned, then
/// rotated to start after the largest circular gap when that gap is at least 4,000,000,000
/// (the numbers in use then span less than 300 million, so the gap is where the counter
/// wrapped). `false` when there is no such gap (the order is then unknown from the numbers
/// alone and the caller orders by creation zxid).
pub(crate) fn in_creation_order<T>(entries: &mut [(i32, T)]) -> bool {
    entries.sort_by_key(|(sequence, _)| *sequence as u32);
    if entries.len() < 2 {
        return true;
    }
    let count = entries.len();
    let mut widest = (0u64, 0usize);
    for index in 0..count {
        let here = u64::from(entries[index].0 as u32);
        let next = u64::from(entries[(index + 1) % count].0 as u32);
        let gap = (next + (1 << 32) - here) % (1 << 32);
        if gap > widest.0 {
            widest = (gap, (index + 1) % count);
        }
    }
    if widest.0 < 4_000_000_000 {
        return false;
    }
    entries.rotate_left(widest.1);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DistributedLock.ZooKeeper's own expectations (its `ZooKeeperPathTest`), and a few more
    /// derived by its documented rules.
    #[test]
    fn paths_match_distributed_lock() {
        let cases = [
            ("/", "abc", "/abc"),
            ("/", "MyLockName", "/MyLockName"),
            ("/xyz/foo", "bar", "/xyz/foo/bar"),
            ("/", "...", "/..."),
            ("/", "café", "/café"),
            ("/", "", "/EMPTYz4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg_SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg=="),
            ("/", "/", "/_XIbwNE7SSUJciq0_Jytyos4P84h5HzFJfq8lf6cmKUh_qv1_0n6w3WNV1VCeLz+vdnEQFc2SB9JI1VD96hUnTw=="),
            ("/", "a/", "/a__H_H9kmjf3WHGaL30_9h_RNn+GipsxwkovtbOR9nXFUa9lT++YHfmM7FomA2RoilE23u5yCsImr8ImvgukZ3lQ=="),
            ("/bar", "\0", "/bar/_uCRNAomB1pOve0Vq+O+kytY9KC4Z_xSULCRuUNk1HSJwSoAqccNYC2Nw3kzrKTwySoQjNCVX1OXDhDjw42kQ7g=="),
            ("/a.a", ".", "/a.a/._C2EkHXwXvLsbrucJTRS3xFHv7Mf_y9klmKDxPTE8yevCoH5h8Ae69Y+_lP+ahpW91crnzgO78elOk2E6APJfIQ=="),
            ("/b..b/a", "..", "/b..b/a/.._Rh_NqllQfVidZsBWJatUTHt1u_RuBCeYLhNba59jtMe0u1rD7QNtp2QKxdN3Ohz1E1VnJ_yfFMevOUWeSrtxxw=="),
            ("/a/b", "/..", "/a/b/_..p0p_PzMVsjkHpwCrL63ktSqk0bLNJX9_X+7BtDMfHWr5usgqZ3n5VVI3FSGJ0YPNrps_Pf7f9yxeCzz+AiD0sw=="),
            ("/", "zookeeper", "/zookeeper_yX0zkYBzsEZ1VDADNUx54LUSt9VL9M9lOPoez38tnk4FrBtllVz+ksFllir7N2yla_wy22pIOnbpcfRkcVXBag=="),
            ("/", "zooKeeper", "/zooKeeper"),
            ("/a", "zookeeper", "/a/zookeeper"),
            ("/", "\u{0}\u{7f}\u{f8ff}\u{ffff}", "/____7A++E8vPxbYKJmhCX1bUTCwjqJqW1POHfCeBk62R9hqB0Fd_uTUBIpv9mssG7K68FHZ_7wJ70UNRKsVH8CrngA=="),
            ("/", "\u{1F600}", "/__mxzotmSeZ44ct7yoWv6q51Ct1c+wZo0l67pefwA48ba9zEus2QkEnnUr4qOjwBWMDyu1oz2BAbLtXXSmbs4kJQ=="),
            ("/locks/x", "some/crazy/name", "/locks/x/some_crazy_nameAslH7l0KzD2ysyppyAwati8erX0b+iGfRaoCDofPz5bzemwNdqsX63b_LgB4X5zNBUvNqndIb3BQbtUpTDTJMg=="),
        ];
        for (directory, name, expected) in cases {
            assert_eq!(
                child_path(directory, name),
                expected,
                "{directory:?} {name:?}"
            );
        }
    }

    #[test]
    fn directories_are_checked() {
        for good in ["/", "/a", "/a/b.c/d"] {
            check_directory(good).unwrap();
        }
        for bad in ["", "a", "/a/", "//a", "/a//b", "/./a", "/a/..", "/a\u{0}"] {
            assert!(check_directory(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sequences_are_read_as_distributed_lock_reads_them() {
        assert_eq!(sequence("lock-0000000003", "lock-"), Some(3));
        assert_eq!(sequence("lock-2147483647", "lock-"), Some(i32::MAX));
        assert_eq!(sequence("lock--2147483648", "lock-"), Some(i32::MIN));
        assert_eq!(sequence("lock--000000002", "lock-"), Some(-2));
        for other in [
            "lock-000000003",
            "lock-+000000003",
            "read-0000000003",
            "lock-00000000x3",
        ] {
            assert_eq!(sequence(other, "lock-"), None, "{other}");
        }
    }

    #[test]
    fn creation_order_survives_the_wrap() {
        let mut plain = vec![(7, 'c'), (2, 'a'), (5, 'b')];
        assert!(in_creation_order(&mut plain));
        assert_eq!(plain.iter().map(|e| e.1).collect::<String>(), "abc");
        // i32::MAX, then the counter wraps to i32::MIN and goes on.
        let mut wrapped = vec![
            (i32::MIN + 1, 'd'),
            (i32::MAX - 1, 'a'),
            (i32::MIN, 'c'),
            (i32::MAX, 'b'),
        ];
        assert!(in_creation_order(&mut wrapped));
        assert_eq!(wrapped.iter().map(|e| e.1).collect::<String>(), "abcd");
        // Around the unsigned wrap (-1 is 0xFFFFFFFF, then 0).
        let mut around = vec![(1, 'c'), (-1, 'a'), (0, 'b')];
        assert!(in_creation_order(&mut around));
        assert_eq!(around.iter().map(|e| e.1).collect::<String>(), "abc");
        // Spread over the whole range: no telling from the numbers.
        let mut spread = vec![(0, 'a'), (i32::MIN, 'b')];
        assert!(!in_creation_order(&mut spread));
    }
}
