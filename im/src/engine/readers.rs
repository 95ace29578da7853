//! Reader threads (`im-read-N`): `sync`, `pull`, `history` and `receipts` on their own
//! read-only store connections, with membership checked against the shared directory, so a
//! big sync never stalls commits.

use std::sync::Arc;

use crossbeam_channel::Receiver;
use parking_lot::RwLock;

use super::core::{pair_key, Directory};
use super::store::{Page, StoreError, StoreReader};
use super::{Caller, Reply};
use crate::proto::{valid_id, ApiError, HistoryReq, PullReq, ReceiptsReq, Response, SyncReq};

/// Default and largest page.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 500;
/// Most users listed by `receipts`.
pub const MAX_RECEIPT_USERS: usize = 500;

pub(crate) enum ReadOp {
    Sync(SyncReq),
    Pull(PullReq),
    History(HistoryReq),
    Receipts(ReceiptsReq),
    Stop,
}

pub(crate) struct ReadJob {
    pub caller: Caller,
    pub op: ReadOp,
    /// Admin rights: any group's history and receipts without membership.
    pub admin: bool,
    pub reply: Reply,
}

impl ReadJob {
    pub(crate) fn stop() -> ReadJob {
        ReadJob {
            caller: Caller {
                user: None,
                device: "".into(),
            },
            op: ReadOp::Stop,
            admin: true,
            reply: Box::new(|_| {}),
        }
    }
}

fn limit(l: Option<u32>) -> usize {
    l.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT) as usize
}

fn store_err(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "store read failed");
    ApiError::internal("store read failed")
}

fn need_user(caller: &Caller) -> Result<&Arc<str>, ApiError> {
    caller
        .user
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("this request needs a user"))
}

/// The group's joined seq for the caller (0 for the admin), or why not.
fn access(dir: &RwLock<Directory>, g: &str, caller: &Caller, admin: bool) -> Result<u64, ApiError> {
    if !valid_id(g) {
        return Err(ApiError::bad_request("invalid group id"));
    }
    let dir = dir.read();
    let Some(entry) = dir.group(g) else {
        return Err(ApiError::not_found(format!("no group {g}")));
    };
    match &caller.user {
        Some(u) => match entry.members.get(u) {
            Some(j) => Ok(*j),
            None if admin => Ok(0),
            None => Err(ApiError::not_member(format!("not a member of {g}"))),
        },
        None if admin => Ok(0),
        None => Err(ApiError::not_member(format!("not a member of {g}"))),
    }
}

fn events(page: Page, viewer: Option<&str>, seq: Option<u64>) -> Response {
    let (rows, more) = page;
    Response::Events {
        events: rows.iter().map(|r| r.render(viewer)).collect(),
        seq,
        more,
        groups: None,
    }
}

fn handle(
    reader: &mut dyn StoreReader,
    dir: &RwLock<Directory>,
    caller: &Caller,
    op: ReadOp,
    admin: bool,
) -> Result<Response, ApiError> {
    match op {
        ReadOp::Stop => Err(ApiError::busy("stopping")),
        ReadOp::Sync(r) => {
            let user = need_user(caller)?;
            let (rows, more) = reader
                .user_timeline(user, r.seq, limit(r.limit))
                .map_err(store_err)?;
            let last = rows
                .last()
                .map(|e| e.render(Some(user)).seq)
                .unwrap_or(r.seq);
            let groups = r.groups.then(|| {
                let d = dir.read();
                d.groups_of(user)
                    .into_iter()
                    .map(|g| {
                        let head = d.groups.get(&g).map_or(0, |e| e.head);
                        (g, head)
                    })
                    .collect()
            });
            Ok(Response::Events {
                events: rows.iter().map(|e| e.render(Some(user))).collect(),
                seq: Some(last),
                more,
                groups,
            })
        }
        ReadOp::Pull(r) => {
            let joined = access(dir, &r.g, caller, admin)?;
            let page = reader
                .group_timeline(&r.g, r.after.max(joined), limit(r.limit))
                .map_err(store_err)?;
            Ok(events(page, None, None))
        }
        ReadOp::History(r) => {
            let before = r.before.unwrap_or(u64::MAX);
            match (&r.peer, &r.g) {
                (Some(peer), None) => {
                    let user = need_user(caller)?;
                    if !valid_id(peer) {
                        return Err(ApiError::bad_request("invalid peer id"));
                    }
                    if !dir.read().users.contains_key(peer.as_str()) {
                        return Err(ApiError::not_found(format!("no user {peer}")));
                    }
                    let page = reader
                        .pair_history(&pair_key(user, peer), before, limit(r.limit))
                        .map_err(store_err)?;
                    Ok(events(page, Some(user), None))
                }
                (None, Some(g)) => {
                    let joined = access(dir, g, caller, admin)?;
                    let page = reader
                        .group_history(g, before, joined, limit(r.limit))
                        .map_err(store_err)?;
                    Ok(events(page, None, None))
                }
                _ => Err(ApiError::bad_request(
                    "history needs exactly one of \"peer\", \"g\"",
                )),
            }
        }
        ReadOp::Receipts(r) => {
            access(dir, &r.g, caller, admin)?;
            let readers = reader.read_cursors(&r.g, r.seq).map_err(store_err)?;
            let d = dir.read();
            let members = d.group(&r.g).map(|e| &e.members);
            let mut users: Vec<Arc<str>> = readers
                .into_iter()
                .filter(|u| members.is_some_and(|m| m.contains_key(u)))
                .collect();
            users.sort();
            let count = users.len() as u64;
            users.truncate(MAX_RECEIPT_USERS);
            Ok(Response::Receipts { count, users })
        }
    }
}

/// A reader thread's loop.
pub(crate) fn run(
    mut reader: Box<dyn StoreReader>,
    rx: Receiver<ReadJob>,
    dir: Arc<RwLock<Directory>>,
) {
    while let Ok(job) = rx.recv() {
        if matches!(job.op, ReadOp::Stop) {
            break;
        }
        let r = handle(&mut *reader, &dir, &job.caller, job.op, job.admin);
        (job.reply)(r);
    }
}
