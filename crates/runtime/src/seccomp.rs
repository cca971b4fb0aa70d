//! The seccomp profile of every sandbox, an allow-list: a call that is not named here fails
//! with `EPERM` (the OCI runtime makes calls newer than any it knows of fail with `ENOSYS`, so
//! libc falls back as it would on an older kernel).
//!
//! The allowed set is what ordinary programs use (shells, compilers, interpreters, package
//! managers, servers), close to Docker's default profile without the calls Docker grants only
//! with capabilities a sandbox never has. Beyond Docker: sockets are limited by family
//! ([`SOCKET_FAMILIES`]), netlink by protocol ([`NETLINK_PROTOCOLS`]), and calls Docker allows
//! by default that reach far into the kernel or past the sandbox (`io_uring_*`, `ptrace`,
//! `name_to_handle_at`, clock adjustment) are not allowed. `clone3` fails with `ENOSYS`, whose
//! flags a filter cannot inspect, so that libc falls back to `clone`, which is filtered; so does
//! the 32-bit `socketcall` multiplexer, whose arguments a filter cannot read either.
//! `docs/threat-model.md` lists every difference to Docker's and gVisor's profiles.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use oci_spec::OciSpecError;

/// Calls every sandbox may make, with any arguments.
pub const ALLOWED: &[&str] = &[
    // Files and directories.
    "access",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "close",
    "close_range",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futimesat",
    "getcwd",
    "getdents",
    "getdents64",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "ioctl",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pipe",
    "pipe2",
    "pread64",
    "preadv",
    "preadv2",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "rmdir",
    "sendfile",
    "sendfile64",
    "setxattr",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "tee",
    "truncate",
    "truncate64",
    "umask",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vmsplice",
    "write",
    "writev",
    // Asynchronous I/O (not io_uring) and readiness.
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "poll",
    "ppoll",
    "ppoll_time64",
    "pselect6",
    "pselect6_time64",
    "select",
    "_newselect",
    "signalfd",
    "signalfd4",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    // Memory.
    "brk",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mremap",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "remap_file_pages",
    // Processes, threads, signals, the sandbox's own ids.
    "alarm",
    "arch_prctl",
    "capget",
    "capset",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "fork",
    "futex",
    "futex_time64",
    "futex_waitv",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "gettid",
    "getuid",
    "getuid32",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "modify_ldt",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "prctl",
    "prlimit64",
    "process_mrelease",
    "restart_syscall",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setuid",
    "setuid32",
    "sigaltstack",
    "sigprocmask",
    "sigreturn",
    "tgkill",
    "tkill",
    "ugetrlimit",
    "vfork",
    "wait4",
    "waitid",
    "waitpid",
    // Time (reading it; setting or adjusting any clock is not allowed).
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "gettimeofday",
    "nanosleep",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "times",
    // System V and POSIX IPC, inside the sandbox's own ipc namespace.
    "ipc",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    // Sockets once made (making one is filtered by family below).
    "accept",
    "accept4",
    "bind",
    "connect",
    "getpeername",
    "getsockname",
    "getsockopt",
    "listen",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "send",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setsockopt",
    "shutdown",
    // The machine, read-only.
    "sysinfo",
    "uname",
    // Landlock: a program may confine itself further.
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
];

/// Calls that must never be allowed: they reach past the sandbox (mounts, other namespaces,
/// other processes), into the kernel's most exposed parts, or change the machine. Not rules of
/// the profile (anything not in [`ALLOWED`] fails), but the list the tests hold the profile to.
pub const DENIED: &[&str] = &[
    // Filesystem and namespace topology.
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "setns",
    "open_by_handle_at",
    "name_to_handle_at",
    "sethostname",
    "setdomainname",
    // Kernel attack surface.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "lookup_dcookie",
    "kcmp",
    "fanotify_init",
    "fanotify_mark",
    "socketcall",
    // Other processes.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_getfd",
    // The machine.
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "syslog",
    "vhangup",
    "iopl",
    "ioperm",
    "settimeofday",
    "stime",
    "clock_settime",
    "clock_settime64",
    "clock_adjtime",
    "clock_adjtime64",
    "adjtimex",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "get_mempolicy",
    "set_mempolicy",
    "mbind",
    "move_pages",
    "migrate_pages",
    "nfsservctl",
];

