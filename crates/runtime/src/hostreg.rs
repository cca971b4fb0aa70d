//! The host registry: one file per host, outside any server's data dir, that says which server
//! holds which host-global resource, so that several Bulkhead servers on one host never share
//! one.
//!
//! What it allocates:
//! - **host uid/gid ranges** of namespaces (`[start, start + size)`, mapped into their
//!   sandboxes' user namespaces);
//! - **cgroup prefixes** (the top cgroup of a server: two servers in one prefix would remove
//!   each other's namespace cgroups);
//! - a **name prefix** per owner for host-global names (network namespaces, veth pairs), short
//!   enough for a 15-byte interface name. A new owner's prefix is drawn at random among those
//!   no owner holds and that no name on the host starts with (a link of the host's network
//!   namespace, an entry of `/run/netns`, an nftables table): servers with registries of their
//!   own (every test server has one) then almost never meet, and never on what exists already.
//!
//! Loop devices are not in it: the kernel's `loop-control` allocator (`LOOP_CTL_GET_FREE`,
//! which `mount -o loop` uses) hands each image its own device atomically.
//!
//! An **owner** is a store, named by the id the store keeps (not by a path): replicas of one
//! store share its namespaces and therefore its ranges, so they are one owner.
//!
//! The file survives reboots on purpose (the default is under `/var/lib`): uid ranges outlive
//! every process, because files on disk (filesystem images) stay owned by them.
//!
//! Format (version 1): one line of JSON (closed: unknown fields are refused) and a line
//! `sha256 <hex>` with the digest of the JSON line's bytes. Every change takes an exclusive
//! `flock` on `<path>.lock` (never replaced, so the lock is always on one inode), reads and
//! checks the whole file, and writes the new one to `<path>.tmp`, fsyncs it, renames it over
//! the old one and fsyncs the directory: a reader sees the old map or the new one, never half.
//! A file that fails any check (size, checksum, format, version, bounds, overlaps, unknown
//! owners) is an error that names the file, never a panic and never silently rewritten.
//!
//! Reuse: a released uid range is not handed out again while never-used ranges remain; when
//! the space is used up, the range released longest ago goes first. An owner releases a range
//! only once everything of its namespace is gone from the host (its filesystem images are
//! deleted, its sandboxes torn down), so no file owned by a range's ids is left when it is
//! handed to someone else.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::IdRange;

/// Where `bulkhead serve` keeps the registry unless told otherwise: persistent across reboots
/// and outside every data dir.
pub const DEFAULT_PATH: &str = "/var/lib/bulkhead-host/registry";
/// First host id of namespace ranges; below it are the host's own users and the usual
/// `/etc/subuid` ranges.
pub const ID_BASE: u32 = 1_000_000;
/// Ids per namespace: a full 16-bit range, so images with users up to 65535 work.
pub const ID_RANGE: u32 = 65_536;
/// Ranges end at or below this id (exclusive); `u32::MAX` is `(uid_t)-1`, never a real id.
pub const ID_LIMIT: u32 = u32::MAX;
/// The largest registry file read; beyond it the file is corrupt.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

const FORMAT: &str = "bulkhead-host-registry";
const VERSION: u32 = 1;
const MAX_LABEL_BYTES: usize = 4096;
const MAX_PREFIX_BYTES: usize = 64;

/// Errors of the registry. None of them is a panic: a corrupt file is `Corrupt`.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("host registry {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("host registry {} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// The file, its lock or its directory is not what the server itself made: a symlink, a
    /// fifo or other non-regular file, or owned or writable by another user.
    #[error("host registry {} is not trusted: {reason}", path.display())]
    Untrusted { path: PathBuf, reason: String },
    /// Another owner holds the resource.
    #[error("{what} is held by store {owner} ({label}) in the host registry {}", path.display())]
    Taken { what: String, owner: String, label: String, path: PathBuf },
    #[error("host registry {}: no host id range is free", path.display())]
    Exhausted { path: PathBuf },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// One owner: a store, by its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    /// The store's id.
    pub id: String,
    /// For people: where the owner's data lives (its data dir).
    pub label: String,
    /// Top cgroups the owner's servers use.
    pub cgroup_prefixes: Vec<String>,
    /// Prefix of the owner's host-global names (network namespaces, veths): `bh` and four hex
    /// digits.
    pub net_prefix: String,
}

/// A uid/gid range held by an owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdClaim {
    pub owner: String,
    pub start: u32,
    pub size: u32,
    /// For people: the namespace that uses it.
    pub label: String,
}

impl IdClaim {
    fn range(&self) -> IdRange {
        IdRange { host_start: self.start, size: self.size }
    }
}

/// A released range, kept so that it is reused last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Released {
    start: u32,
    size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    format: String,
    version: u32,
    /// Ranges at or above this id have never been handed out (save those in `ids`).
    next_id: u32,
    owners: Vec<Owner>,
    ids: Vec<IdClaim>,
    /// Released ranges, the oldest release first.
    released: Vec<Released>,
}

impl Document {
    fn empty() -> Self {
        Self {
            format: FORMAT.to_owned(),
            version: VERSION,
            next_id: ID_BASE,
            owners: Vec::new(),
            ids: Vec::new(),
            released: Vec::new(),
        }
    }

