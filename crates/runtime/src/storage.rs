//! Filesystems: one sparse ext4 image per filesystem, loop-mounted on the host, so the kernel
//! enforces each filesystem's size (a write past it fails with `ENOSPC`) and one tenant's data
//! never shares a filesystem with another's.
//!
//! Images live in `<data-dir>/filesystems/images/<id>.img` (the data dir is 0700). They are
//! mounted at `<state-dir>/filesystems/<id>`: the state dir is traversable by the sandboxes' mapped
//! ids (the OCI runtime bind-mounts from inside the user namespace), and the root directory of
//! each filesystem is 0700 and owned by its namespace's mapped root, so no other host user and
//! no other namespace's ids can enter it.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use tokio::process::Command;

use crate::archive;
use crate::confined::{self, Entry, Owner, Root};
use crate::files::{self, Download, FileError, Preconditions, StagedArchive, WriteOptions, Written};
use crate::{IdRange, Result, RuntimeError};

/// What the server needs from the host side of filesystems: their lifecycle and the files and
/// archive APIs on their data. [`Storage`] implements it with loop-mounted ext4 images; the
/// `fake` feature adds an in-memory one.
///
/// The file methods block (they walk and write the filesystem): call them from a blocking
/// thread. Paths are relative ([`files::relative`]); `owner` is the namespace's id range.
#[async_trait]
pub trait FilesystemStorage: Send + Sync + 'static {
    /// Creates and mounts a filesystem of `size_bytes`, its root owned by `owner`'s root.
    async fn create(&self, id: &str, size_bytes: u64, owner: IdRange) -> Result<()>;
    /// Mounts the filesystem when it is not mounted; removes staging left by an interrupted
    /// upload. `Ok(false)` when it has no image on this host.
    async fn mount(&self, id: &str) -> Result<bool>;
    /// Grows a filesystem to `size_bytes`; `in_use` when a sandbox holds it (a kernel that cannot
    /// grow it online then answers `Busy`).
    async fn grow(&self, id: &str, size_bytes: u64, in_use: bool) -> Result<()>;
    /// Destroys a filesystem and its data. Idempotent.
    async fn delete(&self, id: &str) -> Result<()>;
    /// Space used and total.
    fn usage(&self, id: &str) -> Result<Usage>;
    /// Where the filesystem's root is on the host (its data dir and staging are below it).
    fn mountpoint(&self, id: &str) -> PathBuf;
    /// The host directory a sandbox mounts at `/workspace`.
    fn data_dir(&self, id: &str) -> PathBuf;
    /// Filesystem ids with an image in this server's data dir. A mount point without one is not
    /// this server's to judge: another server may share the state dir.
    fn ids(&self) -> Vec<String>;
    /// The filesystem's data dir, mounted: when its mount is gone (unmounted underneath, or the
    /// state dir emptied by a reboot), it is mounted again first, one repair at a time per
    /// filesystem. `Unavailable` when it cannot be (retryable). One that turned read-only after
    /// a disk error is checked and mounted again once no sandbox holds it; until then it stays
    /// mounted read-only: reads work and changes answer `Unavailable`. Call it before every
    /// operation on the filesystem's files and before a sandbox mounts it.
    async fn ensure_mounted(&self, id: &str) -> Result<PathBuf> {
        Ok(self.data_dir(id))
    }

    /// A page of the directory at `rel`: at most `limit` entries whose names sort (by their
    /// bytes) after `after`, and whether more follow.
    fn list(&self, id: &str, rel: &Path, after: Option<&[u8]>, limit: usize) -> Result<(Vec<Entry>, bool), FileError>;
    /// The file at `rel` for a download, of any size, streamed; `None` when there is none. A
    /// file of at most `hash_max` bytes is hashed first and carries its ETag; a larger one has
    /// none.
    fn open(&self, id: &str, rel: &Path, hash_max: u64) -> Result<Option<Download>, FileError>;
    /// Checks `pre` against the file at `rel` now (hashing at most `hash_max` bytes).
    fn check(&self, id: &str, rel: &Path, pre: &Preconditions, hash_max: u64) -> Result<(), FileError>;
    /// Writes `data` to `rel` atomically (parents created): `serialize` runs once the content is
    /// written, `pre` is checked again while what it returned is held, then the file is replaced.
    fn write(
        &self,
        id: &str,
        rel: &Path,
        data: &mut dyn Read,
        options: WriteOptions,
        pre: &Preconditions,
        serialize: files::Serialize,
    ) -> Result<Written, FileError>;
    /// Removes a file or an empty directory, when `pre` holds.
    fn remove(&self, id: &str, rel: &Path, pre: &Preconditions, hash_max: u64) -> Result<(), FileError>;
    /// The whole tree as a plain tar archive, produced as it is read.
    fn archive(&self, id: &str) -> Result<Box<dyn Read + Send>, FileError>;
    /// Extracts an archive (plain, gzip or zstd) beside the data, bounded by `limits`, owned by
    /// `owner`'s root; nothing changes until the result is committed.
    fn stage_archive(
        &self,
        id: &str,
        data: &mut dyn Read,
        owner: IdRange,
        limits: archive::Limits,
    ) -> Result<Box<dyn StagedArchive>, FileError>;
}

/// Smallest filesystem: room for ext4's metadata and journal.
pub const MIN_SIZE: u64 = 16 << 20;
/// Sizes are whole 4 KiB blocks.
pub const BLOCK: u64 = 4096;

/// The host side of filesystems.
#[derive(Debug, Clone)]
pub struct Storage {
    images: PathBuf,
    mounts: PathBuf,
    /// One lock per filesystem, held while its mount changes (a mount, a repair, an offline
    /// grow, a delete), so a repair never mounts an image that a grow is checking.
    locks: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>>,
}

