//! File operations confined to a root directory that untrusted code can change at any moment.
//!
//! A tenant's filesystem is shared with its sandboxes, which can create symlinks, hard links and
//! fifos in it and swap them between any two system calls of ours. The server reads and writes
//! it with full host privileges, so every path is resolved by the kernel with `openat2(2)` and
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`: symlinks (absolute or full of
//! `..`) resolve as if the [`Root`] were `/`, so no path leads outside it, whatever is swapped in
//! when. Everything after the lookup works on the resulting file descriptors, or on one plain
//! name relative to a directory fd (`mkdirat`, `renameat`, `unlinkat`, `fstatat` without
//! following symlinks).
//!
//! **Invariant:** this module never hands a path to the kernel that is resolved from anywhere but
//! a [`Root`]'s fd with `RESOLVE_IN_ROOT`, or a single name beneath a directory fd obtained so.

use std::ffi::{CStr, CString, OsString};
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use bulkhead_supervisor::protocol::FileType;

/// Longest path, in bytes, that [`walk`] descends to (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;

/// Lookups of whole paths: as if the root were `/`, never through `/proc` magic links or into
/// another mount.
const IN_ROOT: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV;
/// Lookups of one name beneath a directory fd, not following any symlink.
const ONE_NAME: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV;
/// `openat2` fails with `EAGAIN` when a rename races with a lookup; a sandbox renaming in a loop
/// must not keep us here forever.
const EAGAIN_RETRIES: usize = 64;
/// Attempts at finding an unused temporary name in a directory the sandbox can write to.
const TEMP_ATTEMPTS: usize = 16;

/// A directory that every operation of this module stays inside.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    /// Opens the directory at a host path the caller trusts (such as `<mountpoint>/data`); its
    /// last component must not be a symlink.
    pub fn open(path: impl AsRef<Path>) -> Result<Root, ConfinedError> {
        let path = path.as_ref();
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| io_error("open root", path, e))?;
        Ok(Root { fd: dir.into(), path: path.to_owned() })
    }

    /// The host path the root was opened from, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Who new files, directories and symlinks belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// What a directory entry is, without following symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A fifo, socket or device.
    Other,
}

/// One entry of a directory, as `lstat` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: OsString,
    pub kind: Kind,
    /// What it is precisely (a [`Kind::Other`] is a fifo, socket or device).
    pub file_type: FileType,
    pub size: u64,
    /// Permission bits, with setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub modified: SystemTime,
    /// A symlink's target as stored (never followed); filled by [`list_page`] only.
    pub target: Option<PathBuf>,
}

/// What [`walk`] found at a path.
#[derive(Debug)]
pub enum Node {
    /// A directory; its entries follow.
    Dir,
    /// A regular file, opened for reading.
    File(File),
    /// A symlink, with its target as stored (never followed).
    Symlink(PathBuf),
    /// A fifo, socket or device: never opened.
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfinedError {
    /// The path is not a plain relative path: absolute, `..`, `.` or empty components, NUL.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// The data to write is larger than allowed.
    #[error("more than {limit} bytes")]
    TooLarge { limit: u64 },
    /// The filesystem is full (`ENOSPC`, `EDQUOT`): the tenant's quota.
    #[error("no space left in the filesystem")]
    NoSpace,
    /// Reading the data to write failed; nothing was replaced.
    #[error("cannot read the data to write")]
    Read(#[source] io::Error),
    #[error("cannot {op} {path:?}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl ConfinedError {
    /// The closest [`io::ErrorKind`], for callers that answer by kind (not found, is a directory).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            ConfinedError::InvalidPath { .. } => io::ErrorKind::InvalidInput,
            ConfinedError::TooLarge { .. } => io::ErrorKind::FileTooLarge,
            ConfinedError::NoSpace => io::ErrorKind::StorageFull,
            ConfinedError::Read(e) | ConfinedError::Io { source: e, .. } => e.kind(),
        }
    }
}

impl From<ConfinedError> for io::Error {
    fn from(e: ConfinedError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

fn io_error(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> ConfinedError {
    if is_no_space(&source) {
        return ConfinedError::NoSpace;
    }
    ConfinedError::Io { op, path: path.as_ref().to_string_lossy().into_owned(), source }
}

/// The components of a relative path, checked: no absolute path, `..`, `.`, empty component or
/// NUL. `""` and `"."` alone name the root itself (no components).
fn components(rel: &Path) -> Result<Vec<&[u8]>, ConfinedError> {
    let bytes = rel.as_os_str().as_bytes();
    let invalid = |reason| ConfinedError::InvalidPath { path: rel.to_string_lossy().into_owned(), reason };
    if bytes.is_empty() || bytes == b"." {
        return Ok(Vec::new());
    }
    if bytes.contains(&0) {
        return Err(invalid("contains NUL"));
    }
    if bytes.starts_with(b"/") {
        return Err(invalid("absolute path"));
    }
    let mut out = Vec::new();
    for c in bytes.split(|b| *b == b'/') {
        match c {
            b"" => return Err(invalid("empty component")),
            b"." => return Err(invalid("`.` component")),
            b".." => return Err(invalid("`..` component")),
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// The parent components and the last name of a path that must not be the root.
fn split(rel: &Path) -> Result<(Vec<&[u8]>, &[u8]), ConfinedError> {
    let mut comps = components(rel)?;
    match comps.pop() {
        Some(name) => Ok((comps, name)),
        None => Err(ConfinedError::InvalidPath { path: rel.to_string_lossy().into_owned(), reason: "names the root" }),
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

fn cvt(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `openat2(2)`, retrying `EINTR` and (a bounded number of times) `EAGAIN`.
fn openat2(dir: BorrowedFd<'_>, path: &CStr, flags: libc::c_int, mode: u32, resolve: u64) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain integers; all zeroes is valid (and what the kernel wants in any
    // field this crate does not know).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 { u64::from(mode) } else { 0 };
    how.resolve = resolve;
    let mut again = 0;
    loop {
        // SAFETY: the path is NUL-terminated, `how` is a valid open_how whose size we pass, and
        // the kernel only reads both; `dir` is an open fd for the duration of the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if rc >= 0 {
            // SAFETY: openat2 returned a new file descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) if again < EAGAIN_RETRIES => again += 1,
            _ => return Err(e),
        }
    }
}

/// Opens a directory of the root by its components (following symlinks inside the root).
fn open_dir(root: &Root, comps: &[&[u8]]) -> io::Result<OwnedFd> {
    let path = if comps.is_empty() { cstring(b".")? } else { cstring(&join(comps))? };
    openat2(root.fd.as_fd(), &path, libc::O_RDONLY | libc::O_DIRECTORY, 0, IN_ROOT)
}

/// Opens one name beneath `dir`, never following a symlink.
fn open_name(dir: BorrowedFd<'_>, name: &[u8], flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    openat2(dir, &cstring(name)?, flags | libc::O_NOFOLLOW, mode, ONE_NAME)
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data; all zeroes is a valid value for the call to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a pointer to a local stat.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<libc::stat> {
    let name = cstring(name)?;
    // SAFETY: stat is plain data; all zeroes is a valid value for the call to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid dir fd, a NUL-terminated single name and a pointer to a local stat.
    cvt(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn kind_of(mode: libc::mode_t) -> Kind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    }
}

fn system_time(secs: i64, nanos: i64) -> SystemTime {
    let nanos = u32::try_from(nanos).unwrap_or(0).min(999_999_999);
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs.unsigned_abs(), nanos)).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
            .unwrap_or(UNIX_EPOCH)
    }
}

fn entry_of(name: OsString, st: &libc::stat) -> Entry {
    Entry {
        name,
        kind: kind_of(st.st_mode),
        file_type: FileType::of_mode(st.st_mode).unwrap_or(FileType::File),
        size: u64::try_from(st.st_size).unwrap_or(0),
        mode: st.st_mode & 0o7777,
        modified: system_time(st.st_mtime, st.st_mtime_nsec),
        target: None,
    }
}

/// The error for something at `rel` that is not a regular file: `IsADirectory` for a
/// directory, otherwise `InvalidInput` carrying a [`NotRegular`] (see [`not_regular_type`]).
fn not_regular(rel: &Path, mode: libc::mode_t) -> io::Error {
    let file_type = FileType::of_mode(mode).unwrap_or(FileType::File);
    if file_type == FileType::Directory {
        return io::Error::new(io::ErrorKind::IsADirectory, format!("{:?} is a directory", rel));
    }
    io::Error::new(io::ErrorKind::InvalidInput, NotRegular { path: rel.to_owned(), file_type })
}

/// A fifo, socket or device where a regular file is needed.
#[derive(Debug, thiserror::Error)]
#[error("{path:?} is a {}, not a regular file", file_type.as_str())]
pub struct NotRegular {
    pub path: PathBuf,
    pub file_type: FileType,
}

/// The [`NotRegular`] an error carries, if it does.
pub fn not_regular_type(e: &io::Error) -> Option<&NotRegular> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<NotRegular>())
}

fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fsync on a valid fd.
    cvt(unsafe { libc::fsync(fd.as_raw_fd()) })
}

fn fchown(fd: BorrowedFd<'_>, owner: Owner) -> io::Result<()> {
    // SAFETY: fchown on a valid fd with plain integers.
    cvt(unsafe { libc::fchown(fd.as_raw_fd(), owner.uid, owner.gid) })
}

fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: fchmod on a valid fd with a plain integer.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })
}

fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid dir fd and a NUL-terminated single name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

fn rename_at(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: a valid dir fd and two NUL-terminated single names; rename never follows them.
    cvt(unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) })
}

fn read_link_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<PathBuf> {
    let name = cstring(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: a valid dir fd, a NUL-terminated name and a buffer of the length we pass.
    let n = unsafe { libc::readlinkat(dir.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    if n >= buf.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "symlink target longer than PATH_MAX"));
    }
    buf.truncate(n);
    Ok(PathBuf::from(OsString::from_vec(buf)))
}

/// The names in a directory, without `.` and `..`, sorted.
fn read_names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    // A fresh open file description, so that reading it moves no offset anyone else uses.
    let own = open_name(dir, b".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let raw = own.into_raw_fd();
    // SAFETY: `raw` is an open directory fd that nothing else owns; fdopendir takes it over.
    let stream = unsafe { libc::fdopendir(raw) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `raw` is still ours to close.
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
        return Err(e);
    }
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; resetting it tells the end of the stream from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is a valid DIR* until closedir below.
        let ent = unsafe { libc::readdir(stream) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error().unwrap_or(0) == 0 { Ok(()) } else { Err(e) };
        }
        // SAFETY: readdir returned a valid dirent whose d_name is NUL-terminated; it stays valid
        // until the next readdir on this stream, and we copy it before that.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    };
    // SAFETY: `stream` came from fdopendir and is closed exactly once; it closes `raw` too.
    unsafe { libc::closedir(stream) };
    result?;
    names.sort();
    Ok(names)
}

/// A name for a temporary file that no one else of this process uses.
fn temp_name() -> CString {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let name = format!(".bulkhead-{}-{n}-{nanos:x}.tmp", std::process::id());
    // The name has no NUL by construction.
    CString::new(name).unwrap_or_default()
}

/// Removes a temporary name from its directory when dropped, unless the rename took it.
struct TempName<'a> {
    dir: BorrowedFd<'a>,
    name: CString,
    armed: bool,
}

impl Drop for TempName<'_> {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: a leftover temporary file is only clutter in the tenant's filesystem.
            let _ = unlink_at(self.dir, &self.name, 0);
        }
    }
}

/// The file a write fills before it replaces its target. Unnamed (`O_TMPFILE`) where the
/// filesystem allows: a server killed mid-write (`kill -9` skips every destructor) leaves
/// nothing in the tenant's filesystem, since the kernel frees an unnamed inode with its last
/// descriptor; the file gets a name only once it is complete and synced: its target's name when
/// it has none yet, else a temporary one a moment before it is renamed over the target. Else
/// (no `O_TMPFILE`) a named temporary file beside the target, removed on error.
enum Pending<'a> {
    Unnamed(BorrowedFd<'a>),
    Named(TempName<'a>),
}

/// Opens the file of a [`Pending`] write in `dir` (0600 until the write sets its mode).
fn create_pending(dir: BorrowedFd<'_>) -> io::Result<(OwnedFd, Pending<'_>)> {
    // SAFETY: a valid dir fd and a NUL-terminated path; the flags and mode are plain integers.
    let fd = unsafe {
        libc::openat(dir.as_raw_fd(), c".".as_ptr(), libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC, 0o600)
    };
    if fd >= 0 {
        // SAFETY: the kernel just returned this descriptor, owned by nothing else.
        return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, Pending::Unnamed(dir)));
    }
    let e = io::Error::last_os_error();
    // A filesystem (or kernel) without O_TMPFILE: a named temporary file instead.
    if !matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) {
        return Err(e);
    }
    let (fd, temp) = with_temp_name(dir, |tmp| {
        openat2(dir, tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW, 0o600, ONE_NAME)
    })?;
    Ok((fd, Pending::Named(temp)))
}

/// Links the complete file `file` into `dir` as `name` (`EEXIST` when the name is taken).
fn link_fd(file: &File, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: a valid file fd, an empty path with AT_EMPTY_PATH (the fd itself), a valid dir
    // fd and a NUL-terminated single name.
    let rc =
        unsafe { libc::linkat(file.as_raw_fd(), c"".as_ptr(), dir.as_raw_fd(), name.as_ptr(), libc::AT_EMPTY_PATH) };
    match cvt(rc) {
        // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the descriptor's /proc entry does not.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) || e.raw_os_error() == Some(libc::EPERM) => {
            let proc = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: NUL-terminated paths and a valid dir fd.
            cvt(unsafe {
                libc::linkat(libc::AT_FDCWD, proc.as_ptr(), dir.as_raw_fd(), name.as_ptr(), libc::AT_SYMLINK_FOLLOW)
            })
        }
        other => other,
    }
}

impl Pending<'_> {
    /// Puts the complete file `file` in place as `target` in its directory. An unnamed file
    /// whose target does not exist is linked there at once: there is never a moment with a
    /// temporary name. One that replaces a file gets a fresh temporary name first and is
    /// renamed over the target (a crash between the two leaves that name: a moment's window).
    fn replace(self, file: &File, target: &CStr) -> io::Result<()> {
        match self {
            Pending::Named(mut temp) => {
                rename_at(temp.dir, &temp.name, target)?;
                temp.armed = false;
                Ok(())
            }
            Pending::Unnamed(dir) => match link_fd(file, dir, target) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let ((), mut temp) = with_temp_name(dir, |tmp| link_fd(file, dir, tmp))?;
                    rename_at(dir, &temp.name, target)?;
                    temp.armed = false;
                    Ok(())
                }
                other => other,
            },
        }
    }
}

/// Creates something under a fresh temporary name in `dir` with `create`, retrying names that
/// exist already (the sandbox may have made them).
fn with_temp_name<'a, T>(
    dir: BorrowedFd<'a>,
    mut create: impl FnMut(&CStr) -> io::Result<T>,
) -> io::Result<(T, TempName<'a>)> {
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..TEMP_ATTEMPTS {
        let name = temp_name();
        match create(&name) {
            Ok(t) => return Ok((t, TempName { dir, name, armed: true })),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Creates `name` in `dir` as a directory owned by `owner` with `mode`, or opens the directory
/// that is there (never through a symlink).
fn make_dir_in(
    dir: BorrowedFd<'_>,
    name: &[u8],
    mode: u32,
    owner: Owner,
    rel: &Path,
) -> Result<OwnedFd, ConfinedError> {
    let cname = cstring(name).map_err(|e| io_error("create directory", rel, e))?;
    // SAFETY: a valid dir fd and a NUL-terminated single name.
    let created = match cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), cname.as_ptr(), 0o700) }) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io_error("create directory", rel, e)),
    };
    let fd =
        open_name(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| io_error("open directory", rel, e))?;
    if created {
        fchown(fd.as_fd(), owner).map_err(|e| io_error("chown directory", rel, e))?;
        fchmod(fd.as_fd(), mode).map_err(|e| io_error("chmod directory", rel, e))?;
        fsync(dir).map_err(|e| io_error("sync directory", rel, e))?;
    }
    Ok(fd)
}

/// Opens the directory `comps` of the root, creating missing ones (mode 0755, owned by `owner`).
fn ensure_dir(root: &Root, comps: &[&[u8]], owner: Owner, rel: &Path) -> Result<OwnedFd, ConfinedError> {
    match open_dir(root, comps) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("open directory", rel, e)),
    }
    let mut dir = open_dir(root, &[]).map_err(|e| io_error("open root", rel, e))?;
    for (i, name) in comps.iter().enumerate() {
        dir = match open_dir(root, &comps[..=i]) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => make_dir_in(dir.as_fd(), name, 0o755, owner, rel)?,
            Err(e) => return Err(io_error("open directory", rel, e)),
        };
    }
    Ok(dir)
}

/// Opens a regular file of the root for reading. Symlinks are followed, inside the root.
///
/// Nothing blocks and no device is opened: the path is first opened with `O_PATH` and refused
/// unless it is a regular file; the file opened for reading (non-blocking) must then be that
/// same file.
///
/// Errors: `IsADirectory`; `InvalidInput` for an invalid path, or carrying a [`NotRegular`]
/// for a fifo, socket or device; `NotFound`.
pub fn open_read(root: &Root, rel: impl AsRef<Path>) -> io::Result<(File, Metadata)> {
    let rel = rel.as_ref();
    let comps = components(rel)?;
    if comps.is_empty() {
        return Err(io::Error::new(io::ErrorKind::IsADirectory, format!("{:?} is a directory", rel)));
    }
    let path = cstring(&join(&comps))?;
    let probe = openat2(root.fd.as_fd(), &path, libc::O_PATH, 0, IN_ROOT)?;
    let first = fstat(probe.as_fd())?;
    if kind_of(first.st_mode) != Kind::File {
        return Err(not_regular(rel, first.st_mode));
    }
    // O_NONBLOCK: were a fifo swapped in since, opening it must not wait for a writer.
    let fd = openat2(root.fd.as_fd(), &path, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY, 0, IN_ROOT)
        .map_err(|e| if e.raw_os_error() == Some(libc::ENXIO) { not_regular(rel, libc::S_IFSOCK) } else { e })?;
    let st = fstat(fd.as_fd())?;
    if kind_of(st.st_mode) != Kind::File {
        return Err(not_regular(rel, st.st_mode));
    }
    if (st.st_dev, st.st_ino) != (first.st_dev, first.st_ino) {
        return Err(io::Error::other(format!("{:?} changed while it was opened", rel)));
    }
    // SAFETY: fcntl on a valid fd with plain integers; F_SETFL 0 clears O_NONBLOCK.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, 0) })?;
    let file = File::from(fd);
    let meta = file.metadata()?;
    Ok((file, meta))
}

/// Replaces (or creates) the regular file `rel` with at most `max_bytes` of `data`, atomically:
/// readers see the old content or the new, never a part. Missing parent directories are created
/// (0755); the file gets `mode & 0o777`; all of them belong to `owner`. Returns the bytes written.
///
/// On any error the previous content stays and the temporary file is removed.
pub fn write_atomic(
    root: &Root,
    rel: impl AsRef<Path>,
    data: impl Read,
    max_bytes: u64,
    mode: u32,
    owner: Owner,
) -> Result<u64, ConfinedError> {
    write_atomic_when(root, rel, data, max_bytes, Some(mode), owner, || Ok::<_, ConfinedError>(())).map(|(n, ())| n)
}

/// [`write_atomic`], with `commit` called once the new content is written and synced, just
/// before it replaces the old: its error abandons the write (the previous content stays), and
/// what it returns (such as a lock guard) is held until the rename is done, then returned.
///
/// With `mode` `None`, a regular file already at `rel` keeps its mode (without setuid and
/// setgid) and its owner, and a new file gets 0644 and `owner`. A directory at `rel` fails with
/// `IsADirectory`, a fifo, socket or device with `InvalidInput` carrying a [`NotRegular`]
/// (`ConfinedError::Io`), before any data is read; a symlink at `rel` is replaced, never
/// followed.
pub fn write_atomic_when<G, E: From<ConfinedError>>(
    root: &Root,
    rel: impl AsRef<Path>,
    mut data: impl Read,
    max_bytes: u64,
    mode: Option<u32>,
    owner: Owner,
    commit: impl FnOnce() -> Result<G, E>,
) -> Result<(u64, G), E> {
    let rel = rel.as_ref();
    let (parents, name) = split(rel)?;
    let target = cstring(name).map_err(|e| io_error("write", rel, e))?;
    let dir = ensure_dir(root, &parents, owner, rel)?;
    let (mode, owner) = match lstat_at(dir.as_fd(), name) {
        Ok(st) => match kind_of(st.st_mode) {
            Kind::File => (mode.unwrap_or(st.st_mode & 0o1777), Owner { uid: st.st_uid, gid: st.st_gid }),
            Kind::Symlink => (mode.unwrap_or(0o644), owner),
            _ => return Err(io_error("write", rel, not_regular(rel, st.st_mode)).into()),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => (mode.unwrap_or(0o644), owner),
        Err(e) => return Err(io_error("stat", rel, e).into()),
    };
    let (fd, pending) = create_pending(dir.as_fd()).map_err(|e| io_error("create temporary file for", rel, e))?;
    let mut file = File::from(fd);

    let mut buf = vec![0u8; 64 * 1024];
    let mut written: u64 = 0;
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ConfinedError::Read(e).into()),
        };
        written += n as u64;
        if written > max_bytes {
            return Err(ConfinedError::TooLarge { limit: max_bytes }.into());
        }
        file.write_all(&buf[..n]).map_err(|e| io_error("write", rel, e))?;
    }
    fchown(file.as_fd(), owner).map_err(|e| io_error("chown", rel, e))?;
    fchmod(file.as_fd(), mode & 0o1777).map_err(|e| io_error("chmod", rel, e))?;
    // ext4 allocates blocks late: ENOSPC can surface here, before anything is replaced.
    file.sync_all().map_err(|e| io_error("sync", rel, e))?;
    let held = commit()?;
    pending.replace(&file, &target).map_err(|e| io_error("replace", rel, e))?;
    drop(file);
    fsync(dir.as_fd()).map_err(|e| io_error("sync directory of", rel, e))?;
    Ok((written, held))
}

/// Creates the directory `rel` and missing parents, owned by `owner`. The directory gets
/// `mode & 0o777` whether it is new or was there (its owner then stays).
pub fn create_dir(root: &Root, rel: impl AsRef<Path>, mode: u32, owner: Owner) -> Result<(), ConfinedError> {
    let rel = rel.as_ref();
    let (parents, name) = split(rel)?;
    let dir = ensure_dir(root, &parents, owner, rel)?;
    let fd = make_dir_in(dir.as_fd(), name, mode & 0o777, owner, rel)?;
    fchmod(fd.as_fd(), mode & 0o777).map_err(|e| io_error("chmod directory", rel, e))?;
    Ok(())
}

/// Creates (or replaces) the symlink `rel` pointing to `target`, owned by `owner`. The target is
/// stored as given: a symlink cannot lead this module outside the root, whatever it says.
pub fn symlink(
    root: &Root,
    target: impl AsRef<Path>,
    rel: impl AsRef<Path>,
    owner: Owner,
) -> Result<(), ConfinedError> {
    let rel = rel.as_ref();
    let target = target.as_ref();
    let (parents, name) = split(rel)?;
    let invalid = |reason| ConfinedError::InvalidPath { path: target.to_string_lossy().into_owned(), reason };
    if target.as_os_str().is_empty() {
        return Err(invalid("empty symlink target"));
    }
    let ctarget = cstring(target.as_os_str().as_bytes()).map_err(|_| invalid("contains NUL"))?;
    let cname = cstring(name).map_err(|e| io_error("create symlink", rel, e))?;
    let dir = ensure_dir(root, &parents, owner, rel)?;
    let ((), mut temp) = with_temp_name(dir.as_fd(), |tmp| {
        // SAFETY: a valid dir fd and two NUL-terminated strings that symlinkat only reads.
        cvt(unsafe { libc::symlinkat(ctarget.as_ptr(), dir.as_raw_fd(), tmp.as_ptr()) })
    })
    .map_err(|e| io_error("create symlink", rel, e))?;
    // SAFETY: a valid dir fd and a NUL-terminated single name; the link itself is changed.
    cvt(unsafe {
        libc::fchownat(dir.as_raw_fd(), temp.name.as_ptr(), owner.uid, owner.gid, libc::AT_SYMLINK_NOFOLLOW)
    })
    .map_err(|e| io_error("chown symlink", rel, e))?;
    rename_at(dir.as_fd(), &temp.name, &cname).map_err(|e| io_error("replace", rel, e))?;
    temp.armed = false;
    fsync(dir.as_fd()).map_err(|e| io_error("sync directory of", rel, e))?;
    Ok(())
}

/// Makes `rel` (created or replaced) another name of the file `existing`. Neither last component
/// is followed if it is a symlink. Missing parents of `rel` are created for `owner`.
pub fn hard_link(
    root: &Root,
    existing: impl AsRef<Path>,
    rel: impl AsRef<Path>,
    owner: Owner,
) -> Result<(), ConfinedError> {
    let existing = existing.as_ref();
    let rel = rel.as_ref();
    let (src_parents, src_name) = split(existing)?;
    let (parents, name) = split(rel)?;
    let csrc = cstring(src_name).map_err(|e| io_error("link", existing, e))?;
    let cname = cstring(name).map_err(|e| io_error("link", rel, e))?;
    let src_dir = open_dir(root, &src_parents).map_err(|e| io_error("open directory", existing, e))?;
    let dir = ensure_dir(root, &parents, owner, rel)?;
    let ((), temp) = with_temp_name(dir.as_fd(), |tmp| {
        // SAFETY: valid dir fds and NUL-terminated single names; flags 0 follows no symlink.
        cvt(unsafe { libc::linkat(src_dir.as_raw_fd(), csrc.as_ptr(), dir.as_raw_fd(), tmp.as_ptr(), 0) })
    })
    .map_err(|e| io_error("link", rel, e))?;
    rename_at(dir.as_fd(), &temp.name, &cname).map_err(|e| io_error("replace", rel, e))?;
    // The temporary name stays armed: renaming a link over another link of the same file leaves
    // both names (rename(2)), and dropping `temp` removes the leftover.
    drop(temp);
    fsync(dir.as_fd()).map_err(|e| io_error("sync directory of", rel, e))?;
    Ok(())
}

/// Sets the modification time of `rel`, not following it if it is a symlink.
pub fn set_modified(root: &Root, rel: impl AsRef<Path>, modified: SystemTime) -> Result<(), ConfinedError> {
    let rel = rel.as_ref();
    let comps = components(rel)?;
    let (dir, name) = match comps.split_last() {
        Some((name, parents)) => {
            (open_dir(root, parents).map_err(|e| io_error("open directory", rel, e))?, cstring(name))
        }
        None => (open_dir(root, &[]).map_err(|e| io_error("open root", rel, e))?, cstring(b".")),
    };
    let name = name.map_err(|e| io_error("set time of", rel, e))?;
    let (secs, nanos) = match modified.duration_since(UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
        Err(e) => (i64::try_from(e.duration().as_secs()).map(|s| -s).unwrap_or(i64::MIN), 0),
    };
    let times = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: libc::c_long::from(nanos as i32) },
    ];
    // SAFETY: a valid dir fd, a NUL-terminated single name and an array of two timespecs.
    cvt(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
        .map_err(|e| io_error("set time of", rel, e))
}

/// Removes a file, symlink or empty directory (a symlink itself, never what it points to).
pub fn remove(root: &Root, rel: impl AsRef<Path>) -> Result<(), ConfinedError> {
    let rel = rel.as_ref();
    let (parents, name) = split(rel)?;
    let cname = cstring(name).map_err(|e| io_error("remove", rel, e))?;
    let dir = open_dir(root, &parents).map_err(|e| io_error("open directory", rel, e))?;
    match unlink_at(dir.as_fd(), &cname, 0) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
            unlink_at(dir.as_fd(), &cname, libc::AT_REMOVEDIR).map_err(|e| io_error("remove", rel, e))?
        }
        Err(e) => return Err(io_error("remove", rel, e)),
    }
    fsync(dir.as_fd()).map_err(|e| io_error("sync directory of", rel, e))
}

/// Times [`remove_tree`] empties one directory that a sandbox keeps filling before it gives up.
const REMOVE_ATTEMPTS: u32 = 16;

/// Removes the directory at `path` (a host path the caller trusts, such as a staging dir) and
/// everything in it, however deep. A tenant's tree may nest directories far deeper than any
/// recursive removal survives (`std::fs::remove_dir_all` keeps one stack frame and one open fd per
/// level; a tree 15,000 levels deep overflows an 8 MiB stack), so this one is iterative and holds
/// two directory fds at a time: each directory is emptied through its fd, and a subdirectory that
/// is not empty is first renamed up into `path` itself (under a fresh `.remove-<n>` name), so the
/// tree only ever gets shallower. Nothing is followed: a symlink is removed, never its target, and
/// no lookup leaves the filesystem of `path` (renames cannot cross filesystems). A missing `path`
/// is not an error. A sandbox that keeps filling a directory while it is removed makes the
/// removal fail after [`REMOVE_ATTEMPTS`] tries instead of run forever.
pub fn remove_tree(path: impl AsRef<Path>) -> Result<(), ConfinedError> {
    let path = path.as_ref();
    let top = match Root::open(path) {
        Ok(top) => top,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let top_fd = top.fd.as_fd();
    let mut fresh = 0u64;
    // Directories directly under `top` still to empty and remove, with the tries made.
    let mut pending: Vec<(OsString, u32)> = Vec::new();
    empty_dir(top_fd, top_fd, path, &mut pending, &mut fresh)?;
    while let Some((name, tries)) = pending.pop() {
        let shown = path.join(&name);
        let dir = match open_name(top_fd, name.as_bytes(), libc::O_RDONLY | libc::O_DIRECTORY, 0) {
            Ok(dir) => dir,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            // Swapped for a symlink or a file meanwhile: remove that instead.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                let cname = cstring(name.as_bytes()).map_err(|e| io_error("remove", &shown, e))?;
                match unlink_at(top_fd, &cname, 0) {
                    Ok(()) => continue,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                    Err(e) => return Err(io_error("remove", &shown, e)),
                }
            }
            Err(e) => return Err(io_error("open directory", &shown, e)),
        };
        empty_dir(dir.as_fd(), top_fd, &shown, &mut pending, &mut fresh)?;
        drop(dir);
        let cname = cstring(name.as_bytes()).map_err(|e| io_error("remove", &shown, e))?;
        match unlink_at(top_fd, &cname, libc::AT_REMOVEDIR) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                if tries + 1 >= REMOVE_ATTEMPTS {
                    return Err(io_error("remove", &shown, e));
                }
                pending.push((name, tries + 1));
            }
            Err(e) => return Err(io_error("remove", &shown, e)),
        }
    }
    drop(top);
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("remove", path, e)),
    }
}

/// Removes everything in `dir` but its non-empty subdirectories, which are renamed into `top`
/// (or, when `dir` is `top`, left in place) and added to `pending`.
fn empty_dir(
    dir: BorrowedFd<'_>,
    top: BorrowedFd<'_>,
    shown: &Path,
    pending: &mut Vec<(OsString, u32)>,
    fresh: &mut u64,
) -> Result<(), ConfinedError> {
    let is_top = fstat(dir).and_then(|d| fstat(top).map(|t| (d.st_dev, d.st_ino) == (t.st_dev, t.st_ino)));
    let is_top = is_top.map_err(|e| io_error("stat", shown, e))?;
    for name in read_names(dir).map_err(|e| io_error("list", shown, e))? {
        let cname = cstring(name.as_bytes()).map_err(|e| io_error("remove", shown.join(&name), e))?;
        let err = match unlink_at(dir, &cname, 0) {
            Ok(()) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => match unlink_at(dir, &cname, libc::AT_REMOVEDIR) {
                Ok(()) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => e,
            },
            Err(e) => e,
        };
        if !matches!(err.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) {
            return Err(io_error("remove", shown.join(&name), err));
        }
        if is_top {
            pending.push((name, 0));
            continue;
        }
        // Up into `top`, under a name nothing else uses.
        loop {
            *fresh += 1;
            let new = format!(".remove-{fresh}");
            let cnew = cstring(new.as_bytes()).map_err(|e| io_error("rename", shown.join(&name), e))?;
            // SAFETY: two valid dir fds and two NUL-terminated single names; renameat2 follows
            // neither name and fails across filesystems.
            let rc = unsafe {
                libc::renameat2(dir.as_raw_fd(), cname.as_ptr(), top.as_raw_fd(), cnew.as_ptr(), libc::RENAME_NOREPLACE)
            };
            match cvt(rc) {
                Ok(()) => {
                    pending.push((OsString::from(new), 0));
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
                Err(e) => return Err(io_error("rename", shown.join(&name), e)),
            }
        }
    }
    Ok(())
}

/// The entries of the directory `rel` (`""` is the root), sorted by name. Entries are not
/// followed: a symlink to a directory is a [`Kind::Symlink`]. Entries that vanish while listed
/// are left out.
pub fn list(root: &Root, rel: impl AsRef<Path>) -> Result<Vec<Entry>, ConfinedError> {
    let rel = rel.as_ref();
    let comps = components(rel)?;
    let dir = open_dir(root, &comps).map_err(|e| io_error("open directory", rel, e))?;
    let names = read_names(dir.as_fd()).map_err(|e| io_error("list", rel, e))?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        match lstat_at(dir.as_fd(), name.as_bytes()) {
            Ok(st) => out.push(entry_of(name, &st)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("stat", rel.join(&name), e)),
        }
    }
    Ok(out)
}

/// A page of the directory `rel` (`""` is the root): at most `limit` entries whose names sort
/// (by their bytes) after `after`, with symlink targets; and whether more follow. Only those
/// entries are examined (`lstat`, `readlink`), however large the directory.
pub fn list_page(
    root: &Root,
    rel: impl AsRef<Path>,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<(Vec<Entry>, bool), ConfinedError> {
    let rel = rel.as_ref();
    let comps = components(rel)?;
    let dir = open_dir(root, &comps).map_err(|e| io_error("open directory", rel, e))?;
    let names = read_names(dir.as_fd()).map_err(|e| io_error("list", rel, e))?;
    let mut out = Vec::with_capacity(limit.min(names.len()));
    let mut more = false;
    for name in names.into_iter().filter(|n| after.is_none_or(|a| n.as_bytes() > a)) {
        if out.len() == limit {
            more = true;
            break;
        }
        match lstat_at(dir.as_fd(), name.as_bytes()) {
            Ok(st) => {
                let target = if kind_of(st.st_mode) == Kind::Symlink {
                    read_link_at(dir.as_fd(), name.as_bytes()).ok()
                } else {
                    None
                };
                out.push(Entry { target, ..entry_of(name, &st) });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("stat", rel.join(&name), e)),
        }
    }
    Ok((out, more))
}

/// Directories a walk keeps open at most; deeper ancestors are closed and opened again (inside
/// the root) when the walk climbs back to them, so a walk holds a bounded number of file
/// descriptors however deep the tree is.
pub const MAX_OPEN_DIRS: usize = 8;

struct Frame {
    /// Open while the frame is among the [`MAX_OPEN_DIRS`] deepest.
    dir: Option<OwnedFd>,
    path: PathBuf,
    names: std::vec::IntoIter<OsString>,
}

/// A depth-first walk of a root, pulled one entry at a time (see [`walk`]). It holds at most
/// [`MAX_OPEN_DIRS`] directory descriptors; the file of a [`Node::File`] it yields is the
/// caller's to close.
pub struct Walker<R> {
    root: R,
    stack: Vec<Frame>,
    started: bool,
}

impl<R: std::borrow::Borrow<Root>> Walker<R> {
    /// A walk of `root` (a `Root` or a reference to one).
    pub fn new(root: R) -> Self {
        Walker { root, stack: Vec::new(), started: false }
    }

    /// The next entry: its path relative to the root, the entry and its [`Node`]; `None` at the
    /// end. Fails with [`ConfinedError::InvalidPath`] on a path longer than [`MAX_PATH`].
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<(PathBuf, Entry, Node), ConfinedError>> {
        match self.step() {
            Ok(Some(x)) => Some(Ok(x)),
            Ok(None) => None,
            Err(e) => {
                self.stack.clear();
                Some(Err(e))
            }
        }
    }

    fn step(&mut self) -> Result<Option<(PathBuf, Entry, Node)>, ConfinedError> {
        if !self.started {
            self.started = true;
            let top = open_dir(self.root.borrow(), &[]).map_err(|e| io_error("open root", "", e))?;
            let names = read_names(top.as_fd()).map_err(|e| io_error("list", "", e))?;
            self.stack.push(Frame { dir: Some(top), path: PathBuf::new(), names: names.into_iter() });
        }
        let gone = |e: &io::Error| {
            matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::EINVAL)
            )
        };
        loop {
            let Some(frame) = self.stack.last_mut() else { return Ok(None) };
            let Some(name) = frame.names.next() else {
                self.stack.pop();
                continue;
            };
            if frame.dir.is_none() {
                // Climbed back to a directory whose descriptor was given up: open it again,
                // resolved inside the root like every other path.
                let comps = components(&frame.path)?;
                match open_dir(self.root.borrow(), &comps) {
                    Ok(fd) => frame.dir = Some(fd),
                    Err(e) if gone(&e) => {
                        self.stack.pop();
                        continue;
                    }
                    Err(e) => return Err(io_error("open directory", &frame.path, e)),
                }
            }
            let path = frame.path.join(&name);
            if path.as_os_str().len() > MAX_PATH {
                return Err(ConfinedError::InvalidPath {
                    path: path.to_string_lossy().into_owned(),
                    reason: "longer than 4096 bytes",
                });
            }
            let Some(dir_fd) = frame.dir.as_ref() else { continue };
            let dir = dir_fd.as_fd();
            let st = match lstat_at(dir, name.as_bytes()) {
                Ok(st) => st,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(io_error("stat", &path, e)),
            };
            match kind_of(st.st_mode) {
                Kind::Dir => {
                    let fd = match open_name(dir, name.as_bytes(), libc::O_RDONLY | libc::O_DIRECTORY, 0) {
                        Ok(fd) => fd,
                        Err(e) if gone(&e) => continue,
                        Err(e) => return Err(io_error("open directory", &path, e)),
                    };
                    let st = fstat(fd.as_fd()).map_err(|e| io_error("stat", &path, e))?;
                    let names = read_names(fd.as_fd()).map_err(|e| io_error("list", &path, e))?;
                    let entry = entry_of(name, &st);
                    self.stack.push(Frame { dir: Some(fd), path: path.clone(), names: names.into_iter() });
                    if self.stack.len() > MAX_OPEN_DIRS {
                        let i = self.stack.len() - MAX_OPEN_DIRS - 1;
                        self.stack[i].dir = None;
                    }
                    return Ok(Some((path, entry, Node::Dir)));
                }
                Kind::File => {
                    let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
                    let fd = match open_name(dir, name.as_bytes(), flags, 0) {
                        Ok(fd) => fd,
                        Err(e) if gone(&e) => continue,
                        Err(e) => return Err(io_error("open", &path, e)),
                    };
                    let st = fstat(fd.as_fd()).map_err(|e| io_error("stat", &path, e))?;
                    if kind_of(st.st_mode) != Kind::File {
                        continue;
                    }
                    // SAFETY: fcntl on a valid fd with plain integers; F_SETFL 0 clears O_NONBLOCK.
                    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, 0) })
                        .map_err(|e| io_error("open", &path, e))?;
                    return Ok(Some((path, entry_of(name, &st), Node::File(File::from(fd)))));
                }
                Kind::Symlink => {
                    let target = match read_link_at(dir, name.as_bytes()) {
                        Ok(t) => t,
                        Err(e) if gone(&e) => continue,
                        Err(e) => return Err(io_error("read symlink", &path, e)),
                    };
                    return Ok(Some((path, entry_of(name, &st), Node::Symlink(target))));
                }
                Kind::Other => return Ok(Some((path, entry_of(name, &st), Node::Other))),
            }
        }
    }

    /// Directory descriptors the walk holds now.
    pub fn open_dirs(&self) -> usize {
        self.stack.iter().filter(|f| f.dir.is_some()).count()
    }
}

/// Visits every entry under the root, depth first, a directory before its entries, names sorted,
/// never following a symlink. `visit` gets the path relative to the root, the entry as seen from
/// its open fd (for files and directories), and the [`Node`]: regular files come opened through
/// the directory fd, symlinks with their target. Entries that vanish or change type while walked
/// are left out. Fails with [`ConfinedError::InvalidPath`] on a path longer than [`MAX_PATH`].
/// At most [`MAX_OPEN_DIRS`] directories are open at once.
pub fn walk<E: From<ConfinedError>>(
    root: &Root,
    mut visit: impl FnMut(&Path, &Entry, Node) -> Result<(), E>,
) -> Result<(), E> {
    let mut walker = Walker::new(root);
    while let Some(item) = walker.next() {
        let (path, entry, node) = item?;
        visit(&path, &entry, node)?;
    }
    Ok(())
}

// ---- Archives: files written through their descriptor (sparse files) ----

/// [`write_atomic`] for content that is not a stream: `fill` gets the new, empty file (opened
/// for writing, in a temporary name beside `rel`) and writes it as it likes, such as seeking
/// over holes so the file stays sparse. Then the file gets `mode & 0o777` and `owner`, is synced
/// and replaces `rel`; missing parents are created (0755, for `owner`). What `fill` returns is
/// returned. On any error (`fill`'s own included) the previous content stays and the temporary
/// file is removed.
pub fn write_atomic_with<T, E: From<ConfinedError>>(
    root: &Root,
    rel: impl AsRef<Path>,
    mode: u32,
    owner: Owner,
    fill: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, E> {
    let rel = rel.as_ref();
    let (parents, name) = split(rel)?;
    let target = cstring(name).map_err(|e| io_error("write", rel, e))?;
    let dir = ensure_dir(root, &parents, owner, rel)?;
    let (fd, pending) = create_pending(dir.as_fd()).map_err(|e| io_error("create temporary file for", rel, e))?;
    let mut file = File::from(fd);
    let out = fill(&mut file)?;
    fchown(file.as_fd(), owner).map_err(|e| io_error("chown", rel, e))?;
    fchmod(file.as_fd(), mode & 0o777).map_err(|e| io_error("chmod", rel, e))?;
    file.sync_all().map_err(|e| io_error("sync", rel, e))?;
    pending.replace(&file, &target).map_err(|e| io_error("replace", rel, e))?;
    drop(file);
    fsync(dir.as_fd()).map_err(|e| io_error("sync directory of", rel, e))?;
    Ok(out)
}

// ---- Trees built from nothing by one writer (image layers) ----

/// What [`Builder::make`] creates at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Make<'a> {
    /// A directory (one already there is kept, with the new mode and owner).
    Dir,
    /// A symlink to the target, stored as given.
    Symlink(&'a [u8]),
    /// Another name of the earlier file at these components of the tree.
    HardLink(&'a [&'a [u8]]),
    /// An overlayfs whiteout: a character device 0:0.
    Whiteout,
}

/// A directory tree that one writer builds from nothing (an image layer being unpacked) and no
/// one else writes meanwhile. Every path is resolved beneath its root with
/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`: not even a symlink the tree itself holds is
/// followed, so whatever the entries say, nothing is written outside it. Entries keep the mode
/// (setuid, setgid and sticky bits too) and owner they are given; missing parents are made
/// 0755 and owned by root. Nothing is synced until [`Builder::sync`].
#[derive(Debug)]
pub(crate) struct Builder {
    root: Root,
}

