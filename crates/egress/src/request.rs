//! `Broker::request`: one HTTP request made by the broker itself on behalf of a run (the
//! `http_request` tool), with redirects followed by hand so every hop is checked.

use crate::addr::normalize_host;
use crate::body::{ResponseBody, counting_full};
use crate::broker::{Broker, Outbound, Scheme, strip_hop_by_hop};
use crate::credentials::Injection;
use crate::error::{DenyReason, EgressError, UpstreamFailure};
use crate::run::{RunEgress, denied_record};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Uri};
use hyper::body::Body;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// Redirects followed before giving up with `too_many_redirects`.
pub const MAX_REDIRECTS: usize = 5;

/// A request for [`Broker::request`].
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub method: Method,
    /// Absolute `http://` or `https://` URL; a `#fragment` is ignored.
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The final (non-redirect) response, with the run's secrets redacted.
#[derive(Debug, Clone)]
pub struct OutboundResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// At most `max_body_bytes`.
    pub body: Bytes,
    /// True when the body was cut at `max_body_bytes`.
    pub truncated: bool,
    /// The URL that produced this response (differs from the request's after redirects).
    pub url: String,
}

/// A parsed absolute URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    scheme: Scheme,
    host: String,
    port: u16,
    path_and_query: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, DenyReason> {
        let url = url.split('#').next().unwrap_or(url).trim();
        if let Some((scheme, _)) = url.split_once(':')
            && is_scheme_token(scheme)
            && Scheme::parse(scheme).is_none()
        {
            return Err(DenyReason::SchemeNotAllowed);
        }
        let uri: Uri = url.parse().map_err(|_| DenyReason::BadRequest)?;
        let scheme = match uri.scheme_str() {
            Some(s) => Scheme::parse(s).ok_or(DenyReason::SchemeNotAllowed)?,
            None => return Err(DenyReason::BadRequest),
        };
        let host = uri
            .host()
            .and_then(normalize_host)
            .ok_or(DenyReason::BadRequest)?;
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .filter(|p| p.starts_with('/'))
            .unwrap_or_else(|| {
                format!(
                    "/{}",
                    uri.query().map(|q| format!("?{q}")).unwrap_or_default()
                )
            });
        Ok(Self {
            scheme,
            host,
            port,
            path_and_query,
        })
    }

    fn origin(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.scheme.default_port() {
            format!("{}://{host}", self.scheme.as_str())
        } else {
            format!("{}://{host}:{}", self.scheme.as_str(), self.port)
        }
    }

    fn url(&self) -> String {
        format!("{}{}", self.origin(), self.path_and_query)
    }

    fn same_origin(&self, other: &Target) -> bool {
        self.scheme == other.scheme && self.host == other.host && self.port == other.port
    }

    /// Resolves a `Location` header against this URL (RFC 3986 §5.2, enough of it).
    fn join(&self, location: &str) -> Result<Target, DenyReason> {
        let loc = location.trim();
        let has_scheme = loc.split_once(':').is_some_and(|(s, _)| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        });
        if has_scheme {
            return Target::parse(loc);
        }
        if let Some(rest) = loc.strip_prefix("//") {
            return Target::parse(&format!("{}://{rest}", self.scheme.as_str()));
        }
        let loc = loc.split('#').next().unwrap_or(loc);
        let current_path = self.path_and_query.split('?').next().unwrap_or("/");
        let merged = if loc.starts_with('/') {
            loc.to_owned()
        } else if let Some(q) = loc.strip_prefix('?') {
            format!("{current_path}?{q}")
        } else if loc.is_empty() {
            self.path_and_query.clone()
        } else {
            let dir = current_path
                .rfind('/')
                .map(|i| &current_path[..=i])
                .unwrap_or("/");
            format!("{dir}{loc}")
        };
        let (path, query) = match merged.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (merged, None),
        };
        let path = remove_dot_segments(&path);
        let pq = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        Target::parse(&format!("{}{pq}", self.origin()))
    }
}

