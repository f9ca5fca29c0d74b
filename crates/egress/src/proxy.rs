//! The HTTP/1.1 forward proxy the sandbox talks to: absolute-form requests for plain HTTP,
//! `CONNECT` for HTTPS (tunnelled blind, or intercepted when the broker must see inside).

use crate::addr::{normalize_host, resolve_checked};
use crate::body::{Counted, ProxyBody, ResponseBody, counting_request, empty, full};
use crate::broker::{
    Broker, Exchanged, Failure, Outbound, Scheme, UpstreamCache, strip_hop_by_hop,
};
use crate::credentials::Injection;
use crate::error::{DenyReason, UpstreamFailure};
use crate::policy::{ConnectVerdict, check_connect};
use crate::redact::Redactor;
use crate::run::{RecordGuard, RunEgress, denied_record};
use crate::sni::{Hello, check_server_name, read_client_hello};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use paddock_types::event::{EgressDecision, EgressRecord};
use rustls::server::Acceptor;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;

/// Header carrying the machine-readable denial reason on 403 answers.
pub const DENIED_HEADER: &str = "paddock-egress-denied";
/// Header carrying the machine-readable failure reason on 502/504 answers.
pub const ERROR_HEADER: &str = "paddock-egress-error";

/// Most client connections one run's proxy serves at once (tunnels and intercepted connections
/// included, until they end). Further connections wait, unaccepted, in the listener's backlog
/// until one ends: with [`SCAN_WHOLE_BYTES`](crate::SCAN_WHOLE_BYTES) per connection this
/// bounds the request bodies one run can hold in memory to 64 MiB.
pub const MAX_CONNECTIONS_PER_RUN: usize = 256;

/// A client that sends no complete request head within this time is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Every task spawned for a serve loop holds a clone; the loop waits until all are dropped so
/// that the records of connections cut at shutdown are in the log when `serve` returns.
#[derive(Clone)]
struct Tracker(#[allow(dead_code)] mpsc::Sender<()>);

fn tracker() -> (Tracker, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel(1);
    (Tracker(tx), rx)
}

impl Broker {
    /// Serves the forward proxy on `listener` until `shutdown` is cancelled; every connection is
    /// attributed to `ctx`. On shutdown, open connections and tunnels are cut (the run is over)
    /// and this returns once their records are in the log.
    pub async fn serve(
        self: &Arc<Self>,
        listener: TcpListener,
        ctx: Arc<RunEgress>,
        shutdown: CancellationToken,
    ) {
        self.serve_with(
            || async {
                let (s, _) = listener.accept().await?;
                let _ = s.set_nodelay(true);
                Ok(s)
            },
            ctx,
            shutdown,
        )
        .await;
    }

    /// [`Broker::serve`] on a Unix socket (the per-run socket the sandbox bridge connects to).
    pub async fn serve_unix(
        self: &Arc<Self>,
        listener: UnixListener,
        ctx: Arc<RunEgress>,
        shutdown: CancellationToken,
    ) {
        self.serve_with(|| async { Ok(listener.accept().await?.0) }, ctx, shutdown)
            .await;
    }

    /// Serves one already accepted connection (any transport) until it closes or `shutdown`.
    pub async fn serve_connection<IO>(
        self: &Arc<Self>,
        io: IO,
        ctx: Arc<RunEgress>,
        shutdown: CancellationToken,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (t, mut rx) = tracker();
        self.clone()
            .run_connection(io, ctx, shutdown, t, None)
            .await;
        let _ = rx.recv().await;
    }

    async fn serve_with<A, Fut, IO>(
        self: &Arc<Self>,
        mut accept: A,
        ctx: Arc<RunEgress>,
        shutdown: CancellationToken,
    ) where
        A: FnMut() -> Fut,
        Fut: Future<Output = std::io::Result<IO>>,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (t, mut rx) = tracker();
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_RUN));
        loop {
            // At the cap, accept nothing until a connection ends: the sandbox's further
            // connections wait in the backlog instead of each pinning memory here.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = accept() => match accepted {
                    Ok(io) => {
                        let this = self.clone();
                        let (ctx, shutdown, t) = (ctx.clone(), shutdown.clone(), t.clone());
                        tokio::spawn(this.run_connection(io, ctx, shutdown, t, Some(permit)));
                    }
                    Err(e) => {
                        // E.g. out of file descriptors: back off instead of spinning.
                        tracing::warn!(run_id = %ctx.run_id, error = %e, "egress accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(t);
        let _ = rx.recv().await;
    }

    async fn run_connection<IO>(
        self: Arc<Self>,
        io: IO,
        ctx: Arc<RunEgress>,
        shutdown: CancellationToken,
        tracker: Tracker,
        permit: Option<OwnedSemaphorePermit>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = Arc::new(Conn {
            broker: self,
            ctx,
            cache: UpstreamCache::default(),
            shutdown: shutdown.clone(),
            tracker,
            permit: permit.map(Arc::new),
        });
        let svc = service_fn(move |req| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(conn.handle(req).await) }
        });
        let served = server_builder()
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades();
        tokio::select! {
            r = served => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "egress client connection ended with an error");
                }
            }
            _ = shutdown.cancelled() => {}
        }
    }
}

