//! What of Bulkhead is on this host: the basis of `bulkhead doctor`, of the leak check that
//! ends the test suite and of the bench's memory figures. A resource is Bulkhead's when it
//! carries the server's names: the cgroup prefix, the state dir, the data dir, the supervisor's
//! path, or (for host-global network objects: network namespaces, veths, nftables tables) an
//! owner's name prefix from the host registry, `bh` and four hex digits.
//!
//! Everything here only reads: `/proc`, `/sys`, `/run/netns`, and the JSON of `ip -j link` and
//! `nft -j list tables`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::cgroup::{Cgroups, Version};

/// One host resource of Bulkhead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostResource {
    /// `mount`, `overlay`, `cgroup`, `netns`, `veth`, `nft table`, `process`, `loop`,
    /// `bundle`, `oci-state`.
    pub kind: &'static str,
    pub name: String,
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The pids of the processes whose command line is the sandbox supervisor.
fn supervisor_pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc").into_iter().flatten().flatten().filter_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        crate::spec::is_supervisor_cmdline(&cmdline).then_some(pid)
    })
}

/// A sandbox supervisor of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supervisor {
    pub pid: u32,
    /// Its cgroup path (relative to a hierarchy's root), which names its sandbox.
    pub cgroup: String,
    /// Its resident memory (`VmRSS`, shared pages included), in bytes.
    pub rss_bytes: u64,
}

impl Supervisor {
    /// As a host resource: `pid N (/.bulkhead/supervisor) in cgroup PATH`.
    pub fn resource(&self) -> HostResource {
        HostResource {
            kind: "process",
            name: format!("pid {} ({}) in cgroup {}", self.pid, crate::spec::SUPERVISOR_PATH, self.cgroup),
        }
    }
}

/// The supervisors of the server whose cgroup prefix is `prefix`: those in a cgroup with the
/// prefix as one component of its path.
pub fn supervisors_of(prefix: &str) -> Vec<Supervisor> {
    supervisor_pids()
        .filter_map(|pid| {
            let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            let cgroup = cgroups
                .lines()
                .filter_map(|l| l.splitn(3, ':').nth(2))
                .find(|path| path.split('/').any(|c| c == prefix))?
                .to_owned();
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let rss_kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            Some(Supervisor { pid, cgroup, rss_bytes: rss_kib * 1024 })
        })
        .collect()
}

/// A cgroup dir of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCgroup {
    pub path: PathBuf,
    /// Its names below the prefix: none for the prefix cgroup, the namespace for a namespace's,
    /// the namespace and the sandbox for a sandbox's; [`crate::cgroup::CONTROL_PLANE`] for the
    /// control plane's (beside the prefix on the host).
    pub below_prefix: Vec<String>,
    /// A process sits directly in it.
    pub busy: bool,
}

/// The cgroup dirs of the server whose cgroup prefix is `prefix`, on every hierarchy under
/// `root` (normally `/sys/fs/cgroup`); none when the host's cgroups cannot be read.
pub fn cgroups_of(root: &Path, prefix: &str) -> Vec<ServerCgroup> {
    let Ok(cg) = Cgroups::detect(root, prefix) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for path in cg.existing() {
        let Ok(rel) = path.strip_prefix(root) else { continue };
        let mut parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        if cg.version() == Version::V1 && !parts.is_empty() {
            // The hierarchy (`cpu`, `memory`, ...).
            parts.remove(0);
        }
        // The control plane's cgroup, beside the top one, is named as doctor's levels name it.
        if parts.first() == Some(&cg.control_plane_name()) {
            parts[0] = crate::cgroup::CONTROL_PLANE.to_owned();
        } else if parts.first().map(String::as_str) != Some(prefix) {
            continue;
        } else {
            parts.remove(0);
        }
        let busy = fs::read_to_string(path.join("cgroup.procs")).is_ok_and(|t| !t.trim().is_empty());
        out.push(ServerCgroup { path, below_prefix: parts, busy });
    }
    out
}

/// Mounts whose source or target names `needle`: kind `overlay` for an overlay mount (an
/// image's root filesystem), `mount` for any other; named `SOURCE on TARGET`.
pub fn mounts(needle: &str) -> Vec<HostResource> {
    let text = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    text.lines()
        .filter(|l| l.split(' ').take(2).any(|f| f.contains(needle)))
        .map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let kind = if fields.get(2) == Some(&"overlay") { "overlay" } else { "mount" };
            HostResource { kind, name: fields.iter().take(2).copied().collect::<Vec<_>>().join(" on ") }
        })
        .collect()
}

