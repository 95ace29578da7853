//! Short-link HTTP API: `GET /api/version` and `POST /route` (which node to connect to).
//!
//! `/route` lets a client check its token and learn where to open its MQTT connection:
//! `Authorization: Bearer <token>` plus the user and device (JSON body `{"user","device"}`
//! or the query `?user=&device=`), answered with this node's host, ports and backup
//! addresses. One node today: the answer is always this node. The token check itself is the
//! CONNECT check, behind [`LoginCheck`] (the server wires it to `token::check_login` and the
//! engine's user directory).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ember_common::config::ImConfig;
use serde::{Deserialize, Serialize};

use crate::proto::valid_id;
use crate::session::ConnectRefusal;

/// Largest `/route` request body.
pub const MAX_ROUTE_BODY: usize = 4096;

/// Build identifier reported by `/api/version`: the `EMBER_BUILD` environment variable at
/// compile time (e.g. `EMBER_BUILD=$(git rev-parse --short HEAD) cargo build`), else "dev".
pub const BUILD: &str = match option_env!("EMBER_BUILD") {
    Some(b) => b,
    None => "dev",
};

/// The login check of a CONNECT, reused by `/route`: is `token` valid for exactly this user
/// and device, and may the user log in?
pub trait LoginCheck: Send + Sync + 'static {
    fn check(&self, user: &str, device: &str, token: &[u8]) -> Result<(), ConnectRefusal>;
}

/// `GET /api/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The crate version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// See [`BUILD`].
    pub build: String,
    /// This node's id.
    pub node_id: String,
}

/// The ports of this node; 0 when the listener is disabled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    pub http: u16,
    pub mqtt: u16,
    pub mqtts: u16,
    pub ws: u16,
    pub wss: u16,
}

/// A `backup_addresses` entry as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    pub host: String,
    /// Port of the short-link HTTP API.
    pub http: u16,
    /// Port of MQTT over TCP.
    pub mqtt: u16,
    /// Port of MQTT over WebSocket.
    pub ws: u16,
}

/// `POST /route`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    /// The node the client should use.
    pub node: String,
    /// Host name to connect to (`[im] server_host`).
    pub host: String,
    pub ports: Ports,
    /// Other ways to reach the same node (`[im] backup_addresses`).
    pub backup: Vec<Backup>,
}

impl RouteInfo {
    /// From `[im]`: the first address of each listener list (its port; 0 when the list is
    /// empty). With ephemeral ports (`:0`) pass the bound ports through [`RouteInfo::ports`]
    /// instead.
    pub fn from_config(cfg: &ImConfig, node_id: &str) -> RouteInfo {
        let port = |l: &[std::net::SocketAddr]| l.first().map_or(0, |a| a.port());
        RouteInfo {
            node: node_id.to_owned(),
            host: cfg.effective_host().to_owned(),
            ports: Ports {
                http: port(&cfg.http_listen),
                mqtt: port(&cfg.mqtt_listen),
                mqtts: port(&cfg.mqtts_listen),
                ws: port(&cfg.ws_listen),
                wss: port(&cfg.wss_listen),
            },
            backup: cfg
                .backup_addresses
                .iter()
                .map(|b| Backup {
                    host: b.host.clone(),
                    http: b.short_port,
                    mqtt: b.long_port,
                    ws: b.ws_port,
                })
                .collect(),
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
struct AppState {
    version: Arc<VersionInfo>,
    route: Arc<RouteInfo>,
    login: Arc<dyn LoginCheck>,
}

/// The short-link router, to serve on `[im] http_listen`.
pub fn router(node_id: &str, route: RouteInfo, login: Arc<dyn LoginCheck>) -> Router {
    let state = AppState {
        version: Arc::new(VersionInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            build: BUILD.to_owned(),
            node_id: node_id.to_owned(),
        }),
        route: Arc::new(route),
        login,
    };
    Router::new()
        .route("/api/version", get(version))
        .route("/route", post(route_handler))
        .layer(DefaultBodyLimit::max(MAX_ROUTE_BODY))
        .with_state(state)
}

async fn version(State(s): State<AppState>) -> Json<VersionInfo> {
    Json((*s.version).clone())
}

/// Who asks: from the JSON body or the query string.
#[derive(Debug, Default, Deserialize)]
struct RouteParams {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    device: Option<String>,
}

/// A `/route` refusal: `{"error": ..., "message": ...}` with an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {error}: {message}")]
pub struct RouteError {
    pub status: StatusCode,
    pub error: &'static str,
    pub message: String,
}

impl RouteError {
    fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        RouteError {
            status,
            error,
            message: message.into(),
        }
    }

    /// The answer to a refused login: 401 bad_credentials (bad, expired or revoked token),
    /// 401 bad_client_id (token of another device), 403 not_authorized (unknown or disabled
    /// user), 503 server_unavailable.
    pub fn from_refusal(r: ConnectRefusal) -> Self {
        match r {
            ConnectRefusal::BadCredentials => Self::new(
                StatusCode::UNAUTHORIZED,
                "bad_credentials",
                "the token is invalid, expired or revoked",
            ),
            ConnectRefusal::BadClientId => Self::new(
                StatusCode::UNAUTHORIZED,
                "bad_client_id",
                "the token was not issued for this user and device",
            ),
            ConnectRefusal::NotAuthorized => Self::new(
                StatusCode::FORBIDDEN,
                "not_authorized",
                "the user does not exist or is disabled",
            ),
            ConnectRefusal::ServerUnavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_unavailable",
                "the server is not accepting connections now",
            ),
        }
    }
}

