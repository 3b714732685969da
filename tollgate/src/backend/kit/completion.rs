//! Operations that always complete, even when their caller stops waiting for them, and
//! server-side waits that a caller who went away can interrupt.
//!
//! A wait in the server (PostgreSQL `pg_advisory_lock`, MySQL `GET_LOCK`) cannot simply be
//! dropped: the server would go on waiting, and might grant the lock to nobody. So the wait
//! runs as an operation of [`run_interruptible`]: polled in the caller's task while the caller
//! waits (no task hop on the fast path); if the caller drops its future at any await point,
//! the rest of the operation runs on tollgate's runtime, where it learns from its [`Caller`]
//! that nobody waits any more, interrupts the server (a cancel request, `KILL`), undoes a grant
//! that raced with the interrupt, and gives back what it got.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::oneshot;

use super::runtime::spawn_release;
use super::wait::{Backoff, Schedule};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Abandoned<T> = Box<dyn FnOnce(T) -> BoxFuture<()> + Send>;
type Noted = Box<dyn FnOnce() -> Box<dyn Send> + Send>;

/// The first pause of [`interrupt_until_done`] (jittered, doubling up to
/// [`INTERRUPT_PAUSE_CAP`]).
#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
const INTERRUPT_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause between two interrupts of [`interrupt_until_done`].
#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
const INTERRUPT_PAUSE_CAP: Duration = Duration::from_secs(1);

/// The caller of an operation run by [`run_interruptible`], as the operation sees it.
#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
#[derive(Debug)]
pub(crate) struct Caller {
    waiting: oneshot::Sender<Infallible>,
}

#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
impl Caller {
    /// Whether the caller has gone (dropped its future); from then on, the operation runs
    /// on tollgate's runtime and its output goes to the abandon step.
    pub(crate) fn is_gone(&self) -> bool {
        self.waiting.is_closed()
    }

    /// Completes once the caller has gone. Cancel-safe: it only watches.
    pub(crate) async fn gone(&mut self) {
        self.waiting.closed().await;
    }
}

/// Runs `operation` to completion whatever happens to the caller: it is polled in the
/// caller's task (no task hop on the fast path), and if the caller drops it part-way, the
/// rest runs on tollgate's runtime, counted as a release under way (see
/// [`spawn_release`]), which hands the output to `abandoned` (to give back what the
/// operation got).
pub(crate) async fn run_to_completion<T, A>(
    operation: impl Future<Output = T> + Send + 'static,
    abandoned: impl FnOnce(T) -> A + Send + 'static,
) -> T
where
    T: Send + 'static,
    A: Future<Output = ()> + Send + 'static,
{
    run_interruptible(|_caller| operation, || (), abandoned).await
}

/// [`run_to_completion`] for an operation that should stop early when its caller goes: the
/// operation gets a [`Caller`] that says so (for example to interrupt a wait in the server).
/// When the caller drops its future, `note` is called at once, on the dropping thread, and
/// what it returns (a release note, so that this process's next acquire of the same keys
/// waits for the cleanup) is kept until the rest of the operation and `abandoned` have run.
pub(crate) async fn run_interruptible<T, O, N, A>(
    operation: impl FnOnce(Caller) -> O,
    note: impl FnOnce() -> N + Send + 'static,
    abandoned: impl FnOnce(T) -> A + Send + 'static,
) -> T
where
    T: Send + 'static,
    O: Future<Output = T> + Send + 'static,
    N: Send + 'static,
    A: Future<Output = ()> + Send + 'static,
{
    struct Completing<T: Send + 'static> {
        operation: Option<BoxFuture<T>>,
        abandoned: Option<(Abandoned<T>, Noted)>,
        waiting: Option<oneshot::Receiver<Infallible>>,
    }
    impl<T: Send + 'static> Drop for Completing<T> {
        fn drop(&mut self) {
            let (Some(operation), Some((abandoned, note))) =
                (self.operation.take(), self.abandoned.take())
            else {
                return;
            };
            // The caller goes first, so that the rest of the operation sees it gone.
            drop(self.waiting.take());
            let noted = note();
            spawn_release(async move {
                let output = operation.await;
                abandoned(output).await;
                drop(noted);
            });
        }
    }
    let (sender, receiver) = oneshot::channel();
    let mut completing = Completing {
        operation: None,
        abandoned: Some((
            Box::new(move |output| Box::pin(abandoned(output))),
            Box::new(move || Box::new(note()) as Box<dyn Send>),
        )),
        waiting: Some(receiver),
    };
    let operation = operation(Caller { waiting: sender });
    let output = completing.operation.insert(Box::pin(operation)).await;
    completing.operation = None;
    output
}

