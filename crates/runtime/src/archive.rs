//! Tar archives in and out of a tenant's filesystem, exactly, refusing hostile archives.
//!
//! What a filesystem holds round-trips: modes (a directory's sticky bit too) and mtimes
//! (directories' applied after their contents), symlinks as data (absolute targets and `..`
//! kept as they are: nothing here ever resolves through a link), names as raw bytes (not
//! necessarily UTF-8: GNU long names and PAX `path`/`linkpath` records are read, GNU long names
//! written), and sparse files as GNU sparse entries (type `S`, the old GNU format that GNU tar
//! and the tar crate both read; uploads may also use PAX sparse format 1.0): a download lists a file's runs of data from
//! `SEEK_DATA`/`SEEK_HOLE` and carries only them ([`sparse_map_of`]), an upload writes the runs
//! at their offsets and seeks over the holes, so a 1 TiB file with a few blocks of data travels
//! and lands as those blocks.
//!
//! [`extract`] reads an upload (plain, gzip or zstd tar) into an empty staging [`Root`] with its
//! own tar reader (so that a sparse map is seen, checked and named before anything is written).
//! Every entry is checked before anything is written for it, and the first bad one aborts the
//! whole extraction naming it: absolute paths, `..`, NUL, names too long, entries whose path
//! goes through a symlink the archive made, hard links to anything but an earlier file of the
//! archive, devices, fifos, setuid and setgid bits, sparse maps that are out of order,
//! overlapping, past the file's size, longer than [`MAX_SPARSE_SEGMENTS`] runs or that carry
//! more data than the filesystem holds, PAX sparse files before format 1.0, and
//! more entries or bytes than allowed. Entries are written only through [`confined`], so even a
//! check that missed something could not lead a write outside the root. The decompressed stream
//! is metered too: headers and extensions (read into memory) get a small allowance per entry,
//! so no decompression bomb gets further than the limits.
//!
//! [`TarReader`] produces a tenant's filesystem as a plain tar (GNU format) as it is read (so a
//! download never holds more than one chunk, one file, one sparse map and a bounded number of
//! directories), walking it with [`confined::Walker`]; [`write_tar`] copies it to a writer.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tar::EntryType;

use crate::confined::{self, ConfinedError, Node, Owner, Root};

/// Longest path of an entry, in bytes.
pub const MAX_PATH: usize = 4096;
/// Longest component of a path, in bytes.
pub const MAX_NAME: usize = 255;
/// Decompressed bytes allowed on top of an entry's data for its padding and the headers (with
/// long names and PAX records) of the next entry.
pub(crate) const HEADER_ALLOWANCE: u64 = 64 * 1024;
/// Largest PAX global header, whose records are ignored.
const MAX_GLOBAL_HEADER: u64 = 64 * 1024;

/// How an upload is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Plain,
    Gzip,
    Zstd,
}

/// Tells the compression of a stream from its first (up to four) bytes.
pub fn detect(first_bytes: &[u8]) -> Compression {
    if first_bytes.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if first_bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::Plain
    }
}

/// What an extraction may create at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_entries: u64,
    /// Total bytes of entry data (file contents).
    pub max_bytes: u64,
}

/// What an extraction created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An entry the archive must not contain; nothing was written for it.
    #[error("refused archive entry {entry:?}: {reason}")]
    Hostile { entry: String, reason: String },
    /// More entries or bytes than the limits allow (`entry` is the one that crossed them, when
    /// known: a decompression bomb may stop inside headers).
    #[error("archive too large{}: {reason}", entry.as_ref().map(|e| format!(" at entry {e:?}")).unwrap_or_default())]
    TooLarge { entry: Option<String>, reason: String },
    /// The filesystem is full: the tenant's quota.
    #[error("no space left in the filesystem")]
    NoSpace,
    /// Not a (complete) tar archive, or a broken compressed stream.
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    /// Writing an entry failed for another reason (such as a file where a directory is needed).
    #[error("cannot extract {entry:?}")]
    Write {
        entry: String,
        #[source]
        source: ConfinedError,
    },
}

/// Decompressed bytes read so far and how many are allowed; shared between the reader that the
/// tar crate owns and the loop that decides.
#[derive(Debug, Default)]
struct Meter {
    read: Cell<u64>,
    allowed: Cell<u64>,
    exceeded: Cell<bool>,
}

impl Meter {
    fn allow_more(&self, bytes: u64) {
        self.allowed.set(self.read.get().saturating_add(bytes));
    }
}

/// Fails reads past the meter's allowance.
pub(crate) struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.meter.allowed.get().saturating_sub(self.meter.read.get());
        if left == 0 && !buf.is_empty() {
            self.meter.exceeded.set(true);
            return Err(io::Error::other("decompressed size limit reached"));
        }
        let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.meter.read.set(self.meter.read.get() + n as u64);
        Ok(n)
    }
}

/// A zstd stream of one or more frames (skippable frames are skipped), with ruzstd.
struct ZstdFrames<R> {
    source: BufReader<R>,
    decoder: ruzstd::decoding::FrameDecoder,
    /// Whether a frame is being decoded.
    in_frame: bool,
}

impl<R: Read> ZstdFrames<R> {
    fn new(source: R) -> Self {
        ZstdFrames { source: BufReader::new(source), decoder: ruzstd::decoding::FrameDecoder::new(), in_frame: false }
    }

    /// Starts the next frame; false at the end of the stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        loop {
            if self.source.fill_buf()?.is_empty() {
                return Ok(false);
            }
            match self.decoder.reset(&mut self.source) {
                Ok(()) => return Ok(true),
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame { length, .. })) => {
                    let skipped = io::copy(&mut (&mut self.source).take(u64::from(length)), &mut io::sink())?;
                    if skipped != u64::from(length) {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated skippable zstd frame"));
                    }
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))),
            }
        }
    }
}

impl<R: Read> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::BlockDecodingStrategy;
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if !self.next_frame()? {
                    return Ok(0);
                }
                self.in_frame = true;
            }
            // As ruzstd's StreamingDecoder: decode until enough is collectable or the frame ends.
            while self.decoder.can_collect() < buf.len() && !self.decoder.is_finished() {
                let wanted = buf.len() - self.decoder.can_collect();
                self.decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(wanted))
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?;
            }
            let n = self.decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if self.decoder.is_finished() && self.decoder.can_collect() == 0 {
                self.in_frame = false;
            }
        }
    }
}

/// Most runs of data a sparse entry may list. GNU tar lists one per run of data; a download
/// lists at most this many (merging runs across small holes when a file has more).
pub const MAX_SPARSE_SEGMENTS: usize = 65_536;

/// A sparse file as an archive carries it (GNU sparse format): its runs of data, in the order
/// their bytes follow in the archive, and its size. Whatever no run covers is a hole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparseMap {
    /// `(offset, length)` in bytes of each run of data in the file.
    pub segments: Vec<(u64, u64)>,
    /// The file's size in bytes, holes included (`st_size`).
    pub real_size: u64,
}

impl SparseMap {
    /// Bytes of data the runs hold (what an archive carries for the file).
    pub fn data_bytes(&self) -> u64 {
        self.segments.iter().fold(0u64, |a, (_, len)| a.saturating_add(*len))
    }

    /// Checks the map of an entry that carries `stored` bytes of data: at most
    /// [`MAX_SPARSE_SEGMENTS`] runs, in order, not overlapping, each inside the file's size, a
    /// size a file can have (`i64`), and their lengths adding up to `stored`. The error says
    /// what is wrong, for a message naming the entry.
    pub fn check(&self, stored: u64) -> Result<(), String> {
        if self.segments.len() > MAX_SPARSE_SEGMENTS {
            return Err(format!("sparse map lists more than {MAX_SPARSE_SEGMENTS} runs of data"));
        }
        if i64::try_from(self.real_size).is_err() {
            return Err(format!("sparse file size {} is out of range", self.real_size));
        }
        let mut end = 0u64;
        for &(offset, len) in &self.segments {
            if offset < end {
                return Err(format!("sparse map is out of order or overlapping at offset {offset}"));
            }
            end = offset.checked_add(len).filter(|e| *e <= self.real_size).ok_or_else(|| {
                format!("sparse run of {len} bytes at offset {offset} goes past the file's size {}", self.real_size)
            })?;
        }
        // Runs inside the file that do not overlap cannot add up past u64.
        let data = self.data_bytes();
        if data != stored {
            return Err(format!("sparse map lists {data} bytes of data but the entry carries {stored}"));
        }
        Ok(())
    }
}

/// A number field of a tar header: octal (ended by NUL or spaces) or GNU base-256 (a first byte
/// of `0x80`). `None` when it is neither, negative or beyond `u64`.
fn parse_number(field: &[u8]) -> Option<u64> {
    match field.first() {
        Some(0x80) => field[1..].iter().try_fold(0u64, |v, b| v.checked_mul(256)?.checked_add(u64::from(*b))),
        Some(b) if b & 0x80 != 0 => None,
        _ => {
            let text = field.split(|b| *b == 0).next().unwrap_or_default();
            let text = std::str::from_utf8(text).ok()?.trim_matches(' ');
            if text.is_empty() {
                return Some(0);
            }
            u64::from_str_radix(text, 8).ok()
        }
    }
}

/// Writes `value` into a 12-byte number field: octal when it fits in 11 digits, else GNU
/// base-256 (which GNU tar and the tar crate read).
fn write_number(field: &mut [u8; 12], value: u64) {
    if value < 1 << 33 {
        field[..11].copy_from_slice(format!("{value:011o}").as_bytes());
        field[11] = 0;
    } else {
        field.fill(0);
        field[0] = 0x80;
        field[4..].copy_from_slice(&value.to_be_bytes());
    }
}

/// The runs of a GNU sparse map from its slots (24 bytes each: offset and length, 12 each).
/// Slots after the first empty one must stay empty (readers disagree on what follows a gap).
struct SlotReader<'a> {
    shown: &'a str,
    segments: Vec<(u64, u64)>,
    ended: bool,
}

impl SlotReader<'_> {
    fn add(&mut self, offset: &[u8], len: &[u8]) -> Result<(), ArchiveError> {
        // An unused slot: GNU tar stops at the first, the tar crate skips them.
        if offset[0] == 0 || len[0] == 0 {
            self.ended = true;
            return Ok(());
        }
        if self.ended {
            return Err(hostile(self.shown, "sparse map has a run after an empty slot"));
        }
        let bad = || hostile(self.shown, "sparse map has a malformed number");
        let offset = parse_number(offset).ok_or_else(bad)?;
        let len = parse_number(len).ok_or_else(bad)?;
        if self.segments.len() >= MAX_SPARSE_SEGMENTS {
            return Err(hostile(self.shown, format!("sparse map lists more than {MAX_SPARSE_SEGMENTS} runs of data")));
        }
        self.segments.push((offset, len));
        Ok(())
    }
}

/// One entry of an upload, with its GNU long names and PAX records applied.
pub(crate) struct InEntry {
    pub(crate) header: tar::Header,
    pub(crate) path: Vec<u8>,
    pub(crate) link: Option<Vec<u8>>,
    /// Bytes of data that follow in the archive.
    pub(crate) size: u64,
    pub(crate) mtime: Option<SystemTime>,
    /// For a GNU sparse entry, its map (not checked yet).
    pub(crate) sparse: Option<SparseMap>,
    /// The entry's PAX records (empty without), for readers that want more of them (ids).
    pub(crate) pax: Vec<u8>,
}

/// A PAX record's value.
pub(crate) fn pax_value<'a>(records: &'a [u8], key: &str) -> Option<&'a [u8]> {
    tar::PaxExtensions::new(records)
        .filter_map(Result::ok)
        .filter(|r| r.key_bytes() == key.as_bytes())
        .last()
        .map(|r| r.value_bytes())
}

/// A PAX time (`1700000000.5`, `-12`) as a time.
fn pax_time(value: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: u64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = format!("{:0<9}", &frac[..frac.len().min(9)]).parse().ok()?;
    let d = Duration::new(secs, nanos);
    if negative {
        UNIX_EPOCH.checked_sub(d)
    } else {
        UNIX_EPOCH.checked_add(d)
    }
}

