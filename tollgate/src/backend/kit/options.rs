//! URL options, read the same way on every backend: one duration grammar, one rule for
//! numbers and switches, and unknown or misspelt keys rejected with an error that names them.
//!
//! A backend takes the keys it knows from [`UrlOptions`], then [`UrlOptions::finish`] hands it
//! the rest that its client crate understands (listed by the backend) and rejects anything
//! else, suggesting the nearest known key.

use std::time::Duration;

use crate::{Error, Result};

/// Parses a duration as every tollgate option and the command line read one: a number of
/// seconds (`30`, `0.25`), or a number with units as `humantime` reads them (`250ms`, `5s`,
/// `2m`, `1h30m`, `2days`). An error says what was expected.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(tollgate::parse_duration("1.5").unwrap(), Duration::from_millis(1500));
/// assert_eq!(tollgate::parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
/// assert!(tollgate::parse_duration("soon").is_err());
/// ```
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    if text.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && text.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return text
            .parse::<f64>()
            .ok()
            .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
            .ok_or_else(|| format!("{text:?} is not a number of seconds"));
    }
    humantime::parse_duration(text).map_err(|error| {
        format!("{text:?} is not a duration ({error}; expected seconds, or e.g. 250ms, 5s, 2m)")
    })
}

/// The parts of a URL whose authority may list several hosts (`h1:1,h2:2`), which
/// `url::Url` would refuse: the scheme (as written), the user part (still percent-encoded),
/// the hosts, the path, the query (without `?`) and the fragment (without `#`).
#[cfg(any(feature = "redis", feature = "zookeeper"))]
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MultiHostUrl<'a> {
    pub(crate) scheme: &'a str,
    pub(crate) userinfo: Option<&'a str>,
    pub(crate) hosts: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: &'a str,
    pub(crate) fragment: Option<&'a str>,
}

#[cfg(any(feature = "redis", feature = "zookeeper"))]
impl<'a> MultiHostUrl<'a> {
    /// Splits `url` (`scheme://[userinfo@]hosts[/path][?query][#fragment]`); `None` without
    /// `://`.
    pub(crate) fn split(url: &'a str) -> Option<Self> {
        let (scheme, rest) = url.split_once("://")?;
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let (before_fragment, fragment) = match tail.split_once('#') {
            Some((before, fragment)) => (before, Some(fragment)),
            None => (tail, None),
        };
        let (path, query) = before_fragment
            .split_once('?')
            .unwrap_or((before_fragment, ""));
        Some(MultiHostUrl {
            scheme,
            userinfo,
            hosts,
            path,
            query,
            fragment,
        })
    }
}

/// The query options of one backend URL, taken key by key.
#[derive(Debug)]
pub(crate) struct UrlOptions {
    backend: &'static str,
    pairs: Vec<(String, String)>,
    taken: Vec<&'static str>,
}

// Each backend reads its own few kinds of value; a build with some backends left out does not
// use them all.
#[cfg_attr(
    not(all(
        feature = "local",
        feature = "postgres",
        feature = "mysql",
        feature = "redis"
    )),
    allow(dead_code)
)]
impl UrlOptions {
    /// The options of `query` (`key=value&…`, percent-encoded, without the `?`). A key given
    /// twice is an error: which one would win is not obvious.
    pub(crate) fn new(backend: &'static str, query: &str) -> Result<Self> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if pairs.iter().any(|(seen, _)| *seen == key) {
                return Err(Error::invalid(format!(
                    "{backend} URL option {key:?} is given twice"
                )));
            }
            pairs.push((key.into_owned(), value.into_owned()));
        }
        Ok(UrlOptions {
            backend,
            pairs,
            taken: Vec::new(),
        })
    }

    /// The raw value of `key`, if given.
    pub(crate) fn take(&mut self, key: &'static str) -> Option<String> {
        self.taken.push(key);
        let at = self.pairs.iter().position(|(seen, _)| seen == key)?;
        Some(self.pairs.remove(at).1)
    }

    /// `key` read with `parse`, whose error says what was expected.
    pub(crate) fn parsed<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(&str) -> std::result::Result<T, String>,
    ) -> Result<Option<T>> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        parse(&value)
            .map(Some)
            .map_err(|why| self.bad(key, &value, &why))
    }

    /// A duration ([`parse_duration`]).
    pub(crate) fn duration(&mut self, key: &'static str) -> Result<Option<Duration>> {
        self.parsed(key, parse_duration)
    }

    /// A duration, or `never`: `Some(None)`.
    pub(crate) fn duration_or_never(
        &mut self,
        key: &'static str,
    ) -> Result<Option<Option<Duration>>> {
        self.parsed(key, |value| match value {
            "never" => Ok(None),
            value => parse_duration(value)
                .map(Some)
                .map_err(|why| format!("{why}, or `never`")),
        })
    }

    /// A count of at least 1.
    pub(crate) fn count(&mut self, key: &'static str) -> Result<Option<usize>> {
        self.parsed(key, |value| match value.parse::<usize>() {
            Ok(count) if count >= 1 => Ok(count),
            _ => Err(String::from("expected a whole number, 1 or more")),
        })
    }

    /// A switch: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`.
    pub(crate) fn flag(&mut self, key: &'static str) -> Result<Option<bool>> {
        self.parsed(key, |value| match value {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(String::from("expected true or false")),
        })
    }

    /// The options left, all of which must be among `passed_on` (the keys the backend's client
    /// crate reads), in the order given; any other key is an error naming it and the nearest
    /// known key.
    pub(crate) fn finish(self, passed_on: &[&str]) -> Result<Vec<(String, String)>> {
        for (key, _) in &self.pairs {
            if passed_on.contains(&key.as_str()) {
                continue;
            }
            let known: Vec<&str> = self
                .taken
                .iter()
                .copied()
                .chain(passed_on.iter().copied())
                .collect();
            let hint = nearest(key, &known)
                .map(|near| format!(" (did you mean {near:?}?)"))
                .unwrap_or_default();
            return Err(Error::invalid(format!(
                "unknown {} URL option {key:?}{hint}; the options are {}",
                self.backend,
                known.join(", ")
            )));
        }
        Ok(self.pairs)
    }

    fn bad(&self, key: &str, value: &str, why: &str) -> Error {
        Error::invalid(format!(
            "{} URL option {key}={value:?}: {why}",
            self.backend
        ))
    }
}

