//! What the files and archive APIs mean on a filesystem's data: paths relative to its root,
//! content-hash ETags, conditional writes, and the errors a caller answers with ([`FileError`]).
//! The kernel's errno values are read here (and in [`crate::confined`]) and nowhere above: a
//! caller sees `Loop`, `NotADirectory` or `NoSpace`, never a number.
//!
//! The operations themselves are methods of [`crate::storage::FilesystemStorage`]; this module
//! holds what every implementation shares.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::archive::{self, ArchiveError};
use crate::confined::{self, ConfinedError, Root};
use crate::IdRange;

/// Why a file operation failed. Each message is the one the API shows.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A path or content that is refused: absolute, `..`, NUL, a hostile archive entry, a body
    /// that is not an archive or that could not be read to its end.
    #[error("{0}")]
    Invalid(String),
    /// The path needs to follow a symlink (`ELOOP`); the files API never does.
    #[error("{0}")]
    Loop(String),
    /// A component of the path is not a directory (`ENOTDIR`).
    #[error("{0}")]
    NotADirectory(String),
    /// The path is a directory where a file is needed (`EISDIR`).
    #[error("{0}")]
    IsADirectory(String),
    /// A fifo, socket or device where a regular file is needed; never opened for reading.
    #[error("{0}")]
    NotARegularFile(String),
    /// The kernel refused the operation (`EACCES`, `EPERM`).
    #[error("{0}")]
    PermissionDenied(String),
    /// Nothing at the path (`ENOENT`); the message names the path.
    #[error("{0}")]
    NotFound(String),
    /// A directory to remove still has entries (`ENOTEMPTY`).
    #[error("the directory is not empty")]
    NotEmpty,
    /// Larger than the bound of the operation (a download, an upload).
    #[error("{0}")]
    TooLarge(String),
    /// The filesystem is full (`ENOSPC`, `EDQUOT`): its size is the tenant's quota.
    #[error("{0}")]
    NoSpace(String),
    /// The host's disk under the filesystem's image is full (the data dir's, not the tenant's
    /// size): the write did not happen.
    #[error("{0}")]
    HostFull(String),
    /// The filesystem's mount is being repaired, or its repair failed: retryable.
    #[error("{0}")]
    Unavailable(String),
    /// An `If-Match` or `If-None-Match` condition does not hold for the current content.
    #[error("{0}")]
    PreconditionFailed(String),
    /// Anything the caller cannot fix; the message is for the log.
    #[error("{0}")]
    Io(String),
}

/// The conditions of a write or delete, checked against the ETag of the current content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// `If-Match`: `*` or a comma-separated list of ETags, one of which must be current.
    pub if_match: Option<String>,
    /// `If-None-Match: *`: only when there is no file.
    pub if_none_match: bool,
}

impl Preconditions {
    /// Whether any condition is set.
    pub fn any(&self) -> bool {
        self.if_match.is_some() || self.if_none_match
    }

    /// Checks the conditions against `current`, the ETag of the file now (`None`: no file;
    /// `Some("")`: a file larger than the bound of ETags, which only `If-Match: *` matches).
    pub fn check(&self, current: Option<&str>) -> Result<(), FileError> {
        if self.if_none_match && current.is_some() {
            return Err(FileError::PreconditionFailed("If-None-Match: * but the file exists".into()));
        }
        if let Some(wanted) = &self.if_match {
            let matches = match current {
                None => false,
                // An empty tag is a file too large to have one: only `*` matches it.
                Some(tag) => wanted == "*" || (!tag.is_empty() && wanted.split(',').any(|t| t.trim() == tag)),
            };
            if !matches {
                return Err(FileError::PreconditionFailed("If-Match does not match the file's current ETag".into()));
            }
        }
        Ok(())
    }
}

/// A file opened for download: its bytes, its length, and the ETag of exactly those bytes when
/// the file is small enough to be hashed before it is sent (see [`FilesystemStorage::open`]).
///
/// [`FilesystemStorage::open`]: crate::storage::FilesystemStorage::open
pub struct Download {
    pub reader: Box<dyn Read + Send>,
    pub len: u64,
    /// The content-hash ETag; `None` for a file larger than the bound of ETags, which is
    /// streamed as it is read, without being hashed first.
    pub etag: Option<String>,
}

