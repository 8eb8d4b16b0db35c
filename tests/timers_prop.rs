//! Heap and RocksDB timers are interchangeable: random register / delete / advance /
//! snapshot-restore sequences give the same firings on both, and the same as a plain model
//! (a `BTreeSet` ordered like the contract says).
//!
//! Seeded: `PROPTEST_RNG_SEED` when set, else a fixed seed; a failure prints the seed and the
//! shrunk sequence. `PROPTEST_CASES` overrides the number of cases.

mod timers_support;

use std::collections::BTreeSet;

use cairn::timers::{TimeDomain, Timer, key_format};
use proptest::prelude::*;
use proptest::test_runner::{
    Config as ProptestConfig, RngSeed, TestCaseError, TestError, TestRunner,
};
use timers_support::{IMPLS, Instance};

const DEFAULT_SEED: u64 = 0x00ca_1a5e_71e5_0001;
const DEFAULT_CASES: u32 = 96;
const KEY_GROUPS: [u16; 5] = [0, 1, 2, 200, 255];
const KEYS: [&[u8]; 5] = [b"", b"a", b"b", b"aa", b"ab\x00"];

#[derive(Clone, Debug)]
enum Op {
    Register(TimeDomain, u16, i64, usize, u8),
    Delete(TimeDomain, u16, i64, usize, u8),
    Advance(TimeDomain, i64),
    Peek(TimeDomain),
    /// Snapshot, restore into a fresh service, continue on the restored one.
    SnapshotRestore,
    Flush,
}

fn domain() -> impl Strategy<Value = TimeDomain> + Clone {
    prop_oneof![3 => Just(TimeDomain::EventTime), 1 => Just(TimeDomain::ProcessingTime)]
}

/// The timers a sequence draws from.
#[derive(Clone, Copy, Debug)]
struct Shape {
    key_groups: &'static [u16],
    /// Timestamps `[0, timestamps)`, shifted by -3 (negative ones included).
    timestamps: i64,
    /// Namespaces `[0, namespaces)` (one byte).
    namespaces: u8,
    /// Longest sequence.
    max_ops: usize,
    /// Weight of `Advance` against 10 for `Register`.
    advance_weight: u32,
}

/// Timers spread over many timestamps and key groups: small buckets.
const SPREAD: Shape = Shape {
    key_groups: &KEY_GROUPS,
    timestamps: 43,
    namespaces: 3,
    max_ops: 250,
    advance_weight: 3,
};

/// Few timestamps, many timers each (window ends): buckets of up to 5 x 40 timers, so the heap
/// service's large-bucket paths (compaction of repeats, hash set after a delete) run.
const DENSE: Shape = Shape {
    key_groups: &[0, 255],
    timestamps: 3,
    namespaces: 40,
    max_ops: 1200,
    advance_weight: 1,
};

fn op(shape: Shape) -> impl Strategy<Value = Op> {
    let timer = (
        domain(),
        prop::sample::select(shape.key_groups),
        -3i64..shape.timestamps - 3,
        0..KEYS.len(),
        0u8..shape.namespaces,
    );
    let advance_to = || -5i64..shape.timestamps - 1;
    prop_oneof![
        10 => timer.clone().prop_map(|(d, kg, ts, k, n)| Op::Register(d, kg, ts, k, n)),
        3 => timer.prop_map(|(d, kg, ts, k, n)| Op::Delete(d, kg, ts, k, n)),
        shape.advance_weight => (domain(), advance_to()).prop_map(|(d, t)| Op::Advance(d, t)),
        1 => domain().prop_map(Op::Peek),
        1 => Just(Op::SnapshotRestore),
        1 => Just(Op::Flush),
    ]
}

type Fired = (TimeDomain, i64, u16, Vec<u8>, Vec<u8>);

/// The model: (domain, ts, key group, payload) in firing order.
#[derive(Default)]
struct Model(BTreeSet<(TimeDomain, i64, u16, Vec<u8>)>);

