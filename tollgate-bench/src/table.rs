//! Summary tables of fixed-width columns, and the time formats in their cells.

/// A table of text columns one space apart: the first few left-aligned (names), the rest
/// right-aligned (figures). A cell wider than its column pushes the rest of its line out.
pub struct Table {
    left: Vec<usize>,
    right: Vec<usize>,
}

impl Table {
    /// A table of left-aligned columns of the widths `left`, then right-aligned ones of the
    /// widths `right`.
    pub fn new(left: &[usize], right: &[usize]) -> Table {
        Table {
            left: left.to_vec(),
            right: right.to_vec(),
        }
    }

    /// One line of the table, without its line end: `cells` in column order, one for each
    /// column.
    pub fn line<S: AsRef<str>>(&self, cells: &[S]) -> String {
        assert_eq!(
            cells.len(),
            self.left.len() + self.right.len(),
            "one cell per column"
        );
        let (left, right) = cells.split_at(self.left.len());
        let left = left
            .iter()
            .zip(&self.left)
            .map(|(cell, width)| format!("{:<width$}", cell.as_ref()));
        let right = right
            .iter()
            .zip(&self.right)
            .map(|(cell, width)| format!("{:>width$}", cell.as_ref()));
        left.chain(right).collect::<Vec<_>>().join(" ")
    }

    /// Prints [`Table::line`] of `cells`.
    pub fn print<S: AsRef<str>>(&self, cells: &[S]) {
        println!("{}", self.line(cells));
    }
}

/// Nanoseconds, with as many digits as tell: `850 ns`, `1.25 µs`, `12.5 µs`.
pub fn format_ns(ns: f64) -> String {
    if ns >= 10_000.0 {
        format!("{:.1} µs", ns / 1000.0)
    } else if ns >= 1_000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

/// Nanoseconds in microseconds to one decimal, as the hand-off tables give them: `12.5 µs`.
pub fn format_us(ns: u64) -> String {
    format!("{:.1} µs", ns as f64 / 1000.0)
}

/// Prints the summary table of uncontended rows: each one's label, median per operation, and
/// the median of the floor it is compared with (none for a floor itself).
pub fn print_uncontended(rows: &[(&str, std::time::Duration, std::time::Duration)]) {
    println!("Uncontended acquire + release (median of batch means):\n");
    println!("| row | per operation | vs. its raw floor |");
    println!("|---|---|---|");
    for (label, median, floor) in rows {
        println!(
            "| {label} | {} | {:.2}× |",
            format_us(median.as_nanos() as u64),
            median.as_secs_f64() / floor.as_secs_f64()
        );
    }
}