/// Mounts whose source or target is `dir` or under it, and not merely a sibling that starts
/// with the same characters (`/run/bulkhead-test` for `/run/bulkhead`). `dir` is absolute and
/// resolved, as mounts name it.
pub fn mounts_under(dir: &str) -> Vec<HostResource> {
    mounts(dir).into_iter().filter(|m| mentions_dir(&m.name, dir)).collect()
}

/// Whether `text` names `dir` or something under it (and not merely a sibling that starts
/// with the same characters, such as `/run/bulkhead-test` for `/run/bulkhead`).
pub fn mentions_dir(text: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    if dir.is_empty() {
        return false;
    }
    text.match_indices(dir).any(|(i, _)| matches!(text[i + dir.len()..].chars().next(), None | Some('/' | ' ')))
}

/// Named network namespaces whose name contains `needle`.
pub fn netns(needle: &str) -> Vec<HostResource> {
    fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(needle))
        .map(|name| HostResource { kind: "netns", name })
        .collect()
}

/// The owner's name prefix a host-global network name starts with (`bh` and four lowercase
/// hex digits, as the host registry hands them out), and the rest of the name.
pub fn net_prefix_of(name: &str) -> Option<(&str, &str)> {
    let prefix = name.get(..6)?;
    let ok = prefix.starts_with("bh") && prefix[2..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| (prefix, &name[6..]))
}

/// Host-global network objects named with an owner's name prefix: network namespaces (under
/// `/run/netns`), veth interfaces and nftables tables (named `FAMILY NAME`).
pub fn net_objects() -> Vec<HostResource> {
    let mut out: Vec<HostResource> = netns("bh").into_iter().filter(|r| net_prefix_of(&r.name).is_some()).collect();
    out.extend(
        veths().into_iter().filter(|n| net_prefix_of(n).is_some()).map(|name| HostResource { kind: "veth", name }),
    );
    out.extend(
        nft_tables()
            .into_iter()
            .filter(|(_, n)| net_prefix_of(n).is_some())
            .map(|(family, name)| HostResource { kind: "nft table", name: format!("{family} {name}") }),
    );
    out
}

/// The output of a reading tool (`ip`, `nft`) as JSON; none when it is not installed or fails.
fn tool_json(program: &str, args: &[&str]) -> Option<serde_json::Value> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The names of the host's veth interfaces (`ip -j link show type veth`).
pub fn veths() -> Vec<String> {
    parse_ip_links(&tool_json("ip", &["-j", "link", "show", "type", "veth"]).unwrap_or_default())
}

fn parse_ip_links(json: &serde_json::Value) -> Vec<String> {
    json.as_array().into_iter().flatten().filter_map(|l| l.get("ifname")?.as_str().map(str::to_owned)).collect()
}

/// The host's nftables tables as (family, name) (`nft -j list tables`); none when `nft` is
/// not installed.
pub fn nft_tables() -> Vec<(String, String)> {
    parse_nft_tables(&tool_json("nft", &["-j", "list", "tables"]).unwrap_or_default())
}

fn parse_nft_tables(json: &serde_json::Value) -> Vec<(String, String)> {
    json.get("nftables")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let t = e.get("table")?;
            Some((t.get("family")?.as_str()?.to_owned(), t.get("name")?.as_str()?.to_owned()))
        })
        .collect()
}

/// A process in one of a server's cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupProcess {
    pub pid: u32,
    /// Its program (`argv[0]`), or its `comm` when it has no command line.
    pub program: String,
    /// Its cgroup path (relative to a hierarchy's root).
    pub cgroup: String,
    /// Its cgroup's names below the prefix, as [`ServerCgroup::below_prefix`].
    pub below_prefix: Vec<String>,
}

impl CgroupProcess {
    /// As a host resource: `pid N (PROGRAM) in cgroup PATH`.
    pub fn resource(&self) -> HostResource {
        HostResource { kind: "process", name: format!("pid {} ({}) in cgroup {}", self.pid, self.program, self.cgroup) }
    }
}

/// Whether a process's `/proc/PID/stat` says it has exited (a zombie, or dead).
fn is_exited(stat: &str) -> bool {
    // The state follows the command name, which is in parentheses and may hold anything.
    matches!(stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()), Some('Z' | 'X' | 'x'))
}

