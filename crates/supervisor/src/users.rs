//! Users of the sandbox's image: the `user` of an exec, a process or a file operation, given as
//! a name (`alice`), a uid (`1000`) or `uid:gid` / `name:group`, resolved against the sandbox's
//! own `/etc/passwd` and `/etc/group` (the formats of passwd(5) and group(5)). A numeric uid
//! that no passwd line names is still a valid user (as with `docker exec -u 1234`), with its
//! primary group equal to the uid unless a gid is given, no supplementary groups and `/` as home.

use std::fs;
use std::path::Path;

/// Largest uid or gid accepted (ids above the 65536-id range a sandbox maps do not exist inside).
pub const MAX_ID: u32 = 65_535;

/// A resolved user: the credentials a command or file operation takes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups from `/etc/group` (the primary group included once).
    pub groups: Vec<u32>,
    /// The login name, when `/etc/passwd` names the uid.
    pub name: Option<String>,
    /// Home directory from `/etc/passwd`; `/` when there is none.
    pub home: String,
}

impl Credentials {
    /// The sandbox's root: what every operation runs as when no `user` is given.
    pub fn root() -> Credentials {
        Credentials { uid: 0, gid: 0, groups: vec![0], name: Some("root".into()), home: "/root".into() }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// Why a user could not be resolved. The message names the user as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownUser(pub String);

impl std::fmt::Display for UnknownUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().filter(|id| *id <= MAX_ID)
}

fn passwd(etc: &Path) -> Vec<PasswdEntry> {
    let text = fs::read_to_string(etc.join("passwd")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 || line.starts_with('#') {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: if f[5].is_empty() { "/".into() } else { f[5].to_owned() },
            })
        })
        .collect()
}

/// `(name, gid, members)` of every `/etc/group` line.
fn groups(etc: &Path) -> Vec<(String, u32, Vec<String>)> {
    let text = fs::read_to_string(etc.join("group")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || line.starts_with('#') {
                return None;
            }
            let members = f[3].split(',').filter(|m| !m.is_empty()).map(str::to_owned).collect();
            Some((f[0].to_owned(), f[2].parse().ok()?, members))
        })
        .collect()
}

/// Resolves `spec` against the `passwd` and `group` files in `etc` (normally `/etc`).
///
/// Errors: [`UnknownUser`] with a message naming the user or group when a name is in neither
/// file, or an id is not a number up to [`MAX_ID`].
pub fn resolve_in(etc: &Path, spec: &str) -> Result<Credentials, UnknownUser> {
    let unknown = |what: &str| UnknownUser(format!("unknown user {what:?}"));
    if spec.is_empty() || spec.len() > 256 || spec.contains('\0') {
        return Err(unknown(spec));
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entries = passwd(etc);
    let (uid, mut gid, name, home) = match parse_id(user) {
        Some(uid) => match entries.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name.clone()), e.home.clone()),
            None => (uid, uid, None, "/".to_owned()),
        },
        None => match entries.iter().find(|e| e.name == user) {
            Some(e) => (e.uid, e.gid, Some(e.name.clone()), e.home.clone()),
            None => return Err(unknown(user)),
        },
    };
    let all_groups = groups(etc);
    if let Some(g) = group {
        gid = match parse_id(g) {
            Some(gid) => gid,
            None => match all_groups.iter().find(|(n, _, _)| n == g) {
                Some((_, gid, _)) => *gid,
                None => return Err(UnknownUser(format!("unknown group {g:?}"))),
            },
        };
    }
    if gid > MAX_ID || uid > MAX_ID {
        return Err(unknown(spec));
    }
    let mut supplementary = vec![gid];
    if group.is_none() {
        if let Some(n) = &name {
            for (_, g, members) in &all_groups {
                if members.iter().any(|m| m == n) && !supplementary.contains(g) {
                    supplementary.push(*g);
                }
            }
        }
    }
    Ok(Credentials { uid, gid, groups: supplementary, name, home })
}

/// Resolves `spec` against the sandbox's `/etc`.
pub fn resolve(spec: &str) -> Result<Credentials, UnknownUser> {
    resolve_in(Path::new("/etc"), spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etc() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("passwd"),
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n",
        )
        .unwrap();
        fs::write(d.path().join("group"), "root:x:0:\nalice:x:1000:\ndev:x:2000:alice,bob\nnogroup:x:65534:\n")
            .unwrap();
        d
    }

    #[test]
    fn names_ids_and_groups_resolve() {
        let d = etc();
        let alice = resolve_in(d.path(), "alice").unwrap();
        assert_eq!((alice.uid, alice.gid, alice.groups.clone()), (1000, 1000, vec![1000, 2000]));
        assert_eq!(alice.home, "/home/alice");
        let by_id = resolve_in(d.path(), "1000").unwrap();
        assert_eq!(by_id.name.as_deref(), Some("alice"));
        let anon = resolve_in(d.path(), "1234:5").unwrap();
        assert_eq!((anon.uid, anon.gid, anon.groups, anon.home.as_str()), (1234, 5, vec![5], "/"));
        assert_eq!(resolve_in(d.path(), "alice:dev").unwrap().gid, 2000);
        assert_eq!(resolve_in(d.path(), "root").unwrap(), Credentials::root());
    }

    #[test]
    fn unknown_names_and_bad_ids_are_refused_by_name() {
        let d = etc();
        for bad in ["mallory", "", "alice:nogroupname", "99999999999", "70000", "-1", "1:x:y", "a\0b"] {
            let e = resolve_in(d.path(), bad).unwrap_err();
            assert!(e.0.starts_with("unknown"), "{bad:?}: {e}");
        }
        assert!(resolve_in(d.path(), "mallory").unwrap_err().0.contains("mallory"));
    }
}
