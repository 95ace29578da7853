//! Admin API endpoints (users, tokens, groups, members, messages, devices, history) as an
//! axum router with its OpenAPI document (utoipa). Request signatures are checked by the
//! auth middleware layered on top of this router, not here; `/openapi.json` is unsigned.
//!
//! Errors: `{"error": "...", "message": "..."}` with the HTTP status of the engine's code.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::get;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::engine::{now_ms, Caller, Engine, GroupSpec, UserSpec};
use crate::proto::{valid_id, ApiError, Event, HistoryReq, Request, Response, SendReq};
use crate::router::Presence;
use crate::token::TokenKey;

/// Largest POST body.
pub const MAX_BODY: usize = 1 << 20;
/// Token lifetime bounds (seconds).
const MAX_TTL_SECS: i64 = 10 * 365 * 24 * 3600;

/// What the admin handlers need.
#[derive(Clone)]
pub struct AdminState {
    pub engine: Engine,
    pub presence: Arc<dyn Presence>,
    pub tokens: TokenKey,
    /// Default token lifetime when a request names none.
    pub token_ttl_secs: i64,
    pub node_id: String,
}

/// An error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

/// [`ApiError`] as an HTTP response.
pub struct AdminError(pub ApiError);

impl From<ApiError> for AdminError {
    fn from(e: ApiError) -> Self {
        AdminError(e)
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> HttpResponse {
        let status = StatusCode::from_u16(self.0.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: self.0.error.to_owned(),
            message: self.0.message,
        };
        (status, Json(body)).into_response()
    }
}

type Result<T> = std::result::Result<T, AdminError>;

fn json_body<T>(r: std::result::Result<Json<T>, JsonRejection>) -> Result<T> {
    r.map(|Json(t)| t).map_err(|e| {
        // axum's 422 (well-formed JSON of the wrong shape) is a 400 here, like every
        // other malformed request.
        let (code, name) = match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => (413, "too_large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (415, "unsupported_media_type"),
            _ => (400, "bad_request"),
        };
        ApiError::new(code, name, e.body_text()).into()
    })
}

fn query<T>(r: std::result::Result<Query<T>, QueryRejection>) -> Result<T> {
    r.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request(e.body_text()).into())
}

fn path<T>(r: std::result::Result<Path<T>, PathRejection>) -> Result<T> {
    r.map(|Path(t)| t)
        .map_err(|e| ApiError::bad_request(e.body_text()).into())
}

fn check_id(what: &str, id: &str) -> Result<()> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("invalid {what} id")).into())
    }
}

fn admin_caller(user: Option<&str>) -> Caller {
    Caller {
        user: user.map(Arc::from),
        device: "admin".into(),
    }
}

// ---- users ----

/// A user to create or update.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserIn {
    pub uid: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Any JSON the app keeps with the user.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub extra: Option<serde_json::Value>,
}

/// `POST /v1/users`: up to 1,000 users (creating re-enables deleted ones).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsersIn {
    pub users: Vec<UserIn>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CountOut {
    pub count: usize,
}

/// A user as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserOut {
    pub uid: String,
    pub name: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub extra: Option<serde_json::Value>,
    pub disabled: bool,
    /// Tokens issued before this (Unix seconds) are refused.
    pub tokens_after: i64,
    /// Unix milliseconds.
    pub created: i64,
    pub groups: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OkOut {
    pub ok: bool,
}

#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = UsersIn,
    responses((status = 200, body = CountOut), (status = 400, body = ErrorBody)))]
async fn create_users(
    State(s): State<AdminState>,
    body: std::result::Result<Json<UsersIn>, JsonRejection>,
) -> Result<Json<CountOut>> {
    let body = json_body(body)?;
    let specs = body
        .users
        .into_iter()
        .map(|u| UserSpec {
            uid: u.uid,
            name: u.name,
            extra: u.extra,
        })
        .collect();
    let count = s.engine.upsert_users(specs).await?;
    Ok(Json(CountOut { count }))
}

#[utoipa::path(get, path = "/v1/users/{uid}", tag = "users",
    params(("uid" = String, Path, description = "user id")),
    responses((status = 200, body = UserOut), (status = 404, body = ErrorBody)))]
async fn get_user(
    State(s): State<AdminState>,
    uid: std::result::Result<Path<String>, PathRejection>,
) -> Result<Json<UserOut>> {
    let uid = path(uid)?;
    check_id("user", &uid)?;
    let u = s
        .engine
        .user_info(&uid)
        .ok_or_else(|| ApiError::not_found(format!("no user {uid}")))?;
    Ok(Json(UserOut {
        uid: u.uid.to_string(),
        name: u.name,
        extra: u.extra,
        disabled: u.disabled,
        tokens_after: u.tokens_after,
        created: u.created,
        groups: s
            .engine
            .groups_of(&uid)
            .iter()
            .map(|g| g.to_string())
            .collect(),
    }))
}

