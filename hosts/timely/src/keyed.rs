//! The keyed operator: user logic with Cairn keyed state and timers, one slot per worker,
//! checkpointed at epoch boundaries.
//!
//! - **Routing.** Records are exchanged by key group to the worker whose slot owns it: key group
//!   `key_group_of(key)` belongs to worker [`cairn::slot_for_key`] of `peers` (Flink's contiguous
//!   ranges), so a worker only ever sees keys its slot owns.
//! - **Epoch order.** Records are staged per epoch as they arrive; when the input frontier passes
//!   epoch `t`, the operator applies `t`'s records to state, fires the event-time timers due at
//!   `t` (timestamps are epochs), and, if `t` is a checkpoint epoch, takes the slot's snapshot.
//!   Records of later epochs wait in the stage: none is absorbed before the snapshot of an
//!   earlier epoch, so checkpoint `t` holds exactly the effect of epochs `<= t`.
//! - **Asynchronous upload.** The snapshot goes to the worker's [`UploadWorker`]; the operator
//!   goes on with later epochs and holds a capability at `t` until the upload's [`cairn::SlotAck`]
//!   is back, then sends it downstream ([`Keyed::Ack`]) towards the committer.
//! - **Failure is fail-stop.** A state or upload error panics the worker: the process exits, the
//!   supervisor stops the other processes and restarts the job from its latest checkpoint.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use cairn::{ScopeKey, Slot, TimeDomain, Timer};
use serde::Serialize;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use crate::messages::{AckMsg, Keyed};
use crate::plan::CheckpointPlan;
use crate::source::{SourcePositions, store_positions};
use crate::upload::UploadWorker;

/// What user code of a keyed operator implements. Every record it gets is of a key its slot
/// owns; it selects the key's state with [`Slot::scope`]. `out` collects the rows emitted at the
/// epoch being processed.
pub trait KeyedLogic: 'static {
    /// The input record.
    type In: timely::ExchangeData;
    /// The output row.
    type Out: timely::ExchangeData;

    /// Applies one record of epoch `epoch`.
    fn on_record(
        &mut self,
        slot: &mut Slot,
        epoch: u64,
        record: Self::In,
        out: &mut Vec<Self::Out>,
    ) -> cairn::engine::Result<()>;

    /// An event-time timer fired (its key and namespace are in `scope`).
    fn on_timer(
        &mut self,
        slot: &mut Slot,
        scope: &ScopeKey,
        timer: &Timer,
        out: &mut Vec<Self::Out>,
    ) -> cairn::engine::Result<()>;
}

/// What the keyed operator needs of its worker.
pub struct KeyedWorker {
    /// The worker's slot (slot index = worker index).
    pub slot: Slot,
    /// Its upload thread.
    pub uploads: Rc<UploadWorker>,
    /// The source's positions per epoch (stored in the snapshot's operator state).
    pub positions: Rc<RefCell<SourcePositions>>,
    /// The run's checkpoint plan.
    pub plan: CheckpointPlan,
}

/// Builds a keyed operator: `key` extracts a record's key (routing and state scope), `logic`
/// is the user code. See the module doc.
pub struct KeyedOperatorBuilder<K, F> {
    name: String,
    key: F,
    _key: std::marker::PhantomData<fn() -> K>,
}

