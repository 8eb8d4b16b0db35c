//! The slot's asynchronous checkpoint phase, off the timely worker's thread.
//!
//! The keyed operator takes the synchronous snapshot at the epoch boundary (a few ms) and hands
//! it here; a thread of its own runs [`SlotUploader::upload`] (the slot's files to storage) and
//! passes the [`SlotAck`] back, which the operator forwards to the committer. The worker keeps
//! processing later epochs meanwhile.
//!
//! One upload at a time, and each waits for the previous checkpoint's commit: an upload
//! references the files of the slot's last *confirmed* checkpoint
//! ([`SlotUploader::checkpoint_completed`]), and the committer may have subsumed (deleted) an
//! older one by then, which the coordinator rightly refuses. So the thread queues a snapshot
//! until the checkpoint uploaded before it is confirmed (Flink's one checkpoint in flight).

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::thread::JoinHandle;

use cairn::{SlotAck, SlotUploader, SyncSnapshot};

use crate::error::{HostError, Result};

enum Command {
    Upload {
        epoch: u64,
        snapshot: Box<SyncSnapshot>,
    },
    Completed {
        id: u64,
    },
}

/// An upload that finished: its epoch and the ack (or the error, which fails the job over).
pub type UploadResult = (u64, Result<SlotAck, String>);

/// The upload thread of one slot. See the module doc.
pub struct UploadWorker {
    commands: Option<Sender<Command>>,
    results: Receiver<UploadResult>,
    thread: Option<JoinHandle<()>>,
}

impl UploadWorker {
    /// Starts the thread that owns `uploader`.
    pub fn start(mut uploader: SlotUploader, name: String) -> Result<Self> {
        let (ctx, crx) = channel::<Command>();
        let (rtx, rrx) = channel::<UploadResult>();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let mut queued: VecDeque<(u64, Box<SyncSnapshot>)> = VecDeque::new();
                // The checkpoint uploaded last, until its commit is confirmed.
                let mut unconfirmed: Option<u64> = None;
                for cmd in crx {
                    match cmd {
                        Command::Upload { epoch, snapshot } => queued.push_back((epoch, snapshot)),
                        Command::Completed { id } => {
                            if let Err(e) = uploader.checkpoint_completed(id) {
                                // Not fatal: the next upload then references nothing of this
                                // checkpoint and uploads its files again.
                                eprintln!("cairn-timely: confirming checkpoint {id}: {e}");
                            }
                            if unconfirmed.is_some_and(|u| id >= u) {
                                unconfirmed = None;
                            }
                        }
                    }
                    while unconfirmed.is_none() {
                        let Some((epoch, snapshot)) = queued.pop_front() else {
                            break;
                        };
                        unconfirmed = Some(snapshot.id);
                        let r = uploader.upload(*snapshot).map_err(|e| e.to_string());
                        if rtx.send((epoch, r)).is_err() {
                            return;
                        }
                    }
                }
            })
            .map_err(crate::error::io("start the upload thread"))?;
        Ok(Self {
            commands: Some(ctx),
            results: rrx,
            thread: Some(thread),
        })
    }

    /// Queues the upload of `snapshot` (checkpoint epoch `epoch`).
    pub fn upload(&self, epoch: u64, snapshot: SyncSnapshot) -> Result<()> {
        self.send(Command::Upload {
            epoch,
            snapshot: Box::new(snapshot),
        })
    }

    /// Checkpoint `id` committed: its files become the next upload's base.
    pub fn completed(&self, id: u64) -> Result<()> {
        self.send(Command::Completed { id })
    }

    fn send(&self, cmd: Command) -> Result<()> {
        self.commands
            .as_ref()
            .and_then(|c| c.send(cmd).ok())
            .ok_or_else(|| HostError::Protocol("the upload thread has stopped".into()))
    }

    /// The uploads finished since the last call.
    pub fn finished(&self) -> Result<Vec<UploadResult>> {
        let mut out = Vec::new();
        loop {
            match self.results.try_recv() {
                Ok(r) => out.push(r),
                Err(TryRecvError::Empty) => return Ok(out),
                Err(TryRecvError::Disconnected) => {
                    return Err(HostError::Protocol("the upload thread has stopped".into()));
                }
            }
        }
    }
}

impl Drop for UploadWorker {
    /// Closes the command queue and waits for the thread (it finishes what is queued).
    fn drop(&mut self) {
        self.commands = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
