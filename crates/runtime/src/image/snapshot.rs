//! A sandbox's changes to its image as an OCI layer: its root's upper layer (overlayfs's
//! format, see [`crate::rootfs::upper_of`]) written as a layer tar in the OCI image spec's
//! format (`layer.md`): a whiteout (a 0:0 character device) becomes an empty `.wh.<name>`
//! entry, an opaque directory (`trusted.overlay.opaque=y`) gets a `.wh..wh..opq` entry, ids go
//! back from the namespace's host range to the image's own, hard links stay links.
//!
//! The caller freezes the sandbox while this reads its upper layer (nothing in it can change or
//! swap a file for a link meanwhile); the walk never follows a symbolic link either; what a layer
//! cannot carry (sockets, fifos, devices other than whiteouts, ids outside the namespace's
//! range) is left out and counted. Setuid and setgid bits of files are dropped (and counted):
//! a namespace's private images carry none, and inside a sandbox (`no_new_privs`) they grant
//! nothing anyway. The mount points Bulkhead's runtime makes in every root
//! ([`SKIPPED_TOP`]) are left out too.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::ImageError;
use crate::IdRange;

/// Top-level entries of an upper layer that the runtime, not the sandbox, made: the
/// supervisor's directory and the attached filesystem's mount point.
pub const SKIPPED_TOP: &[&str] = &[".bulkhead", "workspace"];

/// What [`write_layer`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Entries written (whiteouts included).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Entries left out: sockets, fifos, devices, ids outside the range.
    pub skipped: u64,
    /// Files whose setuid or setgid bit was dropped.
    pub setid_dropped: u64,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}

/// Whether `path` (a directory) is an overlayfs opaque directory.
fn is_opaque(path: &Path) -> bool {
    let (Ok(c), Ok(name)) = (CString::new(path.as_os_str().as_bytes()), CString::new("trusted.overlay.opaque")) else {
        return false;
    };
    let mut value = [0u8; 4];
    // SAFETY: valid C strings and a buffer of the length passed.
    let n = unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    n == 1 && value[0] == b'y'
}

/// Writes the changes in `upper` (an overlayfs upper directory whose files are owned by
/// `ids`'s host range) to `out` as an uncompressed OCI layer tar. Errors: reading the upper
/// directory or writing `out` failed.
pub fn write_layer(upper: &Path, ids: IdRange, out: impl Write) -> Result<LayerStats, ImageError> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let mut stats = LayerStats::default();
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = upper.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(io_err(format!("read {}", dir.display())))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err(format!("read {}", dir.display())))?;
        names.sort();
        for name in names {
            if rel.as_os_str().is_empty() && SKIPPED_TOP.iter().any(|s| name == *s) {
                continue;
            }
            let path = dir.join(&name);
            let entry_rel = rel.join(&name);
            let meta = fs::symlink_metadata(&path).map_err(io_err(format!("stat {}", path.display())))?;
            let ft = meta.file_type();
            if ft.is_char_device() && meta.rdev() == 0 {
                let mut wh = std::ffi::OsString::from(".wh.");
                wh.push(&name);
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(0);
                header.set_mode(0o600);
                header.set_uid(0);
                header.set_gid(0);
                header.set_mtime(meta.mtime().max(0) as u64);
                tar.append_data(&mut header, rel.join(wh), io::empty()).map_err(io_err("write a whiteout"))?;
                stats.entries += 1;
                continue;
            }
            let (Some(uid), Some(gid)) = (image_id(meta.uid(), ids), image_id(meta.gid(), ids)) else {
                stats.skipped += 1;
                continue;
            };
            let mut header = tar::Header::new_gnu();
            let mut mode = meta.mode() & 0o7777;
            if !ft.is_dir() && mode & 0o6000 != 0 {
                mode &= !0o6000;
                stats.setid_dropped += 1;
            }
            header.set_mode(mode);
            header.set_uid(uid.into());
            header.set_gid(gid.into());
            header.set_mtime(meta.mtime().max(0) as u64);
            if ft.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, &entry_rel, io::empty()).map_err(io_err("write a directory"))?;
                stats.entries += 1;
                if is_opaque(&path) {
                    let mut opq = tar::Header::new_gnu();
                    opq.set_entry_type(tar::EntryType::Regular);
                    opq.set_size(0);
                    opq.set_mode(0o600);
                    opq.set_uid(0);
                    opq.set_gid(0);
                    opq.set_mtime(0);
                    tar.append_data(&mut opq, entry_rel.join(".wh..wh..opq"), io::empty())
                        .map_err(io_err("write an opaque marker"))?;
                    stats.entries += 1;
                }
                stack.push(entry_rel);
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).map_err(io_err(format!("read the link {}", path.display())))?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, &entry_rel, &target).map_err(io_err("write a symlink"))?;
                stats.entries += 1;
            } else if ft.is_file() {
                if meta.nlink() > 1 {
                    if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                        header.set_entry_type(tar::EntryType::Link);
                        header.set_size(0);
                        tar.append_link(&mut header, &entry_rel, first).map_err(io_err("write a hard link"))?;
                        stats.entries += 1;
                        continue;
                    }
                    links.insert((meta.dev(), meta.ino()), entry_rel.clone());
                }
                // Never through a link, never waiting on a fifo: the caller froze the sandbox,
                // and this holds even if it did not.
                let file = {
                    use std::os::unix::fs::OpenOptionsExt;
                    fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                        .open(&path)
                        .map_err(io_err(format!("open {}", path.display())))?
                };
                if !file.metadata().is_ok_and(|m| m.is_file() && m.ino() == meta.ino()) {
                    stats.skipped += 1;
                    continue;
                }
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(meta.len());
                tar.append_data(&mut header, &entry_rel, file).map_err(io_err(format!("copy {}", path.display())))?;
                stats.entries += 1;
                stats.bytes += meta.len();
            } else {
                stats.skipped += 1;
            }
        }
    }
    tar.into_inner().map_err(io_err("finish the layer"))?.flush().map_err(io_err("finish the layer"))?;
    Ok(stats)
}

