//! Configuring a Redis provider: its builder, and the URL that fills one (one server, or
//! several for RedLock).

use std::sync::Arc;
use std::time::Duration;

use super::redlock::{Server, Shared};
use super::{Lease, RedisProvider, BACKEND};
use crate::backend::kit::fault;
use crate::backend::kit::options::{MultiHostUrl, UrlOptions};
use crate::{Error, Result};

const DEFAULT_EXPIRY: Duration = Duration::from_secs(30);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest default extension cadence, so that a hold deleted behind its holder's back is
/// noticed within a few seconds whatever the expiry.
const MAX_DEFAULT_CADENCE: Duration = Duration::from_millis(2500);
/// The URL options the `redis` crate reads, handed on to it.
const PASSED_ON: &[&str] = &["protocol", "db", "user", "pass"];

/// Configures a [`RedisProvider`].
#[derive(Clone)]
pub struct RedisProviderBuilder {
    servers: Vec<(redis::Client, String)>,
    expiry: Duration,
    min_validity: Option<Duration>,
    extension_cadence: Option<Duration>,
    connect_timeout: Duration,
    unreachable_timeout: Option<Duration>,
    key_prefix: String,
}

impl std::fmt::Debug for RedisProviderBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisProviderBuilder")
            .field(
                "servers",
                &self
                    .servers
                    .iter()
                    .map(|(_, label)| label)
                    .collect::<Vec<_>>(),
            )
            .field("expiry", &self.expiry)
            .field("min_validity", &self.min_validity)
            .field("extension_cadence", &self.extension_cadence)
            .field("unreachable_timeout", &self.unreachable_timeout)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

impl RedisProviderBuilder {
    /// A builder over clients configured by the caller: one for a single server, several
    /// (an odd number is best) for RedLock.
    pub fn from_clients(clients: impl IntoIterator<Item = redis::Client>) -> Self {
        let servers = clients
            .into_iter()
            .map(|client| {
                let label = client.get_connection_info().addr().to_string();
                (client, label)
            })
            .collect();
        RedisProviderBuilder {
            servers,
            expiry: DEFAULT_EXPIRY,
            min_validity: None,
            extension_cadence: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            unreachable_timeout: Some(fault::DEFAULT_UNREACHABLE_TIMEOUT),
            key_prefix: String::new(),
        }
    }

    /// How long a hold lasts unless extended (default 30 s): how long a crashed holder keeps
    /// a name.
    pub fn expiry(mut self, expiry: Duration) -> Self {
        self.expiry = expiry;
        self
    }

    /// The least validity an acquire must leave to count (default 90 % of the expiry); an
    /// attempt that took longer is given back and tried again.
    pub fn min_validity(mut self, min_validity: Duration) -> Self {
        self.min_validity = Some(min_validity);
        self
    }

    /// How often holds are extended (default a third of the expiry, at most 2.5 s); also how
    /// soon a hold deleted or expired behind the holder's back is noticed. Must be shorter than
    /// the minimum validity.
    pub fn extension_cadence(mut self, cadence: Duration) -> Self {
        self.extension_cadence = Some(cadence);
        self
    }

    /// How long opening a connection may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a wait keeps trying servers it cannot reach (for RedLock: a majority of
    /// them), or whose connections keep dropping (default 30 s; `None`: until the wait's own
    /// deadline). A wait whose connection drops or whose server restarts reconnects with a
    /// jittered backoff (50 ms doubling to 1 s) and keeps waiting; it fails, saying for how
    /// long the server was unreachable, only at its deadline or once this much time has passed
    /// without an answer. Errors that a retry cannot mend (wrong credentials) fail at once.
    pub fn unreachable_timeout(mut self, limit: Option<Duration>) -> Self {
        self.unreachable_timeout = limit;
        self
    }

    /// Put before every key (default none), e.g. `"myapp:"`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The provider, after checking the options. Connections are opened when first needed.
    pub fn build(self) -> Result<RedisProvider> {
        if self.servers.is_empty() {
            return Err(Error::invalid("redis: at least one server is needed"));
        }
        let expiry = self.expiry;
        if expiry < Duration::from_millis(100) || expiry > Duration::from_secs(365 * 24 * 3600) {
            return Err(Error::invalid(format!(
                "redis expiry must be between 100 ms and a year, got {expiry:?}"
            )));
        }
        let min_validity = self.min_validity.unwrap_or(expiry.mul_f64(0.9));
        let extension_cadence = self
            .extension_cadence
            .unwrap_or((expiry / 3).min(MAX_DEFAULT_CADENCE));
        let lease = Lease {
            expiry,
            min_validity,
            extension_cadence,
        };
        if min_validity.is_zero() || min_validity + lease.drift() >= expiry {
            return Err(Error::invalid(format!(
                "redis min validity ({min_validity:?}) must be above zero and below the expiry \
                 ({expiry:?}) minus the clock drift allowance ({:?})",
                lease.drift()
            )));
        }
        if extension_cadence.is_zero() || extension_cadence >= min_validity {
            return Err(Error::invalid(format!(
                "redis extension cadence ({extension_cadence:?}) must be above zero and below \
                 the min validity ({min_validity:?}), or holds would lapse between extensions"
            )));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::invalid("redis connect timeout must be above zero"));
        }
        if let Some(open) = self.key_prefix.find('{') {
            if self.key_prefix[open + 1..].starts_with('}') {
                return Err(Error::invalid(format!(
                    "redis key prefix {:?}: an empty hash tag {{}} would put a primitive's keys \
                     in different cluster slots",
                    self.key_prefix
                )));
            }
        }
        let servers = self
            .servers
            .into_iter()
            .map(|(client, label)| Server::new(client, label, self.connect_timeout))
            .collect();
        Ok(RedisProvider {
            shared: Arc::new(Shared::new(servers, lease, self.unreachable_timeout)),
            prefix: self.key_prefix.into(),
        })
    }
}

