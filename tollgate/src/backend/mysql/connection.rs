//! MySQL / MariaDB connections of the shared pool ([`crate::backend::kit::pool`]), which
//! multiplexes many held locks over few connections: how a connection is opened, pinged and
//! killed, and the user-lock statements run on it.

use mysql_async::prelude::Queryable;

use super::{mysql_error, BACKEND};
use crate::backend::kit::pool;
pub(crate) use crate::backend::kit::pool::Use;
use crate::{Error, Result};

/// Whether a MySQL client error is a transient fault (see [`crate::backend::kit::fault`]): an
/// I/O error, a closed connection, or a server error saying the connection was killed or
/// lost, the server is shutting down, or it has no connection slot free. Other server errors
/// (access denied, unknown database…) are not.
pub(crate) fn transient(link: &(dyn std::error::Error + 'static)) -> Option<bool> {
    use mysql_async::{DriverError, Error};
    Some(match link.downcast_ref::<Error>()? {
        Error::Io(_) => true,
        Error::Driver(DriverError::ConnectionClosed | DriverError::PoolDisconnected) => true,
        // ER_CON_COUNT_ERROR, ER_SERVER_SHUTDOWN, ER_NET_READ_ERROR.., ER_TOO_MANY_USER_
        // CONNECTIONS, ER_USER_LIMIT_REACHED (an account's max_user_connections, or another of
        // its resource limits), ER_CONNECTION_KILLED; client-side CR_SERVER_GONE_ERROR,
        // CR_SERVER_LOST.
        Error::Server(error) => {
            matches!(
                error.code,
                1040 | 1053 | 1158..=1161 | 1203 | 1226 | 1927 | 2006 | 2013
            )
        }
        Error::Driver(_) | Error::Other(_) | Error::Url(_) => false,
    })
}

/// The MySQL protocol of the session pool.
pub(crate) struct MySql {
    opts: mysql_async::Opts,
}

/// The pool of multiplexed connections.
pub(crate) type Pool = pool::Pool<MySql>;
/// One pooled server connection.
pub(crate) type Connection = pool::Pooled<MySql>;
/// Names claimed on a connection for an operation under way.
pub(crate) type Reservation = pool::Reservation<MySql>;
/// Names held on a connection for a handle.
pub(crate) type Held = pool::Held<MySql>;

/// Builds the pool as `options` say: those connections that hold locks are pinged, those that
/// hold nothing close after the idle timeout.
pub(crate) fn new_pool(opts: mysql_async::Opts, options: &pool::PoolOptions) -> Pool {
    Pool::new(
        MySql { opts },
        options.settings(pool::Pinged::Holding, usize::MAX),
    )
}

/// One server connection, used by one statement at a time.
pub(crate) struct Session {
    id: u32,
    conn: tokio::sync::Mutex<mysql_async::Conn>,
}

impl pool::Protocol for MySql {
    type Key = String;
    type Session = Session;

    const BACKEND: &'static str = BACKEND;

    /// The connection's I/O is served by the runtime it was opened on, which also runs the
    /// pool's watch of it: when that runtime shuts down, the connection counts as gone.
    async fn open(&self) -> Result<(Session, Option<pool::Ended>)> {
        let conn = mysql_async::Conn::new(self.opts.clone())
            .await
            .map_err(|error| mysql_error("cannot connect", error))?;
        let session = Session {
            id: conn.id(),
            conn: tokio::sync::Mutex::new(conn),
        };
        Ok((session, None))
    }

    /// mysql_async tells only when a statement fails.
    fn is_closed(_session: &Session) -> bool {
        false
    }

    async fn ping(session: &Session) -> bool {
        session.conn.lock().await.ping().await.is_ok()
    }

    /// The connection counts as gone; its socket closes when its last user lets go.
    fn abandon(_session: &Session) {}
}

/// Whether a statement's error means the connection is gone.
fn is_disconnect(error: &mysql_async::Error) -> bool {
    matches!(
        error,
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_)
    )
}

/// What `GET_LOCK` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Got {
    Taken,
    TimedOut,
    /// This connection holds the name already: refused, not nested.
    HeldHere,
}

