//! The admin routes in-process (`tower::ServiceExt::oneshot`), on a real in-memory engine
//! and a fake presence registry.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use ember_im::admin::routes::{router, AdminState};
use ember_im::engine::{Delivery, Engine, EngineConfig, MembershipChange, Sink};
use ember_im::router::{DeviceInfo, Presence};
use ember_im::token::{check_login, TokenKey};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tower::ServiceExt;

struct NoSink;
impl Sink for NoSink {
    fn deliver(&self, _: Delivery) {}
    fn membership(&self, _: MembershipChange) {}
}

#[derive(Default)]
struct FakePresence {
    kicks: Mutex<Vec<(String, Option<String>)>>,
}

impl Presence for FakePresence {
    fn devices(&self, uid: &str) -> Vec<DeviceInfo> {
        if uid == "alice" {
            vec![DeviceInfo {
                device: "phone".into(),
                transport: "tcp",
                version: "5",
                remote: "127.0.0.1:5000".into(),
                since: 1,
            }]
        } else {
            Vec::new()
        }
    }
    fn kick(&self, uid: &str, device: Option<&str>) -> usize {
        self.kicks
            .lock()
            .push((uid.to_owned(), device.map(str::to_owned)));
        1
    }
}

struct Fixture {
    app: axum::Router,
    engine: Engine,
    presence: Arc<FakePresence>,
    key: TokenKey,
}

fn fixture() -> Fixture {
    let engine = Engine::open(
        EngineConfig {
            rate_limit_per_sec: 0,
            ..EngineConfig::default()
        },
        Arc::new(NoSink),
    )
    .unwrap();
    let presence = Arc::new(FakePresence::default());
    let key = TokenKey::new(b"test-key");
    let (app, doc) = router(AdminState {
        engine: engine.clone(),
        presence: presence.clone(),
        tokens: key.clone(),
        token_ttl_secs: 3600,
        node_id: "n1".into(),
    });
    assert_eq!(doc.info.title, "Ember IM admin API");
    Fixture {
        app,
        engine,
        presence,
        key,
    }
}

async fn req(
    app: &axum::Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut b = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(b.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, v)
}

