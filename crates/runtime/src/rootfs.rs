//! A sandbox's root filesystem from an image: overlayfs with the image's unpacked layers below,
//! each seen through an idmapped mount onto the namespace's host id range, and a writable upper
//! layer of its own on a tmpfs of the requested size (a write past it fails with `ENOSPC`).
//!
//! The layers in the store keep the image's own ids (root is 0 there); an idmapped mount
//! (`mount_setattr(2)` with `MOUNT_ATTR_IDMAP`, Linux 5.12+, overlayfs over idmapped layers
//! 5.19+) shows them as the namespace's host ids, which the sandbox's user namespace maps back
//! to the image's: no copy, no chown, one store for every namespace of a public image.
//!
//! What the sandbox sees of the mount (its `/proc/self/mountinfo`) names no tenant, sandbox or
//! host path: the overlay is mounted from a scratch directory with relative layer names
//! (`lowerdir=1:0,upperdir=w/u,workdir=w/w`), by a thread of its own working directory, and the
//! layer and upper mounts it was made from are detached at once (overlayfs keeps private
//! clones), so a sandbox's root is two mounts on the host: the overlay at
//! `<state-dir>/rootfs/<sandbox id>` and its upper layer's tmpfs beside it (`<id>.upper`, where
//! a snapshot reads the sandbox's changes), both unmounted with the sandbox.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::{IdRange, ImageRoot, Result, RuntimeError};

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cstr(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| RuntimeError::Invalid(format!("{} contains a NUL byte", path.display())))
}

fn last_error(what: impl Into<String>) -> RuntimeError {
    RuntimeError::io(what)(io::Error::last_os_error())
}

/// User namespaces that carry each namespace's id map, made once per range and kept: an
/// idmapped mount takes its mapping from one (`MountAttr::userns_fd`).
#[derive(Debug, Default, Clone)]
pub struct IdMaps {
    by_range: Arc<Mutex<UsernsByRange>>,
}

/// A user namespace (its fd) per id range `(host_start, size)`.
type UsernsByRange = HashMap<(u32, u32), Arc<OwnedFd>>;

impl IdMaps {
    /// The user namespace mapping ids `0..ids.size` onto `ids.host_start..`, made on first use.
    pub fn userns(&self, ids: IdRange) -> Result<Arc<OwnedFd>> {
        let key = (ids.host_start, ids.size);
        let mut map = self.by_range.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = map.get(&key) {
            return Ok(fd.clone());
        }
        let fd = Arc::new(make_userns(ids)?);
        map.insert(key, fd.clone());
        Ok(fd)
    }
}

