//! The engine's persistence boundary: a [`Store`] (the writer's: load the directory, commit a
//! [`Batch`] atomically and durably) and [`StoreReader`]s (paged timeline and history
//! queries for the reader threads). SQLite today ([`sqlite`]); a PostgreSQL backend can
//! implement the same traits without touching the Core.

use std::sync::Arc;

pub use super::core::{Batch, EventRow, Loaded};

pub mod sqlite;

/// A store failure (the writer answers 503 and reloads; readers answer 500).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// The writer's side: one instance, used only from the writer thread.
pub trait Store: Send {
    /// Everything the Core needs at start; `recent_since` (Unix ms): messages from then on
    /// are returned in [`Loaded::recent`] (dedupe cache, recall index).
    fn load(&mut self, recent_since: i64) -> Result<Loaded, StoreError>;
    /// Writes the batch in one transaction, durably; on error nothing of it is written.
    fn commit(&mut self, batch: &Batch) -> Result<(), StoreError>;
    /// Housekeeping between batches (WAL checkpoints); errors are logged, not fatal.
    fn maintain(&mut self) {}
    /// Called once when the writer stops (a final checkpoint).
    fn close(&mut self) {}
    /// A reader for one reader thread.
    fn reader(&self) -> Result<Box<dyn StoreReader>, StoreError>;
}

/// A page of events and whether more follow.
pub type Page = (Vec<EventRow>, bool);

/// Read-only queries, one instance per reader thread.
pub trait StoreReader: Send {
    /// A user timeline after `after`, ascending, at most `limit`.
    fn user_timeline(&mut self, uid: &str, after: u64, limit: usize) -> Result<Page, StoreError>;
    /// A group timeline after `after`, ascending.
    fn group_timeline(&mut self, gid: &str, after: u64, limit: usize) -> Result<Page, StoreError>;
    /// A group timeline before `before` (exclusive) down to `min` (exclusive), descending.
    fn group_history(
        &mut self,
        gid: &str,
        before: u64,
        min: u64,
        limit: usize,
    ) -> Result<Page, StoreError>;
    /// The messages of the 1:1 conversation `pair` ([`super::core::pair_key`]) with ids below
    /// `before`, descending.
    fn pair_history(&mut self, pair: &str, before: u64, limit: usize) -> Result<Page, StoreError>;
    /// Events by id (missing ones skipped).
    fn events(&mut self, ids: &[u64]) -> Result<Vec<EventRow>, StoreError>;
    /// Users whose read cursor in `gid` is at least `seq`.
    fn read_cursors(&mut self, gid: &str, seq: u64) -> Result<Vec<Arc<str>>, StoreError>;
}
