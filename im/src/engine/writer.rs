//! The store writer thread (`im-store`): group commit. Blocks for one command, drains up to
//! [`MAX_BATCH`] more, applies each to the [`Core`] in memory, commits the batch in one
//! transaction, then — in commit order — hands each command's effects to the [`Sink`] and
//! replies. A failed commit answers 503 to the whole batch and reloads the Core from the
//! store.

use std::sync::Arc;

use crossbeam_channel::Receiver;
use parking_lot::RwLock;

use super::core::{Core, CoreConfig, Directory, Effect, GroupSpec, Target, UserSpec, CID_TTL_MS};
use super::store::Store;
use super::{now_ms, Caller, Reply, Sink};
use crate::proto::{ApiError, Request, Response};

/// Most commands in one commit.
pub const MAX_BATCH: usize = 1024;

/// An admin write.
pub(crate) enum AdminOp {
    UpsertUsers(Vec<UserSpec>),
    Revoke {
        uid: String,
        after: i64,
        disable: bool,
    },
    CreateGroup(GroupSpec),
    Dismiss(String),
    Members {
        gid: String,
        add: Vec<String>,
        remove: Vec<String>,
    },
}

/// Where an admin write's answer goes: two counts (meaning per op).
pub(crate) type AdminReply = Box<dyn FnOnce(Result<(usize, usize), ApiError>) + Send + 'static>;

/// A command for the writer.
pub(crate) enum Command {
    /// `send`, `recall` or `read`.
    Client {
        caller: Caller,
        req: Request,
        reply: Reply,
    },
    Admin {
        op: AdminOp,
        reply: AdminReply,
    },
    Stop,
}

enum Done {
    Client(Reply, Result<Response, ApiError>),
    Admin(AdminReply, Result<(usize, usize), ApiError>),
}

impl Done {
    fn is_ok(&self) -> bool {
        match self {
            Done::Client(_, r) => r.is_ok(),
            Done::Admin(_, r) => r.is_ok(),
        }
    }

    fn finish(self, fail: Option<&ApiError>) {
        match (self, fail) {
            (Done::Client(reply, _), Some(e)) => reply(Err(e.clone())),
            (Done::Client(reply, r), None) => reply(r),
            (Done::Admin(reply, _), Some(e)) => reply(Err(e.clone())),
            (Done::Admin(reply, r), None) => reply(r),
        }
    }
}

pub(crate) struct Writer {
    pub core: Core,
    pub core_cfg: CoreConfig,
    pub store: Box<dyn Store>,
    pub dir: Arc<RwLock<Directory>>,
    pub sink: Arc<dyn Sink>,
    pub metrics: Option<Arc<crate::metrics::ImMetrics>>,
}

fn client(
    core: &mut Core,
    now: i64,
    caller: &Caller,
    req: Request,
) -> Result<(Response, Vec<Effect>), ApiError> {
    match req {
        Request::Send(s) => {
            let target = match (s.to, s.g) {
                (Some(to), None) => Target::User(to.into()),
                (None, Some(g)) => Target::Group(g.into()),
                _ => {
                    return Err(ApiError::bad_request(
                        "send needs exactly one of \"to\", \"g\"",
                    ))
                }
            };
            core.send(now, caller, target, &s.cid, Arc::from(s.body))
        }
        Request::Recall(r) => core.recall(now, caller, r.mid),
        Request::Read(r) => core.read(now, caller, &r),
        _ => Err(ApiError::internal("not a write")),
    }
}

fn admin(
    core: &mut Core,
    now: i64,
    op: AdminOp,
) -> Result<((usize, usize), Vec<Effect>), ApiError> {
    match op {
        AdminOp::UpsertUsers(u) => core.upsert_users(now, &u).map(|n| ((n, 0), Vec::new())),
        AdminOp::Revoke {
            uid,
            after,
            disable,
        } => core
            .revoke_user(&uid, after, disable)
            .map(|()| ((0, 0), Vec::new())),
        AdminOp::CreateGroup(spec) => core.create_group(now, &spec).map(|e| ((0, 0), e)),
        AdminOp::Dismiss(gid) => core.dismiss_group(now, &gid).map(|e| ((0, 0), e)),
        AdminOp::Members { gid, add, remove } => core.change_members(now, &gid, &add, &remove),
    }
}

impl Writer {
    pub(crate) fn run(mut self, rx: Receiver<Command>) {
        let mut done: Vec<(Done, Vec<Effect>)> = Vec::with_capacity(MAX_BATCH);
        loop {
            let Ok(first) = rx.recv() else {
                break;
            };
            let mut stop = false;
            let now = now_ms();
            self.core.prune(now);
            let mut next = Some(first);
            let mut n = 0;
            while let Some(cmd) = next.take() {
                n += 1;
                match cmd {
                    Command::Stop => stop = true,
                    Command::Client { caller, req, reply } => {
                        match client(&mut self.core, now, &caller, req) {
                            Ok((r, e)) => done.push((Done::Client(reply, Ok(r)), e)),
                            Err(e) => done.push((Done::Client(reply, Err(e)), Vec::new())),
                        }
                    }
                    Command::Admin { op, reply } => match admin(&mut self.core, now, op) {
                        Ok((r, e)) => done.push((Done::Admin(reply, Ok(r)), e)),
                        Err(e) => done.push((Done::Admin(reply, Err(e)), Vec::new())),
                    },
                }
                if n < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            let batch = self.core.take_batch();
            let mut fail = None;
            if !batch.is_empty() {
                let started = std::time::Instant::now();
                let committed = self.store.commit(&batch);
                if let Some(m) = &self.metrics {
                    m.store_commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    m.store_batch_commands.observe(n as f64);
                    m.store_queue_depth.set(rx.len() as i64);
                }
                match committed {
                    Ok(()) => {
                        tracing::trace!(commands = n, events = batch.events.len(), "committed");
                        self.dir.write().apply_batch(&batch)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, commands = done.len(), "commit failed");
                        fail = Some(ApiError::busy("store write failed"));
                        self.reload();
                    }
                }
            }
            for (d, effects) in done.drain(..) {
                // Effects first: when a caller has its answer, the router already has the
                // events and membership changes of that command.
                if d.is_ok() && fail.is_none() {
                    for e in effects {
                        match e {
                            Effect::Deliver(d) => self.sink.deliver(d),
                            Effect::Membership(m) => self.sink.membership(m),
                        }
                    }
                }
                d.finish(fail.as_ref());
            }
            let started = std::time::Instant::now();
            self.store.maintain();
            if let Some(m) = &self.metrics {
                m.store_maintain_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            if stop {
                break;
            }
        }
        self.store.close();
        tracing::debug!("engine writer stopped");
    }

    /// Rebuilds the Core (and the shared directory) from the store after a failed commit.
    fn reload(&mut self) {
        let keep = self.core_cfg.recall_window_ms.max(CID_TTL_MS);
        match self.store.load(now_ms().saturating_sub(keep)) {
            Ok(loaded) => {
                self.core = Core::new(self.core_cfg.clone(), loaded);
                *self.dir.write() = self.core.dir.clone();
            }
            Err(e) => tracing::error!(error = %e, "reloading the engine state failed"),
        }
    }
}