/// The image's id of host id `host` in `ids`' range.
fn image_id(host: u32, ids: IdRange) -> Option<u32> {
    host.checked_sub(ids.host_start).filter(|id| *id < ids.size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upper_layer_becomes_an_oci_layer_with_whiteouts_opaque_dirs_links_and_image_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let upper = tmp.path().join("u");
        let ids = IdRange { host_start: 4_000_000, size: 65536 };
        fs::create_dir_all(upper.join("etc/opaque")).unwrap();
        fs::create_dir_all(upper.join(".bulkhead")).unwrap();
        fs::write(upper.join("etc/new"), "new\n").unwrap();
        fs::hard_link(upper.join("etc/new"), upper.join("etc/same")).unwrap();
        std::os::unix::fs::symlink("/etc/new", upper.join("link")).unwrap();
        for p in ["etc", "etc/opaque", "etc/new", "link"] {
            std::os::unix::fs::lchown(upper.join(p), Some(4_001_000), Some(4_000_000)).unwrap();
        }
        std::os::unix::fs::lchown(&upper, Some(4_000_000), Some(4_000_000)).unwrap();
        let st =
            std::process::Command::new("mknod").arg(upper.join("etc/gone")).args(["c", "0", "0"]).status().unwrap();
        assert!(st.success());
        let opaque = CString::new(upper.join("etc/opaque").as_os_str().as_bytes()).unwrap();
        let key = CString::new("trusted.overlay.opaque").unwrap();
        // SAFETY: valid C strings and value.
        assert_eq!(unsafe { libc::lsetxattr(opaque.as_ptr(), key.as_ptr(), b"y".as_ptr().cast(), 1, 0) }, 0);
        // Outside the range: left out.
        fs::write(upper.join("foreign"), "x").unwrap();
        std::os::unix::fs::lchown(upper.join("foreign"), Some(10), Some(10)).unwrap();

        let mut out = Vec::new();
        let stats = write_layer(&upper, ids, &mut out).unwrap();
        assert_eq!(stats.skipped, 1);
        let mut archive = tar::Archive::new(out.as_slice());
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            seen.push((
                e.path().unwrap().display().to_string(),
                h.entry_type(),
                h.uid().unwrap(),
                e.link_name().unwrap().map(|l| l.display().to_string()),
            ));
        }
        let find = |p: &str| seen.iter().find(|s| s.0 == p).unwrap_or_else(|| panic!("{p} in {seen:?}")).clone();
        assert_eq!(find("etc").2, 1000);
        assert_eq!(find("etc/.wh.gone").1, tar::EntryType::Regular);
        assert_eq!(find("etc/opaque/.wh..wh..opq").1, tar::EntryType::Regular);
        let (new, same) = (find("etc/new"), find("etc/same"));
        assert!(
            (new.1 == tar::EntryType::Regular
                && same.1 == tar::EntryType::Link
                && same.3.as_deref() == Some("etc/new"))
                || (same.1 == tar::EntryType::Regular && new.3.as_deref() == Some("etc/same")),
            "{seen:?}"
        );
        assert_eq!(find("link").3.as_deref(), Some("/etc/new"));
        assert!(!seen.iter().any(|s| s.0.starts_with(".bulkhead") || s.0 == "foreign"), "{seen:?}");
    }
}