impl RedisProvider {
    /// A builder from a URL (see the [module docs](super)): `redis://host:6379/0`,
    /// `rediss://host/`, or `redis://h1:6379,h2:6379,h3:6379` for RedLock, with options
    /// `expiry`, `min_validity`, `extension_cadence`, `connect_timeout`,
    /// `unreachable_timeout` (also `never`; durations as [`crate::parse_duration`] reads
    /// them: `30`, `250ms`, `5s`) and `prefix` in the query
    /// string, and the `redis` crate's `protocol` (and `db`, `user`, `pass` for Unix
    /// sockets). Any other key is an error that names it.
    pub fn builder(url: &str) -> Result<RedisProviderBuilder> {
        // The URL is not quoted back: it may carry a password.
        let bad = |why: &str| Error::invalid(format!("bad redis URL: {why}"));
        let MultiHostUrl {
            scheme,
            userinfo,
            hosts,
            path,
            query,
            fragment,
        } = MultiHostUrl::split(url)
            .ok_or_else(|| bad("expected redis://host or rediss://host"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "redis" && scheme != "rediss" {
            return Err(bad("the scheme must be redis or rediss"));
        }
        let mut builder = RedisProviderBuilder::from_clients([]);
        let mut options = UrlOptions::new(BACKEND, query)?;
        if let Some(expiry) = options.duration("expiry")? {
            builder.expiry = expiry;
        }
        builder.min_validity = options.duration("min_validity")?;
        builder.extension_cadence = options.duration("extension_cadence")?;
        if let Some(timeout) = options.duration("connect_timeout")? {
            builder.connect_timeout = timeout;
        }
        builder.unreachable_timeout = fault::unreachable_timeout_option(&mut options)?;
        if let Some(prefix) = options.take("prefix") {
            builder.key_prefix = prefix;
        }
        let kept = options.finish(PASSED_ON)?;
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(kept)
            .finish();
        // Servers as host (case-folded) and port (6379 when not given), to find one listed
        // twice however it is spelt.
        let mut seen: Vec<(String, u16)> = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() {
                return Err(bad("empty host"));
            }
            let mut server_url = format!("{scheme}://");
            if let Some(userinfo) = userinfo {
                server_url.push_str(userinfo);
                server_url.push('@');
            }
            server_url.push_str(host);
            server_url.push_str(path);
            if !query.is_empty() {
                server_url.push('?');
                server_url.push_str(&query);
            }
            if let Some(fragment) = fragment {
                server_url.push('#');
                server_url.push_str(fragment);
            }
            let parsed = url::Url::parse(&server_url).map_err(|error| bad(&error.to_string()))?;
            let server = (
                parsed.host_str().unwrap_or_default().to_ascii_lowercase(),
                parsed.port().unwrap_or(6379),
            );
            if seen.contains(&server) {
                return Err(bad(&format!(
                    "{host} is listed twice (RedLock needs distinct servers)"
                )));
            }
            seen.push(server);
            let client = redis::Client::open(parsed).map_err(|error| bad(&error.to_string()))?;
            builder.servers.push((client, host.to_owned()));
        }
        Ok(builder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_options() {
        let builder = RedisProvider::builder(
            "redis://:pw@h1:6379,h2:6380,[::1]:6381/2?expiry=3s&min_validity=2500ms&prefix=app%3A",
        )
        .unwrap();
        assert_eq!(builder.servers.len(), 3);
        assert_eq!(builder.expiry, Duration::from_secs(3));
        assert_eq!(builder.min_validity, Some(Duration::from_millis(2500)));
        assert_eq!(builder.key_prefix, "app:");
        let provider = builder.build().unwrap();
        assert_eq!(provider.server_count(), 3);
        assert_eq!(
            provider.shared.lease.extension_cadence,
            Duration::from_secs(1)
        );
        let default = RedisProvider::from_url("redis://h").unwrap();
        assert_eq!(
            default.shared.lease.extension_cadence,
            Duration::from_millis(2500)
        );
        assert!(RedisProvider::from_url("rediss://localhost/#insecure").is_ok());
        for bad in [
            "redis://",
            "redis://h1,,h2",
            "http://h",
            "redis://h?expiry=soon",
            "redis://h?expiry=10ms",
            "redis://h?expiry=10s&min_validity=10s",
            "redis://h?expiry=10s&extension_cadence=9.5s",
            "redis://h?prefix=%7B%7D",
            "redis://h/notanumber",
            "redis://[::1",
        ] {
            assert!(
                matches!(RedisProvider::from_url(bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }
}
