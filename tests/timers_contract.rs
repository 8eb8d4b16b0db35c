//! The `TimerService` contract, run on both implementations (heap and RocksDB with a 4-entry
//! cache, so RocksDB refills and evictions are exercised on every test).

mod timers_support;

use cairn::timers::{
    ManualClock, TimeDomain, Timer, TimerError, TimerService, TimerServiceExt, key_format,
};
use timers_support::{IMPLS, Impl, Instance};

type R = Result<(), Box<dyn std::error::Error>>;

const EV: TimeDomain = TimeDomain::EventTime;
const PT: TimeDomain = TimeDomain::ProcessingTime;

/// (timestamp, key group, key, namespace) of every timer `advance_watermark(wm)` fires.
fn fire(svc: &mut dyn TimerService, wm: i64) -> Vec<(i64, u16, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    svc.advance_watermark(wm, |t: &Timer| {
        out.push((t.timestamp, t.key_group, t.key.clone(), t.namespace.clone()));
        Ok(())
    })
    .expect("advance watermark");
    out
}

fn each(mut f: impl FnMut(Impl, &mut dyn TimerService) -> R) -> R {
    for which in IMPLS {
        let mut inst = Instance::new(which, 0..=255);
        f(which, inst.svc()).map_err(|e| format!("{which:?}: {e}"))?;
    }
    Ok(())
}

#[test]
fn duplicates_collapse_and_fire_once() -> R {
    each(|_, s| {
        for _ in 0..3 {
            s.register(EV, 7, 100, b"k", b"w1")?;
        }
        assert_eq!(s.count(EV)?, 1);
        assert_eq!(fire(s, 99), vec![]);
        assert_eq!(fire(s, 100), vec![(100, 7, b"k".to_vec(), b"w1".to_vec())]);
        assert_eq!(fire(s, 1_000), vec![], "fired twice");
        assert_eq!(s.count(EV)?, 0);
        Ok(())
    })
}

/// Timestamp order, ties by key group, then by the payload bytes (`[len u32][key][ns]`):
/// shorter keys first.
#[test]
fn fires_in_timestamp_order_with_the_documented_tie_break() -> R {
    each(|_, s| {
        let timers: Vec<(i64, u16, &[u8], &[u8])> = vec![
            (50, 3, b"bb", b""),
            (10, 200, b"a", b"x"),
            (50, 3, b"a", b"zz"),
            (50, 1, b"zzz", b""),
            (-5, 9, b"neg", b""),
            (50, 3, b"a", b"y"),
            (50, 3, b"aa", b""),
            (i64::MAX, 0, b"end", b""),
        ];
        for (ts, kg, k, n) in &timers {
            s.register(EV, *kg, *ts, k, n)?;
        }
        let fired = fire(s, i64::MAX);
        let mut expected: Vec<_> = timers
            .iter()
            .map(|(ts, kg, k, n)| {
                let mut p = Vec::new();
                key_format::encode_payload(&mut p, k, n);
                (*ts, *kg, p, k.to_vec(), n.to_vec())
            })
            .collect();
        expected.sort();
        let expected: Vec<_> = expected
            .into_iter()
            .map(|(ts, kg, _, k, n)| (ts, kg, k, n))
            .collect();
        assert_eq!(fired, expected);
        // Spelled out: at ts 50, kg 1 first, then kg 3's "a"+"y", "a"+"zz", "aa", "bb".
        let at50: Vec<_> = fired
            .iter()
            .filter(|f| f.0 == 50)
            .map(|f| (f.1, f.2.clone(), f.3.clone()))
            .collect();
        assert_eq!(
            at50,
            vec![
                (1, b"zzz".to_vec(), vec![]),
                (3, b"a".to_vec(), b"y".to_vec()),
                (3, b"a".to_vec(), b"zz".to_vec()),
                (3, b"aa".to_vec(), vec![]),
                (3, b"bb".to_vec(), vec![]),
            ]
        );
        Ok(())
    })
}

