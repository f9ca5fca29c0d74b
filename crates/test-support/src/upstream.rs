//! A local upstream for egress tests: plain HTTP or HTTPS (a self-signed certificate for
//! `localhost` and `127.0.0.1`, written to a PEM file a server can be told to trust), bound to
//! 127.0.0.1 only, recording every request it receives.
//!
//! It answers:
//! - a request whose query has `redirect_to=<url>`: `302 Found` with `location: <url>` (the
//!   value up to the next `&`, verbatim);
//! - a path starting with `/quiet`: `200`, body `ok`;
//! - a path starting with `/reflect`: `200`, the `authorization` bearer token in each of the
//!   encodings of [`reflections`], one per line (and the first in `x-reflect`);
//! - anything else: `200` with the request echoed in the body (request line, every header, the
//!   body) and the `authorization` header copied into `x-echo-authorization`.
//!
//! It runs on its own thread and runtime, so it outlives the test runtime that started it and
//! can be shared; dropping it stops it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use tempfile::TempDir;
use tokio_rustls::TlsAcceptor;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// Header names lower-case, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl SeenRequest {
    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

type Seen = Arc<Mutex<Vec<SeenRequest>>>;

/// The upstream; stopped when dropped.
pub struct Upstream {
    addr: SocketAddr,
    seen: Seen,
    cert_path: Option<PathBuf>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

impl Upstream {
    /// Plain HTTP on 127.0.0.1, a port of its choosing.
    pub fn plain() -> Self {
        Self::start(None)
    }

    /// HTTPS on 127.0.0.1 with a fresh self-signed certificate for `localhost` and `127.0.0.1`;
    /// [`Upstream::cert_path`] is its PEM (e.g. for `[egress] extra_root_certs`).
    pub fn https() -> Self {
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("cannot generate the upstream's certificate");
        let key = PrivateKeyDer::from_pem_slice(certified.signing_key.serialize_pem().as_bytes())
            .expect("cannot read the upstream's key");
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("no TLS protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("cannot build the upstream's TLS configuration");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::start(Some((
            TlsAcceptor::from(Arc::new(cfg)),
            certified.cert.pem(),
        )))
    }

    fn start(tls: Option<(TlsAcceptor, String)>) -> Self {
        let dir = tempfile::tempdir().expect("cannot create a temporary folder for the upstream");
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("upstream: cannot bind 127.0.0.1:0: {e}"));
        listener
            .set_nonblocking(true)
            .expect("upstream: cannot make the listener non-blocking");
        let addr = listener.local_addr().expect("upstream: no local address");
        let (acceptor, cert_path) = match tls {
            Some((acceptor, pem)) => {
                let path = dir.path().join("upstream-cert.pem");
                std::fs::write(&path, pem)
                    .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
                (Some(acceptor), Some(path))
            }
            None => (None, None),
        };
        let seen: Seen = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let seen_by_server = Arc::clone(&seen);
        let thread = std::thread::Builder::new()
            .name(format!("upstream-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("cannot build the upstream's runtime");
                rt.block_on(serve(listener, acceptor, seen_by_server, stopped));
            })
            .expect("cannot start the upstream's thread");
        Self {
            addr,
            seen,
            cert_path,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The PEM file of the certificate of an HTTPS upstream; panics for a plain one.
    pub fn cert_path(&self) -> &Path {
        self.cert_path
            .as_deref()
            .expect("a plain HTTP upstream has no certificate")
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    tls: Option<TlsAcceptor>,
    seen: Seen,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener)
        .expect("upstream: cannot register the listener");
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (seen, tls) = (Arc::clone(&seen), tls.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(Arc::clone(&seen), req));
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    }
                }
                None => {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                }
            }
        });
    }
}

async fn handle(seen: Seen, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    let request = SeenRequest {
        method,
        target,
        headers,
        body,
    };
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(request.clone());
    Ok(answer(&request))
}

fn answer(req: &SeenRequest) -> Response<Full<Bytes>> {
    let query = req.target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let redirect = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("redirect_to="));
    let builder = Response::builder();
    let resp = if let Some(to) = redirect {
        builder
            .status(StatusCode::FOUND)
            .header("location", to)
            .body(Full::new(Bytes::from_static(b"moved\n")))
    } else if req.path().starts_with("/reflect") {
        // The bearer token, echoed back in the encodings of `reflections`.
        let token = req
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("");
        let mut body = String::new();
        for (what, form) in reflections(token) {
            body.push_str(&format!("{what}: <{form}>\n"));
        }
        builder
            .status(StatusCode::OK)
            .header("content-type", "text/plain")
            .header("x-reflect", reflections(token).swap_remove(0).1)
            .body(Full::new(Bytes::from(body)))
    } else if req.path().starts_with("/quiet") {
        builder
            .status(StatusCode::OK)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"ok\n")))
    } else {
        let mut echo = format!("{} {}\n", req.method, req.target);
        for (k, v) in &req.headers {
            echo.push_str(&format!("{k}: {v}\n"));
        }
        echo.push_str(&format!("body: {}\n", String::from_utf8_lossy(&req.body)));
        let mut b = builder
            .status(StatusCode::OK)
            .header("content-type", "text/plain");
        if let Some(auth) = req.header("authorization") {
            b = b.header("x-echo-authorization", auth);
        }
        b.body(Full::new(Bytes::from(echo)))
    };
    resp.unwrap_or_else(|_| {
        let mut r = Response::new(Full::new(Bytes::from_static(b"bad redirect target\n")));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// A secret as a hostile or careless upstream echoes it back, labelled: JSON with escaped
/// slashes, base64 inside a larger blob at byte offsets 1 and 2, upper-case hex, upper-case,
/// reversed, and cut by one character.
pub fn reflections(secret: &str) -> Vec<(&'static str, String)> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let blob = |lead: &str| STANDARD.encode(format!("{lead}{secret}\"}}"));
    let json = serde_json::to_string(secret).unwrap_or_default();
    let mut cut = secret.to_owned();
    cut.pop();
    vec![
        ("json-escaped", json.replace('/', "\\/")),
        ("base64-offset-1", blob("{")),
        ("base64-offset-2", blob("{\"")),
        (
            "hex-upper",
            secret.bytes().map(|b| format!("{b:02X}")).collect(),
        ),
        ("upper-case", secret.to_ascii_uppercase()),
        ("reversed", secret.chars().rev().collect()),
        ("cut-by-one", cut),
    ]
}
