//! Unpacking one layer (a tar, plain, gzip or zstd) into a directory of its own, under the
//! archive rules of [`crate::archive`], with OCI whiteouts turned into overlayfs's.
//!
//! The tar is read with the archive module's hardened reader (bounded headers, long names and
//! PAX records, metered decompression) and every entry is checked with its checks before
//! anything is written for it; writes go through [`confined::Builder`], which follows no
//! symlink at all, so the layer's own symlinks (`etc -> /host/etc`, or a directory of a lower
//! layer the layer expects there) are data only. Unlike a tenant's upload, a layer keeps the
//! ids and modes its entries give (the store is root's; see [`super`]).

use std::ffi::CStr;
use std::io::{self, Read};
use std::path::Path;
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::{ImageError, UnpackOptions};
use crate::archive::{self, hostile, ArchiveError, Made, Seen, TarIn};
use crate::confined::{Builder, ConfinedError, Make, Owner};

/// Bytes of the decompressed stream allowed after the end of the archive (padding to a tar
/// record: GNU tar pads to 10 KiB).
const MAX_TRAILER: u64 = 1 << 20;
/// The prefix of an OCI whiteout's name.
const WHITEOUT: &[u8] = b".wh.";
/// The name of an OCI opaque-directory marker.
const OPAQUE: &[u8] = b".wh..wh..opq";
/// The overlayfs attribute of an opaque directory.
const OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";

/// What an import may still unpack, shared by all its layers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub(crate) bytes_left: u64,
    pub(crate) entries_left: u64,
    pub(crate) max_bytes: u64,
    pub(crate) max_entries: u64,
}

impl Budget {
    pub(crate) fn new(options: &UnpackOptions) -> Budget {
        Budget {
            bytes_left: options.max_bytes,
            entries_left: options.max_entries,
            max_bytes: options.max_bytes,
            max_entries: options.max_entries,
        }
    }
}

