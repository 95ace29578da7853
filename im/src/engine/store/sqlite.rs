//! The SQLite store (rusqlite, system libsqlite3): WAL, `synchronous=FULL`, one transaction
//! per writer batch, timeline index rows written inline in the same transaction.
//!
//! Schema as built (adapted from docs/IM-DESIGN.md §2.4):
//! - users, groups (`chat_groups`), members, read cursors are keyed by their text ids
//!   instead of interned integer row ids (simpler; interning is a later optimisation).
//! - `events` carries the text ids of sender, recipient and group and the event's seqs on
//!   each timeline (`seq_from`: sender's user timeline, `seq_to`: recipient's, `gseq`:
//!   group's) instead of a packed `tls` blob; reads render events from the row alone.
//! - pair history is the partial index `events_by_pair (pair, id)` on 1:1 messages instead
//!   of `timeline` rows of kind 2.
//! - `timeline` holds kind 0 (user) and 1 (group) rows, written inline (not behind).
//!
//! `:memory:` databases (`database = None`, tests) have one connection, shared with the
//! readers under a mutex; file databases give each reader its own read-only connection.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
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
    kind INTEGER NOT NULL, sender TEXT, recipient TEXT, grp TEXT, pair TEXT, cid TEXT,
    ref INTEGER, body TEXT, recalled INTEGER NOT NULL DEFAULT 0,
    seq_from INTEGER, seq_to INTEGER, gseq INTEGER);
CREATE INDEX IF NOT EXISTS events_by_pair ON events (pair, id) WHERE pair IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_by_ts ON events (ts);
CREATE TABLE IF NOT EXISTS timeline (kind INTEGER NOT NULL, owner TEXT NOT NULL,
    seq INTEGER NOT NULL, event INTEGER NOT NULL, PRIMARY KEY (kind, owner, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS read_cursors (grp TEXT NOT NULL, usr TEXT NOT NULL,
    seq INTEGER NOT NULL, PRIMARY KEY (grp, usr)) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
";

const EV_COLS: &str = "e.id, e.ts, e.kind, e.sender, e.recipient, e.grp, e.cid, e.ref, e.body, \
                       e.recalled, e.seq_from, e.seq_to, e.gseq";

const TL_USER: i64 = 0;
const TL_GROUP: i64 = 1;

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

/// The SQLite store.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: Option<std::path::PathBuf>,
    last_checkpoint: Instant,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file, or an in-memory one for `None`.
    pub fn open(path: Option<&Path>) -> Result<SqliteStore, rusqlite::Error> {
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
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: path.map(Path::to_path_buf),
            last_checkpoint: Instant::now(),
        })
    }

    fn write(tx: &rusqlite::Transaction<'_>, batch: &Batch) -> rusqlite::Result<()> {
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
                "INSERT INTO events (id, ts, kind, sender, recipient, grp, pair, cid, ref, body,
                   recalled, seq_from, seq_to, gseq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
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
                    e.pair(),
                    e.cid.as_deref(),
                    e.reference.map(sq),
                    e.body.as_ref().map(|b| b.get()),
                    e.recalled,
                    e.seq_from.map(sq),
                    e.seq_to.map(sq),
                    e.gseq.map(sq),
                ])?;
                if let (Some(s), Some(seq)) = (&e.sender, e.seq_from) {
                    tl.execute(params![TL_USER, &**s, sq(seq), sq(e.id)])?;
                }
                if let (Some(t), Some(seq)) = (&e.to, e.seq_to) {
                    tl.execute(params![TL_USER, &**t, sq(seq), sq(e.id)])?;
                }
                if let (Some(g), Some(seq)) = (&e.group, e.gseq) {
                    tl.execute(params![TL_GROUP, &**g, sq(seq), sq(e.id)])?;
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
        let mut st =
            conn.prepare("SELECT kind, owner, MAX(seq) FROM timeline GROUP BY kind, owner")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                Arc::<str>::from(r.get::<_, String>(1)?),
                r.get::<_, i64>(2)?.max(0) as u64,
            ))
        })?;
        for r in rows {
            let (kind, owner, seq) = r?;
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
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        Self::write(&tx, batch)?;
        tx.commit()?;
        Ok(())
    }

    fn maintain(&mut self) {
        if self.path.is_none() || self.last_checkpoint.elapsed().as_millis() < 1000 {
            return;
        }
        self.last_checkpoint = Instant::now();
        let conn = self.conn.lock();
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }

    fn close(&mut self) {
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
        Ok(Box::new(SqliteReader { conn }))
    }
}

/// A reader's connection (its own, or the shared in-memory one).
pub struct SqliteReader {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteReader {
    fn page(
        &mut self,
        sql: &str,
        args: &[&dyn rusqlite::ToSql],
        limit: usize,
    ) -> Result<Page, StoreError> {
        let conn = self.conn.lock();
        let mut st = conn.prepare_cached(sql)?;
        let mut out = Vec::new();
        let rows = st.query_map(args, event_of)?;
        for r in rows {
            out.push(r??);
        }
        let more = out.len() > limit;
        out.truncate(limit);
        Ok((out, more))
    }
}

impl StoreReader for SqliteReader {
    fn user_timeline(&mut self, uid: &str, after: u64, limit: usize) -> Result<Page, StoreError> {
        let sql = format!(
            "SELECT {EV_COLS} FROM timeline t JOIN events e ON e.id = t.event
             WHERE t.kind = 0 AND t.owner = ?1 AND t.seq > ?2 ORDER BY t.seq LIMIT ?3"
        );
        let lim = limit as i64 + 1;
        self.page(&sql, &[&uid, &sq(after), &lim], limit)
    }

    fn group_timeline(&mut self, gid: &str, after: u64, limit: usize) -> Result<Page, StoreError> {
        let sql = format!(
            "SELECT {EV_COLS} FROM timeline t JOIN events e ON e.id = t.event
             WHERE t.kind = 1 AND t.owner = ?1 AND t.seq > ?2 ORDER BY t.seq LIMIT ?3"
        );
        let lim = limit as i64 + 1;
        self.page(&sql, &[&gid, &sq(after), &lim], limit)
    }

    fn group_history(
        &mut self,
        gid: &str,
        before: u64,
        min: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let sql = format!(
            "SELECT {EV_COLS} FROM timeline t JOIN events e ON e.id = t.event
             WHERE t.kind = 1 AND t.owner = ?1 AND t.seq < ?2 AND t.seq > ?3
             ORDER BY t.seq DESC LIMIT ?4"
        );
        let lim = limit as i64 + 1;
        self.page(&sql, &[&gid, &sq(before), &sq(min), &lim], limit)
    }

    fn pair_history(&mut self, pair: &str, before: u64, limit: usize) -> Result<Page, StoreError> {
        let sql = format!(
            "SELECT {EV_COLS} FROM events e WHERE e.pair = ?1 AND e.id < ?2
             ORDER BY e.id DESC LIMIT ?3"
        );
        let lim = limit as i64 + 1;
        self.page(&sql, &[&pair, &sq(before), &lim], limit)
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
