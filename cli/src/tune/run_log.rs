//! The resumable results file of a sweep (`<out>.runs.jsonl`): one JSON line per finished
//! repetition, appended and synced as soon as it is measured, so a sweep stopped at any moment
//! (Ctrl-C, a crash, a closed laptop) resumes where it was by running the same command again.
//!
//! Every line carries the sweep's fingerprint (workload flags, base config, swept keys and
//! values), so a file is never mixed with another sweep's results: a different fingerprint is
//! an error that names the file. A last line cut short by a crash is dropped (and the file cut
//! back to its last complete line); any other line that does not parse is an error, never
//! skipped silently.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::measure::Measurement;

/// One finished repetition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The sweep's fingerprint.
    pub sweep: String,
    /// Index of the point in the grid.
    pub point: usize,
    /// Repetition, from 0.
    pub rep: u32,
    /// The point's `key=value` pairs (for people reading the file).
    pub settings: String,
    /// What it measured.
    pub measurement: Measurement,
}

/// A results file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunLogError {
    /// Reading, cutting or appending failed.
    #[error("results file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A complete line is not a record of this format.
    #[error("results file {path}, line {line}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Another `cairn tune` has the file open (the same sweep runs twice).
    #[error("results file {path} is in use by another cairn tune of this sweep")]
    Busy {
        /// The file.
        path: PathBuf,
    },
    /// The file holds another sweep's results.
    #[error(
        "results file {path} belongs to another sweep (fingerprint {found}, this sweep's is {expected}): \
         use another --out, or delete the file to start over"
    )]
    OtherSweep {
        /// The file.
        path: PathBuf,
        /// Fingerprint in the file.
        found: String,
        /// This sweep's.
        expected: String,
    },
}

/// The results file, open for appending, with the records it already held.
#[derive(Debug)]
pub struct RunLog {
    path: PathBuf,
    file: File,
    records: Vec<RunRecord>,
}

impl RunLog {
    /// Opens (or creates) `path` for the sweep `fingerprint` over `points` points.
    pub fn open(path: &Path, fingerprint: &str, points: usize) -> Result<Self, RunLogError> {
        let io = |source| RunLogError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        // Only complete lines count; a tail without its newline was cut by a crash.
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut records = Vec::new();
        for (i, line) in text[..complete].split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let corrupt = |reason: String| RunLogError::Corrupt {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            };
            let r: RunRecord = serde_json::from_slice(line).map_err(|e| corrupt(e.to_string()))?;
            if r.sweep != fingerprint {
                return Err(RunLogError::OtherSweep {
                    path: path.to_path_buf(),
                    found: r.sweep,
                    expected: fingerprint.to_string(),
                });
            }
            if r.point >= points {
                return Err(corrupt(format!(
                    "point {} is outside the grid of {points}",
                    r.point
                )));
            }
            records.push(r);
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        // Held until the sweep ends (the lock goes with the file): a second run of the same
        // sweep would measure beside the first and share its scratch directory.
        file.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => RunLogError::Busy {
                path: path.to_path_buf(),
            },
            std::fs::TryLockError::Error(e) => io(e),
        })?;
        if complete < text.len() {
            tracing::warn!(
                path = %path.display(),
                bytes = text.len() - complete,
                "dropping a results line cut short by a crash"
            );
            file.set_len(complete as u64).map_err(io)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            records,
        })
    }

    /// Whether repetition `rep` of `point` is already measured.
    pub fn has(&self, point: usize, rep: u32) -> bool {
        self.records
            .iter()
            .any(|r| r.point == point && r.rep == rep)
    }

    /// Appends a record and syncs it to disk.
    pub fn append(&mut self, record: RunRecord) -> Result<(), RunLogError> {
        let io = |source| RunLogError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(&record).map_err(|e| io(std::io::Error::other(e)))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.records.push(record);
        Ok(())
    }

    /// Every record, in the order measured.
    pub fn records(&self) -> &[RunRecord] {
        &self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sweep: &str, point: usize, rep: u32) -> RunRecord {
        RunRecord {
            sweep: sweep.into(),
            point,
            rep,
            settings: "a.b=1".into(),
            measurement: Measurement {
                records_per_sec: 1.0,
                latency_p99_ms: 2.0,
                sync_pause_p99_ms: 3.0,
                uploaded_bytes: 4,
                rss_peak_bytes: 5,
                disk_bytes: 6,
                checkpoints: 7,
            },
        }
    }

    #[test]
    fn records_survive_a_reopen_and_a_cut_tail_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("runs.jsonl");
        let mut log = RunLog::open(&path, "f", 4).expect("new");
        log.append(record("f", 0, 0)).expect("append");
        log.append(record("f", 3, 1)).expect("append");
        drop(log);
        // A crash in the middle of the next line.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"sweep\":\"f\",\"po").expect("write");
        drop(f);
        let mut log = RunLog::open(&path, "f", 4).expect("reopen");
        assert!(log.has(0, 0) && log.has(3, 1) && !log.has(3, 0));
        log.append(record("f", 1, 0)).expect("append after the cut");
        drop(log);
        let log = RunLog::open(&path, "f", 4).expect("reopen");
        assert_eq!(log.records().len(), 3);
        assert_eq!(log.records()[2], record("f", 1, 0));
    }

    #[test]
    fn another_sweeps_file_and_corrupt_lines_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("runs.jsonl");
        let mut log = RunLog::open(&path, "f", 4).expect("new");
        log.append(record("f", 2, 0)).expect("append");
        assert!(matches!(
            RunLog::open(&path, "f", 4),
            Err(RunLogError::Busy { .. })
        ));
        drop(log);
        assert!(matches!(
            RunLog::open(&path, "g", 4),
            Err(RunLogError::OtherSweep { .. })
        ));
        assert!(matches!(
            RunLog::open(&path, "f", 2),
            Err(RunLogError::Corrupt { line: 1, .. })
        ));
        std::fs::write(&path, "not json\n").expect("write");
        assert!(matches!(
            RunLog::open(&path, "f", 4),
            Err(RunLogError::Corrupt { line: 1, .. })
        ));
    }
}
