//! Directory listings of both files APIs (a sandbox's, served by its supervisor, and a
//! filesystem's, served on the host) in one shape: entries as `lstat(2)` sees them, names and
//! symlink targets as exact bytes, sorted by those bytes, one bounded page at a time.

use std::os::unix::ffi::OsStrExt;
use std::time::UNIX_EPOCH;

pub use bulkhead_runtime::FileType;

/// Most entries in one page of a listing, and the default page size.
pub const MAX_PAGE: u32 = bulkhead_supervisor::protocol::MAX_LIST;

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEntry {
    /// The exact bytes of the name.
    pub name: Vec<u8>,
    pub file_type: FileType,
    pub size: u64,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    /// Milliseconds since the Unix epoch.
    pub mtime_ms: i64,
    /// A symlink's target as stored, exact bytes.
    pub target: Option<Vec<u8>>,
}

/// One page of a directory: entries sorted by name, and whether more follow the last.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listing {
    pub entries: Vec<ListedEntry>,
    pub more: bool,
}

impl From<bulkhead_runtime::DirEntry> for ListedEntry {
    fn from(e: bulkhead_runtime::DirEntry) -> Self {
        ListedEntry {
            name: e.name_bytes().to_vec(),
            file_type: e.file_type,
            size: e.size,
            mode: e.mode & 0o7777,
            mtime_ms: e.mtime_ms,
            target: e.target_bytes.or_else(|| e.target.map(String::into_bytes)),
        }
    }
}

impl From<bulkhead_runtime::confined::Entry> for ListedEntry {
    fn from(e: bulkhead_runtime::confined::Entry) -> Self {
        let mtime_ms = match e.modified.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
        };
        ListedEntry {
            name: e.name.as_bytes().to_vec(),
            file_type: e.file_type,
            size: e.size,
            mode: e.mode & 0o7777,
            mtime_ms,
            target: e.target.map(|t| t.as_os_str().as_bytes().to_vec()),
        }
    }
}
