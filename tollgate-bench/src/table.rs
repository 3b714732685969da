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