/// Socket families a sandbox may create: local sockets, IPv4, IPv6, and netlink (for the
/// sandbox's own routes, addresses and sockets). Every other family, such as `AF_VSOCK` (the
/// hypervisor), `AF_PACKET`, `AF_BLUETOOTH`, `AF_ALG` (kernel crypto) or `AF_KEY`, fails with
/// `EPERM`.
pub const SOCKET_FAMILIES: &[(u64, &str)] = &[(1, "AF_UNIX"), (2, "AF_INET"), (10, "AF_INET6"), (16, "AF_NETLINK")];

/// `AF_NETLINK`, whose sockets are limited further by protocol.
pub const AF_NETLINK: u64 = 16;
/// `AF_UNIX`, the one family `socketpair` supports on Linux for ordinary programs.
pub const AF_UNIX: u64 = 1;

/// Netlink protocols a sandbox may open: routing (`ip`, `getifaddrs`, resolvers) and socket
/// diagnostics (`ss`), both of which answer only for the sandbox's own network namespace.
/// Every other netlink protocol (audit, uevents, netfilter, xfrm, generic netlink…) fails with
/// `EPERM`.
pub const NETLINK_PROTOCOLS: &[(u64, &str)] = &[(0, "NETLINK_ROUTE"), (4, "NETLINK_SOCK_DIAG")];

/// `NETLINK_AUDIT`: refused like every other netlink protocol, but with `EPROTONOSUPPORT`, the
/// answer of a kernel without audit, which libaudit takes as "no audit here" and goes on. With
/// `EPERM`, the shadow tools (`useradd`, `groupadd`, so `adduser`) abort ("Cannot open audit
/// interface").
pub const NETLINK_AUDIT: u64 = 9;
const EPROTONOSUPPORT: u32 = 93;

/// `personality` values programs set, as in Docker's profile: the default (`PER_LINUX`),
/// `PER_LINUX32` (`0x8`, what `linux32` sets), `UNAME26` (`0x20000`), their combination, and the
/// query `0xffffffff`. Any other flag, such as `ADDR_NO_RANDOMIZE` or `READ_IMPLIES_EXEC`,
/// fails with `EPERM`.
pub const PERSONALITIES: &[u64] = &[0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Every `CLONE_NEW*` flag: `clone` and `unshare` are allowed only without them, so no sandbox
/// makes a new namespace of any kind (a new user namespace would give back every capability).
/// `CLONE_NEWNS` `0x20000`, `CLONE_NEWCGROUP` `0x0200_0000`, `CLONE_NEWUTS`, `CLONE_NEWIPC`,
/// `CLONE_NEWUSER`, `CLONE_NEWPID`, `CLONE_NEWNET` (`0x0400_0000` to `0x4000_0000`) and
/// `CLONE_NEWTIME` `0x80` (an `unshare` flag; in `clone` the bit belongs to the exit signal,
/// which is never 128 or more).
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0080;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

fn arg(index: usize, op: LinuxSeccompOperator, value: u64, value_two: u64) -> Result<LinuxSeccompArg, OciSpecError> {
    LinuxSeccompArgBuilder::default().index(index).op(op).value(value).value_two(value_two).build()
}

fn allow(name: &str, args: Vec<LinuxSeccompArg>) -> Result<LinuxSyscall, OciSpecError> {
    LinuxSyscallBuilder::default()
        .names(vec![name.to_owned()])
        .action(LinuxSeccompAction::ScmpActAllow)
        .args(args)
        .build()
}

/// The architectures the filter is built for: the host's own and 32-bit programs on it (32-bit
/// x86 on x86_64, 32-bit Arm on aarch64). Not x32, unlike Docker's profile: the OCI runtime
/// compiles the filter inside the sandbox's cgroup, under its cpu limit, at every start, and
/// the x32 part alone cost a start at 100 millicores about 50 ms (p50 99 ms with it, 46 ms
/// without, `runc run` of the same bundle). A call through the x32 ABI (x86_64's numbers with
/// bit 30 set, which many kernels, this bench host's among them, do not enable) matches no
/// architecture of the filter and is not allowed (it gets libseccomp's bad-architecture action).
fn host_architectures() -> Vec<Arch> {
    if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86]
    }
}

