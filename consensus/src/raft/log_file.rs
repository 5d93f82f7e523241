//! The Raft log's file: an append-only sequence of checksummed records, replayed at open.
//!
//! A record is `[length: u32 LE][CRC-32 of the body: u32 LE][body]`, and a body is a kind byte
//! and its data:
//!
//! | kind | data | effect when replayed |
//! | --- | --- | --- |
//! | 1 entry | the JSON [`Entry`] | the entry at its index |
//! | 2 vote | the JSON [`Vote`] | the vote |
//! | 3 committed | the JSON `Option<LogId>` | the committed log id |
//! | 4 truncate | the index, u64 LE | drops the entries from that index on |
//! | 5 purge | the JSON [`LogId`] | drops the entries up to it; the last purged log id |
//!
//! Appending a record and one `fdatasync` is all a write costs: a small append here takes less
//! than half as long as a redb commit, which rewrites its B-tree's pages. A crash can leave a
//! torn record at the end; replay stops at the first record that does not check out and cuts the
//! file there (nothing after it was acknowledged, since the writer fsyncs before it answers).
//! When purges have left the file mostly dead records, [`LogFile::compact`] rewrites it with the
//! live ones (a new file, fsynced, renamed over the old one).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{Entry, LogId, Vote};
use serde::Deserialize;

use super::{NodeId, TypeConfig};

const ENTRY: u8 = 1;
const VOTE: u8 = 2;
const COMMITTED: u8 = 3;
const TRUNCATE: u8 = 4;
const PURGE: u8 = 5;

/// Length and checksum before each body.
const HEADER: usize = 8;
/// Compact once the file is this much larger than twice its live records.
const SLACK: u64 = 1 << 20;

/// Where an entry's JSON is in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub log_id: LogId<NodeId>,
    pub offset: u64,
    pub len: u32,
}

/// What the file holds, replayed.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Contents {
    pub entries: BTreeMap<u64, Slot>,
    pub vote: Option<Vote<NodeId>>,
    pub committed: Option<LogId<NodeId>>,
    pub last_purged: Option<LogId<NodeId>>,
}

/// One change to the log, as written and as replayed.
#[derive(Debug)]
pub(super) enum Record {
    /// The entry's log id and its JSON.
    Entry(LogId<NodeId>, Vec<u8>),
    Vote(Vote<NodeId>),
    Committed(Option<LogId<NodeId>>),
    Truncate(u64),
    Purge(LogId<NodeId>),
}

impl Contents {
    /// The effect of `record`, whose body (for an entry, its JSON) starts at `offset`.
    fn apply(&mut self, record: &Record, offset: u64) {
        match record {
            Record::Entry(log_id, json) => {
                let slot = Slot {
                    log_id: *log_id,
                    offset,
                    len: json.len() as u32,
                };
                self.entries.insert(log_id.index, slot);
            }
            Record::Vote(vote) => self.vote = Some(*vote),
            Record::Committed(committed) => self.committed = *committed,
            Record::Truncate(since) => {
                self.entries.split_off(since);
            }
            Record::Purge(log_id) => {
                self.entries = self.entries.split_off(&log_id.index.saturating_add(1));
                self.last_purged = Some(*log_id);
            }
        }
    }

    /// Bytes the live records would take in a compacted file.
    fn live_bytes(&self) -> u64 {
        let entries: u64 = self
            .entries
            .values()
            .map(|s| (HEADER + 1) as u64 + u64::from(s.len))
            .sum();
        entries + 512
    }
}

/// Records encoded for one write, with where each entry's JSON lands relative to the start.
#[derive(Default)]
pub(super) struct Batch {
    buf: Vec<u8>,
    /// Each record with the offset of its data in `buf`.
    records: Vec<(Record, u64)>,
}

