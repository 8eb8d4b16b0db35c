//! A slot whose disk refuses writes fails with a typed error; it never hangs.
//!
//! `cairn run` runs in a child process whose files may not grow past 256 KiB (`RLIMIT_FSIZE`,
//! with `SIGXFSZ` ignored, so a write past the limit fails with `EFBIG` the way a write to a full
//! disk fails with `ENOSPC`). RocksDB's memtable flushes then fail. Before the write-stall guard
//! (`engine/src/backend/rocks/stall_guard.rs`), the word count's next write stalled forever in
//! RocksDB's write-buffer manager, waiting for a flush that could not succeed. A sweep on a disk
//! that filled up found it; the binary from before the guard still runs at 60 s here.

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Files of the child may not grow beyond this.
const FILE_SIZE_LIMIT: u64 = 256 * 1024;

#[test]
fn a_disk_that_refuses_writes_fails_the_run_instead_of_hanging_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("small.toml");
    // A small budget with the timer buffer taken from RocksDB's share, the sweep's point that hung:
    // the memtables reach the write-buffer manager's capacity within seconds.
    std::fs::write(
        &config,
        "[memory]\nstate-cache-ratio = 0.4\ntimer-buffer-ratio = 0.3\nwrite-buffer-ratio = 0.5\n",
    )?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(["run", "--workload", "wordcount", "--records", "3000000"])
        .args(["--memory", "32MiB", "--config"])
        .arg(&config)
        .arg("--working-dir")
        .arg(dir.path().join("work"))
        .arg("--checkpoint-dir")
        .arg(dir.path().join("checkpoints"))
        .stdout(Stdio::null())
        // A file, not a pipe: a child blocked on a full pipe would look like a hang.
        .stderr(std::fs::File::create(dir.path().join("stderr"))?);
    // SAFETY: runs in the forked child before exec; setrlimit and signal are async-signal-safe
    // and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: FILE_SIZE_LIMIT,
                rlim_max: FILE_SIZE_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0
                || libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            return Err("cairn run still running after 120 s: a writer is stalled for good".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(dir.path().join("stderr"))?;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("File too large") || stderr.contains("IO error"),
        "the error names the failed write: {stderr}"
    );
    Ok(())
}