impl<K, F> KeyedOperatorBuilder<K, F>
where
    K: Serialize + 'static,
{
    /// A keyed operator named `name` keyed by `key`.
    pub fn new(name: &str, key: F) -> Self {
        Self {
            name: name.to_string(),
            key,
            _key: std::marker::PhantomData,
        }
    }

    /// Attaches the operator to `input` with `logic` running on `worker`'s slot.
    pub fn build<'scope, L>(
        self,
        input: StreamVec<'scope, u64, L::In>,
        worker: KeyedWorker,
        mut logic: L,
    ) -> StreamVec<'scope, u64, Keyed<L::Out>>
    where
        L: KeyedLogic,
        F: Fn(&L::In) -> K + 'static,
    {
        let KeyedWorker {
            mut slot,
            uploads,
            positions,
            plan,
        } = worker;
        let (max_p, peers) = (slot.max_parallelism(), slot.index().1);
        let key = self.key;
        // An unserializable key can't be routed; it goes to worker 0, whose slot then refuses
        // it (the key group is not its own) and the job fails with Cairn's error.
        let route =
            move |r: &L::In| cairn::slot_for_key(&key(r), max_p, peers).map_or(0, u64::from);
        let scope = input.scope();
        input.unary_frontier(Exchange::new(route), &self.name, move |cap, info| {
            let activator = scope.activator_for(info.address.clone());
            let mut next = plan.start_epoch();
            let mut cap: Option<Capability<u64>> = plan.has_work().then(|| cap.delayed(&next));
            let mut staged: BTreeMap<u64, Vec<L::In>> = BTreeMap::new();
            let mut pending: HashMap<u64, Capability<u64>> = HashMap::new();
            let mut rows = Vec::new();
            move |(input, frontier), output| {
                input.for_each(|c, data| {
                    if let Some(t) = c.least() {
                        staged.entry(*t).or_default().append(data);
                    }
                });
                while let Some(c) = cap.as_mut() {
                    if frontier.less_equal(&next) {
                        break;
                    }
                    let t = next;
                    for r in staged.remove(&t).unwrap_or_default() {
                        if let Err(e) = logic.on_record(&mut slot, t, r, &mut rows) {
                            panic!("keyed operator, epoch {t}: {e}");
                        }
                    }
                    let fired =
                        slot.fire_timers(TimeDomain::EventTime, t as i64, |s, scope, timer| {
                            logic.on_timer(s, scope, timer, &mut rows)
                        });
                    if let Err(e) = fired {
                        panic!("keyed operator, timers of epoch {t}: {e}");
                    }
                    if !rows.is_empty() {
                        output
                            .session(&*c)
                            .give_iterator(rows.drain(..).map(Keyed::Row));
                    }
                    if let Some(id) = plan.id_for(t) {
                        let at = positions.borrow_mut().take(t).unwrap_or_default();
                        let snapshot = store_positions(slot.operator_state_mut(), &at)
                            .map_err(|e| e.to_string())
                            .and_then(|()| {
                                slot.snapshot_for_checkpoint(id).map_err(|e| e.to_string())
                            });
                        match snapshot.map(|s| uploads.upload(t, s)) {
                            Ok(Ok(())) => {
                                pending.insert(t, c.clone());
                            }
                            Ok(Err(e)) => panic!("checkpoint epoch {t}: {e}"),
                            Err(e) => panic!("snapshot of checkpoint epoch {t}: {e}"),
                        }
                    }
                    next += 1;
                    if next > plan.last_epoch() {
                        cap = None;
                    } else {
                        c.downgrade(&next);
                    }
                }
                match uploads.finished() {
                    Ok(done) => {
                        for (epoch, ack) in done {
                            let ack = ack.unwrap_or_else(|e| {
                                panic!("upload of checkpoint epoch {epoch}: {e}")
                            });
                            let Some(c) = pending.remove(&epoch) else {
                                panic!("an upload of epoch {epoch} this operator never started");
                            };
                            let ack_json = serde_json::to_string(&ack).unwrap_or_else(|e| {
                                panic!("encoding the ack of epoch {epoch}: {e}")
                            });
                            output.session(&c).give(Keyed::Ack(AckMsg {
                                epoch,
                                slot: ack.handle.slot,
                                ack_json,
                            }));
                        }
                    }
                    Err(e) => panic!("{e}"),
                }
                if !pending.is_empty() {
                    activator.activate_after(Duration::from_millis(2));
                }
            }
        })
    }
}
