//! The engine's sans-IO business state, owned by the writer thread: the directory (users,
//! groups, members), sequence counters, the recent-`cid` cache (send dedupe), the recall
//! index and the rules of `send`, `recall`, `read` and the admin writes.
//!
//! Every operation validates against the in-memory state, changes it, and appends the rows
//! to persist to the current [`Batch`]; the writer commits the batch in one transaction. If
//! the commit fails the writer throws the Core away and reloads it from the store.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::{Caller, Delivery, MembershipChange};
use crate::proto::{valid_id, ApiError, Event, EventKind, ReadReq, Response, TimelineKind};

/// How long a `cid` is remembered for dedupe.
pub const CID_TTL_MS: i64 = 10 * 60 * 1000;
/// Most user ids in one notice body.
pub const NOTICE_CHUNK: usize = 500;
/// Most users or members per admin call.
pub const MAX_BATCH: usize = 1000;

/// One stored event. Which timelines it is on follows from the seqs: the sender's user
/// timeline (`seq_from`), the recipient's (`seq_to`), the group's (`gseq`).
#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: u64,
    pub ts: i64,
    pub kind: EventKind,
    pub sender: Option<Arc<str>>,
    pub to: Option<Arc<str>>,
    pub group: Option<Arc<str>>,
    pub cid: Option<Arc<str>>,
    pub reference: Option<u64>,
    pub body: Option<Arc<RawValue>>,
    pub recalled: bool,
    pub seq_from: Option<u64>,
    pub seq_to: Option<u64>,
    pub gseq: Option<u64>,
}

/// The key of a 1:1 conversation (ids cannot contain a space).
pub fn pair_key(a: &str, b: &str) -> String {
    if a <= b {
        format!("{a} {b}")
    } else {
        format!("{b} {a}")
    }
}

impl EventRow {
    /// The 1:1 conversation a message belongs to (pair history holds messages only).
    pub fn pair(&self) -> Option<String> {
        match (&self.sender, &self.to, &self.group, self.kind) {
            (Some(s), Some(t), None, EventKind::Msg) => Some(pair_key(s, t)),
            _ => None,
        }
    }

    /// The event as seen on `viewer`'s user timeline, or on the group timeline (`None`).
    pub fn render(&self, viewer: Option<&str>) -> Event {
        let (tl, seq) = match viewer {
            None => (TimelineKind::Group, self.gseq.unwrap_or(0)),
            Some(u) => {
                let seq = if self.to.as_deref() == Some(u) && self.seq_to.is_some() {
                    self.seq_to
                } else {
                    self.seq_from.or(self.seq_to)
                };
                (TimelineKind::User, seq.unwrap_or(0))
            }
        };
        Event {
            k: self.kind,
            mid: self.id,
            tl,
            g: self.group.clone(),
            seq,
            from: self.sender.clone(),
            to: self.to.clone(),
            ts: self.ts,
            cid: self.cid.clone(),
            reference: self.reference,
            recalled: self.recalled,
            body: if self.recalled {
                None
            } else {
                self.body.clone()
            },
        }
    }
}

/// A user as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    pub uid: Arc<str>,
    pub name: Option<String>,
    pub extra: Option<serde_json::Value>,
    pub disabled: bool,
    pub tokens_after: i64,
    pub created: i64,
}

/// A group as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    pub gid: Arc<str>,
    pub name: Option<String>,
    pub owner: Option<Arc<str>>,
    pub extra: Option<serde_json::Value>,
    pub created: i64,
    pub dismissed: bool,
}

/// A group in the directory: its row, members (uid → joined seq) and head seq.
#[derive(Debug, Clone)]
pub struct GroupEntry {
    pub row: GroupRow,
    pub members: BTreeMap<Arc<str>, u64>,
    pub head: u64,
}

/// A change to the directory, applied by the Core at once and by the shared directory and
/// the store after commit, in order.
#[derive(Debug, Clone)]
pub enum DirOp {
    User(UserRow),
    Group(GroupRow),
    AddMember {
        group: Arc<str>,
        user: Arc<str>,
        joined: u64,
    },
    RemoveMember {
        group: Arc<str>,
        user: Arc<str>,
    },
    /// Marks the group dismissed and drops all its members.
    Dismiss(Arc<str>),
}

/// Users, groups and members. The Core's copy changes as commands apply; the shared copy
/// (read by connections and readers) changes after commit.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub users: HashMap<Arc<str>, UserRow>,
    pub groups: HashMap<Arc<str>, GroupEntry>,
    pub user_groups: HashMap<Arc<str>, BTreeSet<Arc<str>>>,
}

impl Directory {
    pub fn apply(&mut self, op: &DirOp) {
        match op {
            DirOp::User(u) => {
                self.users.insert(u.uid.clone(), u.clone());
            }
            DirOp::Group(g) => match self.groups.get_mut(&g.gid) {
                Some(e) => e.row = g.clone(),
                None => {
                    self.groups.insert(
                        g.gid.clone(),
                        GroupEntry {
                            row: g.clone(),
                            members: BTreeMap::new(),
                            head: 0,
                        },
                    );
                }
            },
            DirOp::AddMember {
                group,
                user,
                joined,
            } => {
                if let Some(e) = self.groups.get_mut(group) {
                    e.members.insert(user.clone(), *joined);
                    self.user_groups
                        .entry(user.clone())
                        .or_default()
                        .insert(group.clone());
                }
            }
            DirOp::RemoveMember { group, user } => {
                if let Some(e) = self.groups.get_mut(group) {
                    e.members.remove(user);
                }
                self.unlink(user, group);
            }
            DirOp::Dismiss(group) => {
                if let Some(e) = self.groups.get_mut(group) {
                    e.row.dismissed = true;
                    let members = std::mem::take(&mut e.members);
                    for u in members.keys() {
                        self.unlink(u, group);
                    }
                }
            }
        }
    }

