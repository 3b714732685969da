//! Operations that always complete, even when their caller stops waiting for them.

use std::future::Future;
use std::pin::Pin;

use super::runtime::spawn_release;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Abandoned<T> = Box<dyn FnOnce(T) -> BoxFuture<()> + Send>;

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
    struct Completing<T: Send + 'static> {
        operation: Option<BoxFuture<T>>,
        abandoned: Option<Abandoned<T>>,
    }
    impl<T: Send + 'static> Drop for Completing<T> {
        fn drop(&mut self) {
            let (Some(operation), Some(abandoned)) = (self.operation.take(), self.abandoned.take())
            else {
                return;
            };
            spawn_release(async move { abandoned(operation.await).await });
        }
    }
    let mut completing = Completing {
        operation: None,
        abandoned: Some(Box::new(move |output| Box::pin(abandoned(output)))),
    };
    let output = completing.operation.insert(Box::pin(operation)).await;
    completing.operation = None;
    output
}
