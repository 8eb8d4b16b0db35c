//! Bad input gets its typed error, and nothing written before it is lost or corrupted.
//!
//! Oversized values and keys, unknown and out-of-range configuration, an unwritable working
//! directory and a working directory locked by another slot.

use std::path::Path;

use cairn::engine::backend::Update;
use cairn::engine::error::ConfigError;
use cairn::{BackendKind, CairnConfig, EngineError, ErrorKind, Slot, VoidNamespace};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const BACKENDS: [BackendKind; 2] = [BackendKind::Heap, BackendKind::RocksDb];

/// A slot whose `state.max-value-size` is the smallest allowed, 1 KiB.
fn small_value_slot(kind: BackendKind, dir: &Path) -> cairn::engine::Result<Slot> {
    let mut config = CairnConfig::from_toml_str(
        r#"
        [state]
        max-value-size = "1KiB"
        [memory]
        managed-size = "16MiB"
        "#,
    )?;
    config.state.backend = kind;
    config.state.working_dir = dir.to_path_buf();
    Slot::builder(&config).open()
}

fn assert_too_large(e: &EngineError, state: &str, size: usize) {
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    match e {
        EngineError::ValueTooLarge {
            state: s,
            size: got,
            max,
        } => {
            assert_eq!(s, state);
            assert_eq!(*got, size);
            assert_eq!(*max, 1024);
        }
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(state) && msg.contains("max-value-size"),
        "{msg}"
    );
}

/// 2 KiB of payload; postcard adds a 2-byte length.
fn big() -> Vec<u8> {
    vec![0xab; 2048]
}

#[test]
fn oversized_value_put_is_rejected_and_keeps_the_old_value() -> TestResult {
    for kind in BACKENDS {
        let dir = tempfile::tempdir()?;
        let mut slot = small_value_slot(kind, dir.path())?;
        let v = slot.value_state::<Vec<u8>>("op", "v")?;
        let s = slot.scope(&"k", &VoidNamespace)?;
        let fresh = slot.scope(&"fresh", &VoidNamespace)?;
        let old = vec![7u8; 1000];
        v.update(&mut slot, &s, &old)?;

        let e = v.update(&mut slot, &s, &big()).unwrap_err();
        assert_too_large(&e, "op/v", 2048 + 2);
        assert_eq!(v.get(&mut slot, &s)?, Some(old.clone()), "{kind}");
        let e = v.update(&mut slot, &fresh, &big()).unwrap_err();
        assert_too_large(&e, "op/v", 2050);
        assert_eq!(v.get(&mut slot, &fresh)?, None, "{kind}: nothing written");

        // Raw API: the limit is inclusive.
        slot.put(v.id(), &fresh, &[1; 1024])?;
        let e = slot.put(v.id(), &fresh, &[2; 1025]).unwrap_err();
        assert_too_large(&e, "op/v", 1025);
        assert_eq!(slot.get(v.id(), &fresh)?, Some(vec![1; 1024]), "{kind}");
        // Read-modify-write: an oversized new value is not written, on a present or absent key.
        let absent = slot.scope(&"absent", &VoidNamespace)?;
        for scope in [&fresh, &absent] {
            let e = slot
                .update_with(v.id(), scope, |_, out| {
                    out.extend_from_slice(&[3; 1025]);
                    (Update::Put, ())
                })
                .unwrap_err();
            assert_too_large(&e, "op/v", 1025);
        }
        assert_eq!(slot.get(v.id(), &fresh)?, Some(vec![1; 1024]), "{kind}");
        assert_eq!(slot.get(v.id(), &absent)?, None, "{kind}");

        // Reducing state goes through the same check.
        let r = slot.reducing_state::<Vec<u8>, _>("op", "r", |a, b| [&a[..], &b[..]].concat())?;
        r.add(&mut slot, &s, &vec![1; 600])?;
        let e = r.add(&mut slot, &s, &vec![2; 600]).unwrap_err();
        assert_too_large(&e, "op/r", 1202);
        assert_eq!(r.get(&mut slot, &s)?, Some(vec![1; 600]), "{kind}");

        slot.flush()?;
        assert_eq!(v.get(&mut slot, &s)?, Some(old), "{kind} after flush");
    }
    Ok(())
}

