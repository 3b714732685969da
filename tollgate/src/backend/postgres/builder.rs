//! Configuring a PostgreSQL provider: its builder, and the URL that fills one.

use std::sync::Arc;
use std::time::Duration;

use super::{connection, listener, PostgresProvider, BACKEND};
use crate::backend::kit::options::UrlOptions;
use crate::backend::kit::pool;
use crate::{Error, Result};

/// The URL options tokio-postgres reads (0.7.18's `Config::param`), handed on to it;
/// tollgate reads `sslmode` itself.
const PASSED_ON: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// How connections are encrypted.
#[derive(Clone)]
pub(crate) enum Tls {
    Plain,
    Native(super::tls::LazyTls),
}

/// Configures a [`PostgresProvider`].
#[derive(Clone)]
pub struct PostgresProviderBuilder {
    pub(super) config: tokio_postgres::Config,
    pub(super) tls: Tls,
    pub(super) pool: pool::PoolOptions,
    pub(super) allow_hashing: bool,
}

impl std::fmt::Debug for PostgresProviderBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresProviderBuilder")
            .field("hosts", &self.config.get_hosts())
            .field("pool", &self.pool)
            .finish()
    }
}

impl PostgresProviderBuilder {
    /// At most this many sessions (default 16). Held locks share sessions; each wait that
    /// cannot be satisfied at once needs a session of its own while it waits.
    pub fn pool_size(mut self, pool_size: usize) -> Self {
        self.pool.pool_size = pool_size;
        self
    }

    /// Runs `SELECT 1` on every idle or holding session this often (default every second;
    /// `None`: never), so that a silently dead connection is noticed and its handles' loss
    /// signals fire: a ping that fails, or gets no answer within twice the interval (at least
    /// 1 s), ends the session. A session the server ends is noticed at once either way.
    pub fn keepalive(mut self, interval: Option<Duration>) -> Self {
        self.pool.keepalive = interval;
        self
    }

    /// Closes a session once it has held nothing for this long (default 60 s); `None` keeps
    /// every session open until the provider is dropped.
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

    /// Whether names that are not a packed ASCII name or a hex key are hashed to a key
    /// (default true). Without hashing, such names are an [`Error::InvalidArgument`].
    pub fn allow_hashing(mut self, allow_hashing: bool) -> Self {
        self.allow_hashing = allow_hashing;
        self
    }

    /// The provider. Connections are opened when first needed.
    pub fn build(self) -> Result<PostgresProvider> {
        self.pool.check(BACKEND)?;
        let listener = listener::Listener::new(self.config.clone(), self.tls.clone());
        let pool = connection::new_pool(self.config, self.tls, &self.pool);
        Ok(PostgresProvider {
            pool: Arc::new(pool),
            listener: Arc::new(listener),
            allow_hashing: self.allow_hashing,
        })
    }
}

impl PostgresProvider {
    /// A builder from a connection URL (`postgres://user:password@host:port/db`, also
    /// `postgresql://`) or a `key=value` connection string.
    ///
    /// Besides libpq's options that tokio-postgres understands, the URL may carry
    /// `sslmode` (`disable`, `prefer` (default), `require`: encrypt without verifying,
    /// `verify-full`: encrypt and verify the certificate and host name), `pool_size=N`,
    /// `keepalive=DURATION` (default 1 s), `idle_timeout=DURATION` (default 60 s) and
    /// `unreachable_timeout=DURATION` (default 30 s), each also `never` (see
    /// [`PostgresProviderBuilder::keepalive`], [`PostgresProviderBuilder::idle_timeout`] and
    /// [`PostgresProviderBuilder::unreachable_timeout`]); durations as [`crate::parse_duration`]
    /// reads them (`30`, `250ms`, `5s`). Any other key is an error that names it.
    pub fn builder(url: &str) -> Result<PostgresProviderBuilder> {
        let mut pool = pool::PoolOptions::default();
        let mut sslmode = String::from("prefer");
        let connection_string =
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                let mut parsed = url::Url::parse(url)
                    .map_err(|error| Error::invalid(format!("bad postgres URL: {error}")))?;
                let mut options = UrlOptions::new(BACKEND, parsed.query().unwrap_or(""))?;
                pool = pool::PoolOptions::from_url(&mut options)?;
                sslmode = options.take("sslmode").unwrap_or(sslmode);
                let kept = options.finish(PASSED_ON)?;
                if kept.is_empty() {
                    parsed.set_query(None);
                } else {
                    parsed.query_pairs_mut().clear().extend_pairs(kept);
                }
                parsed.to_string()
            } else {
                url.to_owned()
            };
        let mut config: tokio_postgres::Config = connection_string
            .parse()
            .map_err(|error| Error::invalid(format!("bad postgres connection string: {error}")))?;
        let tls = tls_for(&sslmode, &mut config)?;
        if config.get_application_name().is_none() {
            config.application_name("tollgate");
        }
        Ok(PostgresProviderBuilder {
            config,
            tls,
            pool,
            allow_hashing: true,
        })
    }
}

/// The TLS set-up `sslmode` asks for, applied to `config`.
fn tls_for(sslmode: &str, config: &mut tokio_postgres::Config) -> Result<Tls> {
    Ok(match sslmode {
        "disable" => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            Tls::Plain
        }
        "prefer" | "require" | "verify-ca" | "verify-full" => {
            config.ssl_mode(if sslmode == "prefer" {
                tokio_postgres::config::SslMode::Prefer
            } else {
                tokio_postgres::config::SslMode::Require
            });
            // Set up at the first handshake, not here (see `tls`).
            Tls::Native(super::tls::LazyTls::new(super::tls::Verify {
                certificate: sslmode.starts_with("verify"),
                host: sslmode == "verify-full",
            }))
        }
        other => {
            return Err(Error::invalid(format!(
                "postgres URL option sslmode={other:?}: expected disable, prefer, require, \
                 verify-ca or verify-full"
            )))
        }
    })
}
