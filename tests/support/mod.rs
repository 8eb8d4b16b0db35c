//! Helpers shared by integration tests (each test file that needs them says `mod support;`).
//!
//! ## The S3 server
//! S3 legs run against the loopback S3-compatible server `scripts/test.sh` starts (moto, see
//! `scripts/s3-server.sh`), found through `CAIRN_TEST_S3_ENDPOINT` and `CAIRN_TEST_S3_BUCKET`.
//! - `CAIRN_TEST_S3=required` (set by `scripts/test.sh`, so by `.ci/run`): an S3 leg that finds
//!   no endpoint, or cannot connect to it, FAILS.
//! - A plain `cargo test` without the variables skips the S3 legs (the file:// and memory://
//!   legs still run): handy while iterating, never what CI does. The skipped test still reports
//!   `ok`, so each skip prints a line `SKIPPED: <test>: S3 leg ...` that shows in the normal
//!   `cargo test` output. What makes it show: libtest captures what the test thread prints with
//!   `print!`/`eprint!` and shows it only for failing tests (or with `--nocapture` /
//!   `--show-output`), so a `println!` notice is hidden exactly when it matters; the line is
//!   written to the process's stderr handle directly (`std::io::stderr()`), which libtest does
//!   not capture. Count skips with `cargo test 2>&1 | grep ^SKIPPED:`.
//! - An endpoint that is set but unreachable fails in both cases.
//!
//! ## Eager and lazy restore
//! `CAIRN_TEST_RESTORE_FETCH` = `eager` (unset: the default) or `lazy` is the
//! `checkpoint.restore-fetch` of the configurations the tests start from
//! ([`checkpoints::config`], [`restore_fetch`]) and of the `cairn run` children that restore
//! ([`restore_fetch_args`]). `scripts/test.sh` runs the restore, rescale and crash suites a
//! second time with `lazy`, so a lazy restore passes every test an eager one passes. Tests
//! about one mode (the lazy-only and eager-versus-lazy tests) set the mode themselves.

#![allow(dead_code, reason = "each test file uses a different subset")]

pub mod checkpoints;

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn::engine::checkpoint::RestoreFetch;
use cairn_snapshot::{Clock, StorageOptions, SystemClock};

/// Where an S3 leg stores its objects: a fresh prefix in the test bucket.
#[derive(Clone, Debug)]
pub struct S3Target {
    /// `s3://<bucket>/<unique prefix>`.
    pub url: String,
    /// Options naming the loopback endpoint and credentials.
    pub options: StorageOptions,
    /// The endpoint URL.
    pub endpoint: String,
}

impl S3Target {
    /// Environment for a child `cairn` process so that its `s3://` URLs reach the same server.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", key_id()),
            ("AWS_SECRET_ACCESS_KEY", secret()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

fn key_id() -> String {
    std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "cairn-test".into())
}

fn secret() -> String {
    std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "cairn-test".into())
}

/// The restore fetch mode under test: `CAIRN_TEST_RESTORE_FETCH` (see the module doc). Panics
/// on a value other than `eager` or `lazy`, so a typo cannot quietly test the default.
pub fn restore_fetch() -> RestoreFetch {
    match std::env::var("CAIRN_TEST_RESTORE_FETCH").as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("eager") => RestoreFetch::Eager,
        Ok("lazy") => RestoreFetch::Lazy,
        other => panic!("CAIRN_TEST_RESTORE_FETCH must be eager or lazy, not {other:?}"),
    }
}

/// The `cairn run` arguments that restore in the mode under test ([`restore_fetch`]).
pub fn restore_fetch_args() -> Vec<String> {
    match restore_fetch() {
        RestoreFetch::Lazy => vec!["--restore-fetch=lazy".into()],
        _ => Vec::new(),
    }
}

/// Prints `SKIPPED: <what>` where `cargo test` shows it for a passing test too: straight to
/// the process's stderr, past libtest's capture of `print!`/`eprint!` (see the module doc).
pub fn skipped(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {what}");
}

/// The S3 target for test `name`, or `None` (with a visible `SKIPPED:` line) when S3 is not
/// configured and not required. Panics when S3 is required or configured but unreachable (see
/// the module doc).
pub fn s3_target(name: &str) -> Option<S3Target> {
    let required = std::env::var("CAIRN_TEST_S3").is_ok_and(|v| v == "required");
    let Ok(endpoint) = std::env::var("CAIRN_TEST_S3_ENDPOINT") else {
        assert!(
            !required,
            "CAIRN_TEST_S3=required but CAIRN_TEST_S3_ENDPOINT is not set (run scripts/test.sh)"
        );
        // libtest names the thread after the test.
        let test = std::thread::current().name().unwrap_or(name).to_string();
        skipped(&format!(
            "{test}: S3 leg not run, CAIRN_TEST_S3_ENDPOINT is not set (scripts/test.sh starts a local S3 server and sets it)"
        ));
        return None;
    };
    let hostport = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let reachable = hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "the S3 server at CAIRN_TEST_S3_ENDPOINT={endpoint} is unreachable (test {name})"
    );
    let bucket = std::env::var("CAIRN_TEST_S3_BUCKET").unwrap_or_else(|_| "cairn-test".into());
    // Unique per call: the time tells runs apart, the counter calls within one millisecond.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let now_ms = SystemClock.now_ms();
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let mut options = StorageOptions::default();
    options.s3_endpoint = Some(endpoint.clone());
    options.s3_allow_http = true;
    options.s3_access_key_id = Some(key_id());
    options.s3_secret_access_key = Some(secret());
    options.s3_region = Some("us-east-1".into());
    Some(S3Target {
        url: format!(
            "s3://{bucket}/{name}-{}-{now_ms:x}-{call}",
            std::process::id()
        ),
        options,
        endpoint,
    })
}
