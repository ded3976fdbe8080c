//! Group commit for call control: requests queue their commands, one writer thread
//! takes whatever has queued up (up to `MAX_BATCH`) and applies it as one batch with
//! one durable commit. Under load many calls share an fsync; alone, a call waits for
//! nobody.

use commcredits_core::{Error, ErrorCode, Result, Timestamp};
use commcredits_engine::{Command, Engine, Outcome};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use tokio::sync::oneshot;

pub const MAX_BATCH: usize = 256;
/// Commands that may wait for the writer; beyond it requests are refused as overloaded.
pub const QUEUE_BOUND: usize = 8_192;

type Job = (Command, oneshot::Sender<Result<Outcome>>);

pub struct CallWriter {
    tx: Option<SyncSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CallWriter {
    pub fn start(engine: Arc<Engine>) -> CallWriter {
        let (tx, rx) = sync_channel::<Job>(QUEUE_BOUND);
        let thread = std::thread::Builder::new()
            .name("call-writer".into())
            .spawn(move || run(engine, rx))
            .expect("spawn the call writer thread");
        CallWriter { tx: Some(tx), thread: Some(thread) }
    }

    /// Queues a command and waits for its result.
    pub async fn submit(&self, cmd: Command) -> Result<Outcome> {
        let (reply, answer) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or_else(|| Error::new(ErrorCode::Overloaded, "the server is shutting down"))?;
        match tx.try_send((cmd, reply)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(Error::new(
                    ErrorCode::Overloaded,
                    "too many calls are waiting to be charged; retry shortly",
                ))
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::new(ErrorCode::Overloaded, "the server is shutting down"))
            }
        }
        answer.await.map_err(|_| Error::new(ErrorCode::Internal, "the call writer stopped"))?
    }

    /// Stops taking commands, finishes those queued, and waits for the thread.
    pub fn stop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for CallWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(engine: Arc<Engine>, rx: Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let now = Timestamp::now();
        let (cmds, replies): (Vec<Command>, Vec<_>) = jobs.into_iter().unzip();
        match engine.apply(now, cmds) {
            Ok(results) => {
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