#[test]
fn watermark_fires_exactly_the_timers_up_to_it() -> R {
    each(|_, s| {
        for i in 0..1_000i64 {
            s.register(EV, (i % 256) as u16, i, &i.to_be_bytes(), b"")?;
        }
        let mut seen = 0;
        for wm in [-1, 0, 99, 99, 500, 998, 2_000] {
            let f = fire(s, wm);
            assert!(f.iter().all(|t| t.0 <= wm));
            assert!(f.windows(2).all(|w| w[0] <= w[1]));
            seen += f.len();
            assert_eq!(
                seen as i64,
                (wm + 1).clamp(0, 1_000),
                "after watermark {wm}"
            );
            assert_eq!(s.peek(EV)?, (wm + 1 < 1_000).then_some(wm + 1));
        }
        Ok(())
    })
}

#[test]
fn deleted_timers_do_not_fire() -> R {
    each(|_, s| {
        for i in 0..20i64 {
            s.register(EV, 5, i, b"k", &[i as u8])?;
        }
        for i in (0..20i64).step_by(2) {
            s.delete(EV, 5, i, b"k", &[i as u8])?;
        }
        s.delete(EV, 5, 3, b"other", b"")?; // absent: no-op
        s.delete(EV, 6, 1_000, b"k", b"")?; // absent: no-op
        let f = fire(s, 100);
        let ts: Vec<i64> = f.iter().map(|t| t.0).collect();
        assert_eq!(ts, (1..20).step_by(2).collect::<Vec<_>>());
        assert_eq!(s.peek(EV)?, None);
        Ok(())
    })
}

#[test]
fn processing_time_fires_from_the_injected_clock_and_domains_are_separate() -> R {
    each(|_, s| {
        let clock = ManualClock::new(0);
        s.register(PT, 1, 1_000, b"p", b"")?;
        s.register(EV, 1, 1_000, b"e", b"")?;
        assert_eq!(s.peek(PT)?, Some(1_000));
        assert_eq!(s.advance_processing_time(&clock, |_| Ok(()))?, 0);
        clock.set(1_000);
        let mut fired = Vec::new();
        s.advance_processing_time(&clock, |t| {
            fired.push((t.domain, t.key.clone()));
            Ok(())
        })?;
        assert_eq!(fired, vec![(PT, b"p".to_vec())]);
        assert_eq!(s.peek(EV)?, Some(1_000), "event-time timer untouched");
        assert_eq!(fire(s, 1_000).len(), 1);
        Ok(())
    })
}

#[test]
fn key_groups_outside_the_range_are_rejected_and_nothing_is_written() -> R {
    for which in IMPLS {
        let mut inst = Instance::new(which, 10..=20);
        let s = inst.svc();
        for kg in [9u16, 21, 300] {
            let e = s.register(EV, kg, 1, b"k", b"").expect_err("out of range");
            assert!(
                matches!(e, TimerError::KeyGroupOutOfRange { key_group, start: 10, end: 20 } if key_group == kg)
            );
            assert!(e.to_string().contains(&kg.to_string()), "{e}");
        }
        assert_eq!(s.count(EV)?, 0);
        assert_eq!(s.peek(EV)?, None);
    }
    Ok(())
}

/// A host engine registers timers while firing (`onTimer` registering the next one): a timer
/// that sorts after the one being fired fires in the same loop.
#[test]
fn timers_registered_while_firing_fire_in_the_same_loop() -> R {
    each(|_, s| {
        s.register(EV, 2, 10, b"a", b"")?;
        let mut t = Timer::default();
        let mut fired = Vec::new();
        while s.poll(EV, 30, &mut t)? {
            fired.push(t.timestamp);
            if t.timestamp < 30 {
                s.register(EV, 4, t.timestamp + 10, b"b", b"")?;
            }
        }
        assert_eq!(fired, vec![10, 20, 30]);
        assert_eq!(s.peek(EV)?, None);
        Ok(())
    })
}