/// A tar stream read entry by entry: headers with GNU long names, PAX records and GNU sparse
/// maps, then the current entry's data through `Read` (never past it).
pub(crate) struct TarIn<R> {
    inner: R,
    meter: Rc<Meter>,
    /// Data of the current entry not read yet, then its padding.
    left: u64,
    pad: u64,
}

impl<R: Read> Read for TarIn<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

impl<R: Read> TarIn<Metered<R>> {
    /// Reads the (decompressed) tar stream `inner`, metered: past the first header, each
    /// entry's data may be read only once [`TarIn::allow`] allowed it.
    pub(crate) fn new(inner: R) -> Self {
        let meter = Rc::new(Meter::default());
        meter.allow_more(HEADER_ALLOWANCE);
        TarIn { inner: Metered { inner, meter: meter.clone() }, meter, left: 0, pad: 0 }
    }

    /// Allows `bytes` more of the stream from here on (an entry's data), and the headers of
    /// the next entry.
    pub(crate) fn allow(&self, bytes: u64) {
        self.meter.allow_more(bytes.saturating_add(HEADER_ALLOWANCE));
    }

    /// Once [`TarIn::next`] saw the end of the archive: reads what follows it in the stream
    /// (padding to a record, at most `most` bytes) and returns the stream.
    pub(crate) fn finish(mut self, most: u64) -> Result<R, ArchiveError> {
        self.meter.allow_more(most);
        io::copy(&mut self.inner, &mut io::sink()).map_err(|e| match self.fail(None, e) {
            ArchiveError::TooLarge { .. } => ArchiveError::TooLarge {
                entry: None,
                reason: format!("more than {most} bytes after the archive's end"),
            },
            other => other,
        })?;
        Ok(self.inner.inner)
    }
}

/// The decompressed stream of a tar archive that is plain, gzip or zstd (see [`detect`]).
pub(crate) fn decompress<'a>(mut reader: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match reader.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let raw = io::Cursor::new(head[..got].to_vec()).chain(reader);
    Ok(match detect(&head[..got]) {
        Compression::Plain => Box::new(raw),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Compression::Zstd => Box::new(ZstdFrames::new(raw)),
    })
}

impl<R: Read> TarIn<R> {
    /// A read error as the archive error it stands for: the meter's limit, or a broken stream.
    pub(crate) fn fail(&self, entry: Option<&str>, e: io::Error) -> ArchiveError {
        if self.meter.exceeded.get() {
            ArchiveError::TooLarge {
                entry: entry.map(str::to_owned),
                reason: "decompressed headers larger than allowed".into(),
            }
        } else {
            ArchiveError::Corrupt(e.to_string())
        }
    }

    /// Reads one 512-byte block; `false` at the end of the stream before it.
    fn read_block(&mut self, block: &mut [u8; 512]) -> io::Result<bool> {
        let mut got = 0;
        while got < block.len() {
            match self.inner.read(&mut block[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "archive truncated in a header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Skips `n` bytes of the stream.
    fn skip(&mut self, n: u64) -> Result<(), ArchiveError> {
        let skipped = io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(|e| self.fail(None, e))?;
        if skipped != n {
            return Err(ArchiveError::Corrupt("archive truncated in an entry's data".into()));
        }
        Ok(())
    }

    /// The whole data of an extension header (long name, PAX records), and its padding.
    fn read_extension(&mut self, size: u64) -> Result<Vec<u8>, ArchiveError> {
        let mut data = Vec::new();
        (&mut self.inner).take(size).read_to_end(&mut data).map_err(|e| self.fail(None, e))?;
        if data.len() as u64 != size {
            return Err(ArchiveError::Corrupt("archive truncated in an extension header".into()));
        }
        self.skip(padding(size))?;
        Ok(data)
    }

    /// The next entry; `None` at the end of the archive (a zero block or the end of the stream).
    pub(crate) fn next(&mut self) -> Result<Option<InEntry>, ArchiveError> {
        let rest = self.left.saturating_add(self.pad);
        self.skip(rest)?;
        self.left = 0;
        self.pad = 0;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Vec<u8>> = None;
        loop {
            let mut block = [0u8; 512];
            let more = self.read_block(&mut block).map_err(|e| self.fail(None, e))?;
            if !more || block.iter().all(|b| *b == 0) {
                if long_name.is_some() || long_link.is_some() || pax.is_some() {
                    return Err(ArchiveError::Corrupt("extension headers without an entry after them".into()));
                }
                return Ok(None);
            }
            let sum = block[..148].iter().chain(&block[156..]).fold(8 * 32u32, |a, b| a + u32::from(*b));
            let header = tar::Header::from_byte_slice(&block).clone();
            if header.cksum().ok() != Some(sum) {
                return Err(ArchiveError::Corrupt("archive header checksum mismatch".into()));
            }
            let kind = header.entry_type();
            let header_name = String::from_utf8_lossy(&header.path_bytes()).into_owned();
            let corrupt = |e: io::Error| ArchiveError::Corrupt(format!("entry {header_name:?}: {e}"));
            let mut size = header.entry_size().map_err(corrupt)?;
            if kind.is_pax_global_extensions() {
                // Archive-wide PAX records (`git archive` writes a commit id): nothing to extract.
                if size > MAX_GLOBAL_HEADER {
                    return Err(hostile(&header_name, "PAX global header larger than 64 KiB"));
                }
                self.meter.allow_more(size.saturating_add(HEADER_ALLOWANCE));
                self.skip(size.saturating_add(padding(size)))?;
                continue;
            }
            let slot = if kind.is_gnu_longname() {
                Some(&mut long_name)
            } else if kind.is_gnu_longlink() {
                Some(&mut long_link)
            } else if kind.is_pax_local_extensions() {
                Some(&mut pax)
            } else {
                None
            };
            if let Some(slot) = slot {
                if slot.is_some() {
                    return Err(ArchiveError::Corrupt(format!(
                        "two extension headers of one kind before {header_name:?}"
                    )));
                }
                *slot = Some(self.read_extension(size)?);
                continue;
            }
            let records = pax.as_deref().unwrap_or_default();
            if let Some(v) = pax_value(records, "size") {
                size = std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| ArchiveError::Corrupt(format!("entry {header_name:?}: malformed PAX size")))?;
            }
            let path = match (long_name, pax_value(records, "path")) {
                (Some(mut name), _) => {
                    while name.last() == Some(&0) {
                        name.pop();
                    }
                    name
                }
                (None, Some(p)) => p.to_vec(),
                (None, None) => header.path_bytes().into_owned(),
            };
            let link = match (long_link, pax_value(records, "linkpath")) {
                (Some(mut name), _) => {
                    while name.last() == Some(&0) {
                        name.pop();
                    }
                    Some(name)
                }
                (None, Some(p)) => Some(p.to_vec()),
                (None, None) => header.link_name_bytes().map(|l| l.into_owned()),
            };
            let mtime = match pax_value(records, "mtime") {
                Some(v) => pax_time(v),
                None => header.mtime().ok().and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s))),
            };
            let pax_sparse = tar::PaxExtensions::new(records)
                .filter_map(Result::ok)
                .any(|r| r.key_bytes().starts_with(b"GNU.sparse."));
            if !pax_sparse {
                let shown = String::from_utf8_lossy(&path).into_owned();
                let sparse = if kind.is_gnu_sparse() { Some(self.gnu_sparse_map(&header, &shown)?) } else { None };
                self.left = size;
                self.pad = padding(size);
                return Ok(Some(InEntry { header, path, link, size, mtime, sparse, pax: records.to_vec() }));
            }
            // PAX sparse format 1.0 (GNU tar's `--format=posix --sparse`): the real name and
            // size in records, the map at the start of the data.
            let version = (pax_value(records, "GNU.sparse.major"), pax_value(records, "GNU.sparse.minor"));
            let path = pax_value(records, "GNU.sparse.name").map(<[u8]>::to_vec).unwrap_or(path);
            let shown = String::from_utf8_lossy(&path).into_owned();
            if version != (Some(&b"1"[..]), Some(&b"0"[..])) {
                return Err(hostile(&shown, "PAX sparse format before 1.0 (GNU.sparse.*) is not supported"));
            }
            if kind != EntryType::Regular && kind != EntryType::Continuous {
                return Err(hostile(&shown, "PAX sparse records on an entry that is not a file"));
            }
            let real_size = pax_value(records, "GNU.sparse.realsize")
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                .ok_or_else(|| hostile(&shown, "PAX sparse file without a valid GNU.sparse.realsize"))?;
            self.left = size;
            self.pad = padding(size);
            let segments = self.pax_sparse_map(&shown)?;
            let size = self.left;
            let sparse = Some(SparseMap { segments, real_size });
            return Ok(Some(InEntry { header, path, link, size, mtime, sparse, pax: records.to_vec() }));
        }
    }

    /// The map at the start of a PAX 1.0 sparse entry's data: decimal numbers, one a line (the
    /// count of runs, then each run's offset and length), padded to a 512-byte block. Leaves
    /// [`TarIn::left`] at the runs' data.
    fn pax_sparse_map(&mut self, shown: &str) -> Result<Vec<(u64, u64)>, ArchiveError> {
        // Each number takes at most 21 bytes.
        let most = (2 * MAX_SPARSE_SEGMENTS as u64 + 1) * 21;
        self.meter.allow_more(self.left.min(most).saturating_add(HEADER_ALLOWANCE));
        let mut consumed = 0u64;
        let mut number = |tar: &mut Self| -> Result<u64, ArchiveError> {
            let mut digits = Vec::new();
            loop {
                let mut byte = [0u8; 1];
                let n = tar.read(&mut byte).map_err(|e| tar.fail(Some(shown), e))?;
                if n == 0 {
                    return Err(hostile(shown, "PAX sparse map ends early"));
                }
                consumed += 1;
                match byte[0] {
                    b'\n' => break,
                    b @ b'0'..=b'9' if digits.len() < 20 => digits.push(b),
                    _ => return Err(hostile(shown, "PAX sparse map has a malformed number")),
                }
            }
            std::str::from_utf8(&digits)
                .ok()
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| hostile(shown, "PAX sparse map has a malformed number"))
        };
        let count = number(self)?;
        if count > MAX_SPARSE_SEGMENTS as u64 {
            return Err(hostile(shown, format!("sparse map lists more than {MAX_SPARSE_SEGMENTS} runs of data")));
        }
        let mut segments = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let offset = number(self)?;
            let len = number(self)?;
            segments.push((offset, len));
        }
        let pad = padding(consumed);
        if self.left < pad {
            return Err(hostile(shown, "PAX sparse map ends early"));
        }
        let skipped = io::copy(&mut (&mut *self).take(pad), &mut io::sink()).map_err(|e| self.fail(Some(shown), e))?;
        if skipped != pad {
            return Err(ArchiveError::Corrupt(format!("entry {shown:?} is truncated")));
        }
        Ok(segments)
    }

    /// The map of a GNU sparse entry: the slots of its header, then of the extension blocks that
    /// follow it.
    fn gnu_sparse_map(&mut self, header: &tar::Header, shown: &str) -> Result<SparseMap, ArchiveError> {
        let gnu = header.as_gnu().ok_or_else(|| hostile(shown, "sparse entry without a GNU header"))?;
        let real_size = parse_number(&gnu.realsize).ok_or_else(|| hostile(shown, "sparse file size is malformed"))?;
        let mut slots = SlotReader { shown, segments: Vec::new(), ended: false };
        for s in &gnu.sparse {
            slots.add(&s.offset, &s.numbytes)?;
        }
        let mut extended = gnu.isextended[0] != 0;
        while extended {
            // Each block holds up to 21 runs; the slots stop the loop at MAX_SPARSE_SEGMENTS.
            self.meter.allow_more(512 + HEADER_ALLOWANCE);
            let mut block = [0u8; 512];
            if !self.read_block(&mut block).map_err(|e| self.fail(Some(shown), e))? {
                return Err(ArchiveError::Corrupt(format!("entry {shown:?}: archive truncated in its sparse map")));
            }
            for slot in block[..504].chunks_exact(24) {
                slots.add(&slot[..12], &slot[12..])?;
            }
            extended = block[504] != 0;
        }
        Ok(SparseMap { segments: slots.segments, real_size })
    }
}