    fn owner(&self, id: &str) -> Option<&Owner> {
        self.owners.iter().find(|o| o.id == id)
    }

    fn overlaps(&self, start: u32, size: u32) -> bool {
        let end = u64::from(start) + u64::from(size);
        let hit = |s: u32, z: u32| u64::from(s) < end && u64::from(start) < u64::from(s) + u64::from(z);
        self.ids.iter().any(|c| hit(c.start, c.size)) || self.released.iter().any(|r| hit(r.start, r.size))
    }
}

/// What [`HostRegistry::sync_ids`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Ranges the owner's store uses that the registry did not list yet.
    pub registered: usize,
    /// Ranges the registry listed for the owner that its store no longer uses.
    pub released: usize,
    /// Owners forgotten at a start because their data dir now holds another store
    /// ([`HostRegistry::start_owner`]).
    pub superseded: Vec<String>,
}

/// Removes `owner` from `doc` and releases everything it holds; whether it was there.
fn forget_in(doc: &mut Document, owner: &str) -> bool {
    let before = doc.owners.len();
    doc.owners.retain(|o| o.id != owner);
    let (gone, kept): (Vec<IdClaim>, Vec<IdClaim>) =
        std::mem::take(&mut doc.ids).into_iter().partition(|c| c.owner == owner);
    doc.ids = kept;
    doc.released.extend(gone.into_iter().map(|c| Released { start: c.start, size: c.size }));
    doc.owners.len() != before
}

/// The registry file and its lock.
#[derive(Debug, Clone)]
pub struct HostRegistry {
    path: PathBuf,
    lock_path: PathBuf,
    /// The host-global network names in use now (see [`host_net_names`]); a field so that
    /// tests can stand in for the host.
    host_names: fn() -> Vec<String>,
}

/// The host-global network names on this host now: the links of this process's network
/// namespace (`/sys/class/net`), the named network namespaces (`/run/netns`) and the nftables
/// tables (none when `nft` is missing). A name prefix any of them starts with is not handed out.
pub fn host_net_names() -> Vec<String> {
    let dir = |d: &str| -> Vec<String> {
        fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
    };
    let mut names = dir("/sys/class/net");
    names.extend(dir("/run/netns"));
    names.extend(crate::host::nft_tables().into_iter().map(|(_, name)| name));
    names
}

/// A name prefix (`bh` and four hex digits) that none of `held` is and no name of `host` starts
/// with, drawn at random: a random start, then the next free one.
fn pick_net_prefix(held: &std::collections::HashSet<&str>, host: &[String]) -> Option<String> {
    let on_host: std::collections::HashSet<&str> = host.iter().filter_map(|n| n.get(..6)).collect();
    let start = getrandom::u32().unwrap_or(0) & 0xffff;
    (0..=0xffffu32)
        .map(|i| format!("bh{:04x}", (start + i) & 0xffff))
        .find(|p| !held.contains(p.as_str()) && !on_host.contains(p.as_str()))
}

/// An exclusive `flock` held until dropped.
struct Lock {
    _file: File,
}

fn check_name(field: &'static str, s: &str, max: usize, allowed: impl Fn(u8) -> bool) -> Result<()> {
    if s.is_empty() || s.len() > max || !s.bytes().all(allowed) {
        return Err(RegistryError::Invalid { field, reason: format!("{s:?} is not 1 to {max} allowed characters") });
    }
    Ok(())
}

