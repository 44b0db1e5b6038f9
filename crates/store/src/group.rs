//! Group commit: writes of one kind (the store's fenced marks and outcomes; settlements of calls nobody holds) that
//! callers make at the same time reach the database together, as one statement.
//!
//! Why: a statement's own work is small next to what surrounds it — on SQLite the hop to sqlx's connection thread
//! and back and a transaction (the `-shm` locks, WAL frames), on PostgreSQL a round trip — about 0.2 ms of CPU each
//! on SQLite. With eight uploads finishing at once, their writes queue behind the statement being written; the
//! next statement then carries all of them. A write that arrives alone is written alone at once: grouping never
//! waits for company (it only lets the tasks that are ready to run go first).
//!
//! The batch is written by a task of its own, spawned when the first write arrives and ending when the queue is
//! empty, so a caller that gives up (its future dropped mid-write) cannot take the other callers' writes down
//! with it. A batch that fails is written again one write at a time, so that each caller gets its own answer
//! (the error is its write's, or none when only another write in the batch was at fault).

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::{Error, LedgerFault};

/// Most writes in one statement: parameters stay far below both backends' limits, and a few batch lengths cover a
/// run (each length is its own prepared statement).
pub(crate) const MAX_GROUP: usize = 32;

/// One kind of grouped write.
pub(crate) trait GroupWrite: Send + Sync + Sized + 'static {
    /// What the writes are written to (a clone of the store).
    type Target: Send + Sync + 'static;

    /// Writes `batch` (1 to [`MAX_GROUP`] writes) in one statement and answers, in order, whether each changed
    /// its row.
    fn write_all(
        target: &Self::Target,
        batch: &[Self],
    ) -> impl Future<Output = Result<Vec<bool>, Error>> + Send;
}

/// The queue of one kind of write.
pub(crate) struct Group<W> {
    state: Mutex<Queue<W>>,
}

struct Queue<W> {
    writes: Vec<W>,
    answers: Vec<oneshot::Sender<Result<bool, Error>>>,
    /// A task is writing batches; new writes join its queue.
    writing: bool,
}

impl<W: GroupWrite> Group<W> {
    pub(crate) fn new() -> Self {
        Group {
            state: Mutex::new(Queue {
                writes: Vec::new(),
                answers: Vec::new(),
                writing: false,
            }),
        }
    }

    /// Writes `write` with whatever else is queued; true when it changed its row.
    pub(crate) async fn submit(
        self: &Arc<Self>,
        target: &W::Target,
        write: W,
    ) -> Result<bool, Error>
    where
        W::Target: Clone,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queue = self.state.lock().unwrap();
            queue.writes.push(write);
            queue.answers.push(tx);
            !std::mem::replace(&mut queue.writing, true)
        };
        if start {
            tokio::spawn(Arc::clone(self).drain(target.clone()));
        }
        rx.await.unwrap_or_else(|_| {
            Err(Error::Data(
                "the ledger's write task ended before answering".into(),
            ))
        })
    }

    async fn drain(self: Arc<Self>, target: W::Target) {
        // Should a write panic, the queue must not stay "being written" with nobody writing it.
        let _reset = Reset(&self);
        loop {
            // Let the tasks that are ready to run go first: those finishing an upload at the same moment add their
            // writes to this batch. Costs nothing when none are (the task is polled again at once).
            tokio::task::yield_now().await;
            let (writes, answers) = {
                let mut queue = self.state.lock().unwrap();
                if queue.writes.is_empty() {
                    queue.writing = false;
                    return;
                }
                let n = queue.writes.len().min(MAX_GROUP);
                let writes: Vec<W> = queue.writes.drain(..n).collect();
                let answers: Vec<_> = queue.answers.drain(..n).collect();
                (writes, answers)
            };
            match W::write_all(&target, &writes).await {
                Ok(done) if done.len() == writes.len() => {
                    for (answer, done) in answers.into_iter().zip(done) {
                        let _ = answer.send(Ok(done));
                    }
                }
                Ok(done) => {
                    let detail = format!(
                        "a grouped write answered {} of {} writes",
                        done.len(),
                        writes.len()
                    );
                    for answer in answers {
                        let _ = answer.send(Err(Error::Data(detail.clone())));
                    }
                }
                Err(e) if writes.len() == 1 => {
                    let _ = answers.into_iter().next().map(|a| a.send(Err(e)));
                }
                // The database refused the statement as a whole: writing each alone would fail the same way, one
                // busy timeout after another, while every caller (and the one telling the user) waits.
                Err(e) if e.fault() != LedgerFault::Other => {
                    let (fault, message) = (e.fault(), e.to_string());
                    let mut answers = answers.into_iter();
                    let _ = answers.next().map(|a| a.send(Err(e)));
                    for answer in answers {
                        let message = message.clone();
                        let _ = answer.send(Err(Error::Grouped { fault, message }));
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, writes = writes.len(), "grouped ledger write failed; writing one at a time");
                    for (write, answer) in writes.iter().zip(answers) {
                        let one = W::write_all(&target, std::slice::from_ref(write))
                            .await
                            .and_then(|done| {
                                done.first().copied().ok_or_else(|| {
                                    Error::Data("a ledger write answered nothing".into())
                                })
                            });
                        let _ = answer.send(one);
                    }
                }
            }
        }
    }
}

