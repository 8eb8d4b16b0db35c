//! `cairn bench cache`: what the RocksDB backend's write-back state cache buys, in one run.
//!
//! - **update**: the keyed counter job of the Flink comparison (`--records` over `--keys`, 2 s checkpoints)
//!   through `cairn run`'s own runner, with the cache off (`memory.state-cache-ratio = 0`), on (the
//!   defaults) and on the heap backend; reports records/s, the ratios between them and to Flink
//!   2.3's RocksDB figure, the hit rate, and the sync-phase cache flush p50/p99.
//! - **dirty**: the same job for each `--dirty-ratios` value (`state-cache.max-dirty-ratio`):
//!   throughput against the sync-phase flush, the trade-off the default is chosen from.
//! - **sweep**: cache size (`--sweep-ratios`) x key count (`--sweep-keys`) x skew (uniform,
//!   zipf 0.99): every key is loaded first, then `--sweep-records` counter updates are timed;
//!   reports the hit rate of the timed part and records/s.
//! - **codec** and **entry size**: the encode + decode cost of a counter against a cached
//!   read-modify-write (why the cache holds bytes, see the cache's module doc), and the real
//!   memory of an entry (RSS growth) against what the cache accounts for it.
//!
//! Writes `cache-bench.json`, `cache-sweep.csv` and `cache-sweep.svg` into `--out`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytesize::ByteSize;
use cairn_engine::backend::rocks::cache::{ENTRY_OVERHEAD, StateCache};
use cairn_engine::{BackendKind, CairnConfig, ScopeKey, Slot, codec};
use clap::Args;
use serde::Serialize;

use crate::run::{RunOptions, run};
use crate::stream::{RecordRng, Zipf, key_for};
use crate::workload::{Skew, WorkloadKind, WorkloadSpec, ZIPF_SALT};

/// Flink 2.3's RocksDB backend on the update job, measured on these machines (recorded in
/// `benches/RESULTS.md`, "Flink 2.3 on the same job").
pub const FLINK_ROCKSDB_UPDATE_RECORDS_PER_SEC: f64 = 138_624.0;

