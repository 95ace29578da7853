//! The self-test web page: `GET /selftest` serves a page that gathers ICE candidates with
//! the visitor's own `RTCPeerConnection`; `GET /selftest/servers` lists the TURN URLs to
//! test; `POST /selftest/credentials` hands out short-lived TURN REST credentials, but only
//! to a caller with the `[selftest] token` (free TURN credentials would make an open relay).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, LOCATION,
    REFERRER_POLICY, WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ember_common::config::Config;
use ember_turn::auth::{rest_password, unix_now, FailureLimiter, Throttle};
use prometheus::{IntCounterVec, Opts, Registry};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

/// The page: one self-contained HTML file (inline script and style, no external requests).
pub const PAGE: &str = include_str!("page.html");

/// Failed token attempts per client IP per minute before the endpoint answers 429.
const TOKEN_FAILURES_PER_MINUTE: u32 = 10;

/// What the handlers need, fixed at start.
pub struct SelftestWeb {
    token_hash: Option<[u8; 32]>,
    secret: Option<String>,
    ttl: u32,
    user: String,
    realm: String,
    turn_urls: Vec<String>,
    udp_ports: Vec<u16>,
    tcp_ports: Vec<u16>,
    tls_ports: Vec<u16>,
    fallback_host: String,
    limiter: FailureLimiter,
    credentials_total: IntCounterVec,
}

/// `GET /selftest/servers`.
#[derive(Debug, Serialize)]
pub struct Servers {
    /// TURN URLs the page should test.
    pub urls: Vec<String>,
    /// Realm of the relay (informational).
    pub realm: String,
    /// Whether `POST /selftest/credentials` is enabled.
    pub one_click: bool,
}

/// `POST /selftest/credentials`.
#[derive(Debug, Serialize)]
pub struct IssuedCredentials {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
    /// Seconds the credential stays valid.
    pub ttl: u32,
    /// Unix time it expires.
    pub expires_at: u64,
}

impl SelftestWeb {
    /// Reads `[selftest]` and `[turn]`; `token` is the effective token (the config's, or
    /// the ephemeral one of a dev run). Registers its counter in `registry`.
    pub fn new(cfg: &Config, token: &str, registry: &Registry) -> SelftestWeb {
        let st = &cfg.selftest;
        let credentials_total = IntCounterVec::new(
            Opts::new(
                "ember_selftest_credentials_total",
                "Self-test credential requests by result (issued, refused, throttled, disabled).",
            ),
            &["result"],
        )
        .expect("static metric definition");
        if let Err(e) = registry.register(Box::new(credentials_total.clone())) {
            warn!("selftest: cannot register metrics: {e}");
        }
        let mut udp_ports: Vec<u16> = cfg.turn.listen.iter().map(|a| a.port()).collect();
        udp_ports.dedup();
        let mut tls_ports: Vec<u16> = cfg.turn.tls_listen.iter().map(|a| a.port()).collect();
        tls_ports.dedup();
        // A concrete listening address is the best guess when a request has no usable Host.
        let fallback_host = cfg
            .turn
            .external_ip
            .first()
            .map(|e| e.public)
            .or_else(|| {
                cfg.turn
                    .listen
                    .iter()
                    .map(SocketAddr::ip)
                    .find(|ip| !ip.is_unspecified())
            })
            .map_or_else(|| "127.0.0.1".to_owned(), url_host);
        SelftestWeb {
            token_hash: (!token.is_empty()).then(|| Sha256::digest(token.as_bytes()).into()),
            secret: cfg.turn.auth_secrets.first().cloned(),
            ttl: st.credential_ttl,
            user: st.credential_user.clone(),
            realm: cfg.turn.realm.clone(),
            turn_urls: st.turn_urls.clone(),
            tcp_ports: udp_ports.clone(),
            udp_ports,
            tls_ports,
            fallback_host,
            limiter: FailureLimiter::new(TOKEN_FAILURES_PER_MINUTE),
            credentials_total,
        }
    }

