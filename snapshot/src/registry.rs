//! The shared-file registry: reference counts of shared objects across the checkpoints that
//! use them.
//!
//! A checkpoint *acquires* every shared object it references when its file list is decided
//! (before uploading), so an object reused by an in-flight checkpoint can't be deleted by a
//! concurrent subsumption. Completing a checkpoint keeps the references; aborting it or
//! subsuming it releases them, and an object whose count falls to zero is returned for deletion
//! unless it is not owned by this job (a `no-claim` restore's files are never deleted).
//!
//! An object counts as *stored* (a new checkpoint may reference it without uploading it) only
//! while a completed checkpoint whose `_metadata` still exists references it. References of a
//! pending checkpoint, of one whose commit is in doubt, or of one being subsumed don't: the
//! upload behind them may never have happened, and no committed metadata protects the object
//! from garbage collection, which deletes unreferenced objects once they are older than its
//! grace period. Such an object is uploaded again, which also renews its age.
//!
//! The registry holds no state of its own on disk: on start it is rebuilt from the retained
//! checkpoints' metadata, so it can never disagree with what is committed.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Result, SnapshotError};
use crate::object_layout::CheckpointId;

#[derive(Clone, Debug)]
struct Entry {
    /// Checkpoints (any phase) referencing the object.
    refs: u32,
    /// Completed checkpoints referencing it: it is stored and committed metadata names it.
    committed: u32,
    size: u64,
    owned: bool,
}

/// Where a checkpoint is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Acquiring files, uploading: may still be aborted.
    Pending,
    /// Its `_metadata` was written: only subsumption (or an explicit user command) ends it.
    Completed,
    /// Its commit's outcome is unknown (the put failed and the read-back could not tell): its
    /// references are kept and nothing of it is deleted until the outcome is known.
    InDoubt,
    /// Being subsumed: its `_metadata` may already be deleted. Its references are kept until
    /// its files are deleted, but its objects no longer count as stored; retried by the next
    /// subsumption when it fails halfway.
    Subsuming,
}

#[derive(Clone, Debug)]
struct Checkpoint {
    objects: Vec<String>,
    phase: Phase,
}

/// What subsuming one checkpoint frees, in the order it must be deleted: the checkpoint's
/// metadata first (so a crash leaves at worst an orphan file, never a checkpoint that references
/// a deleted file), then its private files, then shared objects nobody references any more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    /// The checkpoint whose references were dropped.
    pub checkpoint: CheckpointId,
    /// Shared objects whose count fell to zero and that this job owns.
    pub delete: Vec<String>,
}

/// Refcounts of shared objects. See the module doc.
#[derive(Clone, Debug, Default)]
pub struct SharedRegistry {
    entries: HashMap<String, Entry>,
    checkpoints: BTreeMap<CheckpointId, Checkpoint>,
}