fn server_builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    b
}

/// State of one client connection to the proxy.
struct Conn {
    broker: Arc<Broker>,
    ctx: Arc<RunEgress>,
    cache: UpstreamCache,
    shutdown: CancellationToken,
    tracker: Tracker,
    /// The connection's slot under [`MAX_CONNECTIONS_PER_RUN`], held until its tunnel (which
    /// outlives the HTTP connection) ends too.
    permit: Option<Arc<OwnedSemaphorePermit>>,
}

impl Conn {
    fn spawn_tracked<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (t, shutdown) = (self.tracker.clone(), self.shutdown.clone());
        let permit = self.permit.clone();
        tokio::spawn(async move {
            let _t = t;
            let _permit = permit;
            tokio::select! {
                _ = fut => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }

    fn deny(
        &self,
        method: &str,
        scheme: &str,
        host: &str,
        port: u16,
        path: &str,
        reason: DenyReason,
    ) -> Response<ProxyBody> {
        self.ctx.recorder().push(denied_record(
            method,
            scheme,
            host,
            port,
            path,
            reason.as_str(),
        ));
        deny_response(reason)
    }

    async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            return self.connect(req).await;
        }
        let method = req.method().clone();
        let uri = req.uri().clone();
        let path = uri.path().to_owned();
        let scheme = match uri.scheme_str() {
            Some(s) => match Scheme::parse(s) {
                Some(s) => s,
                None => {
                    let host = uri.host().unwrap_or("");
                    return self.deny(
                        method.as_str(),
                        s,
                        host,
                        0,
                        &path,
                        DenyReason::SchemeNotAllowed,
                    );
                }
            },
            // Origin-form: the client did not treat us as a proxy.
            None => {
                let host = req
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                return self.deny(method.as_str(), "", host, 0, &path, DenyReason::BadRequest);
            }
        };
        let Some(host) = uri.host().and_then(normalize_host) else {
            return self.deny(
                method.as_str(),
                scheme.as_str(),
                "",
                0,
                &path,
                DenyReason::BadRequest,
            );
        };
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        let (parts, body) = req.into_parts();
        let sent = Arc::new(AtomicU64::new(0));
        let out = Outbound {
            method: method.clone(),
            scheme,
            host,
            port,
            path_and_query,
            headers: parts.headers,
            body: counting_request(body, sent.clone()),
            sent,
        };
        match self
            .broker
            .exchange(&self.ctx, out, None, Some(&self.cache))
            .await
        {
            Ok(ex) => {
                client_response(
                    ex,
                    self.ctx.redactor(),
                    &method,
                    self.broker.cfg.max_body_bytes,
                )
                .await
            }
            Err(f) => failure_response(f),
        }
    }

