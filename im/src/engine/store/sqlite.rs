//! The SQLite store (rusqlite, system libsqlite3): WAL, `synchronous=FULL`, one transaction
//! per writer batch.
//!
//! Timeline index ([`IndexMode`]): `Inline` writes the index rows in the batch's own
//! transaction (the default); `Behind` commits only the event rows at ack time and keeps
//! their index entries in an in-memory tail shared with the readers, flushed sorted in
//! slices of ≤ 20,000 rows every 10,000 events or 1 s (docs/IM-DESIGN.md §2.4), one slice
//! between two batches so a flush holds acks back for one slice at most. Readers read
//! the tail first, then the table, and merge by seq, so an entry is always visible in one of
//! them. `meta.index_watermark` = highest event id whose entries are all in the table; at
//! start the events above it are replayed into the tail (their timelines follow from the
//! seq columns of the row).
//!
//! Schema as built (adapted from §2.4):
//! - users, groups (`chat_groups`), members, read cursors are keyed by their text ids
//!   instead of interned integer row ids (simpler; interning is a later optimisation).
//! - `events` carries the text ids of sender, recipient and group and the event's seqs on
//!   each timeline (`seq_from`: sender's user timeline, `seq_to`: recipient's, `gseq`:
//!   group's) instead of a packed `tls` blob; reads render events from the row alone.
//! - `timeline` kinds: 0 user, 1 group, 2 pair history (owner = "lo hi", seq = event id).
//! - read cursors are upserted inline (not behind).
//!
//! `:memory:` databases (`database = None`, tests) have one connection, shared with the
//! readers under a mutex; file databases give each reader its own read-only connection.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use serde_json::value::RawValue;