    fn unlink(&mut self, user: &Arc<str>, group: &Arc<str>) {
        if let Some(set) = self.user_groups.get_mut(user) {
            set.remove(group);
            if set.is_empty() {
                self.user_groups.remove(user);
            }
        }
    }

    /// Applies a committed batch: directory ops, then group heads.
    pub fn apply_batch(&mut self, batch: &Batch) {
        for op in &batch.ops {
            self.apply(op);
        }
        for ev in &batch.events {
            if let (Some(g), Some(s)) = (&ev.group, ev.gseq) {
                if let Some(e) = self.groups.get_mut(g) {
                    e.head = e.head.max(s);
                }
            }
        }
    }

    /// A live (not dismissed) group.
    pub fn group(&self, gid: &str) -> Option<&GroupEntry> {
        self.groups.get(gid).filter(|g| !g.row.dismissed)
    }

    /// The joined seq of `uid` in `gid`, if a member.
    pub fn joined(&self, gid: &str, uid: &str) -> Option<u64> {
        self.group(gid).and_then(|g| g.members.get(uid).copied())
    }

    pub fn groups_of(&self, uid: &str) -> Vec<Arc<str>> {
        self.user_groups
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// What one commit writes.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub ops: Vec<DirOp>,
    pub events: Vec<EventRow>,
    /// Message ids recalled (body dropped, `recalled` set).
    pub recalls: Vec<u64>,
    /// Group read cursors (group, user, seq); the store keeps the highest.
    pub cursors: Vec<(Arc<str>, Arc<str>, u64)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
            && self.events.is_empty()
            && self.recalls.is_empty()
            && self.cursors.is_empty()
    }
}

/// What the store hands the Core at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub users: Vec<UserRow>,
    pub groups: Vec<GroupRow>,
    pub members: Vec<(Arc<str>, Arc<str>, u64)>,
    /// Highest seq of each user timeline.
    pub user_heads: Vec<(Arc<str>, u64)>,
    /// Highest seq of each group timeline.
    pub group_heads: Vec<(Arc<str>, u64)>,
    pub max_event_id: u64,
    /// Messages of the recent past (cid cache, recall index), in id order.
    pub recent: Vec<EventRow>,
}

/// A committed side effect, handed to the [`super::Sink`] in order.
#[derive(Debug, Clone)]
pub enum Effect {
    Deliver(Delivery),
    Membership(MembershipChange),
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    User(Arc<str>),
    Group(Arc<str>),
}

struct CidEntry {
    ts: i64,
    target: Target,
    body: Arc<RawValue>,
    result: (u64, u64, i64),
}

struct Recent {
    sender: Option<Arc<str>>,
    ts: i64,
    to: Option<Arc<str>>,
    group: Option<Arc<str>>,
    recalled: bool,
}

/// Limits the Core enforces.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub max_message_bytes: usize,
    pub recall_window_ms: i64,
    pub group_max_members: usize,
}

/// A user to create or update (admin).
#[derive(Debug, Clone)]
pub struct UserSpec {
    pub uid: String,
    pub name: Option<String>,
    pub extra: Option<serde_json::Value>,
}

/// A group to create (admin).
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub gid: String,
    pub name: Option<String>,
    pub owner: Option<String>,
    pub extra: Option<serde_json::Value>,
    pub members: Vec<String>,
}

type CidKey = (Option<Arc<str>>, Arc<str>);

/// The business state. See the module doc.
pub struct Core {
    cfg: CoreConfig,
    pub dir: Directory,
    user_seq: HashMap<Arc<str>, u64>,
    next_id: u64,
    cids: HashMap<CidKey, CidEntry>,
    cid_order: VecDeque<(i64, CidKey)>,
    recent: HashMap<u64, Recent>,
    recent_order: VecDeque<(i64, u64)>,
    batch: Batch,
}

fn too_many(what: &str) -> ApiError {
    ApiError::bad_request(format!("more than {MAX_BATCH} {what} in one call"))
}

fn bad_id(what: &str, id: &str) -> ApiError {
    let shown: String = id.chars().take(80).collect();
    ApiError::bad_request(format!("invalid {what} id {shown:?}"))
}

impl Core {
    pub fn new(cfg: CoreConfig, loaded: Loaded) -> Core {
        let mut dir = Directory::default();
        for u in loaded.users {
            dir.apply(&DirOp::User(u));
        }
        for g in loaded.groups {
            dir.apply(&DirOp::Group(g));
        }
        for (g, u, joined) in loaded.members {
            dir.apply(&DirOp::AddMember {
                group: g,
                user: u,
                joined,
            });
        }
        for (g, head) in loaded.group_heads {
            if let Some(e) = dir.groups.get_mut(&g) {
                e.head = head;
            }
        }
        let mut core = Core {
            cfg,
            dir,
            user_seq: loaded.user_heads.into_iter().collect(),
            next_id: loaded.max_event_id + 1,
            cids: HashMap::new(),
            cid_order: VecDeque::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            batch: Batch::default(),
        };
        for ev in loaded.recent {
            core.remember(&ev);
        }
        core
    }

    /// The rows written since the last call.
    pub fn take_batch(&mut self) -> Batch {
        std::mem::take(&mut self.batch)
    }

    /// Drops cache entries older than their windows.
    pub fn prune(&mut self, now: i64) {
        while let Some((ts, _)) = self.cid_order.front() {
            if now - ts <= CID_TTL_MS {
                break;
            }
            let (ts, key) = self.cid_order.pop_front().expect("front exists");
            if self.cids.get(&key).is_some_and(|e| e.ts == ts) {
                self.cids.remove(&key);
            }
        }
        let keep = self.cfg.recall_window_ms;
        while let Some((ts, _)) = self.recent_order.front() {
            if now - ts <= keep {
                break;
            }
            let (_, id) = self.recent_order.pop_front().expect("front exists");
            self.recent.remove(&id);
        }
    }