/// Many timers in one key group (RocksDB: far beyond the 4-entry cache), registered out of order
/// and interleaved with firing.
#[test]
fn large_key_group_fires_in_order() -> R {
    each(|_, s| {
        let mut expected = Vec::new();
        for i in 0..2_000u64 {
            let ts = ((i * 7_919) % 1_000) as i64;
            s.register(EV, 42, ts, &i.to_be_bytes(), b"")?;
            expected.push((ts, i));
        }
        expected.sort_by_key(|&(ts, i)| (ts, i.to_be_bytes()));
        let mut fired = fire(s, 499);
        s.register(EV, 42, 600, b"late", b"")?;
        fired.extend(fire(s, i64::MAX));
        let mut want: Vec<(i64, Vec<u8>)> = expected
            .iter()
            .map(|(ts, i)| (*ts, i.to_be_bytes().to_vec()))
            .collect();
        want.push((600, b"late".to_vec()));
        want.sort_by(|a, b| {
            let pa = (a.0, a.1.len(), &a.1);
            let pb = (b.0, b.1.len(), &b.1);
            pa.cmp(&pb)
        });
        let got: Vec<(i64, Vec<u8>)> = fired.into_iter().map(|f| (f.0, f.2)).collect();
        assert_eq!(got.len(), want.len());
        assert_eq!(got, want);
        Ok(())
    })
}

#[test]
fn snapshot_restore_keeps_timers_and_filters_key_groups() -> R {
    for which in IMPLS {
        let mut inst = Instance::new(which, 0..=255);
        let s = inst.svc();
        for kg in 0..=255u16 {
            s.register(EV, kg, i64::from(kg) * 10, b"k", b"")?;
            s.register(PT, kg, 5, b"p", &kg.to_be_bytes())?;
        }
        assert_eq!(fire(s, 99).len(), 10);
        let mut restored = inst.snapshot_restore(0..=255);
        // Writes after the snapshot do not reach it.
        inst.svc().register(EV, 3, 1, b"after", b"")?;
        let r = restored.svc();
        assert_eq!(r.count(EV)?, 246, "{which:?}");
        assert_eq!(r.count(PT)?, 256, "{which:?}");
        assert_eq!(r.peek(EV)?, Some(100));
        let f = fire(r, 129);
        assert_eq!(f.iter().map(|t| t.1).collect::<Vec<_>>(), vec![10, 11, 12]);
        // Into a smaller range (rescaling): only its key groups.
        let mut half = inst.snapshot_restore(128..=255);
        let h = half.svc();
        assert_eq!(h.count(EV)?, 128, "{which:?}");
        assert_eq!(h.peek(EV)?, Some(1_280));
        let all = fire(h, i64::MAX);
        assert!(all.iter().all(|t| t.1 >= 128));
    }
    Ok(())
}

/// Hundreds of timers at one timestamp (a window end): ties fire in payload order, also for
/// timers registered into the bucket while it fires, and deletes reach them.
#[test]
fn many_timers_at_one_timestamp_fire_in_payload_order() -> R {
    each(|_, s| {
        let key = |i: u64| cairn::engine::keygroup::key_hash(&i.to_be_bytes()).to_be_bytes();
        for i in 0..600u64 {
            s.register(EV, 9, 1_000, &key(i), b"")?;
            s.register(EV, 9, 1_000, &key(i), b"")?;
        }
        s.delete(EV, 9, 1_000, &key(7), b"")?;
        let mut want: Vec<Vec<u8>> = (0..600u64)
            .filter(|&i| i != 7)
            .map(|i| key(i).to_vec())
            .collect();
        let mut t = Timer::default();
        let mut got = Vec::new();
        while s.poll(EV, 1_000, &mut t)? {
            got.push(t.key.clone());
            if got.len() == 100 {
                // Into the firing bucket: one sorting after everything fired so far, one before.
                s.register(EV, 9, 1_000, &[0xff; 8], b"")?;
                s.register(EV, 9, 1_000, &[0x00; 8], b"")?;
                s.delete(EV, 9, 1_000, &key(8), b"")?;
            }
        }
        want.retain(|k| k != &key(8).to_vec());
        want.sort();
        let (before, after) = got.split_at(100);
        assert!(before == &want[..100], "firing order of the first 100");
        // `poll` always takes the earliest due timer: the 0x00 key (registered while firing,
        // sorting before everything) fires next, the 0xff key last.
        let mut rest = vec![vec![0x00; 8]];
        rest.extend_from_slice(&want[100..]);
        rest.push(vec![0xff; 8]);
        assert!(
            after == &rest[..],
            "firing order after registering into the firing bucket"
        );
        Ok(())
    })
}

