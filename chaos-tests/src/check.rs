//! The checks after each recovery, against everything the manifest says
//! was ever done (ARCHITECTURE.md, durability contract):
//!
//! - every acknowledged write (fsync'd, or a durable save) is there with
//!   exactly that content, or with the content of an operation that began
//!   after it;
//! - no file is torn: every content is one that really existed;
//! - renames are atomic and deletes stay deleted;
//! - un-fsynced writes may be lost; how old the oldest lost one was at the
//!   kill is the loss window (RPO).

use crate::content::{self, State};
use crate::ledger::{self, Ledger};
use crate::manifest::{Op, Phase, Rec};
use crate::report::Violation;
use std::collections::HashSet;
use std::path::Path;

#[derive(Debug, Default)]
pub struct Outcome {
    pub violations: Vec<Violation>,
    pub acked: u64,
    pub unsynced: u64,
    pub lost_unsynced: u64,
    pub rpo_ms: Option<u64>,
}

impl Outcome {
    fn violation(&mut self, cycle: u64, seed: u64, kind: &str, path: &str, detail: String) {
        self.violations
            .push(Violation::new(cycle, seed, kind, path, detail));
    }

    fn lost(&mut self, r: &Rec, t_kill: u64) {
        self.lost_unsynced += 1;
        let age = t_kill.saturating_sub(r.t);
        self.rpo_ms = Some(self.rpo_ms.map_or(age, |a| a.max(age)));
    }
}