    /// Replaces the listening ports used in derived URLs (after binding port 0).
    pub fn set_turn_ports(&mut self, udp: Vec<u16>, tcp: Vec<u16>, tls: Vec<u16>) {
        self.udp_ports = udp;
        self.tcp_ports = tcp;
        self.tls_ports = tls;
    }

    /// The TURN URLs for a page requested with `host` (the Host header, port stripped).
    pub fn urls_for(&self, host: Option<&str>) -> Vec<String> {
        if !self.turn_urls.is_empty() {
            return self.turn_urls.clone();
        }
        let host = host.unwrap_or(&self.fallback_host);
        let mut urls = Vec::new();
        for port in &self.udp_ports {
            urls.push(format!("turn:{host}:{port}?transport=udp"));
        }
        for port in &self.tcp_ports {
            urls.push(format!("turn:{host}:{port}?transport=tcp"));
        }
        for port in &self.tls_ports {
            urls.push(format!("turns:{host}:{port}?transport=tcp"));
        }
        urls
    }

    fn one_click(&self) -> bool {
        self.token_hash.is_some() && self.secret.is_some()
    }

    /// Constant-time check of an `Authorization: Bearer` header.
    fn token_ok(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token_hash else {
            return false;
        };
        let given = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        let Some(given) = given else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// The router: `/selftest`, `/selftest/servers`, `/selftest/credentials`; `/` redirects.
pub fn router(state: SelftestWeb) -> Router {
    let state = Arc::new(state);
    Router::new()
        .route("/", get(redirect))
        .route("/selftest", get(page))
        .route("/selftest/", get(page))
        .route("/selftest/servers", get(servers))
        .route("/selftest/credentials", axum::routing::post(credentials))
        .with_state(state)
}

async fn redirect() -> Response {
    (
        StatusCode::FOUND,
        [(LOCATION, HeaderValue::from_static("/selftest"))],
    )
        .into_response()
}

async fn page() -> Response {
    (
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                     img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                     frame-ancestors 'none'",
                ),
            ),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        PAGE,
    )
        .into_response()
}

/// The host name of the Host header, if it is a plausible host (no injection into URLs).
fn request_host(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(HOST)?.to_str().ok()?.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        let (inside, _) = rest.split_once(']')?;
        inside.parse::<std::net::Ipv6Addr>().ok()?;
        return Some(format!("[{inside}]"));
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let plausible = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    plausible.then(|| name.to_owned())
}

/// An IP address as it goes into a URL (IPv6 in brackets).
fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