    /// Registers a message in the dedupe cache and the recall index.
    fn remember(&mut self, ev: &EventRow) {
        if ev.kind == EventKind::Msg {
            if let (Some(cid), Some(body)) = (&ev.cid, &ev.body) {
                let target = match (&ev.group, &ev.to) {
                    (Some(g), _) => Target::Group(g.clone()),
                    (None, Some(t)) => Target::User(t.clone()),
                    _ => return,
                };
                let seq = if ev.group.is_some() {
                    ev.gseq
                } else if ev.sender.is_some() {
                    ev.seq_from
                } else {
                    ev.seq_to
                };
                let key = (ev.sender.clone(), cid.clone());
                self.cids.insert(
                    key.clone(),
                    CidEntry {
                        ts: ev.ts,
                        target,
                        body: body.clone(),
                        result: (ev.id, seq.unwrap_or(0), ev.ts),
                    },
                );
                self.cid_order.push_back((ev.ts, key));
            }
            self.recent.insert(
                ev.id,
                Recent {
                    sender: ev.sender.clone(),
                    ts: ev.ts,
                    to: ev.to.clone(),
                    group: ev.group.clone(),
                    recalled: ev.recalled,
                },
            );
            self.recent_order.push_back((ev.ts, ev.id));
        }
    }

    fn next_user_seq(&mut self, uid: &Arc<str>) -> u64 {
        let s = self.user_seq.entry(uid.clone()).or_insert(0);
        *s += 1;
        *s
    }

    fn next_group_seq(&mut self, gid: &str) -> Option<u64> {
        let g = self.dir.groups.get_mut(gid)?;
        g.head += 1;
        Some(g.head)
    }

    fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn event(&mut self, now: i64, kind: EventKind) -> EventRow {
        EventRow {
            id: self.new_id(),
            ts: now,
            kind,
            sender: None,
            to: None,
            group: None,
            cid: None,
            reference: None,
            body: None,
            recalled: false,
            seq_from: None,
            seq_to: None,
            gseq: None,
        }
    }

    /// An existing, enabled user.
    fn live_user(&self, uid: &str) -> Option<Arc<str>> {
        self.dir
            .users
            .get_key_value(uid)
            .filter(|(_, u)| !u.disabled)
            .map(|(k, _)| k.clone())
    }

    /// Delivery of a user-timeline event to each user on it, with their own seq.
    fn user_delivery(ev: &EventRow, skip: Option<(Arc<str>, Arc<str>)>) -> Delivery {
        let mut to = Vec::with_capacity(2);
        if let (Some(s), Some(_)) = (&ev.sender, ev.seq_from) {
            to.push((s.clone(), Bytes::from(ev.render(Some(s)).to_json())));
        }
        if let (Some(t), Some(_)) = (&ev.to, ev.seq_to) {
            to.push((t.clone(), Bytes::from(ev.render(Some(t)).to_json())));
        }
        Delivery::Users { to, skip }
    }

    fn group_delivery(ev: &EventRow, skip: Option<(Arc<str>, Arc<str>)>) -> Delivery {
        Delivery::Group {
            group: ev.group.clone().unwrap_or_else(|| "".into()),
            payload: Bytes::from(ev.render(None).to_json()),
            skip,
        }
    }

    fn skip_of(caller: &Caller) -> Option<(Arc<str>, Arc<str>)> {
        caller.user.clone().map(|u| (u, caller.device.clone()))
    }

    /// `send`: a message from the caller (or the system) to a user or a group.
    pub fn send(
        &mut self,
        now: i64,
        caller: &Caller,
        target: Target,
        cid: &str,
        body: Arc<RawValue>,
    ) -> Result<(Response, Vec<Effect>), ApiError> {
        if cid.is_empty() || cid.len() > crate::proto::MAX_ID_LEN {
            return Err(ApiError::bad_request("\"cid\" must be 1 to 64 bytes"));
        }
        if body.get().len() > self.cfg.max_message_bytes {
            return Err(ApiError::too_large(format!(
                "body is larger than {} bytes",
                self.cfg.max_message_bytes
            )));
        }
        let sender = match &caller.user {
            Some(u) => Some(
                self.live_user(u)
                    .ok_or_else(|| ApiError::forbidden("sender is not an enabled user"))?,
            ),
            None => None,
        };
        let cid: Arc<str> = cid.into();
        let key = (sender.clone(), cid.clone());
        if let Some(e) = self.cids.get(&key) {
            if now - e.ts <= CID_TTL_MS {
                if e.target == target && e.body.get() == body.get() {
                    let (mid, seq, ts) = e.result;
                    return Ok((Response::Sent { mid, seq, ts }, Vec::new()));
                }
                return Err(ApiError::conflict(
                    "this cid was used for another message in the last 10 minutes",
                ));
            }
        }
        let mut ev = self.event(now, EventKind::Msg);
        ev.sender = sender.clone();
        ev.cid = Some(cid);
        ev.body = Some(body);
        let skip = Self::skip_of(caller);
        let (seq, delivery) = match &target {
            Target::User(to) => {
                if !valid_id(to) {
                    return Err(bad_id("user", to));
                }
                let to = self
                    .live_user(to)
                    .ok_or_else(|| ApiError::not_found(format!("no user {to}")))?;
                let seq = match &sender {
                    Some(s) if *s == to => {
                        ev.seq_from = Some(self.next_user_seq(s));
                        ev.seq_from
                    }
                    Some(s) => {
                        ev.seq_from = Some(self.next_user_seq(s));
                        ev.seq_to = Some(self.next_user_seq(&to));
                        ev.seq_from
                    }
                    None => {
                        ev.seq_to = Some(self.next_user_seq(&to));
                        ev.seq_to
                    }
                };
                ev.to = Some(to);
                (seq, Self::user_delivery(&ev, skip))
            }
            Target::Group(g) => {
                if !valid_id(g) {
                    return Err(bad_id("group", g));
                }
                let gid = match self.dir.group(g) {
                    Some(e) => e.row.gid.clone(),
                    None => return Err(ApiError::not_found(format!("no group {g}"))),
                };
                if let Some(s) = &sender {
                    if self.dir.joined(g, s).is_none() {
                        return Err(ApiError::not_member(format!("not a member of {g}")));
                    }
                }
                ev.gseq = self.next_group_seq(g);
                ev.group = Some(gid);
                (ev.gseq, Self::group_delivery(&ev, skip))
            }
        };
        let seq = seq.unwrap_or(0);
        self.remember(&ev);
        let resp = Response::Sent {
            mid: ev.id,
            seq,
            ts: now,
        };
        self.batch.events.push(ev);
        Ok((resp, vec![Effect::Deliver(delivery)]))
    }