use super::{Batch, EventRow, Loaded, Page, Store, StoreError, StoreReader};
use crate::engine::core::{DirOp, GroupRow, UserRow};
use crate::proto::EventKind;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (uid TEXT PRIMARY KEY, name TEXT, extra TEXT,
    disabled INTEGER NOT NULL DEFAULT 0, tokens_after INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chat_groups (gid TEXT PRIMARY KEY, name TEXT, owner TEXT, extra TEXT,
    created INTEGER NOT NULL, dismissed INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (grp TEXT NOT NULL, usr TEXT NOT NULL,
    joined_seq INTEGER NOT NULL, PRIMARY KEY (grp, usr)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, ts INTEGER NOT NULL,
    kind INTEGER NOT NULL, sender TEXT, recipient TEXT, grp TEXT, cid TEXT,
    ref INTEGER, body TEXT, recalled INTEGER NOT NULL DEFAULT 0,
    seq_from INTEGER, seq_to INTEGER, gseq INTEGER);
CREATE INDEX IF NOT EXISTS events_by_ts ON events (ts);
CREATE TABLE IF NOT EXISTS timeline (kind INTEGER NOT NULL, owner TEXT NOT NULL,
    seq INTEGER NOT NULL, event INTEGER NOT NULL, PRIMARY KEY (kind, owner, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS read_cursors (grp TEXT NOT NULL, usr TEXT NOT NULL,
    seq INTEGER NOT NULL, PRIMARY KEY (grp, usr)) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
INSERT OR IGNORE INTO meta (key, value) VALUES ('index_watermark', '0');
";

const EV_COLS: &str = "e.id, e.ts, e.kind, e.sender, e.recipient, e.grp, e.cid, e.ref, e.body, \
                       e.recalled, e.seq_from, e.seq_to, e.gseq";

const TL_USER: i64 = 0;
const TL_GROUP: i64 = 1;
const TL_PAIR: i64 = 2;
/// Most index rows per flush transaction.
const FLUSH_SLICE: usize = 4_000;

/// Where timeline index rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexMode {
    /// In the batch's transaction.
    Inline,
    /// Behind, from an in-memory tail, every `events` events or `age`.
    Behind { events: usize, age: Duration },
}

impl IndexMode {
    /// The policy of §2.4: 10,000 events or 1 s.
    pub const BEHIND: IndexMode = IndexMode::Behind {
        events: 10_000,
        age: Duration::from_secs(1),
    };
}

type TlKey = (i64, Arc<str>);

/// The timeline entries of an event: (kind, owner, seq).
fn entries(e: &EventRow) -> impl Iterator<Item = (i64, Arc<str>, u64)> + '_ {
    let user_from = match (&e.sender, e.seq_from) {
        (Some(s), Some(q)) => Some((TL_USER, s.clone(), q)),
        _ => None,
    };
    let user_to = match (&e.to, e.seq_to) {
        (Some(t), Some(q)) => Some((TL_USER, t.clone(), q)),
        _ => None,
    };
    let group = match (&e.group, e.gseq) {
        (Some(g), Some(q)) => Some((TL_GROUP, g.clone(), q)),
        _ => None,
    };
    let pair = e.pair().map(|p| (TL_PAIR, Arc::from(p), e.id));
    [user_from, user_to, group, pair].into_iter().flatten()
}

/// Index entries of committed events, by timeline.
#[derive(Debug, Default)]
struct Part {
    map: HashMap<TlKey, BTreeMap<u64, u64>>,
    events: usize,
    rows: usize,
    since: Option<Instant>,
    max_event: u64,
}

impl Part {
    fn add(&mut self, e: &EventRow) {
        for (kind, owner, seq) in entries(e) {
            self.map.entry((kind, owner)).or_default().insert(seq, e.id);
            self.rows += 1;
        }
        self.events += 1;
        self.since.get_or_insert_with(Instant::now);
        self.max_event = self.max_event.max(e.id);
    }

    /// Entries of one timeline strictly between `lo` and `hi`, at most `n`, in order.
    fn range(&self, key: &TlKey, lo: u64, hi: u64, desc: bool, n: usize) -> Vec<(u64, u64)> {
        let Some(m) = self.map.get(key) else {
            return Vec::new();
        };
        if lo >= hi {
            return Vec::new();
        }
        use std::ops::Bound::Excluded;
        let r = m.range((Excluded(lo), Excluded(hi))).map(|(s, e)| (*s, *e));
        if desc {
            r.rev().take(n).collect()
        } else {
            r.take(n).collect()
        }
    }

    /// All entries as sorted rows (kind, owner, seq, event).
    fn sorted_rows(&self) -> Vec<(i64, Arc<str>, u64, u64)> {
        let mut keys: Vec<&TlKey> = self.map.keys().collect();
        keys.sort();
        let mut rows = Vec::with_capacity(self.rows);
        for k in keys {
            for (seq, ev) in &self.map[k] {
                rows.push((k.0, k.1.clone(), *seq, *ev));
            }
        }
        rows
    }
}

/// Index entries committed but not yet in the `timeline` table: `live` (added after each
/// commit) and `frozen` (being flushed, slice by slice, between batches).
#[derive(Debug, Default)]
struct Tail {
    live: Part,
    frozen: Option<Part>,
}

impl Tail {
    fn is_empty(&self) -> bool {
        self.live.events == 0 && self.frozen.is_none()
    }
}

/// The writer's progress through the frozen part.
struct Flushing {
    rows: Vec<(i64, Arc<str>, u64, u64)>,
    done: usize,
    max_event: u64,
    started: Instant,
}

/// u64 → SQLite INTEGER (saturating).
fn sq(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn kind_code(k: EventKind) -> i64 {
    match k {
        EventKind::Msg => 1,
        EventKind::Recall => 2,
        EventKind::Read => 3,
        EventKind::Notice => 4,
    }
}

fn kind_of(code: i64) -> Option<EventKind> {
    Some(match code {
        1 => EventKind::Msg,
        2 => EventKind::Recall,
        3 => EventKind::Read,
        4 => EventKind::Notice,
        _ => return None,
    })
}

fn opt_u64(v: Option<i64>) -> Option<u64> {
    v.map(|v| v.max(0) as u64)
}

fn event_of(row: &Row<'_>) -> rusqlite::Result<Result<EventRow, StoreError>> {
    let id: i64 = row.get(0)?;
    let kind: i64 = row.get(2)?;
    let body: Option<String> = row.get(8)?;
    let Some(kind) = kind_of(kind) else {
        return Ok(Err(StoreError::Corrupt(format!("event {id}: kind {kind}"))));
    };
    let body = match body.map(RawValue::from_string).transpose() {
        Ok(b) => b.map(Arc::from),
        Err(e) => return Ok(Err(StoreError::Corrupt(format!("event {id}: body {e}")))),
    };
    let text = |i: usize| -> rusqlite::Result<Option<Arc<str>>> {
        Ok(row.get::<_, Option<String>>(i)?.map(Arc::from))
    };
    Ok(Ok(EventRow {
        id: id.max(0) as u64,
        ts: row.get(1)?,
        kind,
        sender: text(3)?,
        to: text(4)?,
        group: text(5)?,
        cid: text(6)?,
        reference: opt_u64(row.get(7)?),
        body,
        recalled: row.get::<_, i64>(9)? != 0,
        seq_from: opt_u64(row.get(10)?),
        seq_to: opt_u64(row.get(11)?),
        gseq: opt_u64(row.get(12)?),
    }))
}

fn json_of(s: Option<String>) -> Option<serde_json::Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

/// Checkpoints the WAL into the database file once a second on its own connection and
/// thread (`im-checkpoint`): a PASSIVE checkpoint runs beside the writer instead of inside
/// its loop, where copying and fsyncing the pages stalled every commit behind it (p99 of
/// 1:1 delivery 156 ms at 5,000 msg/s with it in the writer).
struct Checkpointer {
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer, rusqlite::Error> {
        let conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;")?;
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("im-checkpoint".into())
            .spawn(move || {
                let (lock, cv) = &*flag;
                let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    let (g, _) = cv
                        .wait_timeout(stopped, std::time::Duration::from_secs(1))
                        .unwrap_or_else(|e| e.into_inner());
                    stopped = g;
                    if *stopped {
                        break;
                    }
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "WAL checkpoint failed");
                    }
                }
            })
            .map_err(|e| {
                // The OS refused a thread: the WAL then grows until the TRUNCATE checkpoint
                // at shutdown; everything else keeps working.
                tracing::error!(error = %e, "cannot start the WAL checkpoint thread");
            })
            .ok();
        Ok(Checkpointer { stop, thread })
    }

    fn stop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The SQLite store.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: Option<std::path::PathBuf>,
    checkpointer: Option<Checkpointer>,
    mode: IndexMode,
    tail: Arc<RwLock<Tail>>,
    flushing: Option<Flushing>,
    slice: usize,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file, or an in-memory one for `None`, with
    /// the index written inline.
    pub fn open(path: Option<&Path>) -> Result<SqliteStore, rusqlite::Error> {
        Self::open_with(path, IndexMode::Inline)
    }

    /// [`SqliteStore::open`] with a choice of index mode.
    pub fn open_with(path: Option<&Path>, mode: IndexMode) -> Result<SqliteStore, rusqlite::Error> {
        let conn = match path {
            Some(p) => Connection::open(p)?,
            None => Connection::open_in_memory()?,
        };
        if path.is_some() {
            let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(mode, "SQLite did not switch to WAL");
            }
            conn.execute_batch(
                "PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0; PRAGMA busy_timeout=5000;",
            )?;
        }
        conn.execute_batch("PRAGMA cache_size=-65536; PRAGMA temp_store=MEMORY;")?;
        conn.execute_batch(SCHEMA)?;
        let checkpointer = path.map(Checkpointer::start).transpose()?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: path.map(Path::to_path_buf),
            checkpointer,
            mode,
            tail: Arc::default(),
            flushing: None,
            slice: FLUSH_SLICE,
        })
    }

    /// Sets the most index rows per flush transaction (tests use tiny slices).
    pub fn with_flush_slice(mut self, rows: usize) -> Self {
        self.slice = rows.max(1);
        self
    }

    /// Index entries waiting in the tail (tests, metrics).
    pub fn tail_rows(&self) -> usize {
        let t = self.tail.read();
        t.live.rows + t.frozen.as_ref().map_or(0, |f| f.rows)
    }

    /// One step of the index flush: freezes the live tail if nothing is being flushed, then
    /// writes the next slice of ≤ 20,000 sorted rows in one transaction (the last one with
    /// the watermark) and drops the frozen part once all of it is in the table. Returns
    /// whether a flush is still in progress.
    fn flush_step(&mut self) -> Result<bool, StoreError> {
        if self.flushing.is_none() {
            let mut t = self.tail.write();
            if t.live.events == 0 {
                return Ok(false);
            }
            let part = std::mem::take(&mut t.live);
            self.flushing = Some(Flushing {
                rows: part.sorted_rows(),
                done: 0,
                max_event: part.max_event,
                started: Instant::now(),
            });
            t.frozen = Some(part);
        }
        let Some(f) = self.flushing.as_mut() else {
            return Ok(false);
        };
        let end = (f.done + self.slice).min(f.rows.len());
        let last = end == f.rows.len();
        {
            let mut conn = self.conn.lock();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT OR IGNORE INTO timeline (kind, owner, seq, event) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (kind, owner, seq, ev) in &f.rows[f.done..end] {
                    st.execute(params![kind, &**owner, sq(*seq), sq(*ev)])?;
                }
                if last {
                    tx.execute(
                        "UPDATE meta SET value = ?1 WHERE key = 'index_watermark'",
                        params![f.max_event.to_string()],
                    )?;
                }
            }
            tx.commit()?;
        }
        f.done = end;
        if !last {
            return Ok(true);
        }
        tracing::debug!(
            rows = f.rows.len(),
            ms = f.started.elapsed().as_millis() as u64,
            "index flushed"
        );
        self.flushing = None;
        self.tail.write().frozen = None;
        Ok(false)
    }

    /// Writes the whole tail into `timeline` (shutdown, tests).
    pub fn flush_index(&mut self) -> Result<(), StoreError> {
        while self.flush_step()? || !self.tail.read().is_empty() {}
        Ok(())
    }

    fn write(tx: &rusqlite::Transaction<'_>, batch: &Batch, inline: bool) -> rusqlite::Result<()> {
        for op in &batch.ops {
            match op {
                DirOp::User(u) => {
                    tx.prepare_cached(
                        "INSERT INTO users (uid, name, extra, disabled, tokens_after, created)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (uid) DO UPDATE SET name = excluded.name,
                           extra = excluded.extra, disabled = excluded.disabled,
                           tokens_after = excluded.tokens_after",
                    )?
                    .execute(params![
                        &*u.uid,
                        u.name,
                        u.extra.as_ref().map(|v| v.to_string()),
                        u.disabled,
                        u.tokens_after,
                        u.created
                    ])?;
                }
                DirOp::Group(g) => {
                    tx.prepare_cached(
                        "INSERT INTO chat_groups (gid, name, owner, extra, created, dismissed)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (gid) DO UPDATE SET name = excluded.name,
                           owner = excluded.owner, extra = excluded.extra,
                           dismissed = excluded.dismissed",
                    )?
                    .execute(params![
                        &*g.gid,
                        g.name,
                        g.owner.as_deref(),
                        g.extra.as_ref().map(|v| v.to_string()),
                        g.created,
                        g.dismissed
                    ])?;
                }
                DirOp::AddMember {
                    group,
                    user,
                    joined,
                } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO members (grp, usr, joined_seq) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![&**group, &**user, sq(*joined)])?;
                }
                DirOp::RemoveMember { group, user } => {
                    tx.prepare_cached("DELETE FROM members WHERE grp = ?1 AND usr = ?2")?
                        .execute(params![&**group, &**user])?;
                }
                DirOp::Dismiss(group) => {
                    tx.prepare_cached("UPDATE chat_groups SET dismissed = 1 WHERE gid = ?1")?
                        .execute(params![&**group])?;
                    tx.prepare_cached("DELETE FROM members WHERE grp = ?1")?
                        .execute(params![&**group])?;
                }
            }
        }
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO events (id, ts, kind, sender, recipient, grp, cid, ref, body,
                   recalled, seq_from, seq_to, gseq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?;
            let mut tl = tx.prepare_cached(
                "INSERT INTO timeline (kind, owner, seq, event) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for e in &batch.events {
                ins.execute(params![
                    sq(e.id),
                    e.ts,
                    kind_code(e.kind),
                    e.sender.as_deref(),
                    e.to.as_deref(),
                    e.group.as_deref(),
                    e.cid.as_deref(),
                    e.reference.map(sq),
                    e.body.as_ref().map(|b| b.get()),
                    e.recalled,
                    e.seq_from.map(sq),
                    e.seq_to.map(sq),
                    e.gseq.map(sq),
                ])?;
                if inline {
                    for (kind, owner, seq) in entries(e) {
                        tl.execute(params![kind, &*owner, sq(seq), sq(e.id)])?;
                    }
                }
            }
        }
        for id in &batch.recalls {
            tx.prepare_cached("UPDATE events SET recalled = 1, body = NULL WHERE id = ?1")?
                .execute(params![sq(*id)])?;
        }
        for (g, u, seq) in &batch.cursors {
            tx.prepare_cached(
                "INSERT INTO read_cursors (grp, usr, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (grp, usr) DO UPDATE SET seq = max(seq, excluded.seq)",
            )?
            .execute(params![&**g, &**u, sq(*seq)])?;
        }
        Ok(())
    }
}

