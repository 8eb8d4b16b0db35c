//! The model: what every checkpoint attempt was meant to contain, what each writer was told,
//! and the invariants storage must satisfy against it after every step.
//!
//! Every attempt carries its id in its metadata (`sim.attempt`), so a committed checkpoint in
//! storage names the attempt (and so the slot states) it must restore, even when one job
//! reuses a checkpoint id across writers (a failed attempt of epoch 1, a committed one of
//! epoch 2).
//!
//! ## Invariants
//! 1. Every committed checkpoint restores exactly the model's state of its attempt.
//! 2. The commit point is final: a checkpoint once committed stays until at least `retained`
//!    later checkpoints of its job (or of a job that claimed it) committed.
//! 3. A checkpoint reported failed is never committed, now or later (an attempt whose outcome
//!    is unknown, in doubt or cut by a crash, may resolve either way).
//! 4. No object referenced by a committed checkpoint is missing or of another size.
//! 5. After a garbage collection with grace 0 and nothing in flight, nothing unreferenced
//!    remains (checked by [`Model::check_no_orphans`]).
//! 6. An attempt started by a writer that was already superseded (a zombie) commits nothing.

use std::collections::{BTreeMap, BTreeSet};

use crate::inspect::{View, compare_shape, referenced};
use crate::slots::SlotState;

/// What a writer was told about an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `complete_local` has not returned yet.
    InFlight,
    /// Reported committed.
    Committed,
    /// Reported failed (not committed).
    Failed,
    /// Reported failed with "commit outcome unknown": may be committed or not.
    InDoubt,
    /// The writer crashed during it: may be committed or not.
    Crashed,
}

/// One checkpoint attempt of a writer.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The simulation's id of the attempt (`sim.attempt` in its metadata).
    pub uid: u64,
    /// The job.
    pub job: String,
    /// The checkpoint id.
    pub id: u64,
    /// The simulated writer.
    pub writer: u64,
    /// The step that started it.
    pub step: u64,
    /// What it must restore.
    pub slots: Vec<SlotState>,
    /// What the writer was told.
    pub outcome: Outcome,
    /// Started by a writer already superseded by another one.
    pub zombie: bool,
}

/// A checkpoint seen committed in storage (or reported committed).
#[derive(Clone, Debug)]
struct Seen {
    uid: u64,
    /// Its `_metadata` is gone (subsumed).
    gone: bool,
    /// Its contents were compared with the model.
    verified: bool,
}

/// What changed in storage's committed checkpoints at a check.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Checkpoints committed since the last check: (job, id, attempt uid).
    pub new: Vec<(String, u64, u64)>,
    /// Checkpoints deleted since the last check.
    pub gone: Vec<(String, u64)>,
}

impl Changes {
    /// Whether the set of committed checkpoints changed.
    pub fn any(&self) -> bool {
        !self.new.is_empty() || !self.gone.is_empty()
    }
}

/// The model. See the module doc.
#[derive(Debug)]
pub struct Model {
    retained: usize,
    attempts: BTreeMap<u64, Attempt>,
    next_uid: u64,
    seen: BTreeMap<(String, u64), Seen>,
    /// Jobs that claimed a checkpoint, per (job, id).
    claims: BTreeMap<(String, u64), BTreeSet<String>>,
    /// Attempts reported committed and not yet seen in storage.
    reported: BTreeSet<u64>,
    /// Bumped by every change of the model.
    revision: u64,
}

impl Model {
    /// A model of writers keeping `retained` checkpoints.
    pub fn new(retained: usize) -> Self {
        Self {
            retained: retained.max(1),
            attempts: BTreeMap::new(),
            next_uid: 1,
            seen: BTreeMap::new(),
            claims: BTreeMap::new(),
            reported: BTreeSet::new(),
            revision: 0,
        }
    }

