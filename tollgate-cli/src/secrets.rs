//! Passwords stay out of sight: given outside the URL (`--password-file`, `TOLLGATE_PASSWORD`),
//! kept from the command, and never printed (messages show a backend as `scheme://host:port`).

use std::ffi::OsString;

use crate::{status, Failure};

/// The variable a password may come in; the command does not inherit it.
pub const PASSWORD_VARIABLE: &str = "TOLLGATE_PASSWORD";

/// Where a URL's parts are: `scheme://userinfo@hosts/rest`, as byte ranges.
struct Parts<'a> {
    scheme: &'a str,
    userinfo: Option<&'a str>,
    hosts: &'a str,
    rest: &'a str,
}

fn parts(url: &str) -> Option<Parts<'_>> {
    let (scheme, after) = url.split_once("://")?;
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    Some(Parts {
        scheme,
        userinfo,
        hosts,
        rest,
    })
}

/// The backend as messages show it: `scheme://host:port` (several hosts for RedLock), with no
/// user, password, path or options; `local:` and `file:///DIR` as they are, without options.
pub fn label(url: &str) -> String {
    if let Some(parts) = parts(url) {
        if parts.scheme.eq_ignore_ascii_case("file") {
            let path = parts.rest.split(['?', '#']).next().unwrap_or_default();
            return format!("file://{}{path}", parts.hosts);
        }
        return format!("{}://{}", parts.scheme, parts.hosts);
    }
    match url.split_once(':') {
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("local") => "local:".into(),
        // A PostgreSQL key=value string, or something else: no part of it is safe to show.
        _ if url.contains('=') => "postgres (key=value connection string)".into(),
        _ => "the backend".into(),
    }
}

/// `url` without its password (the user stays), for the command's environment.
pub fn without_password(url: &str) -> String {
    let Some(parts) = parts(url) else {
        return url.into();
    };
    match parts.userinfo.and_then(|userinfo| userinfo.split_once(':')) {
        Some((user, _)) => format!("{}://{user}@{}{}", parts.scheme, parts.hosts, parts.rest),
        None => url.into(),
    }
}

/// Everything but RFC 3986's unreserved characters is percent-encoded in a URL's user part.
const USERINFO: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The password from `--password-file` (its first line) or `TOLLGATE_PASSWORD`, if any.
pub fn password(file: Option<&std::path::Path>) -> Result<Option<String>, Failure> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|error| {
            Failure::new(
                status::USAGE,
                format!("cannot read the password file {}: {error}", path.display()),
            )
        })?;
        return Ok(Some(text.lines().next().unwrap_or_default().to_owned()));
    }
    match std::env::var_os(PASSWORD_VARIABLE) {
        None => Ok(None),
        Some(value) => value.into_string().map(Some).map_err(|_: OsString| {
            Failure::new(status::USAGE, format!("{PASSWORD_VARIABLE} is not UTF-8"))
        }),
    }
}

/// `url` with `password` put in: in the user part of a `scheme://` URL, or as `password='…'`
/// of a PostgreSQL key=value string. Backends without passwords (`local:`, `file:`) take none
/// from a file; the variable is left unused for them.
pub fn with_password(url: &str, password: &str, from_file: bool) -> Result<String, Failure> {
    let usage = |message: &str| Failure::new(status::USAGE, message);
    let scheme = url
        .split_once(':')
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    if matches!(scheme.as_deref(), Some("local" | "file")) {
        return if from_file {
            Err(usage(
                "--password-file: the local backend takes no password",
            ))
        } else {
            Ok(url.into())
        };
    }
    let Some(parts) = parts(url) else {
        if url.contains("password=") {
            return Err(usage(
                "a password is given both in the connection string and apart",
            ));
        }
        let quoted = password.replace('\\', "\\\\").replace('\'', "\\'");
        return Ok(format!("{url} password='{quoted}'"));
    };
    let user = match parts.userinfo {
        Some(userinfo) if userinfo.contains(':') => {
            return Err(usage("a password is given both in the URL and apart"));
        }
        Some(user) => user,
        None => "",
    };
    Ok(format!(
        "{}://{user}:{}@{}{}",
        parts.scheme,
        percent_encoding::utf8_percent_encode(password, USERINFO),
        parts.hosts,
        parts.rest
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_show_no_secrets() {
        assert_eq!(label("postgres://u:pw@h:5432/db?x=1"), "postgres://h:5432");
        assert_eq!(label("redis://:pw@h1:1,h2:2/0"), "redis://h1:1,h2:2");
        assert_eq!(label("file:///srv/locks?group=true"), "file:///srv/locks");
        assert_eq!(label("local:"), "local:");
        assert!(!label("host=h password=pw").contains("pw"));
    }

    #[test]
    fn passwords_go_in_and_out() {
        let url = with_password("mysql://root@h/db", "p@ss:/", true).unwrap();
        assert_eq!(url, "mysql://root:p%40ss%3A%2F@h/db");
        assert_eq!(without_password(&url), "mysql://root@h/db");
        assert_eq!(
            with_password("redis://h:6379", "pw", false).unwrap(),
            "redis://:pw@h:6379"
        );
        assert!(with_password("postgres://u:x@h/db", "pw", true).is_err());
        assert_eq!(
            with_password("host=h user=u", "it's", true).unwrap(),
            "host=h user=u password='it\\'s'"
        );
        assert_eq!(with_password("local:", "pw", false).unwrap(), "local:");
        assert!(with_password("file:///d", "pw", true).is_err());
    }
}