/// Clears the queue's "being written" flag when the writing task panics, failing the writes still queued (their
/// callers get an error instead of waiting forever). On a normal end the task has cleared it itself.
struct Reset<'a, W>(&'a Group<W>);

impl<W> Drop for Reset<'_, W> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
            queue.writing = false;
            queue.writes.clear();
            queue.answers.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Records every batch it writes; each takes 20 ms (long enough for others to queue). Write 13
    /// fails; even writes "change their row".
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u32>>>>);

    impl Recorder {
        fn batches(&self) -> Vec<Vec<u32>> {
            self.0.lock().unwrap().clone()
        }
    }

    struct Write(u32);

    impl GroupWrite for Write {
        type Target = Recorder;
        async fn write_all(target: &Recorder, batch: &[Self]) -> Result<Vec<bool>, Error> {
            tokio::time::sleep(Duration::from_millis(20)).await;
            // Recorded once written through (a write cut off midway would be missing).
            target
                .0
                .lock()
                .unwrap()
                .push(batch.iter().map(|w| w.0).collect());
            if batch.iter().any(|w| w.0 == 13) {
                return Err(Error::Data("write 13 is refused".into()));
            }
            if batch.iter().any(|w| w.0 == 99) {
                return Err(Error::Unreachable("the server is gone".into()));
            }
            Ok(batch.iter().map(|w| w.0 % 2 == 0).collect())
        }
    }

    async fn submit_all(
        group: &Arc<Group<Write>>,
        target: &Recorder,
        writes: impl Iterator<Item = u32>,
    ) -> Vec<(u32, Result<bool, Error>)> {
        let mut tasks = tokio::task::JoinSet::new();
        for n in writes {
            let (group, target) = (group.clone(), target.clone());
            tasks.spawn(async move { (n, group.submit(&target, Write(n)).await) });
            // In order, so that the first write is alone in its batch.
            tokio::task::yield_now().await;
        }
        let mut answers = Vec::new();
        while let Some(done) = tasks.join_next().await {
            answers.push(done.unwrap());
        }
        answers.sort_by_key(|(n, _)| *n);
        answers
    }

    #[tokio::test]
    async fn coinciding_writes_share_a_statement_and_each_gets_its_own_answer() {
        let (group, target) = (Arc::new(Group::new()), Recorder::default());
        let answers = submit_all(&group, &target, 20..90).await;
        for (n, answer) in answers {
            assert_eq!(answer.unwrap(), n % 2 == 0, "write {n}");
        }
        let batches = target.batches();
        let mut written: Vec<u32> = batches.iter().flatten().copied().collect();
        written.sort_unstable();
        assert_eq!(
            written,
            (20..90).collect::<Vec<_>>(),
            "each write written once"
        );
        assert!(
            batches.len() <= 5,
            "70 coinciding writes in {} statements",
            batches.len()
        );
        assert!(batches.iter().all(|b| b.len() <= MAX_GROUP));

        // Alone again: written at once, alone.
        assert!(group.submit(&target, Write(100)).await.unwrap());
        assert_eq!(target.batches().last(), Some(&vec![100]));
    }

    #[tokio::test]
    async fn a_failed_batch_is_written_again_one_write_at_a_time() {
        let (group, target) = (Arc::new(Group::new()), Recorder::default());
        let answers = submit_all(&group, &target, 10..17).await;
        for (n, answer) in answers {
            match answer {
                Err(e) => assert_eq!(n, 13, "only write 13 fails, got {e}"),
                Ok(changed) => assert_eq!(changed, n % 2 == 0, "write {n}"),
            }
        }
        let batches = target.batches();
        assert!(
            batches.iter().any(|b| b.len() > 1 && b.contains(&13)),
            "13 was grouped with others: {batches:?}"
        );
        assert!(
            batches.iter().any(|b| b == &[13]),
            "then written alone: {batches:?}"
        );
    }

    #[tokio::test]
    async fn a_batch_the_database_refused_as_a_whole_fails_every_write_at_once() {
        let (group, target) = (Arc::new(Group::new()), Recorder::default());
        let answers = submit_all(&group, &target, [20, 99, 21, 22].into_iter()).await;
        for (n, answer) in answers {
            let refused = matches!(answer, Err(ref e) if e.fault() == LedgerFault::Unreachable);
            assert_eq!(refused, n != 20, "write {n}: {answer:?}");
        }
        let batches = target.batches();
        assert!(
            batches.iter().all(|b| b.len() > 1 || b == &[20]),
            "no write tried again alone: {batches:?}"
        );
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_does_not_take_other_writes_with_it() {
        let (group, target) = (Arc::new(Group::new()), Recorder::default());
        // The first caller stops waiting while its write is being written; the next one queued behind it.
        let first = {
            let (group, target) = (group.clone(), target.clone());
            tokio::time::timeout(Duration::from_millis(5), async move {
                group.submit(&target, Write(2)).await
            })
        };
        let second = {
            let (group, target) = (group.clone(), target.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                group.submit(&target, Write(4)).await
            }
        };
        let (first, second) = tokio::join!(first, second);
        assert!(first.is_err(), "the first caller gave up");
        assert!(second.unwrap());
        assert_eq!(
            target.batches(),
            vec![vec![2], vec![4]],
            "both written through"
        );
    }
}