#[utoipa::path(delete, path = "/v1/users/{uid}", tag = "users",
    description = "Disables the user, revokes its tokens and disconnects its devices; history is kept.",
    params(("uid" = String, Path, description = "user id")),
    responses((status = 200, body = OkOut), (status = 404, body = ErrorBody)))]
async fn delete_user(
    State(s): State<AdminState>,
    uid: std::result::Result<Path<String>, PathRejection>,
) -> Result<Json<OkOut>> {
    let uid = path(uid)?;
    check_id("user", &uid)?;
    s.engine.delete_user(&uid).await?;
    let kicked = s.presence.kick(&uid, None);
    tracing::info!(uid, kicked, "user deleted");
    Ok(Json(OkOut { ok: true }))
}

/// `POST /v1/users/{uid}/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenIn {
    pub device: String,
    /// Lifetime in seconds (default: the configured one).
    #[serde(default)]
    pub ttl_secs: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenOut {
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

#[utoipa::path(post, path = "/v1/users/{uid}/tokens", tag = "users", request_body = TokenIn,
    params(("uid" = String, Path, description = "user id")),
    responses((status = 200, body = TokenOut), (status = 404, body = ErrorBody)))]
async fn mint_token(
    State(s): State<AdminState>,
    uid: std::result::Result<Path<String>, PathRejection>,
    body: std::result::Result<Json<TokenIn>, JsonRejection>,
) -> Result<Json<TokenOut>> {
    let uid = path(uid)?;
    let body = json_body(body)?;
    check_id("user", &uid)?;
    check_id("device", &body.device)?;
    let state = s
        .engine
        .user(&uid)
        .filter(|u| !u.disabled)
        .ok_or_else(|| ApiError::not_found(format!("no enabled user {uid}")))?;
    let ttl = body.ttl_secs.unwrap_or(s.token_ttl_secs);
    if !(1..=MAX_TTL_SECS).contains(&ttl) {
        return Err(ApiError::bad_request("ttl_secs out of range").into());
    }
    // Not before the revocation point, so a token minted right after a revoke works.
    let iat = (now_ms() / 1000).max(state.tokens_after);
    let exp = iat + ttl;
    Ok(Json(TokenOut {
        token: s.tokens.mint(&uid, &body.device, iat, exp),
        expires_at: exp,
    }))
}

/// An online device.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceOut {
    pub device: String,
    /// "tcp", "tls", "ws", "wss".
    pub transport: String,
    /// "3.1.1" or "5".
    pub version: String,
    pub remote: String,
    /// Unix milliseconds.
    pub since: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DevicesOut {
    pub node: String,
    pub devices: Vec<DeviceOut>,
}

#[utoipa::path(get, path = "/v1/users/{uid}/devices", tag = "users",
    params(("uid" = String, Path, description = "user id")),
    responses((status = 200, body = DevicesOut)))]
async fn devices(
    State(s): State<AdminState>,
    uid: std::result::Result<Path<String>, PathRejection>,
) -> Result<Json<DevicesOut>> {
    let uid = path(uid)?;
    check_id("user", &uid)?;
    let devices = s
        .presence
        .devices(&uid)
        .into_iter()
        .map(|d| DeviceOut {
            device: d.device.to_string(),
            transport: d.transport.to_owned(),
            version: d.version.to_owned(),
            remote: d.remote,
            since: d.since,
        })
        .collect();
    Ok(Json(DevicesOut {
        node: s.node_id.clone(),
        devices,
    }))
}

#[derive(Debug, Deserialize)]
pub struct KickQuery {
    #[serde(default)]
    pub revoke: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KickOut {
    /// Connections closed.
    pub kicked: usize,
    pub revoked: bool,
}

#[utoipa::path(delete, path = "/v1/users/{uid}/devices/{device}", tag = "users",
    description = "Disconnects the device; `revoke=true` also revokes every token of the user issued until now.",
    params(("uid" = String, Path, description = "user id"),
           ("device" = String, Path, description = "device id"),
           ("revoke" = Option<bool>, Query, description = "revoke the user's tokens")),
    responses((status = 200, body = KickOut), (status = 404, body = ErrorBody)))]