/// Padding after `size` bytes of data to the next 512-byte block.
fn padding(size: u64) -> u64 {
    (512 - size % 512) % 512
}

/// What to do for one checked entry.
enum Plan {
    /// The `./` entry: the root exists already.
    Skip,
    Dir,
    File,
    Sparse(SparseMap),
    Symlink(Vec<u8>),
    /// Another name for an earlier file of the archive.
    HardLink(Vec<u8>),
}

/// What the archive made at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Made {
    Dir,
    File,
    Symlink,
    /// Anything else (an image layer's whiteout): no path goes through it, no link to it.
    Other,
}

#[derive(Debug)]
struct SeenNode {
    made: Made,
    children: HashMap<Vec<u8>, usize>,
}

/// What the archive made so far, as a tree of path components, so that checking an entry costs
/// the length of its path (not its depth times its length).
#[derive(Debug)]
pub(crate) struct Seen {
    nodes: Vec<SeenNode>,
}

impl Seen {
    pub(crate) fn new() -> Seen {
        Seen { nodes: vec![SeenNode { made: Made::Dir, children: HashMap::new() }] }
    }

    /// The first proper prefix of `comps` that the archive made a symlink (or something else
    /// that is not a directory, see [`Made::Other`]), if any.
    pub(crate) fn symlink_prefix(&self, comps: &[&[u8]]) -> Option<String> {
        let mut cur = 0;
        for (i, c) in comps.iter().enumerate().take(comps.len().saturating_sub(1)) {
            cur = *self.nodes[cur].children.get(*c)?;
            if matches!(self.nodes[cur].made, Made::Symlink | Made::Other) {
                return Some(String::from_utf8_lossy(&comps[..=i].join(&b'/')).into_owned());
            }
        }
        None
    }

    pub(crate) fn made(&self, comps: &[&[u8]]) -> Option<Made> {
        let mut cur = 0;
        for c in comps {
            cur = *self.nodes[cur].children.get(*c)?;
        }
        Some(self.nodes[cur].made)
    }

    /// Records that `comps` is now `made` (and its parents directories).
    pub(crate) fn record(&mut self, comps: &[&[u8]], made: Made) {
        let mut cur = 0;
        for c in comps {
            cur = match self.nodes[cur].children.get(*c) {
                Some(&n) => n,
                None => {
                    let n = self.nodes.len();
                    self.nodes.push(SeenNode { made: Made::Dir, children: HashMap::new() });
                    self.nodes[cur].children.insert(c.to_vec(), n);
                    n
                }
            };
        }
        let node = &mut self.nodes[cur];
        node.made = made;
        if made != Made::Dir {
            node.children.clear();
        }
    }
}

pub(crate) fn hostile(entry: &str, reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Hostile { entry: entry.to_owned(), reason: reason.into() }
}

/// The normalized components of an entry's path or hard link target: relative, no `..`, no NUL,
/// within length limits; any other bytes (names that are not UTF-8 too) are kept as they are.
/// Empty and `.` components (`./a`, `dir/`) are dropped.
pub(crate) fn check_path<'a>(shown: &str, raw: &'a [u8], what: &str) -> Result<Vec<&'a [u8]>, ArchiveError> {
    if raw.contains(&0) {
        return Err(hostile(shown, format!("{what} contains NUL")));
    }
    if raw.len() > MAX_PATH {
        return Err(hostile(shown, format!("{what} is longer than {MAX_PATH} bytes")));
    }
    if raw.starts_with(b"/") {
        return Err(hostile(shown, format!("{what} is absolute")));
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(hostile(shown, format!("{what} has a `..` component"))),
            c if c.len() > MAX_NAME => {
                return Err(hostile(shown, format!("{what} has a component longer than {MAX_NAME} bytes")))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Checks a symlink's target, which is data: absolute targets and `..` are kept as they are
/// (nothing here ever resolves through a link, see [`confined`]); only an empty target, NUL and
/// a target longer than a path are refused.
pub(crate) fn check_symlink(shown: &str, raw: &[u8]) -> Result<Vec<u8>, ArchiveError> {
    if raw.is_empty() {
        return Err(hostile(shown, "empty symlink target"));
    }
    if raw.contains(&0) {
        return Err(hostile(shown, "symlink target contains NUL"));
    }
    if raw.len() >= MAX_PATH {
        return Err(hostile(shown, format!("symlink target is longer than {} bytes", MAX_PATH - 1)));
    }
    Ok(raw.to_vec())
}

fn os_path(bytes: &[u8]) -> &Path {
    Path::new(std::ffi::OsStr::from_bytes(bytes))
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// How writing a sparse file fails.
enum SparseError {
    Confined(ConfinedError),
    Archive(ArchiveError),
}

impl From<ConfinedError> for SparseError {
    fn from(e: ConfinedError) -> Self {
        SparseError::Confined(e)
    }
}

/// Writes the data of a sparse entry (its runs, as they follow in `data`) into `file` at their
/// offsets, seeking over the holes, and gives the file its size: holes stay holes.
pub(crate) fn fill_sparse<R: Read>(
    file: &mut std::fs::File,
    data: &mut TarIn<R>,
    map: &SparseMap,
    shown: &str,
) -> Result<(), ArchiveError> {
    use std::io::{Seek, SeekFrom};
    let write_error = |e: io::Error| {
        if is_no_space(&e) {
            ArchiveError::NoSpace
        } else if matches!(e.raw_os_error(), Some(libc::EFBIG) | Some(libc::EINVAL)) {
            // Past the largest file the filesystem has (16 TiB for ext4 with 4 KiB blocks):
            // seeking there is EINVAL, writing or truncating EFBIG.
            hostile(
                shown,
                format!("sparse file of {} bytes: larger than a file of the filesystem can be", map.real_size),
            )
        } else {
            ArchiveError::Write {
                entry: shown.to_owned(),
                source: ConfinedError::Io { op: "write", path: shown.to_owned(), source: e },
            }
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    for &(offset, len) in &map.segments {
        file.seek(SeekFrom::Start(offset)).map_err(write_error)?;
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match data.read(&mut buf[..want]) {
                Ok(0) => return Err(ArchiveError::Corrupt(format!("entry {shown:?} is truncated"))),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(data.fail(Some(shown), e)),
            };
            file.write_all(&buf[..n]).map_err(write_error)?;
            left -= n as u64;
        }
    }
    file.set_len(map.real_size).map_err(write_error)
}

/// Extracts a tar upload (plain, gzip or zstd, see [`detect`]) into `staging`, which should be
/// empty, owned by `owner`. On error the staging root holds a part of the archive and is meant
/// to be thrown away.
pub fn extract(reader: impl Read, staging: &Root, owner: Owner, limits: Limits) -> Result<Stats, ArchiveError> {
    let decoded = decompress(reader).map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    let mut tar = TarIn::new(decoded);

    let mut stats = Stats::default();
    let mut seen = Seen::new();
    let mut dir_times = Vec::new();
    while let Some(mut entry) = tar.next()? {
        let shown = String::from_utf8_lossy(&entry.path).into_owned();
        stats.entries += 1;
        if stats.entries > limits.max_entries {
            return Err(ArchiveError::TooLarge {
                entry: Some(shown),
                reason: format!("more than {} entries", limits.max_entries),
            });
        }
        let size = entry.size;
        let header = &entry.header;
        // A PAX sparse file is a regular entry with a map: the same as a GNU one from here.
        let kind = if entry.sparse.is_some() { EntryType::GNUSparse } else { header.entry_type() };

        // Every check, before anything is written for this entry.
        let path_bytes = std::mem::take(&mut entry.path);
        let comps = check_path(&shown, &path_bytes, "path")?;
        let mode = header.mode().map_err(|e| ArchiveError::Corrupt(format!("entry {shown:?}: {e}")))?;
        if mode & 0o6000 != 0 {
            return Err(hostile(&shown, "setuid or setgid bit"));
        }
        if mode & 0o1000 != 0 && kind != EntryType::Directory {
            return Err(hostile(&shown, "sticky bit on a file"));
        }
        let plan = match kind {
            // A trailing slash made a directory of old (V7) archives, which had no directory type.
            EntryType::Regular if path_bytes.ends_with(b"/") && size == 0 => Plan::Dir,
            EntryType::Regular | EntryType::GNUSparse if path_bytes.ends_with(b"/") => {
                return Err(hostile(&shown, "a file whose name ends with `/`"))
            }
            EntryType::Regular | EntryType::Continuous => Plan::File,
            EntryType::GNUSparse => {
                let map = entry.sparse.take().unwrap_or_default();
                map.check(size).map_err(|reason| hostile(&shown, reason))?;
                if size > limits.max_bytes {
                    return Err(hostile(
                        &shown,
                        format!(
                            "sparse file with {size} bytes of data: more than the filesystem holds ({} bytes)",
                            limits.max_bytes
                        ),
                    ));
                }
                Plan::Sparse(map)
            }
            EntryType::Directory => Plan::Dir,
            EntryType::Symlink => {
                let target = entry.link.as_deref().ok_or_else(|| hostile(&shown, "symlink without target"))?;
                Plan::Symlink(check_symlink(&shown, target)?)
            }
            EntryType::Link => {
                let target = entry.link.as_deref().ok_or_else(|| hostile(&shown, "hard link without target"))?;
                let target = check_path(&shown, target, "hard link target")?;
                if seen.made(&target) != Some(Made::File) {
                    return Err(hostile(&shown, "hard link target is not an earlier file of the archive"));
                }
                Plan::HardLink(target.join(&b'/'))
            }
            EntryType::Char => return Err(hostile(&shown, "character device")),
            EntryType::Block => return Err(hostile(&shown, "block device")),
            EntryType::Fifo => return Err(hostile(&shown, "fifo")),
            other => return Err(hostile(&shown, format!("unsupported entry type {:?}", other.as_byte() as char))),
        };
        let plan = if comps.is_empty() {
            match plan {
                Plan::Dir => Plan::Skip,
                _ => return Err(hostile(&shown, "names the root")),
            }
        } else {
            plan
        };
        let path = comps.join(&b'/');
        if let Some(prefix) = seen.symlink_prefix(&comps) {
            return Err(hostile(&shown, format!("path goes through the symlink {prefix:?}")));
        }
        let new_bytes = stats.bytes.saturating_add(size);
        if new_bytes > limits.max_bytes {
            return Err(ArchiveError::TooLarge {
                entry: Some(shown),
                reason: format!("more than {} bytes", limits.max_bytes),
            });
        }
        stats.bytes = new_bytes;
        tar.meter.allow_more(size.saturating_add(HEADER_ALLOWANCE));
        let mtime = entry.mtime;

        let write_error = |source: ConfinedError| match source {
            ConfinedError::NoSpace => ArchiveError::NoSpace,
            source => ArchiveError::Write { entry: shown.clone(), source },
        };
        let rel = os_path(&path);
        match plan {
            Plan::Skip => continue,
            Plan::Dir => {
                confined::create_dir(staging, rel, mode, owner).map_err(write_error)?;
                if let Some(t) = mtime {
                    dir_times.push((path.clone(), t));
                }
                seen.record(&comps, Made::Dir);
            }
            Plan::File => {
                let n = match confined::write_atomic(staging, rel, &mut tar, size, mode, owner) {
                    Ok(n) => n,
                    Err(ConfinedError::Read(e)) => return Err(tar.fail(Some(&shown), e)),
                    Err(e) => return Err(write_error(e)),
                };
                if n != size {
                    return Err(ArchiveError::Corrupt(format!("entry {shown:?} is truncated")));
                }
                if let Some(t) = mtime {
                    confined::set_modified(staging, rel, t).map_err(write_error)?;
                }
                seen.record(&comps, Made::File);
            }
            Plan::Sparse(map) => {
                let written = confined::write_atomic_with(staging, rel, mode, owner, |file| {
                    fill_sparse(file, &mut tar, &map, &shown).map_err(SparseError::Archive)
                });
                match written {
                    Ok(()) => {}
                    Err(SparseError::Archive(e)) => return Err(e),
                    Err(SparseError::Confined(e)) => return Err(write_error(e)),
                }
                if let Some(t) = mtime {
                    confined::set_modified(staging, rel, t).map_err(write_error)?;
                }
                seen.record(&comps, Made::File);
            }
            Plan::Symlink(target) => {
                confined::symlink(staging, os_path(&target), rel, owner).map_err(write_error)?;
                if let Some(t) = mtime {
                    confined::set_modified(staging, rel, t).map_err(write_error)?;
                }
                seen.record(&comps, Made::Symlink);
            }
            Plan::HardLink(target) => {
                confined::hard_link(staging, os_path(&target), rel, owner).map_err(write_error)?;
                seen.record(&comps, Made::File);
            }
        }
    }
    // Last, as writing into a directory changes its time.
    for (path, t) in dir_times.iter().rev() {
        confined::set_modified(staging, os_path(path), *t)
            .map_err(|source| ArchiveError::Write { entry: String::from_utf8_lossy(path).into_owned(), source })?;
    }
    Ok(stats)
}

/// Writes the whole tree under `root` to `out` as a plain tar archive (GNU format) and returns
/// the bytes written. See [`TarReader`], which this copies from.
pub fn write_tar(root: &Root, mut out: impl Write) -> io::Result<u64> {
    let written = io::copy(&mut TarReader::new(root), &mut out)?;
    out.flush()?;
    Ok(written)
}

/// `lseek(2)` with `SEEK_DATA` or `SEEK_HOLE`; `None` for `ENXIO` (no data at or after `pos`).
fn seek_to(file: &std::fs::File, pos: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    let pos = libc::off_t::try_from(pos).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek on an open fd with plain integers; it only moves the file's offset.
    let r = unsafe { libc::lseek(file.as_raw_fd(), pos, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) };
    }
    Ok(Some(r as u64))
}

/// The runs of data of `file`, whose size is `size`, as `SEEK_DATA` and `SEEK_HOLE` find them,
/// rounded out to 512-byte blocks, with holes shorter than `min_hole` counted as data; `None`
/// when there would be more than `max` runs.
fn runs_with(file: &std::fs::File, size: u64, min_hole: u64, max: usize) -> io::Result<Option<Vec<(u64, u64)>>> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Some(data) = seek_to(file, pos, libc::SEEK_DATA)? else { break };
        if data >= size {
            break;
        }
        let hole = seek_to(file, data, libc::SEEK_HOLE)?.unwrap_or(size);
        // A file that changes meanwhile may answer anything: always move on.
        let data = data & !511;
        let end = hole.max(data + 1).next_multiple_of(512).min(size);
        let count = runs.len();
        match runs.last_mut() {
            Some((offset, len)) if data <= *offset + *len || data - (*offset + *len) < min_hole => {
                *len = end.max(*offset + *len) - *offset;
            }
            _ if count >= max => return Ok(None),
            _ => runs.push((data, end - data)),
        }
        pos = end;
    }
    Ok(Some(runs))
}

/// The sparse map of a file of `size` bytes when it has holes, `None` when it has none (or its
/// filesystem cannot tell): its runs of data from `SEEK_DATA`/`SEEK_HOLE`, ending with a run of
/// length 0 at `size` when the file ends in a hole (as GNU tar writes it), at most
/// [`MAX_SPARSE_SEGMENTS`] runs: a file with more gets its smallest holes stored as data (the
/// smallest hole kept doubles, from 64 KiB, until the runs fit). Moves the file's offset.
pub fn sparse_map_of(file: &std::fs::File, size: u64) -> io::Result<Option<SparseMap>> {
    if size == 0 {
        return Ok(None);
    }
    match seek_to(file, 0, libc::SEEK_HOLE) {
        Ok(Some(hole)) if hole < size => {}
        Ok(_) => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut min_hole = 0u64;
    let mut segments = loop {
        if let Some(runs) = runs_with(file, size, min_hole, MAX_SPARSE_SEGMENTS - 1)? {
            break runs;
        }
        min_hole = min_hole.saturating_mul(2).max(64 * 1024);
    };
    if segments.last().is_none_or(|(offset, len)| offset + len < size) {
        segments.push((size, 0));
    }
    Ok(Some(SparseMap { segments, real_size: size }))
}

/// Puts `map` into a GNU sparse header (type `S`, its size the data it carries) and returns the
/// extension blocks that must follow the header (21 runs each).
fn sparse_header(header: &mut tar::Header, map: &SparseMap) -> Vec<u8> {
    header.set_entry_type(EntryType::GNUSparse);
    header.set_size(map.data_bytes());
    let mut ext = Vec::new();
    let (first, rest) = map.segments.split_at(map.segments.len().min(4));
    if let Some(gnu) = header.as_gnu_mut() {
        gnu.set_real_size(map.real_size);
        for (slot, (offset, len)) in gnu.sparse.iter_mut().zip(first) {
            write_number(&mut slot.offset, *offset);
            write_number(&mut slot.numbytes, *len);
        }
        gnu.isextended[0] = u8::from(!rest.is_empty());
    }
    let chunks: Vec<&[(u64, u64)]> = rest.chunks(21).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut block = tar::GnuExtSparseHeader::new();
        for (slot, (offset, len)) in block.sparse.iter_mut().zip(chunk.iter()) {
            write_number(&mut slot.offset, *offset);
            write_number(&mut slot.numbytes, *len);
        }
        block.isextended[0] = u8::from(i + 1 < chunks.len());
        ext.extend_from_slice(block.as_bytes());
    }
    ext
}

/// The data of a sparse file's runs, read at their offsets as the caller reads; a file that
/// shrinks meanwhile reads as zeros past its end.
struct SparseBody {
    file: std::fs::File,
    segments: Vec<(u64, u64)>,
    index: usize,
    done: u64,
}

impl Read for SparseBody {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        while let Some(&(offset, len)) = self.segments.get(self.index) {
            if self.done == len {
                self.index += 1;
                self.done = 0;
                continue;
            }
            let n = out.len().min(usize::try_from(len - self.done).unwrap_or(usize::MAX));
            let got = self.file.read_at(&mut out[..n], offset + self.done)?;
            let got = if got == 0 {
                out[..n].fill(0);
                n
            } else {
                got
            };
            self.done += got as u64;
            return Ok(got);
        }
        Ok(0)
    }
}