    /// `recall`: the sender (or the system, for anyone's message) withdraws `mid` within the
    /// recall window.
    pub fn recall(
        &mut self,
        now: i64,
        caller: &Caller,
        mid: u64,
    ) -> Result<(Response, Vec<Effect>), ApiError> {
        let Some(orig) = self.recent.get(&mid) else {
            return Err(if mid > 0 && mid < self.next_id {
                ApiError::recall_expired(format!("message {mid} is past the recall window"))
            } else {
                ApiError::not_found(format!("no message {mid}"))
            });
        };
        if let Some(u) = &caller.user {
            if orig.sender.as_deref() != Some(&**u) {
                return Err(ApiError::not_sender("only the sender may recall a message"));
            }
        }
        if now - orig.ts > self.cfg.recall_window_ms {
            return Err(ApiError::recall_expired(format!(
                "message {mid} is past the recall window"
            )));
        }
        if orig.recalled {
            return Err(ApiError::conflict(format!(
                "message {mid} is already recalled"
            )));
        }
        let (sender, to, group) = (orig.sender.clone(), orig.to.clone(), orig.group.clone());
        let mut ev = self.event(now, EventKind::Recall);
        ev.reference = Some(mid);
        ev.sender = sender.clone();
        let skip = Self::skip_of(caller);
        let delivery = if let Some(g) = group {
            ev.gseq = self.next_group_seq(&g);
            ev.group = Some(g);
            Self::group_delivery(&ev, skip)
        } else {
            if let Some(s) = &sender {
                ev.seq_from = Some(self.next_user_seq(s));
            }
            if let Some(t) = &to {
                if sender.as_ref() != Some(t) || sender.is_none() {
                    ev.seq_to = Some(self.next_user_seq(t));
                }
            }
            ev.to = to;
            Self::user_delivery(&ev, skip)
        };
        if let Some(r) = self.recent.get_mut(&mid) {
            r.recalled = true;
        }
        let resp = Response::Recalled { mid: ev.id };
        self.batch.recalls.push(mid);
        self.batch.events.push(ev);
        Ok((resp, vec![Effect::Deliver(delivery)]))
    }

    /// `read`: a 1:1 read receipt (to both user timelines) or a group read cursor (plus an
    /// event on the reader's own timeline).
    pub fn read(
        &mut self,
        now: i64,
        caller: &Caller,
        req: &ReadReq,
    ) -> Result<(Response, Vec<Effect>), ApiError> {
        let Some(user) = caller.user.as_ref().and_then(|u| self.live_user(u)) else {
            return Err(ApiError::forbidden("read receipts need a user"));
        };
        let skip = Self::skip_of(caller);
        let mut ev = self.event(now, EventKind::Read);
        ev.sender = Some(user.clone());
        match (&req.peer, req.mid, &req.g, req.seq) {
            (Some(peer), Some(mid), None, None) => {
                if !valid_id(peer) {
                    return Err(bad_id("user", peer));
                }
                let peer = self
                    .live_user(peer)
                    .ok_or_else(|| ApiError::not_found(format!("no user {peer}")))?;
                if mid == 0 || mid >= ev.id {
                    return Err(ApiError::not_found(format!("no message {mid}")));
                }
                ev.reference = Some(mid);
                ev.seq_from = Some(self.next_user_seq(&user));
                if peer != user {
                    ev.seq_to = Some(self.next_user_seq(&peer));
                }
                ev.to = Some(peer);
            }
            (None, None, Some(g), Some(seq)) => {
                if !valid_id(g) {
                    return Err(bad_id("group", g));
                }
                let Some(entry) = self.dir.group(g) else {
                    return Err(ApiError::not_found(format!("no group {g}")));
                };
                if !entry.members.contains_key(&user) {
                    return Err(ApiError::not_member(format!("not a member of {g}")));
                }
                if seq == 0 || seq > entry.head {
                    return Err(ApiError::bad_request(format!("no seq {seq} in {g}")));
                }
                let gid = entry.row.gid.clone();
                ev.reference = Some(seq);
                ev.seq_from = Some(self.next_user_seq(&user));
                ev.group = Some(gid.clone());
                self.batch.cursors.push((gid, user.clone(), seq));
            }
            _ => {
                return Err(ApiError::bad_request(
                    "read needs {\"peer\", \"mid\"} or {\"g\", \"seq\"}",
                ))
            }
        }
        let d = Self::user_delivery(&ev, skip);
        self.batch.events.push(ev);
        Ok((Response::Ok, vec![Effect::Deliver(d)]))
    }

