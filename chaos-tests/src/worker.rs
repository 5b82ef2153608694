//! The workload inside the workspace: started in a cove-pty terminal, it
//! writes until it is killed, recording every step in the manifest (outside
//! the workspace) before and after it happens.
//!
//! Its namespace is `w/`: slots `w/s<i>` rewritten in place or replaced
//! through a temporary file, logs `w/log<j>` appended to, the directory
//! pair `w/dA`/`w/dB` renamed back and forth, tar extractions `w/tar<k>`,
//! and a git repository `w/repo`. About half of the writes are fsync'd.

use crate::content;
use crate::ledger::{tar_number, WorkerState};
use crate::manifest::{self, now_ms, Op, Phase, Rec};
use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const SLOTS: u64 = 12;
pub const LOGS: u64 = 3;
pub const DIR_FILES: u64 = 3;

pub struct Worker {
    root: PathBuf,
    m: manifest::Sink,
    rng: rand::rngs::StdRng,
    cycle: u64,
    /// Next version per lineage (slots) or next line (logs).
    next: HashMap<String, u64>,
    tar: Option<PathBuf>,
    tar_files: u64,
    next_tar: u64,
}

fn fsync_dir(p: &Path) -> std::io::Result<()> {
    fs::File::open(p)?.sync_all()
}

impl Worker {
    /// `state` is where the harness says the run got to (the ledger's
    /// [`WorkerState`]): versions never repeat across cycles.
    pub fn new(
        root: PathBuf,
        m: manifest::Sink,
        state: WorkerState,
        seed: u64,
        cycle: u64,
        tar: Option<(PathBuf, u64)>,
    ) -> Result<Self> {
        let (tar, tar_files) = match tar {
            Some((p, n)) => (Some(p), n),
            None => (None, 0),
        };
        // Work from inside the workspace, as a user's process does: a
        // sidecar's graceful stop detaches the mount lazily, and a process
        // that named files by absolute path would from then on write into
        // the bare mount point on the local disk, where an fsync succeeds
        // without Cove ever seeing the write (the release run's only
        // failures, traced in docs/durability.md). Relative to a working
        // directory inside the mount, every operation reaches the sidecar
        // that is stopping, which commits it or fails it, until it is gone
        // and the mount answers ENOTCONN.
        std::env::set_current_dir(&root).with_context(|| format!("entering {}", root.display()))?;
        let root = PathBuf::from(".");
        let mut w = Self {
            m,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            root,
            cycle,
            next: state.next,
            tar,
            tar_files,
            next_tar: state.next_tar,
        };
        w.prepare()?;
        Ok(w)
    }