    async fn connect(self: &Arc<Self>, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let target = req
            .uri()
            .authority()
            .and_then(|a| Some((normalize_host(a.host())?, a.port_u16()?)));
        let Some((host, port)) = target else {
            let raw = req.uri().to_string();
            return self.deny("CONNECT", "https", &raw, 0, "", DenyReason::BadRequest);
        };
        if let Some(reason) = self.ctx.refuse_all() {
            return self.deny("CONNECT", "https", &host, port, "", reason);
        }
        // Before the policy and DNS: a wildcard rule lets the sandbox pick the name, and a
        // name carrying a secret would leave in the DNS query and the SNI.
        if let Some(scanner) = self.ctx.scanner()
            && scanner.find(host.as_bytes()).is_some()
        {
            return self.deny(
                "CONNECT",
                "https",
                &host,
                port,
                "",
                DenyReason::SecretInRequest,
            );
        }
        let bound = !Injection::for_target(self.ctx.credentials(), "https", &host, port).is_empty();
        let tunnel_rule = match check_connect(self.ctx.rules(), &host, port) {
            ConnectVerdict::Deny(reason) => {
                return self.deny("CONNECT", "https", &host, port, "", reason);
            }
            ConnectVerdict::Tunnel(i) if !bound => Some(i),
            ConnectVerdict::Tunnel(_) | ConnectVerdict::Inspect => None,
        };
        let addrs = match resolve_checked(
            &host,
            port,
            &self.broker.allow,
            self.broker.cfg.connect_timeout,
        )
        .await
        {
            Ok(a) => a,
            Err(reason) => return self.deny("CONNECT", "https", &host, port, "", reason),
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        match tunnel_rule {
            Some(rule) => {
                let record = EgressRecord {
                    method: "CONNECT".into(),
                    scheme: "https".into(),
                    host: host.clone(),
                    port,
                    path: String::new(),
                    status: None,
                    bytes_sent: 0,
                    bytes_received: 0,
                    decision: EgressDecision::Allowed,
                    reason: format!("rule:{rule}"),
                    credential: None,
                    host_len: None,
                    path_len: None,
                };
                let sent = Arc::new(AtomicU64::new(0));
                let mut guard = RecordGuard::new(self.ctx.recorder().clone(), record, sent.clone());
                // On record before the upstream sees a byte of the tunnel.
                if !guard.forwarding().await {
                    return deny_response(DenyReason::NotRecorded);
                }
                let upstream = match self.broker.connect_tcp(&addrs).await {
                    Ok(s) => s,
                    Err((f, detail)) => {
                        tracing::debug!(host = %host, error = %detail, "egress tunnel connect failed");
                        guard.set_reason(format!("rule:{rule} error:{f}"));
                        return error_response(f);
                    }
                };
                let received = guard.received.clone();
                let hello_timeout = self.broker.cfg.connect_timeout;
                let run_id = self.ctx.run_id.clone();
                let recorder = self.ctx.recorder().clone();
                self.spawn_tracked(async move {
                    let mut guard = guard;
                    let Ok(upgraded) = on_upgrade.await else {
                        return;
                    };
                    // The tunnel is for TLS to `host`: the ClientHello must name it, or the
                    // upstream (a CDN, a shared host) could serve any site it fronts.
                    let mut client = TokioIo::new(upgraded);
                    let (hello, buffered) =
                        match tokio::time::timeout(hello_timeout, read_client_hello(&mut client))
                            .await
                        {
                            Ok(read) => read,
                            Err(_) => (Hello::NotTls, Vec::new()),
                        };
                    let verdict = match &hello {
                        Hello::Tls(sni) => check_server_name(&host, sni.as_deref()),
                        Hello::NotTls => Err(DenyReason::NotTls),
                    };
                    if let Err(reason) = verdict {
                        // The sandbox chose the SNI: it may carry a secret.
                        let sni = match &hello {
                            Hello::Tls(sni) => sni.as_deref().map(|s| recorder.scrub(s)),
                            Hello::NotTls => None,
                        };
                        tracing::info!(run_id = %run_id, host = %host, sni = sni.as_deref(), reason = %reason, "egress tunnel refused");
                        guard.set_denied();
                        guard.set_reason(reason.as_str().to_owned());
                        return;
                    }
                    sent.fetch_add(buffered.len() as u64, Ordering::Relaxed);
                    let mut upstream = Counted::new(upstream, received);
                    if upstream.write_all(&buffered).await.is_err() {
                        return;
                    }
                    let mut client = Counted::new(client, sent);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
                Response::new(empty())
            }
            None => {
                let tls = match self.broker.ca.server_config(&host) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(host = %host, error = %e, "egress cannot mint a leaf certificate");
                        return error_response(UpstreamFailure::TlsFailed);
                    }
                };
                let inner = Arc::new(Inner {
                    conn: self.clone(),
                    host,
                    port,
                    addrs,
                    cache: UpstreamCache::default(),
                });
                let handshake_timeout = self.broker.cfg.connect_timeout;
                self.spawn_tracked(async move {
                    let Ok(upgraded) = on_upgrade.await else {
                        return;
                    };
                    let lazy = LazyConfigAcceptor::new(Acceptor::default(), TokioIo::new(upgraded));
                    let start = match tokio::time::timeout(handshake_timeout, lazy).await {
                        Ok(Ok(start)) => start,
                        Ok(Err(_)) | Err(_) => {
                            inner.refuse(DenyReason::NotTls, None);
                            return;
                        }
                    };
                    // The broker forwards to the CONNECT host whatever the name, so a mismatch
                    // reaches nothing else; it is refused so that both kinds of tunnel agree.
                    let sni = start.client_hello().server_name().map(str::to_owned);
                    if let Err(reason) = check_server_name(&inner.host, sni.as_deref()) {
                        inner.refuse(reason, sni.as_deref());
                        return;
                    }
                    let accept = start.into_stream(tls);
                    let stream = match tokio::time::timeout(handshake_timeout, accept).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            // Usually a client that does not trust the broker's CA.
                            tracing::info!(run_id = %inner.conn.ctx.run_id, host = %inner.host, error = %e, "egress client tls handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let svc = service_fn(move |req| {
                        let inner = inner.clone();
                        async move { Ok::<_, Infallible>(inner.handle(req).await) }
                    });
                    if let Err(e) = server_builder()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                    {
                        tracing::debug!(error = %e, "egress intercepted connection ended with an error");
                    }
                });
                Response::new(empty())
            }
        }
    }
}