#[test]
fn list_add_with_one_oversized_element_appends_nothing() -> TestResult {
    for kind in BACKENDS {
        let dir = tempfile::tempdir()?;
        let mut slot = small_value_slot(kind, dir.path())?;
        let l = slot.list_state::<Vec<u8>>("op", "l")?;
        let s = slot.scope(&"k", &VoidNamespace)?;
        let empty = slot.scope(&"empty", &VoidNamespace)?;
        let before = vec![vec![1u8; 10], vec![2u8; 1000]];
        l.add_all(&mut slot, &s, &before)?;

        let batch = vec![vec![3u8; 5], big(), vec![4u8; 5]];
        let e = l.add_all(&mut slot, &s, &batch).unwrap_err();
        assert_too_large(&e, "op/l", 2050);
        assert_eq!(
            l.get(&mut slot, &s)?,
            before,
            "{kind}: add_all appended part of a batch"
        );

        let e = l.add(&mut slot, &s, &big()).unwrap_err();
        assert_too_large(&e, "op/l", 2050);
        let e = l.update(&mut slot, &s, &batch).unwrap_err();
        assert_too_large(&e, "op/l", 2050);
        assert_eq!(
            l.get(&mut slot, &s)?,
            before,
            "{kind}: a rejected update replaced the list"
        );

        let e = l.add_all(&mut slot, &empty, &batch).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(l.get(&mut slot, &empty)?.is_empty(), "{kind}");
        assert!(
            slot.scan_key_group(l.id(), empty.key_group())?
                .iter()
                .all(|e| e.key != cairn::engine::codec::encode("empty", "t").unwrap()),
            "{kind}: a rejected add created an entry"
        );

        // Raw API, last element oversized.
        let e = slot
            .list_append(l.id(), &s, &[&[1u8][..], &[0u8; 1025][..]])
            .unwrap_err();
        assert_too_large(&e, "op/l", 1025);

        // Still appendable afterwards, and intact after a flush (RocksDB merge operands).
        l.add(&mut slot, &s, &vec![5u8; 3])?;
        slot.flush()?;
        let mut want = before.clone();
        want.push(vec![5; 3]);
        assert_eq!(l.get(&mut slot, &s)?, want, "{kind}");
    }
    Ok(())
}

#[test]
fn oversized_map_value_or_user_key_is_rejected_and_keeps_the_map() -> TestResult {
    for kind in BACKENDS {
        let dir = tempfile::tempdir()?;
        let mut slot = small_value_slot(kind, dir.path())?;
        let m = slot.map_state::<Vec<u8>, Vec<u8>>("op", "m")?;
        let s = slot.scope(&"k", &VoidNamespace)?;
        let small_key = vec![1u8; 4];
        m.put(&mut slot, &s, &small_key, &vec![9u8; 100])?;

        // Oversized value, for an existing and for a new user key.
        let e = m.put(&mut slot, &s, &small_key, &big()).unwrap_err();
        assert_too_large(&e, "op/m", 2050);
        let e = m.put(&mut slot, &s, &vec![2u8; 4], &big()).unwrap_err();
        assert_too_large(&e, "op/m", 2050);
        // Oversized user key.
        let e = m.put(&mut slot, &s, &big(), &vec![1u8]).unwrap_err();
        assert_too_large(&e, "op/m", 2050);
        let e = slot.map_put(m.id(), &s, &[0u8; 1025], b"v").unwrap_err();
        assert_too_large(&e, "op/m", 1025);

        assert_eq!(
            m.entries(&mut slot, &s)?,
            [(small_key.clone(), vec![9u8; 100])],
            "{kind}: the map changed"
        );
        assert!(!m.contains(&mut slot, &s, &big())?);
        slot.flush()?;
        assert_eq!(
            m.get(&mut slot, &s, &small_key)?,
            Some(vec![9u8; 100]),
            "{kind}"
        );
    }
    Ok(())
}

#[test]
fn unknown_config_keys_are_rejected_naming_the_key() {
    let cases = [
        ("[state]\nmax-value-sise = \"1MiB\"\n", "max-value-sise"),
        ("[state]\nworking_dir = \"/tmp/x\"\n", "working_dir"),
        ("[memory]\nmanaged-sise = \"64MiB\"\n", "managed-sise"),
        (
            "[memory]\nwrite-buffer-ration = 0.4\n",
            "write-buffer-ration",
        ),
        ("[rocksdb]\nblok-size = \"4KiB\"\n", "blok-size"),
        ("[stat]\nbackend = \"heap\"\n", "stat"),
        ("backend = \"heap\"\n", "backend"),
    ];
    for (text, key) in cases {
        let e = CairnConfig::from_toml_str(text).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{text}");
        assert!(e.to_string().contains(key), "{text:?}: {e}");
    }
    // A wrong type or an unknown enum value names the key too.
    let e = CairnConfig::from_toml_str("[memory]\nwrite-buffer-ratio = \"half\"\n").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(e.to_string().contains("write-buffer-ratio"), "{e}");
}

