//! `SlotMemory` options really reach RocksDB, and `MemoryReport` reads them back, for a managed
//! slot (with partitioned index/filters) and an unmanaged one.

use std::error::Error;

use bytesize::ByteSize;
use cairn_memory::{MemoryConfig, MemoryReport, SlotMemory};
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DBWithThreadMode, MultiThreaded, Options,
    WriteOptions,
};

type Result<T> = std::result::Result<T, Box<dyn Error>>;
type Db = DBWithThreadMode<MultiThreaded>;

const CF_NAMES: [&str; 3] = ["default", "left", "right"];
const KEYS: u32 = 20_000;

fn open(dir: &std::path::Path, mem: &SlotMemory) -> Result<Db> {
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    mem.apply_to_db_options(&mut db_opts);
    let cfs = CF_NAMES.map(|name| {
        let mut cf_opts = Options::default();
        mem.apply_to_cf_options(&mut cf_opts, &mut BlockBasedOptions::default());
        ColumnFamilyDescriptor::new(name, cf_opts)
    });
    Ok(Db::open_cf_descriptors(&db_opts, dir, cfs)?)
}

/// Writes `KEYS` 512-byte values into every column family, flushes half, reads everything back.
fn write_flush_read(db: &Db) -> Result<()> {
    let mut write_opts = WriteOptions::default();
    write_opts.disable_wal(true);
    for name in CF_NAMES {
        let cf = db.cf_handle(name).ok_or("cf not open")?;
        for i in 0..KEYS {
            db.put_cf_opt(&cf, i.to_be_bytes(), [name.len() as u8; 512], &write_opts)?;
            if i == KEYS / 2 {
                db.flush_cf(&cf)?;
            }
        }
    }
    for name in CF_NAMES {
        let cf = db.cf_handle(name).ok_or("cf not open")?;
        for i in (0..KEYS).step_by(7) {
            let value = db
                .get_pinned_cf(&cf, i.to_be_bytes())?
                .ok_or("missing key")?;
            assert_eq!(&*value, &[name.len() as u8; 512][..]);
        }
    }
    Ok(())
}

#[test]
fn managed_slot_with_partitioned_filters_charges_the_shared_cache() -> Result<()> {
    let mut config = MemoryConfig::default();
    config.managed_size = ByteSize::mib(16);
    config.partitioned_index_filters = true;
    // RocksDB's parts at the size this test was written for, without the engine's state-cache
    // share. With the 40 % share the block cache is ~6 MiB and, the capacity limit not being
    // strict, its usage overshot capacity once in a loaded full-suite run (not reproduced in 8
    // reruns); the budget bound itself is checked below and in tests/memory_budget.rs.
    config.state_cache_ratio = 0.0;
    let mem = SlotMemory::build_shared(&config)?;
    let dir = tempfile::tempdir()?;
    let db = open(dir.path(), &mem)?;
    write_flush_read(&db)?;

    let report = MemoryReport::collect(&db, &CF_NAMES, &mem);
    let cache = mem.cache().ok_or("managed slot has a cache")?;
    let plan = mem.plan().ok_or("managed slot has a plan")?;
    assert_eq!(report.budget_bytes, Some(16 * 1024 * 1024));
    // The DB sees the shared cache, not a per-column-family default one.
    assert_eq!(
        db.property_int_value(rocksdb::properties::BLOCK_CACHE_CAPACITY)?,
        Some(plan.block_cache_bytes)
    );
    assert!(
        report.block_cache_bytes > 0 && report.block_cache_bytes <= cache.get_capacity() as u64,
        "{report:?}, capacity {}",
        cache.get_capacity()
    );
    // Unflushed memtables are charged to the cache by the write-buffer manager.
    assert!(report.memtable_bytes > 0, "{report:?}");
    assert!(report.write_buffer_manager_bytes > 0, "{report:?}");
    assert!(report.wbm_charged_to_cache_bytes > 0, "{report:?}");
    assert!(
        report.rocksdb_total_bytes() <= plan.budget_bytes,
        "{report:?}"
    );
    assert!(report.rss_bytes > 0);
    // Unknown names are skipped, not fatal.
    let partial = MemoryReport::collect(&db, &["default", "no-such-cf"], &mem);
    assert!(partial.memtable_bytes <= report.memtable_bytes);
    Ok(())
}

#[test]
fn unmanaged_slot_reports_per_column_family_caches() -> Result<()> {
    let mut config = MemoryConfig::default();
    config.managed = false;
    let mem = SlotMemory::build_shared(&config)?;
    assert!(!mem.is_managed());
    let dir = tempfile::tempdir()?;
    let db = open(dir.path(), &mem)?;
    write_flush_read(&db)?;

    let report = MemoryReport::collect(&db, &CF_NAMES, &mem);
    assert_eq!(report.budget_bytes, None);
    assert_eq!(report.budget_utilisation(), None);
    assert!(report.block_cache_bytes > 0, "{report:?}");
    assert!(report.memtable_bytes > 0, "{report:?}");
    assert_eq!(report.write_buffer_manager_bytes, 0);
    assert_eq!(report.wbm_charged_to_cache_bytes, 0);
    assert_eq!(
        report.rocksdb_total_bytes(),
        report.block_cache_bytes + report.memtable_bytes + report.table_readers_bytes
    );
    Ok(())
}
