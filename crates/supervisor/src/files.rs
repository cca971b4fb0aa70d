//! Files: read, write and list inside the sandbox, for the files API. Paths are resolved by the
//! kernel inside the sandbox's own root: `..` and symlinks end at the sandbox's `/`, never
//! outside.
//!
//! Every operation runs on the request's own thread, and with a `user` that thread takes on the
//! user's credentials (supplementary groups, then gid, then uid) through the raw system calls,
//! which change the calling thread only (glibc's `setuid` and friends change every thread of the
//! process). The kernel then decides every permission, and what the user creates is the user's.
//! The thread ends with the request, so no other request ever runs with those credentials.
//!
//! Nothing here blocks on a special file: a path is first opened with `O_PATH` (which opens no
//! device and waits for no fifo writer) and refused when it is not a regular file; only then is
//! it opened for reading, with `O_NONBLOCK`, and checked again to be the same file.

use std::ffi::{CString, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::{self, kind, lossless_name, DirEntry, Done, Failure, FailureKind, FileType, Request, CHUNK};
use crate::users::{self, Credentials};

/// A path inside the sandbox as the kernel takes it (bytes, not necessarily UTF-8), shown in
/// messages with invalid sequences replaced.
#[derive(Clone, Copy)]
pub(crate) struct FilePath<'a>(pub(crate) &'a Path);

impl fmt::Display for FilePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

impl fmt::Debug for FilePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.to_string_lossy())
    }
}

/// Mode of a new file when the request gives none.
const NEW_FILE_MODE: u32 = 0o644;
/// Mode bits a write may set: permissions and the sticky bit (never setuid or setgid).
const SETTABLE: u32 = 0o1777;

/// Serves one file request (`ReadFile`, `WriteFile`, `ListDir`) on `conn` and answers with its
/// final frame. Other requests are not file requests and are refused.
pub(crate) fn serve(conn: &mut UnixStream, request: Request) -> io::Result<()> {
    let result = match request {
        Request::ReadFile { path, max_bytes, user } => {
            let path = PathBuf::from(OsString::from_vec(path));
            become_user(user.as_deref()).and_then(|()| read_file(conn, FilePath(&path), max_bytes))
        }
        Request::WriteFile { path, max_bytes, mode, user } => {
            let path = PathBuf::from(OsString::from_vec(path));
            become_user(user.as_deref()).and_then(|()| write_file(conn, FilePath(&path), max_bytes, mode))
        }
        Request::ListDir { path, after, limit, user } => {
            let path = PathBuf::from(OsString::from_vec(path));
            become_user(user.as_deref()).and_then(|()| list_dir(conn, FilePath(&path), after.as_deref(), limit))
        }
        _ => Err(Failure::new(FailureKind::InvalidRequest, "not a file request")),
    };
    match result {
        Ok(bytes) => protocol::write_json(conn, kind::DONE, &Done { bytes }),
        Err(f) => protocol::write_json(conn, kind::FAILURE, &f),
    }
}

/// Gives the calling thread the credentials of `user` (nothing for `None`). An unknown user is
/// an `InvalidRequest` naming it.
fn become_user(user: Option<&str>) -> Result<(), Failure> {
    let Some(spec) = user else { return Ok(()) };
    let creds = users::resolve(spec).map_err(|e| Failure::new(FailureKind::InvalidRequest, e.to_string()))?;
    set_thread_credentials(&creds)
        .map_err(|e| Failure::new(FailureKind::Io, format!("cannot act as user {spec:?}: {e}")))
}