/// A user namespace with `ids` as its uid and gid map: a child (util-linux's `unshare --user`
/// running `cat`, spawned without a fork of this large process) enters a new user namespace
/// and waits on its stdin while this process writes its maps and opens it; closing its stdin
/// ends it, and the open descriptor keeps the namespace.
fn make_userns(ids: IdRange) -> Result<OwnedFd> {
    let mut child = std::process::Command::new("unshare")
        .args(["--user", "--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(RuntimeError::io("run unshare (util-linux) to make a user namespace"))?;
    let pid = child.id();
    let result = (|| {
        // The child has unshared once its user namespace differs from ours.
        let ours = fs::read_link("/proc/self/ns/user").map_err(RuntimeError::io("read our user namespace"))?;
        let mut tries = 0;
        loop {
            match fs::read_link(format!("/proc/{pid}/ns/user")) {
                Ok(theirs) if theirs != ours => break,
                Ok(_) | Err(_) if tries < 10_000 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
                _ => return Err(RuntimeError::Unavailable("the kernel did not make a user namespace".into())),
            }
        }
        let map = format!("0 {} {}\n", ids.host_start, ids.size);
        fs::write(format!("/proc/{pid}/uid_map"), &map).map_err(RuntimeError::io("write a uid map"))?;
        fs::write(format!("/proc/{pid}/setgroups"), "deny").map_err(RuntimeError::io("deny setgroups"))?;
        fs::write(format!("/proc/{pid}/gid_map"), &map).map_err(RuntimeError::io("write a gid map"))?;
        let ns = fs::File::open(format!("/proc/{pid}/ns/user")).map_err(RuntimeError::io("open a user namespace"))?;
        Ok(OwnedFd::from(ns))
    })();
    drop(child.stdin.take());
    if result.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    result
}

/// The directory under the state dir that holds every sandbox's root mount point.
pub const ROOTFS_DIR: &str = "rootfs";

/// Mounts the root of a sandbox at `target` (an empty directory it creates, mode 0755): the
/// layers of `root` idmapped through `userns` under an overlay whose upper layer is a tmpfs of
/// `root.writable_bytes` owned by the sandbox's root (`ids.host_start`). `scratch` is a
/// directory the mount is made from, removed before this returns. On failure nothing stays
/// mounted.
pub fn mount_image_root(target: &Path, scratch: &Path, root: &ImageRoot, ids: IdRange, userns: &OwnedFd) -> Result<()> {
    if root.layers.is_empty() {
        return Err(RuntimeError::Invalid("an image root needs at least one layer".into()));
    }
    fs::DirBuilder::new()
        .mode(0o755)
        .recursive(true)
        .create(target)
        .map_err(RuntimeError::io("make the root mount point"))?;
    let _ = fs::remove_dir_all(scratch);
    fs::DirBuilder::new().mode(0o700).create(scratch).map_err(RuntimeError::io("make the root scratch dir"))?;
    let mut mounted: Vec<PathBuf> = Vec::new();
    let mut upper_mounted = false;
    let result = (|| {
        for (i, layer) in root.layers.iter().enumerate() {
            let at = scratch.join(i.to_string());
            fs::DirBuilder::new().mode(0o700).create(&at).map_err(RuntimeError::io("make a layer mount point"))?;
            idmapped_bind(layer, &at, userns)?;
            mounted.push(at);
        }
        // The upper layer's tmpfs stays mounted beside the root, where a snapshot reads it.
        let writable = upper_of(target);
        fs::DirBuilder::new().mode(0o700).create(&writable).map_err(RuntimeError::io("make the upper mount point"))?;
        let options = format!(
            "size={},mode=0700,uid={},gid={},nr_inodes={}",
            root.writable_bytes.max(4096),
            ids.host_start,
            ids.host_start,
            // One inode per 4 KiB written at most, as a disk's filesystem would allow.
            (root.writable_bytes / 4096).max(1024),
        );
        mount("tmpfs", &writable, "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, &options)?;
        upper_mounted = true;
        std::os::unix::fs::symlink(&writable, scratch.join("w")).map_err(RuntimeError::io("link the upper layer"))?;
        for sub in ["u", "w"] {
            let dir = writable.join(sub);
            fs::DirBuilder::new().mode(0o755).create(&dir).map_err(RuntimeError::io("make the upper layer"))?;
            std::os::unix::fs::chown(&dir, Some(ids.host_start), Some(ids.host_start))
                .map_err(RuntimeError::io("own the upper layer"))?;
        }
        // overlayfs lists the top layer first.
        let lower: Vec<String> = (0..root.layers.len()).rev().map(|i| i.to_string()).collect();
        let options = format!("lowerdir={},upperdir=w/u,workdir=w/w", lower.join(":"));
        mount_from(scratch, target, &options)
    })();
    for at in mounted.iter().rev() {
        if let Ok(c) = cstr(at) {
            // SAFETY: a valid C string; detaching a mount we made.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _ = fs::remove_dir_all(scratch);
    if result.is_err() {
        if upper_mounted {
            let _ = unmount_dir(&upper_of(target));
        }
        let _ = fs::remove_dir(upper_of(target));
        let _ = fs::remove_dir(target);
    }
    result
}

/// Binds `layer` at `at`, read-only, without devices or setuid, with its ids mapped through
/// `userns`.
fn idmapped_bind(layer: &Path, at: &Path, userns: &OwnedFd) -> Result<()> {
    attach_clone(
        layer,
        at,
        MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        Some(userns),
        "layer",
    )
}

/// Attaches a clone of the tree at `source` (with the mounts below it) at `at`, with the mount
/// attributes `attr_set` (`MOUNT_ATTR_*`, an id map through `userns` with `MOUNT_ATTR_IDMAP`)
/// set before it is attached: where `at` propagates (a claim point, see [`make_claim_point`]),
/// every copy gets the attributes, and a copy in a sandbox's mount namespace has them locked.
fn attach_clone(source: &Path, at: &Path, attr_set: u64, userns: Option<&OwnedFd>, what: &str) -> Result<()> {
    let source_c = cstr(source)?;
    // SAFETY: a valid C string; the returned descriptor is owned below.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source_c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        )
    };
    if tree < 0 {
        return Err(last_error(format!("clone the {what} {}", source.display())));
    }
    // SAFETY: open_tree returned a new descriptor.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as RawFd) };
    let attr =
        MountAttr { attr_set, attr_clr: 0, propagation: 0, userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64) };
    let empty = c"";
    // SAFETY: `attr` is a valid `struct mount_attr` of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(last_error(if attr_set & MOUNT_ATTR_IDMAP != 0 {
            format!("idmap a {what} (the kernel needs idmapped mounts: Linux 5.12 or later)")
        } else {
            format!("set the attributes of a {what}")
        }));
    }
    let target = cstr(at)?;
    // SAFETY: valid descriptors and C strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(last_error(format!("attach the {what}")));
    }
    Ok(())
}

