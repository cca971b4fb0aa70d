//! The seccomp profile of every sandbox: everything is allowed but the calls that reach past
//! a container's boundary or attack the kernel, which fail with `EPERM` (or `ENOSYS` for
//! `clone3`, whose flags a filter cannot inspect, so that libc falls back to `clone`).

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator,
    LinuxSyscall, LinuxSyscallBuilder,
};
use oci_spec::OciSpecError;

/// Calls no sandbox may make.
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
    // Other processes.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
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
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "uselib",
    "ustat",
    "sysfs",
];

const CLONE_NEWUSER: u64 = 0x1000_0000;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

fn new_user_namespace_denied(name: &str, flags_arg: usize) -> Result<LinuxSyscall, OciSpecError> {
    LinuxSyscallBuilder::default()
        .names(vec![name.to_owned()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(EPERM)
        .args(vec![LinuxSeccompArgBuilder::default()
            .index(flags_arg)
            .value(CLONE_NEWUSER)
            .value_two(CLONE_NEWUSER)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()?])
        .build()
}

/// The profile.
pub fn profile() -> Result<LinuxSeccomp, OciSpecError> {
    let syscalls = vec![
        LinuxSyscallBuilder::default()
            .names(DENIED.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(EPERM)
            .build()?,
        // No new user namespaces: inside one, an unprivileged process regains every
        // capability, which is the first step of most container escapes.
        new_user_namespace_denied("unshare", 0)?,
        new_user_namespace_denied("clone", 0)?,
        LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_owned()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(ENOSYS)
            .build()?,
    ];
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32, Arch::ScmpArchAarch64])
        .syscalls(syscalls)
        .build()
}
