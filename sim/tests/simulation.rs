//! The deterministic simulation of the checkpoint protocol (see the `cairn-sim` crate doc):
//! over 100,000 steps over a few seeds in about a minute, then one seed twice to show that a
//! run replays exactly.
//!
//! `CAIRN_SIM_SEED=<n>` runs that seed only, `CAIRN_SIM_SEEDS=<a>..<b>` a range of seeds;
//! `CAIRN_SIM_STEPS=<n>` sets the steps per seed; `scripts/sim.sh` runs many seeds for longer.

use std::time::Instant;

use cairn_sim::{SimConfig, Stats, run};

/// Seeds of the default run and steps per seed: 4 x 25,000 = 100,000 steps.
const SEEDS: [u64; 4] = [1, 2, 3, 4];
const STEPS: u64 = 25_000;

/// `CAIRN_SIM_SEED=<n>` (one seed), `CAIRN_SIM_SEEDS=<a>..<b>` (a range, inclusive) or
/// `CAIRN_SIM_SEEDS=<a>,<b>,...`; else [`SEEDS`].
fn seeds() -> Vec<u64> {
    let num = |s: &str| -> u64 { s.trim().parse().expect("a seed is a number") };
    if let Ok(s) = std::env::var("CAIRN_SIM_SEED") {
        return vec![num(&s)];
    }
    match std::env::var("CAIRN_SIM_SEEDS") {
        Ok(s) => match s.split_once("..") {
            Some((a, b)) => (num(a)..=num(b)).collect(),
            None => s.split(',').map(num).collect(),
        },
        Err(_) => SEEDS.to_vec(),
    }
}

#[test]
fn checkpoint_protocol_holds_its_invariants_under_simulation() {
    let seeds = seeds();
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(seeds.len());
    let t = Instant::now();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let mine: Vec<u64> = seeds.iter().copied().skip(i).step_by(threads).collect();
                s.spawn(move || {
                    mine.into_iter()
                        .map(|seed| run(&SimConfig::from_env(seed, STEPS)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    let mut total = Stats::default();
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(report) => {
                println!(
                    "seed {}: {} steps in {:.1} s ({:.0} steps/s), trace {:016x}",
                    report.seed,
                    report.stats.steps,
                    report.seconds,
                    report.steps_per_second(),
                    report.trace
                );
                total.add(&report.stats);
            }
            Err(f) => failures.push(f),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "total: {} steps in {secs:.1} s ({:.0} steps/s over {threads} threads)\n{total}",
        total.steps,
        total.steps as f64 / secs
    );
    if let Some(f) = failures.first() {
        for f in &failures {
            eprintln!("{f}");
        }
        panic!("{f}");
    }
}

/// A run is a function of its seed: the same seed twice gives the same storage effects in
/// the same order and the same counts.
#[test]
fn a_seed_replays_exactly() {
    let cfg = SimConfig {
        seed: 0xdec0de,
        steps: 3_000,
        world_steps: 1_500,
        ..SimConfig::default()
    };
    let a = run(&cfg);
    let b = run(&cfg);
    match (a, b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.stats, b.stats);
            assert_eq!(a.trace, b.trace, "two runs of one seed diverged");
        }
        (Err(a), Err(b)) => assert_eq!((a.step, a.trace), (b.step, b.trace)),
        (a, b) => panic!("one run failed, the other did not: {a:?} / {b:?}"),
    }
}
