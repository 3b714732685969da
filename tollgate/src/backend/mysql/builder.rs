//! Configuring a MySQL provider: its builder, and the URL that fills one.

use std::sync::Arc;
use std::time::Duration;

use super::{connection, MySqlProvider, BACKEND};
use crate::backend::kit::options::UrlOptions;
use crate::backend::kit::pool;
use crate::{Error, Result};

const DEFAULT_POOL_SIZE: usize = 16;
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(1);
/// How long a connection that holds nothing stays open by default.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The URL options of mysql_async 0.37 that apply to a single connection, handed on to it.
const PASSED_ON: &[&str] = &[
    "tcp_keepalive",
    "max_allowed_packet",
    "wait_timeout",
    "enable_cleartext_plugin",
    "reset_connection",
    "tcp_nodelay",
    "stmt_cache_size",
    "prefer_socket",
    "secure_auth",
    "client_found_rows",
    "socket",
    "compression",
    "require_ssl",
    "verify_ca",
    "verify_identity",
    "built_in_roots",
];

/// Configures a [`MySqlProvider`].
#[derive(Clone, Debug)]
pub struct MySqlProviderBuilder {
    opts: mysql_async::Opts,
    pool_size: usize,
    keepalive: Option<Duration>,
    idle_timeout: Option<Duration>,
    exact_names: bool,
}

impl MySqlProviderBuilder {
    /// At most this many connections (default 16).
    pub fn pool_size(mut self, pool_size: usize) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// How often connections that hold locks are pinged, which is how soon a lost
    /// connection is noticed (default 1 s; `None`: never): a ping that fails, or gets no
    /// answer within twice the interval (at least 1 s), fires the loss signals of the
    /// connection's handles.
    pub fn keepalive(mut self, interval: Option<Duration>) -> Self {
        self.keepalive = interval;
        self
    }

    /// Closes a connection once it has held nothing for this long (default 60 s); `None`
    /// keeps every connection open until the provider is dropped.
    pub fn idle_timeout(mut self, idle_timeout: Option<Duration>) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Use names as `GET_LOCK` names without mapping (then case-insensitive, as MySQL is);
    /// empty names and names over 64 characters are rejected.
    pub fn exact_names(mut self, exact_names: bool) -> Self {
        self.exact_names = exact_names;
        self
    }

    /// The provider. Connections are opened when first needed.
    pub fn build(self) -> Result<MySqlProvider> {
        pool::check_options(BACKEND, self.pool_size, self.keepalive, self.idle_timeout)?;
        let pool =
            connection::new_pool(self.opts, self.pool_size, self.keepalive, self.idle_timeout);
        Ok(MySqlProvider {
            pool: Arc::new(pool),
            exact_names: self.exact_names,
        })
    }
}

impl MySqlProvider {
    /// A builder from a URL: `mysql://user:password@host:3306/db` (or `mariadb://`), with
    /// `pool_size=N`, `keepalive=DURATION` (default 1 s) and `idle_timeout=DURATION` (default
    /// 60 s), each also `never` (durations as [`crate::parse_duration`] reads them: `30`,
    /// `250ms`, `5s`), and the options of mysql_async that apply to a connection
    /// (`require_ssl`, `verify_ca`, `compression`, `socket`, `tcp_keepalive`, …; its pool
    /// options do not apply: tollgate pools its own connections). Any other key is an error
    /// that names it.
    pub fn builder(url: &str) -> Result<MySqlProviderBuilder> {
        let rest = url
            .strip_prefix("mysql://")
            .or_else(|| url.strip_prefix("mariadb://"))
            .ok_or_else(|| Error::invalid("a MySQL URL starts with mysql:// or mariadb://"))?;
        let mut parsed = url::Url::parse(&format!("mysql://{rest}"))
            .map_err(|error| Error::invalid(format!("bad mysql URL: {error}")))?;
        let mut options = UrlOptions::new(BACKEND, parsed.query().unwrap_or(""))?;
        let pool_size = options.count("pool_size")?.unwrap_or(DEFAULT_POOL_SIZE);
        let keepalive = options
            .duration_or_never("keepalive")?
            .unwrap_or(Some(DEFAULT_KEEPALIVE));
        let idle_timeout = options
            .duration_or_never("idle_timeout")?
            .unwrap_or(Some(DEFAULT_IDLE_TIMEOUT));
        let kept = options.finish(PASSED_ON)?;
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        let opts = mysql_async::Opts::from_url(parsed.as_str())
            .map_err(|error| Error::invalid(format!("bad mysql URL: {error}")))?;
        Ok(MySqlProviderBuilder {
            opts,
            pool_size,
            keepalive,
            idle_timeout,
            exact_names: false,
        })
    }
}
