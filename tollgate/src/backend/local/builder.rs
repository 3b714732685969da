//! Configuring a local provider: its builder, the URL that fills one, and the lock
//! directory (where it is, who may use it, how its files are opened).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{io_error, name, sys, Kind, LocalProvider};
use crate::backend::kit::options::UrlOptions;
use crate::{Error, Result};

/// Where a provider keeps its lock files, and with which permissions.
#[derive(Debug)]
pub(super) struct Config {
    pub(super) directory: PathBuf,
    file_mode: libc::mode_t,
    directory_mode: u32,
}

/// Configures a [`LocalProvider`].
#[derive(Clone, Debug, Default)]
pub struct LocalProviderBuilder {
    directory: Option<PathBuf>,
    group_access: bool,
}

impl LocalProviderBuilder {
    /// Keeps lock files in `directory` (created if missing) instead of the per-user runtime
    /// directory.
    pub fn directory(mut self, directory: impl Into<PathBuf>) -> Self {
        self.directory = Some(directory.into());
        self
    }

    /// Lets the owning group use the lock files too (`0660` files, `0770` directories), for
    /// processes of several users that share a group and a directory.
    pub fn group_access(mut self, group_access: bool) -> Self {
        self.group_access = group_access;
        self
    }

    /// Creates the directory (and its `semaphore/` and `rw/` subdirectories) if needed.
    pub fn build(self) -> Result<LocalProvider> {
        let (file_mode, directory_mode) = if self.group_access {
            (0o660, 0o770)
        } else {
            (0o600, 0o700)
        };
        let directory = match self.directory {
            Some(directory) => directory,
            None => default_directory()?,
        };
        if directory.as_os_str().is_empty() {
            return Err(Error::invalid("the lock directory path is empty"));
        }
        let config = Config {
            directory,
            file_mode,
            directory_mode,
        };
        config.create_directories()?;
        Ok(LocalProvider {
            config: Arc::new(config),
        })
    }
}

fn default_directory() -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(runtime).join("tollgate"));
    }
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    if run_user.is_dir() {
        return Ok(run_user.join("tollgate"));
    }
    // A shared temporary directory: the folder must be ours and closed to others, or another
    // user could hold or swap our lock files.
    let fallback = std::env::temp_dir().join(format!("tollgate-{uid}"));
    let result = std::fs::DirBuilder::new().mode_0700().create(&fallback);
    if let Err(error) = result {
        if error.kind() != io::ErrorKind::AlreadyExists {
            return Err(io_error(
                "cannot create the lock directory",
                &fallback,
                error,
            ));
        }
    }
    let metadata = std::fs::symlink_metadata(&fallback)
        .map_err(|error| io_error("cannot inspect the lock directory", &fallback, error))?;
    if !metadata.is_dir() || metadata.uid() != uid || metadata.mode() & 0o022 != 0 {
        return Err(Error::invalid(format!(
            "{} is not a directory owned by uid {uid} and closed to others; \
             set XDG_RUNTIME_DIR or name a lock directory",
            fallback.display()
        )));
    }
    Ok(fallback)
}

trait DirBuilderExt {
    fn mode_0700(self) -> Self;
}

impl DirBuilderExt for std::fs::DirBuilder {
    fn mode_0700(mut self) -> Self {
        use std::os::unix::fs::DirBuilderExt as _;
        self.mode(0o700);
        self
    }
}

impl Config {
    fn create_directories(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt as _;
        for directory in [
            self.directory.clone(),
            self.directory.join("semaphore"),
            self.directory.join("rw"),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(self.directory_mode)
                .create(&directory)
                .map_err(|error| io_error("cannot create the lock directory", &directory, error))?;
        }
        Ok(())
    }

    pub(super) fn open(&self, path: &Path) -> Result<File> {
        let opened = match sys::open_lock_file(path, self.file_mode) {
            // The directory was removed under us: make it again, once.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.create_directories()?;
                sys::open_lock_file(path, self.file_mode)
            }
            other => other,
        };
        let file = opened.map_err(|error| io_error("cannot open lock file", path, error))?;
        if self.file_mode & 0o070 != 0 {
            // The umask may have taken the group bits away; put them back.
            use std::os::unix::fs::PermissionsExt;
            let metadata = file
                .metadata()
                .map_err(|error| io_error("cannot inspect", path, error))?;
            if metadata.permissions().mode() & 0o060 != 0o060 {
                // Only the owner may chmod; for anyone else the owner already chose.
                let _ = file.set_permissions(std::fs::Permissions::from_mode(self.file_mode));
            }
        }
        Ok(file)
    }

    pub(super) fn path(&self, kind: Kind, name: &str) -> PathBuf {
        let file_name = name::file_name(name);
        match kind {
            Kind::Lock => self.directory.join(file_name),
            Kind::Semaphore => self.directory.join("semaphore").join(file_name),
            Kind::ReadWrite => self.directory.join("rw").join(file_name),
        }
    }
}

impl LocalProvider {
    /// A provider on the per-user runtime directory.
    pub fn new() -> Result<Self> {
        Self::builder().build()
    }

    /// A provider whose lock files live in `directory`.
    pub fn with_directory(directory: impl Into<PathBuf>) -> Result<Self> {
        Self::builder().directory(directory).build()
    }

    /// Configures a provider.
    pub fn builder() -> LocalProviderBuilder {
        LocalProviderBuilder::default()
    }

    /// A provider from a URL: `local:` (per-user runtime directory), `file:///some/dir`, or
    /// either with `?group=true` for group access.
    pub fn from_url(url: &str) -> Result<Self> {
        let parsed = url::Url::parse(url)
            .map_err(|error| Error::invalid(format!("bad local backend URL {url:?}: {error}")))?;
        let mut builder = Self::builder();
        let mut options = UrlOptions::new("local", parsed.query().unwrap_or(""))?;
        if let Some(group) = options.flag("group")? {
            builder = builder.group_access(group);
        }
        options.finish(&[])?;
        match parsed.scheme() {
            "local" => {
                if !parsed.path().is_empty() {
                    return Err(Error::invalid(format!(
                        "{url:?}: `local:` takes no path; use file:///dir for a directory"
                    )));
                }
            }
            "file" => {
                if parsed
                    .host_str()
                    .is_some_and(|host| !host.is_empty() && host != "localhost")
                {
                    return Err(Error::invalid(format!(
                        "{url:?}: file URLs must be on this machine"
                    )));
                }
                let directory = parsed
                    .to_file_path()
                    .map_err(|()| Error::invalid(format!("{url:?} is not a directory path")))?;
                builder = builder.directory(directory);
            }
            other => {
                return Err(Error::invalid(format!(
                    "{url:?}: scheme {other:?} is not the local backend"
                )))
            }
        }
        builder.build()
    }
}
