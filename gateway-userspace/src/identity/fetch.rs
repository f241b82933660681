//! One HTTP/1.1 exchange with an identity endpoint (OIDC discovery, a JWKS, an OAuth 2 token
//! endpoint): a fresh connection per call (these calls are rare: a pool would only hold idle
//! sockets), TLS verified against a configured CA bundle when the URL is `https`, a deadline on
//! the whole exchange and a limit on the body. The transport rules for URLs are
//! [`crate::identity::oidc::check_url`]'s.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Why an exchange failed. Messages name the URL, never a request's credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Connection, TLS or HTTP failure.
    #[error("fetching {url}: {reason}")]
    Failed { url: String, reason: String },
    /// `https://` without a CA bundle.
    #[error("{0:?} is https but no CA bundle is configured (there are no built-in roots)")]
    NoCaBundle(String),
    /// More than the body limit.
    #[error("{url}: response larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    /// The exchange did not finish within the deadline.
    #[error("{0}: timed out")]
    Timeout(String),
}

/// A response: status, headers and the whole body.
pub struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends `request` (absolute URI) and reads the response within `timeout`, the body up to
/// `max_body` bytes. `Host` and `User-Agent` are set here.
pub async fn exchange(
    tls: Option<&TlsConnector>,
    request: Request<Full<Bytes>>,
    timeout: Duration,
    max_body: usize,
) -> Result<Fetched, FetchError> {
    let url = request.uri().to_string();
    match tokio::time::timeout(timeout, exchange_inner(tls, request, max_body)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout(url)),
    }
}

async fn exchange_inner(
    tls: Option<&TlsConnector>,
    request: Request<Full<Bytes>>,
    max_body: usize,
) -> Result<Fetched, FetchError> {
    let uri: Uri = request.uri().clone();
    let url = uri.to_string();
    let failed = |reason: String| FetchError::Failed {
        url: url.clone(),
        reason,
    };
    let host = uri.host().unwrap_or_default().to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let (mut parts, body) = request.into_parts();
    // The origin-form target on the wire; the authority goes into Host.
    parts.uri = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|e| failed(format!("request: {e}")))?;
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    parts.headers.insert(
        header::HOST,
        authority
            .parse()
            .map_err(|_| failed("request: bad host".into()))?,
    );
    parts.headers.insert(
        header::USER_AGENT,
        header::HeaderValue::from_static("portcullis"),
    );
    let request = Request::from_parts(parts, body);
    let tcp = TcpStream::connect((bare_host.as_str(), port))
        .await
        .map_err(|e| failed(format!("connect: {e}")))?;
    let response = if https {
        let Some(tls) = tls else {
            return Err(FetchError::NoCaBundle(url));
        };
        let name =
            ServerName::try_from(bare_host).map_err(|e| failed(format!("server name: {e}")))?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| failed(format!("TLS: {e}")))?;
        send(TokioIo::new(stream), request).await
    } else {
        send(TokioIo::new(tcp), request).await
    }
    .map_err(|e| failed(format!("HTTP: {e}")))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                FetchError::TooLarge {
                    url: url.clone(),
                    limit: max_body,
                }
            } else {
                failed(format!("body: {e}"))
            }
        })?
        .to_bytes();
    Ok(Fetched {
        status,
        headers,
        body,
    })
}

async fn send<T>(
    io: TokioIo<T>,
    request: Request<Full<Bytes>>,
) -> hyper::Result<http::Response<hyper::body::Incoming>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    // The connection task ends with the response body (or an error); nothing to join.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(request).await
}