/// Makes `dir` (created, mode 0755) a claim point: a mount of its own (bound onto itself)
/// whose mounts propagate. A warm pool's sandbox binds it (as a slave, read-only) where a
/// claimant's filesystem or agent code will appear; [`attach_at_claim_point`] attaches that on
/// the host, and the kernel propagates it into the running sandbox's mount namespace, where it
/// is locked (the sandbox can neither unmount it nor change its flags).
pub fn make_claim_point(dir: &Path) -> Result<()> {
    fs::DirBuilder::new().mode(0o755).recursive(true).create(dir).map_err(RuntimeError::io("make a claim point"))?;
    let (dir_s, dir_c) = (dir.display().to_string(), cstr(dir)?);
    // SAFETY: valid C strings.
    if unsafe { libc::mount(dir_c.as_ptr(), dir_c.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) } != 0 {
        return Err(last_error(format!("bind the claim point {dir_s}")));
    }
    // SAFETY: a valid C string.
    if unsafe { libc::mount(std::ptr::null(), dir_c.as_ptr(), std::ptr::null(), libc::MS_SHARED, std::ptr::null()) }
        != 0
    {
        let e = last_error(format!("share the claim point {dir_s}"));
        // SAFETY: a valid C string; undoing the bind just made.
        unsafe { libc::umount2(dir_c.as_ptr(), libc::MNT_DETACH) };
        return Err(e);
    }
    Ok(())
}

/// Attaches `source` (a filesystem's data, an agent's code) at the claim point `point`,
/// read-only with `read_only`, never with devices or setuid (see [`make_claim_point`]).
pub fn attach_at_claim_point(source: &Path, point: &Path, read_only: bool) -> Result<()> {
    let mut attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    if read_only {
        attrs |= MOUNT_ATTR_RDONLY;
    }
    attach_clone(source, point, attrs, None, "claimed mount")
}