/// RFC 3986 scheme syntax: a letter, then letters, digits, `+`, `-`, `.`.
fn is_scheme_token(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
}

/// RFC 3986 §5.2.4 for relative references. Absolute `Location`s are not normalised: a `..` in
/// them is refused by the path check, as for any other request.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

impl Broker {
    /// Performs one HTTP request for the run (no proxy hop), following up to [`MAX_REDIRECTS`]
    /// redirects; every hop is checked against the rules and the address policy, and recorded.
    /// A denied hop ends the request with [`EgressError::Denied`]. Credentials are injected per
    /// hop, only on hosts they are bound to; `authorization` and `cookie` headers the caller set
    /// are dropped when a redirect leaves the origin. The response body is cut at
    /// `max_body_bytes` and the run's secrets are redacted from headers and body.
    pub async fn request(
        &self,
        ctx: &RunEgress,
        req: OutboundRequest,
    ) -> Result<OutboundResponse, EgressError> {
        match tokio::time::timeout(self.cfg.request_timeout, self.request_inner(ctx, req)).await {
            Ok(r) => r,
            Err(_) => Err(EgressError::Upstream {
                reason: UpstreamFailure::Timeout,
                detail: "request timed out".into(),
            }),
        }
    }

    async fn request_inner(
        &self,
        ctx: &RunEgress,
        req: OutboundRequest,
    ) -> Result<OutboundResponse, EgressError> {
        let mut target = match Target::parse(&req.url) {
            Ok(t) => t,
            Err(reason) => {
                ctx.recorder().push(denied_record(
                    req.method.as_str(),
                    "",
                    "",
                    0,
                    "",
                    reason.as_str(),
                ));
                return Err(EgressError::Denied { reason });
            }
        };
        let mut method = req.method;
        let mut headers = req.headers;
        let mut body = req.body;
        // Framing is hyper's job, computed from the body actually sent.
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
        if !headers.contains_key(header::USER_AGENT) {
            // Many APIs refuse requests without one.
            headers.insert(
                header::USER_AGENT,
                HeaderValue::from_static("paddock-egress"),
            );
        }
        for hop in 0..=MAX_REDIRECTS {
            let sent = Arc::new(AtomicU64::new(0));
            let out = Outbound {
                method: method.clone(),
                scheme: target.scheme,
                host: target.host.clone(),
                port: target.port,
                path_and_query: target.path_and_query.clone(),
                headers: headers.clone(),
                body: counting_full(body.clone(), Arc::clone(&sent)),
                sent,
            };
            let ex = self.exchange(ctx, out, None, None).await?;
            let status = ex.response.status();
            let location = ex
                .response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let (true, Some(location)) = (is_redirect(status), location) {
                // The redirect's body is not read; dropping the exchange records the hop.
                drop(ex);
                if hop == MAX_REDIRECTS {
                    return Err(EgressError::Denied {
                        reason: DenyReason::TooManyRedirects,
                    });
                }
                let next = match target.join(&location) {
                    // The credentials injected into this hop's query may come back in the
                    // `Location`; they are not the sandbox's to carry on.
                    Ok(mut t) => {
                        let inj = Injection::for_target(
                            ctx.credentials(),
                            target.scheme.as_str(),
                            &target.host,
                            target.port,
                        );
                        t.path_and_query = inj.strip_own_params(&t.path_and_query);
                        t
                    }
                    Err(reason) => {
                        ctx.recorder().push(denied_record(
                            method.as_str(),
                            "",
                            "",
                            0,
                            "",
                            reason.as_str(),
                        ));
                        return Err(EgressError::Denied { reason });
                    }
                };
                let becomes_get = status == StatusCode::SEE_OTHER && method != Method::HEAD
                    || (status == StatusCode::MOVED_PERMANENTLY || status == StatusCode::FOUND)
                        && method == Method::POST;
                if becomes_get {
                    method = Method::GET;
                    body = Bytes::new();
                    for h in [
                        header::CONTENT_TYPE,
                        header::CONTENT_LENGTH,
                        header::CONTENT_ENCODING,
                    ] {
                        headers.remove(h);
                    }
                }
                if !next.same_origin(&target) {
                    for h in [
                        header::AUTHORIZATION,
                        header::COOKIE,
                        header::PROXY_AUTHORIZATION,
                    ] {
                        headers.remove(h);
                    }
                }
                target = next;
                continue;
            }

            let url = target.url();
            let (mut parts, incoming) = ex.response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let redactor = ctx.redactor();
            if let Some(r) = redactor {
                r.redact_headers(&mut parts.headers);
            }
            let mut rb = ResponseBody::new(incoming, redactor.map(|r| r.stream()), ex.guard);
            let (body, truncated) = read_capped(&mut rb, self.cfg.max_body_bytes).await?;
            drop(rb);
            return Ok(OutboundResponse {
                status: parts.status,
                headers: parts.headers,
                body,
                truncated,
                url,
            });
        }
        Err(EgressError::Denied {
            reason: DenyReason::TooManyRedirects,
        })
    }
}

