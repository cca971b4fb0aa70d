//! The filesystem and project subcommands: `fs create|list|get|resize|delete`, whole trees in
//! and out as tar archives (`fs push`, `fs pull`, packed and unpacked by the system GNU `tar`:
//! symlinks as they are, sparse files sparse, modes and mtimes kept, names as raw bytes),
//! single files (`fs ls|cat|put|rm`, with ETags), and `project create|list|delete`.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitCode, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bulkhead_api::{
    CreateFilesystem, CreateProject, FileEntry, Filesystem, Project, ResizeFilesystem, SandboxFilesystem,
};
use bulkhead_client::Client;
use clap::Subcommand;

use crate::commands::{all_pages, client};
use crate::output;
use crate::units::{format_bytes, parse_bytes};
use crate::Global;

/// Room on top of a filesystem's size for what a tar adds to the file data it carries: a
/// 512-byte header and up to 511 bytes of padding for each of the server's 100,000 entries at
/// most, plus long-name records. An archive bigger than size + this cannot fit, so `push`
/// refuses it before holding it in memory.
const ARCHIVE_OVERHEAD: u64 = 128 << 20;

/// How often a progress line on a terminal is redrawn.
pub(crate) const REDRAW: Duration = Duration::from_millis(200);

#[derive(Subcommand)]
pub enum FsCmd {
    /// Create a filesystem: a disk of its own with a hard size limit, mountable by sandboxes at
    /// /workspace.
    Create {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        name: String,
        /// Its size (`1GiB`), enforced by the kernel; it counts against the namespace's disk quota.
        #[arg(long, value_parser = parse_bytes)]
        size: u64,
        /// The project it belongs to (`prj_…`).
        #[arg(long)]
        project: Option<String>,
    },
    /// List a namespace's filesystems.
    List {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
    },
    /// Show one filesystem, with the space it uses and the sandboxes that mount it.
    Get {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        id: String,
    },
    /// Grow a filesystem (filesystems never shrink).
    Resize {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        id: String,
        /// The new size (`2GiB`).
        #[arg(long, value_parser = parse_bytes)]
        size: u64,
    },
    /// Delete a filesystem and its data.
    Delete {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        id: String,
        /// Delete the sandboxes that mount it first, instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Replace a filesystem's whole content with a local directory (packed with GNU `tar`:
    /// symlinks as they are, sparse files sparse, modes and mtimes kept) or a `.tar`, `.tar.gz`,
    /// `.tgz` or `.tar.zst` file; refused while a running sandbox mounts it.
    Push {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        id: String,
        /// A directory or a tar archive.
        src: PathBuf,
    },
    /// Copy a filesystem's whole content out: into a directory (unpacked with GNU `tar`, created
    /// when missing; modes kept), into a `.tar` file (GNU format, sparse files as their data), or
    /// to standard output with `-`.
    Pull {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        id: String,
        /// A directory, a path ending in `.tar`, or `-`.
        dest: PathBuf,
    },
    /// List a directory of a filesystem (its root by default).
    Ls {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        id: String,
        /// Relative to the filesystem's root.
        #[arg(default_value = "")]
        path: String,
    },
    /// Print a file of a filesystem, byte for byte.
    Cat {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        id: String,
        /// Relative to the filesystem's root.
        path: String,
        /// Print the file's ETag (for `put --if-match`) instead of its content.
        #[arg(long)]
        etag: bool,
    },
    /// Write a file of a filesystem atomically from a local file or standard input; prints its
    /// new ETag.
    Put {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        id: String,
        /// Relative to the filesystem's root; missing parent directories are created.
        path: String,
        /// A local file, or `-` (the default) for standard input.
        #[arg(default_value = "-")]
        local: PathBuf,
        /// Write only over the content with this ETag (as `put` or `cat --etag` printed it).
        #[arg(long, value_name = "ETAG", conflicts_with = "if_none_match")]
        if_match: Option<String>,
        /// Write only when there is no such file yet.
        #[arg(long)]
        if_none_match: bool,
    },
    /// Delete a file or an empty directory of a filesystem.
    Rm {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        id: String,
        /// Relative to the filesystem's root.
        path: String,
    },
}

#[derive(Subcommand)]
pub enum ProjectCmd {
    /// Create a project: a permission boundary for filesystems (keys can be limited to projects).
    Create {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        name: String,
    },
    /// List a namespace's projects.
    List {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
    },
    /// Delete a project; refused while filesystems belong to it.
    Delete {
        #[arg(long, env = "BULKHEAD_NAMESPACE")]
        ns: String,
        id: String,
    },
}

/// Parses `ID`, `ID:rw` or `ID:ro`: a filesystem for a sandbox to mount at /workspace
/// (read-write by default).
pub fn parse_mount(s: &str) -> Result<SandboxFilesystem, String> {
    let (id, mode) = match s.rsplit_once(':') {
        Some((id, mode @ ("rw" | "ro"))) => (id, mode),
        Some(_) => return Err(format!("{s:?} is not ID, ID:rw or ID:ro")),
        None => (s, "rw"),
    };
    if id.is_empty() {
        return Err(format!("{s:?} names no filesystem"));
    }
    Ok(SandboxFilesystem { id: id.to_owned(), mode: mode.to_owned() })
}

const FILESYSTEM_HEADERS: [&str; 7] = ["ID", "NAME", "SIZE", "USED", "PROJECT", "MOUNTED BY", "CREATED"];

fn filesystem_row(f: &Filesystem) -> Vec<String> {
    vec![
        f.id.clone(),
        f.name.clone(),
        format_bytes(f.size_bytes),
        format_bytes(f.used_bytes),
        f.project.clone().unwrap_or_else(|| "-".into()),
        if f.mounted_by.is_empty() { "-".into() } else { f.mounted_by.join(",") },
        f.created_at.clone(),
    ]
}

fn show_filesystem(f: &Filesystem, global: &Global) -> anyhow::Result<()> {
    output::item(global.json, f, &FILESYSTEM_HEADERS, filesystem_row)
}

/// Every filesystem of a namespace, all pages.
async fn all_filesystems(c: &Client, ns: &str) -> anyhow::Result<Vec<Filesystem>> {
    Ok(all_pages(|cursor| async move { c.list_filesystems(ns, Some(1000), cursor.as_deref()).await }).await?)
}

/// Every project of a namespace, all pages.
async fn all_projects(c: &Client, ns: &str) -> anyhow::Result<Vec<Project>> {
    Ok(all_pages(|cursor| async move { c.list_projects(ns, Some(1000), cursor.as_deref()).await }).await?)
}

pub async fn fs(cmd: FsCmd, global: &Global) -> anyhow::Result<ExitCode> {
    let c = client(global)?;
    match cmd {
        FsCmd::Create { ns, name, size, project } => {
            let req = CreateFilesystem { name, size_bytes: size, project };
            show_filesystem(&c.create_filesystem(&ns, &req).await?, global)?;
        }
        FsCmd::List { ns } => {
            let all = all_filesystems(&c, &ns).await?;
            output::list(global.json, &all, &FILESYSTEM_HEADERS, filesystem_row)?;
        }
        FsCmd::Get { ns, id } => {
            let f = c.get_filesystem(&ns, &id).await?;
            if global.json {
                output::json(&f)?;
            } else {
                output::fields(&[
                    ("id", f.id.clone()),
                    ("namespace", f.namespace.clone()),
                    ("name", f.name.clone()),
                    ("project", f.project.clone().unwrap_or_else(|| "-".into())),
                    ("size", format_bytes(f.size_bytes)),
                    ("used", format_bytes(f.used_bytes)),
                    ("mounted by", if f.mounted_by.is_empty() { "-".into() } else { f.mounted_by.join(", ") }),
                    ("created", f.created_at.clone()),
                    ("updated", f.updated_at.clone()),
                ]);
            }
        }
        FsCmd::Resize { ns, id, size } => {
            show_filesystem(&c.resize_filesystem(&ns, &id, &ResizeFilesystem { size_bytes: size }).await?, global)?;
        }
        FsCmd::Delete { ns, id, force } => {
            // With --force, name the sandboxes that go with it.
            let mounted_by = if force { c.get_filesystem(&ns, &id).await?.mounted_by } else { Vec::new() };
            c.delete_filesystem(&ns, &id, force).await?;
            if !global.json {
                if mounted_by.is_empty() {
                    println!("deleted filesystem {id}");
                } else {
                    println!("deleted filesystem {id} and the sandboxes that mounted it: {}", mounted_by.join(", "));
                }
            }
        }
        FsCmd::Push { ns, id, src } => push(&c, &ns, &id, &src, global).await?,
        FsCmd::Pull { ns, id, dest } => pull(&c, &ns, &id, &dest).await?,
        FsCmd::Ls { ns, id, path } => {
            let entries = c.fs_list(&ns, &id, &path).await?;
            output::list(global.json, &entries, &["NAME", "TYPE", "MODE", "SIZE", "MODIFIED"], entry_row)?;
        }
        FsCmd::Cat { ns, id, path, etag } => {
            let file = c.fs_read_file(&ns, &id, &path).await?;
            if etag {
                let Some(tag) = file.etag else {
                    bail!("the server sent no ETag for {path}");
                };
                println!("{tag}");
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(&file.data).and_then(|()| out.flush()).context("cannot write standard output")?;
            }
        }
        FsCmd::Put { ns, id, path, local, if_match, if_none_match } => {
            let data = if local.as_os_str() == "-" {
                let mut data = Vec::new();
                std::io::stdin().read_to_end(&mut data).context("cannot read standard input")?;
                data
            } else {
                std::fs::read(&local).with_context(|| format!("cannot read {}", local.display()))?
            };
            let if_match = if_match.as_deref().map(quoted_etag);
            let tag = c.fs_write_file(&ns, &id, &path, data, if_match.as_deref(), if_none_match).await?;
            if global.json {
                output::json(&serde_json::json!({ "etag": tag }))?;
            } else {
                println!("{tag}");
            }
        }
        FsCmd::Rm { ns, id, path } => {
            c.fs_delete_file(&ns, &id, &path).await?;
            output::note(global.json, format_args!("deleted {path}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn project(cmd: ProjectCmd, global: &Global) -> anyhow::Result<ExitCode> {
    let c = client(global)?;
    let headers = ["ID", "NAME", "CREATED"];
    let row = |p: &Project| vec![p.id.clone(), p.name.clone(), p.created_at.clone()];
    match cmd {
        ProjectCmd::Create { ns, name } => {
            let p = c.create_project(&ns, &CreateProject { name }).await?;
            output::item(global.json, &p, &headers, row)?;
        }
        ProjectCmd::List { ns } => {
            let all = all_projects(&c, &ns).await?;
            output::list(global.json, &all, &headers, row)?;
        }
        ProjectCmd::Delete { ns, id } => {
            c.delete_project(&ns, &id).await?;
            output::note(global.json, format_args!("deleted project {id}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn entry_row(e: &FileEntry) -> Vec<String> {
    let size = if e.file_type == "directory" { "-".to_owned() } else { format_bytes(e.size) };
    vec![e.name.clone(), e.file_type.clone(), e.mode.clone(), size, e.modified.clone()]
}

/// An ETag as HTTP wants it: `abc` becomes `"abc"`; `"abc"`, `W/"abc"` and `*` stay.
fn quoted_etag(tag: &str) -> String {
    let tag = tag.trim();
    if tag == "*" || tag.starts_with('"') || tag.starts_with("W/") {
        tag.to_owned()
    } else {
        format!("\"{tag}\"")
    }
}

/// A tar archive as it is sent, by its name.
fn is_tarball(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    [".tar", ".tar.gz", ".tgz", ".tar.zst"].iter().any(|ext| name.ends_with(ext))
}

/// `fs push`: the archive is built (or read) in memory, at most the size that could fit the
/// filesystem, then sent in one request.
async fn push(c: &Client, ns: &str, id: &str, src: &Path, global: &Global) -> anyhow::Result<()> {
    let f = c.get_filesystem(ns, id).await?;
    let limit = f.size_bytes.saturating_add(ARCHIVE_OVERHEAD);
    let too_big = || {
        anyhow::anyhow!(
            "{} is larger than {} fits (its size is {}); grow it with `bulkhead fs resize`",
            src.display(),
            f.id,
            format_bytes(f.size_bytes)
        )
    };
    let meta = std::fs::metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
    let body = if meta.is_dir() {
        pack(src, limit)?.ok_or_else(too_big)?
    } else if meta.is_file() && is_tarball(src) {
        if meta.len() > limit {
            return Err(too_big());
        }
        std::fs::read(src).with_context(|| format!("cannot read {}", src.display()))?
    } else {
        bail!("{}: not a directory or a .tar, .tar.gz, .tgz or .tar.zst file", src.display());
    };
    let size = format_bytes(body.len() as u64);
    let mut progress = Progress::new();
    // The body goes in one piece, so a terminal sees the time passing rather than a percentage.
    let upload = c.upload_archive(ns, id, body);
    tokio::pin!(upload);
    let mut tick = tokio::time::interval(REDRAW);
    let result = loop {
        tokio::select! {
            r = &mut upload => break r?,
            _ = tick.tick(), if progress.tty => {
                progress.draw(&format!("pushing {size} to {id} ... {}s", progress.started.elapsed().as_secs()));
            }
        }
    };
    progress.finish(&format!(
        "pushed {size} to {id} in {}: {} entries, {} of file data",
        progress.elapsed(),
        result.entries,
        format_bytes(result.bytes)
    ));
    if global.json {
        output::json(&result)?;
    }
    Ok(())
}

/// What `tar` is told to pack a directory: the GNU format, which the server reads back exactly
/// (names as raw bytes, long names, and sparse files as GNU sparse entries: holes are not sent).
const PACK_ARGS: [&str; 5] = ["--format=gnu", "--sparse", "-cf", "-", "."];

/// What `tar` is told to unpack the server's archive: modes as they are (not masked by the
/// umask), owned by whoever pulls. Sparse entries come out sparse, symlinks as they are, and
/// directories get their times after their contents.
const UNPACK_ARGS: [&str; 4] = ["--no-same-owner", "--preserve-permissions", "-xf", "-"];

/// Packs `dir` with the system tar; `None` when the archive grows past `limit` bytes.
fn pack(dir: &Path, limit: u64) -> anyhow::Result<Option<Vec<u8>>> {
    let mut tar = Tar::spawn(dir, &PACK_ARGS, Stdio::null(), Stdio::piped())?;
    let mut data = Vec::new();
    let read = match tar.child.stdout.take() {
        Some(out) => out.take(limit + 1).read_to_end(&mut data).map(|_| ()),
        None => Ok(()),
    };
    if read.is_ok() && data.len() as u64 > limit {
        let _ = tar.child.kill();
        let _ = tar.child.wait();
        return Ok(None);
    }
    let (status, errors) = tar.wait()?;
    if !status.success() {
        bail!("tar could not pack {}: {}", dir.display(), first_line(&errors, status));
    }
    read.context("cannot read tar's output")?;
    Ok(Some(data))
}

/// `fs pull`: the archive streams from the server into `tar -x`, a file, or standard output.
async fn pull(c: &Client, ns: &str, id: &str, dest: &Path) -> anyhow::Result<()> {
    let mut progress = Progress::new();
    let (shown, size) = if dest.as_os_str() == "-" {
        let stdout = std::io::stdout();
        if stdout.is_terminal() {
            bail!("standard output is a terminal; redirect it to a file or a pipe for the archive");
        }
        let size = download(c, ns, id, &mut stdout.lock(), &mut progress).await?;
        ("standard output".to_owned(), size)
    } else if is_tarball(dest) && !dest.is_dir() {
        (dest.display().to_string(), pull_to_file(c, ns, id, dest, &mut progress).await?)
    } else {
        (dest.display().to_string(), pull_to_dir(c, ns, id, dest, &mut progress).await?)
    };
    progress.finish(&format!("pulled {} from {id} into {shown} in {}", format_bytes(size), progress.elapsed()));
    Ok(())
}

async fn download(
    c: &Client,
    ns: &str,
    id: &str,
    writer: &mut impl Write,
    progress: &mut Progress,
) -> bulkhead_client::Result<u64> {
    let tty = progress.tty;
    c.download_archive(ns, id, writer, |n| {
        if tty {
            progress.draw(&format!("pulling {id} ... {}", format_bytes(n)));
        }
    })
    .await
}

/// Streams the archive into a temporary file beside `dest`, renamed over it when complete.
async fn pull_to_file(c: &Client, ns: &str, id: &str, dest: &Path, progress: &mut Progress) -> anyhow::Result<u64> {
    let name = dest.file_name().with_context(|| format!("{}: not a file name", dest.display()))?;
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".{}.bulkhead-{}.tmp", name.to_string_lossy(), std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = async {
        let size = download(c, ns, id, &mut file, progress).await?;
        file.sync_all()
            .and_then(|()| std::fs::rename(&tmp, dest))
            .with_context(|| format!("cannot write {}", dest.display()))?;
        anyhow::Ok(size)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Streams the archive into `tar -x` in `dir` (created when missing).
async fn pull_to_dir(c: &Client, ns: &str, id: &str, dir: &Path, progress: &mut Progress) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the directory {}", dir.display()))?;
    // GNU tar refuses `..` and absolute names and delays symlinks that point outside, so even a
    // hostile server's archive stays inside `dir`; nobody's ownership is taken from it.
    let mut tar = Tar::spawn(dir, &UNPACK_ARGS, Stdio::piped(), Stdio::null())?;
    let result = match tar.child.stdin.take() {
        Some(mut stdin) => download(c, ns, id, &mut stdin, progress).await,
        None => Err(bulkhead_client::Error::Write { source: std::io::Error::other("tar has no standard input") }),
    };
    // The pipe is closed: tar sees the end of the archive.
    let (status, errors) = tar.wait()?;
    match result {
        // The server's own error says more than tar's complaint about a cut archive.
        Err(e) if !matches!(e, bulkhead_client::Error::Write { .. }) => Err(e.into()),
        _ if !status.success() => {
            bail!("tar could not unpack into {}: {}", dir.display(), first_line(&errors, status))
        }
        Err(e) => Err(e.into()),
        Ok(size) => Ok(size),
    }
}

/// The system `tar` running in a directory, its standard error read on a thread so a chatty tar
/// never blocks on a full pipe.
pub(crate) struct Tar {
    pub(crate) child: Child,
    errors: JoinHandle<String>,
}

impl Tar {
    /// Starts `tar -C dir ARGS` with these standard input and output.
    pub(crate) fn spawn(dir: &Path, args: &[&str], stdin: Stdio, stdout: Stdio) -> anyhow::Result<Tar> {
        let mut child = Command::new("tar")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run tar")?;
        let stderr: Option<ChildStderr> = child.stderr.take();
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut e) = stderr {
                let _ = e.read_to_string(&mut text);
            }
            text
        });
        Ok(Tar { child, errors })
    }

    /// Waits for tar to exit: its status and what it wrote to standard error.
    pub(crate) fn wait(mut self) -> anyhow::Result<(std::process::ExitStatus, String)> {
        let status = self.child.wait().context("cannot wait for tar")?;
        Ok((status, self.errors.join().unwrap_or_default()))
    }
}

/// The first line of a tool's complaint, or its exit status when it said nothing.
pub(crate) fn first_line(stderr: &str, status: std::process::ExitStatus) -> String {
    match stderr.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => line.to_owned(),
        None => format!("tar {status}"),
    }
}

/// A progress line on standard error: redrawn in place on a terminal, only the final line
/// otherwise. A line left unfinished (an error on the way) is wiped, so the error stands alone.
pub(crate) struct Progress {
    pub(crate) tty: bool,
    pub(crate) started: Instant,
    last_draw: Option<Instant>,
    open: bool,
}

impl Progress {
    pub(crate) fn new() -> Progress {
        Progress { tty: std::io::stderr().is_terminal(), started: Instant::now(), last_draw: None, open: false }
    }

    /// Redraws the line, at most every [`REDRAW`].
    pub(crate) fn draw(&mut self, line: &str) {
        if !self.tty || self.last_draw.is_some_and(|t| t.elapsed() < REDRAW) {
            return;
        }
        self.last_draw = Some(Instant::now());
        self.open = true;
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{line}");
        let _ = err.flush();
    }

    pub(crate) fn elapsed(&self) -> String {
        format!("{:.1}s", self.started.elapsed().as_secs_f64())
    }

    pub(crate) fn finish(&mut self, line: &str) {
        let clear = if self.open { "\r\x1b[K" } else { "" };
        self.open = false;
        eprintln!("{clear}{line}");
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.open {
            eprint!("\r\x1b[K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts() {
        let m = parse_mount("fs_1").unwrap();
        assert_eq!((m.id.as_str(), m.mode.as_str()), ("fs_1", "rw"));
        let m = parse_mount("fs_1:ro").unwrap();
        assert_eq!((m.id.as_str(), m.mode.as_str()), ("fs_1", "ro"));
        assert!(parse_mount("fs_1:rx").is_err());
        assert!(parse_mount(":ro").is_err());
    }

    #[test]
    fn etags_and_tarballs() {
        assert_eq!(quoted_etag("abc"), "\"abc\"");
        assert_eq!(quoted_etag("\"abc\""), "\"abc\"");
        assert_eq!(quoted_etag("*"), "*");
        assert!(is_tarball(Path::new("a/b.tar.zst")) && is_tarball(Path::new("x.TGZ")));
        assert!(!is_tarball(Path::new("dir")) && !is_tarball(Path::new("a.zip")));
    }
}