/// Sets the supplementary groups, gid and uid of the calling thread only.
pub(crate) fn set_thread_credentials(creds: &Credentials) -> io::Result<()> {
    let groups: Vec<libc::gid_t> = creds.groups.clone();
    // SAFETY: raw system calls with plain integers and a pointer to `groups`, which outlives the
    // call; the kernel only reads it. Each changes the credentials of the calling thread only.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above, plain integers.
    let rc = unsafe { libc::syscall(libc::SYS_setresgid, creds.gid, creds.gid, creds.gid) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above, plain integers.
    let rc = unsafe { libc::syscall(libc::SYS_setresuid, creds.uid, creds.uid, creds.uid) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The failure for an error of the kernel on `path`, with a message that names the path.
fn failure(path: impl fmt::Display, e: &io::Error) -> Failure {
    let (kind, what) = match e.raw_os_error() {
        Some(libc::ENOENT) => (FailureKind::NotFound, "no such file or directory"),
        Some(libc::EACCES) | Some(libc::EPERM) => (FailureKind::PermissionDenied, "permission denied"),
        Some(libc::EISDIR) => (FailureKind::IsADirectory, "is a directory"),
        Some(libc::ENOTDIR) => (FailureKind::InvalidRequest, "a component of the path is not a directory"),
        Some(libc::ELOOP) => (FailureKind::InvalidRequest, "too many levels of symbolic links"),
        Some(libc::ENAMETOOLONG) => (FailureKind::InvalidRequest, "name too long"),
        Some(libc::EROFS) => (FailureKind::ReadOnly, "read-only file system"),
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => (FailureKind::NoSpace, "no space left on device"),
        Some(libc::ENXIO) => (FailureKind::NotAFile, "not a regular file"),
        _ => return Failure::new(FailureKind::Io, format!("{path}: {e}")),
    };
    Failure::new(kind, format!("{path}: {what}"))
}

fn type_name(mode: u32) -> &'static str {
    FileType::of_mode(mode).map_or("special file", FileType::as_str)
}

/// The refusal of something that is not a regular file, by what it is.
fn not_regular(path: impl fmt::Display, mode: u32) -> Failure {
    if mode & libc::S_IFMT == libc::S_IFDIR {
        return Failure::new(FailureKind::IsADirectory, format!("{path}: is a directory (list it with list=true)"));
    }
    Failure::new(FailureKind::NotAFile, format!("{path}: is a {}, not a regular file", type_name(mode)))
}

fn absolute(path: FilePath<'_>) -> Result<CString, Failure> {
    let bytes = path.0.as_os_str().as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(Failure::new(FailureKind::InvalidRequest, format!("path: {path:?} must be absolute")));
    }
    CString::new(bytes).map_err(|_| Failure::new(FailureKind::InvalidRequest, "path: contains NUL"))
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data; all zeroes is a valid value for the call to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a pointer to a local stat.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn open_raw(path: &CString, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated path and plain flags; a non-negative result is a new fd we own.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the regular file at `path` for reading without ever blocking or opening a device: an
/// `O_PATH` descriptor is checked first; the file opened for reading (non-blocking) must then be
/// the same regular file.
pub(crate) fn open_regular(path: FilePath<'_>) -> Result<(fs::File, u64), Failure> {
    let c = absolute(path)?;
    let probe = open_raw(&c, libc::O_PATH).map_err(|e| failure(path, &e))?;
    let first = fstat(&probe).map_err(|e| failure(path, &e))?;
    if first.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(not_regular(path, first.st_mode));
    }
    let fd = open_raw(&c, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY).map_err(|e| failure(path, &e))?;
    let st = fstat(&fd).map_err(|e| failure(path, &e))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(not_regular(path, st.st_mode));
    }
    if (st.st_dev, st.st_ino) != (first.st_dev, first.st_ino) {
        return Err(Failure::new(FailureKind::Io, format!("{path}: changed while it was opened")));
    }
    // SAFETY: fcntl on a valid fd with plain integers; F_SETFL 0 clears O_NONBLOCK.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, 0) } != 0 {
        return Err(failure(path, &io::Error::last_os_error()));
    }
    Ok((fs::File::from(fd), u64::try_from(st.st_size).unwrap_or(0)))
}

pub(crate) fn read_file(conn: &mut UnixStream, path: FilePath<'_>, max_bytes: u64) -> Result<u64, Failure> {
    let (mut file, len) = open_regular(path)?;
    if len > max_bytes {
        return Err(Failure::new(
            FailureKind::TooLarge,
            format!("{path}: {len} bytes is over the {max_bytes} byte limit"),
        ));
    }
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failure(path, &e)),
        };
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        if total > max_bytes {
            return Err(Failure::new(FailureKind::TooLarge, format!("{path}: grew past the {max_bytes} byte limit")));
        }
        protocol::write_frame(conn, kind::FILE_DATA, &buf[..n]).map_err(|e| Failure::from_io("connection", &e))?;
    }
}