/// Mounts a read-only view of the host directory `source` at `target` (created, mode 0755): an
/// overlay of `source` over an empty directory, mounted from `scratch` (made here, removed
/// before this returns) with relative layer names, so that what a sandbox that binds `target`
/// reads in `/proc/self/mountinfo` is `overlay` with `lowerdir=0:1`, never the host path or
/// device of `source` (a bind would show both). For an agent's code at `/agent`.
pub fn mount_readonly_view(source: &Path, target: &Path, scratch: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o755)
        .recursive(true)
        .create(target)
        .map_err(RuntimeError::io("make a view's mount point"))?;
    let _ = fs::remove_dir_all(scratch);
    fs::DirBuilder::new().mode(0o700).create(scratch).map_err(RuntimeError::io("make a view's scratch dir"))?;
    let (lower, empty) = (scratch.join("0"), scratch.join("1"));
    let made = (|| {
        for dir in [&lower, &empty] {
            fs::DirBuilder::new().mode(0o755).create(dir).map_err(RuntimeError::io("make a view's layer"))?;
        }
        attach_clone(source, &lower, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, None, "view's source")?;
        let mounted = mount_from(scratch, target, "lowerdir=0:1");
        // The overlay keeps its own reference to the layer.
        let _ = unmount_dir(&lower);
        mounted
    })();
    let _ = fs::remove_dir_all(scratch);
    if made.is_err() {
        let _ = fs::remove_dir(target);
    }
    made
}

/// Sets the size of the tmpfs at `path` inside the mount namespace of process `pid` (a running
/// sandbox's init): a claim gives its claimant's `/tmp` size. The superblock is reconfigured
/// through the new mount API (`fspick` of `/proc/<pid>/root<path>`, then `fsconfig`: see
/// `fspick(2)`), which needs no move into the sandbox's mount namespace; the final component is
/// not followed if it is a symlink, and it must be a mount's root. On a kernel without that API
/// (before 5.2), from a thread of its own that joins the mount namespace (`unshare(CLONE_FS)`,
/// then `setns`) and remounts. Either way the mount keeps `nosuid` and `nodev` (the per-mount
/// flags are not touched). Fails (`EINVAL`) below what the tmpfs already holds.
pub fn resize_tmpfs_in(pid: i32, path: &str, bytes: u64) -> Result<()> {
    match reconfigure_tmpfs_size(&format!("/proc/{pid}/root{path}"), bytes) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => resize_tmpfs_from_inside(pid, path, bytes),
        r => r.map_err(RuntimeError::io(format!("set the size of the sandbox's {path}"))),
    }
}

/// `fspick(2)` flags and `fsconfig(2)` commands (`<linux/mount.h>`).
pub(crate) const FSPICK_CLOEXEC: libc::c_uint = 0x1;
const FSPICK_SYMLINK_NOFOLLOW: libc::c_uint = 0x2;
const FSPICK_NO_AUTOMOUNT: libc::c_uint = 0x4;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_RECONFIGURE: libc::c_uint = 7;

/// Sets `size=` on the tmpfs whose root is at `path` (a host path), by reconfiguring its
/// superblock.
fn reconfigure_tmpfs_size(path: &str, bytes: u64) -> std::io::Result<()> {
    let path = CString::new(path).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let size = CString::new(bytes.max(4096).to_string()).unwrap_or_default();
    // SAFETY: a NUL-terminated path; the call returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_fspick,
            libc::AT_FDCWD,
            path.as_ptr(),
            FSPICK_CLOEXEC | FSPICK_SYMLINK_NOFOLLOW | FSPICK_NO_AUTOMOUNT,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let Ok(fd) = i32::try_from(fd) else { return Err(std::io::Error::from_raw_os_error(libc::EBADF)) };
    // SAFETY: `fd` was just returned by fspick and is owned here alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a valid fs context descriptor, NUL-terminated key and value.
    let set = unsafe {
        libc::syscall(libc::SYS_fsconfig, fd.as_raw_fd(), FSCONFIG_SET_STRING, c"size".as_ptr(), size.as_ptr(), 0)
    };
    if set < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a valid fs context descriptor; this command takes no key or value.
    let done = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fd.as_raw_fd(),
            FSCONFIG_CMD_RECONFIGURE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if done < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// [`resize_tmpfs_in`] where the kernel has no `fspick`: a remount from inside the mount
/// namespace.
fn resize_tmpfs_from_inside(pid: i32, path: &str, bytes: u64) -> Result<()> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(RuntimeError::io("open the sandbox's mount namespace"))?;
    let path = PathBuf::from(path);
    std::thread::spawn(move || -> Result<()> {
        // SAFETY: unshare of this thread's filesystem attributes only.
        if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
            return Err(last_error("unshare the filesystem attributes"));
        }
        // SAFETY: a valid descriptor of a mount namespace; this thread alone moves into it.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
            return Err(last_error("enter the sandbox's mount namespace"));
        }
        let options = format!("size={}", bytes.max(4096));
        mount("", &path, "", libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV, &options)
    })
    .join()
    .map_err(|_| RuntimeError::Protocol("the tmpfs resize thread panicked".into()))?
}

