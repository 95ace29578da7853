//! The messaging protocol's payloads (docs/PROTOCOL.md): requests published on
//! `rq/<method>`, the JSON responses, and the events pushed to devices and returned by sync.
//!
//! JSON, UTF-8, short keys; the app's content is an opaque JSON value (`body`) that is stored
//! and forwarded byte for byte (`RawValue`), never re-parsed.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Longest user, device, group or client-message id.
pub const MAX_ID_LEN: usize = 64;

/// Ids of users, devices and groups: `[A-Za-z0-9_.@-]{1,64}` (safe inside MQTT topics).
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
}

/// A request method, the `<method>` of the topic `rq/<method>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Send,
    Sync,
    Pull,
    History,
    Recall,
    Read,
    Receipts,
}

impl Method {
    /// All methods, for metrics labels.
    pub const ALL: [Method; 7] = [
        Method::Send,
        Method::Sync,
        Method::Pull,
        Method::History,
        Method::Recall,
        Method::Read,
        Method::Receipts,
    ];

    /// The method named by the last level of `rq/<method>`.
    pub fn from_name(name: &str) -> Option<Method> {
        Some(match name {
            "send" => Method::Send,
            "sync" => Method::Sync,
            "pull" => Method::Pull,
            "history" => Method::History,
            "recall" => Method::Recall,
            "read" => Method::Read,
            "receipts" => Method::Receipts,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Send => "send",
            Method::Sync => "sync",
            Method::Pull => "pull",
            Method::History => "history",
            Method::Recall => "recall",
            Method::Read => "read",
            Method::Receipts => "receipts",
        }
    }
}

/// `rq/send`: a message to one user (`to`) or a group (`g`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendReq {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub g: Option<String>,
    /// Client message id: a resend with the same `cid` within 10 minutes returns the
    /// original result instead of storing a second message.
    pub cid: String,
    pub body: Box<RawValue>,
}

/// `rq/sync`: the caller's user timeline after `seq`, in pages.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncReq {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub limit: Option<u32>,
    /// Also return `[gid, head_seq]` for every group the caller is in.
    #[serde(default)]
    pub groups: bool,
}

/// `rq/pull`: a group timeline after `after` (never before the caller joined).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullReq {
    #[serde(default)]
    pub id: Option<String>,
    pub g: String,
    #[serde(default)]
    pub after: u64,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `rq/history`: a conversation backwards, newest first, from before `before`
/// (a 1:1 conversation: message ids; a group: group seqs; absent: from the newest).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryReq {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub peer: Option<String>,
    #[serde(default)]
    pub g: Option<String>,
    #[serde(default)]
    pub before: Option<u64>,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `rq/recall`: withdraw one's own message `mid` within the recall window.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecallReq {
    #[serde(default)]
    pub id: Option<String>,
    pub mid: u64,
}

/// `rq/read`: a read receipt, `{peer, mid}` for 1:1 or `{g, seq}` for a group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadReq {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub peer: Option<String>,
    #[serde(default)]
    pub mid: Option<u64>,
    #[serde(default)]
    pub g: Option<String>,
    #[serde(default)]
    pub seq: Option<u64>,
}

/// `rq/receipts`: who in group `g` has read up to `seq`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptsReq {
    #[serde(default)]
    pub id: Option<String>,
    pub g: String,
    pub seq: u64,
}

/// A parsed request.
#[derive(Debug)]
pub enum Request {
    Send(SendReq),
    Sync(SyncReq),
    Pull(PullReq),
    History(HistoryReq),
    Recall(RecallReq),
    Read(ReadReq),
    Receipts(ReceiptsReq),
}

impl Request {
    /// The 3.1.1-style request id the response must echo.
    pub fn id(&self) -> Option<&str> {
        match self {
            Request::Send(r) => r.id.as_deref(),
            Request::Sync(r) => r.id.as_deref(),
            Request::Pull(r) => r.id.as_deref(),
            Request::History(r) => r.id.as_deref(),
            Request::Recall(r) => r.id.as_deref(),
            Request::Read(r) => r.id.as_deref(),
            Request::Receipts(r) => r.id.as_deref(),
        }
    }

    pub fn method(&self) -> Method {
        match self {
            Request::Send(_) => Method::Send,
            Request::Sync(_) => Method::Sync,
            Request::Pull(_) => Method::Pull,
            Request::History(_) => Method::History,
            Request::Recall(_) => Method::Recall,
            Request::Read(_) => Method::Read,
            Request::Receipts(_) => Method::Receipts,
        }
    }
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<serde_json::Value>,
}