/// Buffered writes keep their order around range deletes: timers registered and fired before
/// anything reaches RocksDB stay deleted (their puts precede the range tombstone), and a timer
/// registered below fired ones after it survives, also through a checkpoint and restore.
#[test]
fn buffered_writes_keep_their_order_around_range_deletes() -> R {
    for which in IMPLS {
        let mut inst = Instance::new(which, 0..=255);
        let s = inst.svc();
        // Loads every key group's cache now, so nothing below writes the buffer early.
        assert_eq!(s.peek(EV)?, None);
        // Unsorted registrations into one key group, and one in another.
        for ts in [6, 2, 5, 1, 4, 3, 100] {
            s.register(EV, 9, ts, b"k", b"")?;
        }
        s.register(EV, 10, 50, b"k", b"")?;
        // Fires 1..=3: the third writes a range delete over buffered puts (every 3 firings,
        // before the 4-entry cache needs a refill, which would write the buffer).
        assert_eq!(fire(s, 3).len(), 3, "{which:?}");
        // Below the fired timers (no range delete pending now): nothing deletes 1..=3 again.
        s.register(EV, 9, 0, b"late", b"")?;
        let mut restored = inst.snapshot_restore(0..=255);
        let r = restored.svc();
        assert_eq!(r.count(EV)?, 6, "{which:?}");
        let f: Vec<(i64, u16)> = fire(r, i64::MAX).iter().map(|t| (t.0, t.1)).collect();
        assert_eq!(
            f,
            vec![(0, 9), (4, 9), (5, 9), (6, 9), (50, 10), (100, 9)],
            "{which:?}"
        );
    }
    Ok(())
}

/// Heap timers and RocksDB timers' write-back buffer keep an O(1) count of their heap bytes
/// (it bounds the buffer): positive while timers are held — spilled payloads, repeats, deletes
/// and firing included — and exactly zero once every timer has fired or been deleted, so
/// the count neither drifts nor leaks.
#[test]
fn heap_bytes_follow_the_timers_held_and_return_to_zero() -> R {
    for which in [Impl::Heap, Impl::RocksDbBuffered] {
        let mut inst = Instance::new(which, 0..=255);
        let s = inst.svc();
        let long = [7u8; 40]; // beyond the 24 inline bytes: a heap allocation per payload
        let timer = |i: u32| -> (u16, i64, [u8; 4], &[u8]) {
            let ns: &[u8] = if i.is_multiple_of(3) { &long } else { b"" };
            ((i % 5) as u16, i64::from(i % 7), i.to_be_bytes(), ns)
        };
        for i in 0..300u32 {
            let (kg, ts, key, ns) = timer(i);
            s.register(EV, kg, ts, &key, ns)?;
            s.register(EV, kg, ts, &key, ns)?;
            s.register(PT, kg, i64::from(i), &key, b"")?;
            assert!(s.heap_bytes() > 0, "{which:?}: nothing counted after {i}");
        }
        for i in (0..300u32).step_by(4) {
            let (kg, ts, key, ns) = timer(i);
            s.delete(EV, kg, ts, &key, ns)?;
        }
        fire(s, 3);
        // (The small buffer may have written out everything left by now.)
        assert!(which != Impl::Heap || s.heap_bytes() > 0);
        fire(s, i64::MAX);
        let mut t = Timer::default();
        while s.poll(PT, i64::MAX, &mut t)? {}
        assert_eq!(s.heap_bytes(), 0, "{which:?}: bytes left with no timer");
    }
    Ok(())
}

/// A buffer that overflowed routes later timestamps straight to RocksDB, but only while it is
/// more than a quarter full: once `count` has written it out (or firing has drained it), new
/// registrations are buffered again — and every timer still fires once, in order.
#[test]
fn an_overflowed_buffer_takes_registrations_again_once_drained() -> R {
    let mut inst = Instance::new(Impl::RocksDbBuffered, 0..=255);
    let s = inst.svc();
    for i in 0..500u32 {
        s.register(EV, (i % 3) as u16, i64::from(i), &i.to_be_bytes(), b"")?;
    }
    assert_eq!(s.count(EV)?, 500);
    assert_eq!(s.heap_bytes(), 0, "count writes the buffer out");
    s.register(EV, 1, 10_000, b"late", b"")?;
    assert!(
        s.heap_bytes() > 0,
        "a registration after the drain is buffered"
    );
    let fired = fire(s, i64::MAX);
    assert_eq!(fired.len(), 501);
    assert!(fired.windows(2).all(|w| w[0].0 <= w[1].0));
    assert_eq!(fired[500].2, b"late");
    assert_eq!(s.heap_bytes(), 0);
    Ok(())
}

