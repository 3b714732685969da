//! Transient faults, and how a wait rides them out.
//!
//! A fault is **transient** when trying again on a fresh connection may get past it: the
//! connection dropped or was killed, the server is restarting, shutting down or refusing
//! connections, a connect or a request timed out. Wrong credentials, a missing database, a bad
//! statement or a refused argument are not: they fail at once, however long the wait.
//! [`is_transient`] walks the error's source chain and asks each layer: the I/O error kinds
//! here, each backend's client errors in its own `transient` function.
//!
//! A wait that meets a transient fault keeps going ([`Outage`]): it tries again at once (a
//! pooled connection may have died since it was last used), then with the shared jittered
//! backoff, until the wait's deadline or until the server has been unreachable for the
//! backend's `unreachable_timeout` (default 30 s), whichever comes first, and then fails with
//! one error that says how long it tried.

// A build without the server backends rides nothing.
#![cfg_attr(
    not(any(
        feature = "postgres",
        feature = "mysql",
        feature = "redis",
        feature = "zookeeper"
    )),
    allow(dead_code)
)]

use std::error::Error as StdError;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::wait::{Backoff, Schedule};
use crate::{Error, Result};

/// How long a server may stay unreachable before a wait gives up, unless configured.
pub(crate) const DEFAULT_UNREACHABLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The first pause before trying an unreachable server again, and the longest.
const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(1);

/// The `unreachable_timeout` URL option, read the same way by every server backend: a
/// duration or `never` (`None`: until the wait's deadline); the default when absent.
pub(crate) fn unreachable_timeout_option(
    options: &mut super::options::UrlOptions,
) -> Result<Option<Duration>> {
    Ok(options
        .duration_or_never("unreachable_timeout")?
        .unwrap_or(Some(DEFAULT_UNREACHABLE_TIMEOUT)))
}

/// Whether `error` is a transient fault (see the [module docs](self)).
pub(crate) fn is_transient(error: &Error) -> bool {
    match error {
        Error::Backend {
            source: Some(source),
            ..
        } => chain_verdict(source.as_ref()).unwrap_or(false),
        _ => false,
    }
}

