//! RocksDB's own metrics on `cairn run`'s Prometheus output: configured properties per slot and
//! state, statistics tickers and histograms, on `/metrics` while the run lasts and in the final
//! metrics file; none when not configured (Flink's default).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const RECORDS: u64 = 40_000;
const KEYS: u64 = 4_000;

/// A config file enabling three properties and the statistics.
fn metrics_config(dir: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let path = dir.join("metrics.toml");
    std::fs::write(
        &path,
        "[rocksdb.metrics]\n\
         properties = [\"estimate-num-keys\", \"live-sst-files-size\", \"block-cache-usage\"]\n\
         statistics = true\n",
    )?;
    Ok(path.to_str().ok_or("utf-8 path")?.to_string())
}

/// The value of the first sample whose line starts with `prefix` (name and the start of its
/// labels), if any.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Runs `cairn run` on RocksDB with `extra` flags and a metrics file; the file's text.
fn run_with_metrics_file(dir: &Path, extra: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let prom = dir.join("metrics.prom");
    let work = dir.join("work");
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("run")
        .args([
            "--records",
            &RECORDS.to_string(),
            "--keys",
            &KEYS.to_string(),
        ])
        .args(["--backend", "rocksdb", "--memory", "16MiB"])
        .args(["--working-dir", work.to_str().ok_or("utf-8 path")?])
        .args(["--metrics-file", prom.to_str().ok_or("utf-8 path")?])
        .args(extra)
        .env_remove("RUST_LOG")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(std::fs::read_to_string(prom)?)
}

#[test]
fn configured_native_metrics_are_in_the_final_metrics() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = metrics_config(dir.path())?;
    let text = run_with_metrics_file(dir.path(), &["--config", &config])?;
    // Every key is in RocksDB after the final flush; overwrites still in several files count
    // more than once in the estimate.
    let keys = sample(&text, "cairn_rocksdb_estimate_num_keys{slot=\"0\",state=")
        .ok_or_else(|| format!("no estimate-num-keys in\n{text}"))?;
    assert!(
        (KEYS as f64..=RECORDS as f64).contains(&keys),
        "estimate-num-keys {keys}"
    );
    let sst = sample(&text, "cairn_rocksdb_live_sst_files_size{slot=\"0\",state=")
        .ok_or("no live-sst-files-size")?;
    assert!(sst > 0.0, "live-sst-files-size {sst}");
    assert!(sample(&text, "cairn_rocksdb_block_cache_usage{slot=\"0\",state=").is_some());
    // Not configured: not exported.
    assert!(sample(&text, "cairn_rocksdb_num_running_compactions{").is_none());
    let written = sample(
        &text,
        "cairn_rocksdb_ticker_total{slot=\"0\",ticker=\"number.keys.written\"}",
    )
    .ok_or("no number.keys.written ticker")?;
    assert!(written >= KEYS as f64, "keys written {written}");
    let writes = sample(
        &text,
        "cairn_rocksdb_histogram{histogram=\"db.write.micros\",slot=\"0\",stat=\"count\"}",
    )
    .ok_or("no db.write.micros histogram")?;
    assert!(writes > 0.0, "db.write.micros count {writes}");
    Ok(())
}

#[test]
fn native_metrics_are_off_by_default() -> TestResult {
    let dir = tempfile::tempdir()?;
    let text = run_with_metrics_file(dir.path(), &[])?;
    assert!(
        !text.lines().any(|l| l.starts_with("cairn_rocksdb_")),
        "{text}"
    );
    // The rest is there.
    assert!(sample(&text, "cairn_records_processed_total{slot=\"0\"}").is_some());
    Ok(())
}

/// `GET /metrics` over plain HTTP/1.0; the body.
fn scrape(addr: &str) -> Result<String, Box<dyn std::error::Error>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

/// While a long run lasts, `/metrics` shows each slot's properties per state.
#[test]
fn native_metrics_are_served_while_the_run_lasts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = metrics_config(dir.path())?;
    let work = dir.path().join("work");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("run")
        .args(["--records", "200000000", "--keys", "100000", "--slots", "2"])
        .args(["--backend", "rocksdb", "--memory", "32MiB"])
        .args(["--working-dir", work.to_str().ok_or("utf-8 path")?])
        .args(["--config", &config, "--metrics-addr", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let result = (|| -> TestResult {
        let stderr = child.stderr.take().ok_or("stderr")?;
        let mut addr = None;
        for line in BufReader::new(stderr).lines() {
            let line = line?;
            if let Some(url) = line.strip_prefix("metrics: http://") {
                addr = Some(url.trim_end_matches("/metrics").to_string());
                break;
            }
        }
        let addr = addr.ok_or("no metrics address printed")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = scrape(&addr)?;
            let slots: Vec<_> = (0..2)
                .map(|s| {
                    sample(
                        &text,
                        &format!("cairn_rocksdb_estimate_num_keys{{slot=\"{s}\",state="),
                    )
                })
                .collect();
            let ticker = sample(&text, "cairn_rocksdb_ticker_total{slot=\"1\",ticker=");
            if slots.iter().all(Option::is_some) && ticker.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no native metrics of both slots on /metrics:\n{text}").into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}
