//! Configuring a MySQL provider: its builder, and the URL that fills one.

use std::sync::Arc;
use std::time::Duration;

use super::{connection, MySqlProvider, BACKEND};
use crate::backend::kit::options::UrlOptions;
use crate::backend::kit::pool;
use crate::{Error, Result};

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
    pool: pool::PoolOptions,
    exact_names: bool,
}

impl MySqlProviderBuilder {
    /// At most this many connections (default 16).
    pub fn pool_size(mut self, pool_size: usize) -> Self {
        self.pool.pool_size = pool_size;
        self
    }

    /// How often connections that hold locks are pinged, which is how soon a lost
    /// connection is noticed (default 1 s; `None`: never): a ping that fails, or gets no
    /// answer within twice the interval (at least 1 s), fires the loss signals of the
    /// connection's handles.
    pub fn keepalive(mut self, interval: Option<Duration>) -> Self {
        self.pool.keepalive = interval;
        self
    }

    /// Closes a connection once it has held nothing for this long (default 60 s); `None`
    /// keeps every connection open until the provider is dropped.
    pub fn idle_timeout(mut self, idle_timeout: Option<Duration>) -> Self {
        self.pool.idle_timeout = idle_timeout;
        self
    }

    /// How long a wait keeps trying a server it cannot reach, or whose connection keeps
    /// dropping (default 30 s; `None`: until the wait's own deadline). A wait whose
    /// connection drops, whose session is killed or whose server restarts reconnects with a
    /// jittered backoff (50 ms doubling to 1 s) and keeps waiting; it fails, saying for how
    /// long the server was unreachable, only at its deadline or once this much time has passed
    /// without an answer. Errors that a retry cannot mend (a wrong password, a missing
    /// database) fail at once.
    pub fn unreachable_timeout(mut self, limit: Option<Duration>) -> Self {
        self.pool.unreachable_timeout = limit;
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
        self.pool.check(BACKEND)?;
        let pool = connection::new_pool(self.opts, &self.pool);
        Ok(MySqlProvider {
            pool: Arc::new(pool),
            exact_names: self.exact_names,
        })
    }
}

impl MySqlProvider {
    /// A builder from a URL: `mysql://user:password@host:3306/db` (or `mariadb://`), with
    /// `pool_size=N`, `keepalive=DURATION` (default 1 s), `idle_timeout=DURATION` (default
    /// 60 s) and `unreachable_timeout=DURATION` (default 30 s), each also `never` (durations
    /// as [`crate::parse_duration`] reads them: `30`, `250ms`, `5s`; see the builder's methods
    /// of the same names), and the options of mysql_async that apply to a connection
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
        let pool = pool::PoolOptions::from_url(&mut options)?;
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
            pool,
            exact_names: false,
        })
    }
}