/// The verdict of the first layer of `link`'s source chain that has one.
pub(crate) fn chain_verdict(link: &(dyn StdError + 'static)) -> Option<bool> {
    let mut link = Some(link);
    while let Some(current) = link {
        if let Some(error) = current.downcast_ref::<std::io::Error>() {
            return io_verdict(error);
        }
        if let Some(verdict) = classify(current) {
            return Some(verdict);
        }
        link = current.source();
    }
    None
}

/// One layer's verdict, if it has one: `None` defers to the layer below.
fn classify(link: &(dyn StdError + 'static)) -> Option<bool> {
    if link.is::<tokio::time::error::Elapsed>() {
        return Some(true);
    }
    if let Some(error) = link.downcast_ref::<Error>() {
        return Some(is_transient(error));
    }
    #[cfg(feature = "postgres")]
    if let Some(verdict) = crate::backend::postgres::transient(link) {
        return Some(verdict);
    }
    #[cfg(feature = "mysql")]
    if let Some(verdict) = crate::backend::mysql::transient(link) {
        return Some(verdict);
    }
    #[cfg(feature = "redis")]
    if let Some(verdict) = crate::backend::redis::transient(link) {
        return Some(verdict);
    }
    #[cfg(feature = "zookeeper")]
    if let Some(verdict) = crate::backend::zookeeper::transient(link) {
        return Some(verdict);
    }
    None
}

/// An I/O error's verdict: by its kind, or by the error it wraps (whose own source chain
/// `source()` would skip).
fn io_verdict(error: &std::io::Error) -> Option<bool> {
    use std::io::ErrorKind::*;
    match error.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe
        | UnexpectedEof | TimedOut | Interrupted | AddrNotAvailable | HostUnreachable
        | NetworkUnreachable | NetworkDown => Some(true),
        _ => match error.get_ref() {
            Some(inner) => chain_verdict(inner),
            None => Some(false),
        },
    }
}

/// A wait's record of an unreachable server: since when, and when to give up.
#[derive(Debug)]
pub(crate) struct Outage {
    /// Whether transient faults are ridden at all.
    rides: bool,
    limit: Option<Duration>,
    since: Option<Instant>,
    retried_at_once: bool,
    backoff: Backoff,
}

impl Outage {
    /// For a wait on a backend whose `unreachable_timeout` is `limit` (`None`: never give up
    /// before the deadline).
    pub(crate) fn new(limit: Option<Duration>) -> Self {
        Outage {
            rides: true,
            limit,
            since: None,
            retried_at_once: false,
            backoff: Backoff::new(FIRST_RETRY, MAX_RETRY),
        }
    }

    /// For a wait with no server to reach: every error ends it.
    #[cfg_attr(not(feature = "local"), allow(dead_code))]
    pub(crate) fn none() -> Self {
        Outage {
            rides: false,
            ..Outage::new(None)
        }
    }

    /// The server answered: an outage that was under way is over.
    pub(crate) fn over(&mut self) {
        if self.since.take().is_some() {
            self.backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
            self.retried_at_once = false;
        }
    }

    /// After a try failed with `error`: returns (after a pause, but never past `deadline`)
    /// when the wait should try again; the error when it is not transient, when the deadline
    /// has passed, or when the server has been unreachable for the limit, then saying so.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only sleeps.
    pub(crate) async fn ride(&mut self, error: Error, deadline: Option<Instant>) -> Result<()> {
        if !self.rides || !is_transient(&error) {
            return Err(error);
        }
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        if !self.retried_at_once {
            // A pooled connection may have died since it was last used: a fresh one may work.
            self.retried_at_once = true;
            return Ok(());
        }
        let give_up = match (deadline, self.limit) {
            (Some(deadline), Some(limit)) => Some(deadline.min(since + limit)),
            (deadline, limit) => deadline.or(limit.map(|limit| since + limit)),
        };
        if give_up.is_some_and(|give_up| now >= give_up) {
            // A wait whose deadline had passed at the first failure (a try) had no time to
            // ride anything: its error is the server's.
            if deadline.is_some_and(|deadline| deadline <= since) {
                return Err(error);
            }
            return Err(self.gave_up(error, now - since, deadline.is_some_and(|d| now >= d)));
        }
        let until = now + self.backoff.pause(false);
        tokio::time::sleep_until(give_up.map_or(until, |give_up| give_up.min(until))).await;
        Ok(())
    }

    fn gave_up(&self, error: Error, unreachable: Duration, at_deadline: bool) -> Error {
        let backend = match &error {
            Error::Backend { backend, .. } => *backend,
            _ => "tollgate",
        };
        let why = if at_deadline {
            "the wait's deadline came"
        } else {
            "its unreachable_timeout passed"
        };
        Error::Backend {
            backend,
            message: format!(
                "gave up: the server was unreachable for {:.1} s and {why}",
                unreachable.as_secs_f64()
            ),
            source: Some(Box::new(error)),
        }
    }
}

/// Runs `try_once` until it succeeds or fails with an error [`Outage::ride`] does not ride.
///
/// # Cancel safety
/// As cancel-safe as `try_once`'s futures: nothing is held between them.
#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
pub(crate) async fn ride<T, F: Future<Output = Result<T>>>(
    limit: Option<Duration>,
    deadline: Option<Instant>,
    mut try_once: impl FnMut() -> F,
) -> Result<T> {
    let mut outage = Outage::new(limit);
    loop {
        match try_once().await {
            Err(error) => outage.ride(error, deadline).await?,
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> Error {
        Error::backend("test", "io", std::io::Error::from(kind))
    }

    #[test]
    fn transient_faults_are_told_from_the_rest() {
        use std::io::ErrorKind::*;
        for kind in [
            ConnectionRefused,
            ConnectionReset,
            BrokenPipe,
            UnexpectedEof,
            TimedOut,
        ] {
            assert!(is_transient(&io(kind)), "{kind:?}");
        }
        for kind in [PermissionDenied, NotFound, InvalidData] {
            assert!(!is_transient(&io(kind)), "{kind:?}");
        }
        assert!(!is_transient(&Error::invalid("bad")));
        assert!(!is_transient(&Error::backend("test", "text", "no type")));
        // Wrapped, at any depth.
        let wrapped = Error::backend("test", "outer", io(ConnectionReset));
        assert!(is_transient(&wrapped));
        let in_io = std::io::Error::new(Other, std::io::Error::from(BrokenPipe));
        assert!(is_transient(&Error::backend("test", "nested", in_io)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_ridden_until_the_limit_then_named() {
        let started = Instant::now();
        let mut tries = 0;
        let error = ride(Some(Duration::from_secs(30)), None, || {
            tries += 1;
            async { Err::<(), _>(io(std::io::ErrorKind::ConnectionRefused)) }
        })
        .await
        .unwrap_err();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited < Duration::from_secs(32),
            "{waited:?}"
        );
        // Once at once, then about one a second: not a spin.
        assert!((20..=80).contains(&tries), "{tries} tries");
        let message = error.to_string();
        assert!(message.contains("unreachable for 30"), "{message}");
        assert!(message.contains("unreachable_timeout"), "{message}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_it_first_and_other_errors_at_once() {
        let started = Instant::now();
        let deadline = Some(started + Duration::from_secs(3));
        let error = ride(Some(Duration::from_secs(30)), deadline, || async {
            Err::<(), _>(io(std::io::ErrorKind::ConnectionReset))
        })
        .await
        .unwrap_err();
        assert!(started.elapsed() <= Duration::from_secs(3));
        assert!(error.to_string().contains("deadline"), "{error}");

        let mut tries = 0;
        let error = ride(None, None, || {
            tries += 1;
            async { Err::<(), _>(Error::invalid("bad")) }
        })
        .await
        .unwrap_err();
        assert!(error.is_invalid_argument());
        assert_eq!(tries, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovered_server_is_used_at_once() {
        let mut tries = 0;
        let value = ride(Some(Duration::from_secs(30)), None, || {
            tries += 1;
            let outcome = if tries < 4 {
                Err(io(std::io::ErrorKind::ConnectionRefused))
            } else {
                Ok(tries)
            };
            async move { outcome }
        })
        .await
        .unwrap();
        assert_eq!(value, 4);
    }
}
