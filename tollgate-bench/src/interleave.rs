//! Rows that take turns, round by round, so that a burst of load from elsewhere falls on all
//! of them alike.

/// The indices of `count` rows in the order they run in round `round`: from `round % count`
/// on, wrapping, so that no row always follows the same other one.
pub fn rotation(round: usize, count: usize) -> impl Iterator<Item = usize> {
    (0..count).map(move |offset| (round + offset) % count)
}

/// Subjects whose rows run one operation at a time, for [`batch_medians`].
pub trait Cycles {
    /// Which operation.
    type Row: Copy;
    /// Runs one operation of `row`.
    fn cycle(&mut self, row: Self::Row) -> impl std::future::Future<Output = ()>;
}

/// Runs every row of `rows` in batches of `batch` operations, interleaved round by round,
/// after five warm-up batches of each: for at least three rounds, and (unless `testing`, where
/// a batch is one operation) until `time` has passed. The median of each row's per-batch means.
pub async fn batch_medians<S: Cycles>(
    subjects: &mut S,
    rows: &[S::Row],
    batch: u32,
    time: std::time::Duration,
    testing: bool,
) -> Vec<(S::Row, std::time::Duration)> {
    let batch = if testing { 1 } else { batch };
    for _ in 0..5 {
        for &row in rows {
            for _ in 0..batch {
                subjects.cycle(row).await;
            }
        }
    }
    let mut batches: Vec<Vec<std::time::Duration>> = vec![Vec::new(); rows.len()];
    let started = std::time::Instant::now();
    let mut rounds = 0;
    while rounds < 3 || (!testing && started.elapsed() < time) {
        for (index, &row) in rows.iter().enumerate() {
            let begun = std::time::Instant::now();
            for _ in 0..batch {
                subjects.cycle(row).await;
            }
            batches[index].push(begun.elapsed() / batch);
        }
        rounds += 1;
    }
    println!("uncontended: {rounds} rounds of {batch} operations per row");
    rows.iter()
        .copied()
        .zip(batches)
        .map(|(row, mut batches)| {
            batches.sort();
            (row, batches[batches.len() / 2])
        })
        .collect()
}
