//! Configuring a ZooKeeper provider: its builder, and the URL that fills one.

use std::sync::Arc;
use std::time::Duration;

use super::names::check_directory;
use super::session::Session;
use super::{Settings, Shared, ZooKeeperAcl, ZooKeeperProvider, BACKEND};
use crate::backend::kit::fault;
use crate::backend::kit::ids::random_id;
use crate::backend::kit::options::{MultiHostUrl, UrlOptions};
use crate::{Error, Result};

const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Configures a [`ZooKeeperProvider`].
#[derive(Clone)]
pub struct ZooKeeperProviderBuilder {
    hosts: Vec<String>,
    directory: String,
    session_timeout: Duration,
    connect_timeout: Duration,
    unreachable_timeout: Option<Duration>,
    credentials: Option<(String, String)>,
    acl: ZooKeeperAcl,
    assume_path_exists: bool,
}

impl std::fmt::Debug for ZooKeeperProviderBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperProviderBuilder")
            .field("hosts", &self.hosts)
            .field("directory", &self.directory)
            .field("session_timeout", &self.session_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("unreachable_timeout", &self.unreachable_timeout)
            .field(
                "user",
                &self.credentials.as_ref().map(|(user, _)| user.as_str()),
            )
            .field("acl", &self.acl)
            .field("assume_path_exists", &self.assume_path_exists)
            .finish()
    }
}

impl ZooKeeperProviderBuilder {
    /// A builder for the ensemble at `hosts` (each `host:port`, or `host` for port 2181).
    pub fn new(hosts: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ZooKeeperProviderBuilder {
            hosts: hosts.into_iter().map(Into::into).collect(),
            directory: String::from("/"),
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            unreachable_timeout: Some(fault::DEFAULT_UNREACHABLE_TIMEOUT),
            credentials: None,
            acl: ZooKeeperAcl::Open,
            assume_path_exists: false,
        }
    }

    /// The directory primitives live under (default `/`, as DistributedLock's name-only
    /// constructors use).
    pub fn directory(mut self, path: impl Into<String>) -> Self {
        self.directory = path.into();
        self
    }

    /// How long the session outlives a lost connection (default 10 s; the server may clamp
    /// it to its own bounds, by default 2 to 20 ticks): how long a crashed holder keeps its
    /// holds, and how long a disconnected holder keeps them before they count as lost.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// How long connecting to one server may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a wait keeps trying an ensemble it cannot reach (default 30 s; `None`: until
    /// the wait's own deadline), as for the other server backends.
    pub fn unreachable_timeout(mut self, limit: Option<Duration>) -> Self {
        self.unreachable_timeout = limit;
        self
    }

    /// Authenticates the session with ZooKeeper's `digest` scheme as `user:password`.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// Who may use the nodes this provider creates (default [`ZooKeeperAcl::Open`]).
    pub fn acl(mut self, acl: ZooKeeperAcl) -> Self {
        self.acl = acl;
        self
    }

    /// Never create the primitives' own paths: they are someone else's and exist already
    /// (DistributedLock's `assumePathExists`); an acquire on a missing one fails.
    pub fn assume_path_exists(mut self, assume: bool) -> Self {
        self.assume_path_exists = assume;
        self
    }

