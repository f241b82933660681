//! The request path, one phase after another (docs/architecture.md draws it):
//! request id -> client IP -> backstop for header-derived addresses -> plain-HTTP redirect ->
//! route -> body limits -> upstream (with retries) -> response hygiene -> access log.
//! Every refusal goes through `respond::problem`; every request ends in one access-log line.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use tokio::time::Sleep;
use tracing::info;

use super::backstop::{Backstop, Check};
use super::client_ip::{self, ClientIp};
use super::headers::{self, Forwarding};
use super::respond::{self, Body, BoxError, Denial};
use super::route::{self, RouteMatch};
use super::upstream::{Connector, InFlight, Outcome, Pool, SendError};
use crate::config::{
    Hsts, ListenerConfig, ListenerKind, PlainMode, ProxyConfig, RouteConfig, TrustedProxies,
};
use crate::metrics::Metrics;
use crate::validation::Failure;

/// One route's pool and its client (with the route's connect timeout); index for index with
/// `ProxyState::route_configs`.
pub struct RouteRuntime {
    pub pool: Arc<Pool>,
    client: Client<Connector, Body>,
}

/// One generation of the proxy's configuration, swapped whole on reload. Requests in flight
/// keep the generation they started with.
pub struct ProxyState {
    pub trusted: TrustedProxies,
    /// Routes in match order.
    pub route_configs: Vec<RouteConfig>,
    pub routes: Vec<RouteRuntime>,
    pub pools: Vec<Arc<Pool>>,
    pub listeners: Vec<ListenerConfig>,
    /// `Strict-Transport-Security` per TLS listener, built once per generation.
    hsts: std::collections::HashMap<String, HeaderValue>,
    pub backstop: Backstop,
    /// Token providers, index for index with the config's `token_providers`.
    pub providers: Vec<Arc<super::identity::TokenProvider>>,
    pub api_keys: Option<crate::config::ApiKeysConfig>,
    pub drain_timeout: Duration,
    /// Dropping the state stops its health-check tasks.
    health_stop: tokio::sync::watch::Sender<bool>,
    /// Rate limits and quotas of this generation, adopted from the process's `limits::Hub`
    /// (which keeps the counters of unchanged limits across generations) when the generation
    /// is built, so requests of an older generation never touch the newer one's state.
    limits: Option<Arc<crate::limits::Active>>,
}

impl Drop for ProxyState {
    fn drop(&mut self) {
        let _ = self.health_stop.send(true);
    }
}

impl ProxyState {
    /// Builds a generation and starts its health checks (needs a Tokio runtime).
    pub fn new(
        cfg: &ProxyConfig,
        backstop: Backstop,
        providers: Vec<Arc<super::identity::TokenProvider>>,
        limits: Option<Arc<crate::limits::Active>>,
    ) -> Arc<Self> {
        let pools: Vec<Arc<Pool>> = cfg.pools.iter().map(|p| Arc::new(Pool::new(p))).collect();
        let (health_stop, stop_rx) = tokio::sync::watch::channel(false);
        for p in &pools {
            p.spawn_health_checks(stop_rx.clone());
        }
        let routes = cfg
            .routes
            .iter()
            .map(|r| {
                let pool = pools[r.pool].clone();
                RouteRuntime {
                    client: pool.client(r.timeouts.connect),
                    pool,
                }
            })
            .collect();
        Arc::new(Self {
            trusted: cfg.trusted.clone(),
            route_configs: cfg.routes.clone(),
            routes,
            pools,
            listeners: cfg.listeners.clone(),
            hsts: cfg
                .listeners
                .iter()
                .filter_map(|l| Some((l.name.clone(), hsts_header(l)?)))
                .collect(),
            backstop,
            providers,
            api_keys: cfg.api_keys.clone(),
            drain_timeout: cfg.drain_timeout,
            health_stop,
            limits,
        })
    }

    pub fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

/// What the connection phase learned, shared by every request on the connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub listener: String,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The source a trusted load balancer announced with the PROXY protocol.
    pub proxy_source: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The verified client certificate's facts (mTLS), when the client sent one.
    pub client_cert: Option<Arc<crate::identity::mtls::CertFacts>>,
}