    /// Admin: creates or updates users (re-creating a deleted user enables it again).
    pub fn upsert_users(&mut self, now: i64, specs: &[UserSpec]) -> Result<usize, ApiError> {
        if specs.len() > MAX_BATCH {
            return Err(too_many("users"));
        }
        if let Some(s) = specs.iter().find(|s| !valid_id(&s.uid)) {
            return Err(bad_id("user", &s.uid));
        }
        for s in specs {
            let row = match self.dir.users.get(s.uid.as_str()) {
                Some(old) => UserRow {
                    name: s.name.clone().or_else(|| old.name.clone()),
                    extra: s.extra.clone().or_else(|| old.extra.clone()),
                    disabled: false,
                    ..old.clone()
                },
                None => UserRow {
                    uid: s.uid.as_str().into(),
                    name: s.name.clone(),
                    extra: s.extra.clone(),
                    disabled: false,
                    tokens_after: 0,
                    created: now,
                },
            };
            self.put_user(row);
        }
        Ok(specs.len())
    }

    fn put_user(&mut self, row: UserRow) {
        let op = DirOp::User(row);
        self.dir.apply(&op);
        self.batch.ops.push(op);
    }

    /// Admin: revokes tokens issued before `after` (Unix seconds); `disable` also disables.
    pub fn revoke_user(&mut self, uid: &str, after: i64, disable: bool) -> Result<(), ApiError> {
        let Some(old) = self.dir.users.get(uid) else {
            return Err(ApiError::not_found(format!("no user {uid}")));
        };
        let row = UserRow {
            tokens_after: old.tokens_after.max(after),
            disabled: old.disabled || disable,
            ..old.clone()
        };
        self.put_user(row);
        Ok(())
    }

    /// Membership notices: group-timeline notices (users in chunks), then one user-timeline
    /// notice per affected user.
    fn notices(
        &mut self,
        now: i64,
        gid: &Arc<str>,
        op: &str,
        users: &[Arc<str>],
        effects: &mut Vec<Effect>,
    ) {
        let chunks: Vec<&[Arc<str>]> = if users.is_empty() {
            vec![&[]]
        } else {
            users.chunks(NOTICE_CHUNK).collect()
        };
        for chunk in chunks {
            let body = serde_json::json!({ "op": op, "users": chunk });
            let mut ev = self.event(now, EventKind::Notice);
            ev.group = Some(gid.clone());
            ev.gseq = self.next_group_seq(gid);
            ev.body = RawValue::from_string(body.to_string()).ok().map(Arc::from);
            effects.push(Effect::Deliver(Self::group_delivery(&ev, None)));
            self.batch.events.push(ev);
        }
        let body: Option<Arc<RawValue>> =
            RawValue::from_string(serde_json::json!({ "op": op }).to_string())
                .ok()
                .map(Arc::from);
        let mut tos = Vec::with_capacity(users.len());
        for u in users {
            let mut ev = self.event(now, EventKind::Notice);
            ev.group = Some(gid.clone());
            ev.to = Some(u.clone());
            ev.seq_to = Some(self.next_user_seq(u));
            ev.body = body.clone();
            tos.push((u.clone(), Bytes::from(ev.render(Some(u)).to_json())));
            self.batch.events.push(ev);
        }
        if !tos.is_empty() {
            effects.push(Effect::Deliver(Delivery::Users {
                to: tos,
                skip: None,
            }));
        }
    }

    /// Resolves member ids: valid, existing users, deduplicated.
    fn resolve_users(&self, ids: &[String]) -> Result<Vec<Arc<str>>, ApiError> {
        let mut out: Vec<Arc<str>> = Vec::with_capacity(ids.len());
        let mut seen = BTreeSet::new();
        for id in ids {
            if !valid_id(id) {
                return Err(bad_id("user", id));
            }
            let Some((k, _)) = self.dir.users.get_key_value(id.as_str()) else {
                return Err(ApiError::not_found(format!("no user {id}")));
            };
            if seen.insert(k.clone()) {
                out.push(k.clone());
            }
        }
        Ok(out)
    }

    /// Admin: creates a group with its owner and initial members.
    pub fn create_group(&mut self, now: i64, spec: &GroupSpec) -> Result<Vec<Effect>, ApiError> {
        if !valid_id(&spec.gid) {
            return Err(bad_id("group", &spec.gid));
        }
        if self.dir.groups.contains_key(spec.gid.as_str()) {
            return Err(ApiError::conflict(format!("group {} exists", spec.gid)));
        }
        let mut ids = spec.members.clone();
        if let Some(o) = &spec.owner {
            ids.insert(0, o.clone());
        }
        if ids.len() > self.cfg.group_max_members.max(1) + 1 {
            return Err(ApiError::bad_request("too many members"));
        }
        let members = self.resolve_users(&ids)?;
        if members.len() > self.cfg.group_max_members {
            return Err(ApiError::bad_request(format!(
                "a group has at most {} members",
                self.cfg.group_max_members
            )));
        }
        let gid: Arc<str> = spec.gid.as_str().into();
        let row = GroupRow {
            gid: gid.clone(),
            name: spec.name.clone(),
            owner: spec.owner.as_ref().map(|o| Arc::from(o.as_str())),
            extra: spec.extra.clone(),
            created: now,
            dismissed: false,
        };
        let op = DirOp::Group(row);
        self.dir.apply(&op);
        self.batch.ops.push(op);
        let mut effects = Vec::new();
        self.add_members(now, &gid, members, &mut effects);
        Ok(effects)
    }

    fn add_members(
        &mut self,
        now: i64,
        gid: &Arc<str>,
        users: Vec<Arc<str>>,
        effects: &mut Vec<Effect>,
    ) {
        if users.is_empty() {
            return;
        }
        let joined = self.dir.groups.get(gid).map_or(0, |g| g.head);
        for u in &users {
            let op = DirOp::AddMember {
                group: gid.clone(),
                user: u.clone(),
                joined,
            };
            self.dir.apply(&op);
            self.batch.ops.push(op);
        }
        effects.push(Effect::Membership(MembershipChange::Added {
            group: gid.clone(),
            users: users.clone(),
        }));
        self.notices(now, gid, "add", &users, effects);
    }