impl Store for SqliteStore {
    fn load(&mut self, recent_since: i64) -> Result<Loaded, StoreError> {
        let conn = self.conn.lock();
        let mut out = Loaded::default();
        let mut st = conn.prepare(
            "SELECT uid, name, extra, disabled, tokens_after, created FROM users ORDER BY uid",
        )?;
        let rows = st.query_map([], |r| {
            Ok(UserRow {
                uid: Arc::from(r.get::<_, String>(0)?),
                name: r.get(1)?,
                extra: json_of(r.get(2)?),
                disabled: r.get::<_, i64>(3)? != 0,
                tokens_after: r.get(4)?,
                created: r.get(5)?,
            })
        })?;
        for r in rows {
            out.users.push(r?);
        }
        let mut st = conn.prepare(
            "SELECT gid, name, owner, extra, created, dismissed FROM chat_groups ORDER BY gid",
        )?;
        let rows = st.query_map([], |r| {
            Ok(GroupRow {
                gid: Arc::from(r.get::<_, String>(0)?),
                name: r.get(1)?,
                owner: r.get::<_, Option<String>>(2)?.map(Arc::from),
                extra: json_of(r.get(3)?),
                created: r.get(4)?,
                dismissed: r.get::<_, i64>(5)? != 0,
            })
        })?;
        for r in rows {
            out.groups.push(r?);
        }
        let mut st = conn.prepare("SELECT grp, usr, joined_seq FROM members")?;
        let rows = st.query_map([], |r| {
            Ok((
                Arc::<str>::from(r.get::<_, String>(0)?),
                Arc::<str>::from(r.get::<_, String>(1)?),
                r.get::<_, i64>(2)?.max(0) as u64,
            ))
        })?;
        for r in rows {
            out.members.push(r?);
        }
        let mut heads: HashMap<TlKey, u64> = HashMap::new();
        let mut st = conn.prepare(
            "SELECT kind, owner, MAX(seq) FROM timeline WHERE kind < 2 GROUP BY kind, owner",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                Arc::<str>::from(r.get::<_, String>(1)?),
                r.get::<_, i64>(2)?.max(0) as u64,
            ))
        })?;
        for r in rows {
            let (kind, owner, seq) = r?;
            heads.insert((kind, owner), seq);
        }
        // Replay the events above the watermark into the tail (both modes: a database
        // written behind may be reopened inline).
        let watermark: u64 = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'index_watermark'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut tail = Part::default();
        let mut st = conn.prepare(&format!(
            "SELECT {EV_COLS} FROM events e WHERE e.id > ?1 ORDER BY e.id"
        ))?;
        let rows = st.query_map(params![sq(watermark)], event_of)?;
        for r in rows {
            let ev = r??;
            for (kind, owner, seq) in entries(&ev) {
                if kind != TL_PAIR {
                    let h = heads.entry((kind, owner)).or_insert(0);
                    *h = (*h).max(seq);
                }
            }
            tail.add(&ev);
        }
        if tail.events > 0 {
            tracing::info!(events = tail.events, watermark, "replayed unindexed events");
        }
        *self.tail.write() = Tail {
            live: tail,
            frozen: None,
        };
        self.flushing = None;
        for ((kind, owner), seq) in heads {
            if kind == TL_USER {
                out.user_heads.push((owner, seq));
            } else {
                out.group_heads.push((owner, seq));
            }
        }
        let max: Option<i64> = conn
            .query_row("SELECT MAX(id) FROM events", [], |r| r.get(0))
            .optional()?
            .flatten();
        out.max_event_id = max.unwrap_or(0).max(0) as u64;
        let mut st = conn.prepare(&format!(
            "SELECT {EV_COLS} FROM events e WHERE e.ts >= ?1 AND e.kind = 1 ORDER BY e.id"
        ))?;
        let rows = st.query_map(params![recent_since], event_of)?;
        for r in rows {
            out.recent.push(r??);
        }
        Ok(out)
    }

    fn commit(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let inline = self.mode == IndexMode::Inline;
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        Self::write(&tx, batch, inline)?;
        if inline && self.tail.read().is_empty() {
            // Everything up to here is indexed (the replayed tail, if any, is flushed first).
            if let Some(max) = batch.events.iter().map(|e| e.id).max() {
                tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'index_watermark'")?
                    .execute(params![max.to_string()])?;
            }
        }
        tx.commit()?;
        drop(conn);
        if !inline {
            let mut t = self.tail.write();
            for e in &batch.events {
                t.live.add(e);
            }
        }
        Ok(())
    }

    fn maintain(&mut self) {
        let due = self.flushing.is_some() || {
            let t = self.tail.read();
            match self.mode {
                IndexMode::Inline => t.live.events > 0,
                IndexMode::Behind { events, age } => {
                    t.live.events >= events || t.live.since.is_some_and(|s| s.elapsed() >= age)
                }
            }
        };
        if due {
            if let Err(e) = self.flush_step() {
                tracing::error!(error = %e, "index flush failed; retrying after the next batch");
            }
        }
    }

    fn close(&mut self) {
        if let Some(mut c) = self.checkpointer.take() {
            c.stop();
        }
        if let Err(e) = self.flush_index() {
            tracing::error!(error = %e, "final index flush failed");
        }
        if self.path.is_none() {
            return;
        }
        let conn = self.conn.lock();
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "final WAL checkpoint failed");
        }
    }

    fn reader(&self) -> Result<Box<dyn StoreReader>, StoreError> {
        let conn = match &self.path {
            None => self.conn.clone(),
            Some(p) => {
                let c = Connection::open_with_flags(
                    p,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.execute_batch(
                    "PRAGMA query_only=1; PRAGMA busy_timeout=1000; PRAGMA cache_size=-16384;",
                )?;
                Arc::new(Mutex::new(c))
            }
        };
        Ok(Box::new(SqliteReader {
            conn,
            tail: self.tail.clone(),
        }))
    }
}