impl IntoResponse for RouteError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(serde_json::json!({ "error": self.error, "message": self.message })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

async fn route_handler(
    State(s): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<RouteParams>, QueryRejection>,
    body: Bytes,
) -> Result<Json<RouteInfo>, RouteError> {
    let bad = |m: String| RouteError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let Query(mut params) = query.map_err(|e| bad(format!("query: {e}")))?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let from_body: RouteParams =
            serde_json::from_slice(&body).map_err(|e| bad(format!("body: {e}")))?;
        params.user = from_body.user.or(params.user);
        params.device = from_body.device.or(params.device);
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            RouteError::new(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "send the login token as Authorization: Bearer <token>",
            )
        })?;
    let (Some(user), Some(device)) = (params.user, params.device) else {
        return Err(bad(
            "\"user\" and \"device\" are required (JSON body or query)".into(),
        ));
    };
    if !valid_id(&user) || !valid_id(&device) {
        return Err(bad(
            "\"user\" and \"device\" must match [A-Za-z0-9_.@-]{1,64}".into(),
        ));
    }
    s.login
        .check(&user, &device, token.as_bytes())
        .map_err(RouteError::from_refusal)?;
    Ok(Json((*s.route).clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::Request;
    use ember_common::config::BackupAddress;
    use tower::ServiceExt;

    /// Accepts token "good-<user>-<device>"; "disabled" users and "busy" devices are refused.
    struct FakeLogin;

    impl LoginCheck for FakeLogin {
        fn check(&self, user: &str, device: &str, token: &[u8]) -> Result<(), ConnectRefusal> {
            if device == "busy" {
                return Err(ConnectRefusal::ServerUnavailable);
            }
            let Some(rest) = token.strip_prefix(b"good-") else {
                return Err(ConnectRefusal::BadCredentials);
            };
            if rest != format!("{user}-{device}").as_bytes() {
                return Err(ConnectRefusal::BadClientId);
            }
            if user == "disabled" {
                return Err(ConnectRefusal::NotAuthorized);
            }
            Ok(())
        }
    }

    fn app() -> Router {
        let mut cfg = ImConfig {
            server_host: "im.example.com".into(),
            ..ImConfig::default()
        };
        cfg.backup_addresses = vec!["203.0.113.9:81:1881:8081".parse::<BackupAddress>().unwrap()];
        router(
            "node-1",
            RouteInfo::from_config(&cfg, "node-1"),
            Arc::new(FakeLogin),
        )
    }

    async fn call(req: Request) -> (StatusCode, serde_json::Value) {
        let resp = app().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    fn route(uri: &str, token: Option<&str>, body: &str) -> Request {
        let mut b = Request::post(uri).header("content-type", "application/json");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(Body::from(body.to_owned())).unwrap()
    }

    #[tokio::test]
    async fn version() {
        let (status, v) = call(Request::get("/api/version").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["build"], BUILD);
        assert_eq!(v["node_id"], "node-1");
    }

    #[tokio::test]
    async fn route_answers_host_ports_and_backups() {
        let (status, v) = call(route(
            "/route",
            Some("good-alice-phone"),
            r#"{"user":"alice","device":"phone"}"#,
        ))
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(
            v,
            serde_json::json!({
                "node": "node-1",
                "host": "im.example.com",
                "ports": {"http": 8080, "mqtt": 1883, "mqtts": 0, "ws": 8083, "wss": 0},
                "backup": [{"host": "203.0.113.9", "http": 81, "mqtt": 1881, "ws": 8081}]
            })
        );
        // The same from the query string, with an empty body.
        let (status, _) = call(route(
            "/route?user=alice&device=phone",
            Some("good-alice-phone"),
            "",
        ))
        .await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn route_refusals() {
        let body = r#"{"user":"alice","device":"phone"}"#;
        for (token, body, status, error) in [
            (None, body, StatusCode::UNAUTHORIZED, "missing_token"),
            (
                Some("forged"),
                body,
                StatusCode::UNAUTHORIZED,
                "bad_credentials",
            ),
            (
                Some("good-alice-laptop"),
                body,
                StatusCode::UNAUTHORIZED,
                "bad_client_id",
            ),
            (
                Some("good-disabled-phone"),
                r#"{"user":"disabled","device":"phone"}"#,
                StatusCode::FORBIDDEN,
                "not_authorized",
            ),
            (
                Some("good-alice-busy"),
                r#"{"user":"alice","device":"busy"}"#,
                StatusCode::SERVICE_UNAVAILABLE,
                "server_unavailable",
            ),
            (
                Some("x"),
                r#"{"user":"alice"}"#,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                Some("x"),
                r#"{"user":"a/b","device":"phone"}"#,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                Some("x"),
                "not json",
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
        ] {
            let (s, v) = call(route("/route", token, body)).await;
            assert_eq!(
                (s, v["error"].as_str()),
                (status, Some(error)),
                "{token:?} {body}: {v}"
            );
            assert!(v["message"].is_string());
        }
        let resp = app().oneshot(route("/route", None, body)).await.unwrap();
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[tokio::test]
    async fn route_body_is_limited() {
        let big = format!(
            r#"{{"user":"alice","device":"phone","x":"{}"}}"#,
            "y".repeat(MAX_ROUTE_BODY)
        );
        let resp = app()
            .oneshot(route("/route", Some("good-alice-phone"), &big))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
