//! Kernel attack surface: each call must fail with the errno the seccomp deny list returns.

use super::*;

/// Runs raw system calls through ctypes and prints `name:result:errno` per line.
async fn raw_syscalls(calls: &[(&str, &str)]) -> Option<String> {
    let ws = tempfile::tempdir().unwrap();
    let mut code = String::from("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n");
    for (name, expr) in calls {
        code.push_str(&format!(
            "r = {expr}\nprint('{name}', r, ctypes.get_errno(), sep=':')\nctypes.set_errno(0)\n"
        ));
    }
    let o = py(ws.path(), &code).await?;
    assert!(o.success(), "{}", err(&o));
    Some(out(&o))
}

fn expect(output: &str, name: &str, errno: i32) {
    let line = output
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .unwrap();
    assert_eq!(line, format!("{name}:-1:{errno}"), "{output}");
}

const EPERM: i32 = 1;
const ENOSYS: i32 = 38;

#[tokio::test]
async fn ptrace_mount_unshare_are_denied() {
    let Some(o) = raw_syscalls(&[
        ("ptrace", "libc.ptrace(0, 0, 0, 0)"),
        ("mount", "libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)"),
        ("umount", "libc.umount2(b'/workspace', 2)"),
        ("unshare_user", "libc.unshare(0x10000000)"),
        ("unshare_net", "libc.unshare(0x40000000)"),
        ("pivot_root", "libc.pivot_root(b'/tmp', b'/tmp')"),
        ("chroot", "libc.chroot(b'/tmp')"),
    ])
    .await
    else {
        return;
    };
    for name in [
        "ptrace",
        "mount",
        "umount",
        "unshare_user",
        "unshare_net",
        "pivot_root",
        "chroot",
    ] {
        expect(&o, name, EPERM);
    }
}

#[cfg(target_arch = "x86_64")]
#[tokio::test]
async fn kernel_attack_surface_is_denied() {
    let Some(o) = raw_syscalls(&[
        ("keyctl", "libc.syscall(250, 0, 0, 0, 0, 0)"),
        ("add_key", "libc.syscall(248, b'user', b'x', b'y', 1, -2)"),
        ("bpf", "libc.syscall(321, 0, 0, 0)"),
        (
            "io_uring_setup",
            "libc.syscall(425, 8, ctypes.create_string_buffer(120))",
        ),
        ("perf_event_open", "libc.syscall(298, 0, 0, -1, -1, 0)"),
        ("userfaultfd", "libc.syscall(323, 0)"),
        ("process_vm_readv", "libc.syscall(310, 1, 0, 0, 0, 0, 0)"),
        ("setns", "libc.syscall(308, 0, 0)"),
        ("open_tree", "libc.syscall(428, -100, b'/', 1)"),
        ("fsopen", "libc.syscall(430, b'tmpfs', 0)"),
        (
            "clone_newuser",
            "libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)",
        ),
        ("clone3", "libc.syscall(435, 0, 0)"),
        ("x32_getpid", "libc.syscall(0x40000000 | 39)"),
    ])
    .await
    else {
        return;
    };
    for name in [
        "keyctl",
        "add_key",
        "bpf",
        "io_uring_setup",
        "perf_event_open",
        "userfaultfd",
        "process_vm_readv",
        "setns",
        "open_tree",
        "fsopen",
        "clone_newuser",
    ] {
        expect(&o, name, EPERM);
    }
    expect(&o, "clone3", ENOSYS);
    expect(&o, "x32_getpid", ENOSYS);
}

#[tokio::test]
async fn unshare_tool_fails() {
    let ws = tempfile::tempdir().unwrap();
    if !std::path::Path::new("/usr/bin/unshare").exists() {
        eprintln!("SKIPPED: no unshare(1) on this host");
        return;
    }
    let o = sh(ws.path(), "unshare -U true; unshare -r id").await;
    assert_ne!(o.exit_code, Some(0));
    assert!(err(&o).contains("Operation not permitted"), "{}", err(&o));
}

#[tokio::test]
async fn no_capabilities_and_no_new_privs() {
    let ws = tempfile::tempdir().unwrap();
    let o = sh(
        ws.path(),
        "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status",
    )
    .await;
    let s = out(&o);
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            s.contains(&format!("{cap}:\t0000000000000000")),
            "{cap}: {s}"
        );
    }
    assert!(s.contains("NoNewPrivs:\t1"), "{s}");
    assert!(s.contains("Seccomp:\t2"), "{s}");
}