impl Model {
    fn apply(&mut self, op: &Op) -> Vec<Fired> {
        let entry = |d: TimeDomain, kg: u16, ts: i64, k: usize, n: u8| {
            let mut p = Vec::new();
            key_format::encode_payload(&mut p, KEYS[k], &[n]);
            (d, ts, kg, p)
        };
        match *op {
            Op::Register(d, kg, ts, k, n) => {
                self.0.insert(entry(d, kg, ts, k, n));
                vec![]
            }
            Op::Delete(d, kg, ts, k, n) => {
                self.0.remove(&entry(d, kg, ts, k, n));
                vec![]
            }
            Op::Advance(d, t) => {
                let due: Vec<_> = self
                    .0
                    .iter()
                    .filter(|e| e.0 == d && e.1 <= t)
                    .cloned()
                    .collect();
                due.into_iter()
                    .map(|e| {
                        self.0.remove(&e);
                        let (k, n) = key_format::decode_payload(&e.3).expect("model payload");
                        (e.0, e.1, e.2, k.to_vec(), n.to_vec())
                    })
                    .collect()
            }
            Op::Peek(d) => self
                .0
                .iter()
                .find(|e| e.0 == d)
                .map(|e| vec![(d, e.1, u16::MAX, vec![], vec![])])
                .unwrap_or_default(),
            Op::SnapshotRestore | Op::Flush => vec![],
        }
    }
}

fn apply(inst: &mut Instance, op: &Op) -> Result<Vec<Fired>, TestCaseError> {
    let fail = |e: cairn::timers::TimerError| TestCaseError::fail(e.to_string());
    let s = inst.svc();
    Ok(match *op {
        Op::Register(d, kg, ts, k, n) => {
            s.register(d, kg, ts, KEYS[k], &[n]).map_err(fail)?;
            vec![]
        }
        Op::Delete(d, kg, ts, k, n) => {
            s.delete(d, kg, ts, KEYS[k], &[n]).map_err(fail)?;
            vec![]
        }
        Op::Advance(d, t) => {
            let mut out = Vec::new();
            let mut timer = Timer::default();
            while s.poll(d, t, &mut timer).map_err(fail)? {
                out.push((
                    timer.domain,
                    timer.timestamp,
                    timer.key_group,
                    timer.key.clone(),
                    timer.namespace.clone(),
                ));
            }
            out
        }
        Op::Peek(d) => s
            .peek(d)
            .map_err(fail)?
            .map(|ts| vec![(d, ts, u16::MAX, vec![], vec![])])
            .unwrap_or_default(),
        Op::SnapshotRestore => {
            *inst = inst.snapshot_restore(0..=255);
            vec![]
        }
        Op::Flush => {
            s.flush().map_err(fail)?;
            vec![]
        }
    })
}

fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let mut insts: Vec<Instance> = IMPLS.iter().map(|&w| Instance::new(w, 0..=255)).collect();
    for (i, op) in ops.iter().enumerate() {
        let want = model.apply(op);
        for (which, inst) in IMPLS.iter().zip(insts.iter_mut()) {
            let got = apply(inst, op)?;
            prop_assert_eq!(
                &got,
                &want,
                "{:?} differs from the model at op {} ({:?})",
                which,
                i,
                op
            );
        }
    }
    for d in TimeDomain::ALL {
        let want = model.0.iter().filter(|e| e.0 == d).count() as u64;
        for inst in &mut insts {
            let got = inst
                .svc()
                .count(d)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got, want);
        }
    }
    Ok(())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(shape: Shape) {
    let seed = env_or("PROPTEST_RNG_SEED", DEFAULT_SEED);
    let cases = env_or("PROPTEST_CASES", DEFAULT_CASES);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    });
    match runner.run(
        &proptest::collection::vec(op(shape), 0..=shape.max_ops),
        |ops| check(&ops),
    ) {
        Ok(()) => eprintln!("{shape:?}: {cases} cases with seed {seed} passed"),
        Err(TestError::Fail(reason, ops)) => panic!(
            "{shape:?}: heap/rocksdb/model disagree (rerun with PROPTEST_RNG_SEED={seed}): {reason}\n\
             minimal failing sequence ({} ops):\n{ops:#?}",
            ops.len()
        ),
        Err(TestError::Abort(reason)) => panic!("aborted (PROPTEST_RNG_SEED={seed}): {reason}"),
    }
}

#[test]
fn random_sequences_fire_identically_on_heap_rocksdb_and_model() {
    run(SPREAD);
}

#[test]
fn dense_sequences_fire_identically_on_heap_rocksdb_and_model() {
    run(DENSE);
}