/// Checks a requested mode: permission bits and the sticky bit only.
pub(crate) fn check_mode(mode: u32) -> Result<u32, Failure> {
    if mode & !SETTABLE != 0 {
        return Err(Failure::new(
            FailureKind::InvalidRequest,
            format!("mode: {mode:o} is refused (permission bits and the sticky bit only; no setuid or setgid)"),
        ));
    }
    Ok(mode)
}

/// Gives the unnamed (`O_TMPFILE`) `file` the name `tmp`, through its `/proc/self/fd` entry
/// (linking the descriptor itself with `AT_EMPTY_PATH` takes a capability the sandbox lacks).
fn link_unnamed(file: &fs::File, tmp: &Path) -> io::Result<()> {
    let proc = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let to =
        std::ffi::CString::new(tmp.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: two NUL-terminated paths that live for the call; AT_FDCWD and the flag are plain
    // integers.
    let rc =
        unsafe { libc::linkat(libc::AT_FDCWD, proc.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A temporary name beside the target that no other write of this process uses.
fn temp_path(dir: &Path, name: &std::ffi::OsStr) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Not guessable by the sandbox's processes (the supervisor's pid is always 1): a name one
    // of them made first would only make this write fail, never be taken for this write's own.
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".bulkhead-{n}-{nanos:08x}"));
    dir.join(tmp)
}