impl SharedRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A pending checkpoint `id` references `objects` (object ref, size); may be called once per
    /// slot of the checkpoint. Duplicates count once per checkpoint. `owned = false` marks
    /// objects this job must never delete. Returns, per input object, whether it is stored (see
    /// the module doc): then it need not be uploaded again. An object not stored is `false` at
    /// every occurrence, also when this checkpoint acquired it before.
    pub fn acquire(
        &mut self,
        id: CheckpointId,
        objects: impl IntoIterator<Item = (String, u64)>,
        owned: bool,
    ) -> Result<Vec<bool>> {
        let ckpt = self.checkpoints.entry(id).or_insert(Checkpoint {
            objects: Vec::new(),
            phase: Phase::Pending,
        });
        if ckpt.phase != Phase::Pending {
            return Err(SnapshotError::Invariant(format!(
                "checkpoint {id} is completed; it can't acquire more files"
            )));
        }
        let mut present = Vec::new();
        for (obj, size) in objects {
            let e = self.entries.entry(obj.clone()).or_insert(Entry {
                refs: 0,
                committed: 0,
                size,
                owned,
            });
            present.push(e.committed > 0);
            if ckpt.objects.contains(&obj) {
                continue;
            }
            e.refs += 1;
            ckpt.objects.push(obj);
        }
        Ok(present)
    }

    /// Rebuilds the entry of a committed checkpoint found in storage (start-up, or a `claim`
    /// restore with `owned = true`).
    pub fn register_completed(
        &mut self,
        id: CheckpointId,
        objects: impl IntoIterator<Item = (String, u64)>,
        owned: bool,
    ) -> Result<()> {
        if self.checkpoints.contains_key(&id) {
            return Err(SnapshotError::Invariant(format!(
                "checkpoint {id} is registered twice"
            )));
        }
        self.acquire(id, objects, owned)?;
        self.complete(id)
    }

    /// Marks a pending (or in-doubt) checkpoint completed (its metadata was written).
    pub fn complete(&mut self, id: CheckpointId) -> Result<()> {
        match self.checkpoints.get_mut(&id) {
            Some(c) if c.phase == Phase::Completed => Ok(()),
            Some(c) if c.phase == Phase::Subsuming => Err(SnapshotError::Invariant(format!(
                "checkpoint {id} is being subsumed; it can't complete again"
            ))),
            Some(c) => {
                c.phase = Phase::Completed;
                for obj in &c.objects {
                    if let Some(e) = self.entries.get_mut(obj) {
                        e.committed += 1;
                    }
                }
                Ok(())
            }
            None => Err(SnapshotError::Invariant(format!(
                "checkpoint {id} completed without acquiring its files"
            ))),
        }
    }

    /// The phase of checkpoint `id`, `None` when it is not tracked.
    pub fn phase(&self, id: CheckpointId) -> Option<Phase> {
        self.checkpoints.get(&id).map(|c| c.phase)
    }

    /// Marks a pending checkpoint's commit as in doubt (see [`Phase::InDoubt`]).
    pub fn mark_in_doubt(&mut self, id: CheckpointId) {
        if let Some(c) = self.checkpoints.get_mut(&id)
            && c.phase == Phase::Pending
        {
            c.phase = Phase::InDoubt;
        }
    }

    /// Checkpoints whose commit is in doubt.
    pub fn in_doubt(&self) -> Vec<CheckpointId> {
        self.checkpoints
            .iter()
            .filter(|(_, c)| c.phase == Phase::InDoubt)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Aborts checkpoint `id`: releases its references only while it is pending (or in doubt
    /// and known not committed: `not_committed`). A completed checkpoint is never released
    /// here, whatever the caller thinks happened: `None`.
    pub fn abort(&mut self, id: CheckpointId, not_committed: bool) -> Option<Released> {
        match self.phase(id)? {
            Phase::Pending => Some(self.release(id)),
            Phase::InDoubt if not_committed => Some(self.release(id)),
            Phase::InDoubt | Phase::Completed | Phase::Subsuming => None,
        }
    }

    /// Starts subsuming completed checkpoint `id` (before its `_metadata` is deleted): its
    /// objects stop counting as stored. Idempotent; `false` when `id` is not completed or
    /// already being subsumed.
    pub fn begin_subsume(&mut self, id: CheckpointId) -> bool {
        let Some(c) = self.checkpoints.get_mut(&id) else {
            return false;
        };
        match c.phase {
            Phase::Completed => {
                c.phase = Phase::Subsuming;
                for obj in &c.objects {
                    if let Some(e) = self.entries.get_mut(obj) {
                        e.committed -= 1;
                    }
                }
                true
            }
            Phase::Subsuming => true,
            Phase::Pending | Phase::InDoubt => false,
        }
    }

    /// Drops a checkpoint's references; returns owned objects whose count fell to zero (to
    /// delete). Unknown ids release nothing.
    pub fn release(&mut self, id: CheckpointId) -> Released {
        let mut delete = Vec::new();
        if let Some(c) = self.checkpoints.remove(&id) {
            for obj in c.objects {
                if let Some(e) = self.entries.get_mut(&obj) {
                    e.refs -= 1;
                    if c.phase == Phase::Completed {
                        e.committed -= 1;
                    }
                    if e.refs == 0 {
                        let owned = e.owned;
                        self.entries.remove(&obj);
                        if owned {
                            delete.push(obj);
                        }
                    }
                }
            }
        }
        // A deterministic order: the same state deletes in the same order every run.
        delete.sort_unstable();
        Released {
            checkpoint: id,
            delete,
        }
    }

    /// The checkpoints to subsume, oldest first: those a subsumption left halfway, then
    /// completed checkpoints beyond the newest `retained`.
    pub fn subsumable(&self, retained: usize) -> Vec<CheckpointId> {
        let mut out: Vec<CheckpointId> = self
            .checkpoints
            .iter()
            .filter(|(_, c)| c.phase == Phase::Subsuming)
            .map(|(id, _)| *id)
            .collect();
        let completed = self.completed();
        let excess = completed.len().saturating_sub(retained.max(1));
        out.extend_from_slice(&completed[..excess]);
        out
    }

    /// Every completed checkpoint and every subsumption left halfway, oldest first: what
    /// discarding a job's checkpoints (a cancel without retention) deletes.
    pub fn discardable(&self) -> Vec<CheckpointId> {
        self.checkpoints
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Subsuming | Phase::Completed))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Completed checkpoints, ascending.
    pub fn completed(&self) -> Vec<CheckpointId> {
        self.checkpoints
            .iter()
            .filter(|(_, c)| c.phase == Phase::Completed)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Checkpoints that acquired files but are not completed (in flight, or in doubt).
    pub fn pending(&self) -> Vec<CheckpointId> {
        self.checkpoints
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Pending | Phase::InDoubt))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The reference count of an object (0 when unknown).
    pub fn refs(&self, object: &str) -> u32 {
        self.entries.get(object).map_or(0, |e| e.refs)
    }

    /// Whether any tracked checkpoint (pending, in doubt, completed, being subsumed)
    /// references `object`.
    pub fn is_referenced(&self, object: &str) -> bool {
        self.refs(object) > 0
    }

    /// Whether a checkpoint other than `id` references `object`.
    pub fn is_referenced_elsewhere(&self, id: CheckpointId, object: &str) -> bool {
        let mine = self
            .checkpoints
            .get(&id)
            .is_some_and(|c| c.objects.iter().any(|o| o == object));
        self.refs(object) > u32::from(mine)
    }

    /// Whether `object` is stored: a completed checkpoint references it (see the module doc).
    pub fn is_stored(&self, object: &str) -> bool {
        self.entries.get(object).is_some_and(|e| e.committed > 0)
    }

    /// Number of registered objects and their total bytes.
    pub fn totals(&self) -> (usize, u64) {
        (
            self.entries.len(),
            self.entries.values().map(|e| e.size).sum(),
        )
    }

    /// The check run before every commit: every object referenced by checkpoint `id` (and by
    /// every other tracked checkpoint) is registered, and each count equals the number of
    /// checkpoints referencing the object.
    pub fn check_invariants(&self, id: CheckpointId) -> Result<()> {
        let Some(c) = self.checkpoints.get(&id) else {
            return Err(SnapshotError::Invariant(format!(
                "checkpoint {id} is not tracked by the registry"
            )));
        };
        for obj in &c.objects {
            if self.refs(obj) == 0 {
                return Err(SnapshotError::Invariant(format!(
                    "checkpoint {id} references {obj}, which has no registered reference"
                )));
            }
        }
        let mut counts: HashMap<&str, (u32, u32)> = HashMap::new();
        for c in self.checkpoints.values() {
            for o in &c.objects {
                let n = counts.entry(o.as_str()).or_default();
                n.0 += 1;
                n.1 += u32::from(c.phase == Phase::Completed);
            }
        }
        for (obj, e) in &self.entries {
            let (n, committed) = counts.get(obj.as_str()).copied().unwrap_or((0, 0));
            if n != e.refs || committed != e.committed {
                return Err(SnapshotError::Invariant(format!(
                    "{obj} has refcount {} ({} completed) but {n} checkpoints ({committed} \
                     completed) reference it",
                    e.refs, e.committed
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashSet};

    fn objs(names: &[&str]) -> Vec<(String, u64)> {
        names.iter().map(|n| (n.to_string(), 1)).collect()
    }

    #[test]
    fn shared_file_survives_until_last_reference() {
        let mut r = SharedRegistry::new();
        r.acquire(1, objs(&["a", "b"]), true).unwrap();
        r.complete(1).unwrap();
        r.acquire(2, objs(&["b", "c"]), true).unwrap();
        r.complete(2).unwrap();
        r.check_invariants(2).unwrap();
        assert_eq!(r.subsumable(1), vec![1]);
        assert_eq!(r.release(1).delete, vec!["a".to_string()]);
        assert_eq!(r.refs("b"), 1);
        assert_eq!(r.release(2).delete, vec!["b".to_string(), "c".to_string()]);
    }

    #[test]
    fn aborted_checkpoint_releases_its_uploads_only() {
        let mut r = SharedRegistry::new();
        r.register_completed(1, objs(&["a"]), true).unwrap();
        r.acquire(2, objs(&["a", "new"]), true).unwrap();
        assert_eq!(r.release(2).delete, vec!["new".to_string()]);
        assert!(r.is_referenced("a"));
    }

    #[test]
    fn unowned_files_are_never_deleted() {
        let mut r = SharedRegistry::new();
        r.register_completed(1, objs(&["theirs"]), false).unwrap();
        assert!(r.release(1).delete.is_empty());
    }

    #[test]
    fn acquire_reports_stored_objects_and_refuses_completed() {
        let mut r = SharedRegistry::new();
        // Not stored at either occurrence: the caller uploads it (once).
        assert_eq!(
            r.acquire(1, objs(&["a", "a"]), true).unwrap(),
            vec![false, false]
        );
        assert_eq!(r.refs("a"), 1);
        assert_eq!(r.acquire(1, objs(&["b"]), true).unwrap(), vec![false]);
        r.complete(1).unwrap();
        assert!(r.acquire(1, objs(&["c"]), true).is_err());
        assert_eq!(
            r.acquire(2, objs(&["a", "c"]), true).unwrap(),
            vec![true, false]
        );
        assert!(r.register_completed(1, objs(&["a"]), true).is_err());
        assert!(r.complete(9).is_err());
    }

    #[test]
    fn only_objects_of_completed_checkpoints_count_as_stored() {
        let mut r = SharedRegistry::new();
        // Pending and in doubt: the upload may not have happened, no metadata protects it.
        r.acquire(1, objs(&["a"]), true).unwrap();
        assert_eq!(r.acquire(2, objs(&["a"]), true).unwrap(), vec![false]);
        r.mark_in_doubt(1);
        assert_eq!(r.acquire(2, objs(&["a"]), true).unwrap(), vec![false]);
        assert!(!r.is_stored("a"));
        // Its commit turned out to have landed.
        r.complete(1).unwrap();
        assert_eq!(r.acquire(3, objs(&["a"]), true).unwrap(), vec![true]);
        r.check_invariants(3).unwrap();
        // Being subsumed (its `_metadata` may be gone): no longer stored, still referenced.
        assert!(r.begin_subsume(1));
        assert!(!r.is_stored("a"));
        assert!(r.is_referenced("a"));
        assert_eq!(r.acquire(4, objs(&["a"]), true).unwrap(), vec![false]);
        assert!(r.completed().is_empty());
        assert_eq!(r.subsumable(1), vec![1], "a halfway subsumption is retried");
        r.check_invariants(4).unwrap();
        assert!(
            r.release(1).delete.is_empty(),
            "2, 3 and 4 still reference it"
        );
        assert!(r.abort(4, false).is_some());
        assert!(r.abort(3, false).is_some());
        assert_eq!(r.release(2).delete, vec!["a".to_string()]);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Start(Vec<u8>),
        Complete,
        Abort,
        Restart,
        /// A new job restores the current job's latest retained checkpoint (`true` = claim).
        Restore(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop::collection::vec(0u8..12, 0..6).prop_map(Op::Start),
            4 => Just(Op::Complete),
            1 => Just(Op::Abort),
            1 => Just(Op::Restart),
            1 => any::<bool>().prop_map(Op::Restore),
        ]
    }

    /// One job of the model: its registry (as the store keeps it), what its committed metadata
    /// references, and the job it restored from.
    struct Job {
        name: String,
        reg: SharedRegistry,
        /// Committed checkpoints in storage (`_metadata` present) -> objects.
        committed: BTreeMap<CheckpointId, Vec<String>>,
        /// Claimed checkpoint (of another job) this job's registry tracks.
        claimed: Option<(usize, CheckpointId)>,
        /// Objects of a no-claim restore, copied into this job by its first checkpoint.
        foreign: HashSet<String>,
        /// Objects of a claimed checkpoint, referenced where they are by the first checkpoint.
        reuse: Vec<String>,
        pending: Option<(CheckpointId, Vec<String>)>,
        next_id: CheckpointId,
    }

    impl Job {
        fn new(n: usize, next_id: CheckpointId) -> Self {
            Self {
                name: format!("j{n}"),
                reg: SharedRegistry::new(),
                committed: BTreeMap::new(),
                claimed: None,
                foreign: HashSet::new(),
                reuse: Vec::new(),
                pending: None,
                next_id,
            }
        }
    }

    /// Every object any committed metadata of any job references: what a store may never
    /// delete (the store checks this set before deleting another job's object).
    fn root_refs(jobs: &[Job]) -> HashSet<String> {
        jobs.iter()
            .flat_map(|j| j.committed.values().flatten().cloned())
            .collect()
    }

    /// Deletes what a release returned as a store does: its own objects, and another job's
    /// objects only when no committed metadata of any job references them.
    fn delete(
        jobs: &[Job],
        me: usize,
        released: Vec<String>,
        live: &mut HashSet<String>,
    ) -> std::result::Result<(), TestCaseError> {
        let refs = root_refs(jobs);
        for d in released {
            let own = d.starts_with(&format!("{}/", jobs[me].name));
            if !own && refs.contains(&d) {
                continue;
            }
            prop_assert!(live.remove(&d), "deleted {} twice", d);
        }
        Ok(())
    }

    proptest! {
        // Seeded (42) so runs are reproducible; PROPTEST_RNG_SEED=<n> explores other seeds.
        #![proptest_config(ProptestConfig {
            cases: 1000,
            rng_seed: match ProptestConfig::default().rng_seed {
                proptest::test_runner::RngSeed::Random => proptest::test_runner::RngSeed::Fixed(42),
                fixed => fixed,
            },
            ..ProptestConfig::default()
        })]
        /// Random checkpoint / complete / abort / subsume / restart sequences, and restores into
        /// new jobs in claim and no-claim mode: an object is deleted iff nothing references it,
        /// is never deleted twice, and every committed checkpoint of every job still restores
        /// (all its objects exist).
        #[test]
        fn object_deleted_iff_unreferenced(ops in prop::collection::vec(op(), 1..80), retained in 1usize..4) {
            let mut live: HashSet<String> = HashSet::new(); // objects in "storage"
            let mut jobs = vec![Job::new(0, 1)];
            let mut cur = 0;
            for op in ops {
                match op {
                    Op::Start(files) if jobs[cur].pending.is_none() => {
                        let j = &mut jobs[cur];
                        let id = j.next_id;
                        j.next_id += 1;
                        // A file restored without claim is copied into this job (own name).
                        let mut names: Vec<String> = files.iter().map(|f| format!("{}/o{f}", j.name)).collect();
                        names.extend(j.foreign.iter().map(|f| format!("{}/copy-{}", j.name, f.replace('/', "-"))));
                        names.extend(j.reuse.iter().cloned());
                        let stored = j.reg.acquire(id, names.iter().map(|n| (n.clone(), 1)), true).unwrap();
                        // An object reported stored is not uploaded: it must exist, and
                        // committed metadata must protect it from garbage collection.
                        let protected = root_refs(&jobs);
                        for (n, s) in names.iter().zip(stored) {
                            if s {
                                prop_assert!(live.contains(n) && protected.contains(n), "{} reported stored but unprotected", n);
                            } else {
                                live.insert(n.clone());
                            }
                        }
                        let j = &mut jobs[cur];
                        j.pending = Some((id, names));
                    }
                    Op::Complete => if let Some((id, names)) = jobs[cur].pending.take() {
                        jobs[cur].reg.check_invariants(id).unwrap();
                        jobs[cur].reg.complete(id).unwrap();
                        jobs[cur].committed.insert(id, names);
                        jobs[cur].foreign.clear();
                        jobs[cur].reuse.clear();
                        for old in jobs[cur].reg.subsumable(retained) {
                            // Subsumption deletes the metadata first (the claimed one in its
                            // own job), then the objects.
                            match jobs[cur].claimed {
                                Some((src, cid)) if cid == old => {
                                    jobs[src].committed.remove(&cid);
                                    jobs[cur].claimed = None;
                                }
                                _ => { jobs[cur].committed.remove(&old); }
                            }
                            prop_assert!(jobs[cur].reg.begin_subsume(old));
                            let released = jobs[cur].reg.release(old).delete;
                            delete(&jobs, cur, released, &mut live)?;
                        }
                    },
                    Op::Abort => if let Some((id, _)) = jobs[cur].pending.take() {
                        let released = jobs[cur].reg.abort(id, false).unwrap().delete;
                        delete(&jobs, cur, released, &mut live)?;
                    },
                    Op::Restart => {
                        // Rebuild from the committed metadata (and the claimed checkpoint); a
                        // pending checkpoint's uploads become orphans for GC.
                        let j = &mut jobs[cur];
                        j.pending = None;
                        j.reg = SharedRegistry::new();
                        for (id, names) in &j.committed {
                            j.reg.register_completed(*id, names.iter().map(|n| (n.clone(), 1)), true).unwrap();
                        }
                        if let Some((src, cid)) = j.claimed {
                            let names = jobs[src].committed[&cid].clone();
                            jobs[cur].reg.register_completed(cid, names.into_iter().map(|n| (n, 1)), true).unwrap();
                        }
                        let referenced: HashSet<String> = root_refs(&jobs);
                        live.retain(|o| referenced.contains(o)); // orphan GC over the root
                    }
                    Op::Restore(claim) => {
                        let Some((&id, names)) = jobs[cur].committed.last_key_value() else { continue };
                        let names = names.clone();
                        // The old job is stopped (a crash): its pending upload is an orphan.
                        jobs[cur].pending = None;
                        let n = jobs.len();
                        let mut j = Job::new(n, id + 1);
                        if claim {
                            j.reg.register_completed(id, names.iter().map(|o| (o.clone(), 1)), true).unwrap();
                            j.claimed = Some((cur, id));
                            j.reuse = names;
                        } else {
                            j.foreign = names.into_iter().collect();
                        }
                        jobs.push(j);
                        cur = n;
                        let referenced: HashSet<String> = root_refs(&jobs);
                        live.retain(|o| referenced.contains(o)); // orphan GC over the root
                    }
                    _ => {}
                }
                // Every committed checkpoint of every job restores; nothing leaks.
                let mut referenced: BTreeSet<String> = root_refs(&jobs).into_iter().collect();
                for o in &referenced {
                    prop_assert!(live.contains(o), "{} referenced but deleted", o);
                }
                for j in &jobs {
                    if let Some((_, names)) = &j.pending { referenced.extend(names.iter().cloned()); }
                }
                for o in &referenced {
                    let held = jobs.iter().any(|j| j.reg.is_referenced(o))
                        || root_refs(&jobs).contains(o);
                    prop_assert!(held, "{} is referenced but no registry or metadata holds it", o);
                }
                for o in &live {
                    prop_assert!(referenced.contains(o), "{} leaked", o);
                }
            }
        }
    }
}
