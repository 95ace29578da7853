//! The messaging engine: users, groups, timelines and messages, durable in the store.
//!
//! The signatures of the step-0 contract are what the connection layer (`server/`), the
//! router and the admin API call; the admin-side methods (`upsert_users`, `create_group`,
//! ...) were added for `admin/routes.rs`.
//!
//! Threads: one store-writer thread owns the sans-IO business state and the write
//! connection (group commit: it takes every queued command, applies them in memory, commits
//! one transaction, then replies and hands committed events to the [`Sink`] in commit
//! order); reader threads answer sync/pull/history. Nothing here blocks a tokio worker.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};
use parking_lot::{Mutex, RwLock};

use crate::proto::{ApiError, Request, Response};

pub mod core;
pub mod readers;
pub mod store;
pub mod writer;

use self::core::{Core, CoreConfig, RateLimiter};
pub use self::core::{Directory, GroupRow, GroupSpec, UserRow, UserSpec};
pub use self::store::sqlite::{IndexMode, SqliteStore};
pub use self::store::Store;

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
    Added {
        group: Arc<str>,
        users: Vec<Arc<str>>,
    },
    Removed {
        group: Arc<str>,
        users: Vec<Arc<str>>,
    },
    Dismissed {
        group: Arc<str>,
    },
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
    inner: Arc<Inner>,
}

struct Inner {
    tx: Sender<writer::Command>,
    rtx: Sender<readers::ReadJob>,
    dir: Arc<RwLock<Directory>>,
    limiter: Mutex<RateLimiter>,
    closed: AtomicBool,
    readers: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A page of members (uid, joined seq) and whether more follow.
pub type MembersPage = (Vec<(Arc<str>, u64)>, bool);

/// Default depth of the writer's command queue (§4.1).
pub const WRITE_QUEUE: usize = 16_384;
const READ_QUEUE: usize = 4_096;
const READERS: usize = 2;

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn busy_reply(reply: Reply, why: &str) {
    reply(Err(ApiError::busy(why)))
}

impl Engine {
    /// Opens (creating if needed) the store, loads the directory, starts the threads.
    pub fn open(cfg: EngineConfig, sink: Arc<dyn Sink>) -> Result<Engine, EngineError> {
        Self::open_with_queue(cfg, sink, WRITE_QUEUE)
    }

    /// [`Engine::open`] with a writer queue of `queue` commands (tests use tiny ones).
    pub fn open_with_queue(
        cfg: EngineConfig,
        sink: Arc<dyn Sink>,
        queue: usize,
    ) -> Result<Engine, EngineError> {
        let db_err = |source| EngineError::Database {
            path: cfg
                .database
                .as_ref()
                .map_or(":memory:".into(), |p| p.display().to_string()),
            source,
        };
        let store = SqliteStore::open(cfg.database.as_deref()).map_err(db_err)?;
        Self::open_store(cfg, Box::new(store), sink, queue)
    }

    /// Starts the engine on any [`Store`].
    pub fn open_store(
        cfg: EngineConfig,
        mut store: Box<dyn Store>,
        sink: Arc<dyn Sink>,
        queue: usize,
    ) -> Result<Engine, EngineError> {
        let core_cfg = CoreConfig {
            max_message_bytes: cfg.max_message_bytes,
            recall_window_ms: cfg.recall_window.as_millis().min(i64::MAX as u128) as i64,
            group_max_members: cfg.group_max_members,
        };
        let keep = core_cfg.recall_window_ms.max(core::CID_TTL_MS);
        let loaded = store
            .load(now_ms().saturating_sub(keep))
            .map_err(|e| EngineError::Io(std::io::Error::other(e.to_string())))?;
        let core = Core::new(core_cfg.clone(), loaded);
        let dir = Arc::new(RwLock::new(core.dir.clone()));
        let (tx, rx) = crossbeam_channel::bounded(queue.max(1));
        let (rtx, rrx) = crossbeam_channel::bounded(READ_QUEUE);
        let mut threads = Vec::new();
        for i in 0..READERS {
            let reader = store
                .reader()
                .map_err(|e| EngineError::Io(std::io::Error::other(e.to_string())))?;
            let (rrx, dir) = (rrx.clone(), dir.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("im-read-{i}"))
                    .spawn(move || readers::run(reader, rrx, dir))?,
            );
        }
        let w = writer::Writer {
            core,
            core_cfg,
            store,
            dir: dir.clone(),
            sink,
        };
        threads.push(
            std::thread::Builder::new()
                .name("im-store".into())
                .spawn(move || w.run(rx))?,
        );
        Ok(Engine {
            inner: Arc::new(Inner {
                tx,
                rtx,
                dir,
                limiter: Mutex::new(RateLimiter::new(
                    cfg.rate_limit_per_sec,
                    cfg.rate_limit_burst,
                )),
                closed: AtomicBool::new(false),
                readers: READERS,
                threads: Mutex::new(threads),
            }),
        })
    }