    /// Records a new attempt; returns its uid.
    pub fn begin(
        &mut self,
        job: &str,
        id: u64,
        writer: u64,
        step: u64,
        slots: Vec<SlotState>,
        zombie: bool,
    ) -> u64 {
        let uid = self.next_uid;
        self.next_uid += 1;
        self.revision += 1;
        self.attempts.insert(
            uid,
            Attempt {
                uid,
                job: job.to_string(),
                id,
                writer,
                step,
                slots,
                outcome: Outcome::InFlight,
                zombie,
            },
        );
        uid
    }

    /// Records what the writer was told.
    pub fn finish(&mut self, uid: u64, outcome: Outcome) {
        self.revision += 1;
        if outcome == Outcome::Committed {
            self.reported.insert(uid);
        }
        if let Some(a) = self.attempts.get_mut(&uid) {
            a.outcome = outcome;
        }
    }

    /// Changes whenever the model changes (a check of an unchanged model against unchanged
    /// storage can be skipped).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// An attempt.
    pub fn attempt(&self, uid: u64) -> Option<&Attempt> {
        self.attempts.get(&uid)
    }

    /// Job `claimer` claimed checkpoint (`job`, `id`).
    pub fn claimed(&mut self, job: &str, id: u64, claimer: &str) {
        self.revision += 1;
        self.claims
            .entry((job.to_string(), id))
            .or_default()
            .insert(claimer.to_string());
    }

    /// Whether job `claimer` claimed checkpoint `id` of job `job`.
    pub fn is_claim(&self, job: &str, id: u64, claimer: &str) -> bool {
        self.claims
            .get(&(job.to_string(), id))
            .is_some_and(|c| c.contains(claimer))
    }

    /// Marks a committed checkpoint as compared with the model.
    pub fn verified(&mut self, job: &str, id: u64) {
        if let Some(s) = self.seen.get_mut(&(job.to_string(), id)) {
            s.verified = true;
        }
    }

    /// Whether checkpoint (`job`, `id`) may be gone: at least `retained` later checkpoints of
    /// its job, or of a job that claimed it, committed.
    fn deletable(&self, job: &str, id: u64) -> bool {
        let mut owners: BTreeSet<&str> = BTreeSet::from([job]);
        if let Some(c) = self.claims.get(&(job.to_string(), id)) {
            owners.extend(c.iter().map(String::as_str));
        }
        let later = self
            .seen
            .keys()
            .filter(|(j, i)| owners.contains(j.as_str()) && *i > id)
            .count();
        later >= self.retained
    }

