//! The exactly-once file sink: rows of epochs `<= e` become visible only after checkpoint `e`
//! commits (a two-phase commit in Flink's sense).
//!
//! Layout under the sink directory:
//! - `staged/a<attempt>-w<worker>-e<epoch>.txt`: what worker `worker` of run `attempt` emitted
//!   at `epoch`, one row per line. Phase one ([`stage`]): written while the epoch's rows arrive,
//!   synced when the input frontier passes the epoch. At a checkpoint epoch, once every earlier
//!   file is synced, the worker's slot ack goes on to the committer with a
//!   [`Control::SinkStaged`]: the checkpoint can't commit before every worker's rows up to it
//!   are on disk.
//! - `committed/e<epoch>-a<attempt>-w<worker>.txt`: phase two ([`publish`]): when the committer
//!   broadcasts that checkpoint `e` committed, each worker renames its staged files of epochs
//!   `<= e` (a rename: atomic, and done once).
//! - A restarted run restores the latest committed checkpoint (epoch `R`) and first settles the
//!   files earlier runs left ([`recover`]): staged files of epochs `<= R` were covered by a
//!   committed checkpoint (the crash came between commit and rename) and are renamed; those of
//!   later epochs belong to checkpoints that never committed and are deleted, since the new run
//!   replays those epochs. Hence no row is lost or published twice, as long as a run restores
//!   the latest committed checkpoint (the supervisor's rule).
//!
//! Readers see only `committed/`. The files are local: a deployment over several machines puts
//! the sink directory on a shared file system (see the README).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use crate::error::{HostError, Result, io};
use crate::messages::{Committed, Control, Keyed};
use crate::plan::CheckpointPlan;
use crate::upload::UploadWorker;

/// The sink's directory.
#[derive(Clone, Debug)]
pub struct SinkDir {
    root: PathBuf,
}

impl SinkDir {
    /// The sink under `root` (its `staged/` and `committed/` are created).
    pub fn create(root: &Path) -> Result<Self> {
        for d in ["staged", "committed"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io(format!("create {}", p.display())))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Where committed files are.
    pub fn committed_dir(&self) -> PathBuf {
        self.root.join("committed")
    }

    fn staged_dir(&self) -> PathBuf {
        self.root.join("staged")
    }

    fn staged(&self, attempt: u32, worker: u32, epoch: u64) -> PathBuf {
        self.staged_dir()
            .join(format!("a{attempt}-w{worker}-e{epoch}.txt"))
    }

    fn committed(&self, attempt: u32, worker: u32, epoch: u64) -> PathBuf {
        self.committed_dir()
            .join(format!("e{epoch}-a{attempt}-w{worker}.txt"))
    }
}

/// A staged file name's parts: (attempt, worker, epoch).
fn parse_staged(name: &str) -> Option<(u32, u32, u64)> {
    let rest = name.strip_prefix('a')?.strip_suffix(".txt")?;
    let mut parts = rest.split('-');
    let attempt = parts.next()?.parse().ok()?;
    let worker = parts.next()?.strip_prefix('w')?.parse().ok()?;
    let epoch = parts.next()?.strip_prefix('e')?.parse().ok()?;
    parts.next().is_none().then_some((attempt, worker, epoch))
}

/// What [`recover`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Staged files of committed epochs, renamed.
    pub published: u32,
    /// Staged files of epochs no committed checkpoint covers, deleted.
    pub discarded: u32,
}