/// (timestamp, key group, key) of every `domain` timer due by `up_to`, polled one by one.
fn poll_all(
    svc: &mut dyn TimerService,
    domain: TimeDomain,
    up_to: i64,
) -> Vec<(i64, u16, Vec<u8>)> {
    let mut t = Timer::default();
    let mut out = Vec::new();
    while svc.poll(domain, up_to, &mut t).expect("poll") {
        out.push((t.timestamp, t.key_group, t.key.clone()));
    }
    out
}

/// Heap timers file registrations into their queues in batches (up to a thousand held before
/// they are filed). Long runs of registrations with repeats, over every key group and both
/// domains, fire once each in the contract's order; a snapshot taken in the middle of a run
/// holds exactly the timers registered before it, also when later ones are filed into queues
/// the snapshot still shares.
#[test]
fn long_runs_of_registrations_fire_once_in_order_and_snapshots_stay_exact() -> R {
    // Timer `i` and `i + 3000` are the same timer; a quarter are processing-time timers.
    let timer = |i: u64| {
        let j = i % 3_000;
        let h = cairn::engine::keygroup::key_hash(&j.to_be_bytes());
        let domain = if j.is_multiple_of(4) { PT } else { EV };
        (
            domain,
            (h % 256) as u16,
            (h >> 16) as i64 % 40,
            j.to_be_bytes(),
        )
    };
    let register = |s: &mut dyn TimerService, from: u64, to: u64| -> R {
        for i in from..to {
            let (d, kg, ts, key) = timer(i);
            s.register(d, kg, ts, &key, b"")?;
        }
        Ok(())
    };
    // What `0..n` registered, per domain, in firing order (keys of one length: payload order
    // is key order).
    let expected = |n: u64, domain: TimeDomain| {
        let mut v: Vec<(i64, u16, Vec<u8>)> = (0..n.min(3_000))
            .map(timer)
            .filter(|t| t.0 == domain)
            .map(|(_, kg, ts, key)| (ts, kg, key.to_vec()))
            .collect();
        v.sort();
        v
    };
    for which in IMPLS {
        let mut inst = Instance::new(which, 0..=255);
        register(inst.svc(), 0, 2_500)?;
        let mut restored = inst.snapshot_restore(0..=255);
        register(inst.svc(), 2_500, 7_000)?;
        for (s, n) in [(restored.svc(), 2_500), (inst.svc(), 7_000)] {
            assert_eq!(s.count(PT)?, expected(n, PT).len() as u64, "{which:?}");
            assert_eq!(poll_all(s, EV, i64::MAX), expected(n, EV), "{which:?} {n}");
            assert_eq!(poll_all(s, PT, i64::MAX), expected(n, PT), "{which:?} {n}");
        }
    }
    // Heap timers' view is copy-on-write: written after more registrations were filed into
    // the queues it shares, it still holds the first 2,500.
    let mut h = cairn::timers::HeapTimers::new(0..=255);
    register(&mut h, 0, 2_500)?;
    let view = h.snapshot();
    register(&mut h, 2_500, 7_000)?;
    assert_eq!(
        poll_all(&mut h, EV, 10),
        expected(7_000, EV)[..]
            .iter()
            .filter(|t| t.0 <= 10)
            .cloned()
            .collect::<Vec<_>>()
    );
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("timers.snapshot");
    view.write(&path)?;
    let mut back = cairn::timers::HeapTimers::new(0..=255);
    back.restore(&path)?;
    assert_eq!(poll_all(&mut back, EV, i64::MAX), expected(2_500, EV));
    assert_eq!(poll_all(&mut back, PT, i64::MAX), expected(2_500, PT));
    Ok(())
}