    /// Checks invariants 1 (shape), 2, 3, 4 and 6 against `view`; returns what changed.
    pub fn check(&mut self, view: &View) -> Result<Changes, String> {
        if let Some((path, e)) = view.unreadable.first() {
            return Err(format!(
                "committed metadata {path} can't be read: {e} (a `_metadata` exists, so the checkpoint counts as committed, but no restore can use it)"
            ));
        }
        let mut changes = Changes::default();
        for ((job, id), c) in &view.committed {
            let uid = c.attempt.ok_or_else(|| {
                format!("{job}/chk-{id} is committed but names no simulation attempt")
            })?;
            let a = self
                .attempts
                .get(&uid)
                .ok_or_else(|| format!("{job}/chk-{id} is committed by unknown attempt {uid}"))?;
            if a.job != *job || a.id != *id {
                return Err(format!(
                    "{job}/chk-{id} holds the metadata of attempt {uid} ({}/chk-{})",
                    a.job, a.id
                ));
            }
            if a.outcome == Outcome::Failed {
                return Err(format!(
                    "invariant 3: {job}/chk-{id} (attempt {uid}, step {}) is committed, but its writer was told it failed",
                    a.step
                ));
            }
            if a.zombie {
                return Err(format!(
                    "invariant 6: {job}/chk-{id} (attempt {uid}, step {}) was committed by a writer that had already been superseded (a zombie)",
                    a.step
                ));
            }
            compare_shape(&c.meta, &a.slots)
                .map_err(|e| format!("invariant 1: {job}/chk-{id} (attempt {uid}): {e}"))?;
            for s in &c.meta.slots {
                let files = s
                    .shared
                    .iter()
                    .map(|f| (&f.object, f.size))
                    .chain(s.private.iter().map(|f| (&f.object, f.stored_size)));
                for (object, size) in files {
                    match view.objects.get(object.as_str()) {
                        Some(n) if *n == size => {}
                        Some(n) => {
                            return Err(format!(
                                "invariant 4: {job}/chk-{id} (attempt {uid}) references {object} of {size} bytes, storage holds {n} bytes"
                            ));
                        }
                        None => {
                            return Err(format!(
                                "invariant 4: {job}/chk-{id} (attempt {uid}) references {object}, which is missing"
                            ));
                        }
                    }
                }
            }
            let key = (job.clone(), *id);
            match self.seen.get_mut(&key) {
                Some(s) if s.uid == uid && !s.gone => {}
                Some(s) if !s.gone => {
                    return Err(format!(
                        "invariant 2: {job}/chk-{id} was committed by attempt {}, now storage holds attempt {uid}'s",
                        s.uid
                    ));
                }
                _ => {
                    self.seen.insert(
                        key,
                        Seen {
                            uid,
                            gone: false,
                            verified: false,
                        },
                    );
                    changes.new.push((job.clone(), *id, uid));
                }
            }
        }
        let vanished: Vec<(String, u64)> = self
            .seen
            .iter()
            .filter(|(k, s)| !s.gone && !view.committed.contains_key(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for (job, id) in vanished {
            if !self.deletable(&job, id) {
                let uid = self.seen[&(job.clone(), id)].uid;
                let step = self.attempts.get(&uid).map_or(0, |a| a.step);
                return Err(format!(
                    "invariant 2: {job}/chk-{id} (attempt {uid}, step {step}) was committed and is gone, but fewer than {} later checkpoints of its job (or of a job that claimed it) committed",
                    self.retained
                ));
            }
            if let Some(s) = self.seen.get_mut(&(job.clone(), id)) {
                s.gone = true;
            }
            changes.gone.push((job, id));
        }
        for uid in std::mem::take(&mut self.reported) {
            let Some(a) = self.attempts.get(&uid) else {
                continue;
            };
            let seen = self
                .seen
                .get(&(a.job.clone(), a.id))
                .is_some_and(|s| s.uid == uid);
            if !seen {
                return Err(format!(
                    "invariant 2: attempt {uid} ({}/chk-{}, step {}) was reported committed but storage does not hold it",
                    a.job, a.id, a.step
                ));
            }
        }
        Ok(changes)
    }

    /// Invariant 5: after a garbage collection with grace 0 and no checkpoint in flight, every
    /// object is a `_metadata`, a writer lease, or referenced by a committed checkpoint.
    pub fn check_no_orphans(view: &View) -> Result<(), String> {
        let refs = referenced(view);
        let orphans: Vec<&String> = view
            .objects
            .keys()
            .filter(|p| {
                !p.ends_with("/_metadata") && !p.contains("/_writers/") && !refs.contains(*p)
            })
            .collect();
        if orphans.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "invariant 5: after a garbage collection with grace 0 and nothing in flight, {} unreferenced objects remain: {:?}",
                orphans.len(),
                orphans.iter().take(8).collect::<Vec<_>>()
            ))
        }
    }

    /// Committed checkpoints (seen, not gone) not yet compared with the model, with the slot
    /// states they must restore.
    pub fn unverified(&self) -> Vec<(String, u64, Vec<SlotState>)> {
        self.seen
            .iter()
            .filter(|(_, s)| !s.gone && !s.verified)
            .filter_map(|((j, i), s)| {
                self.attempts
                    .get(&s.uid)
                    .map(|a| (j.clone(), *i, a.slots.clone()))
            })
            .collect()
    }
}