    /// The provider, after checking the options. The session is opened at the first acquire.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for no hosts, an invalid directory, a zero timeout, or the
    /// creator ACL without credentials.
    pub fn build(self) -> Result<ZooKeeperProvider> {
        if self.hosts.is_empty() || self.hosts.iter().any(|host| host.trim().is_empty()) {
            return Err(Error::invalid(
                "zookeeper: at least one host is needed, none empty",
            ));
        }
        for host in &self.hosts {
            if host.contains([',', '/', '?', '@']) {
                return Err(Error::invalid(format!(
                    "zookeeper host {host:?} must be host or host:port"
                )));
            }
            if let Some((_, port)) = host.rsplit_once(':') {
                if !host.ends_with(']') && port.parse::<u16>().is_err() {
                    return Err(Error::invalid(format!(
                        "zookeeper host {host:?}: the port must be a number up to 65535"
                    )));
                }
            }
        }
        check_directory(&self.directory)?;
        if self.session_timeout < Duration::from_millis(100) {
            return Err(Error::invalid(
                "zookeeper session timeout must be at least 100 ms",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::invalid(
                "zookeeper connect timeout must be above zero",
            ));
        }
        if self.acl == ZooKeeperAcl::Creator && self.credentials.is_none() {
            return Err(Error::invalid(
                "zookeeper acl=creator needs a user and password to authenticate with",
            ));
        }
        let hosts = self
            .hosts
            .iter()
            .map(|host| {
                let bare = host.rsplit_once(':').is_none() || host.ends_with(']');
                if bare {
                    format!("{host}:2181")
                } else {
                    host.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        let settings = Settings {
            hosts,
            directory: self.directory,
            session_timeout: self.session_timeout,
            connect_timeout: self.connect_timeout,
            unreachable_timeout: self.unreachable_timeout,
            credentials: self.credentials,
            acl: self.acl,
            assume_path_exists: self.assume_path_exists,
        };
        Ok(ZooKeeperProvider {
            shared: Arc::new(Shared {
                settings: Arc::new(settings),
                session: Session::new(),
                notes: Arc::default(),
                process: random_id(),
                acquires: Default::default(),
            }),
        })
    }
}

/// Percent-decodes a URL part.
fn decoded(part: &str) -> Result<String> {
    url::form_urlencoded::parse(format!("x={}", part.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .ok_or_else(|| Error::invalid("bad zookeeper URL: cannot decode a part"))
}

impl ZooKeeperProvider {
    /// A builder from a URL (see the [module docs](super)):
    /// `zookeeper://[user:password@]host:2181[,host2:2181…][/directory]` or `zk://…`, with
    /// options `session_timeout`, `connect_timeout`, `unreachable_timeout` (also `never`;
    /// durations as [`crate::parse_duration`] reads them), `assume_path_exists` and `acl`
    /// (`open` or `creator`). Any other key is an error that names it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a malformed URL or option.
    pub fn builder(url: &str) -> Result<ZooKeeperProviderBuilder> {
        // The URL is not quoted back: it may carry a password.
        let bad = |why: &str| Error::invalid(format!("bad zookeeper URL: {why}"));
        let MultiHostUrl {
            scheme,
            userinfo,
            hosts,
            path,
            query,
            fragment,
        } = MultiHostUrl::split(url)
            .ok_or_else(|| bad("expected zookeeper://host:2181 or zk://host:2181"))?;
        if !matches!(scheme.to_ascii_lowercase().as_str(), "zookeeper" | "zk") {
            return Err(bad("the scheme must be zookeeper or zk"));
        }
        if fragment.is_some() {
            return Err(bad("a fragment (#…) means nothing here"));
        }
        if hosts.is_empty() {
            return Err(bad("no host"));
        }
        let mut builder = ZooKeeperProviderBuilder::new(hosts.split(','));
        if let Some(userinfo) = userinfo {
            let (user, password) = userinfo
                .split_once(':')
                .ok_or_else(|| bad("credentials must be user:password"))?;
            builder.credentials = Some((decoded(user)?, decoded(password)?));
        }
        if !path.is_empty() && path != "/" {
            builder.directory = decoded(path)?;
        }
        let mut options = UrlOptions::new(BACKEND, query)?;
        if let Some(timeout) = options.duration("session_timeout")? {
            builder.session_timeout = timeout;
        }
        if let Some(timeout) = options.duration("connect_timeout")? {
            builder.connect_timeout = timeout;
        }
        builder.unreachable_timeout = fault::unreachable_timeout_option(&mut options)?;
        if let Some(assume) = options.flag("assume_path_exists")? {
            builder.assume_path_exists = assume;
        }
        if let Some(acl) = options.parsed("acl", |value| match value {
            "open" => Ok(ZooKeeperAcl::Open),
            "creator" => Ok(ZooKeeperAcl::Creator),
            _ => Err(String::from("expected open or creator")),
        })? {
            builder.acl = acl;
        }
        options.finish(&[])?;
        Ok(builder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_options() {
        let builder = ZooKeeperProvider::builder(
            "zookeeper://me:p%40ss@h1:2181,h2,[::1]:2182/base/dir?session_timeout=3s&connect_timeout=250ms&acl=creator&assume_path_exists=true",
        )
        .unwrap();
        assert_eq!(builder.hosts, ["h1:2181", "h2", "[::1]:2182"]);
        assert_eq!(builder.directory, "/base/dir");
        assert_eq!(builder.session_timeout, Duration::from_secs(3));
        assert_eq!(builder.connect_timeout, Duration::from_millis(250));
        assert_eq!(
            builder.credentials,
            Some((String::from("me"), String::from("p@ss")))
        );
        assert_eq!(builder.acl, ZooKeeperAcl::Creator);
        assert!(builder.assume_path_exists);
        assert!(!format!("{builder:?}").contains("p@ss"));
        let provider = builder.build().unwrap();
        assert_eq!(provider.shared.settings.hosts, "h1:2181,h2:2181,[::1]:2182");
        assert!(!format!("{provider:?}").contains("p@ss"));
        let default = ZooKeeperProvider::from_url("zk://localhost").unwrap();
        assert_eq!(default.directory(), "/");
        assert_eq!(
            default.shared.settings.session_timeout,
            DEFAULT_SESSION_TIMEOUT
        );
        for bad in [
            "zookeeper://",
            "zookeeper:///dir",
            "zookeeper://h1,,h2",
            "http://h",
            "zookeeper://h?session_timeout=soon",
            "zookeeper://h?session_timeout=1ms",
            "zookeeper://h?acl=creator",
            "zookeeper://h?acl=everyone",
            "zookeeper://h?sesion_timeout=1s",
            "zookeeper://h/dir/",
            "zookeeper://h//dir",
            "zookeeper://h:port",
            "zookeeper://h#frag",
            "zookeeper://user@h",
        ] {
            assert!(
                matches!(
                    ZooKeeperProvider::from_url(bad),
                    Err(Error::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }
}