/// The file a write replaces: the target itself, or what a symlink at the target leads to (so
/// that writing through a link keeps the link). Refuses directories and special files.
fn existing_target(path: FilePath<'_>) -> Result<(PathBuf, Option<fs::Metadata>), Failure> {
    let target = path.0.to_owned();
    match fs::metadata(&target) {
        Ok(meta) if meta.is_file() => {
            let is_link = fs::symlink_metadata(&target).map(|m| m.file_type().is_symlink()).unwrap_or(false);
            let real = if is_link { fs::canonicalize(&target).map_err(|e| failure(path, &e))? } else { target };
            Ok((real, Some(meta)))
        }
        Ok(meta) => Err(not_regular(path, meta.mode())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((target, None)),
        Err(e) => Err(failure(path, &e)),
    }
}

pub(crate) fn write_file(
    conn: &mut UnixStream,
    path: FilePath<'_>,
    max_bytes: u64,
    mode: Option<u32>,
) -> Result<u64, Failure> {
    absolute(path)?;
    let mode = mode.map(check_mode).transpose()?;
    let Some(name) = path.0.file_name().map(ToOwned::to_owned) else {
        return Err(Failure::new(FailureKind::InvalidRequest, format!("path: {path:?} names no file")));
    };
    let dir = path.0.parent().unwrap_or(Path::new("/")).to_owned();
    fs::DirBuilder::new().recursive(true).mode(0o755).create(&dir).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => Failure::new(
            FailureKind::InvalidRequest,
            format!("{}: a component of the path is not a directory", dir.display()),
        ),
        _ => failure(dir.display(), &e),
    })?;
    let (target, existing) = existing_target(path)?;
    if existing.is_some() {
        // The write replaces the file by a rename, which the directory's permissions allow; the
        // acting user must also be one who may write the file itself, as `open` would demand.
        // Opening it for writing (no truncation) changes nothing; only a refusal counts (a
        // running program, `ETXTBSY`, is still replaced).
        if let Err(e) = fs::OpenOptions::new().write(true).open(&target) {
            if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) {
                return Err(failure(path, &e));
            }
        }
    }
    let dir = target.parent().unwrap_or(Path::new("/")).to_owned();
    let name = target.file_name().map(ToOwned::to_owned).unwrap_or(name);
    let tmp = temp_path(&dir, &name);
    // Unnamed until complete (`O_TMPFILE`): a supervisor that dies mid-write (its sandbox
    // killed) leaves nothing in the tenant's tree, which may be a filesystem that outlives the
    // sandbox. A named temporary file where the filesystem has no `O_TMPFILE`.
    let named = std::cell::Cell::new(false);
    let (mut file, unnamed) =
        match fs::OpenOptions::new().write(true).mode(0o600).custom_flags(libc::O_TMPFILE).open(&dir) {
            Ok(f) => (f, true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| failure(path, &e))?;
                named.set(true);
                (f, false)
            }
            Err(e) => return Err(failure(path, &e)),
        };
    let result = (|| {
        let mut total = 0u64;
        loop {
            match protocol::read_frame(conn) {
                Ok(Some((kind::DATA, data))) => {
                    total += data.len() as u64;
                    if total > max_bytes {
                        return Err(Failure::new(
                            FailureKind::TooLarge,
                            format!("{path}: over the {max_bytes} byte limit"),
                        ));
                    }
                    file.write_all(&data).map_err(|e| failure(path, &e))?;
                }
                Ok(Some((kind::DATA_END, _))) => break,
                Ok(Some(_)) => return Err(Failure::new(FailureKind::InvalidRequest, "unexpected frame")),
                Ok(None) | Err(_) => {
                    return Err(Failure::new(FailureKind::Io, "connection closed before the end of the data"))
                }
            }
        }
        let bits = mode.unwrap_or_else(|| existing.as_ref().map_or(NEW_FILE_MODE, |m| m.mode() & SETTABLE));
        if let Some(m) = &existing {
            // The replaced file's owner stays where the acting user may give it (root always);
            // a user's own new content is otherwise the user's.
            let _ = std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()));
        }
        // After the chown, which may clear mode bits.
        file.set_permissions(fs::Permissions::from_mode(bits)).map_err(|e| failure(path, &e))?;
        file.sync_all().map_err(|e| failure(path, &e))?;
        if unnamed {
            // A new file gets its name at once; one that replaces a file a temporary name first.
            match link_unnamed(&file, &target) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    link_unnamed(&file, &tmp).map_err(|e| failure(path, &e))?;
                    named.set(true);
                    fs::rename(&tmp, &target).map_err(|e| failure(path, &e))?;
                }
                Err(e) => return Err(failure(path, &e)),
            }
        } else {
            fs::rename(&tmp, &target).map_err(|e| failure(path, &e))?;
        }
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(total)
    })();
    // Only a name this write made is removed: one a process of the sandbox made is its own.
    if result.is_err() && named.get() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The entry `name` of the directory `dir`, as `lstat` sees it.
fn entry(dir: &Path, name: &[u8]) -> io::Result<DirEntry> {
    let full = dir.join(std::ffi::OsStr::from_bytes(name));
    let meta = fs::symlink_metadata(&full)?;
    let file_type = FileType::of_mode(meta.mode()).unwrap_or(FileType::File);
    let (target, target_bytes) = if file_type == FileType::Symlink {
        match fs::read_link(&full) {
            Ok(t) => {
                let (t, b) = lossless_name(t.as_os_str().as_bytes());
                (Some(t), b)
            }
            Err(_) => (None, None),
        }
    } else {
        (None, None)
    };
    let (name, name_bytes) = lossless_name(name);
    Ok(DirEntry {
        name,
        name_bytes,
        file_type,
        size: meta.size(),
        mode: meta.mode() & 0o7777,
        mtime_ms: meta.mtime().saturating_mul(1000).saturating_add(meta.mtime_nsec() / 1_000_000),
        target,
        target_bytes,
    })
}

/// The `limit` smallest names of `dir` after `after`, sorted: the directory is read once and
/// only `limit` names are held, however many it has.
fn page_of_names(dir: &Path, after: Option<&[u8]>, limit: usize) -> io::Result<Vec<Vec<u8>>> {
    let mut heap = std::collections::BinaryHeap::with_capacity(limit + 1);
    for e in fs::read_dir(dir)? {
        let name = e?.file_name().into_vec();
        if after.is_some_and(|a| name.as_slice() <= a) {
            continue;
        }
        if heap.len() < limit {
            heap.push(name);
        } else if heap.peek().is_some_and(|largest: &Vec<u8>| name < *largest) {
            heap.pop();
            heap.push(name);
        }
    }
    Ok(heap.into_sorted_vec())
}

