//! Room history in SQLite: one table of (room, name, text, time), read back newest last.

use crate::protocol::Said;
use rusqlite::{params, Connection};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The history database. Its calls are short, so the server application makes them
/// inline; a busy server would move them to `spawn_blocking` or a writer task.
pub struct History {
    db: Connection,
}

impl History {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> rusqlite::Result<History> {
        let db = Connection::open(path)?;
        // WAL with NORMAL sync: a line costs an append, not an fsync, and readers never
        // wait for the writer.
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS lines (
                 id   INTEGER PRIMARY KEY,
                 room TEXT NOT NULL,
                 name TEXT NOT NULL,
                 text TEXT NOT NULL,
                 at   INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS lines_by_room ON lines (room, id);",
        )?;
        Ok(History { db })
    }

    /// Stores a line said now.
    pub fn append(&self, room: &str, name: &str, text: &str) -> rusqlite::Result<()> {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.db.execute(
            "INSERT INTO lines (room, name, text, at) VALUES (?1, ?2, ?3, ?4)",
            params![room, name, text, at],
        )?;
        Ok(())
    }

    /// The last `count` lines of `room`, oldest first.
    pub fn last(&self, room: &str, count: usize) -> rusqlite::Result<Vec<Said>> {
        let mut query = self.db.prepare_cached(
            "SELECT name, text, at FROM
                 (SELECT id, name, text, at FROM lines WHERE room = ?1 ORDER BY id DESC LIMIT ?2)
             ORDER BY id",
        )?;
        let rows = query.query_map(params![room, count as i64], |row| {
            Ok(Said {
                name: row.get(0)?,
                text: row.get(1)?,
                at: row.get(2)?,
            })
        })?;
        rows.collect()
    }
}
