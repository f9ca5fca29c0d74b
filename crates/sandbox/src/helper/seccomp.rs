//! seccomp: a deny list (EPERM) of system calls a sandboxed command has no business making —
//! debugging other processes, kernel attack surface (io_uring, bpf, userfaultfd, keyrings),
//! namespace and mount manipulation — plus socket families other than Unix/IPv4/IPv6 and
//! `clone` with namespace flags. `clone3` gets `ENOSYS` (its flags live in memory a filter
//! cannot read, so libc falls back to `clone`, whose flags it can), as do x32 system calls.
//!
//! Calls that could put a setuid or setgid bit on a file (`chmod` family, and `open`/`creat`/
//! `mknod` creating one with such a mode) get EPERM when the mode has `S_ISUID` or `S_ISGID`:
//! the workspace outlives the sandbox on the host, where such a file would be a setuid binary of
//! the sandbox's host uid. `personality` is allowed only to query or to set the default persona
//! (turning off ASLR or making reads imply exec are refused).
//!
//! `fallocate` gets `EOPNOTSUPP`: with `FALLOC_FL_KEEP_SIZE` it allocates blocks without the
//! `RLIMIT_FSIZE` check a write gets, at metadata speed, so one call could fill the disk between
//! two quota checks. glibc's `posix_fallocate` then falls back to writing, which the limit bounds.
//!
//! The program is emitted here as one compact binary search and installed with
//! `seccompiler::apply_filter`. seccompiler's own compiler produces ~300 instructions of
//! per-rule chains, which made the kernel's filter-cache preparation cost ~200 µs per sandbox;
//! the unit tests check this program against a seccompiler-built reference with a BPF
//! interpreter, for every system call number.

use seccompiler::{BpfProgram, sock_filter};

/// System calls that always fail with EPERM.
const DENY: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_process_madvise,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_fanotify_init,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_vhangup,
    // NUMA policy: no use in a sandbox of a few cores, and a history of kernel bugs
    // (mbind/migrate_pages use-after-frees); `set_mempolicy` would also let a process pin
    // memory to one node of a shared host.
    libc::SYS_mbind,
    libc::SYS_set_mempolicy,
    libc::SYS_migrate_pages,
    libc::SYS_move_pages,
    // Its mode lives in a struct a filter cannot read, so it could create a setuid file; libc's
    // open/openat do not use it, and those are checked below.
    libc::SYS_openat2,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_uselib,
];

/// `clone` flags that would create namespaces.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
    0x80, // CLONE_NEWTIME
];

/// Mode bits a sandbox may not set on a file: setuid and setgid. The sticky bit is harmless
/// (ignored on files, restrictive on folders) and `mkdir -m 1777` is common, so it is allowed.
const SET_ID_BITS: u32 = libc::S_ISUID | libc::S_ISGID;
/// `open` flags under which the mode argument is used.
const CREATE_FLAGS: u32 = (libc::O_CREAT | (libc::O_TMPFILE & !libc::O_DIRECTORY)) as u32;

/// Calls whose mode argument (0-based index) is checked for [`SET_ID_BITS`].
const MODE_AT: &[(libc::c_long, u32)] = &[
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_chmod, 1),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_creat, 1),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_mknod, 1),
    (libc::SYS_fchmod, 1),
    (libc::SYS_fchmodat, 2),
    (libc::SYS_fchmodat2, 2),
    (libc::SYS_mknodat, 2),
];

/// Calls with (flags, mode) arguments at these indexes: the mode is checked when the flags
/// create a file.
const OPEN_AT: &[(libc::c_long, u32, u32)] = &[
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_open, 1, 2),
    (libc::SYS_openat, 2, 3),
];

/// The only `personality` arguments allowed: `PER_LINUX` and the query `0xffffffff`.
const PERSONALITY_ALLOWED: [u32; 2] = [0, 0xffff_ffff];

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH: u32 = 0xC000_00F3;

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const X32_BIT: u32 = 0x4000_0000;
/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of the first argument (little-endian).
const OFF_ARG0: u32 = 16;

