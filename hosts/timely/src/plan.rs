//! Which epochs are checkpoints, and which checkpoint id each one gets.
//!
//! Timestamps are epochs (`u64`). Every `every`-th epoch is a checkpoint (epochs `e` with
//! `(e + 1) % every == 0`), and so is the job's last epoch, so that a job that ends (or stops
//! to be restarted with another shape) ends on a committed checkpoint.
//!
//! Checkpoint ids come from the committer's [`cairn::CheckpointCoordinator`], which hands them
//! out in order (ids continue after a restored checkpoint's). The workers snapshot before the
//! committer triggers, so every worker derives the id from the plan: the `n`-th checkpoint epoch
//! of this run gets `first_id + n`. The committer triggers its checkpoints in epoch order and
//! checks that each id it gets is the plan's (else the job fails over: a snapshot under the
//! wrong id would be refused by the coordinator anyway).

use crate::error::{HostError, Result};

/// The checkpoint schedule of one run of a job. See the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointPlan {
    every: u64,
    start_epoch: u64,
    last_epoch: u64,
    first_id: u64,
}

impl CheckpointPlan {
    /// A run that processes epochs `start_epoch..=last_epoch` and checkpoints every `every`-th
    /// epoch (and the last); its first checkpoint gets id `first_id` (1 for a new job, the
    /// restored id + 1 after a restore).
    pub fn new(every: u64, start_epoch: u64, last_epoch: u64, first_id: u64) -> Result<Self> {
        // Zero would make every id collide (and divide by zero).
        if every == 0 {
            return Err(HostError::InvalidArgument(
                "checkpoint-every: must be at least 1 epoch".into(),
            ));
        }
        if first_id == 0 {
            return Err(HostError::InvalidArgument(
                "first checkpoint id: Cairn's ids start at 1".into(),
            ));
        }
        Ok(Self {
            every,
            start_epoch,
            last_epoch,
            first_id,
        })
    }

    /// The first epoch this run processes.
    pub fn start_epoch(&self) -> u64 {
        self.start_epoch
    }

    /// The last epoch this run processes.
    pub fn last_epoch(&self) -> u64 {
        self.last_epoch
    }

    /// Whether this run has any epoch to process (a restore of the job's final checkpoint has
    /// none).
    pub fn has_work(&self) -> bool {
        self.start_epoch <= self.last_epoch
    }

    /// Whether epoch `e` of this run is a checkpoint.
    pub fn is_checkpoint(&self, e: u64) -> bool {
        e >= self.start_epoch
            && e <= self.last_epoch
            && ((e + 1).is_multiple_of(self.every) || e == self.last_epoch)
    }

    /// The checkpoint id of checkpoint epoch `e` (`None` if `e` is not one).
    pub fn id_for(&self, e: u64) -> Option<u64> {
        if !self.is_checkpoint(e) {
            return None;
        }
        // Checkpoint epochs before e in this run: the multiples (e' + 1) % every == 0 with
        // start <= e' < e, i.e. the multiples of `every` in (start, e].
        let before = e / self.every - self.start_epoch / self.every;
        Some(self.first_id + before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every checkpoint epoch gets the next id, in order, with the last epoch included.
    #[test]
    fn ids_are_consecutive_in_epoch_order() -> Result<()> {
        for (every, start, last, first) in
            [(3, 0, 20, 1), (4, 5, 30, 9), (1, 2, 9, 3), (5, 7, 7, 2)]
        {
            let plan = CheckpointPlan::new(every, start, last, first)?;
            let ids: Vec<u64> = (0..=last + 3).filter_map(|e| plan.id_for(e)).collect();
            let expected: Vec<u64> = (first..first + ids.len() as u64).collect();
            assert_eq!(ids, expected, "every {every} start {start} last {last}");
            assert!(plan.is_checkpoint(last));
            assert!(!plan.is_checkpoint(last + 1));
        }
        let plan = CheckpointPlan::new(4, 0, 11, 1)?;
        let epochs: Vec<u64> = (0..=11).filter(|e| plan.is_checkpoint(*e)).collect();
        assert_eq!(epochs, vec![3, 7, 11]);
        assert!(CheckpointPlan::new(0, 0, 1, 1).is_err());
        Ok(())
    }
}
