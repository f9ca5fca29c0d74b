//! Network: no route anywhere, no raw sockets, and only the handed-back proxy port.

use paddock_sandbox::NetworkSpec;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::*;

#[tokio::test]
async fn no_internet() {
    let ws = tempfile::tempdir().unwrap();
    let o = sh(ws.path(), "exec 3<>/dev/tcp/1.1.1.1/80 && echo connected").await;
    assert!(!out(&o).contains("connected"));
    assert!(
        err(&o).contains("/dev/tcp/1.1.1.1/80: Permission denied"),
        "{}",
        err(&o)
    );
    let o = sh(ws.path(), "curl -sS --max-time 5 http://1.1.1.1/").await;
    assert_ne!(o.exit_code, Some(0));
    assert!(err(&o).contains("Failed to connect"), "{}", err(&o));
}

#[tokio::test]
async fn the_hosts_loopback_is_unreachable() {
    let ws = tempfile::tempdir().unwrap();
    let host = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = host.local_addr().unwrap().port();
    let o = sh(
        ws.path(),
        &format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"),
    )
    .await;
    assert!(!out(&o).contains("connected"));
    assert!(err(&o).contains("Permission denied"), "{}", err(&o));
    // And nothing reached the host listener.
    let accepted = tokio::time::timeout(std::time::Duration::from_millis(100), host.accept()).await;
    assert!(accepted.is_err());
}

#[tokio::test]
async fn raw_netlink_udp_and_icmp_sockets_fail() {
    let ws = tempfile::tempdir().unwrap();
    let Some(o) = py(
        ws.path(),
        "import socket, errno\n\
         def attempt(name, f):\n\
         \x20   try:\n\
         \x20       f(); print(name, 'ok')\n\
         \x20   except OSError as e:\n\
         \x20       print(name, errno.errorcode[e.errno])\n\
         attempt('packet', lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))\n\
         attempt('netlink', lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))\n\
         attempt('raw_icmp', lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))\n\
         attempt('ping_dgram', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP))\n\
         attempt('udp', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 53)))\n\
         attempt('tcp_bind', lambda: socket.socket().bind(('127.0.0.1', 8080)))\n",
    )
    .await
    else {
        return;
    };
    assert_eq!(
        out(&o),
        "packet EPERM\nnetlink EPERM\nraw_icmp EPERM\nping_dgram EACCES\nudp ENETUNREACH\ntcp_bind EACCES\n",
        "{}",
        err(&o)
    );
}

#[tokio::test]
async fn ping_fails() {
    let ws = tempfile::tempdir().unwrap();
    if !std::path::Path::new("/usr/bin/ping").exists()
        && !std::path::Path::new("/bin/ping").exists()
    {
        eprintln!(
            "SKIPPED: no ping binary on this host (raw and ICMP sockets are covered by raw_netlink_udp_and_icmp_sockets_fail)"
        );
        return;
    }
    let o = sh(ws.path(), "ping -c1 -W1 1.1.1.1").await;
    assert_ne!(o.exit_code, Some(0));
}

#[tokio::test]
async fn proxy_port_reaches_the_handed_back_listener_only() {
    let ws = tempfile::tempdir().unwrap();
    let mut s = spec(
        ws.path(),
        "echo \"$HTTP_PROXY $HTTPS_PROXY ${NO_PROXY-unset}\"; \
         exec 3<>/dev/tcp/127.0.0.1/3128 || exit 1; echo hello >&3; read -r line <&3; echo \"got $line\"; \
         exec 4<>/dev/tcp/127.0.0.1/3129 && echo other-port-open",
    );
    s.env = vec![("NO_PROXY".into(), "*".into())];
    s.network = Some(NetworkSpec { proxy_port: 3128 });
    let mut run = driver().spawn(s).await.unwrap();
    let listener = run.take_listener().expect("listener handed back");
    let server = tokio::spawn(async move {
        let (conn, _) = listener.accept().await.unwrap();
        let (r, mut w) = conn.into_split();
        let mut line = String::new();
        BufReader::new(r).read_line(&mut line).await.unwrap();
        w.write_all(format!("echo:{line}").as_bytes())
            .await
            .unwrap();
    });
    let o = run.wait().await.unwrap();
    server.await.unwrap();
    assert_eq!(
        out(&o),
        "http://127.0.0.1:3128 http://127.0.0.1:3128 unset\ngot echo:hello\n",
        "{}",
        err(&o)
    );
    assert!(
        err(&o).contains("/dev/tcp/127.0.0.1/3129: Permission denied"),
        "{}",
        err(&o)
    );
}

#[tokio::test]
async fn without_network_the_proxy_port_is_closed_too() {
    let ws = tempfile::tempdir().unwrap();
    let o = sh(
        ws.path(),
        "exec 3<>/dev/tcp/127.0.0.1/3128 && echo connected",
    )
    .await;
    assert!(!out(&o).contains("connected"));
    assert!(err(&o).contains("Permission denied"), "{}", err(&o));
}

#[tokio::test]
async fn exec_without_serving_the_listener_refuses_connections() {
    let ws = tempfile::tempdir().unwrap();
    // The command starts as `spawn` returns, a moment before `exec` drops the listener; a
    // connection in that moment would land in the backlog (see `SandboxDriver::exec`). Wait it
    // out so the test checks what holds afterwards, rather than racing it.
    let mut s = spec(
        ws.path(),
        "sleep 0.3; exec 3<>/dev/tcp/127.0.0.1/3128 && echo connected",
    );
    s.network = Some(NetworkSpec { proxy_port: 3128 });
    let o = driver().exec(s).await.unwrap();
    assert!(!o.timed_out);
    assert!(err(&o).contains("Connection refused"), "{}", err(&o));
}