/// Opens a slot with `toml` (on top of the defaults) and expects an `InvalidConfig` naming
/// `field`; the rejected open must not touch the working directory.
fn assert_open_rejects(toml: &str, field: &str) -> TestResult {
    for kind in BACKENDS {
        let dir = tempfile::tempdir()?;
        let work = dir.path().join("work");
        let mut config = CairnConfig::from_toml_str(toml)?;
        config.state.backend = kind;
        config.state.working_dir = work.clone();
        let e = match Slot::builder(&config).open() {
            Ok(_) => panic!("{kind}: {toml:?} was accepted"),
            Err(e) => e,
        };
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{kind}: {e}");
        match &e {
            EngineError::Config(c) => assert_eq!(c.field(), Some(field), "{kind}: {e}"),
            other => panic!("{kind}: expected a config error, got {other:?}"),
        }
        assert!(e.to_string().contains(field), "{kind}: {e}");
        assert!(
            !work.exists(),
            "{kind}: a rejected open created {}",
            work.display()
        );
    }
    Ok(())
}

#[test]
fn write_buffer_ratio_out_of_range_is_rejected_on_open() -> TestResult {
    assert_open_rejects(
        "[memory]\nwrite-buffer-ratio = 1.2\n",
        "memory.write-buffer-ratio",
    )?;
    assert_open_rejects(
        "[memory]\nwrite-buffer-ratio = 0.0\n",
        "memory.write-buffer-ratio",
    )?;
    assert_open_rejects(
        "[memory]\nwrite-buffer-ratio = -0.5\n",
        "memory.write-buffer-ratio",
    )
}

#[test]
fn high_priority_pool_ratio_out_of_range_is_rejected_on_open() -> TestResult {
    assert_open_rejects(
        "[memory]\nhigh-priority-pool-ratio = 1.5\n",
        "memory.high-priority-pool-ratio",
    )?;
    assert_open_rejects(
        "[memory]\nhigh-priority-pool-ratio = 0.0\n",
        "memory.high-priority-pool-ratio",
    )
}

#[test]
fn too_small_managed_size_is_rejected_on_open() -> TestResult {
    assert_open_rejects("[memory]\nmanaged-size = \"8MiB\"\n", "memory.managed-size")?;
    assert_open_rejects(
        "[memory]\nfixed-per-slot = \"1MiB\"\n",
        "memory.fixed-per-slot",
    )
}

#[test]
fn max_parallelism_out_of_range_is_rejected_on_open() -> TestResult {
    assert_open_rejects("[state]\nmax-parallelism = 0\n", "state.max-parallelism")?;
    assert_open_rejects(
        "[state]\nmax-parallelism = 40000\n",
        "state.max-parallelism",
    )?;
    assert_open_rejects(
        "[state]\nmax-parallelism = 32769\n",
        "state.max-parallelism",
    )
}

#[test]
fn max_value_size_out_of_range_is_rejected_on_open() -> TestResult {
    assert_open_rejects("[state]\nmax-value-size = 1000\n", "state.max-value-size")?;
    assert_open_rejects(
        "[state]\nmax-value-size = \"2GiB\"\n",
        "state.max-value-size",
    )
}

#[test]
fn out_of_range_config_errors_carry_the_value_and_the_rule() -> TestResult {
    let config = CairnConfig::from_toml_str("[memory]\nwrite-buffer-ratio = 1.2\n")?;
    let e = config.validate().unwrap_err();
    match &e {
        EngineError::Config(ConfigError::OutOfRange {
            field,
            value,
            allowed,
        }) => {
            assert_eq!(field, "memory.write-buffer-ratio");
            assert_eq!(value, "1.2");
            assert_eq!(allowed, "(0, 1)");
        }
        other => panic!("expected OutOfRange, got {other:?}"),
    }
    Ok(())
}

