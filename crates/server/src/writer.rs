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
    serve(rx, |now, cmds| engine.apply(now, cmds));
}

/// Applies batch after batch until every sender is gone. A batch that panics (a bug)
/// is answered with an internal error and the thread goes on serving: a dead writer
/// would stop call control for every organization. The store rolls back whatever the
/// panicking transaction left open before its next write.
fn serve(rx: Receiver<Job>, apply: impl Fn(Timestamp, Vec<Command>) -> Result<Vec<Result<Outcome>>>) {
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
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply(now, cmds))).unwrap_or_else(|p| {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(commands = replies.len(), "a call-control batch panicked: {what}");
            Err(Error::new(ErrorCode::Internal, "the call-control batch failed; nothing of it was applied"))
        });
        match answer {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    fn ask(tx: &SyncSender<Job>, cmd: Command) -> Result<Outcome> {
        let (reply, answer) = oneshot::channel();
        tx.send((cmd, reply)).unwrap();
        answer.blocking_recv().expect("the writer answers every command")
    }

    fn create_org(name: &str) -> Command {
        Command::CreateOrg { name: name.into(), currency: "USD".into(), country: "US".into(), emails: Vec::new() }
    }

    /// A batch that panics inside its transaction is answered with an internal error,
    /// leaves nothing behind, and the writer keeps applying the batches after it.
    #[test]
    fn the_writer_survives_a_panicking_batch() {
        let store = commcredits_store::sqlite::SqliteStore::open("sqlite::memory:").unwrap();
        let engine = Arc::new(Engine::new(Arc::new(store)).unwrap());
        let (tx, rx) = sync_channel::<Job>(16);
        let e = engine.clone();
        let writer = std::thread::spawn(move || {
            serve(rx, |now, cmds| {
                if matches!(&cmds[0], Command::CreateOrg { name, .. } if name == "panics") {
                    // A bug striking mid-transaction, after a write.
                    e.store().write(&mut |tx| {
                        tx.insert_org(&commcredits_store::OrgRow {
                            org_id: "half-done".into(),
                            name: "panics".into(),
                            currency: "USD".into(),
                            country: "US".into(),
                            notification_emails: Vec::new(),
                            low_balance_minor: None,
                            suspended: false,
                            created_at: now,
                            disabled_notices: Vec::new(),
                        })?;
                        panic!("a bug in a command")
                    })?;
                }
                e.apply(now, cmds)
            })
        });
        let before = ask(&tx, create_org("before"));
        assert!(matches!(before, Ok(Outcome::Created { .. })), "{before:?}");
        let failed = ask(&tx, create_org("panics")).unwrap_err();
        assert_eq!(failed.code, ErrorCode::Internal);
        let after = ask(&tx, create_org("after"));
        let Ok(Outcome::Created { id }) = after else { panic!("the writer stopped serving: {after:?}") };
        assert_eq!(engine.resolve_org(&id).unwrap().name, "after");
        let names: Vec<String> = engine.read(|tx| tx.list_orgs()).unwrap().into_iter().map(|o| o.name).collect();
        assert!(!names.contains(&"panics".to_string()), "{names:?}");
        drop(tx);
        writer.join().unwrap();
    }
}
