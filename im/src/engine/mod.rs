//! The messaging engine: users, groups, timelines and messages, durable in the store.
//!
//! CONTRACT (step 0 skeleton): the signatures in this file are what the connection layer
//! (`server/`), the router and the admin API call. Bodies are filled in by the data work.
//!
//! Threads: one store-writer thread owns the sans-IO business state and the write
//! connection (group commit: it takes every queued command, applies them in memory, commits
//! one transaction, then replies and hands committed events to the [`Sink`] in commit
//! order); reader threads answer sync/pull/history. Nothing here blocks a tokio worker.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::proto::{ApiError, Request, Response};

/// Settings the engine needs (from `[im]`).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// SQLite file; `None` keeps everything in memory (tests).
    pub database: Option<PathBuf>,
    /// Largest `body`, in bytes of its JSON.
    pub max_message_bytes: usize,
    /// How long after sending a message its sender may recall it.
    pub recall_window: Duration,
    /// Per-user sustained request rate (token bucket) and burst; 0 disables.
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    /// Most members a group may have.
    pub group_max_members: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            database: None,
            max_message_bytes: 16 * 1024,
            recall_window: Duration::from_secs(120),
            rate_limit_per_sec: 20,
            rate_limit_burst: 100,
            group_max_members: 10_000,
        }
    }
}

/// Who is calling: the connection's authenticated user and device, or an admin acting as
/// a user (`device` = "admin") or as the system (`user` = None).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    pub user: Option<Arc<str>>,
    pub device: Arc<str>,
}

/// Where the answer to a submitted request goes. Called exactly once, from an engine thread.
pub type Reply = Box<dyn FnOnce(Result<Response, ApiError>) + Send + 'static>;

/// What a committed event needs to reach: serialized once per receiving user (1:1 events
/// carry that user's own seq) or once per group (group events carry the group seq).
#[derive(Debug, Clone)]
pub enum Delivery {
    /// Push `payload` to every online device of each user, except `skip` (the sending device,
    /// which got the response instead).
    Users {
        to: Vec<(Arc<str>, Bytes)>,
        skip: Option<(Arc<str>, Arc<str>)>,
    },
    /// Push `payload` to every online device of every member of `group`, except `skip`.
    Group {
        group: Arc<str>,
        payload: Bytes,
        skip: Option<(Arc<str>, Arc<str>)>,
    },
}

/// A committed change to group membership the router must mirror (which online users are
/// in which group). Emitted before any event delivered to the group after the change.
#[derive(Debug, Clone)]
pub enum MembershipChange {
    Added { group: Arc<str>, users: Vec<Arc<str>> },
    Removed { group: Arc<str>, users: Vec<Arc<str>> },
    Dismissed { group: Arc<str> },
}

/// Receives committed events, in commit order, from the engine's writer thread. Must not
/// block (the router queues).
pub trait Sink: Send + Sync + 'static {
    fn deliver(&self, delivery: Delivery);
    fn membership(&self, change: MembershipChange);
}

/// What the token check needs to know about a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserState {
    pub disabled: bool,
    /// Tokens issued (iat, Unix seconds) before this are revoked.
    pub tokens_after: i64,
}

/// Errors opening the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("database {path}: {source}")]
    Database {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Handle to the engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    _private: Arc<()>,
}

impl Engine {
    /// Opens (creating if needed) the store, loads the directory, starts the threads.
    pub fn open(cfg: EngineConfig, sink: Arc<dyn Sink>) -> Result<Engine, EngineError> {
        let _ = (cfg, sink);
        todo!("engine")
    }

    /// Queues a client request; `reply` gets the answer once it is durable (send/recall/read)
    /// or read (sync/pull/history/receipts). Never blocks: a full queue answers 503 at once.
    pub fn submit(&self, caller: Caller, req: Request, reply: Reply) {
        let _ = (caller, req, reply);
        todo!("engine")
    }

    /// [`Engine::submit`] for async callers (admin API).
    pub async fn call(&self, caller: Caller, req: Request) -> Result<Response, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            caller,
            req,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await
            .unwrap_or_else(|_| Err(ApiError::busy("engine stopped")))
    }

    /// A user's state for the token check; `None` if the user does not exist.
    pub fn user(&self, uid: &str) -> Option<UserState> {
        let _ = uid;
        todo!("engine")
    }

    /// The groups a user is a member of (the router's view when the user comes online).
    pub fn groups_of(&self, uid: &str) -> Vec<Arc<str>> {
        let _ = uid;
        todo!("engine")
    }

    /// Stops accepting commands, commits what is queued, joins the threads.
    pub fn shutdown(&self) {
        todo!("engine")
    }
}