/// Sets the size of the writable upper layer of the root mounted at `target` (a claim sets its
/// claimant's `disk_bytes`), with one inode per 4 KiB as at its mount. Fails (`EINVAL`) below
/// what the layer already holds.
pub fn resize_upper(target: &Path, writable_bytes: u64) -> Result<()> {
    let options = format!("size={},nr_inodes={}", writable_bytes.max(4096), (writable_bytes / 4096).max(1024));
    mount("", &upper_of(target), "", libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV, &options)
}

fn mount(source: &str, target: &Path, fstype: &str, flags: libc::c_ulong, data: &str) -> Result<()> {
    let (source_c, target_c) = (CString::new(source).unwrap_or_default(), cstr(target)?);
    let (fstype_c, data_c) = (CString::new(fstype).unwrap_or_default(), CString::new(data).unwrap_or_default());
    // SAFETY: valid C strings.
    let r =
        unsafe { libc::mount(source_c.as_ptr(), target_c.as_ptr(), fstype_c.as_ptr(), flags, data_c.as_ptr().cast()) };
    if r != 0 {
        return Err(last_error(format!("mount {fstype} at {}", target.display())));
    }
    Ok(())
}

/// Mounts the overlay at `target` with `options` whose paths are relative to `dir`: from a
/// thread with a working directory of its own (`unshare(CLONE_FS)`), so the rest of the
/// process keeps its own and the options name no host path.
fn mount_from(dir: &Path, target: &Path, options: &str) -> Result<()> {
    let (dir, target, options) = (dir.to_owned(), target.to_owned(), options.to_owned());
    std::thread::spawn(move || -> Result<()> {
        // SAFETY: unshare of this thread's filesystem attributes only.
        if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
            return Err(last_error("unshare the working directory"));
        }
        std::env::set_current_dir(&dir).map_err(RuntimeError::io("enter the root scratch dir"))?;
        mount("overlay", &target, "overlay", libc::MS_NOSUID | libc::MS_NODEV, &options)
    })
    .join()
    .map_err(|_| RuntimeError::Protocol("the overlay mount thread panicked".into()))?
}

/// Where the upper layer of the root mounted at `target` is mounted: `<target>.upper`, whose
/// `u` is the upper directory (overlayfs's format: whiteouts are 0:0 character devices, opaque
/// directories carry `trusted.overlay.opaque`).
pub fn upper_of(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_owned();
    name.push(".upper");
    target.with_file_name(name)
}

/// Unmounts a sandbox's root at `target` and its upper layer (detaching them: processes that
/// still hold them keep them until they end) and removes the mount points. Nothing to do for
/// what is not there.
pub fn unmount_root(target: &Path) -> Result<()> {
    unmount_dir(target)?;
    unmount_dir(&upper_of(target))
}

fn unmount_dir(target: &Path) -> Result<()> {
    let c = cstr(target)?;
    // SAFETY: a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) } != 0 {
        let e = io::Error::last_os_error();
        // Not mounted (EINVAL) or not there (ENOENT): only the directory may remain.
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Err(RuntimeError::io(format!("unmount {}", target.display()))(e));
        }
    }
    match fs::remove_dir(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RuntimeError::io(format!("remove {}", target.display()))(e)),
    }
}