    /// Admin: adds and removes members (each list ≤ 1000); returns (added, removed).
    pub fn change_members(
        &mut self,
        now: i64,
        gid: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<((usize, usize), Vec<Effect>), ApiError> {
        if add.len() > MAX_BATCH || remove.len() > MAX_BATCH {
            return Err(too_many("members"));
        }
        let Some(entry) = self.dir.group(gid) else {
            return Err(ApiError::not_found(format!("no group {gid}")));
        };
        let gid = entry.row.gid.clone();
        let add: Vec<Arc<str>> = self
            .resolve_users(add)?
            .into_iter()
            .filter(|u| !entry.members.contains_key(u))
            .collect();
        let remove: Vec<Arc<str>> = self
            .resolve_users(remove)?
            .into_iter()
            .filter(|u| entry.members.contains_key(u))
            .collect();
        let after = entry.members.len() + add.len() - remove.len();
        if after > self.cfg.group_max_members {
            return Err(ApiError::bad_request(format!(
                "a group has at most {} members",
                self.cfg.group_max_members
            )));
        }
        let mut effects = Vec::new();
        if !remove.is_empty() {
            self.notices(now, &gid, "remove", &remove, &mut effects);
            for u in &remove {
                let op = DirOp::RemoveMember {
                    group: gid.clone(),
                    user: u.clone(),
                };
                self.dir.apply(&op);
                self.batch.ops.push(op);
            }
            effects.push(Effect::Membership(MembershipChange::Removed {
                group: gid.clone(),
                users: remove.clone(),
            }));
        }
        let counts = (add.len(), remove.len());
        self.add_members(now, &gid, add, &mut effects);
        Ok((counts, effects))
    }

    /// Admin: dismisses a group (members get a notice, the group its last one).
    pub fn dismiss_group(&mut self, now: i64, gid: &str) -> Result<Vec<Effect>, ApiError> {
        let Some(entry) = self.dir.group(gid) else {
            return Err(ApiError::not_found(format!("no group {gid}")));
        };
        let gid = entry.row.gid.clone();
        let members: Vec<Arc<str>> = entry.members.keys().cloned().collect();
        let mut effects = Vec::new();
        self.notices(now, &gid, "dismiss", &members, &mut effects);
        let op = DirOp::Dismiss(gid.clone());
        self.dir.apply(&op);
        self.batch.ops.push(op);
        effects.push(Effect::Membership(MembershipChange::Dismissed {
            group: gid,
        }));
        Ok(effects)
    }
}

/// Per-user token buckets (`rate_limit_per_sec`, `rate_limit_burst`); sans-IO, time passed in.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<Arc<str>, (f64, i64)>,
}

impl RateLimiter {
    pub fn new(per_sec: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: per_sec as f64,
            burst: burst.max(1) as f64,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `user` at `now_ms`; false = over the limit.
    pub fn allow(&mut self, user: &Arc<str>, now_ms: i64) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        if self.buckets.len() > 100_000 {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, (tokens, last)| {
                *tokens + (now_ms - *last).max(0) as f64 * rate / 1000.0 < burst
            });
        }
        let (tokens, last) = self
            .buckets
            .entry(user.clone())
            .or_insert((self.burst, now_ms));
        let elapsed = (now_ms - *last).max(0) as f64 / 1000.0;
        *tokens = (*tokens + elapsed * self.rate).min(self.burst);
        *last = now_ms.max(*last);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CoreConfig {
        CoreConfig {
            max_message_bytes: 64,
            recall_window_ms: 1000,
            group_max_members: 5,
        }
    }

    fn core_with(users: &[&str]) -> Core {
        let mut c = Core::new(cfg(), Loaded::default());
        let specs: Vec<UserSpec> = users
            .iter()
            .map(|u| UserSpec {
                uid: u.to_string(),
                name: None,
                extra: None,
            })
            .collect();
        c.upsert_users(0, &specs).unwrap();
        c.take_batch();
        c
    }

    fn as_user(u: &str) -> Caller {
        Caller {
            user: Some(u.into()),
            device: "d1".into(),
        }
    }

    fn body(s: &str) -> Arc<RawValue> {
        Arc::from(RawValue::from_string(s.to_owned()).unwrap())
    }

    fn sent(r: &Result<(Response, Vec<Effect>), ApiError>) -> (u64, u64) {
        match r {
            Ok((Response::Sent { mid, seq, .. }, _)) => (*mid, *seq),
            other => panic!("not sent: {other:?}"),
        }
    }

    fn group(c: &mut Core, members: &[&str]) {
        c.create_group(
            0,
            &GroupSpec {
                gid: "g1".into(),
                name: None,
                owner: None,
                extra: None,
                members: members.iter().map(|s| s.to_string()).collect(),
            },
        )
        .unwrap();
    }