/// A file's bytes; `None` if it does not exist.
fn read_opt(root: &Path, rel: &str) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(root.join(rel)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn file_state(root: &Path, rel: &str, lineage: &str) -> State {
    match read_opt(root, rel) {
        Ok(Some(b)) => content::parse(&b, lineage),
        Ok(None) => State::Absent,
        Err(e) => State::Torn(format!("unreadable: {e}")),
    }
}

fn fmt_state(s: &State) -> String {
    match s {
        State::Absent => "absent".into(),
        State::Empty => "empty".into(),
        State::Version(v) => format!("version {v}"),
        State::Torn(why) => format!("torn ({why})"),
    }
}

/// Checks the recovered workspace under `root` after the kill of `cycle`
/// at `t_kill` (Unix ms).
pub fn check(root: &Path, l: &Ledger, cycle: u64, seed: u64, t_kill: u64) -> Outcome {
    let mut out = Outcome::default();
    for (path, rs) in &l.paths {
        let rs: Vec<&Rec> = rs.iter().collect();
        match rs.first().map(|r| &r.op) {
            Some(Op::Write | Op::Replace | Op::Delete | Op::Save) => {
                check_file(root, path, &rs, cycle, seed, t_kill, &mut out)
            }
            Some(Op::Append) => check_log(root, path, &rs, cycle, seed, t_kill, &mut out),
            _ => {}
        }
    }
    check_dirs(root, &l.moves, cycle, seed, &mut out);
    check_tars(root, l, cycle, seed, &mut out);
    check_git(root, l.git.as_ref(), cycle, seed, &mut out);
    out
}

/// A file written whole (in place, replaced, saved) or deleted.
fn check_file(
    root: &Path,
    path: &str,
    rs: &[&Rec],
    cycle: u64,
    seed: u64,
    t_kill: u64,
    out: &mut Outcome,
) {
    let lineage = &rs[0].lineage;
    let state_of = |r: &Rec| match r.op {
        Op::Delete => State::Absent,
        _ => State::Version(r.version),
    };
    // Versions only grow per path, so "later" is by version, not by the
    // order of the records (a late `fs.durable` comes after newer saves).
    let acked = rs
        .iter()
        .filter(|r| r.phase == Phase::Done && r.sync)
        .max_by_key(|r| r.version)
        .copied();
    let mut allowed: Vec<State> = Vec::new();
    let floor = match acked {
        Some(a) => {
            out.acked += 1;
            allowed.push(state_of(a));
            a.version
        }
        None => {
            allowed.push(State::Absent);
            0
        }
    };
    for r in rs.iter().filter(|r| r.version >= floor) {
        allowed.push(state_of(r));
        if r.op == Op::Write && (acked.is_none() || r.version > floor) {
            // Truncated, its new content not yet written.
            allowed.push(State::Empty);
        }
    }
    let got = file_state(root, path, lineage);
    if let State::Torn(why) = &got {
        out.violation(cycle, seed, "torn", path, why.clone());
    } else if !allowed.contains(&got) {
        let (kind, want) = match acked {
            Some(r) if r.op == Op::Delete => {
                ("resurrected", "absent (deleted and fsync'd)".to_string())
            }
            Some(r) => (
                "lost_ack",
                format!(
                    "version {} ({:?}, acknowledged at {})",
                    r.version, r.op, r.t
                ),
            ),
            None => (
                "wrong_content",
                "absent or a version written since".to_string(),
            ),
        };
        out.violation(
            cycle,
            seed,
            kind,
            path,
            format!("expected {want} or a later one; found {}", fmt_state(&got)),
        );
    }
    // Un-fsynced writes of this cycle that did not survive.
    for (i, r) in rs.iter().enumerate() {
        if r.cycle != cycle || r.phase != Phase::Done || r.sync {
            continue;
        }
        out.unsynced += 1;
        let survived = match (&got, r.op == Op::Delete) {
            (State::Version(u), false) => *u >= r.version,
            (State::Version(u), true) => *u > r.version,
            (State::Absent, true) => true,
            // Deleted or truncated by a later operation: superseded.
            (_, false) => rs[i + 1..].iter().any(|l| l.version > r.version),
            _ => false,
        };
        if !survived {
            out.lost(r, t_kill);
        }
    }
}

fn check_log(
    root: &Path,
    path: &str,
    rs: &[&Rec],
    cycle: u64,
    seed: u64,
    t_kill: u64,
    out: &mut Outcome,
) {
    let lineage = &rs[0].lineage;
    let bytes = match read_opt(root, path) {
        Ok(b) => b.unwrap_or_default(),
        Err(e) => {
            out.violation(cycle, seed, "torn", path, format!("unreadable: {e}"));
            return;
        }
    };
    let k = match content::log_lines(&bytes, lineage) {
        Ok(k) => k,
        Err(why) => {
            out.violation(cycle, seed, "torn", path, why);
            return;
        }
    };
    let need = rs
        .iter()
        .filter(|r| r.phase == Phase::Done && r.sync)
        .map(|r| r.version + 1)
        .max();
    if let Some(need) = need {
        out.acked += 1;
        if k < need {
            out.violation(
                cycle,
                seed,
                "lost_ack",
                path,
                format!("{need} lines acknowledged (fsync'd), {k} found"),
            );
        }
    }
    let most = rs.iter().map(|r| r.version + 1).max().unwrap_or(0);
    if k > most {
        out.violation(
            cycle,
            seed,
            "wrong_content",
            path,
            format!("{k} lines, but only {most} were ever appended"),
        );
    }
    for r in rs {
        if r.cycle == cycle && r.phase == Phase::Done && !r.sync {
            out.unsynced += 1;
            if k <= r.version {
                out.lost(r, t_kill);
            }
        }
    }
}

/// The directory pair: exactly one name, its files intact, where the last
/// acknowledged move put it (or a move begun since).
fn check_dirs(root: &Path, moves: &[Rec], cycle: u64, seed: u64, out: &mut Outcome) {
    if moves.is_empty() {
        return;
    }
    let a = root.join("w/dA").is_dir();
    let b = root.join("w/dB").is_dir();
    let acked = moves.iter().rposition(|r| r.phase == Phase::Done);
    if acked.is_none() && !a && !b {
        // Killed while the pair was being made: nothing was acknowledged.
        return;
    }
    let at = match (a, b) {
        (true, false) => "w/dA",
        (false, true) => "w/dB",
        (a, _) => {
            out.violation(
                cycle,
                seed,
                "not_atomic",
                "w/dA",
                format!(
                    "the directory pair is {}",
                    if a { "under both names" } else { "gone" }
                ),
            );
            return;
        }
    };
    let allowed: HashSet<&str> = match acked {
        Some(i) => {
            out.acked += 1;
            moves[i..].iter().map(|r| r.path.as_str()).collect()
        }
        None => moves.iter().map(|r| r.path.as_str()).collect(),
    };
    if !allowed.contains(at) {
        out.violation(
            cycle,
            seed,
            "lost_ack",
            at,
            format!("the directory is at {at}; acknowledged moves allow {allowed:?}"),
        );
    }
    for k in 0..crate::worker::DIR_FILES {
        let rel = format!("{at}/f{k}");
        match file_state(root, &rel, &format!("dir-f{k}")) {
            State::Version(1) => {}
            s => out.violation(
                cycle,
                seed,
                "lost_ack",
                &rel,
                format!("found {}", fmt_state(&s)),
            ),
        }
    }
}

/// The tar tree last extracted (and not removed since) is whole; removed
/// trees whose removal was fsync'd stay gone.
fn check_tars(root: &Path, l: &Ledger, cycle: u64, seed: u64, out: &mut Outcome) {
    let kept = |r: &&Rec| r.phase == Phase::Done && !l.removed.contains_key(&r.path);
    for r in l.tars.iter().filter(kept) {
        out.acked += 1;
        let mut found = 0u64;
        let mut bad = Vec::new();
        for d in std::fs::read_dir(root.join(&r.path))
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                found += 1;
                let name = f.file_name().to_string_lossy().into_owned();
                let lineage = format!("tar-{name}");
                match std::fs::read(f.path()) {
                    Ok(b) => {
                        if let State::Torn(why) = content::parse(&b, &lineage) {
                            bad.push(format!("{name}: {why}"));
                        }
                    }
                    Err(e) => bad.push(format!("{name}: {e}")),
                }
            }
        }
        if found != r.count {
            out.violation(
                cycle,
                seed,
                "lost_ack",
                &r.path,
                format!("{} files extracted and fsync'd, {found} found", r.count),
            );
        }
        if let Some(first) = bad.first() {
            out.violation(
                cycle,
                seed,
                "torn",
                &r.path,
                format!("{} damaged, first: {first}", bad.len()),
            );
        }
    }
    // One listing of w/ instead of a lookup per tree ever removed: the
    // run removes thousands.
    out.acked += l.removed.values().filter(|done| **done).count() as u64;
    for e in std::fs::read_dir(root.join("w"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = format!("w/{}", e.file_name().to_string_lossy());
        if ledger::tar_number(&path).is_some() && l.removed.get(&path) == Some(&true) {
            out.violation(
                cycle,
                seed,
                "resurrected",
                &path,
                "removed and fsync'd, found again".into(),
            );
        }
    }
}