/// Interrupts the server-side work that `operation` waits for until `operation` ends, and
/// returns its output. An interrupt (a PostgreSQL cancel request) travels apart from the
/// work and may reach the server before the work has started, which then ignores it; so it
/// is repeated, after jittered pauses that double from 50 ms up to 1 s, while the work runs.
#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
pub(crate) async fn interrupt_until_done<F, I>(
    mut operation: Pin<&mut F>,
    mut interrupt: impl FnMut() -> I,
) -> F::Output
where
    F: Future,
    I: Future<Output = ()>,
{
    let mut pauses = Backoff::new(INTERRUPT_PAUSE, INTERRUPT_PAUSE_CAP);
    loop {
        interrupt().await;
        let pause = pauses.pause(false);
        if let Ok(output) = tokio::time::timeout(pause, operation.as_mut()).await {
            return output;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A caller that drops the future mid-operation: the operation sees it gone, the note is
    /// kept until the abandon step ran, and the abandon step gets the output.
    #[tokio::test]
    async fn a_dropped_caller_is_seen_and_the_output_given_back() {
        let (started, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (given_back, given_back_rx) = oneshot::channel::<(bool, usize)>();
        let notes = Arc::new(AtomicUsize::new(0));
        let noted = notes.clone();
        let future = run_interruptible(
            move |mut caller| async move {
                started.send(()).unwrap();
                caller.gone().await;
                caller.is_gone()
            },
            move || {
                noted.fetch_add(1, Ordering::SeqCst);
                noted
            },
            {
                let notes = notes.clone();
                move |saw_gone| async move {
                    let _ = given_back.send((saw_gone, notes.load(Ordering::SeqCst)));
                }
            },
        );
        let task = tokio::spawn(future);
        started_rx.recv().await.unwrap();
        task.abort();
        let (saw_gone, notes_then) = given_back_rx.await.unwrap();
        assert!(saw_gone, "the rest of the operation saw its caller gone");
        assert_eq!(
            notes_then, 1,
            "the note was taken once, before the abandon step"
        );
    }

    /// An operation that finishes while its caller waits returns to it; no note, no abandon.
    #[tokio::test]
    async fn a_finished_operation_returns_to_its_caller() {
        let output = run_interruptible(
            |caller| async move { caller.is_gone() },
            || panic!("no note without a drop"),
            |_: bool| async { panic!("nothing to give back") },
        )
        .await;
        assert!(!output);
    }

    /// Interrupts are repeated until the work ends.
    #[tokio::test(start_paused = true)]
    async fn interrupts_repeat_until_the_work_ends() {
        let interrupts = Arc::new(AtomicUsize::new(0));
        let (done, done_rx) = oneshot::channel::<()>();
        let mut done = Some(done);
        let counted = interrupts.clone();
        let work = async move { done_rx.await.unwrap() };
        tokio::pin!(work);
        interrupt_until_done(work, move || {
            // The third interrupt is the one the server heeds.
            if counted.fetch_add(1, Ordering::SeqCst) == 2 {
                let _ = done.take().map(|done| done.send(()));
            }
            async {}
        })
        .await;
        assert_eq!(interrupts.load(Ordering::SeqCst), 3);
    }
}
