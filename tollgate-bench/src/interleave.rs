//! Rows that take turns, round by round, so that a burst of load from elsewhere falls on all
//! of them alike.

/// The indices of `count` rows in the order they run in round `round`: from `round % count`
/// on, wrapping, so that no row always follows the same other one.
pub fn rotation(round: usize, count: usize) -> impl Iterator<Item = usize> {
    (0..count).map(move |offset| (round + offset) % count)
}