/// The known key nearest to `key` when it is close enough to be a slip (a few edits).
fn nearest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len() / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(feature = "redis", feature = "zookeeper"))]
    #[test]
    fn multi_host_urls_split() {
        let parts = MultiHostUrl::split("zk://u:p@a@h1:1,h2/dir/x?k=v&w=1#frag").unwrap();
        assert_eq!(
            parts,
            MultiHostUrl {
                scheme: "zk",
                userinfo: Some("u:p@a"),
                hosts: "h1:1,h2",
                path: "/dir/x",
                query: "k=v&w=1",
                fragment: Some("frag"),
            }
        );
        let bare = MultiHostUrl::split("redis://h").unwrap();
        assert_eq!((bare.hosts, bare.path, bare.query), ("h", "", ""));
        assert!(MultiHostUrl::split("local:").is_none());
    }

    #[test]
    fn durations() {
        let ok = |text: &str| parse_duration(text).unwrap();
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("30"), Duration::from_secs(30));
        assert_eq!(ok("0.25"), Duration::from_millis(250));
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok(" 5s "), Duration::from_secs(5));
        for bad in ["", "soon", "-1", "1..2", "5 parsecs", "1e3", "NaN", "inf"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn options_are_taken_checked_and_passed_on() {
        let mut options =
            UrlOptions::new("test", "expiry=2s&pool_size=3&sslmode=disable&never=never").unwrap();
        assert_eq!(
            options.duration("expiry").unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(options.count("pool_size").unwrap(), Some(3));
        assert_eq!(options.duration_or_never("never").unwrap(), Some(None));
        assert_eq!(options.duration("absent").unwrap(), None);
        assert_eq!(
            options.finish(&["sslmode"]).unwrap(),
            vec![("sslmode".to_owned(), "disable".to_owned())]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let error = UrlOptions::new("redis", "expiry=2s&expiry=3s").unwrap_err();
        assert!(
            error.to_string().contains("\"expiry\" is given twice"),
            "{error}"
        );

        let mut options = UrlOptions::new("redis", "expirey=1s").unwrap();
        options.duration("expiry").unwrap();
        let error = options.finish(&["protocol"]).unwrap_err().to_string();
        assert!(error.contains("\"expirey\""), "{error}");
        assert!(error.contains("did you mean \"expiry\""), "{error}");

        let mut options = UrlOptions::new("postgres", "pool_size=0&keepalive=x").unwrap();
        let error = options.count("pool_size").unwrap_err().to_string();
        assert!(error.contains("pool_size=\"0\""), "{error}");
        let error = options.duration("keepalive").unwrap_err().to_string();
        assert!(error.contains("keepalive=\"x\""), "{error}");

        let options = UrlOptions::new("local", "zzz=1").unwrap();
        let error = options.finish(&[]).unwrap_err().to_string();
        assert!(!error.contains("did you mean"), "{error}");
    }

    #[test]
    fn nearest_keys() {
        assert_eq!(
            nearest("pool_sise", &["pool_size", "keepalive"]),
            Some("pool_size")
        );
        assert_eq!(nearest("KEEPALIVE", &["pool_size", "keepalive"]), None);
        assert_eq!(nearest("idle", &["idle_timeout"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