/// Settles the staged files of earlier runs before run `attempt` starts from a checkpoint of
/// epoch `restored_epoch` (`None`: from nothing). See the module doc. Run once per run, before
/// any worker stages.
pub fn recover(dir: &SinkDir, attempt: u32, restored_epoch: Option<u64>) -> Result<Recovered> {
    let mut done = Recovered::default();
    let staged = dir.staged_dir();
    let entries = std::fs::read_dir(&staged).map_err(io(format!("list {}", staged.display())))?;
    for entry in entries {
        let entry = entry.map_err(io(format!("list {}", staged.display())))?;
        let name = entry.file_name();
        let Some((a, w, e)) = name.to_str().and_then(parse_staged) else {
            continue;
        };
        if a >= attempt {
            return Err(HostError::InvalidArgument(format!(
                "sink {}: staged file {} of run {a}, but this is run {attempt} (run numbers must grow)",
                staged.display(),
                name.to_string_lossy()
            )));
        }
        if restored_epoch.is_some_and(|r| e <= r) {
            let to = dir.committed(a, w, e);
            std::fs::rename(entry.path(), &to).map_err(io(format!("publish {}", to.display())))?;
            done.published += 1;
        } else {
            std::fs::remove_file(entry.path())
                .map_err(io(format!("discard {}", entry.path().display())))?;
            done.discarded += 1;
        }
    }
    sync_dir(&dir.committed_dir())?;
    sync_dir(&staged)?;
    Ok(done)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("sync {}", dir.display())))
}

/// The staged files of one worker, shared by its stage and publish operators.
#[derive(Debug, Default)]
pub struct StagedFiles {
    /// Synced files by epoch, waiting for their checkpoint.
    synced: BTreeMap<u64, PathBuf>,
}

/// Phase one on one worker: writes the keyed operator's rows of each epoch to a staged file,
/// syncs it when the frontier passes the epoch, and forwards the slot's acks (with the sink's
/// own [`Control::SinkStaged`]) once everything up to their epoch is synced. `format` renders a
/// row as one line.
pub fn stage<'scope, O, F>(
    input: StreamVec<'scope, u64, Keyed<O>>,
    dir: SinkDir,
    attempt: u32,
    worker: u32,
    plan: CheckpointPlan,
    files: Rc<RefCell<StagedFiles>>,
    format: F,
) -> StreamVec<'scope, u64, Control>
where
    O: timely::ExchangeData,
    F: Fn(&O, &mut String) + 'static,
{
    input.unary_frontier(Pipeline, "CairnSinkStage", move |_cap, _info| {
        let mut open: BTreeMap<u64, BufWriter<File>> = BTreeMap::new();
        let mut held: BTreeMap<u64, (Capability<u64>, Vec<crate::messages::AckMsg>)> =
            BTreeMap::new();
        let mut line = String::new();
        move |(input, frontier), output| {
            input.for_each(|c, data| {
                let Some(&t) = c.least() else { return };
                for item in data.drain(..) {
                    match item {
                        Keyed::Row(row) => {
                            let w = match open.entry(t) {
                                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                                std::collections::btree_map::Entry::Vacant(v) => {
                                    let p = dir.staged(attempt, worker, t);
                                    let f = File::create(&p).unwrap_or_else(|e| {
                                        panic!("sink: create {}: {e}", p.display())
                                    });
                                    v.insert(BufWriter::new(f))
                                }
                            };
                            line.clear();
                            format(&row, &mut line);
                            line.push('\n');
                            if let Err(e) = w.write_all(line.as_bytes()) {
                                panic!("sink: write epoch {t}: {e}");
                            }
                        }
                        Keyed::Ack(a) => {
                            held.entry(t)
                                .or_insert_with(|| (c.delayed(&t, 0), Vec::new()))
                                .1
                                .push(a);
                        }
                    }
                }
                if plan.is_checkpoint(t) {
                    held.entry(t)
                        .or_insert_with(|| (c.delayed(&t, 0), Vec::new()));
                }
            });
            // Sync every file the frontier has passed (in epoch order), then forward.
            while let Some((&t, _)) = open.first_key_value() {
                if frontier.less_equal(&t) {
                    break;
                }
                if let Some((t, w)) = open.pop_first() {
                    let f = w
                        .into_inner()
                        .unwrap_or_else(|e| panic!("sink: flush epoch {t}: {e}"));
                    if let Err(e) = f.sync_all() {
                        panic!("sink: sync epoch {t}: {e}");
                    }
                    files
                        .borrow_mut()
                        .synced
                        .insert(t, dir.staged(attempt, worker, t));
                }
            }
            if !held.is_empty()
                && let Err(e) = sync_dir(&dir.staged_dir())
            {
                panic!("sink: {e}");
            }
            while let Some((&t, _)) = held.first_key_value() {
                if frontier.less_equal(&t) {
                    break;
                }
                if let Some((t, (c, acks))) = held.pop_first() {
                    let mut session = output.session(&c);
                    session.give_iterator(acks.into_iter().map(Control::SlotAck));
                    if plan.is_checkpoint(t) {
                        session.give(Control::SinkStaged { epoch: t, worker });
                    }
                }
            }
        }
    })
}