    /// Queues a client request; `reply` gets the answer once it is durable (send/recall/read)
    /// or read (sync/pull/history/receipts). Never blocks: a full queue answers 503 at once.
    pub fn submit(&self, caller: Caller, req: Request, reply: Reply) {
        self.dispatch(caller, req, reply, false)
    }

    fn dispatch(&self, caller: Caller, req: Request, reply: Reply, admin: bool) {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return busy_reply(reply, "shutting down");
        }
        if !admin {
            if let Some(u) = &caller.user {
                if !inner.limiter.lock().allow(u, now_ms()) {
                    return reply(Err(ApiError::rate_limited("too many requests")));
                }
            }
        }
        let read = match req {
            Request::Sync(r) => readers::ReadOp::Sync(r),
            Request::Pull(r) => readers::ReadOp::Pull(r),
            Request::History(r) => readers::ReadOp::History(r),
            Request::Receipts(r) => readers::ReadOp::Receipts(r),
            req @ (Request::Send(_) | Request::Recall(_) | Request::Read(_)) => {
                let cmd = writer::Command::Client { caller, req, reply };
                return match inner.tx.try_send(cmd) {
                    Ok(()) => {}
                    Err(TrySendError::Full(writer::Command::Client { reply, .. })) => {
                        busy_reply(reply, "store queue full")
                    }
                    Err(TrySendError::Disconnected(writer::Command::Client { reply, .. })) => {
                        busy_reply(reply, "engine stopped")
                    }
                    Err(_) => {}
                };
            }
        };
        let job = readers::ReadJob {
            caller,
            op: read,
            admin,
            reply,
        };
        match inner.rtx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(j)) => busy_reply(j.reply, "read queue full"),
            Err(TrySendError::Disconnected(j)) => busy_reply(j.reply, "engine stopped"),
        }
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

    /// Like [`Engine::call`] with the admin's rights: no rate limit; a system caller
    /// (`user: None`) may recall anyone's message (within the recall window) and read any
    /// group's history and receipts.
    pub async fn admin_call(&self, caller: Caller, req: Request) -> Result<Response, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.dispatch(
            caller,
            req,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
            true,
        );
        rx.await
            .unwrap_or_else(|_| Err(ApiError::busy("engine stopped")))
    }

    async fn admin_write(&self, op: writer::AdminOp) -> Result<(usize, usize), ApiError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(ApiError::busy("shutting down"));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reply: writer::AdminReply = Box::new(move |r| {
            let _ = tx.send(r);
        });
        match self.inner.tx.try_send(writer::Command::Admin { op, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ApiError::busy("store queue full")),
            Err(TrySendError::Disconnected(_)) => return Err(ApiError::busy("engine stopped")),
        }
        rx.await
            .unwrap_or_else(|_| Err(ApiError::busy("engine stopped")))
    }

    /// Admin: creates or updates up to 1,000 users; how many.
    pub async fn upsert_users(&self, users: Vec<UserSpec>) -> Result<usize, ApiError> {
        self.admin_write(writer::AdminOp::UpsertUsers(users))
            .await
            .map(|(n, _)| n)
    }

    /// Admin: deletes a user: disables it and revokes its tokens (history is kept).
    pub async fn delete_user(&self, uid: &str) -> Result<(), ApiError> {
        self.admin_write(writer::AdminOp::Revoke {
            uid: uid.to_owned(),
            after: now_ms() / 1000 + 1,
            disable: true,
        })
        .await
        .map(drop)
    }

    /// Admin: revokes the user's tokens issued before `after` (Unix seconds).
    pub async fn revoke_tokens(&self, uid: &str, after: i64) -> Result<(), ApiError> {
        self.admin_write(writer::AdminOp::Revoke {
            uid: uid.to_owned(),
            after,
            disable: false,
        })
        .await
        .map(drop)
    }

    /// Admin: creates a group with its owner and initial members.
    pub async fn create_group(&self, spec: GroupSpec) -> Result<(), ApiError> {
        self.admin_write(writer::AdminOp::CreateGroup(spec))
            .await
            .map(drop)
    }

    /// Admin: dismisses a group.
    pub async fn dismiss_group(&self, gid: &str) -> Result<(), ApiError> {
        self.admin_write(writer::AdminOp::Dismiss(gid.to_owned()))
            .await
            .map(drop)
    }

    /// Admin: adds and removes members (≤ 1,000 each); (added, removed) not counting no-ops.
    pub async fn change_members(
        &self,
        gid: &str,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> Result<(usize, usize), ApiError> {
        self.admin_write(writer::AdminOp::Members {
            gid: gid.to_owned(),
            add,
            remove,
        })
        .await
    }

    /// A user as committed (admin `GET /v1/users/{uid}`).
    pub fn user_info(&self, uid: &str) -> Option<UserRow> {
        self.inner.dir.read().users.get(uid).cloned()
    }

    /// A live group as committed: its row, member count and head seq.
    pub fn group_info(&self, gid: &str) -> Option<(GroupRow, usize, u64)> {
        let dir = self.inner.dir.read();
        dir.group(gid)
            .map(|g| (g.row.clone(), g.members.len(), g.head))
    }

    /// A page of a live group's members (uid, joined seq) after `after`, in uid order, and
    /// whether more follow.
    pub fn members(
        &self,
        gid: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, ApiError> {
        let dir = self.inner.dir.read();
        let g = dir
            .group(gid)
            .ok_or_else(|| ApiError::not_found(format!("no group {gid}")))?;
        let limit = limit.clamp(1, 1000);
        let iter: Box<dyn Iterator<Item = (&Arc<str>, &u64)>> = match after {
            Some(a) => Box::new(
                g.members
                    .range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            ),
            None => Box::new(g.members.iter()),
        };
        let mut out: Vec<(Arc<str>, u64)> =
            iter.take(limit + 1).map(|(u, j)| (u.clone(), *j)).collect();
        let more = out.len() > limit;
        out.truncate(limit);
        Ok((out, more))
    }

    /// A user's state for the token check; `None` if the user does not exist.
    pub fn user(&self, uid: &str) -> Option<UserState> {
        self.inner.dir.read().users.get(uid).map(|u| UserState {
            disabled: u.disabled,
            tokens_after: u.tokens_after,
        })
    }

    /// The groups a user is a member of (the router's view when the user comes online).
    pub fn groups_of(&self, uid: &str) -> Vec<Arc<str>> {
        self.inner.dir.read().groups_of(uid)
    }

    /// Stops accepting commands, commits what is queued, joins the threads.
    pub fn shutdown(&self) {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = inner.tx.send(writer::Command::Stop);
        for _ in 0..inner.readers {
            let _ = inner.rtx.send(readers::ReadJob::stop());
        }
        let threads = std::mem::take(&mut *inner.threads.lock());
        for t in threads {
            if t.join().is_err() {
                tracing::error!("an engine thread panicked");
            }
        }
    }
}