/// A reader's connection (its own, or the shared in-memory one) and the shared tail.
pub struct SqliteReader {
    conn: Arc<Mutex<Connection>>,
    tail: Arc<RwLock<Tail>>,
}

impl SqliteReader {
    /// Up to `limit + 1` events of one timeline strictly between `lo` and `hi`: the tail
    /// first, then the table, merged by seq.
    fn page(
        &mut self,
        kind: i64,
        owner: &str,
        lo: u64,
        hi: u64,
        desc: bool,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let key: TlKey = (kind, Arc::from(owner));
        let n = limit + 1;
        let mut merged: BTreeMap<u64, u64> = BTreeMap::new();
        {
            let t = self.tail.read();
            merged.extend(t.live.range(&key, lo, hi, desc, n));
            if let Some(f) = &t.frozen {
                merged.extend(f.range(&key, lo, hi, desc, n));
            }
        }
        let conn = self.conn.lock();
        let sql = if desc {
            "SELECT seq, event FROM timeline WHERE kind = ?1 AND owner = ?2 AND seq > ?3
             AND seq < ?4 ORDER BY seq DESC LIMIT ?5"
        } else {
            "SELECT seq, event FROM timeline WHERE kind = ?1 AND owner = ?2 AND seq > ?3
             AND seq < ?4 ORDER BY seq LIMIT ?5"
        };
        let mut st = conn.prepare_cached(sql)?;
        let rows = st.query_map(params![kind, owner, sq(lo), sq(hi), n as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, i64>(1)?.max(0) as u64,
            ))
        })?;
        for r in rows {
            let (seq, ev) = r?;
            merged.insert(seq, ev);
        }
        let ids: Vec<u64> = if desc {
            merged.values().rev().take(n).copied().collect()
        } else {
            merged.values().take(n).copied().collect()
        };
        let mut out = Vec::with_capacity(ids.len());
        let mut ev =
            conn.prepare_cached(&format!("SELECT {EV_COLS} FROM events e WHERE e.id = ?1"))?;
        for id in ids {
            match ev.query_row(params![sq(id)], event_of).optional()? {
                Some(e) => out.push(e?),
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "indexed event {id} is missing"
                    )))
                }
            }
        }
        let more = out.len() > limit;
        out.truncate(limit);
        Ok((out, more))
    }
}