impl ConnInfo {
    /// The hop that delivered the request to us: PROXY source, else the peer.
    pub fn hop(&self) -> IpAddr {
        self.proxy_source.unwrap_or(self.peer).ip().to_canonical()
    }
}

/// A request's record, written as one access-log line when the exchange ends.
struct Exchange {
    started: Instant,
    request_id: String,
    client: IpAddr,
    peer: IpAddr,
    method: Method,
    host: Option<String>,
    path: String,
    listener: String,
    route: Option<String>,
    upstream: Option<String>,
    upstream_started: Option<Instant>,
    upstream_headers_ms: Option<u64>,
    /// The API key's id (never the key).
    key_id: Option<Arc<str>>,
    /// The route's CORS policy and the `Access-Control-Allow-Origin` this request gets.
    cors: Option<(Arc<super::cors::CorsPolicy>, Option<HeaderValue>)>,
    /// What the rate limits and quotas admitted (budget headers, bytes still to count).
    limits: Option<crate::limits::Admitted>,
    phase: &'static str,
    decision: &'static str,
    rule: String,
    status: u16,
    metrics: Arc<Metrics>,
}

impl Exchange {
    fn finish(self, bytes_out: u64) {
        if let Some(admitted) = &self.limits {
            admitted.charge_bytes(bytes_out);
        }
        let elapsed = self.started.elapsed();
        let route = self.route.as_deref().unwrap_or("-");
        self.metrics
            .request(route, self.status, elapsed.as_secs_f64());
        self.metrics.decision(self.phase, &self.rule, self.decision);
        // The path is logged without its query: query strings can carry keys and tokens.
        info!(
            target: "portcullis::access",
            request_id = %self.request_id,
            client_ip = %self.client,
            peer_ip = %self.peer,
            listener = %self.listener,
            method = %self.method,
            host = self.host.as_deref().unwrap_or("-"),
            path = %self.path,
            route,
            status = self.status,
            // Microsecond resolution is plenty and keeps the line free of float noise.
            duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
            upstream = self.upstream.as_deref().unwrap_or("-"),
            upstream_headers_ms = self.upstream_headers_ms,
            key_id = self.key_id.as_deref(),
            phase = self.phase,
            decision = self.decision,
            rule = %self.rule,
            bytes_out,
            "request"
        );
    }
}

/// Handles one request on a connection of `listener`.
pub async fn handle(
    state: Arc<ProxyState>,
    conn: Arc<ConnInfo>,
    metrics: Arc<Metrics>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let hop = conn.hop();
    let hop_trusted = state.trusted.proxies.iter().any(|p| p.contains(hop));
    let request_id = headers::request_id(req.headers(), hop_trusted);
    let client: ClientIp = client_ip::resolve(
        conn.peer.ip().to_canonical(),
        conn.proxy_source.map(|s| s.ip().to_canonical()),
        req.headers(),
        &state.trusted,
    );
    let host = route::request_host(req.uri(), req.headers());
    let mut ex = Exchange {
        started: Instant::now(),
        request_id: request_id.clone(),
        client: client.addr,
        peer: conn.peer.ip().to_canonical(),
        method: req.method().clone(),
        host: host.clone(),
        path: req.uri().path().to_string(),
        listener: conn.listener.clone(),
        route: None,
        upstream: None,
        upstream_started: None,
        upstream_headers_ms: None,
        key_id: None,
        cors: None,
        limits: None,
        phase: "route",
        decision: "forward",
        rule: "-".into(),
        status: 0,
        metrics,
    };
    let listener = state.listener(&conn.listener);
    let hsts = state.hsts.get(&conn.listener).cloned();
    let result = phases(
        &state,
        &conn,
        listener,
        &client,
        hop,
        hop_trusted,
        host.as_deref(),
        &request_id,
        req,
        &mut ex,
    )
    .await;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(denial) => {
            // Abuse bans count refusals by their code (docs/abuse-bans.md).
            if let Some(abuse) = state.backstop.abuse() {
                abuse.observe(&client, denial.code());
            }
            ex.decision = "deny";
            if ex.rule == "-" {
                ex.rule = denial.code().into();
            }
            respond::problem(&denial, &request_id)
        }
    };
    if let Some(v) = hsts {
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, v);
    }
    if let Some((policy, allow_origin)) = ex.cors.take() {
        policy.apply(allow_origin, resp.headers_mut());
    }
    if let Some(admitted) = &ex.limits {
        admitted.apply_headers(resp.headers_mut());
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(headers::X_REQUEST_ID.clone(), v);
    }
    ex.status = resp.status().as_u16();
    Ok(attach_log(resp, ex))
}