impl Batch {
    pub fn push(&mut self, record: Record) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; HEADER]);
        let data_at = match &record {
            Record::Entry(_, json) => {
                self.buf.push(ENTRY);
                let at = self.buf.len();
                self.buf.extend_from_slice(json);
                at
            }
            Record::Vote(vote) => self.push_json(VOTE, vote),
            Record::Committed(committed) => self.push_json(COMMITTED, committed),
            Record::Truncate(since) => {
                self.buf.push(TRUNCATE);
                let at = self.buf.len();
                self.buf.extend_from_slice(&since.to_le_bytes());
                at
            }
            Record::Purge(log_id) => self.push_json(PURGE, log_id),
        };
        let body = &self.buf[start + HEADER..];
        let (len, crc) = (body.len() as u32, crc32fast::hash(body));
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
        self.records.push((record, data_at as u64));
    }

    fn push_json(&mut self, kind: u8, value: &impl serde::Serialize) -> usize {
        self.buf.push(kind);
        let at = self.buf.len();
        serde_json::to_writer(&mut self.buf, value).expect("log ids and votes always encode");
        at
    }

    /// The encoded records.
    #[cfg(test)]
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The effect of this batch, written at `at`, on `contents`.
    pub fn apply(&self, contents: &mut Contents, at: u64) {
        for (record, offset) in &self.records {
            contents.apply(record, at + offset);
        }
    }

    /// Whether this batch drops entries (a truncation or a purge), after which the file may want
    /// compacting.
    pub fn drops_entries(&self) -> bool {
        self.records
            .iter()
            .any(|(r, _)| matches!(r, Record::Truncate(_) | Record::Purge(_)))
    }

    /// The log ids of the entries in this batch.
    pub fn entry_ids(&self) -> impl Iterator<Item = LogId<NodeId>> + '_ {
        self.records.iter().filter_map(|(r, _)| match r {
            Record::Entry(id, _) => Some(*id),
            _ => None,
        })
    }
}

/// The open log file: appends at its end, and a handle for readers.
pub(super) struct LogFile {
    path: PathBuf,
    file: Arc<File>,
    end: u64,
}

impl LogFile {
    /// Opens (or creates) the file at `path` and replays it. A torn or garbled record cuts the
    /// file there, with a warning; a record that checks out but does not decode is an error.
    pub fn open(path: &Path) -> io::Result<(Self, Contents)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let bytes = std::fs::read(path)?;
        let (contents, end) = replay(&bytes).map_err(|(at, e)| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the raft log {} at byte {at}: {e}", path.display()),
            )
        })?;
        if end < bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                at = end,
                dropped = bytes.len() as u64 - end,
                "the raft log ends in a torn record (a crash while writing); cutting it there"
            );
            file.set_len(end)?;
            file.sync_all()?;
        }
        let log = Self {
            path: path.to_owned(),
            file: Arc::new(file),
            end,
        };
        Ok((log, contents))
    }

    /// Writes `records` as a new file that replaces the one at `path`.
    pub fn create(path: &Path, records: impl IntoIterator<Item = Record>) -> io::Result<()> {
        let mut batch = Batch::default();
        records.into_iter().for_each(|r| batch.push(r));
        replace(path, &batch)?;
        sync_dir(path)
    }

    /// A handle for reading entries (see [`read_entry`]).
    pub fn reader(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Appends `batch` and, with `sync`, waits until it is on disk; returns where it begins (for
    /// [`Batch::apply`]). After an error the next write goes where this one began.
    pub fn write(&mut self, batch: &Batch, sync: bool) -> io::Result<u64> {
        let at = self.end;
        if batch.is_empty() {
            return Ok(at);
        }
        self.file.write_all_at(&batch.buf, at)?;
        if sync {
            self.file.sync_data()?;
        }
        self.end += batch.buf.len() as u64;
        Ok(at)
    }

    /// Whether dead records (purged, truncated, superseded) take most of the file.
    pub fn wants_compaction(&self, contents: &Contents) -> bool {
        self.end > 2 * contents.live_bytes() + SLACK
    }

    /// Rewrites the file with the live records of `contents` only; returns the contents with
    /// the records' new places. An error leaves the old file in use; once the new file has
    /// replaced it, nothing fails.
    pub fn compact(&mut self, contents: &Contents) -> io::Result<Contents> {
        let mut batch = Batch::default();
        batch.push(Record::Committed(contents.committed));
        if let Some(vote) = contents.vote {
            batch.push(Record::Vote(vote));
        }
        if let Some(purged) = contents.last_purged {
            batch.push(Record::Purge(purged));
        }
        for slot in contents.entries.values() {
            batch.push(Record::Entry(slot.log_id, read_entry(&self.file, slot)?));
        }
        let file = replace(&self.path, &batch)?;
        self.file = Arc::new(file);
        self.end = batch.buf.len() as u64;
        if let Err(e) = sync_dir(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "syncing the raft log's folder after compacting it");
        }
        let mut compacted = Contents::default();
        batch.apply(&mut compacted, 0);
        Ok(compacted)
    }
}