async fn servers(State(st): State<Arc<SelftestWeb>>, headers: HeaderMap) -> Json<Servers> {
    Json(Servers {
        urls: st.urls_for(request_host(&headers).as_deref()),
        realm: st.realm.clone(),
        one_click: st.one_click(),
    })
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

async fn credentials(
    State(st): State<Arc<SelftestWeb>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let count = |result: &str| st.credentials_total.with_label_values(&[result]).inc();
    let Some(secret) = st.secret.as_deref().filter(|_| st.one_click()) else {
        count("disabled");
        return json_error(
            StatusCode::NOT_FOUND,
            "one-click credentials are disabled: set [selftest] token and [turn] auth_secrets",
        );
    };
    let now = Instant::now();
    if st.limiter.check(peer.ip(), "selftest", now) != Throttle::Allow {
        count("throttled");
        return json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong tokens from this address; wait a minute",
        );
    }
    if !st.token_ok(&headers) {
        st.limiter.record_failure(peer.ip(), "selftest", now);
        count("refused");
        warn!(%peer, "selftest: credential request with a missing or wrong token");
        let mut r = json_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send `Authorization: Bearer <[selftest] token>`",
        );
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"ember selftest\""),
        );
        return r;
    }
    let expires_at = unix_now() + u64::from(st.ttl);
    let username = format!("{expires_at}:{}", st.user);
    let credential = rest_password(secret.as_bytes(), &username);
    count("issued");
    info!(%peer, %username, "selftest: issued credentials");
    let body = IssuedCredentials {
        urls: st.urls_for(request_host(&headers).as_deref()),
        username,
        credential,
        ttl: st.ttl,
        expires_at,
    };
    (
        [(CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn cfg() -> Config {
        let mut cfg = Config::default();
        cfg.turn.auth_secrets = vec!["0123456789abcdef".into()];
        cfg.turn.listen = vec!["0.0.0.0:3478".parse().unwrap()];
        cfg.turn.tls_listen = vec!["0.0.0.0:5349".parse().unwrap()];
        cfg
    }

    async fn call(app: Router, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
        let req = {
            let mut req = req;
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 9], 5555))));
            req
        };
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    fn post(auth: Option<&str>) -> Request<Body> {
        let mut b = Request::post("/selftest/credentials").header(HOST, "turn.example.com:8088");
        if let Some(a) = auth {
            b = b.header(AUTHORIZATION, a);
        }
        b.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn page_and_servers() {
        let app = router(SelftestWeb::new(
            &cfg(),
            "tok-0123456789abcdef",
            &Registry::new(),
        ));
        let (status, headers, body) = call(
            app.clone(),
            Request::get("/selftest").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert!(body.contains("RTCPeerConnection"));

        let req = Request::get("/selftest/servers")
            .header(HOST, "turn.example.com:8088")
            .body(Body::empty())
            .unwrap();
        let (status, _, body) = call(app.clone(), req).await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["urls"],
            serde_json::json!([
                "turn:turn.example.com:3478?transport=udp",
                "turn:turn.example.com:3478?transport=tcp",
                "turns:turn.example.com:5349?transport=tcp"
            ])
        );
        assert_eq!(v["one_click"], true);

        // A Host header that would inject into the URLs is ignored.
        let req = Request::get("/selftest/servers")
            .header(HOST, "evil.com?x=@y")
            .body(Body::empty())
            .unwrap();
        let (_, _, body) = call(app, req).await;
        assert!(!body.contains("evil"), "{body}");
        assert!(body.contains("turn:127.0.0.1:3478"), "{body}");
    }

    #[tokio::test]
    async fn credentials_need_the_token() {
        let token = "tok-0123456789abcdef";
        let app = router(SelftestWeb::new(&cfg(), token, &Registry::new()));
        let (status, headers, _) = call(app.clone(), post(None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.contains_key(WWW_AUTHENTICATE));
        let (status, _, _) = call(app.clone(), post(Some("Bearer wrong"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _, _) = call(app.clone(), post(Some(&format!("Basic {token}")))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let (status, headers, body) = call(app, post(Some(&format!("bearer {token}")))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(headers[CACHE_CONTROL], "no-store");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let username = v["username"].as_str().unwrap();
        let (expiry, user) = username.split_once(':').unwrap();
        assert_eq!(user, "selftest");
        let expiry: u64 = expiry.parse().unwrap();
        assert!(expiry > unix_now() && expiry <= unix_now() + 600);
        // The password is the coturn REST form, computed independently here.
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"0123456789abcdef").unwrap();
        mac.update(username.as_bytes());
        use base64::Engine;
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(v["credential"], expected);
    }

    #[tokio::test]
    async fn wrong_tokens_are_throttled() {
        let app = router(SelftestWeb::new(
            &cfg(),
            "tok-0123456789abcdef",
            &Registry::new(),
        ));
        for _ in 0..TOKEN_FAILURES_PER_MINUTE {
            let (status, _, _) = call(app.clone(), post(Some("Bearer guess"))).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
        let (status, _, _) = call(app.clone(), post(Some("Bearer tok-0123456789abcdef"))).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    }

    #[tokio::test]
    async fn disabled_without_token_or_secret() {
        let app = router(SelftestWeb::new(&cfg(), "", &Registry::new()));
        let (status, _, _) = call(app, post(Some("Bearer "))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let mut c = cfg();
        c.turn.auth_secrets.clear();
        let app = router(SelftestWeb::new(
            &c,
            "tok-0123456789abcdef",
            &Registry::new(),
        ));
        let (status, _, _) = call(app, post(Some("Bearer tok-0123456789abcdef"))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
