//! A hand-off between two processes: A (the bench) holds, B (a [partner](crate::partner))
//! waits; A reads [`monotonic_ns`](crate::clock::monotonic_ns) right before it releases, B
//! right after its acquire returns, and the difference is the latency of one round.

use crate::table::format_us;

/// The latency of one round from A's reading before the release and B's after the acquire;
/// panics if B held before A released.
pub fn latency(released: u64, acquired: u64) -> u64 {
    assert!(acquired >= released, "B held the lock before A released it");
    acquired - released
}

/// The headers of the columns [`Latencies::cells`] fills.
pub const LATENCY_COLUMNS: [&str; 5] = ["min", "median", "p90", "p99", "max"];

/// The latencies of the measured rounds of one pair, sorted.
pub struct Latencies {
    sorted_ns: Vec<u64>,
}

impl Latencies {
    /// The latencies of `rounds_ns`, in nanoseconds, in any order.
    pub fn new(mut rounds_ns: Vec<u64>) -> Latencies {
        rounds_ns.sort_unstable();
        Latencies {
            sorted_ns: rounds_ns,
        }
    }

    /// How many rounds there are.
    pub fn len(&self) -> usize {
        self.sorted_ns.len()
    }

    /// Whether there are no rounds.
    pub fn is_empty(&self) -> bool {
        self.sorted_ns.is_empty()
    }

    /// The latency that `percent` percent of the rounds are below (the round at that rank,
    /// the last one for 100); panics without rounds.
    pub fn percentile(&self, percent: usize) -> u64 {
        let index = (self.sorted_ns.len() * percent / 100).min(self.sorted_ns.len() - 1);
        self.sorted_ns[index]
    }

    /// Min, median, p90, p99 and max in microseconds, as [`LATENCY_COLUMNS`] names them.
    pub fn cells(&self) -> [String; 5] {
        [
            format_us(self.sorted_ns[0]),
            format_us(self.percentile(50)),
            format_us(self.percentile(90)),
            format_us(self.percentile(99)),
            format_us(*self.sorted_ns.last().expect("rounds")),
        ]
    }
}

/// The two sides of a hand-off comparison: tollgate to tollgate, and the raw floor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pair {
    /// A tollgate holder hands off to a tollgate waiter.
    Tollgate,
    /// The same with the backend's bare protocol.
    Raw,
}

impl Pair {
    /// Both, in the order they run.
    pub const BOTH: [Pair; 2] = [Pair::Tollgate, Pair::Raw];

    /// The partner's role for this pair.
    pub fn role(self) -> &'static str {
        match self {
            Pair::Tollgate => "tollgate",
            Pair::Raw => "raw",
        }
    }
}

/// Prints the summary table of hand-off pairs: each one's label and measured rounds (in
/// nanoseconds, any order).
pub fn print_pairs(pairs: Vec<(&str, Vec<u64>)>) {
    println!("\nHand-off between two processes (release → the waiter's acquire returns):\n");
    println!("| pair | rounds | {} |", LATENCY_COLUMNS.join(" | "));
    println!("|---|---|{}", "---|".repeat(LATENCY_COLUMNS.len()));
    for (label, rounds) in pairs {
        let latencies = Latencies::new(rounds);
        println!(
            "| {label} | {} | {} |",
            latencies.len(),
            latencies.cells().join(" | ")
        );
    }
}
