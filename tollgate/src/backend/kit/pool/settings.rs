//! How a pool sizes itself and keeps its sessions alive, and the options every SQL backend
//! reads into that, in the same words for each.

use std::time::Duration;

/// Which sessions the keepalive pings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pinged {
    /// Every session not dedicated to a blocking statement (whose wait is its keepalive).
    Open,
    /// Only shared sessions that hold something.
    Holding,
}

/// The keepalive: every `interval`, a ping; one that fails, or gets no answer within
/// [`ping_limit`], ends the session.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Keepalive {
    pub(crate) interval: Duration,
    pub(crate) pinged: Pinged,
}

/// How a pool sizes itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    /// At most this many sessions, open or opening.
    pub(crate) max_sessions: usize,
    /// How many keys a shared session takes before the pool opens another (while it may).
    pub(crate) holds_per_session: usize,
    /// At most this many idle sessions are kept, if set; one more is closed when it becomes
    /// idle.
    pub(crate) max_idle: Option<usize>,
    pub(crate) keepalive: Option<Keepalive>,
    /// Sessions that held nothing for this long are closed.
    pub(crate) idle_timeout: Option<Duration>,
    /// How long the pool's waits ride out an unreachable server (see [`crate::backend::kit::fault`]).
    pub(crate) unreachable_timeout: Option<Duration>,
}

/// The options every SQL backend's builder and URL take, read and checked once for all, in
/// the same words for each.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolOptions {
    /// At most this many sessions (`pool_size`, default 16).
    pub(crate) pool_size: usize,
    /// How often sessions are pinged (`keepalive`, default 1 s; `None`: never).
    pub(crate) keepalive: Option<Duration>,
    /// Sessions that held nothing this long close (`idle_timeout`, default 60 s).
    pub(crate) idle_timeout: Option<Duration>,
    /// How long a wait rides out an unreachable server (`unreachable_timeout`, default 30 s;
    /// `None`: until the wait's deadline); see [`crate::backend::kit::fault`].
    pub(crate) unreachable_timeout: Option<Duration>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            pool_size: 16,
            keepalive: Some(Duration::from_secs(1)),
            idle_timeout: Some(Duration::from_secs(60)),
            unreachable_timeout: Some(crate::backend::kit::fault::DEFAULT_UNREACHABLE_TIMEOUT),
        }
    }
}

impl PoolOptions {
    /// The defaults, with whatever of `pool_size`, `keepalive`, `idle_timeout` and
    /// `unreachable_timeout` the URL gives (durations also `never`).
    pub(crate) fn from_url(
        options: &mut crate::backend::kit::options::UrlOptions,
    ) -> crate::Result<Self> {
        let defaults = PoolOptions::default();
        Ok(PoolOptions {
            pool_size: options.count("pool_size")?.unwrap_or(defaults.pool_size),
            keepalive: options
                .duration_or_never("keepalive")?
                .unwrap_or(defaults.keepalive),
            idle_timeout: options
                .duration_or_never("idle_timeout")?
                .unwrap_or(defaults.idle_timeout),
            unreachable_timeout: crate::backend::kit::fault::unreachable_timeout_option(options)?,
        })
    }

    /// Rejects values no pool can work with; `backend` names the backend in the message.
    pub(crate) fn check(&self, backend: &str) -> crate::Result<()> {
        if self.pool_size == 0 {
            return Err(crate::Error::invalid(format!(
                "{backend} pool size must be at least 1"
            )));
        }
        if self.keepalive.is_some_and(|interval| interval.is_zero()) {
            return Err(crate::Error::invalid(format!(
                "{backend} keepalive interval must be above zero"
            )));
        }
        if self.idle_timeout.is_some_and(|timeout| timeout.is_zero()) {
            return Err(crate::Error::invalid(format!(
                "{backend} idle timeout must be above zero"
            )));
        }
        Ok(())
    }

    /// The pool's settings, its sessions pinged as `pinged` says, each shared session taking
    /// `holds_per_session` keys before another opens.
    pub(crate) fn settings(&self, pinged: Pinged, holds_per_session: usize) -> Settings {
        Settings {
            max_sessions: self.pool_size,
            holds_per_session,
            max_idle: None,
            keepalive: self
                .keepalive
                .map(|interval| Keepalive { interval, pinged }),
            idle_timeout: self.idle_timeout,
            unreachable_timeout: self.unreachable_timeout,
        }
    }
}

/// How long a keepalive ping sent every `interval` may go unanswered before its session
/// counts as dead: twice the interval, at least a second. A network that silently drops
/// everything would otherwise leave the ping waiting for as long as TCP retransmits.
pub(crate) fn ping_limit(interval: Duration) -> Duration {
    (interval * 2).max(Duration::from_secs(1))
}
