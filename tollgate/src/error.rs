//! The one error type every backend reports.

use std::time::Duration;

/// A boxed error from a backend's transport or I/O layer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of every fallible tollgate operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while acquiring, holding or releasing a primitive.
///
/// "Not acquired" is not an error: the `try_acquire*` methods report it as `Ok(None)`.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The wait of an `acquire_timeout` (or an upgrade with a timeout) ran out.
    #[error("timed out after {timeout:?} waiting for {name:?}")]
    Timeout {
        /// The primitive's name.
        name: String,
        /// How long the caller was prepared to wait.
        timeout: Duration,
    },

    /// A caller mistake: a name the backend cannot take in exact-name mode, a max count of 0,
    /// a malformed URL, an option out of range, or an API used where it cannot work.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The backend is not reachable or failed (I/O error, connection refused, server error).
    #[error("{backend} backend failed: {message}")]
    Backend {
        /// Which backend, e.g. `"local"`.
        backend: &'static str,
        /// What tollgate was doing. The cause is in `source`, not repeated here (print the
        /// source chain, e.g. with `{:#}` in anyhow, to see it).
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// A hold was lost while it was believed held (connection killed, lease expired).
    #[error("the hold on {name:?} was lost")]
    Lost {
        /// The primitive's name.
        name: String,
    },

    /// The backend found that waiting could never succeed (for example, the same session
    /// already holds the lock and would wait for itself).
    #[error("deadlock detected while acquiring {name:?}")]
    Deadlock {
        /// The primitive's name.
        name: String,
    },

    /// The backend does not offer this primitive (for example a reader-writer lock on MySQL).
    #[error("the {backend} backend does not support {what}")]
    Unsupported {
        /// Which backend.
        backend: &'static str,
        /// What was asked for.
        what: &'static str,
    },
}

impl Error {
    /// A backend failure with its source error.
    pub fn backend(
        backend: &'static str,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            backend,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// An invalid-argument error with a message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    /// True for [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// True for [`Error::Backend`]: the backend could not be reached or failed.
    pub fn is_backend(&self) -> bool {
        matches!(self, Error::Backend { .. })
    }

    /// True for a transient fault: an [`Error::Backend`] that trying again on a fresh
    /// connection may get past (the connection dropped or was killed, the server is
    /// restarting or cannot be reached, a connect or request timed out); false for wrong
    /// credentials, a missing database, bad statements and every other kind of error. Waits
    /// already ride transient faults out until their deadline or the backend's
    /// `unreachable_timeout`; this tells a caller whether its own retry may help.
    pub fn is_transient(&self) -> bool {
        crate::backend::kit::fault::is_transient(self)
    }

    /// True for [`Error::InvalidArgument`]: a bad name, max count, option or URL.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self, Error::InvalidArgument(_))
    }
}
