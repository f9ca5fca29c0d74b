//! Body and stream wrappers: byte counting, streamed redaction, the scan of streamed request
//! bodies for secrets, and the record that is pushed when a response body is finished or dropped.

use crate::redact::StreamRedactor;
use crate::run::RecordGuard;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use paddock_types::redact::{SecretMatcher, StreamScanner};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The one body type passed around: requests to upstreams and responses to clients.
pub(crate) type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub(crate) fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A request body that counts the bytes it yields (what was sent upstream).
/// `inspect_frame`, not `map_frame`: it keeps the body's size hint, which the outbound scan uses
/// to read a body of known length whole.
pub(crate) fn counting_request(body: Incoming, sent: Arc<AtomicU64>) -> ProxyBody {
    body.inspect_frame(move |f| {
        if let Some(d) = f.data_ref() {
            sent.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
    })
    .map_err(BoxError::from)
    .boxed()
}

/// A buffered request body that counts its bytes only as they are actually sent upstream, so a
/// refused or unconnectable request records nothing sent.
pub(crate) fn counting_full(bytes: Bytes, sent: Arc<AtomicU64>) -> ProxyBody {
    Full::new(bytes)
        .inspect_frame(move |f| {
            if let Some(d) = f.data_ref() {
                sent.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        })
        .map_err(|never| match never {})
        .boxed()
}

/// A request body of unknown length on its way upstream, checked for the workspace's secrets as
/// it streams. Bytes go out only once no secret form can start in them (the scanner holds back
/// the longest form minus one byte); on a match the body fails, which aborts the upstream
/// exchange before the rest of the form is written, and `tripped` tells the caller why.
/// `sent` counts what `inner` yields; on a match it is set back to what was really released.
pub(crate) fn scanned_request(
    inner: ProxyBody,
    matcher: SecretMatcher,
    tripped: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> ProxyBody {
    ScanBody {
        inner,
        scanner: StreamScanner::new(matcher),
        tripped,
        sent,
        taken: 0,
        released: 0,
        done: false,
    }
    .boxed()
}

struct ScanBody {
    inner: ProxyBody,
    scanner: StreamScanner,
    tripped: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    /// Bytes taken from `inner`; those not yet `released` are held back by the scanner.
    taken: u64,
    released: u64,
    done: bool,
}

impl Body for ScanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.taken += data.len() as u64;
                        match this.scanner.push(&data) {
                            Ok(out) if out.is_empty() => continue,
                            Ok(out) => {
                                this.released += out.len() as u64;
                                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                            }
                            Err(_) => {
                                this.sent.store(this.released, Ordering::Relaxed);
                                this.tripped.store(true, Ordering::SeqCst);
                                this.done = true;
                                return Poll::Ready(Some(Err("secret in request body".into())));
                            }
                        }
                    }
                    // Trailers are not forwarded upstream (hop-by-hop in practice); drop them
                    // rather than scan a second header block.
                    Err(_) => continue,
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.done = true;
                    let rest = this.scanner.finish();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                    }
                }
            }
        }
    }

    /// The scanner passes every byte through unchanged (it only holds some back for a while),
    /// so a body of known length keeps it: the upstream gets a `content-length`, not chunks.
    fn size_hint(&self) -> SizeHint {
        if self.done {
            return SizeHint::with_exact(0);
        }
        let held = self.taken.saturating_sub(self.released);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(held));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}

/// An upstream response body on its way to the client: counts bytes, optionally redacts, and
/// owns the record guard so the record is pushed when the body ends or is dropped.
pub(crate) struct ResponseBody {
    inner: Incoming,
    redactor: Option<StreamRedactor>,
    guard: RecordGuard,
    done: bool,
    trailers: Option<HeaderMap>,
}

impl ResponseBody {
    pub(crate) fn new(
        inner: Incoming,
        redactor: Option<StreamRedactor>,
        guard: RecordGuard,
    ) -> Self {
        Self {
            inner,
            redactor,
            guard,
            done: false,
            trailers: None,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.guard.add_received(data.len());
                        match &mut this.redactor {
                            None => return Poll::Ready(Some(Ok(Frame::data(data)))),
                            Some(r) => {
                                let out = r.push(&data);
                                if !out.is_empty() {
                                    return Poll::Ready(Some(Ok(Frame::data(out))));
                                }
                            }
                        }
                    }
                    Err(frame) => {
                        // Trailers end the body: release what the redactor holds first.
                        if let Ok(t) = frame.into_trailers() {
                            let mut t = t;
                            if let Some(r) = &this.redactor {
                                r.redact_headers(&mut t);
                            }
                            this.trailers = Some(t);
                        }
                        this.done = true;
                        if let Some(r) = &mut this.redactor {
                            let rest = r.finish();
                            if !rest.is_empty() {
                                return Poll::Ready(Some(Ok(Frame::data(rest))));
                            }
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.done = true;
                    if let Some(r) = &mut this.redactor {
                        let rest = r.finish();
                        if !rest.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(rest))));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Redaction may change the length; without it the upstream's length still holds.
        match self.redactor {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

/// An I/O stream that counts the bytes read from it (for tunnels).
pub(crate) struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S> Counted<S> {
    pub(crate) fn new(inner: S, read: Arc<AtomicU64>) -> Self {
        Self { inner, read }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
