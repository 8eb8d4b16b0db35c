//! Opening a slot: empty, or from restored files (the backend opens them; the slot adopts the
//! states they hold and installs the restored timers).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::Slot;
use crate::backend::rocks::{RocksDbOptionsHook, WriteBackFault};
use crate::backend::{BackendParams, RestoredFiles, StateDescriptor, StateId};
use crate::checkpoint::TIMERS_SNAPSHOT_FILE;
use crate::config::CairnConfig;
use crate::error::{EngineError, Result};
use crate::keygroup::{self, KeyGroup, KeyGroupRange};
use crate::operator_state::OperatorState;
use cairn_timers::{Clock, HeapTimers};

/// Opens a [`Slot`]: which slot of how many, and the live parts that are not configuration.
#[must_use]
pub struct SlotBuilder<'a> {
    config: &'a CairnConfig,
    index: u32,
    parallelism: u32,
    hook: Option<Arc<dyn RocksDbOptionsHook>>,
    working_dir: Option<PathBuf>,
    restore: Option<RestoredFiles>,
    operator_state: OperatorState,
    write_back_fault: Option<Arc<WriteBackFault>>,
    clock: Option<Arc<dyn Clock>>,
}

impl Slot {
    /// Starts opening a slot with `config`.
    pub fn builder(config: &CairnConfig) -> SlotBuilder<'_> {
        SlotBuilder {
            config,
            index: 0,
            parallelism: 1,
            hook: None,
            working_dir: None,
            restore: None,
            operator_state: OperatorState::new(),
            write_back_fault: None,
            clock: None,
        }
    }
}

impl<'a> SlotBuilder<'a> {
    /// Opens the slot from restored files instead of empty.
    pub fn restore(mut self, restore: RestoredFiles) -> Self {
        self.restore = Some(restore);
        self
    }

    /// Opens the slot with this operator state (restored with
    /// [`Checkpointer::operator_state_for_slot`](crate::checkpoint::Checkpointer::operator_state_for_slot)).
    pub fn operator_state(mut self, state: OperatorState) -> Self {
        self.operator_state = state;
        self
    }

    /// This slot's index among `parallelism` slots (default: slot 0 of 1).
    pub fn slot(mut self, index: u32, parallelism: u32) -> Self {
        self.index = index;
        self.parallelism = parallelism;
        self
    }

    /// A RocksDB options hook (runs after profile and knobs).
    pub fn options_hook(mut self, hook: Arc<dyn RocksDbOptionsHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Overrides the slot's working directory (default `<state.working-dir>/slot-<index>`).
    pub fn working_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    /// Test and torture only: fails the RocksDB backend's state-cache write-back commits that
    /// `fault` is armed for (ignored by the heap backend; see [`WriteBackFault`]).
    pub fn write_back_fault(mut self, fault: Arc<WriteBackFault>) -> Self {
        self.write_back_fault = Some(fault);
        self
    }

    /// The processing-time clock of state TTL: timestamps of TTL states and their expiry
    /// (default: the system clock). Tests pass a `ManualClock`.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Validates the configuration and opens the slot: its backend (empty or from the restored
    /// files), the restored states and timers.
    pub fn open(self) -> Result<Slot> {
        let config = self.config;
        config.validate()?;
        let max_parallelism = config.max_parallelism_for(self.parallelism)?;
        // A slot index beyond the slot count is a wrong call, not a wrong setting.
        if self.parallelism > 0 && self.index >= self.parallelism {
            return Err(EngineError::InvalidArgument(format!(
                "slot index {} is not below parallelism {}",
                self.index, self.parallelism
            )));
        }
        let range = KeyGroupRange::for_slot(max_parallelism, self.parallelism, self.index)?;
        let dir = self.working_dir.unwrap_or_else(|| {
            config
                .state
                .working_dir
                .join(format!("slot-{}", self.index))
        });
        // Read before the backend opens: RocksDB's restored files move into its directory.
        let restored_timers = read_restored_timers(self.restore.as_ref(), range)?;
        let canonical_chunks = match &self.restore {
            Some(RestoredFiles::Canonical { chunks, .. }) => Some(chunks.clone()),
            _ => None,
        };
        let opened = BackendParams {
            config,
            dir: &dir,
            range,
            max_parallelism,
            hook: self.hook,
            write_back_fault: self.write_back_fault,
        }
        .open(self.restore)?;
        let mut slot = Slot {
            timers: None,
            timer_kind: config.state.effective_timer_service(),
            timer_cache_size: config.state.timer_cache_size as usize,
            backend: opened.backend,
            rescale: opened.rescale,
            kind: config.state.backend,
            index: self.index,
            parallelism: self.parallelism,
            max_parallelism,
            range,
            prefix_bytes: keygroup::prefix_bytes(max_parallelism),
            states: Vec::new(),
            by_name: HashMap::new(),
            max_value_size: config.state.max_value_size.as_u64() as usize,
            working_dir: dir,
            key_buf: Vec::new(),
            ns_buf: Vec::new(),
            value_buf: Vec::new(),
            operator_state: self.operator_state,
            ttl: super::SlotTtl::new(self.clock),
        };
        slot.adopt_restored_states(opened.states)?;
        let restored_timers = match canonical_chunks {
            Some(chunks) => Some(crate::savepoint::load_chunks(&mut slot, &chunks)?),
            None => restored_timers,
        };
        slot.restore_timers(restored_timers)?;
        Ok(slot)
    }
}

/// The heap timers of a checkpoint: a `timers.snapshot` next to each heap snapshot file, or in
/// each old slot's RocksDB files (heap timers of a RocksDB slot, or the snapshot of its RocksDB
/// timers' write-back buffer), of this slot's key groups only. Each file is removed once read.
fn read_restored_timers(
    restore: Option<&RestoredFiles>,
    range: KeyGroupRange,
) -> Result<Option<HeapTimers>> {
    let files: Vec<PathBuf> = match restore {
        Some(RestoredFiles::Heap { files }) => files
            .iter()
            .map(|f| f.with_file_name(TIMERS_SNAPSHOT_FILE))
            .collect(),
        Some(RestoredFiles::RocksDb { files, merge, .. }) => std::iter::once(files)
            .chain(merge.iter().map(|m| &m.files))
            .map(|f| f.join(TIMERS_SNAPSHOT_FILE))
            .collect(),
        Some(RestoredFiles::Canonical { .. }) | None => Vec::new(),
    };
    let mut timers: Option<HeapTimers> = None;
    for f in files.iter().filter(|f| f.exists()) {
        timers
            .get_or_insert_with(|| HeapTimers::new(range.start as KeyGroup..=range.end as KeyGroup))
            .restore(f)?;
        std::fs::remove_file(f).map_err(|e| EngineError::Io {
            op: format!("remove restored {}", f.display()),
            source: e,
        })?;
    }
    Ok(timers)
}

impl Slot {
    /// Records the states a restore brought (created in the backend already, ids in order).
    /// Their names come from stored files: a duplicate or an empty name is refused.
    fn adopt_restored_states(&mut self, states: Vec<StateDescriptor>) -> Result<()> {
        for (id, desc) in states.into_iter().enumerate() {
            let full = desc.full_name();
            if desc.operator.is_empty() || desc.name.is_empty() {
                return Err(EngineError::Corrupt {
                    state: full,
                    reason: "a restored state has an empty operator or name".into(),
                });
            }
            if self.by_name.insert(full.clone(), id as StateId).is_some() {
                return Err(EngineError::Corrupt {
                    state: full,
                    reason: "the restored states name it twice".into(),
                });
            }
            self.states.push(desc);
        }
        Ok(())
    }
}