/// Space of one filesystem, from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub used_bytes: u64,
    pub total_bytes: u64,
}

async fn run(program: &str, args: &[&str], what: &str) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(RuntimeError::io(format!("{what}: run {program}")))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(RuntimeError::Io {
        what: format!("{what}: {program} {}", out.status),
        source: std::io::Error::other(stderr.trim().to_owned()),
    })
}

/// fsync of a directory, so that entries created or renamed in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(RuntimeError::io(format!("sync {}", dir.display())))
}

/// Flushes a freshly written tree to disk before it is swapped in: `syncfs` of the filesystem
/// holding it (one call instead of an fsync per file).
fn sync_tree_root(dir: &Path) -> Result<()> {
    let d = fs::File::open(dir).map_err(RuntimeError::io(format!("open {}", dir.display())))?;
    // SAFETY: syncfs on a valid open file descriptor.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)) } != 0 {
        return Err(RuntimeError::io("syncfs")(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn is_fs_id(id: &str) -> bool {
    id.strip_prefix("fs_")
        .is_some_and(|r| !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn check(id: &str) -> Result<()> {
    if is_fs_id(id) {
        Ok(())
    } else {
        Err(RuntimeError::Protocol(format!("{id:?} is not a filesystem id")))
    }
}

/// Whether something is mounted at `path`: its device differs from its parent's. One `stat`
/// each, cheap enough before every operation.
fn mounted_here(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(path), path.parent().map(fs::metadata)) {
        (Ok(m), Some(Ok(p))) => m.dev() != p.dev(),
        _ => false,
    }
}

/// Free bytes (for root) on the filesystem holding `path`; `None` when the kernel cannot tell.
fn free_bytes(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs is plain data; zeroed is a valid value for the call to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a valid pointer to a local statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bfree as u64 * st.f_frsize as u64)
}

/// Whether the filesystem holding `path` is mounted read-only: ext4 turns itself read-only
/// when its journal aborts (its image could not be written, the host's disk being full).
fn read_only(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statvfs is plain data; zeroed is a valid value for the call to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a valid pointer to a local statvfs.
    unsafe { libc::statvfs(c.as_ptr(), &mut st) == 0 && st.f_flag & libc::ST_RDONLY != 0 }
}

/// Below this, the host's disk under the images counts as full.
const HOST_FULL_BELOW: u64 = 4 << 20;

fn is_mounted(path: &Path) -> bool {
    let wanted = path.to_string_lossy();
    fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(wanted.as_ref())))
        .unwrap_or(false)
}

/// The message of a write refused while a filesystem is read-only after a disk error.
fn read_only_message(id: &str) -> String {
    format!(
        "filesystem {id} turned read-only after a disk error: reads still work; it is checked and made \
         writable again once no sandbox uses it; retry later"
    )
}

/// A loop device holding a filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LoopDevice {
    /// `/dev/loopN`.
    path: PathBuf,
    /// Its `major:minor`, as in `/proc/*/mountinfo`.
    majmin: String,
}

/// `major:minor` of a `dev_t` (glibc's encoding).
fn majmin(dev: u64) -> String {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    format!("{major}:{minor}")
}

/// The loop device of the filesystem mounted at `mnt`, when it is one backed by `image`.
fn loop_device(mnt: &Path, image: &Path) -> Option<LoopDevice> {
    use std::os::unix::fs::MetadataExt;
    let majmin = majmin(fs::metadata(mnt).ok()?.dev());
    let sys = fs::canonicalize(format!("/sys/dev/block/{majmin}")).ok()?;
    let name = sys.file_name()?.to_str()?.to_owned();
    if !name.starts_with("loop") {
        return None;
    }
    let backing = fs::read_to_string(sys.join("loop").join("backing_file")).ok()?;
    let image = fs::canonicalize(image).ok()?;
    (Path::new(backing.trim_end()) == image).then(|| LoopDevice { path: PathBuf::from(format!("/dev/{name}")), majmin })
}

/// One line of `/proc/<pid>/mountinfo`.
struct MountInfo<'a> {
    majmin: &'a str,
    root: &'a str,
    point: &'a str,
    /// The optional fields (`shared:N`, `master:N`, ...).
    tags: Vec<&'a str>,
}

fn parse_mountinfo(line: &str) -> Option<MountInfo<'_>> {
    let mut f = line.split(' ');
    let (_id, _parent) = (f.next()?, f.next()?);
    let (majmin, root, point, _opts) = (f.next()?, f.next()?, f.next()?, f.next()?);
    let tags = f.take_while(|t| *t != "-").collect();
    Some(MountInfo { majmin, root, point, tags })
}

/// Whether a mount of device `majmin` in a mount namespace's `mountinfo` holds the filesystem
/// beyond this server's own mount at `mnt` (`own` says whether that namespace is the server's,
/// `group` is the peer group of the server's mount when it is shared). The server's own mount,
/// and copies of it that mount propagation removes with it, do not count; anything else does
/// (a sandbox's bind mount of the data dir, a mount of the device elsewhere).
fn holds_elsewhere(mountinfo: &str, majmin: &str, mnt: &str, own: bool, group: Option<&str>) -> bool {
    mountinfo.lines().filter_map(parse_mountinfo).filter(|m| m.majmin == majmin).any(|m| {
        let server_mount = m.point == mnt && m.root == "/";
        if own {
            return !server_mount;
        }
        let propagated = group.is_some_and(|g| {
            m.tags.iter().any(|t| t.strip_prefix("shared:").or_else(|| t.strip_prefix("master:")) == Some(g))
        });
        !(server_mount && propagated)
    })
}