/// An owner id: a store id such as `sto_` and hex digits.
fn check_owner(s: &str) -> Result<()> {
    check_name("owner", s, 64, |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A cgroup prefix: one path component.
pub fn check_cgroup_prefix(s: &str) -> Result<()> {
    check_name("cgroup prefix", s, MAX_PREFIX_BYTES, |b| b.is_ascii_alphanumeric() || b"._-".contains(&b))?;
    if s.starts_with('.') {
        return Err(RegistryError::Invalid { field: "cgroup prefix", reason: format!("{s:?} starts with a dot") });
    }
    Ok(())
}

fn check_keep(keep: &[(IdRange, String)]) -> Result<()> {
    for (r, label) in keep {
        check_range(r.host_start, r.size)?;
        check_label("label", label)?;
    }
    Ok(())
}

fn check_label(field: &'static str, s: &str) -> Result<()> {
    if s.len() > MAX_LABEL_BYTES || s.chars().any(char::is_control) {
        return Err(RegistryError::Invalid { field, reason: "too long or has control characters".into() });
    }
    Ok(())
}

/// Whether `[start, start + size)` ends at or below [`ID_LIMIT`].
fn fits(start: u32, size: u32) -> bool {
    u64::from(start) + u64::from(size) <= u64::from(ID_LIMIT)
}

fn check_range(start: u32, size: u32) -> Result<()> {
    let ok = start >= ID_BASE && size > 0 && fits(start, size);
    if !ok {
        return Err(RegistryError::Invalid { field: "range", reason: format!("[{start}, +{size}) is out of bounds") });
    }
    Ok(())
}

fn validate(doc: &Document) -> Result<(), String> {
    if doc.format != FORMAT {
        return Err(format!("format is {:?}, not {FORMAT:?}", doc.format));
    }
    if doc.version != VERSION {
        return Err(format!("version {} is not {VERSION}", doc.version));
    }
    if !(ID_BASE..=ID_LIMIT).contains(&doc.next_id) {
        return Err(format!("next_id {} is out of bounds", doc.next_id));
    }
    let mut prefixes = std::collections::HashSet::new();
    let mut nets = std::collections::HashSet::new();
    let mut ids = std::collections::HashSet::new();
    for o in &doc.owners {
        check_owner(&o.id).map_err(|e| e.to_string())?;
        check_label("owner label", &o.label).map_err(|e| e.to_string())?;
        check_net_prefix(&o.net_prefix)?;
        if !ids.insert(o.id.as_str()) {
            return Err(format!("owner {} is listed twice", o.id));
        }
        if !nets.insert(o.net_prefix.as_str()) {
            return Err(format!("name prefix {} is held twice", o.net_prefix));
        }
        for p in &o.cgroup_prefixes {
            check_cgroup_prefix(p).map_err(|e| e.to_string())?;
            if !prefixes.insert(p.as_str()) {
                return Err(format!("cgroup prefix {p} is held twice"));
            }
        }
    }
    let mut ranges: Vec<(u32, u32)> = Vec::with_capacity(doc.ids.len() + doc.released.len());
    for c in &doc.ids {
        if !ids.contains(c.owner.as_str()) {
            return Err(format!("range {} names an unknown owner {}", c.start, c.owner));
        }
        check_label("range label", &c.label).map_err(|e| e.to_string())?;
        check_range(c.start, c.size).map_err(|e| e.to_string())?;
        ranges.push((c.start, c.size));
    }
    for r in &doc.released {
        check_range(r.start, r.size).map_err(|e| e.to_string())?;
        ranges.push((r.start, r.size));
    }
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if u64::from(a.0) + u64::from(a.1) > u64::from(b.0) {
            return Err(format!("ranges at {} and {} overlap", a.0, b.0));
        }
    }
    Ok(())
}

/// Whether `s` is a name prefix as the registry hands them out: `bh` and four lowercase hex digits.
pub fn check_net_prefix(s: &str) -> Result<(), String> {
    let ok = s.len() == 6
        && s.starts_with("bh")
        && s.bytes().skip(2).all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    if ok {
        Ok(())
    } else {
        Err(format!("name prefix {s:?} is not bh and four hex digits"))
    }
}

/// Whether `meta` is what only this process's user can have made and can change: owned by the
/// effective user and writable by nobody else. The registry decides which host ids a server
/// maps into its sandboxes, so a file another user could write would let that user hand
/// itself, or a tenant, another server's ids.
fn check_owned(meta: &fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(format!("owned by uid {}, not {euid}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!("writable by group or others (mode {:o})", meta.mode() & 0o7777));
    }
    Ok(())
}

/// Opens the registry's file or lock without following a symlink and without blocking on a
/// fifo, and checks that it is a regular file of this user (`check_owned`).
fn open_trusted(options: &mut OpenOptions, path: &Path) -> std::io::Result<Result<File, String>> {
    let file = match options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC).open(path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(Err("it is a symlink".into())),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Ok(Err("not a regular file".into()));
    }
    Ok(check_owned(&meta).map(|()| file))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file's bytes for `doc`.
fn encode(doc: &Document) -> Vec<u8> {
    // Serializing a struct of strings, integers and vectors cannot fail.
    let mut out = serde_json::to_vec(doc).unwrap_or_default();
    let sum = hex(&Sha256::digest(&out));
    out.extend_from_slice(format!("\nsha256 {sum}\n").as_bytes());
    out
}

/// The document in `bytes`, strictly: checksum, then a closed JSON shape, then the map's rules.
fn decode(bytes: &[u8]) -> Result<Document, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let body = text.strip_suffix('\n').ok_or("does not end with a newline")?;
    let (json, trailer) = body.rsplit_once('\n').ok_or("has no checksum line")?;
    let sum = trailer.strip_prefix("sha256 ").ok_or("the last line is not `sha256 <hex>`")?;
    if sum != hex(&Sha256::digest(json.as_bytes())) {
        return Err("checksum mismatch".into());
    }
    if json.contains('\n') {
        return Err("more than one line of JSON".into());
    }
    let doc: Document = serde_json::from_str(json).map_err(|e| format!("bad JSON: {e}"))?;
    validate(&doc)?;
    Ok(doc)
}

impl HostRegistry {
    /// The registry at `path` (its lock is `<path>.lock`); creates the directory (0700) when
    /// missing, and reads the file once, so a corrupt registry fails here.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| RegistryError::Io { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
            // The directory too: whoever can write it can replace the file or its lock.
            let meta = fs::metadata(dir).map_err(|source| RegistryError::Io { path: path.to_owned(), source })?;
            check_owned(&meta).map_err(|reason| RegistryError::Untrusted {
                path: path.to_owned(),
                reason: format!("its directory {} is {reason}", dir.display()),
            })?;
        }
        let mut lock_name = path.as_os_str().to_owned();
        lock_name.push(".lock");
        let registry = Self { path: path.to_owned(), lock_path: PathBuf::from(lock_name), host_names: host_net_names };
        let _lock = registry.lock()?;
        registry.read()?;
        Ok(registry)
    }

    /// The same registry judging the host's names in use by `names` instead of
    /// [`host_net_names`] (for tests).
    pub fn with_host_names(mut self, names: fn() -> Vec<String>) -> Self {
        self.host_names = names;
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
        move |source| RegistryError::Io { path: self.path.clone(), source }
    }

    fn corrupt(&self, reason: String) -> RegistryError {
        RegistryError::Corrupt { path: self.path.clone(), reason }
    }

    fn lock(&self) -> Result<Lock> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false).mode(0o600);
        let file = open_trusted(&mut options, &self.lock_path)
            .map_err(|source| RegistryError::Io { path: self.lock_path.clone(), source })?
            .map_err(|reason| RegistryError::Untrusted { path: self.lock_path.clone(), reason })?;
        loop {
            // SAFETY: `file` owns an open descriptor for the whole call; flock takes no
            // pointers and only changes the lock state of that open file description.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if r == 0 {
                return Ok(Lock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(RegistryError::Io { path: self.lock_path.clone(), source: e });
            }
        }
    }

    /// The document on disk; an empty map when there is no file yet. Call with the lock held.
    fn read(&self) -> Result<Document> {
        let file = match open_trusted(OpenOptions::new().read(true), &self.path) {
            Ok(Ok(f)) => f,
            Ok(Err(reason)) => return Err(RegistryError::Untrusted { path: self.path.clone(), reason }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Document::empty()),
            Err(e) => return Err(self.io()(e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(self.io())?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(self.corrupt(format!("larger than {MAX_FILE_BYTES} bytes")));
        }
        decode(&bytes).map_err(|r| self.corrupt(r))
    }

    /// Replaces the file with `doc`: temporary file, fsync, rename, fsync of the directory.
    fn write(&self, doc: &Document) -> Result<()> {
        let mut tmp_name = self.path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(self.io())?;
        f.write_all(&encode(doc)).map_err(self.io())?;
        f.sync_all().map_err(self.io())?;
        fs::rename(&tmp, &self.path).map_err(self.io())?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(self.io())?;
        }
        Ok(())
    }

    /// Runs `change` on the current map under the lock and writes the result when it changed.
    fn transact<T>(&self, change: impl FnOnce(&mut Document) -> Result<T>) -> Result<T> {
        let _lock = self.lock()?;
        let before = self.read()?;
        let mut doc = before.clone();
        let out = change(&mut doc)?;
        if doc != before {
            validate(&doc).map_err(|r| self.corrupt(format!("a change would break the map: {r}")))?;
            self.write(&doc)?;
        }
        Ok(out)
    }

    fn taken(&self, doc: &Document, what: String, owner: &str) -> RegistryError {
        let label = doc.owner(owner).map(|o| o.label.clone()).unwrap_or_default();
        RegistryError::Taken { what, owner: owner.to_owned(), label, path: self.path.clone() }
    }

    /// Registers `owner` (or updates its label) and returns its entry.
    pub fn register_owner(&self, owner: &str, label: &str) -> Result<Owner> {
        check_owner(owner)?;
        check_label("label", label)?;
        self.transact(|doc| self.register_in(doc, owner, label))
    }

    fn register_in(&self, doc: &mut Document, owner: &str, label: &str) -> Result<Owner> {
        if let Some(o) = doc.owners.iter_mut().find(|o| o.id == owner) {
            o.label = label.to_owned();
            return Ok(o.clone());
        }
        let held: std::collections::HashSet<&str> = doc.owners.iter().map(|o| o.net_prefix.as_str()).collect();
        let net_prefix = pick_net_prefix(&held, &(self.host_names)())
            .ok_or_else(|| RegistryError::Exhausted { path: self.path.clone() })?;
        let o = Owner { id: owner.to_owned(), label: label.to_owned(), cgroup_prefixes: Vec::new(), net_prefix };
        doc.owners.push(o.clone());
        Ok(o)
    }

    /// Claims the cgroup prefix for `owner` (registered before). Another owner's prefix is
    /// `Taken`, naming that owner.
    pub fn claim_cgroup_prefix(&self, owner: &str, prefix: &str) -> Result<()> {
        check_cgroup_prefix(prefix)?;
        self.transact(|doc| self.claim_in(doc, owner, prefix))
    }

    fn claim_in(&self, doc: &mut Document, owner: &str, prefix: &str) -> Result<()> {
        if let Some(other) = doc.owners.iter().find(|o| o.cgroup_prefixes.iter().any(|p| p == prefix)) {
            if other.id == owner {
                return Ok(());
            }
            return Err(self.taken(doc, format!("cgroup prefix {prefix:?}"), &other.id.clone()));
        }
        let o = doc
            .owners
            .iter_mut()
            .find(|o| o.id == owner)
            .ok_or_else(|| RegistryError::Invalid { field: "owner", reason: format!("{owner} is not registered") })?;
        o.cgroup_prefixes.push(prefix.to_owned());
        Ok(())
    }

    /// A server's start in one change, all or nothing: registers `owner` (labelled `label`),
    /// claims `cgroup_prefix` and syncs its ranges with `keep` as [`Self::sync_ids`] does.
    ///
    /// Another owner with the same `label` (a data dir) is a store that was removed and made
    /// again in that data dir: a data dir holds one store, so that owner is gone for good, and
    /// its entry is forgotten (as [`Self::forget_owner`] does) before this one is registered.
    /// Returns the ids of the owners so forgotten in [`SyncReport::superseded`].
    pub fn start_owner(
        &self,
        owner: &str,
        label: &str,
        cgroup_prefix: &str,
        keep: &[(IdRange, String)],
    ) -> Result<(Owner, SyncReport)> {
        check_owner(owner)?;
        check_label("label", label)?;
        check_cgroup_prefix(cgroup_prefix)?;
        check_keep(keep)?;
        self.transact(|doc| {
            let superseded: Vec<String> =
                doc.owners.iter().filter(|o| o.label == label && o.id != owner).map(|o| o.id.clone()).collect();
            for gone in &superseded {
                forget_in(doc, gone);
            }
            self.register_in(doc, owner, label)?;
            self.claim_in(doc, owner, cgroup_prefix)?;
            let mut report = self.sync_in(doc, owner, keep, true)?;
            report.superseded = superseded;
            let entry = doc.owner(owner).cloned().ok_or_else(|| RegistryError::Invalid {
                field: "owner",
                reason: format!("{owner} is not registered"),
            })?;
            Ok((entry, report))
        })
    }

    /// Hands `owner` a fresh range of [`ID_RANGE`] ids for the namespace `label`.
    pub fn allocate_ids(&self, owner: &str, label: &str) -> Result<IdRange> {
        check_label("label", label)?;
        self.transact(|doc| {
            if doc.owner(owner).is_none() {
                return Err(RegistryError::Invalid { field: "owner", reason: format!("{owner} is not registered") });
            }
            // Never-used ranges first, on the grid from ID_BASE, skipping any held range.
            let mut start = doc.next_id;
            let picked = loop {
                if !fits(start, ID_RANGE) {
                    break None;
                }
                let end = start + ID_RANGE;
                if !doc.overlaps(start, ID_RANGE) {
                    doc.next_id = end;
                    break Some(start);
                }
                start = end;
            };
            let start = match picked {
                Some(s) => s,
                None => {
                    doc.next_id = doc.next_id.max(start);
                    // Then the range released longest ago.
                    let pos = doc.released.iter().position(|r| r.size == ID_RANGE);
                    let Some(pos) = pos else { return Err(RegistryError::Exhausted { path: self.path.clone() }) };
                    doc.released.remove(pos).start
                }
            };
            doc.ids.push(IdClaim { owner: owner.to_owned(), start, size: ID_RANGE, label: label.to_owned() });
            Ok(IdRange { host_start: start, size: ID_RANGE })
        })
    }

    /// Makes sure `owner` holds `range` (idempotent): held by it already is fine, a free or
    /// released range becomes its, and a range that overlaps another owner's is `Taken`.
    pub fn hold_ids(&self, owner: &str, range: IdRange, label: &str) -> Result<()> {
        self.sync(owner, &[(range, label.to_owned())], false).map(|_| ())
    }

    /// Makes the registry's ranges of `owner` exactly those of `keep` (what its store's
    /// namespaces use): holds each of them like [`Self::hold_ids`], and releases the owner's
    /// other ranges. All or nothing: a range taken by another owner changes nothing.
    pub fn sync_ids(&self, owner: &str, keep: &[(IdRange, String)]) -> Result<SyncReport> {
        self.sync(owner, keep, true)
    }

    fn sync(&self, owner: &str, keep: &[(IdRange, String)], release_rest: bool) -> Result<SyncReport> {
        check_keep(keep)?;
        self.transact(|doc| self.sync_in(doc, owner, keep, release_rest))
    }

    fn sync_in(
        &self,
        doc: &mut Document,
        owner: &str,
        keep: &[(IdRange, String)],
        release_rest: bool,
    ) -> Result<SyncReport> {
        if doc.owner(owner).is_none() {
            return Err(RegistryError::Invalid { field: "owner", reason: format!("{owner} is not registered") });
        }
        let mut report = SyncReport::default();
        for (r, label) in keep {
            if doc.ids.iter().any(|c| c.owner == owner && c.range() == *r) {
                continue;
            }
            let end = u64::from(r.host_start) + u64::from(r.size);
            let hit = |s: u32, z: u32| u64::from(s) < end && u64::from(r.host_start) < u64::from(s) + u64::from(z);
            if let Some(c) = doc.ids.iter().find(|c| hit(c.start, c.size)) {
                let what = format!("host ids [{}, +{}) of namespace {label}", r.host_start, r.size);
                return Err(self.taken(doc, what, &c.owner.clone()));
            }
            doc.released.retain(|x| !hit(x.start, x.size));
            doc.ids.push(IdClaim { owner: owner.to_owned(), start: r.host_start, size: r.size, label: label.clone() });
            report.registered += 1;
        }
        if release_rest {
            let (stale, kept): (Vec<IdClaim>, Vec<IdClaim>) = std::mem::take(&mut doc.ids)
                .into_iter()
                .partition(|c| c.owner == owner && !keep.iter().any(|(r, _)| *r == c.range()));
            doc.ids = kept;
            report.released = stale.len();
            doc.released.extend(stale.into_iter().map(|c| Released { start: c.start, size: c.size }));
        }
        Ok(report)
    }

    /// Releases `owner`'s range; call only once nothing on the host is owned by its ids any
    /// more. Returns whether the owner held it.
    pub fn release_ids(&self, owner: &str, range: IdRange) -> Result<bool> {
        self.transact(|doc| {
            let Some(pos) = doc.ids.iter().position(|c| c.owner == owner && c.range() == range) else {
                return Ok(false);
            };
            let c = doc.ids.remove(pos);
            doc.released.push(Released { start: c.start, size: c.size });
            Ok(true)
        })
    }

    /// Removes `owner` and releases everything it holds: for an operator retiring a server
    /// whose data is gone for good, and for tests.
    pub fn forget_owner(&self, owner: &str) -> Result<bool> {
        self.transact(|doc| Ok(forget_in(doc, owner)))
    }

    /// Every owner, as on disk now.
    pub fn owners(&self) -> Result<Vec<Owner>> {
        let _lock = self.lock()?;
        Ok(self.read()?.owners)
    }

    /// Every held range, as on disk now.
    pub fn id_claims(&self) -> Result<Vec<IdClaim>> {
        let _lock = self.lock()?;
        Ok(self.read()?.ids)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn registry() -> (tempfile::TempDir, HostRegistry) {
        let dir = tempfile::tempdir().unwrap();
        let r = HostRegistry::open(&dir.path().join("host").join("registry")).unwrap();
        (dir, r)
    }

    fn disjoint(ranges: &[IdRange]) -> bool {
        let mut v: Vec<(u64, u64)> =
            ranges.iter().map(|r| (u64::from(r.host_start), u64::from(r.host_start) + u64::from(r.size))).collect();
        v.sort_unstable();
        v.windows(2).all(|w| w[0].1 <= w[1].0)
    }

    #[test]
    fn owners_get_disjoint_ranges_and_prefixes() {
        let (_d, r) = registry();
        let a = r.register_owner("sto_a", "/data/a").unwrap();
        let b = r.register_owner("sto_b", "/data/b").unwrap();
        assert_ne!(a.net_prefix, b.net_prefix);
        let ra = r.allocate_ids("sto_a", "acme").unwrap();
        let rb = r.allocate_ids("sto_b", "acme").unwrap();
        assert_eq!(ra, IdRange { host_start: ID_BASE, size: ID_RANGE });
        assert!(disjoint(&[ra, rb]));
        assert!(matches!(r.allocate_ids("sto_nobody", "x"), Err(RegistryError::Invalid { .. })));
        // Registering again keeps the entry.
        assert_eq!(r.register_owner("sto_a", "/data/a2").unwrap().net_prefix, a.net_prefix);
    }

    #[test]
    fn net_prefixes_are_random_and_skip_names_on_the_host() {
        // Two registries of their own (as two test servers have) seldom give the same prefix.
        let firsts: std::collections::HashSet<String> = (0..8)
            .map(|i| {
                let (_d, r) = registry();
                r.register_owner(&format!("sto_{i}"), "x").unwrap().net_prefix
            })
            .collect();
        assert!(firsts.len() > 1, "every registry handed out {firsts:?}");
        // A prefix any host name starts with is never handed out: with all but one taken by
        // names on the host (links, netns, tables alike), that one is the answer every time.
        fn crowded() -> Vec<String> {
            (0..=0xffffu32)
                .filter(|n| *n != 0x1234)
                .map(|n| match n % 3 {
                    0 => format!("bh{n:04x}"),
                    1 => format!("bh{n:04x}-0123456789"),
                    _ => format!("bh{n:04x}_table"),
                })
                .collect()
        }
        for i in 0..3 {
            let (_d, r) = registry();
            let r = r.with_host_names(crowded);
            assert_eq!(r.register_owner(&format!("sto_{i}"), "x").unwrap().net_prefix, "bh1234");
            // The registry's own owners count too: nothing is left for a second one.
            assert!(matches!(r.register_owner("sto_other", "y"), Err(RegistryError::Exhausted { .. })));
        }
        // Names that only look alike (too short, other letters) take nothing.
        let held = std::collections::HashSet::from(["bh0001"]);
        let host = vec!["bh".to_owned(), "eth0".to_owned(), "bh000".to_owned()];
        for _ in 0..64 {
            let p = pick_net_prefix(&held, &host).unwrap();
            assert!(check_net_prefix(&p).is_ok() && p != "bh0001", "{p}");
        }
        // An owner registered again keeps its prefix whatever the host has now.
        let (_d, r) = registry();
        let a = r.register_owner("sto_a", "x").unwrap().net_prefix;
        let r = r.with_host_names(crowded);
        assert_eq!(r.register_owner("sto_a", "x").unwrap().net_prefix, a);
    }

    #[test]
    fn concurrent_allocations_from_independent_handles_are_disjoint() {
        // Each thread opens the registry itself: its own open file description of the lock,
        // exactly as another process would have.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry");
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let r = HostRegistry::open(&path).unwrap();
                    let owner = format!("sto_{t}");
                    r.register_owner(&owner, "x").unwrap();
                    r.claim_cgroup_prefix(&owner, &format!("p{t}")).unwrap();
                    (0..8).map(|i| r.allocate_ids(&owner, &format!("ns{i}")).unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<IdRange> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        assert_eq!(all.len(), 48);
        assert!(disjoint(&all), "{all:?}");
        let r = HostRegistry::open(&path).unwrap();
        assert_eq!(r.id_claims().unwrap().len(), 48);
        let nets: std::collections::HashSet<String> = r.owners().unwrap().into_iter().map(|o| o.net_prefix).collect();
        assert_eq!(nets.len(), 6);
    }

    #[test]
    fn a_cgroup_prefix_has_one_owner() {
        let (_d, r) = registry();
        r.register_owner("sto_a", "/data/a").unwrap();
        r.register_owner("sto_b", "/data/b").unwrap();
        r.claim_cgroup_prefix("sto_a", "bulkhead").unwrap();
        r.claim_cgroup_prefix("sto_a", "bulkhead").unwrap();
        let e = r.claim_cgroup_prefix("sto_b", "bulkhead").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("sto_a") && msg.contains("/data/a") && msg.contains("bulkhead"), "{msg}");
        assert!(r.claim_cgroup_prefix("sto_b", "a/b").is_err());
        assert!(r.claim_cgroup_prefix("sto_b", "..").is_err());
    }

    #[test]
    fn existing_ranges_are_held_and_collisions_are_refused() {
        let (_d, r) = registry();
        r.register_owner("sto_a", "/data/a").unwrap();
        r.register_owner("sto_b", "/data/b").unwrap();
        let old = IdRange { host_start: ID_BASE + ID_RANGE, size: ID_RANGE };
        let report = r.sync_ids("sto_a", &[(old, "acme".into())]).unwrap();
        assert_eq!(report, SyncReport { registered: 1, released: 0, superseded: vec![] });
        r.hold_ids("sto_a", old, "acme").unwrap();
        let e = r.hold_ids("sto_b", old, "other").unwrap_err();
        assert!(matches!(e, RegistryError::Taken { ref owner, .. } if owner == "sto_a"), "{e}");
        // A half-overlapping range is a collision too.
        let half = IdRange { host_start: old.host_start + 10, size: ID_RANGE };
        assert!(matches!(r.hold_ids("sto_b", half, "x"), Err(RegistryError::Taken { .. })));
        // New allocations skip the held range.
        let a1 = r.allocate_ids("sto_b", "n1").unwrap();
        let a2 = r.allocate_ids("sto_b", "n2").unwrap();
        assert!(disjoint(&[old, a1, a2]));
        // Syncing releases what the store no longer uses.
        let report = r.sync_ids("sto_b", &[(a2, "n2".into())]).unwrap();
        assert_eq!(report, SyncReport { registered: 0, released: 1, superseded: vec![] });
    }

    #[test]
    fn released_ranges_are_reused_last_and_oldest_first() {
        let (_d, r) = registry();
        r.register_owner("sto_a", "x").unwrap();
        let first = r.allocate_ids("sto_a", "n1").unwrap();
        assert!(r.release_ids("sto_a", first).unwrap());
        assert!(!r.release_ids("sto_a", first).unwrap());
        let second = r.allocate_ids("sto_a", "n2").unwrap();
        assert_ne!(first, second, "a released range is not reused while fresh ones remain");
        // Use up the space: then the oldest release comes back first.
        r.transact(|doc| {
            doc.next_id = ID_LIMIT - 5;
            Ok(())
        })
        .unwrap();
        assert!(r.release_ids("sto_a", second).unwrap());
        assert_eq!(r.allocate_ids("sto_a", "n3").unwrap(), first);
        assert_eq!(r.allocate_ids("sto_a", "n4").unwrap(), second);
        assert!(matches!(r.allocate_ids("sto_a", "n5"), Err(RegistryError::Exhausted { .. })));
    }

    #[test]
    fn a_refused_start_changes_nothing() {
        let (_d, r) = registry();
        let (a, _) = r.start_owner("sto_a", "/data/a", "bulkhead", &[]).unwrap();
        let held = r.allocate_ids("sto_a", "acme").unwrap();
        let before = fs::read(r.path()).unwrap();
        let e = r.start_owner("sto_b", "/data/b", "bulkhead", &[]).unwrap_err();
        assert!(e.to_string().contains("/data/a"), "{e}");
        let e = r.start_owner("sto_b", "/data/b", "other", &[(held, "acme".into())]).unwrap_err();
        assert!(matches!(e, RegistryError::Taken { .. }), "{e}");
        assert_eq!(fs::read(r.path()).unwrap(), before, "a refused start wrote to the registry");
        // A restart of the same owner is fine and keeps its name prefix.
        let (again, report) = r.start_owner("sto_a", "/data/a", "bulkhead", &[(held, "acme".into())]).unwrap();
        assert_eq!((again.net_prefix, report), (a.net_prefix, SyncReport::default()));
    }

    #[test]
    fn forgetting_an_owner_frees_its_prefix() {
        let (_d, r) = registry();
        r.register_owner("sto_a", "x").unwrap();
        r.register_owner("sto_b", "y").unwrap();
        r.claim_cgroup_prefix("sto_a", "p").unwrap();
        r.allocate_ids("sto_a", "n").unwrap();
        assert!(r.forget_owner("sto_a").unwrap());
        r.claim_cgroup_prefix("sto_b", "p").unwrap();
        assert!(r.id_claims().unwrap().is_empty());
    }

    #[test]
    fn a_store_made_again_in_its_data_dir_takes_over_the_gone_ones_entry() {
        let (_d, r) = registry();
        let held = IdRange { host_start: 1_000_000, size: ID_RANGE };
        r.start_owner("sto_old", "/srv/data", "p", &[(held, "n".to_owned())]).unwrap();
        r.start_owner("sto_other", "/srv/other", "q", &[]).unwrap();
        // Another data dir may not take the prefix: that store may still be alive.
        let e = r.start_owner("sto_new", "/srv/new", "p", &[]).unwrap_err();
        assert!(matches!(e, RegistryError::Taken { .. }), "{e}");
        // The same data dir holding a new store: the old one is gone, its entry goes with it.
        let (_, report) = r.start_owner("sto_new", "/srv/data", "p", &[]).unwrap();
        assert_eq!(report.superseded, ["sto_old"]);
        let owners: Vec<String> = r.owners().unwrap().into_iter().map(|o| o.id).collect();
        assert_eq!(owners, ["sto_other", "sto_new"]);
        assert!(r.id_claims().unwrap().is_empty(), "the gone store's range is released");
    }

    #[test]
    fn corrupt_and_hostile_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry");
        let r = HostRegistry::open(&path).unwrap();
        r.register_owner("sto_a", "x").unwrap();
        r.allocate_ids("sto_a", "n").unwrap();
        let good = fs::read(&path).unwrap();
        let json = std::str::from_utf8(&good).unwrap().lines().next().unwrap().to_owned();
        let signed = |j: &str| format!("{j}\nsha256 {}\n", hex(&Sha256::digest(j.as_bytes()))).into_bytes();
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("truncated", good[..good.len() / 2].to_vec()),
            ("flipped byte", {
                let mut b = good.clone();
                b[20] ^= 1;
                b
            }),
            ("no checksum", format!("{json}\n").into_bytes()),
            ("not utf-8", vec![0xff, 0xfe, b'\n']),
            ("deep nesting", signed(&deep)),
            ("unknown field", signed(&json.replacen("{", "{\"extra\":1,", 1))),
            ("wrong version", signed(&json.replace("\"version\":1", "\"version\":2"))),
            ("range below base", signed(&json.replace("\"start\":1000000", "\"start\":5"))),
            ("overflowing range", signed(&json.replace("\"start\":1000000", "\"start\":4294967000"))),
            ("unknown owner", signed(&json.replace("\"owner\":\"sto_a\"", "\"owner\":\"sto_z\""))),
            ("bad owner id", signed(&json.replace("sto_a", "STO/A"))),
            ("negative", signed(&json.replace("\"start\":1000000", "\"start\":-1"))),
        ];
        for (what, bytes) in cases {
            fs::write(&path, &bytes).unwrap();
            let e = HostRegistry::open(&path).expect_err(what);
            assert!(matches!(e, RegistryError::Corrupt { .. }), "{what}: {e}");
            // A corrupt map is never rewritten by a change.
            assert!(r.allocate_ids("sto_a", "m").is_err(), "{what}");
            assert_eq!(fs::read(&path).unwrap(), bytes, "{what}");
        }
        fs::write(&path, vec![b' '; (MAX_FILE_BYTES + 1) as usize]).unwrap();
        assert!(matches!(HostRegistry::open(&path), Err(RegistryError::Corrupt { .. })));
        fs::write(&path, &good).unwrap();
        HostRegistry::open(&path).unwrap();
        // A file, lock or directory the server did not make itself is refused before it is
        // read or written: no hang on a fifo, no file created through a symlink elsewhere, no
        // map another user could have written.
        use std::os::unix::fs::{symlink, PermissionsExt};
        let elsewhere = dir.path().join("elsewhere");
        let hostile = |what: &str, setup: &dyn Fn(&Path)| {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("registry");
            setup(&p);
            let e = HostRegistry::open(&p).expect_err(what);
            assert!(matches!(e, RegistryError::Untrusted { .. }), "{what}: {e}");
            assert!(!elsewhere.exists(), "{what}: a file was created through a symlink");
        };
        let fifo = |p: &Path| {
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: `c` is a NUL-terminated path that outlives the call.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        };
        hostile("registry is a fifo", &|p| fifo(p));
        hostile("lock is a fifo", &|p| fifo(&p.with_extension("lock")));
        hostile("registry is a symlink", &|p| symlink(&path, p).unwrap());
        hostile("lock is a dangling symlink", &|p| symlink(&elsewhere, p.with_extension("lock")).unwrap());
        hostile("registry is a device", &|p| symlink("/dev/zero", p).unwrap());
        hostile("registry is world-writable", &|p| {
            fs::write(p, &good).unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(0o666)).unwrap();
        });
        hostile("directory is world-writable", &|p| {
            fs::set_permissions(p.parent().unwrap(), fs::Permissions::from_mode(0o1777)).unwrap();
        });
        hostile("registry of another user", &|p| {
            fs::write(p, &good).unwrap();
            std::os::unix::fs::chown(p, Some(65534), None).unwrap();
        });
        hostile("directory of another user", &|p| {
            std::os::unix::fs::chown(p.parent().unwrap(), Some(65534), None).unwrap();
        });
        // Two ranges that overlap, well signed, are refused too.
        let doubled = json
            .replace("\"ids\":[", "\"ids\":[{\"owner\":\"sto_a\",\"start\":1000005,\"size\":65536,\"label\":\"x\"},");
        fs::write(&path, signed(&doubled)).unwrap();
        assert!(matches!(HostRegistry::open(&path), Err(RegistryError::Corrupt { .. })));
    }
}
