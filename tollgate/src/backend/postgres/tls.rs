//! TLS for PostgreSQL connections, set up when first needed: building a native-tls connector
//! loads the system's certificates (tens of milliseconds of CPU), which a run that never
//! negotiates TLS (an unreachable server, or one that declines TLS under `sslmode=prefer`)
//! should not pay.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How certificates are checked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Verify {
    /// Whether the certificate must chain to a trusted root.
    pub(crate) certificate: bool,
    /// Whether it must name the host.
    pub(crate) host: bool,
}

/// A native-tls connector built on first use and shared by every connection of a provider.
#[derive(Clone)]
pub(crate) struct LazyTls {
    verify: Verify,
    built: Arc<OnceLock<Result<native_tls::TlsConnector, String>>>,
}

impl LazyTls {
    /// A connector that will check certificates as `verify` says.
    pub(crate) fn new(verify: Verify) -> Self {
        LazyTls {
            verify,
            built: Arc::default(),
        }
    }

    /// The connector, built now if this is the first connection that negotiates TLS.
    fn connector(&self) -> Result<native_tls::TlsConnector, BoxError> {
        let built = self.built.get_or_init(|| {
            native_tls::TlsConnector::builder()
                .danger_accept_invalid_certs(!self.verify.certificate)
                .danger_accept_invalid_hostnames(!self.verify.host)
                .build()
                .map_err(|error| format!("cannot set up TLS: {error}"))
        });
        built.clone().map_err(Into::into)
    }
}

impl<S> MakeTlsConnect<S> for LazyTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = postgres_native_tls::TlsStream<S>;
    type TlsConnect = LazyConnect;
    type Error = std::convert::Infallible;

    fn make_tls_connect(&mut self, domain: &str) -> Result<LazyConnect, Self::Error> {
        Ok(LazyConnect {
            tls: self.clone(),
            domain: domain.to_owned(),
        })
    }
}

/// One connection's TLS handshake, if the server agrees to one.
pub(crate) struct LazyConnect {
    tls: LazyTls,
    domain: String,
}

impl<S> TlsConnect<S> for LazyConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = postgres_native_tls::TlsStream<S>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Stream, BoxError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = self.tls.connector()?;
            let handshake = postgres_native_tls::TlsConnector::new(connector, &self.domain);
            Ok(TlsConnect::connect(handshake, stream).await?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing is built until a handshake: making a connection's connector (which
    /// tokio-postgres does before it even reaches the server) costs nothing.
    #[test]
    fn the_connector_is_built_at_the_first_handshake_only() {
        let mut tls = LazyTls::new(Verify {
            certificate: true,
            host: true,
        });
        let _connect =
            MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(&mut tls, "h").unwrap();
        assert!(tls.built.get().is_none());
        tls.connector().unwrap();
        assert!(tls.built.get().is_some());
    }
}
