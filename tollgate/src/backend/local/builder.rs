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
    /// Keeps lock files in `directory` instead of the per-user runtime directory. Its last
    /// component is made if missing (its parent must exist); it must belong to this user (or,
    /// with [`group_access`](Self::group_access), to one of its groups), not be a symbolic
    /// link, and be writable by no one else (but the group, with group access).
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
            None => default_directory(),
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

/// The per-user runtime directory's `tollgate/`, else one in the temporary directory.
fn default_directory() -> PathBuf {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(runtime).join("tollgate");
    }
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    if run_user.is_dir() {
        return run_user.join("tollgate");
    }
    // A shared temporary directory: the folder must be ours and closed to others, or another
    // user could hold or swap our lock files (see `Config::check`).
    std::env::temp_dir().join(format!("tollgate-{uid}"))
}

/// Whether this process is in the group `gid` (its effective or a supplementary group).
fn in_group(gid: u32) -> bool {
    // SAFETY: getegid cannot fail; getgroups writes at most `groups.len()` entries.
    unsafe {
        if libc::getegid() == gid {
            return true;
        }
        let mut groups = vec![0 as libc::gid_t; 256];
        let count = libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr());
        count > 0 && groups[..count as usize].contains(&gid)
    }
}

impl Config {
    /// Makes the lock directory and its `semaphore/` and `rw/` if they are missing, and checks
    /// each. Only the last component is made: a missing parent is a mistake (a typo, a path
    /// meant for another machine), and creating it made directories at the file system's root
    /// for a relative `file:` URL run as root.
    fn create_directories(&self) -> Result<()> {
        for directory in [
            self.directory.clone(),
            self.directory.join("semaphore"),
            self.directory.join("rw"),
        ] {
            self.make(&directory)?;
            self.check(&directory)?;
        }
        Ok(())
    }

    fn make(&self, directory: &Path) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt as _;
        match std::fs::DirBuilder::new()
            .mode(self.directory_mode)
            .create(directory)
        {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Err(Error::invalid(format!(
                "the lock directory {} cannot be made: its parent does not exist \
                     (tollgate makes only the last component)",
                directory.display()
            ))),
            Err(error) => Err(io_error(
                "cannot create the lock directory",
                directory,
                error,
            )),
        }
    }

    /// A lock directory must be a directory (not a symlink, which someone could point
    /// elsewhere), owned by this user, and closed to others: writable by nobody else, or by
    /// its group when the group option is on (then a directory of the group's is fine too).
    /// Otherwise another user could hold, swap or delete our lock files.
    fn check(&self, directory: &Path) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::symlink_metadata(directory)
            .map_err(|error| io_error("cannot inspect the lock directory", directory, error))?;
        let shown = directory.display();
        if metadata.file_type().is_symlink() {
            return Err(Error::invalid(format!(
                "the lock directory {shown} is a symbolic link; name the directory it points to"
            )));
        }
        if !metadata.is_dir() {
            return Err(io_error(
                "the lock directory is not a directory:",
                directory,
                io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        let group_access = self.directory_mode & 0o070 != 0;
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        let ours = metadata.uid() == uid || (group_access && in_group(metadata.gid()));
        if !ours {
            return Err(Error::invalid(format!(
                "the lock directory {shown} belongs to uid {}, not to this user (uid {uid}){}",
                metadata.uid(),
                if group_access {
                    " or one of its groups"
                } else {
                    ""
                }
            )));
        }
        let writable_by_others = metadata.mode() & if group_access { 0o002 } else { 0o022 };
        if writable_by_others != 0 {
            return Err(Error::invalid(format!(
                "the lock directory {shown} is writable by {} (mode {:o}); {}",
                if writable_by_others & 0o002 != 0 {
                    "everyone"
                } else {
                    "its group"
                },
                metadata.mode() & 0o7777,
                if group_access {
                    "close it to others"
                } else {
                    "close it to others, or share it with the group (group=true)"
                }
            )));
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

    /// A provider from a URL: `local:` (per-user runtime directory), `file:///some/dir` (the
    /// directory in full; see [`LocalProviderBuilder::directory`] for what it must be), or
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
                // `file:dir`, `file:` and `file://dir` parse as /dir, / and a host: a lock
                // directory is named in full, `file:///dir`.
                let rest = &url["file:".len()..];
                let path = rest
                    .strip_prefix("///")
                    .or_else(|| rest.strip_prefix("//localhost/"));
                if path.is_none_or(|path| path.split(['?', '#']).next().unwrap_or("").is_empty()) {
                    return Err(Error::invalid(format!(
                        "{url:?}: a file URL names a lock directory in full, as file:///path/to/dir"
                    )));
                }
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