#[test]
fn slot_index_or_parallelism_out_of_range_is_rejected() -> TestResult {
    for kind in BACKENDS {
        let dir = tempfile::tempdir()?;
        let mut config = CairnConfig::from_toml_str("[state]\nmax-parallelism = 8\n")?;
        config.state.backend = kind;
        config.state.working_dir = dir.path().to_path_buf();
        for (index, parallelism) in [(0, 9), (0, 0)] {
            let e = match Slot::builder(&config).slot(index, parallelism).open() {
                Ok(_) => panic!("{kind}: slot {index} of {parallelism} opened"),
                Err(e) => e,
            };
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{kind}: {e}");
            assert!(e.to_string().contains("slots"), "{kind}: {e}");
        }
        let e = match Slot::builder(&config).slot(3, 3).open() {
            Ok(_) => panic!("{kind}: slot 3 of 3 opened"),
            Err(e) => e,
        };
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{kind}: {e}");
        // The largest parallelism is fine.
        let slot = Slot::builder(&config).slot(7, 8).open()?;
        assert_eq!(slot.key_groups().len(), 1);
    }
    Ok(())
}

#[test]
fn working_dir_under_a_regular_file_is_unavailable() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("afile");
    std::fs::write(&file, b"not a directory")?;
    let mut config = CairnConfig::default();
    config.state.working_dir = file.clone();
    config.memory.managed_size = bytesize::ByteSize::mib(16);

    for open in [
        Slot::builder(&config).open(), // <afile>/slot-0
        Slot::builder(&config).working_dir(file.join("slot")).open(),
    ] {
        let e = match open {
            Ok(_) => panic!("opened a slot under a regular file"),
            Err(e) => e,
        };
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(
            matches!(&e, EngineError::WorkingDirNotWritable { path, .. } if path.contains("afile")),
            "{e:?}"
        );
        assert!(e.to_string().contains("afile"), "{e}");
    }
    assert_eq!(
        std::fs::read(&file)?,
        b"not a directory",
        "the file was touched"
    );
    Ok(())
}

#[test]
fn working_dir_locked_by_another_slot_is_rejected_and_the_first_slot_keeps_working() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("shared");
    let mut config = CairnConfig::default();
    config.state.working_dir = tmp.path().to_path_buf();
    config.memory.managed_size = bytesize::ByteSize::mib(16);

    let mut first = Slot::builder(&config).working_dir(&dir).open()?;
    let v = first.value_state::<u64>("op", "v")?;
    let l = first.list_state::<u64>("op", "l")?;
    let scopes: Vec<_> = (0..100u64)
        .map(|k| first.scope(&k, &VoidNamespace))
        .collect::<Result<_, _>>()?;
    for (k, s) in scopes.iter().enumerate() {
        v.update(&mut first, s, &(k as u64))?;
        l.add_all(&mut first, s, &[k as u64, 1])?;
    }
    first.flush()?;
    for (k, s) in scopes.iter().enumerate().take(50) {
        l.add(&mut first, s, &(k as u64 * 10))?; // unflushed merge operands
    }

    for attempt in 0..2 {
        let e = match Slot::builder(&config).working_dir(&dir).open() {
            Ok(_) => panic!("attempt {attempt}: a second slot opened a locked directory"),
            Err(e) => e,
        };
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        assert!(matches!(e, EngineError::WorkingDirLocked { .. }), "{e:?}");
        assert!(e.to_string().contains("shared"), "{e}");
    }

    // The first slot's data is intact and it keeps accepting writes.
    for (k, s) in scopes.iter().enumerate() {
        let k = k as u64;
        assert_eq!(v.get(&mut first, s)?, Some(k));
        let mut want = vec![k, 1];
        if k < 50 {
            want.push(k * 10);
        }
        assert_eq!(l.get(&mut first, s)?, want);
    }
    v.update(&mut first, &scopes[0], &1000)?;
    first.flush()?;
    assert_eq!(v.get(&mut first, &scopes[0])?, Some(1000));
    drop(first);

    // Released on drop; the working directory is disposable, so the new slot starts empty.
    let mut second = Slot::builder(&config).working_dir(&dir).open()?;
    let v2 = second.value_state::<u64>("op", "v")?;
    let s = second.scope(&0u64, &VoidNamespace)?;
    assert_eq!(v2.get(&mut second, &s)?, None);
    v2.update(&mut second, &s, &5)?;
    assert_eq!(v2.get(&mut second, &s)?, Some(5));
    Ok(())
}
