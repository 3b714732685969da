//! One uncontended acquire + release of a tollgate primitive, the unit most rows measure.

use tollgate::{Acquire, Handle};

/// `try_acquire().await` and `release().await` of a primitive that must be free.
pub async fn try_acquire_release<A: Acquire>(primitive: &A) {
    let handle = primitive
        .try_acquire()
        .await
        .expect("try_acquire")
        .expect("an uncontended primitive is free");
    handle.release().await.expect("release");
}

/// `acquire().await` and `release().await`.
pub async fn acquire_release<A: Acquire>(primitive: &A) {
    let handle = primitive.acquire().await.expect("acquire");
    handle.release().await.expect("release");
}