fn hsts_header(l: &ListenerConfig) -> Option<HeaderValue> {
    let ListenerKind::Https(tls) = &l.kind else {
        return None;
    };
    let Hsts {
        max_age,
        include_subdomains,
        preload,
    } = tls.hsts.as_ref()?;
    let mut v = format!("max-age={}", max_age.as_secs());
    if *include_subdomains {
        v.push_str("; includeSubDomains");
    }
    if *preload {
        v.push_str("; preload");
    }
    HeaderValue::from_str(&v).ok()
}

#[allow(clippy::too_many_arguments)]
async fn phases(
    state: &ProxyState,
    conn: &ConnInfo,
    listener: Option<&ListenerConfig>,
    client: &ClientIp,
    hop: IpAddr,
    hop_trusted: bool,
    host: Option<&str>,
    request_id: &str,
    mut req: Request<Incoming>,
    ex: &mut Exchange,
) -> Result<Response<Body>, Denial> {
    // Userspace (abuse) bans on every request: keep-alive connections outlive a ban, and an
    // address learned from headers is only known here.
    if let Some(rule) = state.backstop.banned(client.addr) {
        ex.phase = "client_ip";
        ex.rule = rule.clone();
        return Err(Denial::Forbidden { rule });
    }
    // Backstop for an address learned from headers: the connection phase checked the hop.
    if client.addr != hop {
        ex.phase = "client_ip";
        match state.backstop.check(client.addr) {
            Check::Refuse(rule) => {
                ex.rule = rule.clone();
                return Err(Denial::Forbidden { rule });
            }
            Check::Report(rule) => ex.metrics.decision("client_ip", &rule, "report"),
            Check::Pass => {}
        }
    }

    // Plain HTTP listeners redirect unless told to serve.
    if let Some(ListenerConfig {
        kind: ListenerKind::Http(PlainMode::RedirectToHttps { port }),
        ..
    }) = listener
    {
        ex.phase = "listener";
        ex.decision = "redirect";
        ex.rule = "https_redirect".into();
        let Some(host) = host else {
            return Err(Denial::BadRequest("no host to redirect to"));
        };
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        return Ok(respond::redirect_to_https(host, *port, pq));
    }

    ex.phase = "route";
    let method = req.method().clone();
    // A CORS preflight is answered by the gateway for the route of the method it asks about,
    // before identity and limits: browsers send no credentials on a preflight.
    if let Some(preflight) = super::cors::preflight(&req)
        && let RouteMatch::Found(_, cfg) = route::find(
            &state.route_configs,
            host,
            req.uri().path(),
            &preflight.method,
        )
        && let Some(cors) = &cfg.cors
    {
        ex.route = Some(cfg.name.clone());
        ex.phase = "cors";
        ex.decision = "answer";
        let (resp, rule) = cors.answer_preflight(&preflight);
        ex.rule = rule.into();
        return Ok(resp);
    }
    let (route_cfg, route) =
        match route::find(&state.route_configs, host, req.uri().path(), &method) {
            RouteMatch::Found(i, cfg) => (cfg, &state.routes[i]),
            RouteMatch::MethodNotAllowed(m) => return Err(Denial::MethodNotAllowed(m)),
            RouteMatch::NotFound => return Err(Denial::NotFound),
        };
    ex.route = Some(route_cfg.name.clone());
    // CORS headers for the response, whatever it turns out to be (refusals included).
    ex.cors = route_cfg
        .cors
        .as_ref()
        .map(|c| (c.clone(), c.for_request(req.headers())));

    ex.phase = "limits";
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > route_cfg.max_body_bytes) {
        return Err(Denial::PayloadTooLarge {
            limit: route_cfg.max_body_bytes,
        });
    }
    // A body the validation would have to buffer beyond its limit is refused before reading.
    if let Some(v) = &route_cfg.validation
        && declared.is_some_and(|n| n > v.max_body_bytes)
    {
        ex.phase = "validation";
        return Err(Denial::PayloadTooLarge {
            limit: v.max_body_bytes,
        });
    }

    // Identity and authorization: client certificate, API key, then token, for routes that
    // require them (cheapest first; a route may require any combination).
    let client_cert = conn.client_cert.as_deref();
    if let Some(requirement) = &route_cfg.auth.client_cert
        && let Err(refusal) = super::identity::check_client_cert(requirement, client_cert)
    {
        ex.phase = refusal.phase;
        ex.rule = refusal.rule;
        return Err(refusal.denial);
    }
    if route_cfg.auth.api_key {
        match super::identity::check_api_key(
            state.api_keys.as_ref(),
            route_cfg,
            req.headers(),
            req.uri().query(),
        ) {
            Ok(id) => ex.key_id = Some(id),
            Err(refusal) => {
                ex.phase = refusal.phase;
                ex.rule = refusal.rule;
                return Err(refusal.denial);
            }
        }
    }
    let mut claims = None;
    if let Some(requirement) = &route_cfg.auth.token {
        match super::identity::authenticate(
            requirement,
            &state.providers,
            &method,
            req.headers(),
            req.uri().query(),
        )
        .await
        {
            Ok(c) => claims = Some(c),
            Err(refusal) => {
                ex.phase = refusal.phase;
                ex.rule = refusal.rule;
                return Err(refusal.denial);
            }
        }
    }
    if let (Some(c), Some(requirement)) = (&claims, &route_cfg.auth.client_cert)
        && requirement.bound_token
        && let Err(refusal) = super::identity::check_certificate_binding(c, client_cert)
    {
        ex.phase = refusal.phase;
        ex.rule = refusal.rule;
        return Err(refusal.denial);
    }

    // Rate limits and quotas: after identity (they count by key id and claims).
    if let Some(route_limits) = &route_cfg.auth.limits {
        ex.phase = "limits";
        if let Some(active) = &state.limits {
            let facts = crate::limits::keys::Facts {
                route: &route_cfg.name,
                product: route_cfg.product.as_deref(),
                key_id: ex.key_id.as_deref(),
                claims: claims.as_deref(),
                client: client.addr,
                headers: req.headers(),
            };
            // Local first: a local refusal never costs a round trip to the cluster store.
            let checked = active.check(route_limits, &facts, declared.unwrap_or(0));
            let checked = match checked {
                Ok(admitted) => active.confirm(admitted).await,
                Err(refused) => Err(refused),
            };
            match checked {
                Ok(admitted) => ex.limits = Some(admitted),
                Err(refused) => {
                    ex.rule = refused.rule;
                    return Err(refused.denial);
                }
            }
        }
    }

    // Request validation: after identity and limits, so only admitted clients make the
    // gateway buffer a body. A checked body is forwarded from the buffer.
    let mut validated_body: Option<Bytes> = None;
    if let Some(v) = &route_cfg.validation {
        ex.phase = "validation";
        validated_body = validate(v, &mut req, ex).await?;
    }

    ex.phase = "upstream";
    let upgrade = is_websocket(&req);
    if upgrade && !route_cfg.websocket {
        return Err(Denial::BadRequest(
            "WebSocket upgrades are not enabled on this route",
        ));
    }
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    if let Some(requirement) = &route_cfg.auth.token {
        super::identity::forward_identity(requirement, &mut parts.headers, claims.as_deref());
    }
    super::identity::forward_client_cert(
        route_cfg.auth.client_cert.as_ref(),
        client_cert,
        &mut parts.headers,
    );
    // The backend sees the gateway's own credentials, never the client's.
    if let Some(auth) = route.pool.auth() {
        match auth.header().await {
            Ok(value) => {
                parts.headers.insert(header::AUTHORIZATION, value);
            }
            Err(e) => {
                tracing::warn!(pool = %route.pool.name, error = %e, "no credentials for the backend");
                ex.rule = "backend_auth_unavailable".into();
                return Err(Denial::BackendAuthUnavailable);
            }
        }
    }
    // The key never travels on: its header and query parameter are removed.
    let forwarded_pq = match (&state.api_keys, route_cfg.auth.api_key) {
        (Some(keys), true) => {
            let pq = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            Some(super::identity::strip_api_key(
                keys,
                &mut parts.headers,
                &pq,
            ))
        }
        _ => None,
    };
    if !parts.headers.contains_key(header::HOST)
        && let Some(v) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        // h2 clients send :authority; an HTTP/1.1 backend needs Host.
        parts.headers.insert(header::HOST, v);
    }
    headers::set_forwarding(
        &mut parts.headers,
        &Forwarding {
            client: client.addr,
            peer: hop,
            peer_trusted: hop_trusted,
            proto: if conn.tls { "https" } else { "http" },
            host,
            request_id,
        },
    );

    let idempotent = matches!(
        method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    // Only a request without a body can be sent again: the body was streamed, not kept.
    let bodyless = validated_body
        .as_ref()
        .map_or_else(|| body.is_end_stream(), Bytes::is_empty);
    let attempts = if idempotent && bodyless {
        1 + route_cfg.retries
    } else {
        1
    };
    let limited: Body = match validated_body {
        Some(bytes) => respond::full(bytes),
        None => Limited::new(body, route_cfg.max_body_bytes as usize).boxed(),
    };
    let mut first_body = Some(limited);
    let mut previous = None;
    let deadline = Instant::now() + route_cfg.timeouts.total;
    for attempt in 0..attempts {
        let Some(ep) = route
            .pool
            .pick(previous.as_ref())
            .or_else(|| route.pool.pick(None))
        else {
            ex.rule = format!("pool:{}", route.pool.name);
            return Err(Denial::NoHealthyUpstream);
        };
        ex.upstream = Some(ep.endpoint.authority.clone());
        let path_and_query = forwarded_pq
            .as_deref()
            .unwrap_or_else(|| parts.uri.path_and_query().map_or("/", |p| p.as_str()));
        let uri = format!(
            "{}://{}{}",
            route.pool.scheme(),
            ep.endpoint.addr,
            path_and_query
        );
        let version = if route.pool.is_h2() {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let mut builder = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .version(version);
        if let Some(h) = builder.headers_mut() {
            *h = parts.headers.clone();
        }
        let body = first_body.take().unwrap_or_else(respond::empty);
        let Ok(upstream_req) = builder.body(body) else {
            return Err(Denial::BadRequest("the request cannot be forwarded"));
        };
        let in_flight = route.pool.begin(&ep);
        ex.upstream_started = Some(Instant::now());
        let headers_timeout = route_cfg
            .timeouts
            .response_headers
            .min(deadline.saturating_duration_since(Instant::now()));
        let sent = tokio::time::timeout(
            headers_timeout,
            super::upstream::send(&route.client, upstream_req),
        )
        .await;
        ex.upstream_headers_ms = ex.upstream_started.map(|t| t.elapsed().as_millis() as u64);
        match sent {
            Err(_) => {
                route.pool.report(&ep, Outcome::ServerError);
                return Err(Denial::GatewayTimeout);
            }
            Ok(Err(SendError::Connect(_))) => {
                route.pool.report(&ep, Outcome::ConnectError);
                previous = Some(ep);
                if attempt + 1 < attempts {
                    ex.metrics
                        .decision("upstream", "retry_connect_error", "retry");
                    continue;
                }
                return Err(Denial::BadGateway);
            }
            Ok(Err(SendError::Other(e))) => {
                if is_length_limit(e.as_ref()) {
                    return Err(Denial::PayloadTooLarge {
                        limit: route_cfg.max_body_bytes,
                    });
                }
                if is_client_body_error(e.as_ref()) {
                    // The client's body was malformed or cut short: its fault, not the backend's.
                    return Err(Denial::BadRequest(
                        "the request body is malformed or incomplete",
                    ));
                }
                route.pool.report(&ep, Outcome::ServerError);
                return Err(Denial::BadGateway);
            }
            Ok(Ok(resp)) => {
                let outcome = if resp.status().is_server_error() {
                    Outcome::ServerError
                } else {
                    Outcome::Success
                };
                route.pool.report(&ep, outcome);
                ex.phase = "response";
                // Status and leaky headers are judged before the body is read: a refused or
                // masked body is never streamed to the client.
                let policy = route_cfg
                    .response
                    .as_deref()
                    .unwrap_or(&super::response_policy::DEFAULT);
                let metrics = &ex.metrics;
                match policy.judge(resp.status(), |rule| {
                    metrics.decision("response", rule, "report");
                }) {
                    super::response_policy::Verdict::Pass => {}
                    super::response_policy::Verdict::StatusNotAllowed => {
                        ex.rule = format!("response:status_not_allowed:{}", resp.status().as_u16());
                        return Err(Denial::ResponseNotAllowed);
                    }
                    super::response_policy::Verdict::MaskServerError(status) => {
                        ex.rule = format!("response:masked:{}", status.as_u16());
                        return Err(Denial::UpstreamError(status));
                    }
                }
                let mut resp = match client_upgrade {
                    Some(client_upgrade) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                        tunnel(resp, client_upgrade, in_flight)
                    }
                    _ => {
                        let resp = finish_response(resp, in_flight, deadline);
                        let path = parts.uri.path();
                        let mut report = |rule: &'static str, failures: &[Failure]| {
                            record_validation_failure(
                                ex,
                                "response",
                                policy.action,
                                rule,
                                failures,
                            );
                        };
                        policy
                            .validate(&parts.method, path, resp, deadline, &mut report)
                            .await?
                    }
                };
                policy.strip(resp.headers_mut());
                return Ok(resp);
            }
        }
    }
    Err(Denial::BadGateway)
}