/// Phase two on one worker: on every [`Committed`] checkpoint, renames this worker's staged
/// files of epochs `<=` its epoch into `committed/`, and tells the slot's uploader (its files
/// become the next checkpoint's base). Its output carries no data; a probe on it says how far
/// the job has committed.
pub fn publish<'scope>(
    committed: StreamVec<'scope, u64, Committed>,
    dir: SinkDir,
    attempt: u32,
    worker: u32,
    files: Rc<RefCell<StagedFiles>>,
    uploads: Rc<UploadWorker>,
) -> StreamVec<'scope, u64, ()> {
    committed.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        "CairnSinkPublish",
        move |_cap, _info| {
            move |(input, _frontier), _output| {
                let mut latest: Option<Committed> = None;
                input.for_each(|_c, data| {
                    for c in data.drain(..) {
                        if latest.is_none_or(|l| c.epoch > l.epoch) {
                            latest = Some(c);
                        }
                        if let Err(e) = uploads.completed(c.id) {
                            panic!("sink: {e}");
                        }
                    }
                });
                let Some(c) = latest else { return };
                let mut files = files.borrow_mut();
                let later = files.synced.split_off(&(c.epoch + 1));
                let ready = std::mem::replace(&mut files.synced, later);
                for (t, from) in &ready {
                    let to = dir.committed(attempt, worker, *t);
                    if let Err(e) = std::fs::rename(from, &to) {
                        panic!("sink: publish {}: {e}", to.display());
                    }
                }
                if !ready.is_empty()
                    && let Err(e) = sync_dir(&dir.committed_dir())
                {
                    panic!("sink: {e}");
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recovery publishes what a committed checkpoint covers and deletes the rest.
    #[test]
    fn recover_publishes_covered_and_discards_the_rest() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(io("tempdir"))?;
        let dir = SinkDir::create(tmp.path())?;
        for (a, w, e) in [(1, 0, 3), (1, 1, 5), (2, 0, 6), (2, 1, 9)] {
            std::fs::write(dir.staged(a, w, e), "row\n").map_err(io("write"))?;
        }
        let r = recover(&dir, 3, Some(6))?;
        assert_eq!(
            r,
            Recovered {
                published: 3,
                discarded: 1
            }
        );
        let mut names: Vec<String> = std::fs::read_dir(dir.committed_dir())
            .map_err(io("list"))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        assert_eq!(names, ["e3-a1-w0.txt", "e5-a1-w1.txt", "e6-a2-w0.txt"]);
        assert!(recover(&dir, 2, Some(6)).is_ok(), "nothing staged any more");
        std::fs::write(dir.staged(4, 0, 1), "row\n").map_err(io("write"))?;
        assert!(
            recover(&dir, 4, None).is_err(),
            "a staged file of this run or a later one"
        );
        Ok(())
    }

    #[test]
    fn staged_names_parse() {
        assert_eq!(parse_staged("a12-w3-e456.txt"), Some((12, 3, 456)));
        assert_eq!(parse_staged("a1-w3.txt"), None);
        assert_eq!(parse_staged("a1-w3-e4-x.txt"), None);
    }
}