/// A file's bytes in an archive.
enum FileData {
    /// What it has, up to its announced size, then zeros.
    Plain(io::Take<io::Chain<io::Take<std::fs::File>, io::Repeat>>),
    Sparse(SparseBody),
}

impl Read for FileData {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            FileData::Plain(r) => r.read(out),
            FileData::Sparse(r) => r.read(out),
        }
    }
}

/// The tree under a root as a plain tar archive (GNU format), produced as it is read: each
/// `read` walks only as far as needed to fill the caller's buffer, so a reader that stops
/// reading holds one open file, at most [`confined::MAX_OPEN_DIRS`] directories and one
/// entry's headers, whatever the size and depth of the tree. Modes and mtimes are kept, owners
/// are 0, symlinks stay symlinks, fifos, sockets and devices are left out. A file that shrinks
/// while it is read is padded with zeros to the size its header announced.
pub struct TarReader<R> {
    walker: confined::Walker<R>,
    /// Headers (and long-name extensions) of the next entry, then padding, not yet read.
    pending: Vec<u8>,
    pending_at: usize,
    /// The data of the current file still to come, and the padding after it.
    data: Option<(FileData, usize)>,
    finished: bool,
}

impl<R: std::borrow::Borrow<Root>> TarReader<R> {
    /// The archive of `root` (a `Root` or a reference to one).
    pub fn new(root: R) -> Self {
        TarReader {
            walker: confined::Walker::new(root),
            pending: Vec::new(),
            pending_at: 0,
            data: None,
            finished: false,
        }
    }