/// The JSON of the entry at `slot`.
pub(super) fn read_entry(file: &File, slot: &Slot) -> io::Result<Vec<u8>> {
    let mut json = vec![0; slot.len as usize];
    file.read_exact_at(&mut json, slot.offset)?;
    Ok(json)
}

/// Empties the log at `path` (a node leaving its cluster): an empty file renamed over it, so a
/// crash leaves either the old log or none.
pub(super) fn clear(path: &Path) -> io::Result<()> {
    LogFile::create(path, [])
}

/// Writes `batch` to a new file (fsynced) and renames it over the one at `path`; returns the new
/// file, open for reading and writing.
fn replace(path: &Path, batch: &Batch) -> io::Result<File> {
    let tmp = path.with_extension("tmp");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all_at(&batch.buf, 0)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(file)
}

fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

/// The contents of the records in `bytes`, and where the last whole one ends; or the offset of
/// a whole record that does not decode, and why.
fn replay(bytes: &[u8]) -> Result<(Contents, u64), (usize, String)> {
    let mut contents = Contents::default();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let Some(body) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if len == 0 || crc32fast::hash(body) != crc {
            break;
        }
        let record = decode(body).map_err(|e| (at, e))?;
        contents.apply(&record, (at + HEADER + 1) as u64);
        at += HEADER + len;
    }
    Ok((contents, at as u64))
}

/// The record in a body that checked out.
fn decode(body: &[u8]) -> Result<Record, String> {
    #[derive(Deserialize)]
    struct Head {
        log_id: LogId<NodeId>,
    }
    fn json<'a, T: Deserialize<'a>>(data: &'a [u8], what: &str) -> Result<T, String> {
        serde_json::from_slice(data).map_err(|e| format!("decoding {what}: {e}"))
    }
    let (kind, data) = body.split_first().expect("a body is never empty");
    Ok(match *kind {
        ENTRY => Record::Entry(json::<Head>(data, "an entry")?.log_id, data.to_vec()),
        VOTE => Record::Vote(json(data, "the vote")?),
        COMMITTED => Record::Committed(json(data, "the committed log id")?),
        TRUNCATE => {
            let since = data
                .try_into()
                .map_err(|_| "a truncation without its index")?;
            Record::Truncate(u64::from_le_bytes(since))
        }
        PURGE => Record::Purge(json(data, "the last purged log id")?),
        other => return Err(format!("unknown record kind {other}")),
    })
}

/// Decodes an entry read from the file, and checks it is the one asked for.
pub(super) fn decode_entry(slot: &Slot, json: &[u8]) -> Result<Entry<TypeConfig>, String> {
    let entry: Entry<TypeConfig> =
        serde_json::from_slice(json).map_err(|e| format!("decoding a log entry: {e}"))?;
    if entry.log_id != slot.log_id {
        return Err(format!(
            "the entry stored for {} has log id {}",
            slot.log_id, entry.log_id
        ));
    }
    Ok(entry)
}