/// What a write put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub bytes: u64,
    /// The ETag of the new content.
    pub etag: String,
}

/// The bounds and ownership of a file write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// Largest content accepted (the filesystem's size, or an operator's lower ceiling).
    pub max_bytes: u64,
    /// Largest file whose ETag is computed for a condition (the bound of ETags); a larger file
    /// has none and only `If-Match: *` matches it.
    pub hash_max: u64,
    /// Permission bits of the file (and the sticky bit); `None` keeps an existing file's mode
    /// and owner, and gives a new one 0644.
    pub mode: Option<u32>,
    /// The namespace's ids: new files and directories belong to its mapped root.
    pub owner: IdRange,
}

/// Called once the new content is written, just before it replaces the old; what it returns
/// (a lock guard) is held until the replacement is done.
pub type Serialize = Box<dyn FnOnce() -> Box<dyn std::any::Any + Send> + Send>;

/// An archive extracted beside a filesystem's data and not yet swapped in. Dropping it discards
/// the extracted tree; [`StagedArchive::commit`] swaps it in atomically.
pub trait StagedArchive: Send {
    /// What the archive holds.
    fn stats(&self) -> archive::Stats;
    /// Replaces the filesystem's data with the staged tree in one step.
    fn commit(self: Box<Self>) -> Result<archive::Stats, FileError>;
}

/// A relative, normalized path inside a filesystem; the root is `""`, accepted only when
/// `allow_root` (listing). Absolute paths, `..`, NUL and overlong names are refused.
pub fn relative(path: &str, allow_root: bool) -> Result<PathBuf, FileError> {
    relative_bytes(path.as_bytes(), allow_root)
}

/// An absolute path inside a sandbox given as its exact bytes (names need not be UTF-8): it
/// starts with `/`, holds no NUL and is at most [`archive::MAX_PATH`] bytes. The sandbox's
/// kernel resolves it inside the sandbox's own root.
///
/// Errors: [`FileError::Invalid`] naming the path (shown with invalid sequences replaced).
pub fn absolute_bytes(path: &[u8]) -> Result<PathBuf, FileError> {
    use std::os::unix::ffi::OsStrExt;
    let raw = Path::new(std::ffi::OsStr::from_bytes(path));
    if !path.starts_with(b"/") || path.len() > archive::MAX_PATH || path.contains(&0) {
        return Err(FileError::Invalid(format!(
            "path: {raw:?} must be an absolute path of at most {} bytes without NUL",
            archive::MAX_PATH
        )));
    }
    Ok(raw.to_owned())
}

/// [`relative`] of a path given as its exact bytes (names that are not UTF-8).
pub fn relative_bytes(path: &[u8], allow_root: bool) -> Result<PathBuf, FileError> {
    use std::os::unix::ffi::OsStrExt;
    let raw = Path::new(std::ffi::OsStr::from_bytes(path));
    let bad = |why: &str| FileError::Invalid(format!("path: {raw:?} {why}"));
    if path.len() > archive::MAX_PATH || path.contains(&0) {
        return Err(bad("is too long or holds NUL"));
    }
    if path.starts_with(b"/") {
        return Err(bad("must be relative to the filesystem's root"));
    }
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) if n.len() <= archive::MAX_NAME => out.push(n),
            Component::CurDir => {}
            Component::Normal(_) => return Err(bad("has a name longer than 255 bytes")),
            _ => return Err(bad("must not contain '..'")),
        }
    }
    if out.as_os_str().is_empty() && !allow_root {
        return Err(bad("names no file"));
    }
    Ok(out)
}