pub(crate) fn list_dir(
    conn: &mut UnixStream,
    path: FilePath<'_>,
    after: Option<&[u8]>,
    limit: u32,
) -> Result<u64, Failure> {
    absolute(path)?;
    let dir = path.0;
    let meta = fs::metadata(dir).map_err(|e| failure(path, &e))?;
    if !meta.is_dir() {
        return Err(Failure::new(
            FailureKind::InvalidRequest,
            format!("{path}: is a {}, not a directory", type_name(meta.mode())),
        ));
    }
    let limit = limit.clamp(1, protocol::MAX_LIST + 1) as usize;
    let names = page_of_names(dir, after, limit).map_err(|e| failure(path, &e))?;
    let mut sent = 0u64;
    for name in names {
        let e = match entry(dir, &name) {
            Ok(e) => e,
            // Gone since it was listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(failure(format!("{path}/{}", String::from_utf8_lossy(&name)), &e)),
        };
        protocol::write_json(conn, kind::DIR_ENTRY, &e).map_err(|e| Failure::from_io("connection", &e))?;
        sent += 1;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;

    use crate::protocol::{
        kind, read_frame, write_frame, write_json, DirEntry, Failure, FailureKind, FileType, Request,
    };
    use crate::supervisor::testing::start;

    fn ask(sock: &std::path::Path, request: &Request) -> UnixStream {
        let mut c = UnixStream::connect(sock).unwrap();
        write_json(&mut c, kind::REQUEST, request).unwrap();
        c
    }

    fn write(sock: &std::path::Path, path: &str, data: &[u8], mode: Option<u32>) -> (u8, Vec<u8>) {
        let mut c = ask(sock, &Request::WriteFile { path: path.into(), max_bytes: 1 << 20, mode, user: None });
        // A request refused before its data (a setuid mode) may close the connection while the
        // data is on its way: the answer is what counts.
        let _ = write_frame(&mut c, kind::DATA, data).and_then(|()| write_frame(&mut c, kind::DATA_END, &[]));
        read_frame(&mut c).unwrap().unwrap()
    }

    fn read_failure(sock: &std::path::Path, path: &str) -> Failure {
        let mut c = ask(sock, &Request::ReadFile { path: path.into(), max_bytes: 1 << 20, user: None });
        let (k, p) = read_frame(&mut c).unwrap().unwrap();
        assert_eq!(k, kind::FAILURE, "{path}");
        serde_json::from_slice(&p).unwrap()
    }

    #[test]
    fn a_write_in_progress_has_no_name_and_a_cut_one_leaves_nothing() {
        let (dir, sock) = start();
        let path = dir.path().join("f.txt").display().to_string();
        let names = || -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.retain(|n| !n.ends_with(".sock"));
            v
        };
        let before = names();
        let mut c =
            ask(&sock, &Request::WriteFile { path: path.clone().into(), max_bytes: 1 << 20, mode: None, user: None });
        write_frame(&mut c, kind::DATA, b"half").unwrap();
        // The supervisor holds the data; the file has no name yet.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(names(), before, "nothing named mid-write");
        // The connection cut (as by a dead server or supervisor): nothing is left.
        drop(c);
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(names(), before, "nothing left of a cut write");
        assert_eq!(write(&sock, &path, b"whole", None).0, kind::DONE);
        assert_eq!(fs::read(&path).unwrap(), b"whole");
    }

    #[test]
    fn files_round_trip_and_limits_hold() {
        let (dir, sock) = start();
        let path = dir.path().join("sub/dir/f.txt").display().to_string();
        assert_eq!(write(&sock, &path, b"content", Some(0o755)).0, kind::DONE);
        assert_eq!(fs::read(&path).unwrap(), b"content");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o755);

        let (k, p) = write(&sock, &path, b"x", Some(0o4755));
        assert_eq!(k, kind::FAILURE);
        assert_eq!(serde_json::from_slice::<Failure>(&p).unwrap().kind, FailureKind::InvalidRequest);

        let mut c = ask(&sock, &Request::ReadFile { path: path.clone().into(), max_bytes: 3, user: None });
        let (k, p) = read_frame(&mut c).unwrap().unwrap();
        assert_eq!(k, kind::FAILURE);
        assert_eq!(serde_json::from_slice::<Failure>(&p).unwrap().kind, FailureKind::TooLarge);

        let mut c =
            ask(&sock, &Request::WriteFile { path: path.clone().into(), max_bytes: 4, mode: Some(0o644), user: None });
        write_frame(&mut c, kind::DATA, b"too long").unwrap();
        let (k, _) = read_frame(&mut c).unwrap().unwrap();
        assert_eq!(k, kind::FAILURE);
        assert_eq!(fs::read(&path).unwrap(), b"content", "a failed write leaves the old content");
    }

    #[test]
    fn an_overwrite_keeps_the_mode_unless_one_is_given() {
        let (dir, sock) = start();
        let path = dir.path().join("run.sh");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o750)).unwrap();
        let p = path.display().to_string();
        assert_eq!(write(&sock, &p, b"#!/bin/sh\n", None).0, kind::DONE);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o750);
        assert_eq!(write(&sock, &p, b"#!/bin/sh\n", Some(0o1700)).0, kind::DONE);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o1700);
        let fresh = dir.path().join("new").display().to_string();
        assert_eq!(write(&sock, &fresh, b"n", None).0, kind::DONE);
        assert_eq!(fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777, 0o644);
        // Through a symlink: the link stays, its target gets the content.
        std::os::unix::fs::symlink("run.sh", dir.path().join("link")).unwrap();
        assert_eq!(write(&sock, &dir.path().join("link").display().to_string(), b"via", None).0, kind::DONE);
        assert!(fs::symlink_metadata(dir.path().join("link")).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&path).unwrap(), b"via");
    }

    #[test]
    fn special_files_and_directories_are_refused_at_once() {
        let (dir, sock) = start();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.display().to_string()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let socket = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        // No writer ever opens the fifo: a blocking open would hang this test.
        for (path, kind) in [
            (fifo.display().to_string(), FailureKind::NotAFile),
            (socket.display().to_string(), FailureKind::NotAFile),
            ("/dev/null".to_owned(), FailureKind::NotAFile),
            (dir.path().display().to_string(), FailureKind::IsADirectory),
            (dir.path().join("missing").display().to_string(), FailureKind::NotFound),
        ] {
            let f = read_failure(&sock, &path);
            assert_eq!(f.kind, kind, "{path}: {}", f.message);
            assert!(f.message.contains(&path), "{}", f.message);
        }
        for (path, kind) in [
            (fifo.display().to_string(), FailureKind::NotAFile),
            (dir.path().display().to_string() + "/", FailureKind::IsADirectory),
            (dir.path().display().to_string(), FailureKind::IsADirectory),
        ] {
            let (k, p) = write(&sock, &path, b"x", None);
            assert_eq!(k, kind::FAILURE);
            let f: Failure = serde_json::from_slice(&p).unwrap();
            assert_eq!(f.kind, kind, "{path}: {}", f.message);
        }
        // The socket is still a socket.
        assert!(std::os::unix::fs::FileTypeExt::is_socket(&fs::symlink_metadata(&socket).unwrap().file_type()));
    }

    #[test]
    fn listings_are_sorted_paged_and_lossless() {
        use std::os::unix::ffi::OsStrExt;
        let (dir, sock) = start();
        let d = dir.path().join("d");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("b"), b"bb").unwrap();
        fs::set_permissions(d.join("b"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::create_dir(d.join("a")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("c")).unwrap();
        fs::write(d.join(std::ffi::OsStr::from_bytes(b"z\xff")), b"").unwrap();
        let list = |after: Option<Vec<u8>>, limit| {
            let path = d.display().to_string();
            let mut c = ask(&sock, &Request::ListDir { path: path.into(), after, limit, user: None });
            let mut out = Vec::new();
            loop {
                let (k, p) = read_frame(&mut c).unwrap().unwrap();
                match k {
                    kind::DIR_ENTRY => out.push(serde_json::from_slice::<DirEntry>(&p).unwrap()),
                    kind::DONE => return out,
                    other => panic!("frame {other}: {}", String::from_utf8_lossy(&p)),
                }
            }
        };
        let all = list(None, 10);
        let names: Vec<&[u8]> = all.iter().map(|e| e.name_bytes()).collect();
        assert_eq!(names, [&b"a"[..], b"b", b"c", b"z\xff"]);
        assert_eq!(
            (all[0].file_type, all[1].file_type, all[2].file_type),
            (FileType::Directory, FileType::File, FileType::Symlink)
        );
        assert_eq!((all[1].size, all[1].mode), (2, 0o600));
        assert!(all[1].mtime_ms > 1_600_000_000_000);
        assert_eq!(all[2].target.as_deref(), Some("/etc/passwd"));
        assert_eq!(all[3].name_bytes.as_deref(), Some(&b"z\xff"[..]));
        let second = list(Some(b"a".to_vec()), 2);
        assert_eq!(second.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["b", "c"]);
    }

    #[test]
    fn a_user_meets_the_kernels_permissions_and_owns_what_it_creates() {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            eprintln!("NOT RUN: changing credentials needs root");
            return;
        }
        let (dir, sock) = start();
        let closed = dir.path().join("closed");
        fs::create_dir(&closed).unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let as_nobody = |path: String| {
            let user = Some("65534:65534".to_owned());
            let mut c = ask(&sock, &Request::WriteFile { path: path.into(), max_bytes: 10, mode: None, user });
            // A write refused before its data may close the connection while the data is on
            // its way: the answer is what counts.
            let _ = write_frame(&mut c, kind::DATA, b"n").and_then(|()| write_frame(&mut c, kind::DATA_END, &[]));
            read_frame(&mut c).unwrap().unwrap()
        };
        let (k, p) = as_nobody(closed.join("f").display().to_string());
        assert_eq!(k, kind::FAILURE);
        assert_eq!(serde_json::from_slice::<Failure>(&p).unwrap().kind, FailureKind::PermissionDenied);
        let (k, _) = as_nobody(open.join("f").display().to_string());
        assert_eq!(k, kind::DONE);
        let meta = fs::metadata(open.join("f")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        // A file of its own that it made read-only is not replaced, though the directory would
        // let it rename one over it; root's file in the open directory neither.
        fs::set_permissions(open.join("f"), fs::Permissions::from_mode(0o444)).unwrap();
        fs::write(open.join("roots"), b"r").unwrap();
        for name in ["f", "roots"] {
            let (k, p) = as_nobody(open.join(name).display().to_string());
            assert_eq!(k, kind::FAILURE, "{name}");
            assert_eq!(serde_json::from_slice::<Failure>(&p).unwrap().kind, FailureKind::PermissionDenied, "{name}");
        }
        assert_eq!(fs::read(open.join("f")).unwrap(), b"n");
        assert_eq!(fs::read(open.join("roots")).unwrap(), b"r");
        // Given write permission again, it replaces its file.
        fs::set_permissions(open.join("f"), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(as_nobody(open.join("f").display().to_string()).0, kind::DONE);
        // The supervisor itself is still root: the next request without a user may write anywhere.
        assert_eq!(write(&sock, &closed.join("g").display().to_string(), b"r", None).0, kind::DONE);
        assert_eq!(fs::metadata(closed.join("g")).unwrap().uid(), 0);
        let mut c = ask(
            &sock,
            &Request::ReadFile { path: "/etc/hostname".into(), max_bytes: 10, user: Some("no-such-user".into()) },
        );
        let (k, p) = read_frame(&mut c).unwrap().unwrap();
        assert_eq!(k, kind::FAILURE);
        let f: Failure = serde_json::from_slice(&p).unwrap();
        assert_eq!(f.kind, FailureKind::InvalidRequest);
        assert!(f.message.contains("no-such-user"), "{}", f.message);
    }
}