/// Parses a request payload. On error, returns the request id if one could be read (so the
/// error response still echoes it) and a 400 error naming the problem.
pub fn parse_request(
    method: Method,
    payload: &[u8],
) -> Result<Request, (Option<String>, ApiError)> {
    fn p<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, serde_json::Error> {
        serde_json::from_slice(payload)
    }
    let parsed = match method {
        Method::Send => p(payload).map(Request::Send),
        Method::Sync => {
            if payload.iter().all(u8::is_ascii_whitespace) {
                Ok(Request::Sync(SyncReq::default()))
            } else {
                p(payload).map(Request::Sync)
            }
        }
        Method::Pull => p(payload).map(Request::Pull),
        Method::History => p(payload).map(Request::History),
        Method::Recall => p(payload).map(Request::Recall),
        Method::Read => p(payload).map(Request::Read),
        Method::Receipts => p(payload).map(Request::Receipts),
    };
    match parsed {
        Ok(req) => match req.id() {
            Some(id) if id.len() > MAX_ID_LEN => Err((
                None,
                ApiError::bad_request(format!("\"id\" is longer than {MAX_ID_LEN} bytes")),
            )),
            _ => Ok(req),
        },
        Err(e) => {
            let id = serde_json::from_slice::<IdOnly>(payload)
                .ok()
                .and_then(|i| match i.id {
                    Some(serde_json::Value::String(s)) if s.len() <= MAX_ID_LEN => Some(s),
                    _ => None,
                });
            Err((id, ApiError::bad_request(format!("{}: {e}", method.name()))))
        }
    }
}

/// An error answer: `{"code": 403, "error": "not_member", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {error}: {message}")]
pub struct ApiError {
    /// HTTP-like status: 400, 403, 404, 409, 410, 413, 429, 500, 503.
    pub code: u16,
    /// Stable machine-readable name.
    pub error: &'static str,
    /// Human-readable detail.
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, error: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            error,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(400, "bad_request", m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(403, "forbidden", m)
    }
    pub fn not_member(m: impl Into<String>) -> Self {
        Self::new(403, "not_member", m)
    }
    pub fn not_sender(m: impl Into<String>) -> Self {
        Self::new(403, "not_sender", m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(404, "not_found", m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(409, "conflict", m)
    }
    pub fn recall_expired(m: impl Into<String>) -> Self {
        Self::new(410, "recall_expired", m)
    }
    pub fn too_large(m: impl Into<String>) -> Self {
        Self::new(413, "too_large", m)
    }
    pub fn rate_limited(m: impl Into<String>) -> Self {
        Self::new(429, "rate_limited", m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(500, "internal", m)
    }
    pub fn busy(m: impl Into<String>) -> Self {
        Self::new(503, "busy", m)
    }
}

/// Event kinds (`"k"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A message.
    Msg,
    /// The message `ref` was recalled by its sender.
    Recall,
    /// A read receipt: `from` has read up to `ref` (1:1) / group seq `ref`.
    Read,
    /// A membership or group notice; `body` says what (`{"op":..., "users":[...]}`).
    Notice,
}

/// Which timeline an event's `seq` belongs to (`"tl"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimelineKind {
    /// The receiving user's own timeline.
    #[serde(rename = "u")]
    User,
    /// The group `g`'s timeline.
    #[serde(rename = "g")]
    Group,
}

/// An event as pushed on `u/<uid>/<device>/ev` and returned by sync, pull and history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub k: EventKind,
    /// Event (message) id, unique on the node, increasing in commit order.
    pub mid: u64,
    pub tl: TimelineKind,
    /// The group, for group-timeline events and group notices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub g: Option<Arc<str>>,
    /// Position in the timeline named by `tl` (the receiver's user timeline, or the group's).
    pub seq: u64,
    /// Sender; absent for system messages and notices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Arc<str>>,
    /// Recipient of a 1:1 event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Arc<str>>,
    /// Server time, Unix milliseconds.
    pub ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<Arc<str>>,
    /// The referenced message of a recall or read receipt (1:1: mid; group read: group seq).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recalled: bool,
    /// The app's content; null once recalled.
    pub body: Option<Arc<RawValue>>,
}

impl Event {
    /// The event's JSON, as pushed.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("events always serialize")
    }
}

/// A successful answer.
#[derive(Debug, Clone)]
pub enum Response {
    /// `send`: the stored message.
    Sent { mid: u64, seq: u64, ts: i64 },
    /// `sync`, `pull`, `history`: a page of events. `seq` (sync): the last seq in the page;
    /// `groups` (sync with `groups: true`): each group of the caller and its head seq.
    Events {
        events: Vec<Event>,
        seq: Option<u64>,
        more: bool,
        groups: Option<Vec<(Arc<str>, u64)>>,
    },
    /// `recall`: the recall event's id.
    Recalled { mid: u64 },
    /// `receipts`: how many members have read up to the seq, and who (at most 500 listed).
    Receipts { count: u64, users: Vec<Arc<str>> },
    /// Done, nothing to return (`read`).
    Ok,
}