/// The ETag of content whose SHA-256 is `digest`: the quoted hex digest.
pub fn etag(digest: &[u8]) -> String {
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// The ETag of `data`.
pub fn etag_of_bytes(data: &[u8]) -> String {
    etag(&Sha256::digest(data))
}

/// The error of a confined write, removal or listing.
pub(crate) fn from_confined(e: ConfinedError) -> FileError {
    match e {
        ConfinedError::InvalidPath { path, reason } => FileError::Invalid(format!("path: {path:?} {reason}")),
        ConfinedError::TooLarge { limit } => FileError::TooLarge(format!("more than {limit} bytes")),
        ConfinedError::NoSpace => FileError::NoSpace("the filesystem is full (its size_bytes)".into()),
        ConfinedError::Read(_) => FileError::Invalid("body: could not be read to the end".into()),
        ConfinedError::Io { ref source, .. } if source.raw_os_error() == Some(libc::ELOOP) => {
            FileError::Loop(format!("path: goes through a symlink ({e})"))
        }
        ConfinedError::Io { ref source, ref path, .. } if confined::not_regular_type(source).is_some() => {
            FileError::NotARegularFile(format!("path: {path:?} is not a regular file ({source})"))
        }
        ConfinedError::Io { ref source, ref path, .. } if source.kind() == io::ErrorKind::NotFound => {
            FileError::NotFound(format!("path: {path:?}: no such file or directory"))
        }
        ConfinedError::Io { ref source, ref path, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
            FileError::PermissionDenied(format!("path: {path:?}: permission denied"))
        }
        e => match e.kind() {
            io::ErrorKind::NotFound => FileError::NotFound(format!("path: {e}")),
            io::ErrorKind::IsADirectory => FileError::IsADirectory(format!("path: {e}")),
            io::ErrorKind::NotADirectory => FileError::NotADirectory(format!("path: {e}")),
            io::ErrorKind::InvalidInput => FileError::Invalid(format!("path: {e}")),
            io::ErrorKind::DirectoryNotEmpty => FileError::NotEmpty,
            _ => FileError::Io(e.to_string()),
        },
    }
}

/// The error of opening or reading a file for download.
pub(crate) fn from_io(e: io::Error) -> FileError {
    if e.raw_os_error() == Some(libc::ELOOP) {
        return FileError::Loop("path: goes through a symlink".into());
    }
    if let Some(n) = confined::not_regular_type(&e) {
        return FileError::NotARegularFile(format!("path: {n}"));
    }
    match e.kind() {
        io::ErrorKind::NotFound => FileError::NotFound("path: no such file or directory".into()),
        io::ErrorKind::PermissionDenied => FileError::PermissionDenied(format!("path: {e}")),
        io::ErrorKind::IsADirectory => FileError::IsADirectory("path: is a directory (use list=true)".into()),
        io::ErrorKind::InvalidInput => FileError::Invalid(format!("path: {e}")),
        _ => FileError::Io(e.to_string()),
    }
}

/// The error of an archive extraction.
pub(crate) fn from_archive(e: ArchiveError) -> FileError {
    match e {
        ArchiveError::Hostile { entry, reason } => FileError::Invalid(format!("archive entry {entry:?}: {reason}")),
        ArchiveError::TooLarge { .. } | ArchiveError::NoSpace => {
            FileError::NoSpace(format!("the archive does not fit the filesystem: {e}"))
        }
        ArchiveError::Corrupt(m) => FileError::Invalid(format!("body: not a valid archive: {m}")),
        ArchiveError::Write { entry, source } => match source {
            ConfinedError::NoSpace => FileError::NoSpace(format!("the filesystem is full at entry {entry:?}")),
            ConfinedError::InvalidPath { .. } => FileError::Invalid(format!("archive entry {entry:?}: {source}")),
            other => match other.kind() {
                io::ErrorKind::NotADirectory
                | io::ErrorKind::IsADirectory
                | io::ErrorKind::AlreadyExists
                | io::ErrorKind::InvalidInput => FileError::Invalid(format!("archive entry {entry:?}: {other}")),
                _ => FileError::Io(format!("extracting {entry:?}: {other}")),
            },
        },
    }
}

/// Opens the file at `rel` for a download and hashes it when it has at most `hash_max` bytes;
/// `None` when there is none. The file comes back positioned at its start, with its length
/// (the length that was hashed, when it was) and the digest (`None`: too large to be hashed,
/// it is streamed as it is). Nothing is buffered: a file of any size is read as a stream.
#[allow(clippy::type_complexity)]
pub(crate) fn open_hashed(
    root: &Root,
    rel: &Path,
    hash_max: u64,
) -> Result<Option<(std::fs::File, u64, Option<Vec<u8>>)>, FileError> {
    let (mut file, meta) = match confined::open_read(root, rel) {
        Ok(x) => x,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(from_io(e)),
    };
    if meta.len() > hash_max {
        return Ok(Some((file, meta.len(), None)));
    }
    let mut hasher = Sha256::new();
    let len = io::copy(&mut (&mut file).take(hash_max.saturating_add(1)), &mut hasher).map_err(from_io)?;
    file.seek(SeekFrom::Start(0)).map_err(from_io)?;
    if len > hash_max {
        // It grew past the bound while it was hashed: streamed without an ETag.
        let now = file.metadata().map_err(from_io)?.len();
        return Ok(Some((file, now, None)));
    }
    Ok(Some((file, len, Some(hasher.finalize().to_vec()))))
}

/// The ETag of the file at `rel`; `None` when there is none, `Some("")` when it is larger than
/// `hash_max` (it has no ETag: see [`Preconditions::check`]).
pub(crate) fn current_etag(root: &Root, rel: &Path, hash_max: u64) -> Result<Option<String>, FileError> {
    Ok(open_hashed(root, rel, hash_max)?.map(|(_, _, digest)| digest.map(|d| etag(&d)).unwrap_or_default()))
}

/// The bytes of a file whose hash was taken when the download began: reading fails (the client
/// sees a cut body) when what it reads now is not what was hashed, so the ETag sent always
/// names the bytes sent.
pub(crate) struct Verified {
    pub(crate) file: io::Take<std::fs::File>,
    pub(crate) hasher: Option<Sha256>,
    pub(crate) expected: Vec<u8>,
}

impl Read for Verified {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(out)?;
        if n > 0 {
            if let Some(h) = &mut self.hasher {
                h.update(&out[..n]);
            }
        } else if let Some(h) = self.hasher.take() {
            if h.finalize().as_slice() != self.expected.as_slice() {
                return Err(io::Error::other("the file changed while it was read"));
            }
        }
        Ok(n)
    }
}

