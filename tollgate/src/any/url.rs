//! [`AnyProvider::from_url`]: the backend a URL's scheme names, or why there is none.

use super::AnyProvider;
use crate::{Error, Result};

impl AnyProvider {
    /// A provider from a URL:
    ///
    /// | URL | backend |
    /// |---|---|
    /// | `local:` | same machine, per-user runtime directory |
    /// | `file:///some/dir` | same machine, lock files in `/some/dir` |
    /// | `postgres://user@host/db`, `postgresql://…` | PostgreSQL advisory locks |
    /// | `mysql://user@host/db`, `mariadb://…` | MySQL / MariaDB user locks (no reader-writer locks) |
    /// | `redis://host:6379/0`, `rediss://…` | Redis; `redis://h1,h2,h3` for RedLock over several |
    /// | `zookeeper://host:2181/dir`, `zk://…` | ZooKeeper; `zookeeper://h1:2181,h2:2181` for an ensemble (no upgradeable reader-writer locks) |
    ///
    /// Options go in the query string (`file:///dir?group=true`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a scheme whose backend was not compiled in, or any
    /// malformed URL.
    pub fn from_url(url: &str) -> Result<Self> {
        let scheme = url
            .split_once(':')
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            #[cfg(feature = "local")]
            Some("local" | "file") => {
                use crate::backend::local::{LocalProvider, BACKEND};
                Ok(AnyProvider::new(BACKEND, LocalProvider::from_url(url)?))
            }
            #[cfg(feature = "postgres")]
            Some("postgres" | "postgresql") => {
                use crate::backend::postgres::{PostgresProvider, BACKEND};
                Ok(AnyProvider::new(BACKEND, PostgresProvider::from_url(url)?))
            }
            #[cfg(feature = "mysql")]
            Some("mysql" | "mariadb") => {
                use crate::backend::mysql::{MySqlProvider, BACKEND};
                let provider = MySqlProvider::from_url(url)?;
                Ok(AnyProvider::builder(BACKEND, provider).semaphores().build())
            }
            #[cfg(feature = "redis")]
            Some("redis" | "rediss") => {
                use crate::backend::redis::{RedisProvider, BACKEND};
                let provider = RedisProvider::from_url(url)?;
                Ok(AnyProvider::builder(BACKEND, provider)
                    .semaphores()
                    .read_write_locks()
                    .build())
            }
            #[cfg(feature = "zookeeper")]
            Some("zookeeper" | "zk") => {
                use crate::backend::zookeeper::{ZooKeeperProvider, BACKEND};
                let provider = ZooKeeperProvider::from_url(url)?;
                Ok(AnyProvider::builder(BACKEND, provider)
                    .semaphores()
                    .read_write_locks()
                    .build())
            }
            // The URL is never quoted back: it may carry a password.
            #[cfg(not(feature = "local"))]
            Some(scheme @ ("local" | "file")) => Err(missing_feature(scheme, "local")),
            #[cfg(not(feature = "postgres"))]
            Some(scheme @ ("postgres" | "postgresql")) => Err(missing_feature(scheme, "postgres")),
            #[cfg(not(feature = "mysql"))]
            Some(scheme @ ("mysql" | "mariadb")) => Err(missing_feature(scheme, "mysql")),
            #[cfg(not(feature = "redis"))]
            Some(scheme @ ("redis" | "rediss")) => Err(missing_feature(scheme, "redis")),
            #[cfg(not(feature = "zookeeper"))]
            Some(scheme @ ("zookeeper" | "zk")) => Err(missing_feature(scheme, "zookeeper")),
            Some(scheme) if !scheme.is_empty() => Err(Error::invalid(format!(
                "no tollgate backend for URL scheme {scheme:?} (expected local:, file:, \
                 postgres:, mysql:, mariadb:, redis:, rediss:, zookeeper: or zk:)"
            ))),
            _ => Err(Error::invalid(
                "not a backend URL: expected SCHEME:…, e.g. local:, file:///dir, \
                 postgres://user@host/db",
            )),
        }
    }
}

/// The error for a URL whose backend this build left out.
#[cfg_attr(
    all(
        feature = "local",
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "zookeeper"
    ),
    allow(dead_code)
)]
fn missing_feature(scheme: &str, feature: &str) -> Error {
    Error::invalid(format!(
        "{scheme}: URLs need tollgate's `{feature}` cargo feature, which this build lacks"
    ))
}

#[cfg(all(test, feature = "local"))]
mod tests {
    use super::*;

    /// A URL of a backend this build left out names the cargo feature that brings it, and
    /// never quotes the URL (it may carry a password).
    #[test]
    fn a_left_out_backend_names_its_feature() {
        let urls: &[(&str, &str, bool)] = &[
            (
                "postgres://u:pw@h/db",
                "`postgres`",
                cfg!(feature = "postgres"),
            ),
            ("mysql://u:pw@h/db", "`mysql`", cfg!(feature = "mysql")),
            ("redis://:pw@h", "`redis`", cfg!(feature = "redis")),
            (
                "zookeeper://u:pw@h/dir",
                "`zookeeper`",
                cfg!(feature = "zookeeper"),
            ),
            ("file:///tmp/pw", "`local`", cfg!(feature = "local")),
        ];
        for &(url, feature, built) in urls {
            if built {
                continue;
            }
            let message = AnyProvider::from_url(url).unwrap_err().to_string();
            assert!(message.contains(feature), "{message}");
            assert!(!message.contains("pw"), "{message}");
        }
        let message = AnyProvider::from_url("zz://u:pw@h")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("\"zz\"") && !message.contains("pw"),
            "{message}"
        );
    }
}