/// Checks the request against the route's validation (docs/validation.md); returns the
/// buffered body when it was read. In detect mode failures are logged and counted, not refused.
async fn validate(
    v: &crate::validation::RouteValidation,
    req: &mut Request<Incoming>,
    ex: &mut Exchange,
) -> Result<Option<Bytes>, Denial> {
    use crate::validation::{Head, UnknownOperations};
    let has_body = !req.body().is_end_stream();
    let head = v.check_head(
        req.method(),
        req.uri().path(),
        req.uri().query(),
        req.headers(),
        has_body,
    );
    let (mut failures, body_rule) = match head {
        Head::Unknown if v.unknown_operations == UnknownOperations::Pass => return Ok(None),
        Head::Unknown => {
            let rule = "validation:unknown_operation";
            return validation_verdict(v, ex, rule, Denial::NotFound, &[]).map(|()| None);
        }
        Head::UnsupportedType => {
            let rule = "validation:content_type";
            let denial = Denial::UnsupportedMediaType;
            return validation_verdict(v, ex, rule, denial, &[]).map(|()| None);
        }
        Head::Checked { failures, body } => (failures, body),
    };
    let mut buffered = None;
    if has_body {
        let limit = usize::try_from(v.max_body_bytes).unwrap_or(usize::MAX);
        let bytes = match Limited::new(req.body_mut(), limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if is_length_limit(e.as_ref()) => {
                return Err(Denial::PayloadTooLarge {
                    limit: v.max_body_bytes,
                });
            }
            Err(_) => {
                return Err(Denial::BadRequest(
                    "the request body is malformed or incomplete",
                ));
            }
        };
        failures.extend(body_rule.check(&bytes));
        buffered = Some(bytes);
    }
    if !failures.is_empty() {
        let rule = "validation:failed";
        let denial = Denial::ValidationFailed(failures.clone());
        validation_verdict(v, ex, rule, denial, &failures)?;
    }
    Ok(buffered)
}