/// Detaches every mount below `dir` (deepest first): what a server killed while it mounted an
/// image root left in a bundle's scratch dir (its read-only idmapped layers), so that removing
/// the bundle never meets a read-only mount or walks into a layer.
pub fn unmount_under(dir: &Path) {
    let prefix = format!("{}/", dir.display());
    let mut points: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        if let Ok(c) = CString::new(point) {
            // SAFETY: a valid C string; detaching a mount under our own directory.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
        }
    }
}

/// Makes `dir` mode `mode` (a helper for the state dir's `rootfs/`).
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .mode(mode)
        .recursive(true)
        .create(dir)
        .map_err(RuntimeError::io(format!("make {}", dir.display())))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(RuntimeError::io(format!("chmod {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn is_root() -> bool {
        // SAFETY: no arguments.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn an_image_root_shows_the_layers_mapped_writes_to_its_own_upper_and_names_no_path() {
        assert!(is_root(), "this test mounts: run it as root");
        let tmp = tempfile::tempdir().unwrap();
        let (lower, upper) = (tmp.path().join("l0"), tmp.path().join("l1"));
        fs::create_dir_all(lower.join("etc")).unwrap();
        fs::write(lower.join("etc/base"), "base\n").unwrap();
        fs::write(lower.join("etc/gone"), "gone\n").unwrap();
        fs::create_dir_all(&upper).unwrap();
        fs::write(upper.join("top"), "top\n").unwrap();
        std::os::unix::fs::chown(upper.join("top"), Some(1000), Some(1000)).unwrap();
        let ids = IdRange { host_start: 3_000_000, size: 65536 };
        let maps = IdMaps::default();
        let userns = maps.userns(ids).unwrap();
        assert!(Arc::ptr_eq(&userns, &maps.userns(ids).unwrap()), "one user namespace per range");
        let target = tmp.path().join("root");
        let root = ImageRoot { layers: vec![lower.clone(), upper.clone()], writable_bytes: 1 << 20 };
        mount_image_root(&target, &tmp.path().join("scratch"), &root, ids, &userns).unwrap();
        let guard = scopeguard(&target);
        assert_eq!(fs::read_to_string(target.join("etc/base")).unwrap(), "base\n");
        assert_eq!(fs::metadata(target.join("etc/base")).unwrap().uid(), 3_000_000);
        assert_eq!(fs::metadata(target.join("top")).unwrap().uid(), 3_001_000);
        fs::write(target.join("new"), "new\n").unwrap();
        fs::remove_file(target.join("etc/gone")).unwrap();
        assert!(!lower.join("new").exists() && !upper.join("new").exists(), "writes stay in the upper layer");
        assert!(lower.join("etc/gone").exists(), "a removal leaves the layer alone");
        // The upper layer's size is a kernel limit.
        let big = vec![7u8; 2 << 20];
        let e = fs::write(target.join("big"), &big).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let at = target.display().to_string();
        let line = mountinfo.lines().find(|l| l.split(' ').nth(4) == Some(at.as_str())).unwrap();
        assert!(line.contains("lowerdir=1:0,upperdir=w/u,workdir=w/w"), "{line}");
        assert_eq!(
            fs::read_to_string(upper_of(&target).join("u/new")).unwrap(),
            "new\n",
            "the upper layer is readable beside the root"
        );
        let (_, options) = line.split_once(" - ").unwrap();
        assert!(!options.contains(&tmp.path().display().to_string()), "the options name no host path: {line}");
        assert_eq!(
            mountinfo.lines().filter(|l| l.contains(&tmp.path().display().to_string())).count(),
            2,
            "only the root and its upper layer stay mounted: {mountinfo}"
        );
        assert!(!tmp.path().join("scratch").exists());
        drop(guard);
        assert!(!target.exists() && !upper_of(&target).exists());
        assert!(!fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&tmp.path().display().to_string()));
    }

    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            unmount_root(&self.0).unwrap();
        }
    }
    fn scopeguard(p: &Path) -> Unmount {
        Unmount(p.to_owned())
    }
}
