//! What the checks need to know of the manifest, read incrementally and
//! kept compact.
//!
//! The manifest only grows (about 5 KB per cycle, 50 MB over a
//! 10,000-cycle run). Reading it whole and grouping it again after every
//! cycle made the checks quadratic in the run's length. The ledger reads
//! each record once (from the byte offset it got to) and, after each
//! cycle's checks, drops what no later check can need:
//!
//! - for a file written whole (slots, saves): records older than its
//!   newest acknowledged version. Every allowed state is that version or a
//!   later one (check.rs), and version numbers only grow per path;
//! - for a log: the newest acknowledged line and the newest line begun;
//! - for the directory pair: moves before the last acknowledged one;
//! - for tar trees: the records of trees since removed (a set of removed
//!   names stays, for the "deletes stay gone" check);
//! - for git: the last acknowledged commit.
//!
//! It also knows the next free version of every lineage, which the worker
//! of the next cycle continues from (versions never repeat in a run).

use crate::manifest::{Op, Phase, Rec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Where the worker continues from: written by the harness before each
/// cycle, read by `cove-chaos worker --state`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerState {
    /// Next version per lineage (slots `s<i>`; deletes take versions too).
    pub next: HashMap<String, u64>,
    /// Next tar tree number (`w/tar<k>`).
    pub next_tar: u64,
}

#[derive(Debug, Default)]
pub struct Ledger {
    file: PathBuf,
    offset: u64,
    /// Files written whole (Write, Replace, Delete, Save) and logs
    /// (Append), by path, in manifest order.
    pub(crate) paths: BTreeMap<String, Vec<Rec>>,
    /// Directory-pair moves from the last acknowledged one on.
    pub(crate) moves: Vec<Rec>,
    /// Tar records of trees not (begun to be) removed.
    pub(crate) tars: Vec<Rec>,
    /// Removed tar trees: path -> the removal was acknowledged (fsync'd).
    pub(crate) removed: BTreeMap<String, bool>,
    /// The last acknowledged git commit.
    pub(crate) git: Option<Rec>,
    pub(crate) state: WorkerState,
    /// Records read so far, and lines that did not parse (a line cut by a
    /// kill, glued to the next one).
    pub records: u64,
    pub bad_lines: u64,
    /// The newest cycle and record time seen (a resumed run continues
    /// after them).
    pub max_cycle: Option<u64>,
    pub last_t: u64,
    /// The newest cycle with a record of the worker (not of the editor):
    /// the harness's kill clock starts when the cycle's worker is at work.
    pub worker_cycle: Option<u64>,
}

impl Ledger {
    /// A ledger of `file`, reading what it already holds.
    pub fn open(file: &Path) -> std::io::Result<Self> {
        let mut l = Ledger {
            file: file.to_path_buf(),
            ..Default::default()
        };
        l.refresh()?;
        Ok(l)
    }

    pub fn worker_state(&self) -> &WorkerState {
        &self.state
    }

    /// Ends the file with a newline if a killed writer left half a line,
    /// so that the next record is not glued to it (a resumed run).
    pub fn seal(&self) -> std::io::Result<()> {
        seal(&self.file)
    }