impl StoreReader for SqliteReader {
    fn user_timeline(&mut self, uid: &str, after: u64, limit: usize) -> Result<Page, StoreError> {
        self.page(TL_USER, uid, after, u64::MAX, false, limit)
    }

    fn group_timeline(&mut self, gid: &str, after: u64, limit: usize) -> Result<Page, StoreError> {
        self.page(TL_GROUP, gid, after, u64::MAX, false, limit)
    }

    fn group_history(
        &mut self,
        gid: &str,
        before: u64,
        min: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.page(TL_GROUP, gid, min, before, true, limit)
    }

    fn pair_history(&mut self, pair: &str, before: u64, limit: usize) -> Result<Page, StoreError> {
        self.page(TL_PAIR, pair, 0, before, true, limit)
    }

    fn events(&mut self, ids: &[u64]) -> Result<Vec<EventRow>, StoreError> {
        let sql = format!("SELECT {EV_COLS} FROM events e WHERE e.id = ?1");
        let conn = self.conn.lock();
        let mut st = conn.prepare_cached(&sql)?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(ev) = st.query_row(params![sq(*id)], event_of).optional()? {
                out.push(ev?);
            }
        }
        Ok(out)
    }

    fn read_cursors(&mut self, gid: &str, seq: u64) -> Result<Vec<Arc<str>>, StoreError> {
        let conn = self.conn.lock();
        let mut st =
            conn.prepare_cached("SELECT usr FROM read_cursors WHERE grp = ?1 AND seq >= ?2")?;
        let rows = st.query_map(params![gid, sq(seq)], |r| {
            Ok(Arc::<str>::from(r.get::<_, String>(0)?))
        })?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?);
        }
        Ok(out)
    }
}