#[derive(Serialize)]
struct Out<'a, T: Serialize> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    code: u16,
    #[serde(flatten)]
    rest: T,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutBody<'a> {
    Sent {
        mid: u64,
        seq: u64,
        ts: i64,
    },
    Events {
        events: &'a [Event],
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        more: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        groups: Option<&'a [(Arc<str>, u64)]>,
    },
    Recalled {
        mid: u64,
    },
    Receipts {
        count: u64,
        users: &'a [Arc<str>],
    },
    Ok {},
    Error {
        error: &'a str,
        message: &'a str,
    },
}

/// The JSON of a response: `{"id":..., "code":0, ...}` or `{"id":..., "code":N, "error", "message"}`.
pub fn encode_response(id: Option<&str>, result: &Result<Response, ApiError>) -> Vec<u8> {
    let (code, rest) = match result {
        Ok(Response::Sent { mid, seq, ts }) => (
            0,
            OutBody::Sent {
                mid: *mid,
                seq: *seq,
                ts: *ts,
            },
        ),
        Ok(Response::Events {
            events,
            seq,
            more,
            groups,
        }) => (
            0,
            OutBody::Events {
                events,
                seq: *seq,
                more: *more,
                groups: groups.as_deref(),
            },
        ),
        Ok(Response::Recalled { mid }) => (0, OutBody::Recalled { mid: *mid }),
        Ok(Response::Receipts { count, users }) => (
            0,
            OutBody::Receipts {
                count: *count,
                users,
            },
        ),
        Ok(Response::Ok) => (0, OutBody::Ok {}),
        Err(e) => (
            e.code,
            OutBody::Error {
                error: e.error,
                message: &e.message,
            },
        ),
    };
    serde_json::to_vec(&Out { id, code, rest }).expect("responses always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("alice"));
        assert!(valid_id("a.b@c-d_e"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("a+b"));
        assert!(!valid_id("#"));
        assert!(!valid_id(&"x".repeat(65)));
    }

    #[test]
    fn parse_send_keeps_body_bytes() {
        let r = parse_request(
            Method::Send,
            br#"{"id":"7","to":"bob","cid":"c1","body":{"text":"hi", "n": 1}}"#,
        )
        .unwrap();
        let Request::Send(s) = r else { panic!() };
        assert_eq!(s.id.as_deref(), Some("7"));
        assert_eq!(s.body.get(), r#"{"text":"hi", "n": 1}"#);
    }

    #[test]
    fn parse_error_keeps_id() {
        let (id, e) = parse_request(Method::Send, br#"{"id":"9","to":"bob"}"#).unwrap_err();
        assert_eq!(id.as_deref(), Some("9"));
        assert_eq!(e.code, 400);
        let (id, _) = parse_request(Method::Pull, b"not json").unwrap_err();
        assert_eq!(id, None);
        assert!(matches!(
            parse_request(Method::Sync, b""),
            Ok(Request::Sync(SyncReq { seq: 0, .. }))
        ));
    }

    #[test]
    fn encode() {
        let out = encode_response(
            Some("1"),
            &Ok(Response::Sent {
                mid: 5,
                seq: 2,
                ts: 9,
            }),
        );
        assert_eq!(out, br#"{"id":"1","code":0,"mid":5,"seq":2,"ts":9}"#);
        let out = encode_response(None, &Ok(Response::Ok));
        assert_eq!(out, br#"{"code":0}"#);
        let out = encode_response(None, &Err(ApiError::not_member("not in g1")));
        assert_eq!(
            out,
            br#"{"code":403,"error":"not_member","message":"not in g1"}"#
        );
        let ev = Event {
            k: EventKind::Msg,
            mid: 3,
            tl: TimelineKind::User,
            g: None,
            seq: 1,
            from: Some("a".into()),
            to: Some("b".into()),
            ts: 1,
            cid: Some("c".into()),
            reference: None,
            recalled: false,
            body: Some(RawValue::from_string("{\"t\":1}".into()).unwrap().into()),
        };
        let out = encode_response(
            None,
            &Ok(Response::Events {
                events: vec![ev],
                seq: Some(1),
                more: false,
                groups: None,
            }),
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"code":0,"events":[{"k":"msg","mid":3,"tl":"u","seq":1,"from":"a","to":"b","ts":1,"cid":"c","body":{"t":1}}],"seq":1,"more":false}"#
        );
    }
}