#[tokio::test]
async fn users_tokens_devices() {
    let f = fixture();
    let app = &f.app;
    let users =
        json!({"users": [{"uid": "alice", "name": "Alice", "extra": {"x": 1}}, {"uid": "bob"}]});
    let (s, v) = req(app, Method::POST, "/v1/users", Some(users)).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"count": 2})));
    let (s, v) = req(app, Method::GET, "/v1/users/alice", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["name"].clone(), v["extra"]["x"].clone()),
        (json!("Alice"), json!(1))
    );
    let (s, v) = req(app, Method::GET, "/v1/users/nobody", None).await;
    assert_eq!(
        (s, v["error"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
    let (s, _) = req(app, Method::GET, "/v1/users/bad%2Fid", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = req(
        app,
        Method::POST,
        "/v1/users",
        Some(json!({"users": [{"uid": "a b"}]})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let many: Vec<Value> = (0..1001).map(|i| json!({"uid": format!("x{i}")})).collect();
    let (s, _) = req(
        app,
        Method::POST,
        "/v1/users",
        Some(json!({ "users": many })),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "more than 1,000 users");
    let huge = json!({"users": [{"uid": "h", "name": "n".repeat(2 << 20)}]});
    let (s, v) = req(app, Method::POST, "/v1/users", Some(huge)).await;
    assert_eq!(
        (s, v["error"].clone()),
        (StatusCode::PAYLOAD_TOO_LARGE, json!("too_large"))
    );
    let (s, v) = req(app, Method::GET, "/v1/nothing", None).await;
    assert_eq!(
        (s, v["error"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
    let (s, v) = req(app, Method::POST, "/v1/users", Some(json!({"nope": 1}))).await;
    assert_eq!(
        (s, v["error"].clone()),
        (StatusCode::BAD_REQUEST, json!("bad_request"))
    );

    // Tokens work for the login check.
    let (s, v) = req(
        app,
        Method::POST,
        "/v1/users/alice/tokens",
        Some(json!({"device": "phone"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    let now = v["expires_at"].as_i64().unwrap() - 3600;
    let ok = check_login(
        &f.key,
        f.engine.user("alice"),
        "alice",
        "phone",
        token.as_bytes(),
        now,
    );
    assert!(ok.is_ok());
    let (s, _) = req(
        app,
        Method::POST,
        "/v1/users/ghost/tokens",
        Some(json!({"device": "p"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = req(
        app,
        Method::POST,
        "/v1/users/alice/tokens",
        Some(json!({"device": "p", "ttl_secs": 0})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let (s, v) = req(app, Method::GET, "/v1/users/alice/devices", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["devices"][0]["device"], "phone");
    assert_eq!(v["node"], "n1");

    // Kick with revoke: the old token is refused, a new one works.
    let (s, v) = req(
        app,
        Method::DELETE,
        "/v1/users/alice/devices/phone?revoke=true",
        None,
    )
    .await;
    assert_eq!(
        (s, v),
        (StatusCode::OK, json!({"kicked": 1, "revoked": true}))
    );
    assert_eq!(
        f.presence.kicks.lock()[0],
        ("alice".into(), Some("phone".into()))
    );
    let refused = check_login(
        &f.key,
        f.engine.user("alice"),
        "alice",
        "phone",
        token.as_bytes(),
        now,
    );
    assert!(refused.is_err());
    let (_, v) = req(
        app,
        Method::POST,
        "/v1/users/alice/tokens",
        Some(json!({"device": "phone"})),
    )
    .await;
    let fresh = v["token"].as_str().unwrap();
    let claims = f
        .key
        .verify(fresh, v["expires_at"].as_i64().unwrap() - 1)
        .unwrap();
    assert!(check_login(
        &f.key,
        f.engine.user("alice"),
        "alice",
        "phone",
        fresh.as_bytes(),
        claims.iat
    )
    .is_ok());

    // Delete: disabled, kicked, no new tokens.
    let (s, _) = req(app, Method::DELETE, "/v1/users/bob", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(f.engine.user("bob").unwrap().disabled);
    let (s, _) = req(
        app,
        Method::POST,
        "/v1/users/bob/tokens",
        Some(json!({"device": "p"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    f.engine.shutdown();
}

#[tokio::test]
async fn groups_messages_history() {
    let f = fixture();
    let app = &f.app;
    let users: Vec<Value> = (0..5).map(|i| json!({"uid": format!("u{i}")})).collect();
    req(
        app,
        Method::POST,
        "/v1/users",
        Some(json!({ "users": users })),
    )
    .await;
    let g = json!({"gid": "g1", "name": "G", "owner": "u0", "members": ["u1", "u2"]});
    let (s, v) = req(app, Method::POST, "/v1/groups", Some(g.clone())).await;
    assert_eq!(
        (s, v),
        (StatusCode::CREATED, json!({"gid": "g1", "members": 3}))
    );
    let (s, v) = req(app, Method::POST, "/v1/groups", Some(g)).await;
    assert_eq!(
        (s, v["error"].clone()),
        (StatusCode::CONFLICT, json!("conflict"))
    );
    let (s, v) = req(
        app,
        Method::POST,
        "/v1/groups/g1/members",
        Some(json!({"add": ["u3", "u4"], "remove": ["u1"]})),
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"added": 2, "removed": 1})));
    let (s, v) = req(app, Method::GET, "/v1/groups/g1/members?limit=2", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["members"].as_array().unwrap().len(), 2);
    assert_eq!(
        (v["members"][0]["uid"].clone(), v["more"].clone()),
        (json!("u0"), json!(true))
    );
    let (_, v) = req(
        app,
        Method::GET,
        "/v1/groups/g1/members?after=u2&limit=10",
        None,
    )
    .await;
    let uids: Vec<&str> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["uid"].as_str().unwrap())
        .collect();
    assert_eq!((uids, v["more"].clone()), (vec!["u3", "u4"], json!(false)));
    let (s, _) = req(app, Method::GET, "/v1/groups/nope/members", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Messages: as a user, as the system, errors.
    let (s, v) = req(
        app,
        Method::POST,
        "/v1/messages",
        Some(json!({"from": "u0", "to": "u1", "cid": "m1", "body": {"t": "hi"}})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mid = v["mid"].as_u64().unwrap();
    let (s, v) = req(
        app,
        Method::POST,
        "/v1/messages",
        Some(json!({"system": true, "g": "g1", "cid": "s1", "body": "maintenance"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = req(
        app,
        Method::POST,
        "/v1/messages",
        Some(json!({"from": "u1", "g": "g1", "cid": "x", "body": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "u1 was removed");
    let (s, _) = req(
        app,
        Method::POST,
        "/v1/messages",
        Some(json!({"from": "u0", "system": true, "to": "u1", "cid": "x", "body": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = req(
        app,
        Method::POST,
        "/v1/messages",
        Some(json!({"from": "u0", "to": "u1", "cid": "m1", "body": 2})),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let big = "x".repeat(20_000);
    let (s, _) = req(
        app,
        Method::POST,
        "/v1/messages",
        Some(json!({"from": "u0", "to": "u1", "cid": "big", "body": big})),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);

    let (s, v) = req(app, Method::GET, "/v1/history?user=u1&peer=u0", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["events"][0]["mid"].as_u64(), Some(mid));
    let (s, v) = req(app, Method::GET, "/v1/history?g=g1&limit=1", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["events"][0]["body"].clone(), v["more"].clone()),
        (json!("maintenance"), json!(true))
    );
    let (s, _) = req(app, Method::GET, "/v1/history?peer=u0", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let (s, v) = req(
        app,
        Method::POST,
        &format!("/v1/messages/{mid}/recall"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = req(app, Method::GET, "/v1/history?user=u0&peer=u1", None).await;
    assert_eq!(
        (
            v["events"][0]["recalled"].clone(),
            v["events"][0]["body"].clone()
        ),
        (json!(true), Value::Null)
    );
    let (s, _) = req(app, Method::POST, "/v1/messages/abc/recall", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let (s, _) = req(app, Method::DELETE, "/v1/groups/g1", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = req(app, Method::DELETE, "/v1/groups/g1", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    f.engine.shutdown();
}

#[tokio::test]
async fn openapi_document() {
    let f = fixture();
    let (s, v) = req(&f.app, Method::GET, "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(v["info"]["license"]["name"], "Apache-2.0");
    for p in [
        "/v1/users",
        "/v1/users/{uid}",
        "/v1/users/{uid}/tokens",
        "/v1/users/{uid}/devices",
        "/v1/users/{uid}/devices/{device}",
        "/v1/groups",
        "/v1/groups/{gid}",
        "/v1/groups/{gid}/members",
        "/v1/messages",
        "/v1/messages/{mid}/recall",
        "/v1/history",
    ] {
        assert!(v["paths"].get(p).is_some(), "{p} missing");
    }
    assert!(v["paths"]["/v1/users/{uid}"].get("delete").is_some());
    assert!(v["paths"]["/v1/groups/{gid}/members"].get("get").is_some());
    f.engine.shutdown();
}