/// A `Read` that hashes what passes through it.
pub(crate) struct Hashing<R> {
    pub(crate) inner: R,
    pub(crate) hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.hasher.update(&out[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_hold_or_fail_as_the_api_says() {
        let pre = Preconditions { if_match: Some("\"a\", \"b\"".into()), if_none_match: false };
        assert!(pre.check(Some("\"b\"")).is_ok());
        assert!(matches!(pre.check(Some("\"c\"")), Err(FileError::PreconditionFailed(_))));
        assert!(matches!(pre.check(None), Err(FileError::PreconditionFailed(_))));
        let none = Preconditions { if_match: None, if_none_match: true };
        assert!(none.check(None).is_ok());
        assert!(matches!(none.check(Some("\"a\"")), Err(FileError::PreconditionFailed(_))));
    }

    #[test]
    fn paths_stay_inside_the_root() {
        assert_eq!(relative("a/./b", false).ok(), Some(PathBuf::from("a/b")));
        assert_eq!(relative(".", true).ok(), Some(PathBuf::new()));
        for bad in ["/etc", "a/../b", "", "a\0b"] {
            assert!(matches!(relative(bad, false), Err(FileError::Invalid(_))), "{bad:?}");
        }
        assert_eq!(
            relative_bytes(b"d/n\xff", false).ok().map(|p| p.into_os_string().into_encoded_bytes()),
            Some(b"d/n\xff".to_vec())
        );
        assert_eq!(
            absolute_bytes(b"/tmp/n\xff").ok().map(|p| p.into_os_string().into_encoded_bytes()),
            Some(b"/tmp/n\xff".to_vec())
        );
        for bad in [&b"rel"[..], b"", b"/a\0b"] {
            assert!(matches!(absolute_bytes(bad), Err(FileError::Invalid(_))), "{bad:?}");
        }
    }
}