/// Low 32 bits of argument `i` (0-based).
const fn off_arg(i: u32) -> u32 {
    OFF_ARG0 + 8 * i
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SeccompError {
    #[error("seccomp program too large for BPF jumps")]
    TooLarge,
    #[error(transparent)]
    Apply(#[from] seccompiler::Error),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    Next,
    At(usize),
    Allow,
    Eperm,
    Enosys,
    Eopnotsupp,
    Kill,
    Socket,
    Clone,
    /// The mode check of `MODE_AT[i]`.
    Mode(usize),
    /// The flags-then-mode check of `OPEN_AT[i]`.
    Open(usize),
    Personality,
}

type Op = (u16, Label, Label, u32);

/// Binary search over the sorted deny list (A holds the system call number): a few
/// comparisons per call instead of one per denied call, which keeps both the kernel's cache
/// preparation at attach time and uncached evaluations short. Jumps only go forward.
fn emit_tree(deny: &[u32], ops: &mut Vec<Op>) {
    use Label::*;
    if deny.len() <= 3 {
        for nr in deny {
            ops.push((JEQ_K, Eperm, Next, *nr));
        }
        ops.push((RET_K, Next, Next, RET_ALLOW));
        return;
    }
    let mid = deny.len() / 2;
    let branch = ops.len();
    ops.push((JGE_K, Next, Next, deny[mid]));
    emit_tree(&deny[..mid], ops);
    ops[branch].1 = At(ops.len());
    emit_tree(&deny[mid..], ops);
}

/// The whole filter.
pub(crate) fn program() -> Result<BpfProgram, SeccompError> {
    use Label::*;
    let mut deny: Vec<u32> = DENY.iter().map(|n| *n as u32).collect();
    deny.sort_unstable();
    deny.dedup();
    let ns_mask = NAMESPACE_FLAGS.iter().fold(0u32, |m, f| m | *f as u32);

    let mut ops: Vec<Op> = vec![
        (LD_W_ABS, Next, Next, OFF_ARCH),
        (JEQ_K, Next, Kill, AUDIT_ARCH),
        (LD_W_ABS, Next, Next, OFF_NR),
        (JGE_K, Enosys, Next, X32_BIT),
        (JEQ_K, Enosys, Next, libc::SYS_clone3 as u32),
        (JEQ_K, Socket, Next, libc::SYS_socket as u32),
        (JEQ_K, Socket, Next, libc::SYS_socketpair as u32),
        (JEQ_K, Clone, Next, libc::SYS_clone as u32),
        (JEQ_K, Personality, Next, libc::SYS_personality as u32),
        (JEQ_K, Eopnotsupp, Next, libc::SYS_fallocate as u32),
    ];
    for (i, (nr, _)) in MODE_AT.iter().enumerate() {
        ops.push((JEQ_K, Mode(i), Next, *nr as u32));
    }
    for (i, (nr, _, _)) in OPEN_AT.iter().enumerate() {
        ops.push((JEQ_K, Open(i), Next, *nr as u32));
    }
    emit_tree(&deny, &mut ops);
    let mut mode_at = Vec::with_capacity(MODE_AT.len());
    for (_, arg) in MODE_AT {
        mode_at.push(ops.len());
        ops.extend([
            (LD_W_ABS, Next, Next, off_arg(*arg)),
            (JSET_K, Eperm, Allow, SET_ID_BITS),
        ]);
    }
    let mut open_at = Vec::with_capacity(OPEN_AT.len());
    for (_, flags, mode) in OPEN_AT {
        open_at.push(ops.len());
        ops.extend([
            (LD_W_ABS, Next, Next, off_arg(*flags)),
            (JSET_K, Next, Allow, CREATE_FLAGS),
            (LD_W_ABS, Next, Next, off_arg(*mode)),
            (JSET_K, Eperm, Allow, SET_ID_BITS),
        ]);
    }
    let personality_at = ops.len();
    ops.extend([
        (LD_W_ABS, Next, Next, OFF_ARG0),
        (JEQ_K, Allow, Next, PERSONALITY_ALLOWED[0]),
        (JEQ_K, Allow, Eperm, PERSONALITY_ALLOWED[1]),
    ]);
    let socket_at = ops.len();
    ops.extend([
        (LD_W_ABS, Next, Next, OFF_ARG0),
        (JEQ_K, Allow, Next, libc::AF_UNIX as u32),
        (JEQ_K, Allow, Next, libc::AF_INET as u32),
        (JEQ_K, Allow, Next, libc::AF_INET6 as u32),
        (RET_K, Next, Next, RET_ERRNO | libc::EPERM as u32),
    ]);
    let clone_at = ops.len();
    ops.extend([
        (LD_W_ABS, Next, Next, OFF_ARG0),
        (JSET_K, Eperm, Next, ns_mask),
        (RET_K, Next, Next, RET_ALLOW),
    ]);
    let allow_at = ops.len();
    ops.push((RET_K, Next, Next, RET_ALLOW));
    let eperm_at = ops.len();
    ops.push((RET_K, Next, Next, RET_ERRNO | libc::EPERM as u32));
    let enosys_at = ops.len();
    ops.push((RET_K, Next, Next, RET_ERRNO | libc::ENOSYS as u32));
    let eopnotsupp_at = ops.len();
    ops.push((RET_K, Next, Next, RET_ERRNO | libc::EOPNOTSUPP as u32));
    let kill_at = ops.len();
    ops.push((RET_K, Next, Next, RET_KILL_PROCESS));

    let target = |l: Label| match l {
        Next => None,
        At(i) => Some(i),
        Allow => Some(allow_at),
        Eperm => Some(eperm_at),
        Enosys => Some(enosys_at),
        Eopnotsupp => Some(eopnotsupp_at),
        Kill => Some(kill_at),
        Socket => Some(socket_at),
        Clone => Some(clone_at),
        Mode(i) => mode_at.get(i).copied(),
        Open(i) => open_at.get(i).copied(),
        Personality => Some(personality_at),
    };
    ops.iter()
        .enumerate()
        .map(|(i, (code, jt, jf, k))| {
            let offset = |l: Label| -> Result<u8, SeccompError> {
                match target(l) {
                    None if l == Next => Ok(0),
                    None => Err(SeccompError::TooLarge),
                    Some(t) => t
                        .checked_sub(i + 1)
                        .and_then(|d| u8::try_from(d).ok())
                        .ok_or(SeccompError::TooLarge),
                }
            };
            Ok(sock_filter {
                code: *code,
                jt: offset(*jt)?,
                jf: offset(*jf)?,
                k: *k,
            })
        })
        .collect()
}

/// Installs the program on the calling thread (needs `no_new_privs`, set by the caller).
pub(super) fn apply() -> Result<(), SeccompError> {
    seccompiler::apply_filter(&program()?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use std::collections::BTreeMap;

    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    use super::*;

    /// A classic-BPF interpreter for seccomp programs (the subset both programs use).
    fn run(prog: &[sock_filter], nr: u32, arch: u32, args: [u64; 4]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, arg) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_le_bytes());
        }
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = &prog[pc];
            pc += 1;
            match i.code {
                0x20 => {
                    a = u32::from_le_bytes(data[i.k as usize..i.k as usize + 4].try_into().unwrap())
                }
                0x06 => return i.k,
                0x05 => pc += i.k as usize,
                0x15 | 0x35 | 0x25 | 0x45 => {
                    let taken = match i.code {
                        0x15 => a == i.k,
                        0x35 => a >= i.k,
                        0x25 => a > i.k,
                        _ => a & i.k != 0,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                0x54 => a &= i.k,
                0x00 => a = i.k,
                0x07 | 0x87 => {}
                other => panic!("opcode {other:#x} not interpreted"),
            }
        }
    }

    /// The same policy built with seccompiler's rule compiler.
    fn reference() -> BpfProgram {
        let arch = TargetArch::try_from(std::env::consts::ARCH).unwrap();
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for nr in DENY {
            rules.insert(*nr, vec![]);
        }
        let ne = |v: i32| {
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, v as u64).unwrap()
        };
        let family = SeccompRule::new(vec![
            ne(libc::AF_UNIX),
            ne(libc::AF_INET),
            ne(libc::AF_INET6),
        ])
        .unwrap();
        rules.insert(libc::SYS_socket, vec![family.clone()]);
        rules.insert(libc::SYS_socketpair, vec![family]);
        let clone = NAMESPACE_FLAGS
            .iter()
            .map(|f| {
                let f = *f as u64;
                SeccompRule::new(vec![
                    SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(f), f)
                        .unwrap(),
                ])
                .unwrap()
            })
            .collect();
        rules.insert(libc::SYS_clone, clone);
        let masked = |arg: u8, mask: u32| {
            let mask = u64::from(mask);
            SeccompCondition::new(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(mask),
                mask,
            )
            .unwrap()
        };
        let set_id = [libc::S_ISUID, libc::S_ISGID];
        for (nr, arg) in MODE_AT {
            let rules_for = set_id
                .iter()
                .map(|bit| SeccompRule::new(vec![masked(*arg as u8, *bit)]).unwrap())
                .collect();
            rules.insert(*nr, rules_for);
        }
        for (nr, flags, mode) in OPEN_AT {
            let mut rules_for = Vec::new();
            for flag in [
                libc::O_CREAT as u32,
                libc::O_TMPFILE as u32 & !(libc::O_DIRECTORY as u32),
            ] {
                for bit in set_id {
                    rules_for.push(
                        SeccompRule::new(vec![
                            masked(*flags as u8, flag),
                            masked(*mode as u8, bit),
                        ])
                        .unwrap(),
                    );
                }
            }
            rules.insert(*nr, rules_for);
        }
        rules.insert(
            libc::SYS_personality,
            vec![
                SeccompRule::new(vec![
                    SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, 0).unwrap(),
                    SeccompCondition::new(
                        0,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::Ne,
                        0xffff_ffff,
                    )
                    .unwrap(),
                ])
                .unwrap(),
            ],
        );
        SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )
        .unwrap()
        .try_into()
        .unwrap()
    }

    #[test]
    fn compact_program_matches_the_seccompiler_reference() {
        let ours = program().unwrap();
        let reference = reference();
        assert!(ours.len() < 160, "{} instructions", ours.len());
        let firsts: Vec<u64> = [
            libc::AF_UNIX,
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_PACKET,
            libc::AF_NETLINK,
        ]
        .iter()
        .map(|a| *a as u64)
        .chain(NAMESPACE_FLAGS.iter().map(|f| (*f | libc::SIGCHLD) as u64))
        .chain([
            0,
            libc::SIGCHLD as u64,
            (libc::CLONE_VM | libc::CLONE_THREAD) as u64,
            0xffff_ffff,
            0x0040_0000, // ADDR_NO_RANDOMIZE
        ])
        .collect();
        // Modes and open flags, in every argument position the checks read.
        let modes: [u64; 6] = [0, 0o755, 0o4755, 0o2755, 0o1777, 0o6777];
        let flags: [u64; 4] = [
            libc::O_RDONLY as u64,
            (libc::O_WRONLY | libc::O_CREAT) as u64,
            libc::O_TMPFILE as u64 | libc::O_RDWR as u64,
            libc::O_RDWR as u64,
        ];
        let mut arg_sets: Vec<[u64; 4]> = firsts.iter().map(|a| [*a, 0, 0, 0]).collect();
        for mode in modes {
            arg_sets.push([0, mode, mode, mode]);
            for flag in flags {
                arg_sets.push([0, flag, mode, mode]);
                arg_sets.push([0, 0, flag, mode]);
            }
        }
        for nr in 0..600u32 {
            // Neither has a seccompiler equivalent with EPERM as the default action.
            if nr == libc::SYS_clone3 as u32 || nr == libc::SYS_fallocate as u32 {
                continue;
            }
            for args in &arg_sets {
                assert_eq!(
                    run(&ours, nr, AUDIT_ARCH, *args),
                    run(&reference, nr, AUDIT_ARCH, *args),
                    "nr {nr} args {args:x?}"
                );
            }
        }
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let enosys = RET_ERRNO | libc::ENOSYS as u32;
        assert_eq!(
            run(&ours, libc::SYS_ptrace as u32, AUDIT_ARCH, [0; 4]),
            eperm
        );
        assert_eq!(
            run(&ours, libc::SYS_read as u32, AUDIT_ARCH, [0; 4]),
            RET_ALLOW
        );
        assert_eq!(
            run(&ours, libc::SYS_clone3 as u32, AUDIT_ARCH, [0; 4]),
            enosys
        );
        assert_eq!(run(&ours, X32_BIT | 39, AUDIT_ARCH, [0; 4]), enosys);
        for mode in [0, 1, 3] {
            assert_eq!(
                run(
                    &ours,
                    libc::SYS_fallocate as u32,
                    AUDIT_ARCH,
                    [0, mode, 0, 1 << 30]
                ),
                RET_ERRNO | libc::EOPNOTSUPP as u32,
                "fallocate mode {mode}"
            );
        }
        assert_eq!(
            run(&ours, libc::SYS_read as u32, 0x4000_0003, [0; 4]),
            RET_KILL_PROCESS
        );
    }
}