fn is_redirect(s: StatusCode) -> bool {
    matches!(s.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Reads at most `cap` bytes. A cut body never includes bytes the redactor still holds back.
async fn read_capped(body: &mut ResponseBody, cap: usize) -> Result<(Bytes, bool), EgressError> {
    let mut buf = BytesMut::new();
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        match frame {
            None => return Ok((buf.freeze(), false)),
            Some(Err(e)) => {
                return Err(EgressError::Upstream {
                    reason: UpstreamFailure::ProtocolError,
                    detail: e.to_string(),
                });
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = cap.saturating_sub(buf.len());
                    if data.len() > room {
                        buf.extend_from_slice(&data[..room]);
                        return Ok((buf.freeze(), true));
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(url: &str) -> Target {
        Target::parse(url).unwrap()
    }

    #[test]
    fn parses_urls() {
        let a = t("https://API.example.com/v1/x?q=1#frag");
        assert_eq!(a.host, "api.example.com");
        assert_eq!(a.port, 443);
        assert_eq!(a.path_and_query, "/v1/x?q=1");
        assert_eq!(t("http://h:8080").path_and_query, "/");
        assert_eq!(t("http://[::1]:8080/").host, "::1");
        assert_eq!(
            Target::parse("ftp://h/").unwrap_err(),
            DenyReason::SchemeNotAllowed
        );
        assert_eq!(
            Target::parse("/relative").unwrap_err(),
            DenyReason::BadRequest
        );
        assert_eq!(
            Target::parse("not a url").unwrap_err(),
            DenyReason::BadRequest
        );
    }

    #[test]
    fn joins_locations() {
        let base = t("https://a.com/v1/items/list?x=1");
        assert_eq!(
            base.join("https://b.com/z").unwrap().url(),
            "https://b.com/z"
        );
        assert_eq!(base.join("//c.com/p").unwrap().url(), "https://c.com/p");
        assert_eq!(base.join("/root").unwrap().url(), "https://a.com/root");
        assert_eq!(
            base.join("other").unwrap().url(),
            "https://a.com/v1/items/other"
        );
        assert_eq!(
            base.join("../up?y=2").unwrap().url(),
            "https://a.com/v1/up?y=2"
        );
        assert_eq!(
            base.join("?y=2").unwrap().url(),
            "https://a.com/v1/items/list?y=2"
        );
        assert_eq!(
            base.join("ftp://x/").unwrap_err(),
            DenyReason::SchemeNotAllowed
        );
        let with_port = t("http://localhost:8080/a/b");
        assert_eq!(
            with_port.join("c").unwrap().url(),
            "http://localhost:8080/a/c"
        );
    }

    #[test]
    fn dot_segments() {
        assert_eq!(remove_dot_segments("/a/b/../c"), "/a/c");
        assert_eq!(remove_dot_segments("/a/./b/."), "/a/b/");
        assert_eq!(remove_dot_segments("/../../x"), "/x");
    }
}