/// Feeds what is read through it to a SHA-256.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// `sha256:<hex>` of a finished hash.
pub(crate) fn digest_of(hasher: Sha256) -> String {
    let sum = hasher.finalize();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in sum {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// How writing an entry failed.
enum WriteFail {
    Confined(ConfinedError),
    Archive(ArchiveError),
}

impl From<ConfinedError> for WriteFail {
    fn from(e: ConfinedError) -> Self {
        WriteFail::Confined(e)
    }
}

/// An entry's id from its PAX record, else its header.
fn entry_id(entry: &archive::InEntry, key: &str, shown: &str) -> Result<u32, ArchiveError> {
    let value = match archive::pax_value(&entry.pax, key) {
        Some(v) => std::str::from_utf8(v).ok().and_then(|v| v.parse::<u64>().ok()),
        None if key == "uid" => entry.header.uid().ok(),
        None => entry.header.gid().ok(),
    };
    value
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v != u32::MAX)
        .ok_or_else(|| hostile(shown, format!("{key} is malformed or out of range")))
}

/// Unpacks the layer blob `blob` into the empty directory `dest`, checking the tar stream
/// against `diff_id` (`sha256:<hex>` of the uncompressed tar). Returns the bytes of file data
/// written. On error `dest` holds a part of the layer and is meant to be removed.
///
/// Errors: [`ImageError::Invalid`] naming the layer and entry for what the archive rules
/// refuse; [`ImageError::TooLarge`] past `budget`; [`ImageError::DigestMismatch`] when the
/// uncompressed stream is not `diff_id`.
pub(crate) fn unpack(
    blob: impl Read,
    dest: &Path,
    layer: &str,
    diff_id: &str,
    options: &UnpackOptions,
    budget: &mut Budget,
) -> Result<u64, ImageError> {
    let in_layer = |e: ArchiveError| -> ImageError {
        match e {
            ArchiveError::TooLarge { .. } => ImageError::TooLarge(format!("layer {layer}: {e}")),
            ArchiveError::Hostile { .. } | ArchiveError::Corrupt(_) => {
                ImageError::Invalid(format!("layer {layer}: {e}"))
            }
            ArchiveError::NoSpace => ImageError::Io {
                what: format!("unpack layer {layer}"),
                source: io::Error::from_raw_os_error(libc::ENOSPC),
            },
            // Entries that contradict each other (a path through a file, a file over a
            // directory that is not empty): the layer is at fault, not the host.
            ArchiveError::Write { entry, source } => {
                let source = io::Error::from(source);
                if is_conflict(&source) {
                    return ImageError::Invalid(format!("layer {layer}: entry {entry:?}: {}", chain(&source)));
                }
                ImageError::Io { what: format!("unpack layer {layer}: entry {entry:?}"), source }
            }
        }
    };
    let builder =
        Builder::open(dest).map_err(|e| ImageError::Io { what: "open layer directory".into(), source: e.into() })?;
    let decoded = archive::decompress(io::BufReader::new(blob))
        .map_err(|e| ImageError::Invalid(format!("layer {layer}: {e}")))?;
    let mut tar = TarIn::new(Hashing { inner: decoded, hasher: Sha256::new() });
    let bytes = entries(&mut tar, &builder, options, budget).map_err(in_layer)?;
    let hashing = tar.finish(MAX_TRAILER).map_err(in_layer)?;
    let actual = digest_of(hashing.hasher);
    if actual != diff_id {
        return Err(ImageError::DigestMismatch { expected: diff_id.to_owned(), actual });
    }
    builder.sync().map_err(|e| ImageError::Io { what: format!("unpack layer {layer}"), source: e.into() })?;
    Ok(bytes)
}

/// Writes the entries of `tar` into `builder`'s tree; returns the bytes of data written.
fn entries<R: Read>(
    tar: &mut TarIn<archive::Metered<R>>,
    builder: &Builder,
    options: &UnpackOptions,
    budget: &mut Budget,
) -> Result<u64, ArchiveError> {
    let mut seen = Seen::new();
    let mut dir_times: Vec<(Vec<Vec<u8>>, SystemTime)> = Vec::new();
    let mut bytes = 0u64;
    while let Some(mut entry) = tar.next()? {
        let shown = String::from_utf8_lossy(&entry.path).into_owned();
        if budget.entries_left == 0 {
            return Err(ArchiveError::TooLarge {
                entry: Some(shown),
                reason: format!("the image has more than {} entries", budget.max_entries),
            });
        }
        budget.entries_left -= 1;
        let size = entry.size;
        let kind = if entry.sparse.is_some() { EntryType::GNUSparse } else { entry.header.entry_type() };

        // Every check, before anything is written for this entry.
        let path_bytes = std::mem::take(&mut entry.path);
        let comps = archive::check_path(&shown, &path_bytes, "path")?;
        let mode = entry.header.mode().map_err(|e| ArchiveError::Corrupt(format!("entry {shown:?}: {e}")))?;
        let owner = Owner { uid: entry_id(&entry, "uid", &shown)?, gid: entry_id(&entry, "gid", &shown)? };
        // A setgid directory only passes its group on to new files: no privilege.
        let privileged = mode & 0o4000 != 0 || (mode & 0o2000 != 0 && kind != EntryType::Directory);
        if privileged && !options.allow_setuid {
            return Err(hostile(&shown, "setuid or setgid bit (allowed only in public images)"));
        }
        if let Some(prefix) = seen.symlink_prefix(&comps) {
            return Err(hostile(&shown, format!("path goes through the symlink {prefix:?}")));
        }
        if size > budget.bytes_left {
            return Err(ArchiveError::TooLarge {
                entry: Some(shown),
                reason: format!("the image unpacks to more than {} bytes", budget.max_bytes),
            });
        }
        budget.bytes_left -= size;
        bytes += size;
        tar.allow(size);
        let write_error = |source: ConfinedError| match source {
            ConfinedError::NoSpace => ArchiveError::NoSpace,
            source => ArchiveError::Write { entry: shown.clone(), source },
        };

        // Whiteouts: whatever the entry's type, its name says it all.
        if let Some((name, parent)) = comps.split_last() {
            if *name == OPAQUE {
                builder.set_dir_xattr(parent, OPAQUE_XATTR, b"y").map_err(write_error)?;
                seen.record(parent, Made::Dir);
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT) {
                if hidden.is_empty() || hidden == b"." || hidden == b".." {
                    return Err(hostile(&shown, "whiteout names no entry of its directory"));
                }
                if hidden.starts_with(WHITEOUT) {
                    return Err(hostile(&shown, "unsupported whiteout (only `.wh.<name>` and `.wh..wh..opq`)"));
                }
                let mut target = parent.to_vec();
                target.push(hidden);
                builder.make(&target, Make::Whiteout, 0, owner).map_err(write_error)?;
                seen.record(&target, Made::Other);
                continue;
            }
        }

        match kind {
            EntryType::Directory => {
                builder.make(&comps, Make::Dir, mode, owner).map_err(write_error)?;
                if let Some(t) = entry.mtime {
                    dir_times.push((comps.iter().map(|c| c.to_vec()).collect(), t));
                }
                seen.record(&comps, Made::Dir);
                continue;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse if comps.is_empty() => {
                return Err(hostile(&shown, "names the layer's root"));
            }
            EntryType::Regular | EntryType::Continuous => {
                let written = builder.file(&comps, mode, owner, |file| copy_data(tar, file, size, &shown));
                match written {
                    Ok(n) if n == size => {}
                    Ok(_) => return Err(ArchiveError::Corrupt(format!("entry {shown:?} is truncated"))),
                    Err(WriteFail::Archive(e)) => return Err(e),
                    Err(WriteFail::Confined(e)) => return Err(write_error(e)),
                }
                seen.record(&comps, Made::File);
            }
            EntryType::GNUSparse => {
                let map = entry.sparse.take().unwrap_or_default();
                map.check(size).map_err(|reason| hostile(&shown, reason))?;
                let written = builder.file(&comps, mode, owner, |file| {
                    archive::fill_sparse(file, tar, &map, &shown).map_err(WriteFail::Archive)
                });
                match written {
                    Ok(()) => {}
                    Err(WriteFail::Archive(e)) => return Err(e),
                    Err(WriteFail::Confined(e)) => return Err(write_error(e)),
                }
                seen.record(&comps, Made::File);
            }
            EntryType::Symlink if !comps.is_empty() => {
                let target = entry.link.as_deref().ok_or_else(|| hostile(&shown, "symlink without target"))?;
                let target = archive::check_symlink(&shown, target)?;
                builder.make(&comps, Make::Symlink(&target), mode, owner).map_err(write_error)?;
                seen.record(&comps, Made::Symlink);
            }
            EntryType::Link if !comps.is_empty() => {
                let target = entry.link.as_deref().ok_or_else(|| hostile(&shown, "hard link without target"))?;
                let target = archive::check_path(&shown, target, "hard link target")?;
                if seen.made(&target) != Some(Made::File) {
                    return Err(hostile(&shown, "hard link target is not an earlier file of the layer"));
                }
                builder.make(&comps, Make::HardLink(&target), mode, owner).map_err(write_error)?;
                seen.record(&comps, Made::File);
                // A link has the times of its file.
                continue;
            }
            EntryType::Symlink | EntryType::Link => return Err(hostile(&shown, "names the layer's root")),
            EntryType::Char => return Err(hostile(&shown, "character device")),
            EntryType::Block => return Err(hostile(&shown, "block device")),
            EntryType::Fifo => return Err(hostile(&shown, "fifo")),
            other => return Err(hostile(&shown, format!("unsupported entry type {:?}", other.as_byte() as char))),
        }
        if let Some(t) = entry.mtime {
            builder.set_modified(&comps, t).map_err(write_error)?;
        }
    }
    // Last, as writing into a directory changes its time.
    for (comps, t) in dir_times.iter().rev() {
        let comps: Vec<&[u8]> = comps.iter().map(Vec::as_slice).collect();
        builder.set_modified(&comps, *t).map_err(|source| ArchiveError::Write {
            entry: String::from_utf8_lossy(&comps.join(&b'/')).into_owned(),
            source,
        })?;
    }
    Ok(bytes)
}

/// An error and its sources, `: `-separated.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        out.push_str(": ");
        out.push_str(&inner.to_string());
        cur = inner.source();
    }
    out
}

