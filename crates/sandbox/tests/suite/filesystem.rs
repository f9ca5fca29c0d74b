use super::*;

#[tokio::test]
async fn shadow_and_host_secrets_are_absent() {
    let ws = tempfile::tempdir().unwrap();
    let o = sh(
        ws.path(),
        "cat /etc/shadow; ls /etc/ssh /root /home /etc/ssl/private; ls /etc",
    )
    .await;
    let e = err(&o);
    assert!(
        e.contains("cat: /etc/shadow: No such file or directory"),
        "{e}"
    );
    for p in ["/etc/ssh", "/root", "/home", "/etc/ssl/private"] {
        assert!(
            e.contains(&format!("cannot access '{p}': No such file or directory")),
            "{p}: {e}"
        );
    }
    let listing = out(&o);
    for secret in [
        "shadow",
        "gshadow",
        "sudoers",
        "ssh",
        "gitconfig",
        "npmrc",
        "pip.conf",
    ] {
        assert!(
            !listing.lines().any(|l| l == secret),
            "{secret} visible in /etc: {listing}"
        );
    }
}

#[tokio::test]
async fn the_servers_data_folder_is_invisible() {
    let ws = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("paddock.db"), "secret").unwrap();
    let path = data.path().join("paddock.db");
    let o = sh(
        ws.path(),
        &format!("cat {0}; ls {1}", path.display(), data.path().display()),
    )
    .await;
    let e = err(&o);
    assert!(
        e.contains(&format!(
            "cat: {}: No such file or directory",
            path.display()
        )),
        "{e}"
    );
    assert!(e.contains("No such file or directory"), "{e}");
    assert!(!out(&o).contains("paddock.db"));
}

#[tokio::test]
async fn another_runs_workspace_is_invisible() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let o = sh(a.path(), "echo run-a-secret > /workspace/secret.txt").await;
    assert!(o.success());
    let o = sh(
        b.path(),
        &format!(
            "ls -A /workspace | wc -l; cat {}/secret.txt; grep -rs run-a-secret / --exclude-dir=proc --exclude-dir=sys | head -1",
            a.path().display()
        ),
    )
    .await;
    assert_eq!(out(&o), "0\n", "b sees nothing of a: {}", err(&o));
    assert!(err(&o).contains("No such file or directory"));
}

#[tokio::test]
async fn proc_shows_only_the_sandbox_and_no_host_environment() {
    let ws = tempfile::tempdir().unwrap();
    // Cargo puts CARGO_MANIFEST_DIR in this test process's environment: the marker.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let o = sh(
        ws.path(),
        "cat /proc/1/environ; echo; ls /proc | grep -c '^[0-9]'; \
         cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c 'CARGO_MANIFEST_DI[R]'; \
         cat /proc/1/cmdline | tr '\\0' ' '",
    )
    .await;
    let stdout = out(&o);
    let lines: Vec<&str> = stdout.lines().collect();
    // Init (pid 1) is the helper; its environment is empty (or unreadable).
    assert!(lines[0].is_empty(), "{stdout}");
    let procs: u32 = lines[1].parse().unwrap();
    assert!(
        procs <= 6,
        "only the sandbox's few processes are visible, got {procs}: {stdout}"
    );
    assert_eq!(lines[2], "0", "no host environment anywhere in /proc");
    assert!(!stdout.contains("cargo"), "{stdout}");
}

#[tokio::test]
async fn writing_outside_the_workspace_fails() {
    let ws = tempfile::tempdir().unwrap();
    let marker = format!("paddock-tmp-{}", std::process::id());
    let o = sh(
        ws.path(),
        &format!(
            "touch /usr/evil; touch /etc/evil; touch /evil; touch /dev/evil; echo x > /etc/passwd; \
             touch /tmp/{marker} && echo tmp-ok; touch /workspace/ok && echo ws-ok"
        ),
    )
    .await;
    let e = err(&o);
    for p in ["/usr/evil", "/etc/evil", "/evil", "/dev/evil"] {
        assert!(
            e.contains(&format!("touch: cannot touch '{p}': Read-only file system")),
            "{p}: {e}"
        );
    }
    assert!(e.contains("/etc/passwd: Read-only file system"), "{e}");
    assert_eq!(out(&o), "tmp-ok\nws-ok\n");
    // /tmp was private to that sandbox.
    assert!(!std::path::Path::new("/tmp").join(&marker).exists());
}

#[tokio::test]
async fn setuid_binaries_do_not_elevate() {
    let ws = tempfile::tempdir().unwrap();
    if !std::path::Path::new("/usr/bin/su").exists() {
        eprintln!("SKIPPED: no /usr/bin/su on this host");
        return;
    }
    let o = sh(ws.path(), "su -c id root </dev/null; id -u").await;
    assert!(out(&o).ends_with("1000\n"), "{}", out(&o));
    assert!(!out(&o).contains("uid=0"));
}

#[tokio::test]
async fn mountinfo_lists_only_the_sandboxs_own_mounts() {
    // The kernel prints each bind's folder within its file system (so the workspace's host path
    // shows; README "Limitations"), but no other host mount and nothing of the detached root.
    let ws = tempfile::tempdir().unwrap();
    let o = sh(ws.path(), "cat /proc/self/mountinfo").await;
    let info = out(&o);
    let points: Vec<&str> = info.lines().filter_map(|l| l.split(' ').nth(4)).collect();
    assert!(!info.contains(".oldroot"), "{info}");
    for point in &points {
        let allowed = [
            "/",
            "/usr",
            "/bin",
            "/sbin",
            "/lib",
            "/lib32",
            "/lib64",
            "/libx32",
            "/etc",
            "/dev",
            "/proc",
            "/tmp",
            "/workspace",
        ]
        .iter()
        .any(|p| point == p || point.starts_with(&format!("{p}/")));
        assert!(allowed, "unexpected mount point {point}: {info}");
    }
    let workspace = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/workspace"))
        .unwrap_or_else(|| panic!("no /workspace mount: {info}"));
    let options = workspace.split(' ').nth(5).unwrap_or_default();
    assert!(
        options.contains("nosuid") && options.contains("nodev"),
        "{workspace}"
    );
}