#[tokio::test]
async fn normal_programs_still_work() {
    // The deny list must not break ordinary tools: threads (clone without namespace flags),
    // pipes, subprocesses, Unix sockets.
    let ws = tempfile::tempdir().unwrap();
    let Some(o) = py(
        ws.path(),
        "import threading, subprocess, socket\n\
         t = threading.Thread(target=lambda: None); t.start(); t.join()\n\
         a, b = socket.socketpair(); a.send(b'ok'); print(b.recv(2).decode())\n\
         print(subprocess.run(['echo', 'sub'], capture_output=True, text=True).stdout.strip())",
    )
    .await
    else {
        return;
    };
    assert_eq!(out(&o), "ok\nsub\n", "{}", err(&o));
}

#[cfg(target_arch = "x86_64")]
#[tokio::test]
async fn numa_policy_calls_are_denied() {
    let Some(o) = raw_syscalls(&[
        ("mbind", "libc.syscall(237, 0, 4096, 0, 0, 0, 0)"),
        ("set_mempolicy", "libc.syscall(238, 0, 0, 0)"),
        ("migrate_pages", "libc.syscall(256, 0, 8, 0, 0)"),
        ("move_pages", "libc.syscall(279, 0, 0, 0, 0, 0, 0)"),
    ])
    .await
    else {
        return;
    };
    for name in ["mbind", "set_mempolicy", "migrate_pages", "move_pages"] {
        expect(&o, name, EPERM);
    }
}

#[tokio::test]
async fn personality_can_only_be_queried_or_set_to_the_default() {
    // ADDR_NO_RANDOMIZE (what `setarch -R` uses) and READ_IMPLIES_EXEC are refused; the query
    // that glibc and Python make, and the default persona, still work.
    let Some(o) = raw_syscalls(&[
        ("no_aslr", "libc.personality(0x0040000)"),
        ("read_implies_exec", "libc.personality(0x0400000)"),
        ("query", "libc.personality(0xffffffff)"),
        ("default", "libc.personality(0)"),
    ])
    .await
    else {
        return;
    };
    expect(&o, "no_aslr", EPERM);
    expect(&o, "read_implies_exec", EPERM);
    assert!(o.contains("query:0:0"), "{o}");
    assert!(o.contains("default:0:0"), "{o}");
}

#[tokio::test]
async fn setuid_and_setgid_bits_cannot_be_set_on_workspace_files() {
    // The workspace outlives the sandbox on the host, owned by the sandbox's host uid: a setuid
    // file left there would be a setuid binary on the host.
    let ws = tempfile::tempdir().unwrap();
    let Some(o) = py(
        ws.path(),
        "import os, errno\n\
         def attempt(name, f):\n\
         \x20   try:\n\
         \x20       f(); print(name, 'ok')\n\
         \x20   except OSError as e:\n\
         \x20       print(name, errno.errorcode[e.errno])\n\
         open('/workspace/plain', 'w').close()\n\
         attempt('chmod_suid', lambda: os.chmod('/workspace/plain', 0o4755))\n\
         attempt('chmod_sgid', lambda: os.chmod('/workspace/plain', 0o2755))\n\
         fd = os.open('/workspace/plain', os.O_RDONLY)\n\
         attempt('fchmod_suid', lambda: os.fchmod(fd, 0o4755))\n\
         attempt('fchmodat_suid', lambda: os.chmod('plain', 0o6755, dir_fd=os.open('/workspace', os.O_RDONLY)))\n\
         attempt('open_creat_suid', lambda: os.close(os.open('/workspace/created', os.O_CREAT | os.O_WRONLY, 0o4755)))\n\
         attempt('mknod_suid', lambda: os.mknod('/workspace/node', 0o100000 | 0o4755))\n\
         attempt('chmod_plain', lambda: os.chmod('/workspace/plain', 0o755))\n\
         attempt('chmod_sticky_dir', lambda: (os.mkdir('/workspace/d'), os.chmod('/workspace/d', 0o1777)))\n\
         attempt('open_plain', lambda: os.close(os.open('/workspace/other', os.O_CREAT | os.O_WRONLY, 0o644)))\n",
    )
    .await
    else {
        return;
    };
    let s = out(&o);
    for denied in [
        "chmod_suid",
        "chmod_sgid",
        "fchmod_suid",
        "fchmodat_suid",
        "open_creat_suid",
        "mknod_suid",
    ] {
        assert!(
            s.contains(&format!("{denied} EPERM")),
            "{denied}: {s}{}",
            err(&o)
        );
    }
    for allowed in ["chmod_plain", "chmod_sticky_dir", "open_plain"] {
        assert!(
            s.contains(&format!("{allowed} ok")),
            "{allowed}: {s}{}",
            err(&o)
        );
    }
    // And `chmod u+s` from the shell, checked on the host side.
    let o = sh(ws.path(), "chmod u+s,g+s /workspace/plain; echo rc=$?").await;
    assert!(out(&o).contains("rc=1"), "{}{}", out(&o), err(&o));
    for entry in std::fs::read_dir(ws.path()).unwrap() {
        let meta = entry.unwrap().metadata().unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o6000, 0, "{meta:?}");
    }
}