async fn kick(
    State(s): State<AdminState>,
    p: std::result::Result<Path<(String, String)>, PathRejection>,
    q: std::result::Result<Query<KickQuery>, QueryRejection>,
) -> Result<Json<KickOut>> {
    let (uid, device) = path(p)?;
    let q = query(q)?;
    check_id("user", &uid)?;
    check_id("device", &device)?;
    if q.revoke {
        s.engine.revoke_tokens(&uid, now_ms() / 1000 + 1).await?;
    }
    let kicked = s.presence.kick(&uid, Some(&device));
    Ok(Json(KickOut {
        kicked,
        revoked: q.revoke,
    }))
}

// ---- groups ----

/// `POST /v1/groups`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupIn {
    pub gid: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub extra: Option<serde_json::Value>,
    /// Initial members besides the owner.
    #[serde(default)]
    pub members: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupOut {
    pub gid: String,
    pub members: usize,
}

#[utoipa::path(post, path = "/v1/groups", tag = "groups", request_body = GroupIn,
    responses((status = 201, body = GroupOut), (status = 409, body = ErrorBody)))]
async fn create_group(
    State(s): State<AdminState>,
    body: std::result::Result<Json<GroupIn>, JsonRejection>,
) -> Result<(StatusCode, Json<GroupOut>)> {
    let b = json_body(body)?;
    let gid = b.gid.clone();
    s.engine
        .create_group(GroupSpec {
            gid: b.gid,
            name: b.name,
            owner: b.owner,
            extra: b.extra,
            members: b.members,
        })
        .await?;
    let members = s.engine.group_info(&gid).map_or(0, |(_, n, _)| n);
    Ok((StatusCode::CREATED, Json(GroupOut { gid, members })))
}

#[utoipa::path(delete, path = "/v1/groups/{gid}", tag = "groups",
    params(("gid" = String, Path, description = "group id")),
    responses((status = 200, body = OkOut), (status = 404, body = ErrorBody)))]
async fn dismiss_group(
    State(s): State<AdminState>,
    gid: std::result::Result<Path<String>, PathRejection>,
) -> Result<Json<OkOut>> {
    let gid = path(gid)?;
    check_id("group", &gid)?;
    s.engine.dismiss_group(&gid).await?;
    Ok(Json(OkOut { ok: true }))
}

/// `POST /v1/groups/{gid}/members`: at most 1,000 in each list.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersIn {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MembersChanged {
    pub added: usize,
    pub removed: usize,
}

#[utoipa::path(post, path = "/v1/groups/{gid}/members", tag = "groups", request_body = MembersIn,
    params(("gid" = String, Path, description = "group id")),
    responses((status = 200, body = MembersChanged), (status = 404, body = ErrorBody)))]
async fn change_members(
    State(s): State<AdminState>,
    gid: std::result::Result<Path<String>, PathRejection>,
    body: std::result::Result<Json<MembersIn>, JsonRejection>,
) -> Result<Json<MembersChanged>> {
    let gid = path(gid)?;
    let b = json_body(body)?;
    check_id("group", &gid)?;
    let (added, removed) = s.engine.change_members(&gid, b.add, b.remove).await?;
    Ok(Json(MembersChanged { added, removed }))
}

#[derive(Debug, Deserialize)]
pub struct MembersQuery {
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberOut {
    pub uid: String,
    /// The group seq at which the member joined.
    pub joined_seq: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MembersOut {
    pub members: Vec<MemberOut>,
    pub more: bool,
}

#[utoipa::path(get, path = "/v1/groups/{gid}/members", tag = "groups",
    params(("gid" = String, Path, description = "group id"),
           ("after" = Option<String>, Query, description = "page after this uid"),
           ("limit" = Option<usize>, Query, description = "page size, ≤ 1000 (default 100)")),
    responses((status = 200, body = MembersOut), (status = 404, body = ErrorBody)))]
async fn list_members(
    State(s): State<AdminState>,
    gid: std::result::Result<Path<String>, PathRejection>,
    q: std::result::Result<Query<MembersQuery>, QueryRejection>,
) -> Result<Json<MembersOut>> {
    let gid = path(gid)?;
    let q = query(q)?;
    check_id("group", &gid)?;
    let (page, more) = s
        .engine
        .members(&gid, q.after.as_deref(), q.limit.unwrap_or(100))?;
    Ok(Json(MembersOut {
        members: page
            .into_iter()
            .map(|(u, j)| MemberOut {
                uid: u.to_string(),
                joined_seq: j,
            })
            .collect(),
        more,
    }))
}

// ---- messages ----

/// `POST /v1/messages`: from a user (`from`) or the system (`system: true`), to a user
/// (`to`) or a group (`g`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageIn {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub system: bool,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub g: Option<String>,
    pub cid: String,
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SentOut {
    pub mid: u64,
    pub seq: u64,
    pub ts: i64,
}