/// Logs and counts a validation failure of the request or the response (`direction`):
/// locations and reasons only, because refused request values may be secrets; a response's
/// failures describe the backend's answer, so they go to the log, never to the client.
fn record_validation_failure(
    ex: &mut Exchange,
    direction: &'static str,
    action: crate::validation::Action,
    rule: &str,
    failures: &[Failure],
) {
    let route = ex.route.clone().unwrap_or_default();
    ex.metrics
        .validation_failures
        .get_or_create(&crate::metrics::ValidationLabels {
            route: route.clone(),
            direction: direction.into(),
            action: action.as_str().into(),
        })
        .inc();
    let failures: Vec<String> = failures
        .iter()
        .map(|f| format!("{}: {}", f.location, f.reason))
        .collect();
    tracing::warn!(
        target: "portcullis::validation",
        request_id = %ex.request_id,
        route,
        direction,
        action = action.as_str(),
        rule,
        upstream = ex.upstream.as_deref().unwrap_or("-"),
        ?failures,
        "{direction} validation failed"
    );
    ex.rule = rule.into();
    if action == crate::validation::Action::Detect {
        let phase = if direction == "request" {
            "validation"
        } else {
            "response"
        };
        ex.metrics.decision(phase, rule, "detect");
    }
}

/// Logs and counts a validation failure; refuses in prevent mode, passes in detect mode.
fn validation_verdict(
    v: &crate::validation::RouteValidation,
    ex: &mut Exchange,
    rule: &str,
    denial: Denial,
    failures: &[Failure],
) -> Result<(), Denial> {
    record_validation_failure(ex, "request", v.action, rule, failures);
    match v.action {
        crate::validation::Action::Prevent => Err(denial),
        crate::validation::Action::Detect => Ok(()),
    }
}

