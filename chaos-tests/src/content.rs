//! Self-verifying file content: a file says which lineage and version it is
//! and carries the checksum of its body, so a torn file (a prefix, a mix of
//! two versions, zeros) is recognised without any outside record.
//!
//! A file is `cove-chaos <lineage> <version> <len> <sha256 hex>\n` followed
//! by `len` body bytes, which are a pure function of (lineage, version): the
//! same version written twice is the same bytes. A log is lines
//! `cove-chaos-line <lineage> <n> <sha256(lineage,n) hex, 16>\n`, numbered
//! from 0.

use sha2::{Digest, Sha256};

/// What a file holds, as far as it can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Absent,
    /// Zero bytes: a file truncated (O_TRUNC) before its new content came.
    Empty,
    Version(u64),
    /// Content that no version ever had, with the reason.
    Torn(String),
}

fn body(lineage: &str, version: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = Sha256::digest(format!("{lineage}/{version}").as_bytes()).to_vec();
    while out.len() < len {
        // Printable, so a failed check can be looked at with less(1).
        out.extend(block.iter().map(|b| b'a' + b % 26));
        block = Sha256::digest(&block).to_vec();
    }
    out.truncate(len);
    out
}

/// The bytes of `version` of `lineage`, `len` body bytes long.
pub fn make(lineage: &str, version: u64, len: usize) -> Vec<u8> {
    let b = body(lineage, version, len);
    let mut out = format!(
        "cove-chaos {lineage} {version} {len} {}\n",
        hex::encode(Sha256::digest(&b))
    )
    .into_bytes();
    out.extend_from_slice(&b);
    out
}

/// Reads a file's state; `lineage` is what it must be.
pub fn parse(bytes: &[u8], lineage: &str) -> State {
    if bytes.is_empty() {
        return State::Empty;
    }
    let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
        return State::Torn(format!("no header line in {} bytes", bytes.len()));
    };
    let header = String::from_utf8_lossy(&bytes[..nl]);
    let f: Vec<&str> = header.split(' ').collect();
    if f.len() != 5 || f[0] != "cove-chaos" {
        return State::Torn(format!("bad header {header:?}"));
    }
    if f[1] != lineage {
        return State::Torn(format!("lineage {} where {lineage} belongs", f[1]));
    }
    let (Ok(version), Ok(len)) = (f[2].parse::<u64>(), f[3].parse::<usize>()) else {
        return State::Torn(format!("bad header {header:?}"));
    };
    let b = &bytes[nl + 1..];
    if b.len() != len {
        return State::Torn(format!(
            "version {version}: {} body bytes of {len}",
            b.len()
        ));
    }
    if hex::encode(Sha256::digest(b)) != f[4] || b != body(lineage, version, len) {
        return State::Torn(format!("version {version}: the body does not match"));
    }
    State::Version(version)
}

/// Line `n` of log `lineage`.
pub fn line(lineage: &str, n: u64) -> String {
    let h = hex::encode(Sha256::digest(format!("{lineage}#{n}").as_bytes()));
    format!("cove-chaos-line {lineage} {n} {}\n", &h[..16])
}

/// How many whole, consecutive lines from 0 a log holds; `Err` if anything
/// else is in it (a partial line, a gap, garbage).
pub fn log_lines(bytes: &[u8], lineage: &str) -> Result<u64, String> {
    let mut n = 0u64;
    let mut rest = bytes;
    while !rest.is_empty() {
        let want = line(lineage, n);
        if !rest.starts_with(want.as_bytes()) {
            let got = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest, |i| &rest[..=i]);
            return Err(format!(
                "line {n}: {:?}",
                String::from_utf8_lossy(&got[..got.len().min(80)])
            ));
        }
        rest = &rest[want.len()..];
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_and_damage_is_seen() {
        let v = make("s1", 7, 1000);
        assert_eq!(parse(&v, "s1"), State::Version(7));
        assert_eq!(parse(b"", "s1"), State::Empty);
        assert!(matches!(parse(&v[..500], "s1"), State::Torn(_)));
        assert!(matches!(parse(&v, "s2"), State::Torn(_)));
        let mut mixed = v.clone();
        let other = make("s1", 8, 1000);
        let h = mixed.len() - 200;
        mixed[h..].copy_from_slice(&other[other.len() - 200..]);
        assert!(matches!(parse(&mixed, "s1"), State::Torn(_)));
        let mut zeros = v;
        zeros[300..400].fill(0);
        assert!(matches!(parse(&zeros, "s1"), State::Torn(_)));
    }

    #[test]
    fn logs_count_whole_lines_only() {
        let mut log = String::new();
        for n in 0..5 {
            log.push_str(&line("log0", n));
        }
        assert_eq!(log_lines(log.as_bytes(), "log0"), Ok(5));
        assert!(log_lines(&log.as_bytes()[..log.len() - 3], "log0").is_err());
        let gap = format!("{}{}", line("log0", 0), line("log0", 2));
        assert!(log_lines(gap.as_bytes(), "log0").is_err());
        assert_eq!(log_lines(b"", "log0"), Ok(0));
    }
}