/// One intercepted CONNECT: its requests all go to `host:port` at the addresses checked when
/// the CONNECT was accepted.
struct Inner {
    conn: Arc<Conn>,
    host: String,
    port: u16,
    addrs: Vec<SocketAddr>,
    cache: UpstreamCache,
}

impl Inner {
    /// Records a refused intercepted tunnel (nothing was forwarded).
    fn refuse(&self, reason: DenyReason, sni: Option<&str>) {
        // The sandbox chose the SNI: it may carry a secret.
        let sni = sni.map(|s| self.conn.ctx.recorder().scrub(s));
        tracing::info!(run_id = %self.conn.ctx.run_id, host = %self.host, sni = sni.as_deref(), reason = %reason, "egress tunnel refused");
        self.conn.ctx.recorder().push(denied_record(
            "CONNECT",
            "https",
            &self.host,
            self.port,
            "",
            reason.as_str(),
        ));
    }

    async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        let method = req.method().clone();
        if method == Method::CONNECT {
            return self.conn.deny(
                "CONNECT",
                "https",
                &self.host,
                self.port,
                "",
                DenyReason::BadRequest,
            );
        }
        // The target is the CONNECT's host whatever the request's Host header says: the Host
        // header is overwritten, so it cannot steer to another virtual host at this address.
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        let (parts, body) = req.into_parts();
        let sent = Arc::new(AtomicU64::new(0));
        let out = Outbound {
            method: method.clone(),
            scheme: Scheme::Https,
            host: self.host.clone(),
            port: self.port,
            path_and_query,
            headers: parts.headers,
            body: counting_request(body, sent.clone()),
            sent,
        };
        let broker = &self.conn.broker;
        match broker
            .exchange(&self.conn.ctx, out, Some(&self.addrs), Some(&self.cache))
            .await
        {
            Ok(ex) => {
                client_response(
                    ex,
                    self.conn.ctx.redactor(),
                    &method,
                    broker.cfg.max_body_bytes,
                )
                .await
            }
            Err(f) => failure_response(f),
        }
    }
}

/// The upstream's response as the client gets it: hop-by-hop headers removed, the run's secrets
/// redacted from headers and body. Bodies with a declared length up to `max_body` are redacted in
/// one piece (and keep an exact `content-length`); others are redacted as they stream.
async fn client_response(
    ex: Exchanged,
    redactor: Option<&Redactor>,
    method: &Method,
    max_body: usize,
) -> Response<ProxyBody> {
    let Exchanged { response, guard } = ex;
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let Some(redactor) = redactor else {
        let body = ResponseBody::new(body, None, guard);
        return Response::from_parts(parts, body.map_err(Into::into).boxed());
    };
    redactor.redact_headers(&mut parts.headers);
    let status = parts.status;
    let bodiless = method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if bodiless {
        let body = ResponseBody::new(body, None, guard);
        return Response::from_parts(parts, body.map_err(Into::into).boxed());
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let body = ResponseBody::new(body, Some(redactor.stream()), guard);
    match declared {
        Some(len) if len <= max_body => match body.collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                Response::from_parts(parts, full(bytes))
            }
            Err(_) => error_response(UpstreamFailure::ProtocolError),
        },
        _ => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, body.map_err(Into::into).boxed())
        }
    }
}

fn failure_response(f: Failure) -> Response<ProxyBody> {
    match f {
        Failure::Denied(reason) => deny_response(reason),
        Failure::Upstream(reason, detail) => {
            tracing::debug!(reason = %reason, error = %detail, "egress upstream failure");
            error_response(reason)
        }
    }
}

pub(crate) fn deny_response(reason: DenyReason) -> Response<ProxyBody> {
    let mut r = Response::new(full(format!("egress denied: {reason}\n")));
    *r.status_mut() = StatusCode::FORBIDDEN;
    r.headers_mut()
        .insert(DENIED_HEADER, HeaderValue::from_static(reason.as_str()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(crate) fn error_response(reason: UpstreamFailure) -> Response<ProxyBody> {
    let mut r = Response::new(full(format!("egress upstream error: {reason}\n")));
    *r.status_mut() = match reason {
        UpstreamFailure::ConnectTimeout | UpstreamFailure::Timeout => StatusCode::GATEWAY_TIMEOUT,
        UpstreamFailure::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    r.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(reason.as_str()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