    #[test]
    fn user_seqs_are_per_user() {
        let mut c = core_with(&["a", "b", "c"]);
        let to = |u: &str| Target::User(u.into());
        assert_eq!(
            sent(&c.send(1, &as_user("a"), to("b"), "1", body("1"))),
            (1, 1)
        );
        assert_eq!(
            sent(&c.send(1, &as_user("a"), to("c"), "2", body("1"))),
            (2, 2)
        );
        let r = c.send(1, &as_user("b"), to("a"), "1", body("1"));
        assert_eq!(sent(&r), (3, 2)); // b: received 1, now sends 2
        let b = c.take_batch();
        assert_eq!(b.events.len(), 3);
        assert_eq!(b.events[2].seq_from, Some(2));
        assert_eq!(b.events[2].seq_to, Some(3)); // a's third event
        let Ok((_, effects)) = r else { panic!() };
        let Effect::Deliver(Delivery::Users { to, skip }) = &effects[0] else {
            panic!()
        };
        assert_eq!(skip.as_ref().map(|s| &*s.1), Some("d1"));
        let seqs: Vec<(String, u64)> = to
            .iter()
            .map(|(u, p)| {
                let e: serde_json::Value = serde_json::from_slice(p).unwrap();
                (u.to_string(), e["seq"].as_u64().unwrap())
            })
            .collect();
        assert_eq!(seqs, vec![("b".into(), 2), ("a".into(), 3)]);
    }

    #[test]
    fn send_rules() {
        let mut c = core_with(&["a", "b"]);
        let b = |s: &str| Target::User(s.into());
        let e = c
            .send(1, &as_user("a"), b("zed"), "1", body("1"))
            .unwrap_err();
        assert_eq!(e.code, 404);
        let e = c
            .send(1, &as_user("a"), b("a/b"), "1", body("1"))
            .unwrap_err();
        assert_eq!(e.code, 400);
        let big = format!("\"{}\"", "x".repeat(100));
        let e = c
            .send(1, &as_user("a"), b("b"), "1", body(&big))
            .unwrap_err();
        assert_eq!(e.code, 413);
        let e = c.send(1, &as_user("a"), b("b"), "", body("1")).unwrap_err();
        assert_eq!(e.code, 400);
        let e = c
            .send(1, &as_user("a"), Target::Group("g1".into()), "1", body("1"))
            .unwrap_err();
        assert_eq!(e.code, 404);
        assert!(c.take_batch().is_empty());
    }

    #[test]
    fn cid_dedupe() {
        let mut c = core_with(&["a", "b"]);
        let first = sent(&c.send(1, &as_user("a"), Target::User("b".into()), "c", body("1")));
        let again = c.send(5, &as_user("a"), Target::User("b".into()), "c", body("1"));
        assert_eq!(sent(&again), first);
        assert!(
            again.unwrap().1.is_empty(),
            "a duplicate is not delivered again"
        );
        let e = c
            .send(5, &as_user("a"), Target::User("b".into()), "c", body("2"))
            .unwrap_err();
        assert_eq!(e.code, 409);
        // Another sender may use the same cid.
        let other = sent(&c.send(5, &as_user("b"), Target::User("a".into()), "c", body("1")));
        assert_ne!(other.0, first.0);
        assert_eq!(c.take_batch().events.len(), 2);
        // After the TTL the cid is free again.
        c.prune(CID_TTL_MS + 10);
        let later = sent(&c.send(
            CID_TTL_MS + 10,
            &as_user("a"),
            Target::User("b".into()),
            "c",
            body("2"),
        ));
        assert_ne!(later.0, first.0);
    }

    #[test]
    fn recall_window_and_sender() {
        let mut c = core_with(&["a", "b"]);
        let (mid, _) = sent(&c.send(100, &as_user("a"), Target::User("b".into()), "1", body("1")));
        assert_eq!(c.recall(200, &as_user("b"), mid).unwrap_err().code, 403);
        assert_eq!(c.recall(1200, &as_user("a"), mid).unwrap_err().code, 410);
        assert_eq!(c.recall(200, &as_user("a"), 999).unwrap_err().code, 404);
        let (resp, effects) = c.recall(1100, &as_user("a"), mid).unwrap();
        assert!(matches!(resp, Response::Recalled { .. }));
        let Effect::Deliver(Delivery::Users { to, .. }) = &effects[0] else {
            panic!()
        };
        assert_eq!(to.len(), 2);
        assert_eq!(c.recall(1100, &as_user("a"), mid).unwrap_err().code, 409);
        let batch = c.take_batch();
        assert_eq!(batch.recalls, vec![mid]);
        let ev = batch.events.last().unwrap();
        assert_eq!((ev.kind, ev.reference), (EventKind::Recall, Some(mid)));
        assert_eq!((ev.seq_from, ev.seq_to), (Some(2), Some(2)));
        // After pruning, the message is past the window.
        c.prune(5000);
        assert_eq!(c.recall(5000, &as_user("a"), mid).unwrap_err().code, 410);
        let system = Caller {
            user: None,
            device: "admin".into(),
        };
        assert_eq!(c.recall(5000, &system, mid).unwrap_err().code, 410);
    }

    #[test]
    fn group_messages_are_stored_once() {
        let mut c = core_with(&["a", "b", "c", "d"]);
        group(&mut c, &["a", "b", "c"]);
        c.take_batch();
        let r = c.send(1, &as_user("a"), Target::Group("g1".into()), "1", body("1"));
        let (mid, seq) = sent(&r);
        assert_eq!(seq, 2, "after the add notice");
        let b = c.take_batch();
        assert_eq!(b.events.len(), 1);
        assert_eq!((b.events[0].id, b.events[0].gseq), (mid, Some(2)));
        assert_eq!((b.events[0].seq_from, b.events[0].seq_to), (None, None));
        let Ok((_, effects)) = r else { panic!() };
        assert_eq!(effects.len(), 1);
        assert!(matches!(
            &effects[0],
            Effect::Deliver(Delivery::Group { .. })
        ));
        let e = c
            .send(1, &as_user("d"), Target::Group("g1".into()), "1", body("1"))
            .unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(e.error, "not_member");
    }