/// Whether a write failed because of what the layer holds (rather than of the host).
fn is_conflict(e: &io::Error) -> bool {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<ConfinedError>());
    let errno = match inner {
        Some(ConfinedError::Io { source, .. }) => source.raw_os_error(),
        _ => e.raw_os_error(),
    };
    matches!(
        errno,
        Some(
            libc::ENOTDIR
                | libc::EISDIR
                | libc::ENOTEMPTY
                | libc::EEXIST
                | libc::ELOOP
                | libc::EMLINK
                | libc::ENAMETOOLONG
        )
    )
}

/// Copies the `size` bytes of an entry's data from `tar` into `file`.
fn copy_data<R: Read>(tar: &mut TarIn<R>, file: &mut std::fs::File, size: u64, shown: &str) -> Result<u64, WriteFail> {
    use std::io::Write;
    let mut buf = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    while written < size {
        let want = buf.len().min(usize::try_from(size - written).unwrap_or(usize::MAX));
        let n = match tar.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(WriteFail::Archive(tar.fail(Some(shown), e))),
        };
        file.write_all(&buf[..n]).map_err(|e| {
            WriteFail::Confined(if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
                ConfinedError::NoSpace
            } else {
                ConfinedError::Io { op: "write", path: shown.to_owned(), source: e }
            })
        })?;
        written += n as u64;
    }
    Ok(written)
}