/// The profile.
pub fn profile() -> Result<LinuxSeccomp, OciSpecError> {
    use LinuxSeccompOperator::{ScmpCmpEq, ScmpCmpMaskedEq};
    let mut syscalls = vec![LinuxSyscallBuilder::default()
        .names(ALLOWED.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()?];
    // `socket(family, type, protocol)`: one rule per allowed family; the arguments of one rule
    // must all match, so netlink gets one rule per (family, protocol).
    for (family, _) in SOCKET_FAMILIES {
        if *family == AF_NETLINK {
            for (protocol, _) in NETLINK_PROTOCOLS {
                syscalls.push(allow("socket", vec![arg(0, ScmpCmpEq, *family, 0)?, arg(2, ScmpCmpEq, *protocol, 0)?])?);
            }
        } else {
            syscalls.push(allow("socket", vec![arg(0, ScmpCmpEq, *family, 0)?])?);
        }
    }
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(vec!["socket".to_owned()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(EPROTONOSUPPORT)
            .args(vec![arg(0, ScmpCmpEq, AF_NETLINK, 0)?, arg(2, ScmpCmpEq, NETLINK_AUDIT, 0)?])
            .build()?,
    );
    syscalls.push(allow("socketpair", vec![arg(0, ScmpCmpEq, AF_UNIX, 0)?])?);
    for value in PERSONALITIES {
        syscalls.push(allow("personality", vec![arg(0, ScmpCmpEq, *value, 0)?])?);
    }
    // No new namespaces: `clone` and `unshare` pass only when no `CLONE_NEW*` flag is set.
    for name in ["clone", "unshare"] {
        syscalls.push(allow(name, vec![arg(0, ScmpCmpMaskedEq, CLONE_NAMESPACE_FLAGS, 0)?])?);
    }
    // `clone3` (flags behind a pointer) and the 32-bit `socketcall` multiplexer (arguments
    // behind a pointer) fail with `ENOSYS`. The `socketcall` rule is needed, not only the
    // default: on 32-bit x86 (reachable from any 64-bit process through `int 0x80`) libseccomp
    // turns every rule on a socket call into a `socketcall` rule on the call number alone and
    // drops its argument filters, so the `socket` rules above would let `socketcall(SOCKET, …)`
    // through for every family. An unconditional rule on `socketcall` takes precedence over
    // those; it must differ from the default action (runc drops rules equal to it), hence
    // `ENOSYS`, which also makes 32-bit libcs use the direct socket calls.
    for name in ["clone3", "socketcall"] {
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec![name.to_owned()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(ENOSYS)
                .build()?,
        );
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .architectures(host_architectures())
        .syscalls(syscalls)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_denied_is_allowed() {
        for name in DENIED {
            assert!(!ALLOWED.contains(name), "{name} is both allowed and denied");
        }
        let v = serde_json::to_value(profile().unwrap()).unwrap();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["defaultErrnoRet"], 1);
        for rule in v["syscalls"].as_array().unwrap() {
            if rule["action"] != "SCMP_ACT_ALLOW" {
                continue;
            }
            for name in rule["names"].as_array().unwrap() {
                let name = name.as_str().unwrap();
                assert!(!DENIED.contains(&name), "{name} is allowed");
            }
        }
    }

    /// The filter covers the host's architecture and its 32-bit one only: every architecture
    /// more is compiled at each start under the sandbox's cpu limit.
    #[test]
    fn the_filter_is_built_for_the_host_and_its_32_bit_programs() {
        let v = serde_json::to_value(profile().unwrap()).unwrap();
        let arches: Vec<&str> = v["architectures"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        let want: &[&str] = if cfg!(target_arch = "aarch64") {
            &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
        } else {
            &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
        };
        assert_eq!(arches, want);
    }

    #[test]
    fn every_namespace_flag_is_masked() {
        // CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME.
        for flag in [0x2_0000u64, 0x0200_0000, 0x0400_0000, 0x0800_0000, 0x1000_0000, 0x2000_0000, 0x4000_0000, 0x80] {
            assert_eq!(CLONE_NAMESPACE_FLAGS & flag, flag, "{flag:#x} is not masked");
        }
        let v = serde_json::to_value(profile().unwrap()).unwrap();
        for name in ["clone", "unshare"] {
            let rules: Vec<&serde_json::Value> =
                v["syscalls"].as_array().unwrap().iter().filter(|r| r["names"][0] == name).collect();
            assert_eq!(rules.len(), 1, "{name}");
            assert_eq!(rules[0]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
            assert_eq!(rules[0]["args"][0]["value"], CLONE_NAMESPACE_FLAGS);
            assert_eq!(rules[0]["args"][0]["valueTwo"], 0);
        }
    }

    #[test]
    fn sockets_are_allowed_only_for_their_families() {
        let v = serde_json::to_value(profile().unwrap()).unwrap();
        let rules: Vec<&serde_json::Value> = v["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == "socket" || n == "socketpair"))
            .collect();
        // Never allowed without an argument filter on the family.
        for rule in &rules {
            let args = rule["args"].as_array().unwrap();
            assert!(args.iter().any(|a| a["index"] == 0 && a["op"] == "SCMP_CMP_EQ"), "{rule}");
        }
        let families: Vec<u64> = rules
            .iter()
            .filter(|r| r["names"][0] == "socket" && r["action"] == "SCMP_ACT_ALLOW")
            .map(|r| r["args"][0]["value"].as_u64().unwrap())
            .collect();
        for f in &families {
            assert!(SOCKET_FAMILIES.iter().any(|(a, _)| a == f), "family {f} allowed");
        }
        assert!(!families.contains(&40), "AF_VSOCK allowed");
        // The 32-bit multiplexer has a rule of its own that refuses it whatever the call
        // number: libseccomp turns the `socket` rules into `socketcall` rules without their
        // argument filters.
        let socketcall: Vec<&serde_json::Value> = v["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == "socketcall"))
            .collect();
        assert_eq!(socketcall.len(), 1, "{socketcall:?}");
        assert_eq!(socketcall[0]["action"], "SCMP_ACT_ERRNO");
        assert_ne!(socketcall[0]["errnoRet"], v["defaultErrnoRet"], "runc drops a rule equal to the default");
        assert!(socketcall[0]["args"].as_array().is_none_or(|a| a.is_empty()));
        // Netlink only with an allowed protocol; audit is refused as a kernel without it would.
        let audit: Vec<_> = rules.iter().filter(|r| r["action"] == "SCMP_ACT_ERRNO").collect();
        assert_eq!(audit.len(), 1, "{audit:?}");
        assert_eq!(
            (audit[0]["args"][0]["value"].as_u64(), audit[0]["args"][1]["value"].as_u64()),
            (Some(AF_NETLINK), Some(NETLINK_AUDIT))
        );
        assert_eq!(audit[0]["errnoRet"], EPROTONOSUPPORT);
        for rule in rules.iter().filter(|r| r["args"][0]["value"] == AF_NETLINK && r["action"] == "SCMP_ACT_ALLOW") {
            let proto = rule["args"][1]["value"].as_u64().unwrap();
            assert_eq!(rule["args"][1]["index"], 2);
            assert!(NETLINK_PROTOCOLS.iter().any(|(p, _)| *p == proto));
        }
    }
}