    /// Prepares the next entry's headers (and data); `false` at the end of the archive.
    fn advance(&mut self) -> io::Result<bool> {
        self.pending.clear();
        self.pending_at = 0;
        loop {
            let Some(item) = self.walker.next() else {
                if self.finished {
                    return Ok(false);
                }
                self.finished = true;
                // The end of the archive: two zero blocks.
                self.pending.resize(1024, 0);
                return Ok(true);
            };
            let (path, entry, node) = item.map_err(io::Error::other)?;
            let mut path = path.into_os_string().into_vec();
            let mut header = tar::Header::new_gnu();
            header.set_mode(entry.mode & 0o777);
            header.set_mtime(entry.modified.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
            header.set_uid(0);
            header.set_gid(0);
            header.set_size(0);
            match node {
                Node::Dir => {
                    // The sticky bit stays (a shared `tmp`); setuid and setgid do not.
                    header.set_mode(entry.mode & 0o1777);
                    header.set_entry_type(EntryType::Directory);
                    path.push(b'/');
                    put_header(&mut self.pending, &mut header, &path, None);
                }
                Node::File(mut file) => {
                    // A file with holes goes as a GNU sparse entry: its runs of data only.
                    if let Ok(Some(map)) = sparse_map_of(&file, entry.size) {
                        let ext = sparse_header(&mut header, &map);
                        put_header(&mut self.pending, &mut header, &path, None);
                        self.pending.extend_from_slice(&ext);
                        let pad = padding(map.data_bytes()) as usize;
                        let body = SparseBody { file, segments: map.segments, index: 0, done: 0 };
                        self.data = Some((FileData::Sparse(body), pad));
                        return Ok(true);
                    }
                    io::Seek::seek(&mut file, io::SeekFrom::Start(0))?;
                    header.set_entry_type(EntryType::Regular);
                    header.set_size(entry.size);
                    // The header announces `entry.size` bytes; the body comes from the file, read
                    // as the caller reads.
                    put_header(&mut self.pending, &mut header, &path, None);
                    let body = file.take(entry.size).chain(io::repeat(0)).take(entry.size);
                    self.data = Some((FileData::Plain(body), padding(entry.size) as usize));
                }
                Node::Symlink(target) => {
                    header.set_entry_type(EntryType::Symlink);
                    put_header(&mut self.pending, &mut header, &path, Some(target.as_os_str().as_bytes()));
                }
                Node::Other => continue,
            }
            return Ok(true);
        }
    }
}

/// Appends a GNU long name (`L`) or long link (`K`) record for `name`: its bytes as they are,
/// NUL-terminated.
fn put_long(out: &mut Vec<u8>, kind: EntryType, name: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(name.len() as u64 + 1);
    h.set_entry_type(kind);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(name);
    out.push(0);
    out.resize(out.len().next_multiple_of(512), 0);
}

/// Appends `header` for `path` (and `link`), raw bytes as they are: a name that does not fit
/// the header's 100 bytes goes before it in a GNU long name record, as GNU tar writes it (the
/// header keeps its first 99 bytes).
fn put_header(out: &mut Vec<u8>, header: &mut tar::Header, path: &[u8], link: Option<&[u8]>) {
    const FIELD: usize = 100;
    if path.len() >= FIELD {
        put_long(out, EntryType::GNULongName, path);
    }
    if let Some(link) = link.filter(|l| l.len() >= FIELD) {
        put_long(out, EntryType::GNULongLink, link);
    }
    let old = header.as_old_mut();
    let n = path.len().min(FIELD - 1);
    old.name = [0; FIELD];
    old.name[..n].copy_from_slice(&path[..n]);
    if let Some(link) = link {
        let n = link.len().min(FIELD - 1);
        old.linkname = [0; FIELD];
        old.linkname[..n].copy_from_slice(&link[..n]);
    }
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
}

impl<R: std::borrow::Borrow<Root>> Read for TarReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pending_at < self.pending.len() {
                let n = out.len().min(self.pending.len() - self.pending_at);
                out[..n].copy_from_slice(&self.pending[self.pending_at..self.pending_at + n]);
                self.pending_at += n;
                return Ok(n);
            }
            if let Some((body, pad)) = &mut self.data {
                let n = body.read(out)?;
                if n > 0 {
                    return Ok(n);
                }
                self.pending = vec![0; *pad];
                self.pending_at = 0;
                // Closes the file.
                self.data = None;
                continue;
            }
            if !self.advance()? {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    const OWNER: Owner = Owner { uid: 1_000_000, gid: 1_000_000 };
    const LIMITS: Limits = Limits { max_entries: 1000, max_bytes: 10 << 20 };

    /// A tempdir holding `staging/` (the root to extract into) and a sentinel file beside it.
    struct Scene {
        dir: tempfile::TempDir,
        staging: Root,
    }

    impl Scene {
        fn new() -> Scene {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir(dir.path().join("staging")).unwrap();
            fs::write(dir.path().join("sentinel"), b"sentinel").unwrap();
            let staging = Root::open(dir.path().join("staging")).unwrap();
            Scene { dir, staging }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join("staging").join(rel)
        }

        fn extract(&self, data: &[u8], limits: Limits) -> Result<Stats, ArchiveError> {
            extract(data, &self.staging, OWNER, limits)
        }

        /// Nothing was created or changed next to the staging root.
        fn assert_untouched(&self, case: &str) {
            let mut names: Vec<_> = fs::read_dir(self.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            names.sort();
            assert_eq!(names, ["sentinel", "staging"], "{case}: something was created outside the staging root");
            assert_eq!(fs::read(self.dir.path().join("sentinel")).unwrap(), b"sentinel", "{case}");
        }
    }

    /// A tar written header by header, for names and types that `tar::Builder` refuses.
    #[derive(Default)]
    struct Raw(Vec<u8>);

    impl Raw {
        fn entry(self, name: &[u8], kind: EntryType, mode: u32, link: &[u8], data: &[u8]) -> Raw {
            self.entry_with(name, kind, mode, link, data, |_| {})
        }

        fn entry_with(
            mut self,
            name: &[u8],
            kind: EntryType,
            mode: u32,
            link: &[u8],
            data: &[u8],
            tweak: impl FnOnce(&mut tar::Header),
        ) -> Raw {
            let mut h = tar::Header::new_gnu();
            tweak(&mut h);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_entry_type(kind);
            h.set_mtime(1_600_000_000);
            h.set_uid(0);
            h.set_gid(0);
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
            h.set_cksum();
            self.0.extend_from_slice(h.as_bytes());
            self.0.extend_from_slice(data);
            self.0.resize(self.0.len().next_multiple_of(512), 0);
            self
        }

        fn file(self, name: &str, data: &[u8]) -> Raw {
            self.entry(name.as_bytes(), EntryType::Regular, 0o644, b"", data)
        }

        fn dir(self, name: &str) -> Raw {
            self.entry(name.as_bytes(), EntryType::Directory, 0o755, b"", b"")
        }

        fn symlink(self, name: &str, target: &str) -> Raw {
            self.entry(name.as_bytes(), EntryType::Symlink, 0o777, target.as_bytes(), b"")
        }

        fn hard_link(self, name: &str, target: &str) -> Raw {
            self.entry(name.as_bytes(), EntryType::Link, 0o644, target.as_bytes(), b"")
        }

        fn device(self, name: &str, kind: EntryType) -> Raw {
            self.entry(name.as_bytes(), kind, 0o666, b"", b"")
        }

        /// A GNU sparse entry (type `S`) of `real_size` bytes with these runs and `data`.
        fn sparse(self, name: &str, real_size: u64, runs: &[(u64, u64)], data: &[u8]) -> Raw {
            let claimed = runs.iter().map(|r| r.1).sum();
            self.sparse_claiming(name, real_size, runs, claimed, data)
        }

        /// A GNU sparse entry whose header announces `size` bytes of data.
        fn sparse_claiming(mut self, name: &str, real_size: u64, runs: &[(u64, u64)], size: u64, data: &[u8]) -> Raw {
            let mut h = tar::Header::new_gnu();
            let map = SparseMap { segments: runs.to_vec(), real_size };
            let ext = sparse_header(&mut h, &map);
            h.set_size(size);
            h.set_mode(0o644);
            h.set_mtime(1_600_000_000);
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            self.0.extend_from_slice(h.as_bytes());
            self.0.extend_from_slice(&ext);
            self.0.extend_from_slice(data);
            self.0.resize(self.0.len().next_multiple_of(512), 0);
            self
        }

        /// A PAX extended header (type `x`) with these records, for the next entry.
        fn pax(mut self, records: &[(&str, &[u8])]) -> Raw {
            let mut body = Vec::new();
            for (key, value) in records {
                let rest = key.len() + value.len() + 3;
                let mut len = rest + 1;
                while len != rest + len.to_string().len() {
                    len = rest + len.to_string().len();
                }
                body.extend_from_slice(format!("{len} {key}=").as_bytes());
                body.extend_from_slice(value);
                body.push(b'\n');
            }
            let mut h = tar::Header::new_ustar();
            h.set_path("PaxHeaders/x").unwrap();
            h.set_size(body.len() as u64);
            h.set_entry_type(EntryType::XHeader);
            h.set_mode(0o644);
            h.set_cksum();
            self.0.extend_from_slice(h.as_bytes());
            self.0.extend_from_slice(&body);
            self.0.resize(self.0.len().next_multiple_of(512), 0);
            self
        }

        fn finish(mut self) -> Vec<u8> {
            self.0.extend_from_slice(&[0; 1024]);
            self.0
        }
    }

    /// The data of a PAX 1.0 sparse entry: its map, padded to a block, then `data` bytes.
    fn pax_map_data(map: &str, data: usize) -> Vec<u8> {
        let mut out = map.as_bytes().to_vec();
        out.resize(out.len().next_multiple_of(512), 0);
        out.extend((0..data).map(|i| (i % 250 + 1) as u8));
        out
    }

    /// A sparse entry whose map goes on and on: extension blocks of runs of 0 bytes, far more
    /// than [`MAX_SPARSE_SEGMENTS`].
    fn huge_sparse_map(name: &str) -> Vec<u8> {
        let runs: Vec<(u64, u64)> = (0..MAX_SPARSE_SEGMENTS as u64 * 2).map(|i| (i * 512, 0)).collect();
        Raw::default().sparse(name, 1 << 40, &runs, b"").finish()
    }

    /// A tar with a path the header cannot hold (GNU long name), through `tar::Builder`.
    fn long_name_tar(path: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(1);
        h.set_entry_type(EntryType::Regular);
        b.append_data(&mut h, Path::new(std::ffi::OsStr::from_bytes(path)), &b"x"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn gzip(members: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in members {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(m).unwrap();
            out.extend(e.finish().unwrap());
        }
        out
    }

    /// A valid zstd frame of raw (stored) blocks, built by hand: the format without a compressor.
    fn zstd_raw_frame(data: &[u8]) -> Vec<u8> {
        let mut out = vec![0x28, 0xb5, 0x2f, 0xfd];
        // Frame header descriptor: 4-byte content size, single segment, no checksum, no dict.
        out.push(0b1010_0000);
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
        let chunks: Vec<&[u8]> = if data.is_empty() { vec![&[]] } else { data.chunks(100_000).collect() };
        for (i, chunk) in chunks.iter().enumerate() {
            let last = u32::from(i + 1 == chunks.len());
            // Block header: last flag, type 0 (raw), size; 3 bytes little-endian.
            let header = last | ((chunk.len() as u32) << 3);
            out.extend_from_slice(&header.to_le_bytes()[..3]);
            out.extend_from_slice(chunk);
        }
        out
    }

    fn sample_tar() -> Vec<u8> {
        Raw::default().dir("d/").file("d/f.txt", b"hello").symlink("d/l", "f.txt").finish()
    }

    fn assert_sample(scene: &Scene) {
        assert_eq!(fs::read(scene.path("d/f.txt")).unwrap(), b"hello");
        assert_eq!(fs::read_link(scene.path("d/l")).unwrap(), Path::new("f.txt"));
    }

    #[test]
    fn detects_compression_by_magic() {
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(detect(b"ustar"), Compression::Plain);
        assert_eq!(detect(&[0x28, 0xb5]), Compression::Plain);
        assert_eq!(detect(&[]), Compression::Plain);
    }

    /// A tree with a file, subdirectories, symlinks, a long name and a fifo (left out).
    fn make_tree(root: &Path) {
        fs::write(root.join("a.txt"), b"alpha").unwrap();
        fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::create_dir_all(root.join("sub/deeper")).unwrap();
        fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(root.join("sub/b.bin"), (0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
        fs::create_dir(root.join("empty")).unwrap();
        std::os::unix::fs::symlink("sub/b.bin", root.join("link")).unwrap();
        std::os::unix::fs::symlink("../a.txt", root.join("sub/up")).unwrap();
        std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
        let long = format!("sub/deeper/{}", "n".repeat(200));
        fs::write(root.join(long), b"long name").unwrap();
        let fifo = std::ffi::CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    }

    /// Everything under a root, as (path, kind, permission bits, content or target).
    fn snapshot(root: &Root) -> Vec<(String, confined::Kind, u32, Vec<u8>)> {
        let mut out = Vec::new();
        confined::walk(root, |path, entry, node| -> Result<(), ConfinedError> {
            let content = match node {
                Node::File(mut f) => {
                    let mut v = Vec::new();
                    f.read_to_end(&mut v).unwrap();
                    v
                }
                Node::Symlink(t) => t.as_os_str().as_bytes().to_vec(),
                Node::Dir | Node::Other => Vec::new(),
            };
            let mode = if entry.kind == confined::Kind::Symlink { 0 } else { entry.mode };
            out.push((path.to_string_lossy().into_owned(), entry.kind, mode, content));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn round_trip() {
        let src_dir = tempfile::tempdir().unwrap();
        make_tree(src_dir.path());
        let src = Root::open(src_dir.path()).unwrap();
        let mut tar = Vec::new();
        let written = write_tar(&src, &mut tar).unwrap();
        assert_eq!(written, tar.len() as u64);

        let scene = Scene::new();
        let stats = scene.extract(&tar, LIMITS).unwrap();
        assert_eq!(stats.entries, 9);
        assert_eq!(stats.bytes, 5 + 100_000 + 9);
        let mut expected = snapshot(&src);
        expected.retain(|(p, ..)| p != "fifo");
        assert_eq!(snapshot(&scene.staging), expected);
        assert_eq!(fs::metadata(scene.path("a.txt")).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(fs::metadata(scene.path("sub")).unwrap().mode() & 0o7777, 0o750);
        // Times survive, directories' too.
        for p in ["a.txt", "sub", "sub/b.bin"] {
            let a = fs::metadata(src_dir.path().join(p)).unwrap().mtime();
            assert_eq!(fs::metadata(scene.path(p)).unwrap().mtime(), a, "{p}");
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            for p in ["a.txt", "sub", "sub/deeper", "link", "empty"] {
                let m = fs::symlink_metadata(scene.path(p)).unwrap();
                assert_eq!((m.uid(), m.gid()), (OWNER.uid, OWNER.gid), "{p}");
            }
        } else {
            eprintln!("SKIPPED: owner checks of round_trip need root");
        }
        scene.assert_untouched("round trip");
    }

    #[test]
    fn modes_are_masked_and_parents_default_to_0755() {
        let scene = Scene::new();
        let tar = Raw::default()
            .entry(b"x/y/file", EntryType::Regular, 0o100_640, b"", b"data")
            .entry(b"dir/", EntryType::Directory, 0o1777, b"", b"")
            .finish();
        scene.extract(&tar, LIMITS).unwrap();
        assert_eq!(fs::metadata(scene.path("x")).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(fs::metadata(scene.path("x/y")).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(fs::metadata(scene.path("x/y/file")).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(fs::metadata(scene.path("dir")).unwrap().mode() & 0o7777, 0o777);
    }

    #[test]
    fn dot_slash_paths_and_hard_links_extract() {
        let scene = Scene::new();
        let tar = Raw::default()
            .dir("./")
            .file("./f", b"shared")
            .hard_link("./g", "f")
            .dir("./d/")
            .hard_link("d/h", "./f")
            .file("v7dir/", b"")
            .finish();
        let stats = scene.extract(&tar, LIMITS).unwrap();
        assert_eq!(stats.entries, 6);
        assert!(scene.path("v7dir").is_dir());
        let f = fs::metadata(scene.path("f")).unwrap();
        assert_eq!(f.nlink(), 3);
        assert_eq!(fs::metadata(scene.path("d/h")).unwrap().ino(), f.ino());
        assert_eq!(fs::read_dir(scene.path("")).unwrap().count(), 4, "temporary names left behind");
    }

    #[test]
    fn gzip_input() {
        let scene = Scene::new();
        scene.extract(&gzip(&[&sample_tar()]), LIMITS).unwrap();
        assert_sample(&scene);
        // A multi-member gzip (pigz, concatenated files) is one stream.
        let tar = sample_tar();
        let scene = Scene::new();
        scene.extract(&gzip(&[&tar[..700], &tar[700..]]), LIMITS).unwrap();
        assert_sample(&scene);
    }

    /// Compresses with the `zstd` binary, if there is one.
    fn zstd_binary(data: &[u8]) -> Option<Vec<u8>> {
        let mut child =
            Command::new("zstd").args(["-q", "-c", "-3"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().ok()?;
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success());
        Some(out.stdout)
    }

    #[test]
    fn zstd_input_from_the_zstd_binary() {
        let tar = sample_tar();
        let Some(zst) = zstd_binary(&tar) else {
            eprintln!("SKIPPED: no zstd binary; zstd_input_hand_built_frames covers the decoder");
            return;
        };
        assert_eq!(detect(&zst), Compression::Zstd);
        let scene = Scene::new();
        scene.extract(&zst[..], LIMITS).unwrap();
        assert_sample(&scene);
        // Concatenated frames (with checksums) are one stream, like `zstd -d` reads them.
        let mut two = zstd_binary(&tar[..1000]).unwrap();
        two.extend(zstd_binary(&tar[1000..]).unwrap());
        let scene = Scene::new();
        scene.extract(&two[..], LIMITS).unwrap();
        assert_sample(&scene);
    }

    #[test]
    fn zstd_input_hand_built_frames() {
        let tar = sample_tar();
        let scene = Scene::new();
        scene.extract(&zstd_raw_frame(&tar), LIMITS).unwrap();
        assert_sample(&scene);
        // Two frames with a skippable frame between them.
        let mut data = zstd_raw_frame(&tar[..1000]);
        data.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        data.extend(zstd_raw_frame(&tar[1000..]));
        let scene = Scene::new();
        scene.extract(&data, LIMITS).unwrap();
        assert_sample(&scene);
    }

    #[test]
    fn corrupt_input() {
        let tar = sample_tar();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated in file data", tar[..512 * 2 + 3].to_vec()),
            ("truncated in a header", tar[..512 + 100].to_vec()),
            ("bad checksum", {
                let mut t = tar.clone();
                t[0] ^= 1;
                t
            }),
            ("truncated gzip", gzip(&[&tar])[..40].to_vec()),
            ("garbage after gzip magic", vec![0x1f, 0x8b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            ("truncated zstd", zstd_raw_frame(&tar)[..700].to_vec()),
            ("bad zstd frame", vec![0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff]),
        ];
        for (case, data) in cases {
            let scene = Scene::new();
            let e = scene.extract(&data, LIMITS).unwrap_err();
            assert!(matches!(e, ArchiveError::Corrupt(_)), "{case}: {e:?}");
            scene.assert_untouched(case);
        }
    }

    #[test]
    fn writes_go_through_the_root_even_through_a_sandbox_symlink() {
        // The staging root is meant to be empty, but should a symlink be there (made by a
        // sandbox), writing through it stays inside.
        let scene = Scene::new();
        std::os::unix::fs::symlink("../..", scene.path("out")).unwrap();
        std::os::unix::fs::symlink("/", scene.path("slash")).unwrap();
        let tar = Raw::default().file("out/escape", b"x").file("slash/escape2", b"y").finish();
        scene.extract(&tar, LIMITS).unwrap();
        assert_eq!(fs::read(scene.path("escape")).unwrap(), b"x");
        assert_eq!(fs::read(scene.path("escape2")).unwrap(), b"y");
        scene.assert_untouched("sandbox symlink");
    }

    #[test]
    fn no_space_is_its_own_error() {
        let Some(fs) = crate::confined::tests::SmallFs::mount(256 * 1024) else { return };
        let root = Root::open(fs.root()).unwrap();
        let tar = Raw::default().file("small", b"ok").file("big", &vec![1u8; 1 << 20]).finish();
        let e = extract(&tar[..], &root, OWNER, LIMITS).unwrap_err();
        assert!(matches!(e, ArchiveError::NoSpace), "{e:?}");
    }

    #[test]
    fn sparse_files_take_only_their_data_in_a_small_filesystem() {
        let Some(fs) = crate::confined::tests::SmallFs::mount(1 << 20) else { return };
        let root = Root::open(fs.root()).unwrap();
        // A terabyte whose data (8 KiB) fits: it lands, with holes.
        let tar = Raw::default().sparse("tera", TIB, &[(0, 4096), (TIB - 4096, 4096)], &[3; 8192]).finish();
        let stats = extract(&tar[..], &root, OWNER, LIMITS).unwrap();
        assert_eq!(stats.bytes, 8192);
        let meta = fs::metadata(fs.root().join("tera")).unwrap();
        assert_eq!(meta.len(), TIB);
        assert!(meta.blocks() * 512 <= 64 << 10, "{} bytes allocated", meta.blocks() * 512);
        // Data that does not fit is the filesystem being full, whatever the holes.
        let fresh = fs.root().join("fresh");
        fs::create_dir(&fresh).unwrap();
        let root = Root::open(&fresh).unwrap();
        let data = vec![3u8; 2 << 20];
        let tar = Raw::default().sparse("big", TIB, &[(0, 1 << 20), (1 << 30, 1 << 20)], &data).finish();
        let e = extract(&tar[..], &root, OWNER, LIMITS).unwrap_err();
        assert!(matches!(e, ArchiveError::NoSpace), "{e:?}");
        assert_eq!(fs::read_dir(&fresh).unwrap().count(), 0, "the temporary file was removed");
    }

    enum Expect {
        Hostile(&'static str),
        TooLarge(Option<&'static str>),
    }

    /// A unique name, to check that a write aimed at `/` did not happen.
    fn marker() -> String {
        format!("bulkhead-archive-test-{}", std::process::id())
    }

    fn hostile_corpus() -> Vec<(&'static str, Vec<u8>, Limits, Expect)> {
        use Expect::*;
        let ok = || Raw::default().file("ok.txt", b"fine");
        let m = marker();
        let deep = vec!["d".repeat(250); 17].join("/");
        let deep: &'static str = Box::leak(deep.into_boxed_str());
        let long: &'static str = Box::leak(format!("dir/{}", "c".repeat(300)).into_boxed_str());
        let mut bomb_tar = Vec::new();
        {
            // 200 MB of zeros in one file entry, compressed as 1 MB members.
            let mut h = tar::Header::new_gnu();
            h.set_path("bomb").unwrap();
            h.set_size(200 << 20);
            h.set_mode(0o644);
            h.set_entry_type(EntryType::Regular);
            h.set_cksum();
            let header = gzip(&[h.as_bytes()]);
            let zeros = gzip(&[&vec![0u8; 1 << 20]]);
            bomb_tar.extend(header);
            for _ in 0..200 {
                bomb_tar.extend_from_slice(&zeros);
            }
        }
        let zeros = gzip(&[&vec![0u8; 1 << 20]]);
        let ext_bomb = |kind: EntryType| {
            // A PAX or GNU long name header of 200 MB, which the tar crate reads into memory.
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..9].copy_from_slice(b"././@Bomb");
            h.set_size(200 << 20);
            h.set_mode(0o644);
            h.set_entry_type(kind);
            h.set_cksum();
            let mut out = gzip(&[h.as_bytes()]);
            for _ in 0..200 {
                out.extend_from_slice(&zeros);
            }
            out
        };
        let one_mb = Limits { max_entries: 1000, max_bytes: 1 << 20 };
        vec![
            ("absolute path", ok().file("/abs-escape", b"x").finish(), LIMITS, Hostile("/abs-escape")),
            ("parent", ok().file("../escape", b"x").finish(), LIMITS, Hostile("../escape")),
            ("inner parent", ok().file("a/../../escape", b"x").finish(), LIMITS, Hostile("a/../../escape")),
            ("harmless-looking parent", ok().file("a/../b", b"x").finish(), LIMITS, Hostile("a/../b")),
            (
                "file through an absolute symlink",
                ok().symlink("etc", "/etc").file(Box::leak(format!("etc/{m}").into_boxed_str()), b"x").finish(),
                LIMITS,
                Hostile(Box::leak(format!("etc/{m}").into_boxed_str())),
            ),
            (
                "directory through a symlink out",
                ok().symlink("x", "../../..").dir("x/escape-dir/").finish(),
                LIMITS,
                Hostile("x/escape-dir/"),
            ),
            (
                "hard link through a symlink",
                ok().symlink("s", "/").hard_link("hl", "s/etc/passwd").finish(),
                LIMITS,
                Hostile("hl"),
            ),
            (
                "symlink over a symlink, then through it",
                ok().dir("d/").symlink("l", "d").symlink("l", "/tmp").file("l/escape", b"x").finish(),
                LIMITS,
                Hostile("l/escape"),
            ),
            (
                "chained symlinks, then a file through them",
                ok().dir("d/")
                    .symlink("d/up", "..")
                    .symlink("d/up/up2", "..")
                    .file(Box::leak(format!("d/up/up2/{m}").into_boxed_str()), b"x")
                    .finish(),
                LIMITS,
                Hostile("d/up/up2"),
            ),
            (
                "file through an inner symlink",
                ok().dir("d/").symlink("l", "d").file("l/f", b"x").finish(),
                LIMITS,
                Hostile("l/f"),
            ),
            ("hard link to /etc/passwd", ok().hard_link("hl", "/etc/passwd").finish(), LIMITS, Hostile("hl")),
            ("hard link up", ok().hard_link("hl", "../sentinel").finish(), LIMITS, Hostile("hl")),
            (
                "hard link to a later entry",
                ok().hard_link("hl", "later").file("later", b"x").finish(),
                LIMITS,
                Hostile("hl"),
            ),
            ("hard link to a directory", ok().dir("d/").hard_link("hl", "d").finish(), LIMITS, Hostile("hl")),
            (
                "hard link to a replaced file",
                ok().file("f", b"x").symlink("f", "ok.txt").hard_link("hl", "f").finish(),
                LIMITS,
                Hostile("hl"),
            ),
            ("char device", ok().device("null", EntryType::Char).finish(), LIMITS, Hostile("null")),
            ("block device", ok().device("sda", EntryType::Block).finish(), LIMITS, Hostile("sda")),
            ("fifo", ok().device("pipe", EntryType::Fifo).finish(), LIMITS, Hostile("pipe")),
            (
                "sparse map overlapping",
                ok().sparse("sp", 10_000, &[(0, 4096), (2048, 4096)], &[7; 8192]).finish(),
                LIMITS,
                Hostile("sp"),
            ),
            (
                "sparse map out of order",
                ok().sparse("sp", 100_000, &[(8192, 512), (0, 512)], &[7; 1024]).finish(),
                LIMITS,
                Hostile("sp"),
            ),
            (
                "sparse run beyond the real size",
                ok().sparse("sp", 1000, &[(512, 1024)], &[7; 1024]).finish(),
                LIMITS,
                Hostile("sp"),
            ),
            (
                "sparse run overflowing u64",
                ok().sparse("sp", u64::MAX, &[(u64::MAX - 10, 512)], &[7; 512]).finish(),
                LIMITS,
                Hostile("sp"),
            ),
            (
                "sparse size beyond any file",
                ok().sparse("sp", u64::MAX, &[(0, 512)], &[7; 512]).finish(),
                LIMITS,
                Hostile("sp"),
            ),
            (
                "sparse map listing more data than the entry carries",
                ok().sparse_claiming("sp", 1 << 20, &[(0, 4096), (8192, 4096)], 4096, &[7; 4096]).finish(),
                LIMITS,
                Hostile("sp"),
            ),
            ("sparse map with a huge count", huge_sparse_map("sp"), LIMITS, Hostile("sp")),
            (
                "sparse data larger than the filesystem",
                ok().sparse("sp", 1 << 40, &[(0, 2 << 20), (1 << 39, 512)], &vec![7; (2 << 20) + 512]).finish(),
                Limits { max_entries: 10, max_bytes: 1 << 20 },
                Hostile("sp"),
            ),
            (
                "sparse entry named like a directory",
                ok().sparse("sp/", 1 << 20, &[(0, 512)], &[7; 512]).finish(),
                LIMITS,
                Hostile("sp/"),
            ),
            (
                "setuid file",
                ok().entry(b"suid", EntryType::Regular, 0o4755, b"", b"x").finish(),
                LIMITS,
                Hostile("suid"),
            ),
            (
                "setgid dir",
                ok().entry(b"sgid/", EntryType::Directory, 0o2755, b"", b"").finish(),
                LIMITS,
                Hostile("sgid/"),
            ),
            (
                "sticky file",
                ok().entry(b"sticky", EntryType::Regular, 0o1644, b"", b"x").finish(),
                LIMITS,
                Hostile("sticky"),
            ),
            (
                "NUL in a PAX path",
                ok().pax(&[("path", b"nul\0name")]).file("placeholder", b"x").finish(),
                LIMITS,
                Hostile("nul\u{0}name"),
            ),
            (
                "absolute PAX path",
                ok().pax(&[("path", b"/abs-escape")]).file("placeholder", b"x").finish(),
                LIMITS,
                Hostile("/abs-escape"),
            ),
            (
                "PAX sparse format 0.1",
                ok().pax(&[("GNU.sparse.map", b"0,1"), ("GNU.sparse.name", b"psp")])
                    .file("GNUSparse/psp", b"x")
                    .finish(),
                LIMITS,
                Hostile("psp"),
            ),
            (
                "PAX sparse without its size",
                ok().pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")]).file("psp", b"x").finish(),
                LIMITS,
                Hostile("psp"),
            ),
            (
                "PAX sparse map overlapping",
                ok().pax(&[
                    ("GNU.sparse.major", b"1"),
                    ("GNU.sparse.minor", b"0"),
                    ("GNU.sparse.name", b"pov"),
                    ("GNU.sparse.realsize", b"100000"),
                ])
                .file("GNUSparseFile.0/pov", &pax_map_data("2\n0\n4096\n1024\n4096\n", 8192))
                .finish(),
                LIMITS,
                Hostile("pov"),
            ),
            (
                "PAX sparse map with a huge count",
                ok().pax(&[
                    ("GNU.sparse.major", b"1"),
                    ("GNU.sparse.minor", b"0"),
                    ("GNU.sparse.name", b"phuge"),
                    ("GNU.sparse.realsize", b"100000"),
                ])
                .file("GNUSparseFile.0/phuge", &pax_map_data("99999999999\n", 0))
                .finish(),
                LIMITS,
                Hostile("phuge"),
            ),
            ("300-byte component", long_name_tar(long.as_bytes()), LIMITS, Hostile(long)),
            ("path over 4096 bytes", long_name_tar(deep.as_bytes()), LIMITS, Hostile(deep)),
            ("root as a file", ok().file(".", b"x").finish(), LIMITS, Hostile(".")),
            ("root as a symlink", ok().symlink("./", "ok.txt").finish(), LIMITS, Hostile("./")),
            ("file named like a directory", ok().file("f/", b"x").finish(), LIMITS, Hostile("f/")),
            (
                "too many entries",
                ok().file("f1", b"").file("f2", b"").file("f3", b"").finish(),
                Limits { max_entries: 3, max_bytes: 1 << 20 },
                TooLarge(Some("f3")),
            ),
            (
                "too many bytes",
                ok().file("f1", &[1; 100]).file("f2", &[1; 100]).finish(),
                Limits { max_entries: 10, max_bytes: 150 },
                TooLarge(Some("f2")),
            ),
            (
                "directory claiming data",
                ok().entry(b"d/", EntryType::Directory, 0o755, b"", &[0; 4096]).finish(),
                Limits { max_entries: 10, max_bytes: 1000 },
                TooLarge(Some("d/")),
            ),
            ("gzip bomb", bomb_tar, one_mb, TooLarge(Some("bomb"))),
            ("PAX header bomb", ext_bomb(EntryType::XHeader), one_mb, TooLarge(None)),
            ("GNU long name bomb", ext_bomb(EntryType::GNULongName), one_mb, TooLarge(None)),
        ]
    }

    #[test]
    fn hostile_archives_are_refused() {
        let start = std::time::Instant::now();
        for (case, data, limits, expect) in hostile_corpus() {
            let scene = Scene::new();
            let e = scene.extract(&data, limits).map(|s| panic!("{case}: extracted {s:?}")).unwrap_err();
            match (&expect, &e) {
                (Expect::Hostile(want), ArchiveError::Hostile { entry, .. }) => assert_eq!(entry, want, "{case}"),
                (Expect::TooLarge(want), ArchiveError::TooLarge { entry, .. }) => {
                    assert_eq!(entry.as_deref(), *want, "{case}")
                }
                _ => panic!("{case}: unexpected {e:?}"),
            }
            scene.assert_untouched(case);
            // The first, harmless entry was extracted; nothing named by a later one was.
            let names: Vec<_> = fs::read_dir(scene.path("")).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert!(names.iter().all(|n| !n.to_string_lossy().contains("escape")), "{case}: {names:?}");
            assert!(!Path::new("/").join(marker()).exists(), "{case}");
            eprintln!("{case}: {e}");
        }
        // The bombs stop early: far from decompressing 600 MB.
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "took {:?}", start.elapsed());
    }

    #[test]
    fn numbers_in_octal_and_base_256() {
        for v in [0, 1, 0o777, (1 << 33) - 1, 1 << 33, 1 << 40, u64::MAX] {
            let mut field = [0u8; 12];
            write_number(&mut field, v);
            assert_eq!(parse_number(&field), Some(v), "{v}");
            // The tar crate reads the same.
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().realsize = field;
            assert_eq!(h.as_gnu().unwrap().real_size().unwrap(), v, "{v}");
        }
        assert_eq!(parse_number(b"  755 \0\0\0\0\0\0"), Some(0o755));
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_number(b"12x4\0"), None);
        assert_eq!(parse_number(b"9\0"), None);
        // Negative base-256 and a value past u64.
        assert_eq!(parse_number(&[0xff; 12]), None);
        assert_eq!(parse_number(&[0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn sparse_maps_are_checked() {
        let map = |segments: &[(u64, u64)], real_size| SparseMap { segments: segments.to_vec(), real_size };
        assert_eq!(map(&[], 0).check(0), Ok(()));
        assert_eq!(map(&[(1 << 40, 0)], 1 << 40).check(0), Ok(()));
        assert_eq!(map(&[(0, 512), (4096, 100), (5000, 0)], 5000).check(612), Ok(()));
        // Touching runs are in order.
        assert_eq!(map(&[(0, 512), (512, 512)], 2048).check(1024), Ok(()));
        let err = |m: SparseMap, stored| m.check(stored).unwrap_err();
        assert!(err(map(&[(0, 4096), (2048, 10)], 10_000), 4106).contains("overlapping"));
        assert!(err(map(&[(4096, 10), (0, 10)], 10_000), 20).contains("out of order"));
        assert!(err(map(&[(512, 1024)], 1000), 1024).contains("past the file's size"));
        assert!(err(map(&[(u64::MAX - 1, 10)], i64::MAX as u64), 10).contains("past the file's size"));
        assert!(err(map(&[(0, 1)], u64::MAX), 1).contains("out of range"));
        assert!(err(map(&[(0, 4096)], 4096), 100).contains("carries 100"));
        let many: Vec<(u64, u64)> = (0..=MAX_SPARSE_SEGMENTS as u64).map(|i| (i, 0)).collect();
        assert!(err(map(&many, 1 << 30), 0).contains("more than"));
    }

    /// Reads the first entry of `tar` with the archive reader of [`extract`].
    fn first_entry(tar: &[u8]) -> InEntry {
        let meter = Rc::new(Meter::default());
        meter.allow_more(1 << 30);
        let mut t = TarIn { inner: Metered { inner: tar, meter: meter.clone() }, meter, left: 0, pad: 0 };
        t.next().unwrap().unwrap()
    }

    #[test]
    fn sparse_headers_round_trip_with_extension_blocks() {
        for count in [1usize, 4, 5, 25, 26, 47, 200] {
            let runs: Vec<(u64, u64)> = (0..count as u64).map(|i| (i * 8192 + (i % 3) * (1 << 34), 512)).collect();
            // Runs in order: spread them over a large file.
            let runs: Vec<(u64, u64)> =
                runs.iter().enumerate().map(|(i, r)| (i as u64 * (1 << 34) + r.0 % 8192, 512)).collect();
            let real_size = runs.last().unwrap().0 + 512 + 12_345;
            // As GNU tar (and a download) ends a map: a run of nothing at the file's end.
            let runs: Vec<(u64, u64)> = runs.into_iter().chain([(real_size, 0)]).collect();
            let data: Vec<u8> = (0..count * 512).map(|i| (i % 251) as u8).collect();
            let tar = Raw::default().sparse("big", real_size, &runs, &data).file("after", b"next").finish();
            let mut e = first_entry(&tar);
            let map = e.sparse.take().unwrap();
            assert_eq!(map, SparseMap { segments: runs.clone(), real_size }, "{count} runs");
            assert_eq!(e.size, data.len() as u64);
            assert_eq!(e.path, b"big");
            // The tar crate reads the same map: its entry has the file's size, and the entry
            // after it is in its place.
            let mut archive = tar::Archive::new(&tar[..]);
            let mut entries = archive.entries().unwrap();
            let first = entries.next().unwrap().unwrap();
            assert_eq!(first.size(), real_size, "{count} runs");
            drop(first);
            let mut second = entries.next().unwrap().unwrap();
            let mut text = String::new();
            second.read_to_string(&mut text).unwrap();
            assert_eq!(text, "next");
        }
    }

    #[test]
    fn a_small_sparse_file_reads_the_same_through_the_tar_crate() {
        let runs = [(0u64, 512u64), (4096, 1024), (10_000, 0)];
        let data: Vec<u8> = (0..1536u32).map(|i| (i % 250 + 1) as u8).collect();
        let tar = Raw::default().sparse("f", 10_000, &runs, &data).finish();
        let mut expected = vec![0u8; 10_000];
        expected[..512].copy_from_slice(&data[..512]);
        expected[4096..5120].copy_from_slice(&data[512..]);
        let mut archive = tar::Archive::new(&tar[..]);
        let mut content = Vec::new();
        archive.entries().unwrap().next().unwrap().unwrap().read_to_end(&mut content).unwrap();
        assert_eq!(content, expected);
        let scene = Scene::new();
        let stats = scene.extract(&tar, LIMITS).unwrap();
        assert_eq!(stats.bytes, 1536, "the data, not the holes, counts");
        assert_eq!(fs::read(scene.path("f")).unwrap(), expected);
    }

    /// Makes `path` a sparse file of `size` bytes with `chunk` written at each offset.
    fn make_sparse(path: &Path, size: u64, at: &[u64], chunk: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(path).unwrap();
        f.set_len(size).unwrap();
        for offset in at {
            f.write_all_at(chunk, *offset).unwrap();
        }
    }

    /// The map, allocated bytes and the data at each run of a file.
    fn sparse_view(path: &Path) -> (u64, Option<SparseMap>, Vec<Vec<u8>>) {
        use std::os::unix::fs::FileExt;
        let f = fs::File::open(path).unwrap();
        let meta = f.metadata().unwrap();
        let map = sparse_map_of(&f, meta.len()).unwrap();
        let data = map
            .iter()
            .flat_map(|m| m.segments.iter())
            .map(|(offset, len)| {
                let mut buf = vec![0u8; *len as usize];
                f.read_exact_at(&mut buf, *offset).unwrap();
                buf
            })
            .collect();
        (meta.blocks() * 512, map, data)
    }

    const TIB: u64 = 1 << 40;

    #[test]
    fn sparse_files_download_and_extract_sparse() {
        let src_dir = tempfile::tempdir().unwrap();
        let src = src_dir.path();
        let chunk: Vec<u8> = (0..4096u32).map(|i| (i % 253 + 1) as u8).collect();
        // A terabyte with a few blocks of data, past 8 GiB too (base-256 offsets).
        make_sparse(&src.join("tera"), TIB, &[0, 1 << 20, 40 << 30, TIB - 4096], &chunk);
        // Nothing but a hole.
        make_sparse(&src.join("hole"), TIB, &[], &chunk);
        // Enough runs for extension blocks, ending in a hole.
        let many: Vec<u64> = (0..60).map(|i| i * (1 << 20)).collect();
        make_sparse(&src.join("many"), 100 << 20, &many, &chunk);
        // A run that ends with the file, unaligned.
        make_sparse(&src.join("tail"), (8 << 20) + 100, &[8 << 20], &chunk[..100]);
        let root = Root::open(src).unwrap();
        let mut tar = Vec::new();
        write_tar(&root, &mut tar).unwrap();
        assert!(tar.len() < 1 << 20, "the archive holds holes as data: {} bytes", tar.len());

        let scene = Scene::new();
        let stats = scene.extract(&tar, LIMITS).unwrap();
        assert_eq!(stats.bytes, 4 * 4096 + 60 * 4096 + 100);
        for name in ["tera", "hole", "many", "tail"] {
            let (src_alloc, src_map, src_data) = sparse_view(&src.join(name));
            let (alloc, map, data) = sparse_view(&scene.path(name));
            assert!(src_map.is_some(), "{name}: the source is sparse");
            assert_eq!(map, src_map, "{name}");
            assert_eq!(data, src_data, "{name}");
            // Holes stay holes (an extent tree block or so aside).
            assert!(alloc <= src_alloc + (64 << 10), "{name}: {alloc} bytes allocated, the source has {src_alloc}");
            assert_eq!(fs::metadata(scene.path(name)).unwrap().len(), fs::metadata(src.join(name)).unwrap().len());
        }
    }

    #[test]
    fn many_small_holes_are_merged_to_fit_the_map() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        // More runs than a map holds: every other 4 KiB block written.
        let at: Vec<u64> = (0..(MAX_SPARSE_SEGMENTS as u64 + 10)).map(|i| i * 8192).collect();
        make_sparse(&path, at.last().unwrap() + 8192 + (1 << 30), &at, &[1u8; 4096]);
        let f = fs::File::open(&path).unwrap();
        let map = sparse_map_of(&f, f.metadata().unwrap().len()).unwrap().unwrap();
        assert!(map.segments.len() <= MAX_SPARSE_SEGMENTS, "{}", map.segments.len());
        // The small holes became data, the gigabyte at the end stayed a hole.
        assert!(map.data_bytes() < 2 * at.len() as u64 * 8192, "{}", map.data_bytes());
        assert_eq!(map.check(map.data_bytes()), Ok(()));
    }

    /// Runs `tar` with `args` in `dir`, `stdin` on its standard input; `None` without GNU tar.
    fn gnu_tar(dir: &Path, args: &[&str], stdin: &[u8]) -> Option<std::process::Output> {
        let mut child = Command::new("tar")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success(), "tar {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Some(out)
    }

    #[test]
    fn gnu_tar_reads_the_download_back_exactly() {
        let src_dir = tempfile::tempdir().unwrap();
        let src = src_dir.path();
        let chunk = vec![9u8; 4096];
        make_sparse(&src.join("tera"), TIB, &[0, 40 << 30, TIB - 4096], &chunk);
        let weird = std::ffi::OsStr::from_bytes(b"caf\xe9-\xff.txt");
        fs::write(src.join(weird), b"latin-1").unwrap();
        let long_weird = std::ffi::OsString::from_vec([&b"\xfe"[..], &[b'n'; 150]].concat());
        fs::create_dir(src.join("d")).unwrap();
        fs::write(src.join("d").join(&long_weird), b"long").unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3", src.join("python")).unwrap();
        std::os::unix::fs::symlink(weird, src.join("to-weird")).unwrap();
        let mut tar = Vec::new();
        write_tar(&Root::open(src).unwrap(), &mut tar).unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        let Some(listing) = gnu_tar(out_dir.path(), &["-tvf", "-"], &tar) else {
            eprintln!("SKIPPED: no tar binary");
            return;
        };
        let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
        assert!(listing.contains("1099511627776"), "tar lists the file's real size: {listing}");
        gnu_tar(out_dir.path(), &["-xSf", "-"], &tar).unwrap();
        let out = out_dir.path();
        let (alloc, map, data) = sparse_view(&out.join("tera"));
        let (_, src_map, src_data) = sparse_view(&src.join("tera"));
        assert_eq!((map, data), (src_map, src_data));
        assert!(alloc < 1 << 20, "GNU tar wrote {alloc} bytes");
        assert_eq!(fs::read(out.join(weird)).unwrap(), b"latin-1");
        assert_eq!(fs::read(out.join("d").join(&long_weird)).unwrap(), b"long");
        assert_eq!(fs::read_link(out.join("python")).unwrap(), Path::new("/usr/bin/python3"));
        assert_eq!(fs::read_link(out.join("to-weird")).unwrap(), Path::new(weird));
    }

    #[test]
    fn gnu_tar_sparse_archives_extract_with_holes() {
        let src_dir = tempfile::tempdir().unwrap();
        let src = src_dir.path();
        make_sparse(&src.join("tera"), TIB, &[4096, 3 << 30, TIB - 100], &[5u8; 100]);
        let (_, src_map, src_data) = sparse_view(&src.join("tera"));
        // The old GNU format, and PAX format 1.0 (`--format=posix`).
        for args in [
            &["--format=gnu", "--sparse", "-cf", "-", "."][..],
            &["--format=posix", "--sparse", "--sparse-version=1.0", "-cf", "-", "."][..],
        ] {
            let Some(out) = gnu_tar(src, args, b"") else {
                eprintln!("SKIPPED: no tar binary");
                return;
            };
            assert!(out.stdout.len() < 1 << 20);
            let scene = Scene::new();
            let stats = scene.extract(&out.stdout, LIMITS).unwrap();
            assert_eq!(stats.bytes, 3 * 4096, "{args:?}");
            let names: Vec<_> = fs::read_dir(scene.path("")).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, ["tera"], "{args:?}");
            let (alloc, map, data) = sparse_view(&scene.path("tera"));
            assert_eq!((&map, &data), (&src_map, &src_data), "{args:?}");
            assert!(alloc < 1 << 20, "{args:?}: {alloc} bytes allocated");
        }
        // Older PAX sparse formats are refused, naming the file.
        let out = gnu_tar(src, &["--format=posix", "--sparse", "--sparse-version=0.1", "-cf", "-", "."], b"").unwrap();
        let scene = Scene::new();
        match scene.extract(&out.stdout, LIMITS) {
            Err(ArchiveError::Hostile { entry, .. }) => assert_eq!(entry, "./tera"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pax_sparse_entries_extract_with_holes() {
        let records: &[(&str, &[u8])] = &[
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"dir/p\xe9x"),
            ("GNU.sparse.realsize", b"1099511627776"),
        ];
        let data = pax_map_data("3\n0\n512\n65536\n1000\n1099511627776\n0\n", 1512);
        let tar = Raw::default().dir("dir/").pax(records).file("dir/GNUSparseFile.0/p", &data).finish();
        let scene = Scene::new();
        let stats = scene.extract(&tar, LIMITS).unwrap();
        assert_eq!(stats.bytes, 1512);
        let path = scene.dir.path().join("staging").join(std::ffi::OsStr::from_bytes(b"dir/p\xe9x"));
        let (alloc, map, runs) = sparse_view(&path);
        assert_eq!(fs::metadata(&path).unwrap().len(), TIB);
        assert!(alloc < 1 << 20, "{alloc}");
        let map = map.unwrap();
        assert_eq!(map.segments[0], (0, 4096), "{map:?}");
        let expected: Vec<u8> = (0..1512).map(|i| (i % 250 + 1) as u8).collect();
        assert_eq!(&runs[0][..512], &expected[..512]);
        assert_eq!(fs::read_dir(scene.path("dir")).unwrap().count(), 1, "no GNUSparseFile.0 directory");
    }

    #[test]
    fn outward_symlinks_and_names_that_are_not_utf8_are_data() {
        let scene = Scene::new();
        let tar = Raw::default()
            .symlink("etc", "/etc")
            .symlink("x", "../../..")
            .symlink("a/b/x", "../../../y")
            .entry(b"bad\xff\xfe", EntryType::Regular, 0o644, b"", b"raw")
            .entry(b"to-bad", EntryType::Symlink, 0o777, b"bad\xff\xfe", b"")
            .pax(&[("path", b"pax-\xe9t\xe9"), ("mtime", b"1234567890.5")])
            .file("placeholder", b"pax")
            .finish();
        let mut tar = tar;
        // And a GNU long name that is not UTF-8 (the tar crate writes raw bytes).
        tar.truncate(tar.len() - 1024);
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(1);
        h.set_entry_type(EntryType::Regular);
        put_header(&mut tar, &mut h, &[&b"\xfd"[..], &[b'l'; 200]].concat(), None);
        tar.extend_from_slice(b"x");
        tar.resize(tar.len().next_multiple_of(512) + 1024, 0);
        scene.extract(&tar, LIMITS).unwrap();
        assert_eq!(fs::read_link(scene.path("etc")).unwrap(), Path::new("/etc"));
        assert_eq!(fs::read_link(scene.path("x")).unwrap(), Path::new("../../.."));
        assert_eq!(fs::read_link(scene.path("a/b/x")).unwrap(), Path::new("../../../y"));
        let bad = scene.dir.path().join("staging").join(std::ffi::OsStr::from_bytes(b"bad\xff\xfe"));
        assert_eq!(fs::read(bad).unwrap(), b"raw");
        let target = fs::read_link(scene.path("to-bad")).unwrap();
        assert_eq!(target.as_os_str().as_bytes(), b"bad\xff\xfe");
        let pax = scene.dir.path().join("staging").join(std::ffi::OsStr::from_bytes(b"pax-\xe9t\xe9"));
        assert_eq!(fs::read(&pax).unwrap(), b"pax");
        let meta = fs::metadata(&pax).unwrap();
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_234_567_890, 500_000_000));
        let long =
            scene.dir.path().join("staging").join(std::ffi::OsStr::from_bytes(&[&b"\xfd"[..], &[b'l'; 200]].concat()));
        assert_eq!(fs::read(long).unwrap(), b"x");
        scene.assert_untouched("outward symlinks");
        // And they download as they are.
        let mut down = Vec::new();
        write_tar(&scene.staging, &mut down).unwrap();
        let again = Scene::new();
        again.extract(&down, LIMITS).unwrap();
        assert_eq!(snapshot(&again.staging), snapshot(&scene.staging));
    }
}