/// Lookups of whole paths in a [`Builder`]'s tree: beneath it, no symlink at all.
const NO_LINKS: u64 = ONE_NAME;

impl Builder {
    /// Opens the (empty, new) directory at `path`, a host path the caller trusts.
    pub(crate) fn open(path: impl AsRef<Path>) -> Result<Builder, ConfinedError> {
        Ok(Builder { root: Root::open(path)? })
    }

    fn shown(comps: &[&[u8]]) -> PathBuf {
        PathBuf::from(std::ffi::OsStr::from_bytes(&join(comps)))
    }

    /// Opens the directory `comps`, creating missing ones (0755, root's), following nothing.
    fn dir(&self, comps: &[&[u8]]) -> Result<OwnedFd, ConfinedError> {
        let rel = Self::shown(comps);
        let path = if comps.is_empty() { cstring(b".") } else { cstring(&join(comps)) };
        let path = path.map_err(|e| io_error("open directory", &rel, e))?;
        match openat2(self.root.fd.as_fd(), &path, libc::O_RDONLY | libc::O_DIRECTORY, 0, NO_LINKS) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("open directory", &rel, e)),
        }
        let mut dir = open_name(self.root.fd.as_fd(), b".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| io_error("open root", &rel, e))?;
        for name in comps {
            dir = make_dir_in(dir.as_fd(), name, 0o755, Owner { uid: 0, gid: 0 }, &rel)?;
        }
        Ok(dir)
    }

    /// The parent directory of `comps` (which must not be empty) and the last name.
    fn parent(&self, comps: &[&[u8]]) -> Result<(OwnedFd, CString), ConfinedError> {
        let rel = Self::shown(comps);
        let (name, parents) =
            comps.split_last().ok_or(ConfinedError::InvalidPath { path: String::new(), reason: "names the root" })?;
        let dir = self.dir(parents)?;
        Ok((dir, cstring(name).map_err(|e| io_error("create", &rel, e))?))
    }

    /// Makes room for a new entry `name` in `dir`: removes a file, symlink or empty directory
    /// there (a directory stays when `keep_dir`); true when a directory was kept.
    fn clear(dir: BorrowedFd<'_>, name: &CStr, keep_dir: bool, rel: &Path) -> Result<bool, ConfinedError> {
        let st = match lstat_at(dir, name.to_bytes()) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error("stat", rel, e)),
        };
        if kind_of(st.st_mode) == Kind::Dir {
            if keep_dir {
                return Ok(true);
            }
            unlink_at(dir, name, libc::AT_REMOVEDIR).map_err(|e| io_error("replace directory", rel, e))?;
        } else {
            unlink_at(dir, name, 0).map_err(|e| io_error("replace", rel, e))?;
        }
        Ok(false)
    }

    /// Creates (or replaces) the regular file `comps`: `fill` writes it, then it gets `owner`
    /// and `mode & 0o7777`.
    pub(crate) fn file<T, E: From<ConfinedError>>(
        &self,
        comps: &[&[u8]],
        mode: u32,
        owner: Owner,
        fill: impl FnOnce(&mut File) -> Result<T, E>,
    ) -> Result<T, E> {
        let rel = Self::shown(comps);
        let (dir, name) = self.parent(comps)?;
        Self::clear(dir.as_fd(), &name, false, &rel)?;
        let fd = openat2(
            dir.as_fd(),
            &name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
            NO_LINKS,
        )
        .map_err(|e| io_error("create", &rel, e))?;
        let mut file = File::from(fd);
        let out = fill(&mut file)?;
        fchown(file.as_fd(), owner).map_err(|e| io_error("chown", &rel, e))?;
        fchmod(file.as_fd(), mode & 0o7777).map_err(|e| io_error("chmod", &rel, e))?;
        Ok(out)
    }

    /// Creates (or replaces) `comps` as `what`, owned by `owner`, with `mode & 0o7777` (not for
    /// a symlink, whose mode means nothing, nor a hard link, which is the earlier file).
    pub(crate) fn make(&self, comps: &[&[u8]], what: Make<'_>, mode: u32, owner: Owner) -> Result<(), ConfinedError> {
        let rel = Self::shown(comps);
        if comps.is_empty() {
            // The root itself: only a directory, which it is.
            return match what {
                Make::Dir => {
                    let fd = self.dir(&[])?;
                    fchown(fd.as_fd(), owner).map_err(|e| io_error("chown", &rel, e))?;
                    fchmod(fd.as_fd(), mode & 0o7777).map_err(|e| io_error("chmod", &rel, e))
                }
                _ => Err(ConfinedError::InvalidPath { path: String::new(), reason: "names the root" }),
            };
        }
        let (dir, name) = self.parent(comps)?;
        let kept = Self::clear(dir.as_fd(), &name, what == Make::Dir, &rel)?;
        let chown_nofollow = |what: &'static str| {
            // SAFETY: a valid dir fd and a NUL-terminated single name; the entry itself changes.
            cvt(unsafe {
                libc::fchownat(dir.as_raw_fd(), name.as_ptr(), owner.uid, owner.gid, libc::AT_SYMLINK_NOFOLLOW)
            })
            .map_err(|e| io_error(what, &rel, e))
        };
        match what {
            Make::Dir => {
                if !kept {
                    // SAFETY: a valid dir fd and a NUL-terminated single name.
                    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o700) })
                        .map_err(|e| io_error("create directory", &rel, e))?;
                }
                let fd = open_name(dir.as_fd(), name.to_bytes(), libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .map_err(|e| io_error("open directory", &rel, e))?;
                fchown(fd.as_fd(), owner).map_err(|e| io_error("chown directory", &rel, e))?;
                fchmod(fd.as_fd(), mode & 0o7777).map_err(|e| io_error("chmod directory", &rel, e))?;
            }
            Make::Symlink(target) => {
                let target = cstring(target).map_err(|e| io_error("create symlink", &rel, e))?;
                // SAFETY: a valid dir fd and two NUL-terminated strings that symlinkat only reads.
                cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
                    .map_err(|e| io_error("create symlink", &rel, e))?;
                chown_nofollow("chown symlink")?;
            }
            Make::HardLink(existing) => {
                let (src_dir, src_name) = self.parent(existing)?;
                // SAFETY: valid dir fds and NUL-terminated single names; flags 0 follows no symlink.
                cvt(unsafe { libc::linkat(src_dir.as_raw_fd(), src_name.as_ptr(), dir.as_raw_fd(), name.as_ptr(), 0) })
                    .map_err(|e| io_error("link", &rel, e))?;
            }
            Make::Whiteout => {
                // SAFETY: a valid dir fd, a NUL-terminated single name and plain integers.
                cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) })
                    .map_err(|e| io_error("create whiteout", &rel, e))?;
                chown_nofollow("chown whiteout")?;
            }
        }
        Ok(())
    }

    /// Sets the extended attribute `name` of the directory `comps` (made if missing).
    pub(crate) fn set_dir_xattr(&self, comps: &[&[u8]], name: &CStr, value: &[u8]) -> Result<(), ConfinedError> {
        let rel = Self::shown(comps);
        let fd = self.dir(comps)?;
        // SAFETY: a valid fd, a NUL-terminated name and a buffer of the length passed.
        cvt(unsafe { libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
            .map_err(|e| io_error("set extended attribute of", &rel, e))
    }

    /// Sets the modification (and access) time of `comps`, not following it if it is a symlink.
    pub(crate) fn set_modified(&self, comps: &[&[u8]], modified: SystemTime) -> Result<(), ConfinedError> {
        let rel = Self::shown(comps);
        let (dir, name) = match comps.split_last() {
            Some((name, parents)) => (self.dir(parents)?, cstring(name)),
            None => (self.dir(&[])?, cstring(b".")),
        };
        let name = name.map_err(|e| io_error("set time of", &rel, e))?;
        let (secs, nanos) = match modified.duration_since(UNIX_EPOCH) {
            Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
            Err(e) => (i64::try_from(e.duration().as_secs()).map(|s| -s).unwrap_or(i64::MIN), 0),
        };
        let t = libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: libc::c_long::from(nanos as i32) };
        let times = [t, t];
        // SAFETY: a valid dir fd, a NUL-terminated single name and an array of two timespecs.
        cvt(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
            .map_err(|e| io_error("set time of", &rel, e))
    }

    /// Writes everything of the tree's filesystem to disk (`syncfs(2)`).
    pub(crate) fn sync(&self) -> Result<(), ConfinedError> {
        // SAFETY: syncfs on a valid fd.
        cvt(unsafe { libc::syncfs(self.root.fd.as_raw_fd()) }).map_err(|e| io_error("sync", self.root.path(), e))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    const OWNER: Owner = Owner { uid: 1_000_000, gid: 1_000_000 };

    /// While a write's data is still arriving, its file has no name: a server killed then
    /// leaves nothing in the tenant's filesystem. The complete file replaces its target.
    #[test]
    fn a_write_in_progress_has_no_name_in_the_tenants_tree() {
        struct Peek<'a>(&'a Path, bool);
        impl Read for Peek<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.1 {
                    return Ok(0);
                }
                self.1 = true;
                let names: Vec<OsString> = fs::read_dir(self.0).unwrap().map(|e| e.unwrap().file_name()).collect();
                assert_eq!(names, vec![OsString::from("f")], "only the old file is there mid-write");
                buf[..3].copy_from_slice(b"new");
                Ok(3)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let root = Root::open(dir.path()).unwrap();
        write_atomic(&root, "f", &b"old"[..], 100, 0o644, OWNER).unwrap();
        write_atomic(&root, "f", Peek(dir.path(), false), 100, 0o644, OWNER).unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"new");
        let names: Vec<OsString> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![OsString::from("f")], "no temporary name is left");
    }

    /// A walk of a tree much deeper than [`MAX_OPEN_DIRS`] never holds more directories open,
    /// and still visits every entry, in order.
    #[test]
    fn a_deep_walk_holds_a_bounded_number_of_directories() {
        let dir = tempfile::tempdir().unwrap();
        let mut deep = dir.path().to_path_buf();
        for i in 0..100 {
            deep.push("d");
            fs::create_dir(&deep).unwrap();
            fs::write(deep.join(format!("f{i}")), b"x").unwrap();
        }
        let root = Root::open(dir.path()).unwrap();
        let mut walker = Walker::new(&root);
        let (mut dirs, mut files, mut most) = (0, 0, 0);
        while let Some(item) = walker.next() {
            let (_, _, node) = item.unwrap();
            most = most.max(walker.open_dirs());
            match node {
                Node::Dir => dirs += 1,
                Node::File(_) => files += 1,
                _ => {}
            }
        }
        assert_eq!((dirs, files), (100, 100));
        assert!(most <= MAX_OPEN_DIRS, "{most} directories open at once");
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("SKIPPED: this test needs root (chown)");
        }
        root
    }

    /// A small tmpfs (a full filesystem is easy to get), unmounted when dropped.
    pub(crate) struct SmallFs {
        dir: tempfile::TempDir,
    }

    impl SmallFs {
        /// Mounts it, or says loudly why it cannot (not root, no mount permission).
        pub(crate) fn mount(bytes: u64) -> Option<SmallFs> {
            let dir = tempfile::tempdir().unwrap();
            let target = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
            let options = CString::new(format!("size={bytes},mode=0700")).unwrap();
            // SAFETY: valid NUL-terminated strings that mount only reads.
            let rc = unsafe {
                libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, options.as_ptr().cast())
            };
            if rc != 0 {
                eprintln!("SKIPPED: cannot mount a tmpfs to fill up: {}", io::Error::last_os_error());
                return None;
            }
            let fs = SmallFs { dir };
            fs::create_dir(fs.root()).unwrap();
            Some(fs)
        }

        pub(crate) fn root(&self) -> PathBuf {
            self.dir.path().join("data")
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let target = CString::new(self.dir.path().as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }

    #[test]
    fn a_full_filesystem_is_no_space_and_keeps_the_old_content() {
        let Some(small) = SmallFs::mount(256 * 1024) else { return };
        let root = Root::open(small.root()).unwrap();
        write_atomic(&root, "f", &b"old"[..], 100, 0o644, OWNER).unwrap();
        let e = write_atomic(&root, "f", &vec![1u8; 1 << 20][..], 2 << 20, 0o644, OWNER).unwrap_err();
        assert!(matches!(e, ConfinedError::NoSpace), "{e:?}");
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert_eq!(fs::read(small.root().join("f")).unwrap(), b"old");
        assert_eq!(fs::read_dir(small.root()).unwrap().count(), 1, "temporary file left behind");
        let e = write_atomic(&root, "new/dir/f", &vec![1u8; 1 << 20][..], 2 << 20, 0o644, OWNER).unwrap_err();
        assert!(matches!(e, ConfinedError::NoSpace), "{e:?}");
    }

    /// A tempdir holding `root/` (the confined root) and `outside` (a sentinel).
    fn setup() -> (tempfile::TempDir, Root) {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("root")).unwrap();
        fs::write(d.path().join("outside"), b"sentinel").unwrap();
        let root = Root::open(d.path().join("root")).unwrap();
        (d, root)
    }

    fn read_all(root: &Root, rel: &str) -> io::Result<Vec<u8>> {
        let (mut f, _) = open_read(root, rel)?;
        let mut v = Vec::new();
        f.read_to_end(&mut v)?;
        Ok(v)
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let (d, root) = setup();
        let r = d.path().join("root");
        std::os::unix::fs::symlink("/etc/passwd", r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/passwd", r.join("rel")).unwrap();
        std::os::unix::fs::symlink("../outside", r.join("up")).unwrap();
        // No etc/passwd in the root: the link dangles instead of reaching the host's file.
        assert_eq!(read_all(&root, "abs").unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(read_all(&root, "rel").unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(read_all(&root, "up").unwrap_err().kind(), io::ErrorKind::NotFound);
        // With the root's own etc/passwd, that is what the links lead to.
        fs::create_dir(r.join("etc")).unwrap();
        fs::write(r.join("etc/passwd"), b"tenant").unwrap();
        fs::write(r.join("outside"), b"inner").unwrap();
        assert_eq!(read_all(&root, "abs").unwrap(), b"tenant");
        assert_eq!(read_all(&root, "rel").unwrap(), b"tenant");
        assert_eq!(read_all(&root, "up").unwrap(), b"inner");
        // A symlinked directory leading up resolves inside too, for reads and writes.
        std::os::unix::fs::symlink("../..", r.join("updir")).unwrap();
        write_atomic(&root, "updir/outside", &b"written"[..], 100, 0o644, OWNER).unwrap();
        assert_eq!(fs::read(r.join("outside")).unwrap(), b"written");
        assert_eq!(fs::read(d.path().join("outside")).unwrap(), b"sentinel");
        std::os::unix::fs::symlink("/", r.join("slash")).unwrap();
        write_atomic(&root, "slash/new", &b"x"[..], 100, 0o644, OWNER).unwrap();
        assert!(r.join("new").exists());
    }

    #[test]
    fn invalid_paths_are_refused() {
        let (d, root) = setup();
        for bad in ["/etc/passwd", "../outside", "a/../../outside", "a//b", "a/./b", "a/", "./a", "a\0b"] {
            let e = open_read(&root, bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            let e = write_atomic(&root, bad, &b"x"[..], 10, 0o644, OWNER).unwrap_err();
            assert!(matches!(e, ConfinedError::InvalidPath { .. }), "{bad:?}: {e}");
            assert!(matches!(remove(&root, bad), Err(ConfinedError::InvalidPath { .. })), "{bad:?}");
            assert!(matches!(list(&root, bad), Err(ConfinedError::InvalidPath { .. })), "{bad:?}");
        }
        assert!(matches!(write_atomic(&root, "", &b"x"[..], 10, 0o644, OWNER), Err(ConfinedError::InvalidPath { .. })));
        assert_eq!(fs::read(d.path().join("outside")).unwrap(), b"sentinel");
    }

    #[test]
    fn open_read_wants_a_regular_file() {
        let (d, root) = setup();
        let r = d.path().join("root");
        fs::create_dir(r.join("dir")).unwrap();
        let fifo = CString::new(r.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(open_read(&root, "dir").unwrap_err().kind(), io::ErrorKind::IsADirectory);
        assert_eq!(open_read(&root, "").unwrap_err().kind(), io::ErrorKind::IsADirectory);
        // Does not block waiting for a writer.
        assert_eq!(open_read(&root, "fifo").unwrap_err().kind(), io::ErrorKind::InvalidInput);
        let _listener = std::os::unix::net::UnixListener::bind(r.join("socket")).unwrap();
        assert_eq!(open_read(&root, "socket").unwrap_err().kind(), io::ErrorKind::InvalidInput);
        fs::write(r.join("f"), b"hello").unwrap();
        let (_, meta) = open_read(&root, "f").unwrap();
        assert_eq!(meta.len(), 5);
    }

    #[test]
    fn special_files_are_named_by_type_and_never_replaced_by_a_write() {
        let (d, root) = setup();
        let r = d.path().join("root");
        let fifo = CString::new(r.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let _listener = std::os::unix::net::UnixListener::bind(r.join("socket")).unwrap();
        let mut cases = vec![("fifo", FileType::Fifo), ("socket", FileType::Socket)];
        if is_root() {
            let dev = CString::new(r.join("null").as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid NUL-terminated path; the device numbers of /dev/null.
            assert_eq!(unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) }, 0);
            cases.push(("null", FileType::CharDevice));
        }
        for (name, file_type) in cases {
            let e = open_read(&root, name).unwrap_err();
            assert_eq!(not_regular_type(&e).map(|n| n.file_type), Some(file_type), "{name}: {e}");
            let w = write_atomic_when(&root, name, &b"x"[..], 10, None, OWNER, || Ok::<_, ConfinedError>(()));
            match w {
                Err(ConfinedError::Io { source, .. }) => assert!(not_regular_type(&source).is_some(), "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(fs::symlink_metadata(r.join("fifo")).unwrap().file_type().is_fifo());
        fs::create_dir(r.join("dir")).unwrap();
        let w = write_atomic_when(&root, "dir", &b"x"[..], 10, None, OWNER, || Ok::<_, ConfinedError>(()));
        assert_eq!(w.unwrap_err().kind(), io::ErrorKind::IsADirectory);
    }

    #[test]
    fn an_overwrite_keeps_mode_and_owner_unless_a_mode_is_given() {
        let (d, root) = setup();
        let r = d.path().join("root");
        fs::write(r.join("run.sh"), b"old").unwrap();
        fs::set_permissions(r.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        let before = fs::metadata(r.join("run.sh")).unwrap();
        let keep = |mode| {
            write_atomic_when(&root, "run.sh", &b"new"[..], 10, mode, OWNER, || Ok::<_, ConfinedError>(())).unwrap()
        };
        keep(None);
        let after = fs::metadata(r.join("run.sh")).unwrap();
        assert_eq!(fs::read(r.join("run.sh")).unwrap(), b"new");
        assert_eq!(after.permissions().mode() & 0o7777, 0o750);
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        keep(Some(0o700));
        assert_eq!(fs::metadata(r.join("run.sh")).unwrap().permissions().mode() & 0o7777, 0o700);
        if is_root() {
            write_atomic_when(&root, "fresh", &b"n"[..], 10, None, OWNER, || Ok::<_, ConfinedError>(())).unwrap();
            let m = fs::metadata(r.join("fresh")).unwrap();
            assert_eq!((m.permissions().mode() & 0o7777, m.uid()), (0o644, OWNER.uid));
        }
    }

    #[test]
    fn list_pages_follow_name_order_with_targets() {
        let (d, root) = setup();
        let r = d.path().join("root");
        for name in ["c", "a", "b"] {
            fs::write(r.join(name), name).unwrap();
        }
        std::os::unix::fs::symlink("/etc/passwd", r.join("d")).unwrap();
        fs::write(r.join(OsStr::from_bytes(b"e\xff")), b"").unwrap();
        let (first, more) = list_page(&root, "", None, 2).unwrap();
        assert_eq!(first.iter().map(|e| e.name.as_bytes()).collect::<Vec<_>>(), [b"a", b"b"]);
        assert!(more);
        let (rest, more) = list_page(&root, "", Some(b"b"), 10).unwrap();
        assert!(!more);
        assert_eq!(rest.iter().map(|e| e.name.as_bytes()).collect::<Vec<_>>(), [&b"c"[..], b"d", b"e\xff"]);
        assert_eq!((rest[1].file_type, rest[1].target.as_deref()), (FileType::Symlink, Some(Path::new("/etc/passwd"))));
        assert_eq!(rest[0].file_type, FileType::File);
    }

    #[test]
    fn write_atomic_creates_parents_and_applies_owner_and_mode() {
        if !is_root() {
            return;
        }
        let (d, root) = setup();
        let r = d.path().join("root");
        let n = write_atomic(&root, "a/b/c.txt", &b"content"[..], 100, 0o4755, OWNER).unwrap();
        assert_eq!(n, 7);
        assert_eq!(fs::read(r.join("a/b/c.txt")).unwrap(), b"content");
        for p in ["a", "a/b", "a/b/c.txt"] {
            let m = fs::symlink_metadata(r.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (OWNER.uid, OWNER.gid), "{p}");
        }
        assert_eq!(fs::metadata(r.join("a")).unwrap().permissions().mode() & 0o7777, 0o755);
        assert_eq!(fs::metadata(r.join("a/b/c.txt")).unwrap().permissions().mode() & 0o7777, 0o755);
        // Replacing keeps no temporary files around.
        write_atomic(&root, "a/b/c.txt", &b"new"[..], 100, 0o600, OWNER).unwrap();
        assert_eq!(fs::read(r.join("a/b/c.txt")).unwrap(), b"new");
        let names: Vec<_> = list(&root, "a/b").unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec![OsString::from("c.txt")]);
    }

    #[test]
    fn write_over_the_limit_keeps_the_old_content() {
        let (d, root) = setup();
        let r = d.path().join("root");
        fs::write(r.join("f"), b"old").unwrap();
        let e = write_atomic(&root, "f", &[7u8; 1000][..], 999, 0o644, OWNER).unwrap_err();
        assert!(matches!(e, ConfinedError::TooLarge { limit: 999 }), "{e}");
        assert_eq!(fs::read(r.join("f")).unwrap(), b"old");
        assert_eq!(fs::read_dir(&r).unwrap().count(), 1, "temporary file left behind");
        // Exactly at the limit is fine.
        assert_eq!(write_atomic(&root, "f", &[7u8; 999][..], 999, 0o644, OWNER).unwrap(), 999);
        // A failing reader leaves the old content too.
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("boom"))
            }
        }
        assert!(matches!(write_atomic(&root, "f", Failing, 10, 0o644, OWNER), Err(ConfinedError::Read(_))));
        assert_eq!(fs::read(r.join("f")).unwrap().len(), 999);
        assert_eq!(fs::read_dir(&r).unwrap().count(), 1);
    }

    #[test]
    fn write_over_a_directory_fails_cleanly() {
        let (d, root) = setup();
        let r = d.path().join("root");
        fs::create_dir(r.join("dir")).unwrap();
        assert!(write_atomic(&root, "dir", &b"x"[..], 10, 0o644, OWNER).is_err());
        assert!(r.join("dir").is_dir());
        assert_eq!(fs::read_dir(&r).unwrap().count(), 1);
    }

    #[test]
    fn list_does_not_follow_symlinks() {
        let (d, root) = setup();
        let r = d.path().join("root");
        fs::create_dir(r.join("dir")).unwrap();
        fs::write(r.join("dir/inner"), b"12345").unwrap();
        std::os::unix::fs::symlink("dir", r.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("hostetc")).unwrap();
        let entries = list(&root, "").unwrap();
        let kinds: Vec<_> = entries.iter().map(|e| (e.name.to_string_lossy().into_owned(), e.kind)).collect();
        assert_eq!(
            kinds,
            vec![("dir".into(), Kind::Dir), ("hostetc".into(), Kind::Symlink), ("link".into(), Kind::Symlink)]
        );
        let inner = list(&root, "dir").unwrap();
        assert_eq!(inner.len(), 1);
        assert_eq!((inner[0].kind, inner[0].size), (Kind::File, 5));
        // Listing through the symlinked /etc stays in the root, where there is no etc.
        assert_eq!(list(&root, "hostetc").unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(list(&root, "link").unwrap().len(), 1);
    }

    #[test]
    fn remove_files_links_and_empty_dirs() {
        let (d, root) = setup();
        let r = d.path().join("root");
        fs::create_dir_all(r.join("dir/sub")).unwrap();
        fs::write(r.join("f"), b"x").unwrap();
        std::os::unix::fs::symlink("../outside", r.join("link")).unwrap();
        remove(&root, "link").unwrap();
        assert!(d.path().join("outside").exists());
        remove(&root, "f").unwrap();
        assert_eq!(remove(&root, "dir").unwrap_err().kind(), io::ErrorKind::DirectoryNotEmpty);
        remove(&root, "dir/sub").unwrap();
        remove(&root, "dir").unwrap();
        assert_eq!(fs::read_dir(&r).unwrap().count(), 0);
        assert_eq!(remove(&root, "nothing").unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    /// Makes `levels` directories nested in `dir`, one fd at a time, with a file and a symlink to
    /// `outside` at every thousandth level.
    fn deep_tree(dir: &Path, levels: usize, outside: &Path) {
        let mut fd: OwnedFd = File::open(dir).unwrap().into();
        let d = CString::new("d").unwrap();
        for level in 0..levels {
            // SAFETY: a valid dir fd and a NUL-terminated single name.
            cvt(unsafe { libc::mkdirat(fd.as_raw_fd(), d.as_ptr(), 0o755) }).unwrap();
            if level % 1000 == 0 {
                let f = open_name(fd.as_fd(), b"f", libc::O_WRONLY | libc::O_CREAT, 0o644).unwrap();
                drop(f);
                let link = CString::new("link").unwrap();
                let target = CString::new(outside.as_os_str().as_bytes()).unwrap();
                // SAFETY: a valid dir fd and two NUL-terminated strings.
                cvt(unsafe { libc::symlinkat(target.as_ptr(), fd.as_raw_fd(), link.as_ptr()) }).unwrap();
            }
            fd = open_name(fd.as_fd(), b"d", libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
        }
    }

    #[test]
    fn remove_tree_removes_a_tree_deeper_than_any_stack_without_following_symlinks() {
        let outer = tempfile::tempdir().unwrap();
        let outside = outer.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"x").unwrap();
        let tree = outer.path().join("tree");
        fs::create_dir(&tree).unwrap();
        // Deeper than `std::fs::remove_dir_all` survives on an 8 MiB stack (it overflows at about
        // 15,000 levels), and than the fds a recursive walk could hold.
        deep_tree(&tree, 20_000, &outside);
        fs::create_dir_all(tree.join("wide/a/b")).unwrap();
        fs::write(tree.join("wide/a/b/file"), b"y").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("top-link")).unwrap();
        let t = tree.clone();
        // The smallest stack the server runs anything on is far more than this one.
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || remove_tree(&t).unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert!(!tree.exists());
        assert_eq!(fs::read(outside.join("keep")).unwrap(), b"x", "a symlink's target is never touched");
        // A missing tree is already removed.
        remove_tree(&tree).unwrap();
    }

    #[test]
    fn walk_reports_symlinks_without_following_them() {
        let (d, root) = setup();
        let r = d.path().join("root");
        fs::create_dir_all(r.join("a/b")).unwrap();
        fs::write(r.join("a/b/f"), b"data").unwrap();
        fs::write(r.join("top"), b"t").unwrap();
        std::os::unix::fs::symlink("/", r.join("a/slash")).unwrap();
        std::os::unix::fs::symlink("..", r.join("a/up")).unwrap();
        let mut seen = Vec::new();
        walk(&root, |path, entry, node| -> Result<(), ConfinedError> {
            let what = match node {
                Node::Dir => "dir".to_owned(),
                Node::File(mut f) => {
                    let mut s = String::new();
                    f.read_to_string(&mut s).unwrap();
                    assert_eq!(entry.size, s.len() as u64);
                    format!("file {s}")
                }
                Node::Symlink(t) => format!("link {}", t.display()),
                Node::Other => "other".to_owned(),
            };
            seen.push(format!("{} {what}", path.display()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec!["a dir", "a/b dir", "a/b/f file data", "a/slash link /", "a/up link ..", "top file t"]);
    }
}
