//! The host's cgroup2 mount option `favordynmods` (Documentation/admin-guide/cgroup-v2.rst,
//! *Mount options*): "Reduce the latencies of dynamic cgroup modifications such as task
//! migrations and controller on/offs at the cost of making hot path operations such as forks
//! and exits more expensive."
//!
//! Every command a supervisor starts joins a cgroup of its own (a write to `cgroup.procs`),
//! and so does every sandbox's init. Without the option, such a migration takes the kernel's
//! one global `cgroup_threadgroup_rwsem` for writing, which waits for an RCU grace period
//! whenever no migration happened in the last one, and for every fork in progress on the
//! host, other tenants' fork bombs included. Measured on a 2-core host (Linux 6.18, 250 Hz,
//! cgroup v1 with an empty cgroup2 beside it): a migration 20 ms after the last one took
//! 11.7 ms at the median, back to back 0.07 ms; with the option set, 0.19 ms. The option is
//! one for the whole kernel (the rwsem is shared by every hierarchy) set on any cgroup2
//! mount, so a v1 host with a cgroup2 mount beside its hierarchies gets it too. (On that
//! host's kernel a migration stayed at about 0.2 ms after the option was cleared again: the
//! kernel keeps part of what the option switched on.)
//!
//! Setting it reconfigures the mount's superblock with `fspick(2)` and `fsconfig(2)`. A
//! reconfigure sets every cgroup2 flag from what it is given, so the mount's other options
//! (`nsdelegate`, `memory_recursiveprot`, …) are read from `/proc/self/mountinfo` and given
//! again; a mount with an option that is not a plain flag is left alone.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

/// The option's name, as the kernel spells it.
pub const FAVORDYNMODS: &str = "favordynmods";

/// What [`favor_dynamic_modifications`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The cgroup2 mount at this path had the option already.
    AlreadySet(PathBuf),
    /// The option was set on the cgroup2 mount at this path, its other options kept.
    Set(PathBuf),
    /// The host has no cgroup2 mount in this mount namespace (a pure v1 host: v1 hierarchies
    /// take no option changes on remount).
    NoCgroup2,
}

/// A cgroup2 mount as `/proc/self/mountinfo` shows it: where, and its superblock's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2Mount {
    /// Its mount point.
    pub path: PathBuf,
    /// Its superblock's options, `rw` first, as the kernel lists them.
    pub super_options: Vec<String>,
}

/// This mount namespace's first cgroup2 mount; `None` on a host without one. Errors: reading
/// `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> std::io::Result<Option<Cgroup2Mount>> {
    Ok(find_cgroup2(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The first cgroup2 mount of a `/proc/self/mountinfo` text (proc(5): the fields after the
/// ` - ` separator are the filesystem type, the source and the superblock's options; the
/// fifth field is the mount point, with space, tab, newline and backslash octal-escaped).
fn find_cgroup2(mountinfo: &str) -> Option<Cgroup2Mount> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mut tail = after.split(' ');
        if tail.next()? != "cgroup2" {
            return None;
        }
        let _source = tail.next()?;
        let super_options = tail.next().unwrap_or("").split(',').filter(|o| !o.is_empty()).map(str::to_owned).collect();
        let point = before.split(' ').nth(4)?;
        Some(Cgroup2Mount { path: PathBuf::from(unescape_octal(point)), super_options })
    })
}

/// Undoes mountinfo's `\ooo` escapes.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') as u32 * 64 + (bytes[i + 2] - b'0') as u32 * 8 + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The flags a reconfigure of `mount` must be given to keep its options and add
/// `favordynmods`; `None` when it has it already, or when an option is not a plain flag
/// (`key=value`), which this does not know how to give back.
fn flags_to_set(mount: &Cgroup2Mount) -> Option<Vec<String>> {
    if mount.super_options.iter().any(|o| o == FAVORDYNMODS) {
        return None;
    }
    let mut flags = Vec::new();
    for o in &mount.super_options {
        match o.as_str() {
            // Read-only or not is the mount's, not the superblock's context here.
            "rw" | "ro" => {}
            o if o.contains('=') => return None,
            o => flags.push(o.to_owned()),
        }
    }
    flags.push(FAVORDYNMODS.to_owned());
    Some(flags)
}