/// `cairn bench cache` flags.
#[derive(Debug, Args)]
pub struct CacheBenchArgs {
    /// Records of the update job.
    #[arg(long, default_value_t = 10_000_000)]
    pub records: u64,
    /// Keys of the update job.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Memory budget per slot.
    #[arg(long, default_value = "256MiB")]
    pub memory: ByteSize,
    /// `state-cache.max-dirty-ratio` values of the dirty-bound runs (empty: skip).
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.02,0.05,0.1")]
    pub dirty_ratios: Vec<f64>,
    /// Cache ratios of the sweep (empty: skip the sweep).
    #[arg(long, value_delimiter = ',', default_value = "0,0.05,0.1,0.2,0.4")]
    pub sweep_ratios: Vec<f64>,
    /// Key counts of the sweep.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000,3000000")]
    pub sweep_keys: Vec<u64>,
    /// Timed records per sweep point (after loading every key); 0 skips the sweep.
    #[arg(long, default_value_t = 2_000_000)]
    pub sweep_records: u64,
    /// Skip the update and dirty-bound runs.
    #[arg(long)]
    pub skip_update: bool,
    /// Working directory (a subdirectory is used and removed).
    #[arg(long, default_value = "cairn-data/bench")]
    pub dir: PathBuf,
    /// Where the JSON, CSV and SVG go.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

type BResult<T> = Result<T, Box<dyn std::error::Error>>;

/// One run of the update job.
#[derive(Debug, Serialize)]
struct UpdateRow {
    variant: String,
    max_dirty_ratio: Option<f64>,
    records_per_sec: f64,
    hit_rate: Option<f64>,
    cache_flush_ms_p50: Option<f64>,
    cache_flush_ms_p99: Option<f64>,
    cache_flush_ms_max: Option<f64>,
    dirty_flushed_entries: Option<u64>,
    sync_ms_p50: f64,
    sync_ms_p99: f64,
    checkpoints: usize,
    memory_peak_bytes: u64,
}

/// One point of the sweep.
#[derive(Debug, Serialize)]
struct SweepRow {
    cache_ratio: f64,
    cache_bytes: u64,
    keys: u64,
    skew: String,
    records: u64,
    hit_rate: f64,
    records_per_sec: f64,
    evictions: u64,
}

#[derive(Debug, Default, Serialize)]
struct CodecRow {
    /// postcard encode + decode of a u64 counter, ns.
    codec_ns: f64,
    /// A cached get + put of a counter through the typed handle, ns.
    cached_rmw_ns: f64,
    /// `codec_ns / cached_rmw_ns`: the most decoded values could save.
    codec_share: f64,
    /// Bytes the cache accounts per update-job entry.
    accounted_bytes_per_entry: f64,
    /// Process RSS growth per entry while filling a cache.
    rss_bytes_per_entry: f64,
}

#[derive(Debug, Default, Serialize)]
struct CacheBench {
    update: Vec<UpdateRow>,
    dirty: Vec<UpdateRow>,
    sweep: Vec<SweepRow>,
    codec: CodecRow,
}

/// Runs `cairn bench cache`.
pub fn run_cache_bench(a: &CacheBenchArgs) -> BResult<()> {
    let root = a.dir.join(format!("cache-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    std::fs::create_dir_all(&a.out)?;
    let r = bench(a, &root);
    let _ = std::fs::remove_dir_all(&root);
    r
}

fn bench(a: &CacheBenchArgs, root: &Path) -> BResult<()> {
    let mut out = CacheBench {
        codec: codec_and_entry_size()?,
        ..CacheBench::default()
    };
    let c = &out.codec;
    println!(
        "codec: encode+decode of a u64 counter {:.1} ns vs cached get+put {:.1} ns ({:.1} %); \
         entry: accounted {:.0} B, RSS growth {:.0} B",
        c.codec_ns,
        c.cached_rmw_ns,
        c.codec_share * 100.0,
        c.accounted_bytes_per_entry,
        c.rss_bytes_per_entry
    );
    if !a.skip_update {
        for (variant, backend, ratio) in [
            ("rocksdb, cache off", BackendKind::RocksDb, Some(0.0)),
            ("rocksdb, cache on (default)", BackendKind::RocksDb, None),
            ("heap", BackendKind::Heap, None),
        ] {
            let row = update_run(a, root, variant, backend, ratio, None)?;
            print_update(&row);
            out.update.push(row);
        }
        let rate = |v: &str| {
            out.update
                .iter()
                .find(|r| r.variant.starts_with(v))
                .map_or(0.0, |r| r.records_per_sec)
        };
        let (off, on, heap) = (
            rate("rocksdb, cache off"),
            rate("rocksdb, cache on"),
            rate("heap"),
        );
        println!(
            "ratios: cache on / off {:.2}, on / heap {:.2}, on / Flink RocksDB (138,624) {:.2}, \
             off / Flink RocksDB {:.2}",
            on / off,
            on / heap,
            on / FLINK_ROCKSDB_UPDATE_RECORDS_PER_SEC,
            off / FLINK_ROCKSDB_UPDATE_RECORDS_PER_SEC
        );
        for &d in &a.dirty_ratios {
            let row = update_run(a, root, "cache on", BackendKind::RocksDb, None, Some(d))?;
            print_update(&row);
            out.dirty.push(row);
        }
    }
    let sweep_keys = if a.sweep_records == 0 {
        &[][..]
    } else {
        &a.sweep_keys[..]
    };
    for &keys in sweep_keys {
        for skew in [Skew::Uniform, Skew::Zipf] {
            for &ratio in &a.sweep_ratios {
                let row = sweep_point(a, root, ratio, keys, skew)?;
                println!(
                    "sweep: cache {:>5} ({:>10}) keys {:>9} {:<7} hit rate {:>5.1} % {:>10.0} records/s",
                    ratio,
                    ByteSize(row.cache_bytes).to_string(),
                    keys,
                    row.skew,
                    row.hit_rate * 100.0,
                    row.records_per_sec
                );
                out.sweep.push(row);
            }
        }
    }
    let json = a.out.join("cache-bench.json");
    std::fs::write(&json, serde_json::to_string_pretty(&out)?)?;
    let mut csv = String::from(
        "cache_ratio,cache_bytes,keys,skew,records,hit_rate,records_per_sec,evictions\n",
    );
    for r in &out.sweep {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{:.4},{:.0},{}",
            r.cache_ratio,
            r.cache_bytes,
            r.keys,
            r.skew,
            r.records,
            r.hit_rate,
            r.records_per_sec,
            r.evictions
        );
    }
    std::fs::write(a.out.join("cache-sweep.csv"), csv)?;
    if !out.sweep.is_empty() {
        std::fs::write(a.out.join("cache-sweep.svg"), sweep_svg(&out.sweep))?;
    }
    println!(
        "wrote {} (+ cache-sweep.csv, cache-sweep.svg)",
        json.display()
    );
    Ok(())
}

fn print_update(r: &UpdateRow) {
    let dirty = r
        .max_dirty_ratio
        .map_or_else(String::new, |d| format!(" max-dirty-ratio {d}"));
    let flush = match (r.cache_flush_ms_p50, r.cache_flush_ms_p99) {
        (Some(p50), Some(p99)) => format!(", cache flush p50 {p50:.1} ms p99 {p99:.1} ms"),
        _ => String::new(),
    };
    let hit = r
        .hit_rate
        .map_or_else(String::new, |h| format!(", hit rate {:.1} %", h * 100.0));
    println!(
        "update: {}{dirty}: {:.0} records/s{hit}{flush}, sync phase p50 {:.1} ms p99 {:.1} ms ({} checkpoints)",
        r.variant, r.records_per_sec, r.sync_ms_p50, r.sync_ms_p99, r.checkpoints
    );
}

fn base_config(a: &CacheBenchArgs, root: &Path) -> CairnConfig {
    let mut cfg = CairnConfig::default();
    cfg.state.working_dir = root.join("work");
    cfg.checkpoint.dir = root.join("checkpoints").display().to_string();
    cfg.memory.managed_size = a.memory;
    cfg
}

fn update_run(
    a: &CacheBenchArgs,
    root: &Path,
    variant: &str,
    backend: BackendKind,
    ratio: Option<f64>,
    dirty: Option<f64>,
) -> BResult<UpdateRow> {
    let mut cfg = base_config(a, root);
    cfg.state.backend = backend;
    if let Some(r) = ratio {
        cfg.memory.state_cache_ratio = r;
    }
    if let Some(d) = dirty {
        cfg.state_cache.max_dirty_ratio = d;
    }
    let opts = RunOptions {
        spec: WorkloadSpec {
            kind: WorkloadKind::Update,
            records: a.records,
            keys: a.keys,
            value_size: 8,
            seed: 42,
            skew: Skew::Uniform,
            zipf_exponent: 0.99,
        },
        slots: 1,
        config: cfg,
        checksum: false,
        restore_from: None,
        savepoint: None,
        metrics: std::sync::Arc::new(cairn_engine::Metrics::new()),
    };
    let s = run(&opts, &|_, _| {})?;
    let _ = std::fs::remove_dir_all(root.join("checkpoints"));
    let mut sync: Vec<f64> = s.checkpoints.iter().map(|c| c.sync_ms).collect();
    sync.sort_by(f64::total_cmp);
    let rank = |q: f64| {
        sync.get(((q * sync.len() as f64).ceil() as usize).clamp(1, sync.len().max(1)) - 1)
            .copied()
            .unwrap_or(0.0)
    };
    let c = s.state_cache.as_ref();
    Ok(UpdateRow {
        variant: variant.into(),
        max_dirty_ratio: dirty,
        records_per_sec: s.records_per_sec,
        hit_rate: c.map(|c| c.hit_rate),
        cache_flush_ms_p50: c.map(|c| c.checkpoint_flush_ms.p50),
        cache_flush_ms_p99: c.map(|c| c.checkpoint_flush_ms.p99),
        cache_flush_ms_max: c.map(|c| c.checkpoint_flush_ms.max),
        dirty_flushed_entries: c.map(|c| c.dirty_flushed_entries),
        sync_ms_p50: rank(0.5),
        sync_ms_p99: rank(0.99),
        checkpoints: s.checkpoints.len(),
        memory_peak_bytes: s.memory.peak_bytes,
    })
}

fn sweep_point(
    a: &CacheBenchArgs,
    root: &Path,
    ratio: f64,
    keys: u64,
    skew: Skew,
) -> BResult<SweepRow> {
    let mut cfg = base_config(a, root);
    cfg.memory.state_cache_ratio = ratio;
    let mut slot = Slot::builder(&cfg).open()?;
    let count = slot.value_state::<u64>("counter", "count")?;
    let mut scope = ScopeKey::new(0, 1, &[], &[]);
    let mut kb = Vec::with_capacity(10);
    for k in 0..keys {
        codec::encode_into(&mut kb, &k, "<key>")?;
        slot.rescope_raw(&mut scope, &kb, &[])?;
        count.update(&mut slot, &scope, &0)?;
    }
    let before = slot.cache_stats().unwrap_or_default();
    let zipf = Zipf::new(keys, 0.99).ok_or("zipf needs keys >= 1")?;
    let t = Instant::now();
    for g in 0..a.sweep_records {
        let k = match skew {
            Skew::Uniform => key_for(g, keys, 42),
            Skew::Zipf => zipf.sample(&mut RecordRng::new(g, 42, ZIPF_SALT)) - 1,
        };
        codec::encode_into(&mut kb, &k, "<key>")?;
        slot.rescope_raw(&mut scope, &kb, &[])?;
        let n = count.get(&mut slot, &scope)?.unwrap_or(0);
        count.update(&mut slot, &scope, &(n + 1))?;
    }
    let secs = t.elapsed().as_secs_f64();
    let after = slot.cache_stats().unwrap_or_default();
    let (hits, misses) = (after.hits - before.hits, after.misses - before.misses);
    Ok(SweepRow {
        cache_ratio: ratio,
        cache_bytes: after.capacity_bytes,
        keys,
        skew: skew.to_string(),
        records: a.sweep_records,
        hit_rate: if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        },
        records_per_sec: a.sweep_records as f64 / secs.max(1e-9),
        evictions: after.evictions - before.evictions,
    })
}

/// The codec's share of a cached read-modify-write, and the real size of a cache entry.
fn codec_and_entry_size() -> BResult<CodecRow> {
    const N: u64 = 5_000_000;
    let mut buf = Vec::new();
    let mut acc = 0u64;
    let t = Instant::now();
    for i in 0..N {
        codec::encode_into(&mut buf, &std::hint::black_box(i), "c")?;
        let v: u64 = codec::decode(std::hint::black_box(&buf), "c")?;
        acc = acc.wrapping_add(v);
    }
    let codec_ns = t.elapsed().as_nanos() as f64 / N as f64;
    std::hint::black_box(acc);

    // A cached read-modify-write: 100k keys, all resident.
    let dir = tempfile::tempdir()?;
    let mut cfg = CairnConfig::default();
    cfg.state.working_dir = dir.path().to_path_buf();
    let mut slot = Slot::builder(&cfg).open()?;
    let count = slot.value_state::<u64>("counter", "count")?;
    let keys = 100_000;
    let mut scope = ScopeKey::new(0, 1, &[], &[]);
    let mut kb = Vec::new();
    let mut rmw = |slot: &mut Slot, g: u64| -> BResult<()> {
        codec::encode_into(&mut kb, &key_for(g, keys, 42), "<key>")?;
        slot.rescope_raw(&mut scope, &kb, &[])?;
        let n = count.get(slot, &scope)?.unwrap_or(0);
        count.update(slot, &scope, &(n + 1))?;
        Ok(())
    };
    for g in 0..keys * 3 {
        rmw(&mut slot, g)?;
    }
    let t = Instant::now();
    for g in 0..N {
        rmw(&mut slot, g)?;
    }
    let cached_rmw_ns = t.elapsed().as_nanos() as f64 / N as f64;
    drop(slot);

    // Entry size: fill a cache with the update job's 1M entries and watch RSS.
    let entries = 1_000_000u64;
    let mut cache = StateCache::new(u64::MAX, u64::MAX);
    cache.register_state(0, false);
    let rss0 = cairn_memory::process_rss_bytes();
    for k in 0..entries {
        codec::encode_into(&mut kb, &k, "<key>")?;
        let s = ScopeKey::new(0, 1, &kb, &[]);
        codec::encode_into(&mut buf, &(k % 20), "c")?;
        cache.put(0, s.composite(), &buf);
    }
    let rss = cairn_memory::process_rss_bytes().saturating_sub(rss0);
    let row = CodecRow {
        codec_ns,
        cached_rmw_ns,
        codec_share: codec_ns / cached_rmw_ns,
        accounted_bytes_per_entry: cache.bytes() as f64 / entries as f64,
        rss_bytes_per_entry: rss as f64 / entries as f64,
    };
    debug_assert!(row.accounted_bytes_per_entry >= ENTRY_OVERHEAD as f64);
    Ok(row)
}

/// Two panels (records/s and hit rate against the cache ratio), one line per (keys, skew).
fn sweep_svg(rows: &[SweepRow]) -> String {
    let (w, h, pad) = (460.0, 320.0, 55.0);
    let mut series: Vec<(u64, String)> = Vec::new();
    for r in rows {
        if !series.contains(&(r.keys, r.skew.clone())) {
            series.push((r.keys, r.skew.clone()));
        }
    }
    let colors = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    ];
    let max_x = rows
        .iter()
        .map(|r| r.cache_ratio)
        .fold(0.0, f64::max)
        .max(1e-9);
    let max_rps = rows
        .iter()
        .map(|r| r.records_per_sec)
        .fold(0.0, f64::max)
        .max(1.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n",
        2.0 * w,
        h + 20.0 * series.len() as f64 + 10.0
    );
    for (panel, (title, max_y)) in [("records/s", max_rps), ("hit rate", 1.0)]
        .into_iter()
        .enumerate()
    {
        let x0 = panel as f64 * w;
        let px = |x: f64| x0 + pad + x / max_x * (w - 2.0 * pad);
        let py = |y: f64| h - pad + 15.0 - y / max_y * (h - 2.0 * pad);
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"20\" font-size=\"13\">{title} vs memory.state-cache-ratio</text>",
            x0 + pad
        );
        let _ = writeln!(
            s,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
            px(0.0),
            py(0.0),
            px(max_x),
            py(0.0),
            px(0.0),
            py(0.0),
            px(0.0),
            py(max_y)
        );
        for i in 0..=4 {
            let y = max_y * f64::from(i) / 4.0;
            let label = if panel == 0 {
                format!("{:.0}k", y / 1000.0)
            } else {
                format!("{:.0} %", y * 100.0)
            };
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{label}</text>",
                px(0.0) - 4.0,
                py(y) + 4.0
            );
        }
        let mut ticks: Vec<f64> = rows.iter().map(|r| r.cache_ratio).collect();
        ticks.sort_by(f64::total_cmp);
        ticks.dedup();
        for t in ticks {
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{t}</text>",
                px(t),
                py(0.0) + 14.0
            );
        }
        for (i, (keys, skew)) in series.iter().enumerate() {
            let pts: Vec<String> = rows
                .iter()
                .filter(|r| r.keys == *keys && &r.skew == skew)
                .map(|r| {
                    let y = if panel == 0 {
                        r.records_per_sec
                    } else {
                        r.hit_rate
                    };
                    format!("{:.1},{:.1}", px(r.cache_ratio), py(y))
                })
                .collect();
            let dash = if skew == "zipf" {
                " stroke-dasharray=\"5,3\""
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
                colors[i % colors.len()],
                pts.join(" ")
            );
        }
    }
    for (i, (keys, skew)) in series.iter().enumerate() {
        let y = h + 15.0 + 18.0 * i as f64;
        let dash = if skew == "zipf" {
            " stroke-dasharray=\"5,3\""
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "<line x1=\"{pad}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{}\" stroke-width=\"2\"{dash}/><text x=\"{}\" y=\"{}\">{keys} keys, {skew}</text>",
            pad + 30.0,
            colors[i % colors.len()],
            pad + 36.0,
            y + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_one_line_per_series_in_each_panel() {
        let row = |ratio, keys, skew: &str, rps| SweepRow {
            cache_ratio: ratio,
            cache_bytes: 0,
            keys,
            skew: skew.into(),
            records: 1,
            hit_rate: ratio,
            records_per_sec: rps,
            evictions: 0,
        };
        let rows = [
            row(0.0, 10, "uniform", 1.0),
            row(0.4, 10, "uniform", 3.0),
            row(0.0, 10, "zipf", 2.0),
            row(0.4, 10, "zipf", 4.0),
        ];
        let svg = sweep_svg(&rows);
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("10 keys, zipf"));
    }
}