fn check_git(root: &Path, last: Option<&Rec>, cycle: u64, seed: u64, out: &mut Outcome) {
    let Some(last) = last else {
        return;
    };
    out.acked += 1;
    let repo = root.join("w/repo");
    let commit = format!("{}^{{commit}}", last.lineage);
    if let Err(e) = crate::worker::git(&repo, &["cat-file", "-e", &commit]) {
        out.violation(
            cycle,
            seed,
            "lost_ack",
            "w/repo",
            format!(
                "commit {} (made at {}) is missing: {e:#}",
                last.lineage, last.t
            ),
        );
    }
    if let Err(e) = crate::worker::git(&repo, &["fsck", "--no-progress", "--no-dangling"]) {
        out.violation(cycle, seed, "git_corrupt", "w/repo", format!("{e:#}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks' view of `recs`, through a manifest file as in a run.
    fn check(root: &Path, recs: &[Rec], cycle: u64, seed: u64, t_kill: u64) -> Outcome {
        let m = root.join("manifest.jsonl");
        let _ = std::fs::remove_file(&m);
        let mut w = crate::manifest::Writer::open(&m).unwrap();
        for r in recs {
            w.put(r).unwrap();
        }
        let l = Ledger::open(&m).unwrap();
        super::check(root, &l, cycle, seed, t_kill)
    }

    fn rec(op: Op, phase: Phase, path: &str, v: u64, sync: bool, cycle: u64) -> Rec {
        Rec {
            t: 1000 + v,
            op,
            phase,
            path: path.into(),
            lineage: path.trim_start_matches("w/").into(),
            version: v,
            sync,
            count: 0,
            cycle,
        }
    }

    #[test]
    fn acknowledged_writes_must_survive_and_later_ones_may() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("w")).unwrap();
        let recs = vec![
            rec(Op::Write, Phase::Begin, "w/s1", 1, true, 0),
            rec(Op::Write, Phase::Done, "w/s1", 1, true, 0),
            rec(Op::Write, Phase::Begin, "w/s1", 2, false, 1),
            rec(Op::Write, Phase::Done, "w/s1", 2, false, 1),
        ];
        // Nothing there: the acknowledged version 1 is lost.
        let o = check(d.path(), &recs, 1, 7, 5000);
        assert_eq!(o.violations.len(), 1, "{:?}", o.violations);
        assert_eq!(o.violations[0].kind, "lost_ack");
        // Version 1: fine, the un-fsynced 2 is lost (RPO counted).
        std::fs::write(d.path().join("w/s1"), content::make("s1", 1, 10)).unwrap();
        let o = check(d.path(), &recs, 1, 7, 5000);
        assert!(o.violations.is_empty(), "{:?}", o.violations);
        assert_eq!((o.unsynced, o.lost_unsynced), (1, 1));
        assert_eq!(o.rpo_ms, Some(5000 - 1002));
        // Version 2 or the truncated state: fine, nothing lost.
        std::fs::write(d.path().join("w/s1"), content::make("s1", 2, 10)).unwrap();
        let o = check(d.path(), &recs, 1, 7, 5000);
        assert!(o.violations.is_empty() && o.lost_unsynced == 0);
        // Torn: a prefix of version 2.
        let v2 = content::make("s1", 2, 1000);
        std::fs::write(d.path().join("w/s1"), &v2[..600]).unwrap();
        let o = check(d.path(), &recs, 1, 7, 5000);
        assert_eq!(o.violations[0].kind, "torn");
    }

    #[test]
    fn fsynced_deletes_stay_deleted() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("w")).unwrap();
        let recs = vec![
            rec(Op::Replace, Phase::Done, "w/s2", 1, true, 0),
            rec(Op::Delete, Phase::Begin, "w/s2", 2, true, 0),
            rec(Op::Delete, Phase::Done, "w/s2", 2, true, 0),
        ];
        std::fs::write(d.path().join("w/s2"), content::make("s2", 1, 10)).unwrap();
        let o = check(d.path(), &recs, 0, 7, 5000);
        assert_eq!(o.violations[0].kind, "resurrected");
        std::fs::remove_file(d.path().join("w/s2")).unwrap();
        assert!(check(d.path(), &recs, 0, 7, 5000).violations.is_empty());
    }

    #[test]
    fn logs_keep_every_fsynced_line() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("w")).unwrap();
        let recs = vec![
            rec(Op::Append, Phase::Done, "w/log0", 0, true, 0),
            rec(Op::Append, Phase::Done, "w/log0", 1, true, 0),
            rec(Op::Append, Phase::Done, "w/log0", 2, false, 0),
        ];
        let two = format!("{}{}", content::line("log0", 0), content::line("log0", 1));
        std::fs::write(d.path().join("w/log0"), &two).unwrap();
        let o = check(d.path(), &recs, 0, 7, 5000);
        assert!(o.violations.is_empty(), "{:?}", o.violations);
        assert_eq!(o.lost_unsynced, 1);
        std::fs::write(d.path().join("w/log0"), content::line("log0", 0)).unwrap();
        assert_eq!(
            check(d.path(), &recs, 0, 7, 5000).violations[0].kind,
            "lost_ack"
        );
    }
}