    fn rec(&mut self, op: Op, phase: Phase, path: &str, lineage: &str, version: u64, sync: bool) {
        let r = Rec {
            t: now_ms(),
            op,
            phase,
            path: path.into(),
            lineage: lineage.into(),
            version,
            sync,
            count: 0,
            cycle: self.cycle,
        };
        // A manifest that cannot be written makes the run meaningless.
        if let Err(e) = self.m.put(&r) {
            eprintln!("cove-chaos worker: manifest: {e}");
            std::process::exit(3);
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Logs continue from the lines they hold (a kill may have cut the
    /// last ones); the directory pair exists.
    fn prepare(&mut self) -> Result<()> {
        fs::create_dir_all(self.p("w"))?;
        for j in 0..LOGS {
            let lineage = format!("log{j}");
            let path = self.p(&format!("w/{lineage}"));
            let bytes = fs::read(&path).unwrap_or_default();
            let (mut n, mut keep) = (0, 0);
            loop {
                let l = content::line(&lineage, n);
                if !bytes[keep..].starts_with(l.as_bytes()) {
                    break;
                }
                keep += l.len();
                n += 1;
            }
            if keep != bytes.len() {
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)?
                    .set_len(keep as u64)?;
            }
            self.next.insert(lineage, n);
        }
        if !self.p("w/dA").exists() && !self.p("w/dB").exists() {
            let tmp = self.p("w/.dnew");
            let _ = fs::remove_dir_all(&tmp);
            fs::create_dir_all(&tmp)?;
            for k in 0..DIR_FILES {
                let f = tmp.join(format!("f{k}"));
                fs::write(&f, content::make(&format!("dir-f{k}"), 1, 100))?;
                fs::File::open(&f)?.sync_all()?;
            }
            fsync_dir(&tmp)?;
            self.rec(Op::DirMove, Phase::Begin, "w/dA", "", 0, true);
            fs::rename(&tmp, self.p("w/dA"))?;
            fsync_dir(&self.p("w"))?;
            self.rec(Op::DirMove, Phase::Done, "w/dA", "", 0, true);
        }
        let repo = self.p("w/repo");
        if !repo.join(".git/HEAD").exists() {
            let _ = fs::remove_dir_all(&repo);
            fs::create_dir_all(&repo)?;
            git(&repo, &["init", "-q"])?;
        }
        // A kill inside `git commit` leaves its lock files (git fsyncs the
        // lock, not the rename that ends it): clear them, as a person would.
        for lock in [
            "index.lock",
            "HEAD.lock",
            "config.lock",
            "refs/heads/master.lock",
            "refs/heads/main.lock",
            "packed-refs.lock",
            "gc.pid",
        ] {
            let _ = fs::remove_file(repo.join(".git").join(lock));
        }
        // And a killed `git gc` leaves its half-written pack (`tmp_pack_*`),
        // which `git fsck` reports as garbage; git would delete it after two
        // weeks, a person at once.
        for e in fs::read_dir(repo.join(".git/objects/pack"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with("tmp_") {
                let _ = fs::remove_file(e.path());
            }
        }
        // Again each run: a kill may have cut the first run's setup short.
        for (k, v) in [
            ("user.email", "chaos@cove.invalid"),
            ("user.name", "cove-chaos"),
            ("core.fsync", "all"),
            ("core.fsyncMethod", "fsync"),
            ("commit.gpgsign", "false"),
            ("gc.auto", "0"),
            ("maintenance.auto", "false"),
        ] {
            git(&repo, &["config", k, v])?;
        }
        Ok(())
    }

    pub fn run(mut self) -> ! {
        let mut failures = 0;
        loop {
            match self.step() {
                Ok(()) => failures = 0,
                Err(e) => {
                    // Fenced or shutting down: fsync says EIO. Keep trying
                    // (the harness kills us), but a worker whose workspace
                    // is gone (the harness failed) must not run forever.
                    eprintln!("cove-chaos worker: {e:#}");
                    failures += 1;
                    if failures > 600 {
                        eprintln!(
                            "cove-chaos worker: giving up after {failures} failures in a row"
                        );
                        std::process::exit(4);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
    }

    fn step(&mut self) -> Result<()> {
        let dice = self.rng.random_range(0..100);
        let sync = self.rng.random_bool(0.5);
        match dice {
            0..35 => self.write_in_place(sync),
            35..55 => self.replace(sync),
            55..75 => self.append(sync),
            75..83 => self.delete(sync),
            83..91 => self.dir_move(),
            91..97 => self.git_commit(),
            _ => self.tar(),
        }
    }

    fn slot(&mut self) -> (String, String, u64) {
        let i = self.rng.random_range(0..SLOTS);
        let lineage = format!("s{i}");
        let v = self.next.get(&lineage).copied().unwrap_or(1).max(1);
        self.next.insert(lineage.clone(), v + 1);
        (format!("w/{lineage}"), lineage, v)
    }

    fn write_in_place(&mut self, sync: bool) -> Result<()> {
        let (path, lineage, v) = self.slot();
        // One write(2) below FUSE's 128 KiB: no intermediate prefix exists.
        let len = self.rng.random_range(0..60_000);
        let bytes = content::make(&lineage, v, len);
        self.rec(Op::Write, Phase::Begin, &path, &lineage, v, sync);
        let mut f = fs::File::create(self.p(&path))?;
        f.write_all(&bytes)?;
        if sync {
            f.sync_all().context("fsync")?;
        }
        drop(f);
        self.rec(Op::Write, Phase::Done, &path, &lineage, v, sync);
        Ok(())
    }

    fn replace(&mut self, sync: bool) -> Result<()> {
        let (path, lineage, v) = self.slot();
        // Sometimes above the 64 KiB inline limit: a chunked blob.
        let len = if self.rng.random_bool(0.2) {
            self.rng.random_range(70_000..400_000)
        } else {
            self.rng.random_range(0..20_000)
        };
        let tmp = format!("w/.tmp-{lineage}");
        self.rec(Op::Replace, Phase::Begin, &path, &lineage, v, sync);
        let mut f = fs::File::create(self.p(&tmp))?;
        f.write_all(&content::make(&lineage, v, len))?;
        if sync {
            f.sync_all().context("fsync")?;
        }
        drop(f);
        fs::rename(self.p(&tmp), self.p(&path))?;
        if sync {
            fsync_dir(&self.p("w")).context("fsync w/")?;
        }
        self.rec(Op::Replace, Phase::Done, &path, &lineage, v, sync);
        Ok(())
    }

    fn append(&mut self, sync: bool) -> Result<()> {
        let j = self.rng.random_range(0..LOGS);
        let lineage = format!("log{j}");
        let path = format!("w/{lineage}");
        let n = self.next.get(&lineage).copied().unwrap_or(0);
        self.rec(Op::Append, Phase::Begin, &path, &lineage, n, sync);
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.p(&path))?;
        // A failed append may have written part of the line; the next run
        // cuts it (prepare).
        f.write_all(content::line(&lineage, n).as_bytes())?;
        self.next.insert(lineage.clone(), n + 1);
        if sync {
            f.sync_all().context("fsync")?;
        }
        self.rec(Op::Append, Phase::Done, &path, &lineage, n, sync);
        Ok(())
    }

    fn delete(&mut self, sync: bool) -> Result<()> {
        let i = self.rng.random_range(0..SLOTS);
        let lineage = format!("s{i}");
        let path = format!("w/{lineage}");
        if !self.p(&path).exists() {
            return Ok(());
        }
        // A delete takes a version number too, so later writes are newer.
        let v = self.next.get(&lineage).copied().unwrap_or(1).max(1);
        self.next.insert(lineage.clone(), v + 1);
        self.rec(Op::Delete, Phase::Begin, &path, &lineage, v, sync);
        fs::remove_file(self.p(&path))?;
        if sync {
            fsync_dir(&self.p("w")).context("fsync w/")?;
        }
        self.rec(Op::Delete, Phase::Done, &path, &lineage, v, sync);
        Ok(())
    }

    fn dir_move(&mut self) -> Result<()> {
        let (from, to) = if self.p("w/dA").exists() {
            ("w/dA", "w/dB")
        } else {
            ("w/dB", "w/dA")
        };
        self.rec(Op::DirMove, Phase::Begin, to, "", 0, true);
        fs::rename(self.p(from), self.p(to))?;
        fsync_dir(&self.p("w")).context("fsync w/")?;
        self.rec(Op::DirMove, Phase::Done, to, "", 0, true);
        Ok(())
    }

    fn git_commit(&mut self) -> Result<()> {
        let repo = self.p("w/repo");
        let n = self.rng.random_range(0..1_000_000u64);
        fs::write(repo.join(format!("f{}", n % 20)), format!("{n}\n"))?;
        self.rec(Op::Git, Phase::Begin, "w/repo", "", 0, true);
        git(&repo, &["add", "-A"])?;
        git(
            &repo,
            &["commit", "-q", "--allow-empty", "-m", &format!("c{n}")],
        )?;
        let head = git(&repo, &["rev-parse", "HEAD"])?;
        self.rec(Op::Git, Phase::Done, "w/repo", head.trim(), 0, true);
        // Packs the loose objects now and then, as `git gc --auto` would
        // (turned off above so that it happens here, in the open): a
        // repository of tens of thousands of loose objects would make
        // every recovery of a long run slower than the one before. A kill
        // during gc is one more crash the checks see through (fsck).
        if loose_objects(&repo)? > GC_LOOSE {
            git(&repo, &["gc", "--quiet", "--prune=now"])?;
        }
        Ok(())
    }

    fn tar(&mut self) -> Result<()> {
        let Some(tar) = self.tar.clone() else {
            return Ok(());
        };
        // One extraction at a time: every earlier one goes first. Not only
        // the one before: an extraction begun but lost to a kill, or one
        // whose removal was, would otherwise stay for the rest of the run.
        let k = self.next_tar;
        let mut old: Vec<String> = fs::read_dir(self.p("w"))?
            .flatten()
            .map(|e| format!("w/{}", e.file_name().to_string_lossy()))
            .filter(|p| tar_number(p).is_some())
            .collect();
        old.sort();
        if !old.is_empty() {
            for p in &old {
                self.rec(Op::Untar, Phase::Begin, p, "", 0, true);
            }
            for p in &old {
                fs::remove_dir_all(self.p(p))?;
            }
            fsync_dir(&self.p("w")).context("fsync w/")?;
            for p in &old {
                self.rec(Op::Untar, Phase::Done, p, "", 0, true);
            }
        }
        self.next_tar += 1;
        let path = format!("w/tar{k}");
        let mut begin = Rec {
            t: now_ms(),
            op: Op::Tar,
            phase: Phase::Begin,
            path: path.clone(),
            lineage: String::new(),
            version: 0,
            sync: true,
            count: self.tar_files,
            cycle: self.cycle,
        };
        // Recorded before the directory exists: a tree on disk always has
        // a record, so its number is never used twice.
        self.m.put(&begin)?;
        fs::create_dir_all(self.p(&path))?;
        let st = std::process::Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(self.p(&path))
            .status()?;
        anyhow::ensure!(st.success(), "tar exited with {st}");
        // fsync of a directory waits for everything below it (FUSE mode).
        fsync_dir(&self.p(&path)).context("fsync the tar directory")?;
        fsync_dir(&self.p("w")).context("fsync w/")?;
        begin.phase = Phase::Done;
        begin.t = now_ms();
        self.m.put(&begin)?;
        Ok(())
    }
}

/// Loose objects above which the worker packs the repository.
const GC_LOOSE: u64 = 300;

/// `git count-objects`: "N objects, M kilobytes".
fn loose_objects(repo: &Path) -> Result<u64> {
    let out = git(repo, &["count-objects"])?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("git count-objects said {out:?}"))
}

pub fn git(repo: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .context("running git")?;
    anyhow::ensure!(
        out.status.success(),
        "git {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds the tar archive the workload extracts: `files` self-verifying
/// files in a few directories. Returns its path.
/// The archive of `files` files in the temporary directory, made once per
/// machine (or pod) and kept: a worker that is given none (controller
/// mode, where the harness's files are elsewhere) uses it.
pub fn cached_tarball(files: u64) -> Result<PathBuf> {
    let out = std::env::temp_dir().join(format!("cove-chaos-tree-{files}.tar"));
    if out.exists() {
        return Ok(out);
    }
    let tmp = std::env::temp_dir().join(format!("cove-chaos-tree-{}", std::process::id()));
    let made = make_tarball(&tmp, files)?;
    fs::rename(&made, &out)?;
    let _ = fs::remove_dir_all(&tmp);
    Ok(out)
}

pub fn make_tarball(dir: &Path, files: u64) -> Result<PathBuf> {
    let src = dir.join("tar-src");
    let _ = fs::remove_dir_all(&src);
    for i in 0..files {
        let d = src.join(format!("d{}", i % 20));
        fs::create_dir_all(&d)?;
        fs::write(
            d.join(format!("f{i}")),
            content::make(&format!("tar-f{i}"), 1, (i as usize * 37) % 3000),
        )?;
    }
    let out = dir.join("tree.tar");
    let st = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()?;
    anyhow::ensure!(st.success(), "tar -cf exited with {st}");
    Ok(out)
}