#[utoipa::path(post, path = "/v1/messages", tag = "messages", request_body = MessageIn,
    responses((status = 200, body = SentOut), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn send_message(
    State(s): State<AdminState>,
    body: std::result::Result<Json<MessageIn>, JsonRejection>,
) -> Result<Json<SentOut>> {
    let b = json_body(body)?;
    let from = match (b.from, b.system) {
        (Some(f), false) => {
            check_id("user", &f)?;
            Some(f)
        }
        (None, true) => None,
        _ => {
            return Err(
                ApiError::bad_request("give exactly one of \"from\", \"system\": true").into(),
            )
        }
    };
    let raw = RawValue::from_string(b.body.to_string())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let req = Request::Send(SendReq {
        id: None,
        to: b.to,
        g: b.g,
        cid: b.cid,
        body: raw,
    });
    match s
        .engine
        .admin_call(admin_caller(from.as_deref()), req)
        .await?
    {
        Response::Sent { mid, seq, ts } => Ok(Json(SentOut { mid, seq, ts })),
        _ => Err(ApiError::internal("unexpected engine answer").into()),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecalledOut {
    /// The recall event's id.
    pub mid: u64,
}

#[utoipa::path(post, path = "/v1/messages/{mid}/recall", tag = "messages",
    description = "Recalls anyone's message, as the system, within the recall window.",
    params(("mid" = u64, Path, description = "message id")),
    responses((status = 200, body = RecalledOut), (status = 404, body = ErrorBody)))]
async fn recall_message(
    State(s): State<AdminState>,
    mid: std::result::Result<Path<u64>, PathRejection>,
) -> Result<Json<RecalledOut>> {
    let mid = path(mid)?;
    let req = Request::Recall(crate::proto::RecallReq { id: None, mid });
    match s.engine.admin_call(admin_caller(None), req).await? {
        Response::Recalled { mid } => Ok(Json(RecalledOut { mid })),
        _ => Err(ApiError::internal("unexpected engine answer").into()),
    }
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub peer: Option<String>,
    #[serde(default)]
    pub g: Option<String>,
    #[serde(default)]
    pub before: Option<u64>,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// A page of events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryOut {
    /// Events as pushed to devices (docs/PROTOCOL.md).
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Event>,
    pub more: bool,
}

#[utoipa::path(get, path = "/v1/history", tag = "messages",
    params(("user" = Option<String>, Query, description = "the viewing user (required with peer)"),
           ("peer" = Option<String>, Query, description = "the other user of a 1:1 conversation"),
           ("g" = Option<String>, Query, description = "a group"),
           ("before" = Option<u64>, Query, description = "1:1: message id; group: seq"),
           ("limit" = Option<u32>, Query, description = "≤ 500 (default 100)")),
    responses((status = 200, body = HistoryOut), (status = 400, body = ErrorBody)))]
async fn history(
    State(s): State<AdminState>,
    q: std::result::Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<HistoryOut>> {
    let q = query(q)?;
    if let Some(u) = &q.user {
        check_id("user", u)?;
    }
    if q.peer.is_some() && q.user.is_none() {
        return Err(ApiError::bad_request("\"peer\" needs \"user\"").into());
    }
    let req = Request::History(HistoryReq {
        id: None,
        peer: q.peer,
        g: q.g,
        before: q.before,
        limit: q.limit,
    });
    match s
        .engine
        .admin_call(admin_caller(q.user.as_deref()), req)
        .await?
    {
        Response::Events { events, more, .. } => Ok(Json(HistoryOut { events, more })),
        _ => Err(ApiError::internal("unexpected engine answer").into()),
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ember IM admin API",
        version = env!("CARGO_PKG_VERSION"),
        description = "Users, tokens, groups and messages of Ember's messaging core. \
                       Every request except /openapi.json is signed (docs/IM-DESIGN.md §5.2).",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    tags((name = "users"), (name = "groups"), (name = "messages"))
)]
struct ApiDoc;

/// The admin router (state applied) and its OpenAPI document; `GET /openapi.json` serves
/// the document.
pub fn router(state: AdminState) -> (axum::Router, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_users))
        .routes(routes!(get_user, delete_user))
        .routes(routes!(mint_token))
        .routes(routes!(devices))
        .routes(routes!(kick))
        .routes(routes!(create_group))
        .routes(routes!(dismiss_group))
        .routes(routes!(change_members, list_members))
        .routes(routes!(send_message))
        .routes(routes!(recall_message))
        .routes(routes!(history))
        .with_state(state)
        .split_for_parts();
    let served = doc.clone();
    let router = router
        .route("/openapi.json", get(move || async move { Json(served) }))
        .fallback(|| async { AdminError(ApiError::not_found("no such endpoint")) })
        .layer(DefaultBodyLimit::max(MAX_BODY));
    (router, doc)
}