    #[test]
    fn membership_notices() {
        let mut c = core_with(&["a", "b", "c", "d", "e", "f", "g"]);
        group(&mut c, &["a", "b"]);
        let b = c.take_batch();
        // One group notice + one user notice per member.
        assert_eq!(b.events.len(), 3);
        assert_eq!(b.events[0].gseq, Some(1));
        assert_eq!(b.events[1].seq_to, Some(1));
        assert_eq!(c.dir.joined("g1", "a"), Some(0));
        let ((added, removed), effects) = c
            .change_members(1, "g1", &["c".into(), "a".into()], &["b".into()])
            .unwrap();
        assert_eq!((added, removed), (1, 1));
        let kinds: Vec<&str> = effects
            .iter()
            .map(|e| match e {
                Effect::Membership(MembershipChange::Added { .. }) => "added",
                Effect::Membership(MembershipChange::Removed { .. }) => "removed",
                Effect::Membership(MembershipChange::Dismissed { .. }) => "dismissed",
                Effect::Deliver(Delivery::Group { .. }) => "group",
                Effect::Deliver(Delivery::Users { .. }) => "users",
            })
            .collect();
        assert_eq!(
            kinds,
            ["group", "users", "removed", "added", "group", "users"]
        );
        assert_eq!(
            c.dir.joined("g1", "c"),
            Some(2),
            "joined before its add notice"
        );
        assert_eq!(c.dir.joined("g1", "b"), None);
        assert_eq!(c.dir.groups_of("b"), Vec::<Arc<str>>::new());
        // Over the member limit.
        let many: Vec<String> = ["d", "e", "f", "g"].iter().map(|s| s.to_string()).collect();
        assert_eq!(c.change_members(2, "g1", &many, &[]).unwrap_err().code, 400);
        assert_eq!(
            c.change_members(2, "g1", &["nobody".into()], &[])
                .unwrap_err()
                .code,
            404
        );
        let effects = c.dismiss_group(3, "g1").unwrap();
        assert!(matches!(
            effects.last(),
            Some(Effect::Membership(MembershipChange::Dismissed { .. }))
        ));
        assert!(c.dir.group("g1").is_none());
        assert!(c.dir.groups_of("a").is_empty());
        assert_eq!(c.dismiss_group(3, "g1").unwrap_err().code, 404);
    }

    #[test]
    fn notices_are_chunked() {
        let mut c = Core::new(
            CoreConfig {
                group_max_members: 2000,
                ..cfg()
            },
            Loaded::default(),
        );
        let specs: Vec<UserSpec> = (0..1000)
            .map(|i| UserSpec {
                uid: format!("u{i}"),
                name: None,
                extra: None,
            })
            .collect();
        c.upsert_users(0, &specs).unwrap();
        c.take_batch();
        let ids: Vec<String> = specs.iter().map(|s| s.uid.clone()).collect();
        c.create_group(
            0,
            &GroupSpec {
                gid: "big".into(),
                name: None,
                owner: Some("u0".into()),
                extra: None,
                members: ids,
            },
        )
        .unwrap();
        let b = c.take_batch();
        let group_notices = b.events.iter().filter(|e| e.gseq.is_some()).count();
        assert_eq!(group_notices, 2);
        assert_eq!(b.events.len(), 1002);
    }

    #[test]
    fn read_receipts() {
        let mut c = core_with(&["a", "b", "c"]);
        let (mid, _) = sent(&c.send(1, &as_user("a"), Target::User("b".into()), "1", body("1")));
        let r = ReadReq {
            id: None,
            peer: Some("a".into()),
            mid: Some(mid),
            g: None,
            seq: None,
        };
        c.read(2, &as_user("b"), &r).unwrap();
        group(&mut c, &["a", "b"]);
        let gr = ReadReq {
            id: None,
            peer: None,
            mid: None,
            g: Some("g1".into()),
            seq: Some(1),
        };
        c.read(3, &as_user("b"), &gr).unwrap();
        assert_eq!(c.read(3, &as_user("c"), &gr).unwrap_err().code, 403);
        let bad = ReadReq { seq: Some(9), ..gr };
        assert_eq!(c.read(3, &as_user("b"), &bad).unwrap_err().code, 400);
        let batch = c.take_batch();
        assert_eq!(batch.cursors.len(), 1);
        let reads: Vec<&EventRow> = batch
            .events
            .iter()
            .filter(|e| e.kind == EventKind::Read)
            .collect();
        assert_eq!(reads.len(), 2);
        assert_eq!((reads[0].seq_from, reads[0].seq_to), (Some(2), Some(2)));
        assert_eq!((reads[1].seq_from, reads[1].seq_to), (Some(4), None));
    }

    #[test]
    fn rate_limit() {
        let mut r = RateLimiter::new(2, 3);
        let u: Arc<str> = "a".into();
        assert!((0..3).all(|_| r.allow(&u, 0)));
        assert!(!r.allow(&u, 0));
        assert!(r.allow(&u, 500), "one token per 500 ms");
        assert!(!r.allow(&u, 500));
        assert!(r.allow(&"b".into(), 500), "per user");
        let mut off = RateLimiter::new(0, 0);
        assert!((0..1000).all(|_| off.allow(&u, 0)));
    }

    #[test]
    fn load_restores_counters() {
        let mut c = core_with(&["a", "b"]);
        sent(&c.send(1, &as_user("a"), Target::User("b".into()), "1", body("1")));
        let b = c.take_batch();
        let loaded = Loaded {
            users: c.dir.users.values().cloned().collect(),
            user_heads: vec![("a".into(), 1), ("b".into(), 1)],
            max_event_id: 1,
            recent: b.events.clone(),
            ..Loaded::default()
        };
        let mut c2 = Core::new(cfg(), loaded);
        // The cid cache came back with the message.
        let again = c2.send(2, &as_user("a"), Target::User("b".into()), "1", body("1"));
        assert_eq!(sent(&again), (1, 1));
        assert_eq!(
            sent(&c2.send(2, &as_user("a"), Target::User("b".into()), "2", body("1"))),
            (2, 2)
        );
    }
}