impl Connection {
    /// `GET_LOCK(name, seconds)`, unless this connection holds `name` already (which the
    /// same statement checks, so that re-entrancy can never hand out a second hold).
    /// The caller has claimed `name` here.
    pub(crate) async fn get_lock(&self, name: &str, seconds: f64) -> Result<Got> {
        let mut conn = self.conn.lock().await;
        let result: std::result::Result<Option<Option<i64>>, _> = conn
            .exec_first(
                "SELECT IF(IS_USED_LOCK(?) <=> CONNECTION_ID(), -1, GET_LOCK(?, ?))",
                (name, name, seconds),
            )
            .await;
        match result {
            Ok(Some(Some(1))) => Ok(Got::Taken),
            Ok(Some(Some(-1))) => {
                // With exact names, another spelling of a name claimed here (MySQL compares
                // names case-insensitively); otherwise a claim went missing.
                tracing::debug!(
                    lock_name = name,
                    connection = self.id,
                    "GET_LOCK refused: this connection holds the lock already"
                );
                Ok(Got::HeldHere)
            }
            Ok(Some(Some(_))) => Ok(Got::TimedOut),
            Ok(_) => Err(Error::backend(
                BACKEND,
                format!("GET_LOCK({name:?}) failed"),
                std::io::Error::other("NULL"),
            )),
            Err(mysql_async::Error::Server(error)) if error.code == 3058 || error.code == 1213 => {
                Err(Error::Deadlock {
                    name: name.to_owned(),
                })
            }
            Err(error) => {
                if is_disconnect(&error) {
                    self.mark_broken();
                }
                Err(mysql_error(format!("GET_LOCK({name:?}) failed"), error))
            }
        }
    }

    /// Takes the first of `names` that is free, in one statement: its index, or `None` when
    /// all are busy. A name held anywhere, this connection included, is skipped, so
    /// re-entrancy cannot nest a hold. The caller has claimed `names` here.
    pub(crate) async fn take_first_free(&self, names: &[String]) -> Result<Option<usize>> {
        let mut sql = String::from("SELECT CASE");
        let mut params = Vec::with_capacity(names.len() * 2);
        for (index, name) in names.iter().enumerate() {
            // AND stops at the first false operand: GET_LOCK runs only on a free name.
            sql.push_str(&format!(
                " WHEN IS_USED_LOCK(?) IS NULL AND GET_LOCK(?, 0) = 1 THEN {index}"
            ));
            params.push(mysql_async::Value::from(name.as_str()));
            params.push(mysql_async::Value::from(name.as_str()));
        }
        sql.push_str(" END");
        let mut conn = self.conn.lock().await;
        let result: std::result::Result<Option<Option<u64>>, _> =
            conn.exec_first(sql, params).await;
        match result {
            Ok(Some(Some(index))) => usize::try_from(index)
                .ok()
                .filter(|index| *index < names.len())
                .map(Some)
                .ok_or_else(|| {
                    Error::backend(
                        BACKEND,
                        "a semaphore scan returned no ticket it asked for",
                        std::io::Error::other(format!("index {index}")),
                    )
                }),
            Ok(_) => Ok(None),
            Err(error) => {
                if is_disconnect(&error) {
                    self.mark_broken();
                }
                Err(mysql_error("a semaphore scan failed", error))
            }
        }
    }

    /// `RELEASE_LOCK(name)`: whether this connection still held it. A connection that is
    /// gone has released everything already (and held nothing any more).
    pub(crate) async fn release_lock(&self, name: &str) -> Result<bool> {
        if self.is_broken() {
            return Ok(false);
        }
        let mut conn = self.conn.lock().await;
        let result: std::result::Result<Option<Option<i64>>, _> =
            conn.exec_first("SELECT RELEASE_LOCK(?)", (name,)).await;
        match result {
            // 1: released; 0: held by another connection; NULL: held by none.
            Ok(released) => Ok(released == Some(Some(1))),
            Err(_) if self.is_broken() => Ok(false),
            // A connection that was killed (the server says so with its error, 1927) or
            // dropped has released its locks, when it went: perhaps long before this release.
            Err(error) if is_disconnect(&error) || transient(&error) == Some(true) => {
                self.mark_broken();
                Ok(false)
            }
            Err(error) => Err(mysql_error(format!("RELEASE_LOCK({name:?}) failed"), error)),
        }
    }
}

/// Ends a dedicated connection's wait the hard way: `KILL` it from another connection. The
/// connection is gone for good: it counts as ended at once.
pub(crate) async fn kill(reservation: &Reservation) {
    let connection = reservation.session();
    connection.mark_broken();
    reservation.retire();
    match mysql_async::Conn::new(reservation.pool().protocol().opts.clone()).await {
        Ok(mut killer) => {
            if let Err(error) = killer.query_drop(format!("KILL {}", connection.id)).await {
                tracing::debug!(%error, "KILL of a waiting connection failed");
            }
            let _ = killer.disconnect().await;
        }
        Err(error) => tracing::warn!(%error, "cannot connect to KILL a waiting connection"),
    }
}