/// Every process (that has not exited) in a cgroup of the server whose cgroup prefix is `prefix` (on any hierarchy):
/// sandboxes' supervisors and commands, and anything placed there by hand.
pub fn processes_in(prefix: &str) -> Vec<CgroupProcess> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            // A process that has exited holds nothing but its pid until its parent reaps it.
            if is_exited(&fs::read_to_string(e.path().join("stat")).ok()?) {
                return None;
            }
            let cgroups = fs::read_to_string(e.path().join("cgroup")).ok()?;
            let cgroup = cgroups
                .lines()
                .filter_map(|l| l.splitn(3, ':').nth(2))
                .find(|path| path.split('/').any(|c| c == prefix))?;
            // A cgroup removed while a process was still in it (v1) reads as `PATH (deleted)`.
            let cgroup = cgroup.strip_suffix(" (deleted)").unwrap_or(cgroup).to_owned();
            let below_prefix: Vec<String> = cgroup
                .split('/')
                .skip_while(|c| *c != prefix)
                .skip(1)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let argv0 = String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
            let program = if argv0.is_empty() {
                fs::read_to_string(e.path().join("comm")).unwrap_or_default().trim().to_owned()
            } else {
                argv0
            };
            Some(CgroupProcess { pid, program, cgroup, below_prefix })
        })
        .collect()
}

/// Loop devices whose backing file is under `dir`.
pub fn loop_devices(dir: &Path) -> Vec<HostResource> {
    let mut out = Vec::new();
    for e in fs::read_dir("/sys/block").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(backing) = fs::read_to_string(e.path().join("loop/backing_file")) {
            if Path::new(backing.trim()).starts_with(dir) {
                out.push(HostResource { kind: "loop", name: format!("/dev/{name} ({})", backing.trim()) });
            }
        }
    }
    out
}

/// Entries of a directory (sandbox bundles, OCI runtime state).
pub fn dir_entries(dir: &Path, kind: &'static str) -> Vec<HostResource> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| HostResource { kind, name: e.path().display().to_string() })
        .collect()
}

/// What this host gives Bulkhead to place namespaces on: the cores this process may run on
/// (`Cpus_allowed_list` of `/proc/self/status`: its CPU affinity, so a server started under
/// `taskset` or in a cpuset places only on those) and the host's memory (`MemTotal`). `None`
/// when `/proc` cannot be read.
pub fn capacity() -> Option<bulkhead_core::placement::HostCapacity> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let cpus = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    let cpus = bulkhead_core::placement::CpuSet::parse(cpus).ok()?;
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 =
        meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(bulkhead_core::placement::HostCapacity { cpus, memory_bytes: kib.saturating_mul(1024) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_are_matched_whole() {
        assert!(mentions_dir("tmpfs on /run/bulkhead/sandboxes/x", "/run/bulkhead"));
        assert!(mentions_dir("tmpfs on /run/bulkhead", "/run/bulkhead/"));
        assert!(mentions_dir("/run/bulkhead on /x", "/run/bulkhead"));
        assert!(!mentions_dir("tmpfs on /run/bulkhead-test-1/x", "/run/bulkhead"));
    }

    #[test]
    fn exited_processes_are_told() {
        assert!(is_exited("7251 (supervisor) Z 1 7251 7251 0 -1"));
        assert!(is_exited("7 (a) b) X 1"));
        assert!(!is_exited("7 (a) Z) S 1"));
        assert!(!is_exited("1 (init) S 0 1 1"));
        let own = fs::read_to_string("/proc/self/stat").unwrap();
        assert!(!is_exited(&own));
    }

    #[test]
    fn net_prefixes() {
        assert_eq!(net_prefix_of("bh00af-0123456789abcdef"), Some(("bh00af", "-0123456789abcdef")));
        assert_eq!(net_prefix_of("bh12340123abcde"), Some(("bh1234", "0123abcde")));
        assert_eq!(net_prefix_of("bh1234"), Some(("bh1234", "")));
        assert_eq!(net_prefix_of("bh12G4_x"), None);
        assert_eq!(net_prefix_of("bh12A4_x"), None);
        assert_eq!(net_prefix_of("bh12"), None);
        assert_eq!(net_prefix_of("eth0"), None);
    }

    #[test]
    fn tool_output_is_read() {
        let links = serde_json::json!([{"ifindex": 5, "link": "bh0000aaaaaaaab", "ifname": "bh0000aaaaaaaaa"}, {"ifname": "veth1"}]);
        assert_eq!(parse_ip_links(&links), ["bh0000aaaaaaaaa", "veth1"]);
        let tables = serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "bh0000_x", "handle": 1}},
            {"table": {"family": "ip", "name": "filter", "handle": 2}}
        ]});
        assert_eq!(
            parse_nft_tables(&tables),
            [("inet".to_owned(), "bh0000_x".to_owned()), ("ip".to_owned(), "filter".to_owned())]
        );
        assert!(parse_nft_tables(&serde_json::Value::Null).is_empty());
    }
}