    /// Reads the records appended since the last call. Only whole lines
    /// are taken: a line still being written is read next time.
    pub fn refresh(&mut self) -> std::io::Result<()> {
        let mut f = match std::fs::File::open(&self.file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        for line in buf[..end].split(|&b| b == b'\n') {
            match serde_json::from_slice::<Rec>(line) {
                Ok(r) => self.add(r),
                Err(_) if line.is_empty() => {}
                Err(_) => self.bad_lines += 1,
            }
        }
        self.offset += end as u64 + 1;
        Ok(())
    }

    fn add(&mut self, r: Rec) {
        self.records += 1;
        self.max_cycle = Some(self.max_cycle.map_or(r.cycle, |c| c.max(r.cycle)));
        self.last_t = self.last_t.max(r.t);
        if r.op != Op::Save {
            self.worker_cycle = Some(self.worker_cycle.map_or(r.cycle, |c| c.max(r.cycle)));
        }
        match r.op {
            Op::Write | Op::Replace | Op::Delete | Op::Save => {
                let e = self.state.next.entry(r.lineage.clone()).or_default();
                *e = (*e).max(r.version + 1);
                self.paths.entry(r.path.clone()).or_default().push(r);
            }
            Op::Append => self.paths.entry(r.path.clone()).or_default().push(r),
            Op::DirMove => self.moves.push(r),
            Op::Tar => {
                if let Some(k) = tar_number(&r.path) {
                    self.state.next_tar = self.state.next_tar.max(k + 1);
                }
                // A name extracted again is no longer a removed one. (The
                // worker records an extraction before it creates the
                // directory, so numbers are not reused; this keeps the
                // checks right if one ever is.)
                self.removed.remove(&r.path);
                self.tars.push(r);
            }
            Op::Untar => {
                let done = r.phase == Phase::Done;
                let e = self.removed.entry(r.path.clone()).or_default();
                *e |= done;
            }
            Op::Git => {
                if r.phase == Phase::Done {
                    self.git = Some(r);
                }
            }
        }
    }

    /// Drops what no later check can need (see the module doc). Call it
    /// after a cycle's checks: they still see the cycle's own records.
    pub fn compact(&mut self) {
        for rs in self.paths.values_mut() {
            let acked = |r: &&Rec| r.phase == Phase::Done && r.sync;
            if rs.first().is_some_and(|r| r.op == Op::Append) {
                let top_acked = rs.iter().filter(acked).max_by_key(|r| r.version).cloned();
                let top = rs.iter().max_by_key(|r| r.version).cloned();
                *rs = top_acked.into_iter().chain(top).collect();
            } else if let Some(floor) = rs.iter().filter(acked).map(|r| r.version).max() {
                rs.retain(|r| r.version >= floor);
            }
        }
        if let Some(i) = self.moves.iter().rposition(|r| r.phase == Phase::Done) {
            self.moves.drain(..i);
        }
        let removed = &self.removed;
        self.tars.retain(|r| !removed.contains_key(&r.path));
    }

    /// How many records the ledger holds now (its memory, in records).
    pub fn held(&self) -> usize {
        self.paths.values().map(Vec::len).sum::<usize>() + self.moves.len() + self.tars.len()
    }
}

/// Appends a newline to `file` unless it is empty or ends with one.
pub fn seal(file: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(file)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    f.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    if last[0] != b'\n' {
        f.write_all(b"\n")?;
    }
    Ok(())
}

/// `w/tar<k>` -> k.
pub fn tar_number(path: &str) -> Option<u64> {
    path.strip_prefix("w/tar")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Writer;

    fn rec(op: Op, phase: Phase, path: &str, v: u64, sync: bool) -> Rec {
        Rec {
            t: 1000 + v,
            op,
            phase,
            path: path.into(),
            lineage: path.trim_start_matches("w/").into(),
            version: v,
            sync,
            count: 0,
            cycle: v / 10,
        }
    }

    #[test]
    fn reads_incrementally_and_only_whole_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.jsonl");
        let mut w = Writer::open(&p).unwrap();
        w.put(&rec(Op::Write, Phase::Begin, "w/s1", 1, true))
            .unwrap();
        let mut l = Ledger::open(&p).unwrap();
        assert_eq!(l.records, 1);
        // Half a line (a write in progress), then the rest.
        let line = serde_json::to_string(&rec(Op::Write, Phase::Done, "w/s1", 1, true)).unwrap();
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&line.as_bytes()[..10]).unwrap();
        l.refresh().unwrap();
        assert_eq!(l.records, 1);
        f.write_all(&line.as_bytes()[10..]).unwrap();
        f.write_all(b"\n").unwrap();
        l.refresh().unwrap();
        assert_eq!(l.records, 2);
        assert_eq!(l.worker_state().next["s1"], 2);
        // A torn line glued to the next one is counted, not fatal.
        f.write_all(b"{\"t\":1,\"op\n").unwrap();
        l.refresh().unwrap();
        assert_eq!((l.records, l.bad_lines), (2, 1));
    }

    #[test]
    fn compaction_keeps_what_checks_need() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.jsonl");
        let mut w = Writer::open(&p).unwrap();
        for v in 1..=5 {
            w.put(&rec(Op::Write, Phase::Begin, "w/s1", v, v == 3))
                .unwrap();
            w.put(&rec(Op::Write, Phase::Done, "w/s1", v, v == 3))
                .unwrap();
            w.put(&rec(Op::Append, Phase::Done, "w/log0", v, v <= 2))
                .unwrap();
        }
        w.put(&rec(Op::Tar, Phase::Done, "w/tar0", 0, true))
            .unwrap();
        w.put(&rec(Op::Untar, Phase::Done, "w/tar0", 0, true))
            .unwrap();
        w.put(&rec(Op::Tar, Phase::Begin, "w/tar1", 0, true))
            .unwrap();
        let mut l = Ledger::open(&p).unwrap();
        l.compact();
        let vs: Vec<u64> = l.paths["w/s1"].iter().map(|r| r.version).collect();
        assert_eq!(vs, [3, 3, 4, 4, 5, 5]);
        let logs: Vec<(u64, bool)> = l.paths["w/log0"]
            .iter()
            .map(|r| (r.version, r.sync))
            .collect();
        assert_eq!(logs, [(2, true), (5, false)]);
        assert_eq!(l.tars.len(), 1);
        assert_eq!(l.removed.get("w/tar0"), Some(&true));
        assert_eq!(l.worker_state().next_tar, 2);
        assert_eq!(l.max_cycle, Some(0));
        // A name extracted again is checked again, not "resurrected".
        w.put(&rec(Op::Tar, Phase::Begin, "w/tar0", 0, true))
            .unwrap();
        l.refresh().unwrap();
        assert!(!l.removed.contains_key("w/tar0"));
    }

    #[test]
    fn the_worker_clock_ignores_the_editor() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.jsonl");
        let mut w = Writer::open(&p).unwrap();
        w.put(&rec(Op::Save, Phase::Begin, "ed/e1", 30, false))
            .unwrap();
        let mut l = Ledger::open(&p).unwrap();
        assert_eq!((l.max_cycle, l.worker_cycle), (Some(3), None));
        w.put(&rec(Op::Append, Phase::Begin, "w/log1", 31, false))
            .unwrap();
        l.refresh().unwrap();
        assert_eq!(l.worker_cycle, Some(3));
    }

    #[test]
    fn seal_ends_a_cut_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.jsonl");
        seal(&p).unwrap(); // missing: nothing to do
        std::fs::write(&p, b"").unwrap();
        seal(&p).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"");
        std::fs::write(&p, b"{\"t\":1}\n{\"t\"").unwrap();
        seal(&p).unwrap();
        seal(&p).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"t\":1}\n{\"t\"\n");
    }
}