/// Whether the filesystem of device `majmin`, mounted at `mnt` by this server, is mounted
/// anywhere else: in this server's mount namespace or in any other one (each read once).
fn mounted_elsewhere(majmin: &str, mnt: &Path) -> bool {
    let mnt = mnt.to_string_lossy();
    let own_ns = fs::read_link("/proc/self/ns/mnt").ok();
    let own_info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let group = own_info
        .lines()
        .filter_map(parse_mountinfo)
        .find(|m| m.majmin == majmin && m.point == mnt)
        .and_then(|m| m.tags.iter().find_map(|t| t.strip_prefix("shared:")).map(str::to_owned));
    if holds_elsewhere(&own_info, majmin, &mnt, true, group.as_deref()) {
        return true;
    }
    let mut seen = std::collections::HashSet::new();
    seen.extend(own_ns.clone());
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let Ok(ns) = fs::read_link(entry.path().join("ns").join("mnt")) else { continue };
        if !seen.insert(ns) {
            continue;
        }
        // A process gone meanwhile has nothing mounted.
        let Ok(info) = fs::read_to_string(entry.path().join("mountinfo")) else { continue };
        if holds_elsewhere(&info, majmin, &mnt, false, group.as_deref()) {
            return true;
        }
    }
    false
}

impl Storage {
    /// Prepares the directories; checks that the tools are installed.
    pub fn new(data_dir: &Path, state_dir: &Path) -> Result<Storage> {
        for tool in ["mkfs.ext4", "resize2fs", "e2fsck", "mount", "umount", "losetup"] {
            let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().any(|d| Path::new(d).join(tool).exists());
            if !found {
                return Err(RuntimeError::Unavailable(format!(
                    "{tool} is missing: install e2fsprogs and mount (Debian/Ubuntu: apt-get install e2fsprogs mount)"
                )));
            }
        }
        let images = data_dir.join("filesystems").join("images");
        let mounts = state_dir.join("filesystems");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&images)
            .map_err(RuntimeError::io("create the image dir"))?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&mounts)
            .map_err(RuntimeError::io("create the mount dir"))?;
        Ok(Storage { images, mounts, locks: Default::default() })
    }

    /// The lock of filesystem `id`'s mount.
    fn lock_of(&self, id: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(id.to_owned()).or_default().clone()
    }

    /// Whether the disk under this server's images is full (checked after a write failed).
    pub fn host_full(&self) -> bool {
        free_bytes(&self.images).is_some_and(|free| free < HOST_FULL_BELOW)
    }

    /// `e` as the host's full disk when it is one: an image that cannot grow under a full data
    /// dir fails the filesystem's writes with `EIO` (or `ENOSPC`), not the tenant's quota.
    fn host_full_or(&self, e: FileError) -> FileError {
        match e {
            FileError::Io(m) | FileError::NoSpace(m) if self.host_full() => {
                tracing::error!(error = %m, "a filesystem write failed on a full host disk");
                FileError::HostFull(
                    "the server's disk is full: nothing was written; reads still work; retry once space is freed"
                        .into(),
                )
            }
            other => other,
        }
    }

    /// A `RuntimeError` of making or growing an image, as the host's full disk when it is one.
    fn host_full_runtime(&self, e: RuntimeError) -> RuntimeError {
        match e {
            RuntimeError::Io { what, source } if self.host_full() => {
                let source = std::io::Error::new(std::io::ErrorKind::StorageFull, source.to_string());
                RuntimeError::Io { what, source }
            }
            other => other,
        }
    }

    /// See [`FilesystemStorage::ensure_mounted`]. A filesystem that turned read-only (ext4's
    /// `errors=remount-ro`) is checked and mounted again only once nothing but this server's
    /// mount holds it; until then its read-only mount stays and serves reads, and writes are
    /// refused as `Unavailable` (see [`Storage::writable_root`]).
    pub async fn ensure_mounted(&self, id: &str) -> Result<PathBuf> {
        check(id)?;
        let mnt = self.mountpoint(id);
        if mounted_here(&mnt) && !read_only(&mnt) {
            return Ok(self.data_dir(id));
        }
        let lock = self.lock_of(id);
        let _repairing = lock.lock().await;
        // Another request may have repaired it while this one waited.
        if mounted_here(&mnt) && !read_only(&mnt) {
            return Ok(self.data_dir(id));
        }
        if mounted_here(&mnt) {
            return self.repair_read_only(id).await;
        }
        if !self.image(id).exists() {
            tracing::error!(filesystem = id, image = %self.image(id).display(), "the image of a filesystem is missing");
            return Err(RuntimeError::Unavailable(format!(
                "filesystem {id} cannot be mounted: its image is missing on the server's disk"
            )));
        }
        tracing::warn!(filesystem = id, "the filesystem's mount is gone; mounting it again");
        match self.mount_locked(id).await {
            Ok(()) => {
                self.sweep(id);
                Ok(self.data_dir(id))
            }
            Err(e) => {
                // A sandbox may still hold the filesystem, read-only after a disk error: the
                // kernel refuses a read-write mount of it ("already mounted"), not a read-only one.
                if self.mount_attached_read_only(id).await {
                    tracing::warn!(filesystem = id, "the filesystem is read-only and in use; mounted it read-only");
                    return Ok(self.data_dir(id));
                }
                tracing::error!(filesystem = id, error = %e, "mounting the filesystem again failed");
                Err(RuntimeError::Unavailable(format!(
                    "filesystem {id} is not mounted and mounting it again failed; retry later"
                )))
            }
        }
    }

    /// A filesystem mounted read-only after an error, under its lock: while anything but this
    /// server's mount holds it (a sandbox's bind mount lives in the sandbox's own mount
    /// namespace, so the host's `umount` would not release it), it stays as it is, read-only.
    /// Otherwise it is unmounted, checked on its loop device and mounted again. The check runs
    /// on the device, never on the image file: e2fsck opens a device exclusively, which the
    /// kernel refuses while the filesystem is mounted anywhere, so a user this server could not
    /// see still stops it (the filesystem is then mounted read-only again).
    async fn repair_read_only(&self, id: &str) -> Result<PathBuf> {
        let mnt = self.mountpoint(id);
        let data = self.data_dir(id);
        let Some(dev) = loop_device(&mnt, &self.image(id)) else {
            tracing::error!(
                filesystem = id,
                "the read-only filesystem is not on a loop device of its image; left as it is"
            );
            return Ok(data);
        };
        if mounted_elsewhere(&dev.majmin, &mnt) {
            tracing::debug!(filesystem = id, device = %dev.path.display(), "the read-only filesystem is in use; repaired once it is not");
            return Ok(data);
        }
        tracing::warn!(filesystem = id, device = %dev.path.display(), "the filesystem turned read-only; checking and mounting it again");
        // Held open so that the loop device stays bound to the image across the unmount (it is
        // torn down when its last user goes); a plain open does not stop e2fsck's exclusive one.
        let held = match fs::File::open(&dev.path) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(filesystem = id, error = %e, "opening the loop device failed; left read-only");
                return Ok(data);
            }
        };
        let target = mnt.to_string_lossy().into_owned();
        if let Err(e) = run("umount", &[&target], "unmount the read-only filesystem").await {
            // Busy on the host (a request reading it): still mounted read-only, retried later.
            tracing::warn!(filesystem = id, error = %e, "unmounting the read-only filesystem failed; left read-only");
            return Ok(data);
        }
        let device = dev.path.to_string_lossy().into_owned();
        let fixed = Command::new("e2fsck").args(["-f", "-y", &device]).stdin(Stdio::null()).output().await;
        // Exit status 1 and 2 mean errors were corrected.
        let clean = fixed.as_ref().is_ok_and(|o| o.status.code().is_some_and(|c| c <= 2));
        if !clean {
            tracing::error!(
                filesystem = id,
                "e2fsck of the read-only filesystem failed or was refused; mounting it read-only: {fixed:?}"
            );
        }
        // Read-write once checked; otherwise read-only, unless the kernel refuses that because
        // a user it could not see still holds the filesystem read-write (then it joins it).
        let mut mounted = false;
        for ro in [!clean, clean] {
            let opts = if ro { "ro,nosuid,nodev,noatime" } else { "nosuid,nodev,noatime" };
            match run("mount", &["-t", "ext4", "-o", opts, &device, &target], "mount the filesystem").await {
                Ok(()) => {
                    mounted = true;
                    break;
                }
                Err(e) => {
                    tracing::error!(filesystem = id, read_only = ro, error = %e, "mounting the checked filesystem failed")
                }
            }
        }
        drop(held);
        if !mounted {
            return Err(RuntimeError::Unavailable(format!(
                "filesystem {id} turned read-only after a disk error and mounting it again failed; retry later"
            )));
        }
        let _ = fs::set_permissions(&mnt, fs::Permissions::from_mode(0o700));
        if !read_only(&mnt) {
            self.sweep(id);
        }
        Ok(data)
    }

    /// Mounts read-only the loop device already attached to the filesystem's image (one a
    /// sandbox still holds); whether it worked.
    async fn mount_attached_read_only(&self, id: &str) -> bool {
        let img = self.image(id).to_string_lossy().into_owned();
        let Ok(out) = Command::new("losetup").args(["-j", &img]).stdin(Stdio::null()).output().await else {
            return false;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(dev) = text.lines().next().and_then(|l| l.split(':').next()).filter(|d| d.starts_with("/dev/loop"))
        else {
            return false;
        };
        let target = self.mountpoint(id).to_string_lossy().into_owned();
        let mounted =
            run("mount", &["-t", "ext4", "-o", "ro,nosuid,nodev,noatime", dev, &target], "mount the filesystem").await;
        mounted.is_ok()
    }

    pub fn image(&self, id: &str) -> PathBuf {
        self.images.join(format!("{id}.img"))
    }

    /// Where the filesystem is mounted on the host.
    pub fn mountpoint(&self, id: &str) -> PathBuf {
        self.mounts.join(id)
    }

    /// Creates and mounts a filesystem of `size_bytes`, its root owned by `owner`'s root.
    pub async fn create(&self, id: &str, size_bytes: u64, owner: IdRange) -> Result<()> {
        check(id)?;
        let image = self.image(id);
        let result = async {
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&image)
                .map_err(RuntimeError::io(format!("create {}", image.display())))?;
            f.set_len(size_bytes).map_err(RuntimeError::io("size the image"))?;
            f.sync_all().map_err(RuntimeError::io("sync the image"))?;
            let owner_opt = format!("root_owner={}:{}", owner.host_start, owner.host_start);
            let img = image.to_string_lossy().into_owned();
            // No reserved blocks: the size the tenant asked for is the size it can fill.
            run("mkfs.ext4", &["-q", "-F", "-m", "0", "-b", "4096", "-E", &owner_opt, &img], "format the filesystem")
                .await?;
            self.mount(id).await?;
            let data = self.data_dir(id);
            fs::DirBuilder::new().mode(0o755).create(&data).map_err(RuntimeError::io("create the data dir"))?;
            std::os::unix::fs::chown(&data, Some(owner.host_start), Some(owner.host_start))
                .map_err(RuntimeError::io("chown the data dir"))?;
            sync_dir(&self.mountpoint(id))
        }
        .await;
        if result.is_err() {
            let _ = self.delete(id).await;
        }
        result.map_err(|e| self.host_full_runtime(e))
    }

    /// The directory whose content is the tenant's data: mounted at `/workspace`, and the root
    /// of the files and archive APIs. It sits one level below the filesystem's root so that an
    /// archive upload can be staged beside it and swapped in with one atomic rename.
    pub fn data_dir(&self, id: &str) -> PathBuf {
        self.mountpoint(id).join("data")
    }

    /// A new, empty staging directory on the filesystem itself, owned by `owner`.
    pub fn staging_dir(&self, id: &str, owner: IdRange) -> Result<PathBuf> {
        check(id)?;
        let tag = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = self.mountpoint(id).join(format!(".staging-{tag:x}"));
        fs::DirBuilder::new().mode(0o755).create(&dir).map_err(RuntimeError::io("create the staging dir"))?;
        std::os::unix::fs::chown(&dir, Some(owner.host_start), Some(owner.host_start))
            .map_err(RuntimeError::io("chown the staging dir"))?;
        Ok(dir)
    }

    /// Swaps `staging` in as the data dir in one atomic rename (`RENAME_EXCHANGE`), then
    /// removes the previous content. A crash leaves either the old or the new content in place,
    /// never a mix; leftovers of staging are swept by [`Storage::sweep`].
    pub fn swap_in(&self, id: &str, staging: &Path) -> Result<()> {
        check(id)?;
        let data = self.data_dir(id);
        sync_tree_root(staging)?;
        let a = std::ffi::CString::new(staging.as_os_str().as_encoded_bytes())
            .map_err(|_| RuntimeError::Protocol("path".into()))?;
        let b = std::ffi::CString::new(data.as_os_str().as_encoded_bytes())
            .map_err(|_| RuntimeError::Protocol("path".into()))?;
        // SAFETY: two valid NUL-terminated paths; renameat2 only reads them.
        let rc =
            unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
        if rc != 0 {
            return Err(RuntimeError::io("swap the new content in")(std::io::Error::last_os_error()));
        }
        sync_dir(&self.mountpoint(id))?;
        // `staging` now holds the old content, made by the tenant's sandboxes: any depth.
        crate::confined::remove_tree(staging)
            .map_err(|e| RuntimeError::io("remove the previous content")(std::io::Error::other(e)))
    }

    /// Removes staging directories left by an interrupted upload.
    pub fn sweep(&self, id: &str) {
        for e in fs::read_dir(self.mountpoint(id)).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(".staging-") {
                let _ = crate::confined::remove_tree(e.path());
            }
        }
    }

    /// Mounts the filesystem's image when it is not mounted (at create, and at server start).
    pub async fn mount(&self, id: &str) -> Result<()> {
        check(id)?;
        let lock = self.lock_of(id);
        let _held = lock.lock().await;
        self.mount_locked(id).await
    }

    /// [`Storage::mount`] under the filesystem's lock. `mount -o loop` reuses a loop device
    /// already attached to the image (a sandbox may still hold the old mount), so the kernel
    /// never has one image open twice.
    async fn mount_locked(&self, id: &str) -> Result<()> {
        let mnt = self.mountpoint(id);
        if mounted_here(&mnt) || is_mounted(&mnt) {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&mnt)
            .map_err(RuntimeError::io("create the mount point"))?;
        let img = self.image(id).to_string_lossy().into_owned();
        let target = mnt.to_string_lossy().into_owned();
        run("mount", &["-t", "ext4", "-o", "loop,nosuid,nodev,noatime", &img, &target], "mount the filesystem").await?;
        // Only the namespace's mapped root (and the host's root) may enter.
        fs::set_permissions(&mnt, fs::Permissions::from_mode(0o700))
            .map_err(RuntimeError::io("chmod the filesystem root"))?;
        Ok(())
    }

    /// Grows a filesystem to `size_bytes`: online when the kernel allows it; otherwise offline,
    /// which needs that no sandbox holds it (`in_use`).
    pub async fn grow(&self, id: &str, size_bytes: u64, in_use: bool) -> Result<()> {
        check(id)?;
        let lock = self.lock_of(id);
        let _held = lock.lock().await;
        self.grow_locked(id, size_bytes, in_use).await.map_err(|e| self.host_full_runtime(e))
    }

    async fn grow_locked(&self, id: &str, size_bytes: u64, in_use: bool) -> Result<()> {
        if !mounted_here(&self.mountpoint(id)) {
            self.mount_locked(id).await?;
        }
        let image = self.image(id);
        let f = fs::OpenOptions::new().write(true).open(&image).map_err(RuntimeError::io("open the image"))?;
        let old = f.metadata().map_err(RuntimeError::io("stat the image"))?.len();
        f.set_len(size_bytes).map_err(RuntimeError::io("grow the image"))?;
        f.sync_all().map_err(RuntimeError::io("sync the image"))?;
        let img = image.to_string_lossy().into_owned();
        let mnt = self.mountpoint(id);
        let online = async {
            let out = Command::new("losetup").args(["-j", &img]).output().await.map_err(RuntimeError::io("losetup"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let dev = text.split(':').next().unwrap_or("").trim().to_owned();
            if dev.is_empty() {
                return Err(RuntimeError::Protocol("no loop device".into()));
            }
            run("losetup", &["-c", &dev], "refresh the loop device").await?;
            run("resize2fs", &[&dev], "grow the filesystem").await
        }
        .await;
        if online.is_ok() {
            return Ok(());
        }
        if in_use {
            // Put the image back as it was: the filesystem keeps its old size.
            let _ = f.set_len(old);
            return Err(RuntimeError::Busy(
                "this host's kernel refuses to grow a mounted ext4 filesystem; stop the sandboxes using it and retry"
                    .into(),
            ));
        }
        let target = mnt.to_string_lossy().into_owned();
        run("umount", &[&target], "unmount the filesystem").await?;
        // The loop device is released asynchronously after the unmount; resize2fs must not
        // race it.
        let mut detached = false;
        for _ in 0..200 {
            let out = Command::new("losetup").args(["-j", &img]).output().await.map_err(RuntimeError::io("losetup"))?;
            if out.stdout.is_empty() {
                detached = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if !detached {
            // Still mounted somewhere the unmount did not reach (a sandbox's mount namespace):
            // checking the image now would corrupt it. Mounted again at its old size.
            let _ = f.set_len(old);
            self.mount_locked(id).await?;
            return Err(RuntimeError::Busy(format!(
                "filesystem {id} is still mounted by a sandbox; stop the sandboxes using it and retry"
            )));
        }
        let grown = async {
            // resize2fs insists on a fresh check. The image can stay busy for a moment after the
            // unmount (the loop device is torn down asynchronously), so the check is retried;
            // e2fsck's exit status 1 means "errors corrected", which is fine.
            let mut last = String::new();
            for _ in 0..60 {
                let out = Command::new("e2fsck").args(["-f", "-y", &img]).output().await;
                match out {
                    Ok(o) if o.status.code().is_some_and(|c| c <= 1) => {
                        last.clear();
                        break;
                    }
                    Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            if !last.is_empty() {
                return Err(RuntimeError::Io {
                    what: "check the filesystem before growing it".into(),
                    source: std::io::Error::other(last),
                });
            }
            run("resize2fs", &[&img], "grow the filesystem").await
        }
        .await;
        self.mount_locked(id).await?;
        grown
    }

    /// Unmounts the filesystem and destroys its data.
    pub async fn delete(&self, id: &str) -> Result<()> {
        check(id)?;
        let lock = self.lock_of(id);
        let _held = lock.lock().await;
        let mnt = self.mountpoint(id);
        if is_mounted(&mnt) {
            let target = mnt.to_string_lossy().into_owned();
            // Lazily: a sandbox being torn down may still hold it for a moment; the loop device
            // is released when the last user goes.
            run("umount", &["-l", &target], "unmount the filesystem").await?;
        }
        let _ = fs::remove_dir(&mnt);
        let removed = match fs::remove_file(self.image(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::io("remove the image")(e)),
        };
        self.forget_lock(id, &lock);
        removed
    }

    /// Drops filesystem `id`'s lock from the map once it is gone, while its lock (`held`) is
    /// still held: only when no other request holds a clone of it (the map's and `held` are the
    /// only ones), so that a request that took it before the delete and one that takes it
    /// after never hold two different locks of the same filesystem.
    fn forget_lock(&self, id: &str, held: &std::sync::Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        let alone =
            locks.get(id).is_some_and(|l| std::sync::Arc::ptr_eq(l, held)) && std::sync::Arc::strong_count(held) == 2;
        if alone {
            locks.remove(id);
        }
    }

    /// Space used and total, from the mounted filesystem.
    pub fn usage(&self, id: &str) -> Result<Usage> {
        check(id)?;
        let mnt = self.mountpoint(id);
        // Unmounted, the mount point would report the state dir's filesystem.
        if !mounted_here(&mnt) {
            return Err(RuntimeError::Unavailable(format!("filesystem {id} is not mounted")));
        }
        let path = std::ffi::CString::new(mnt.to_string_lossy().as_bytes())
            .map_err(|_| RuntimeError::Protocol("path".into()))?;
        // SAFETY: statvfs is plain data; zeroed is a valid value for the call to fill.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid NUL-terminated path and a valid pointer to a local statvfs.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(RuntimeError::io(format!("statvfs {}", mnt.display()))(std::io::Error::last_os_error()));
        }
        let frsize = st.f_frsize as u64;
        let total = st.f_blocks as u64 * frsize;
        let free = st.f_bfree as u64 * frsize;
        Ok(Usage { used_bytes: total.saturating_sub(free), total_bytes: total })
    }

    /// Filesystem ids with an image on this host.
    pub fn images(&self) -> Vec<String> {
        fs::read_dir(&self.images)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".img").map(str::to_owned))
            .filter(|id| is_fs_id(id))
            .collect()
    }

    /// Filesystem ids mounted (or with a mount point) on this host.
    pub fn mount_points(&self) -> Vec<String> {
        fs::read_dir(&self.mounts)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|id| is_fs_id(id))
            .collect()
    }
}

/// `e`, with a message that names `rel` (every file error names its path).
fn named(e: FileError, rel: &Path) -> FileError {
    let shown = format!("{rel:?}");
    let name = |m: String| {
        if m.contains(&shown) {
            m
        } else {
            format!("path: {shown}: {}", m.strip_prefix("path: ").unwrap_or(&m))
        }
    };
    match e {
        FileError::NotFound(_) => FileError::NotFound(format!("path: {shown}: no such file or directory")),
        FileError::Invalid(m) => FileError::Invalid(name(m)),
        FileError::Loop(m) => FileError::Loop(name(m)),
        FileError::NotADirectory(m) => FileError::NotADirectory(name(m)),
        FileError::IsADirectory(m) => FileError::IsADirectory(name(m)),
        FileError::NotARegularFile(m) => FileError::NotARegularFile(name(m)),
        FileError::PermissionDenied(m) => FileError::PermissionDenied(name(m)),
        FileError::TooLarge(m) => FileError::TooLarge(name(m)),
        FileError::NoSpace(m) => FileError::NoSpace(name(m)),
        FileError::PreconditionFailed(m) => FileError::PreconditionFailed(name(m)),
        FileError::Io(m) => FileError::Io(name(m)),
        FileError::NotEmpty => FileError::NotEmpty,
        e @ (FileError::HostFull(_) | FileError::Unavailable(_)) => e,
    }
}

fn owner_of(ids: IdRange) -> Owner {
    Owner { uid: ids.host_start, gid: ids.host_start }
}

impl Storage {
    /// The filesystem's data, opened: refused as `Unavailable` while it is not mounted, so an
    /// operation never lands in the empty mount point beneath.
    fn root(&self, id: &str) -> Result<Root, FileError> {
        if !mounted_here(&self.mountpoint(id)) {
            return Err(FileError::Unavailable(format!(
                "filesystem {id} is not mounted; it is being mounted again; retry"
            )));
        }
        Root::open(self.data_dir(id)).map_err(|e| FileError::Io(format!("open filesystem {id}: {e}")))
    }

    /// [`Storage::root`] for a change: refused as `Unavailable` while the filesystem is
    /// read-only after a disk error (it is repaired once no sandbox uses it).
    fn writable_root(&self, id: &str) -> Result<Root, FileError> {
        let root = self.root(id)?;
        if read_only(&self.mountpoint(id)) {
            return Err(FileError::Unavailable(read_only_message(id)));
        }
        Ok(root)
    }

    /// `e` of a change, as the filesystem's read-only state when it turned read-only (a write
    /// that met the error, `EROFS`), else as the host's full disk when it is one.
    fn change_failed(&self, id: &str, e: FileError) -> FileError {
        match e {
            FileError::Io(m) | FileError::NoSpace(m) | FileError::PermissionDenied(m)
                if read_only(&self.mountpoint(id)) =>
            {
                tracing::error!(filesystem = id, error = %m, "a write failed on a read-only filesystem");
                FileError::Unavailable(read_only_message(id))
            }
            other => self.host_full_or(other),
        }
    }
}

#[async_trait]
impl FilesystemStorage for Storage {
    async fn create(&self, id: &str, size_bytes: u64, owner: IdRange) -> Result<()> {
        Storage::create(self, id, size_bytes, owner).await
    }

    async fn mount(&self, id: &str) -> Result<bool> {
        if !self.image(id).exists() {
            return Ok(false);
        }
        Storage::mount(self, id).await?;
        self.sweep(id);
        Ok(true)
    }

    async fn ensure_mounted(&self, id: &str) -> Result<PathBuf> {
        Storage::ensure_mounted(self, id).await
    }

    async fn grow(&self, id: &str, size_bytes: u64, in_use: bool) -> Result<()> {
        Storage::grow(self, id, size_bytes, in_use).await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        Storage::delete(self, id).await
    }

    fn usage(&self, id: &str) -> Result<Usage> {
        Storage::usage(self, id)
    }

    fn mountpoint(&self, id: &str) -> PathBuf {
        Storage::mountpoint(self, id)
    }

    fn data_dir(&self, id: &str) -> PathBuf {
        Storage::data_dir(self, id)
    }

    fn ids(&self) -> Vec<String> {
        let mut ids = self.images();
        ids.sort();
        ids
    }

    fn list(&self, id: &str, rel: &Path, after: Option<&[u8]>, limit: usize) -> Result<(Vec<Entry>, bool), FileError> {
        confined::list_page(&self.root(id)?, rel, after, limit).map_err(files::from_confined).map_err(|e| named(e, rel))
    }

    fn open(&self, id: &str, rel: &Path, hash_max: u64) -> Result<Option<Download>, FileError> {
        let Some((file, len, digest)) =
            files::open_hashed(&self.root(id)?, rel, hash_max).map_err(|e| named(e, rel))?
        else {
            return Ok(None);
        };
        let Some(digest) = digest else {
            // Too large to hash before it is sent: streamed as it is, cut at the length announced.
            return Ok(Some(Download { reader: Box::new(file.take(len)), len, etag: None }));
        };
        let etag = files::etag(&digest);
        let reader = files::Verified { file: file.take(len), hasher: Some(sha2::Sha256::default()), expected: digest };
        Ok(Some(Download { reader: Box::new(reader), len, etag: Some(etag) }))
    }

    fn check(&self, id: &str, rel: &Path, pre: &Preconditions, hash_max: u64) -> Result<(), FileError> {
        let root = self.root(id)?;
        files::current_etag(&root, rel, hash_max).and_then(|tag| pre.check(tag.as_deref())).map_err(|e| named(e, rel))
    }

    fn write(
        &self,
        id: &str,
        rel: &Path,
        data: &mut dyn Read,
        options: WriteOptions,
        pre: &Preconditions,
        serialize: files::Serialize,
    ) -> Result<Written, FileError> {
        use sha2::Digest;
        let root = self.writable_root(id)?;
        let mut hashing = files::Hashing { inner: data, hasher: sha2::Sha256::new() };
        let owner = owner_of(options.owner);
        let written =
            confined::write_atomic_when(&root, rel, &mut hashing, options.max_bytes, options.mode, owner, || {
                let held = serialize();
                if pre.any() {
                    pre.check(files::current_etag(&root, rel, options.hash_max)?.as_deref())?;
                }
                Ok::<_, WriteError>(held)
            });
        match written {
            Ok((bytes, _held)) => Ok(Written { bytes, etag: files::etag(&hashing.hasher.finalize()) }),
            Err(WriteError::File(e)) => Err(self.change_failed(id, named(e, rel))),
            Err(WriteError::Confined(e)) => Err(self.change_failed(id, named(files::from_confined(e), rel))),
        }
    }

    fn remove(&self, id: &str, rel: &Path, pre: &Preconditions, hash_max: u64) -> Result<(), FileError> {
        let root = self.writable_root(id)?;
        if pre.if_match.is_some() {
            pre.check(files::current_etag(&root, rel, hash_max)?.as_deref()).map_err(|e| named(e, rel))?;
        }
        confined::remove(&root, rel).map_err(files::from_confined).map_err(|e| self.change_failed(id, named(e, rel)))
    }

    fn archive(&self, id: &str) -> Result<Box<dyn Read + Send>, FileError> {
        Ok(Box::new(archive::TarReader::new(self.root(id)?)))
    }

    fn stage_archive(
        &self,
        id: &str,
        data: &mut dyn Read,
        owner: IdRange,
        limits: archive::Limits,
    ) -> Result<Box<dyn StagedArchive>, FileError> {
        self.writable_root(id)?;
        let staging = self
            .staging_dir(id, IdRange { host_start: owner.host_start, size: 1 })
            .map_err(|e| self.change_failed(id, FileError::Io(e.to_string())))?;
        let mut staged = Staged { storage: self.clone(), id: id.to_owned(), staging, stats: archive::Stats::default() };
        let root = Root::open(&staged.staging).map_err(|e| FileError::Io(e.to_string()))?;
        staged.stats = archive::extract(data, &root, owner_of(owner), limits)
            .map_err(files::from_archive)
            .map_err(|e| self.change_failed(id, e))?;
        Ok(Box::new(staged))
    }
}

/// How a confined write fails: in the write itself, or in its precondition.
enum WriteError {
    Confined(confined::ConfinedError),
    File(FileError),
}

impl From<confined::ConfinedError> for WriteError {
    fn from(e: confined::ConfinedError) -> Self {
        WriteError::Confined(e)
    }
}

impl From<FileError> for WriteError {
    fn from(e: FileError) -> Self {
        WriteError::File(e)
    }
}

/// An extracted tree in a staging directory on the filesystem itself; removed when dropped
/// uncommitted.
struct Staged {
    storage: Storage,
    id: String,
    staging: PathBuf,
    stats: archive::Stats,
}

impl StagedArchive for Staged {
    fn stats(&self) -> archive::Stats {
        self.stats
    }

    fn commit(self: Box<Self>) -> Result<archive::Stats, FileError> {
        // After the swap `staging` holds the old content; removed on drop either way.
        self.storage
            .swap_in(&self.id, &self.staging)
            .map_err(|e| self.storage.host_full_or(FileError::Io(e.to_string())))?;
        Ok(self.stats)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = confined::remove_tree(&self.staging);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majmin_decodes_large_minors() {
        assert_eq!(majmin(libc::makedev(7, 0)), "7:0");
        assert_eq!(majmin(libc::makedev(7, 300)), "7:300");
        assert_eq!(majmin(libc::makedev(259, 1 << 19)), format!("259:{}", 1 << 19));
    }

    const MNT: &str = "/var/lib/bulkhead/filesystems/fs_a";

    #[test]
    fn the_servers_own_mount_and_its_propagated_copies_do_not_hold_the_filesystem() {
        let own = format!(
            "22 1 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n\
             90 22 7:3 / {MNT} rw,nosuid,nodev,noatime shared:57 - ext4 /dev/loop3 rw\n"
        );
        assert!(!holds_elsewhere(&own, "7:3", MNT, true, Some("57")));
        // A service's namespace, a slave of the host's: the unmount removes its copy too.
        let slave = format!("300 299 7:3 / {MNT} rw master:57 - ext4 /dev/loop3 rw\n");
        assert!(!holds_elsewhere(&slave, "7:3", MNT, false, Some("57")));
        // Another device entirely.
        assert!(!holds_elsewhere(&slave, "7:4", MNT, false, Some("57")));
    }

    #[test]
    fn a_sandboxs_bind_mount_or_another_mount_holds_the_filesystem() {
        // The sandbox's /workspace: the data dir, in its own namespace.
        let sandbox = "500 400 7:3 /data /workspace rw,nosuid,nodev - ext4 /dev/loop3 rw\n";
        assert!(holds_elsewhere(sandbox, "7:3", MNT, false, Some("57")));
        assert!(holds_elsewhere(sandbox, "7:3", MNT, false, None));
        // The same path in another namespace that propagation does not reach.
        let private = format!("300 299 7:3 / {MNT} rw - ext4 /dev/loop3 rw\n");
        assert!(holds_elsewhere(&private, "7:3", MNT, false, Some("57")));
        assert!(holds_elsewhere(&private, "7:3", MNT, false, None));
        // A second mount of the device in the server's own namespace.
        let own = format!(
            "90 22 7:3 / {MNT} rw shared:57 - ext4 /dev/loop3 rw\n\
             91 22 7:3 / /mnt/elsewhere rw shared:57 - ext4 /dev/loop3 rw\n"
        );
        assert!(holds_elsewhere(&own, "7:3", MNT, true, Some("57")));
    }

    #[test]
    fn a_read_only_write_names_the_filesystem_and_the_repair() {
        let m = read_only_message("fs_a");
        assert!(m.contains("fs_a") && m.contains("read-only after a disk error") && m.contains("no sandbox uses it"));
    }

    #[tokio::test]
    async fn storage_delete_keeps_a_lock_another_request_holds() {
        let dir = tempfile::tempdir().unwrap();
        let Ok(s) = Storage::new(&dir.path().join("data"), &dir.path().join("state")) else {
            eprintln!("skipped: e2fsprogs is not installed");
            return;
        };
        let earlier = s.lock_of("fs_a");
        s.delete("fs_a").await.unwrap();
        assert!(std::sync::Arc::ptr_eq(&earlier, &s.lock_of("fs_a")), "a request after the delete shares the lock");
        drop(earlier);
        s.delete("fs_a").await.unwrap();
        assert!(s.locks.lock().unwrap().is_empty(), "nobody else held it: forgotten");
    }
}