/// Sets `favordynmods` on this mount namespace's cgroup2 mount, keeping its other options.
/// Errors: no privilege over the mount (`EPERM`: a server in a container), a kernel that
/// predates the option (`EINVAL`, before Linux 6.0) or the new mount API (`ENOSYS`), or a
/// mount whose options are not all plain flags.
pub fn favor_dynamic_modifications() -> std::io::Result<Outcome> {
    let Some(mount) = cgroup2_mount()? else { return Ok(Outcome::NoCgroup2) };
    if mount.super_options.iter().any(|o| o == FAVORDYNMODS) {
        return Ok(Outcome::AlreadySet(mount.path));
    }
    let Some(flags) = flags_to_set(&mount) else {
        return Err(std::io::Error::other(format!(
            "the cgroup2 mount {} has an option that is not a flag ({}): left as it is",
            mount.path.display(),
            mount.super_options.join(",")
        )));
    };
    reconfigure(&mount.path, &flags)?;
    Ok(Outcome::Set(mount.path))
}

/// `fsconfig` commands (`<linux/mount.h>`).
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_CMD_RECONFIGURE: libc::c_uint = 7;

/// Reconfigures the cgroup2 superblock mounted at `path` with exactly `flags` (each a plain
/// flag such as `nsdelegate`): a flag left out is cleared. Errors: `fspick` or `fsconfig`'s
/// (`EPERM` without privilege over the mount, `EINVAL` for a flag the kernel does not know,
/// `ENOSYS` without the new mount API); on an error the mount is as it was.
pub fn reconfigure(path: &std::path::Path, flags: &[String]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let invalid = |_| std::io::Error::from_raw_os_error(libc::EINVAL);
    let path = CString::new(path.as_os_str().as_bytes()).map_err(invalid)?;
    // SAFETY: a NUL-terminated path; the call returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_fspick, libc::AT_FDCWD, path.as_ptr(), crate::rootfs::FSPICK_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `fd` was just returned by fspick and is owned here alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    for flag in flags {
        let key = CString::new(flag.as_bytes()).map_err(invalid)?;
        // SAFETY: a valid fs context descriptor and a NUL-terminated key; a flag has no value.
        let set = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fd.as_raw_fd(),
                FSCONFIG_SET_FLAG,
                key.as_ptr(),
                std::ptr::null::<libc::c_void>(),
                0,
            )
        };
        if set < 0 {
            // Nothing is applied before the reconfigure: the mount is as it was.
            return Err(std::io::Error::last_os_error());
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const V1_HOST: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:28 / /sys/fs/cgroup/cpu rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu
";

    #[test]
    fn the_cgroup2_mount_and_its_options_are_read_from_mountinfo() {
        let m = find_cgroup2(V1_HOST).unwrap();
        assert_eq!(m.path, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m.super_options, ["rw", "nsdelegate"]);
        // Optional fields before the separator, and an escaped mount point.
        let odd = "40 1 0:30 / /mnt/cg\\040two rw shared:1 master:2 - cgroup2 none rw,memory_recursiveprot\n";
        let m = find_cgroup2(odd).unwrap();
        assert_eq!(m.path, PathBuf::from("/mnt/cg two"));
        assert_eq!(m.super_options, ["rw", "memory_recursiveprot"]);
        assert_eq!(find_cgroup2("33 31 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"), None);
    }

    #[test]
    fn a_reconfigure_gives_back_every_flag_and_adds_the_option_once() {
        let m = find_cgroup2(V1_HOST).unwrap();
        assert_eq!(flags_to_set(&m).unwrap(), ["nsdelegate", "favordynmods"]);
        let set = Cgroup2Mount { path: "/x".into(), super_options: vec!["rw".into(), "favordynmods".into()] };
        assert_eq!(flags_to_set(&set), None);
        // An option with a value is not a flag this can give back: the mount is left alone.
        let valued = Cgroup2Mount { path: "/x".into(), super_options: vec!["rw".into(), "future=1".into()] };
        assert_eq!(flags_to_set(&valued), None);
    }
}