fn is_websocket<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Whether reading the client's request body failed (bad chunked framing, early end).
fn is_client_body_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        // The upstream client reports a failing request body as a "user body" error: the body
        // is the client's stream (the length limit was ruled out before).
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && (h.is_user() || h.is_parse() || h.is_incomplete_message())
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The backend's response for the client: hop-by-hop headers removed, the body bounded by the
/// route's total timeout, the endpoint counted as busy until the body ends.
fn finish_response(
    resp: Response<Incoming>,
    in_flight: InFlight,
    deadline: Instant,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    let body = DeadlineBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
        _in_flight: in_flight,
    };
    Response::from_parts(parts, body.boxed())
}

/// Completes a WebSocket upgrade: the 101 goes to the client, then bytes are copied both ways.
fn tunnel(
    resp: Response<Incoming>,
    client_upgrade: hyper::upgrade::OnUpgrade,
    in_flight: InFlight,
) -> Response<Body> {
    let (mut parts, upstream_body) = resp.into_parts();
    let upstream_resp = Response::from_parts(parts.clone(), upstream_body);
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let (Ok(client), Ok(upstream)) = (
            client_upgrade.await,
            hyper::upgrade::on(upstream_resp).await,
        ) else {
            return;
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        let mut upstream = hyper_util::rt::TokioIo::new(upstream);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
    headers::strip_hop_by_hop(&mut parts.headers, true);
    Response::from_parts(parts, respond::empty())
}

/// A response body that fails once the route's total deadline passes.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    _in_flight: InFlight,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(
                "the backend response exceeded the route's total timeout".into(),
            )));
        }
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Writes the access-log line when the response body has been sent (or dropped).
fn attach_log(resp: Response<Body>, ex: Exchange) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let logged = LoggedBody {
        inner: body,
        bytes: 0,
        ex: Some(ex),
    };
    Response::from_parts(parts, logged.boxed())
}

struct LoggedBody {
    inner: Body,
    bytes: u64,
    ex: Option<Exchange>,
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => {
                let bytes = self.bytes;
                if let Some(ex) = self.ex.take() {
                    ex.finish(bytes);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // The client went away or the body failed before its end: still one line.
        if let Some(ex) = self.ex.take() {
            ex.finish(self.bytes);
        }
    }
}
