//! The bench binary's arguments and environment.
//!
//! `cargo bench` passes `--bench` (and a filter, if one follows `--`); `cargo test --benches`
//! passes neither, which is the smoke mode: every case once or a few times. `--list` asks
//! for the names of the benchmarks only.

/// Criterion options that take a value (so the value is not the filter).
const WITH_VALUE: &[&str] = &[
    "--color",
    "-c",
    "--save-baseline",
    "-s",
    "--baseline",
    "-b",
    "--baseline-lenient",
    "--load-baseline",
    "--profile-time",
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--format",
    "--plotting-backend",
    "--output-format",
    "--logfile",
    "--test-threads",
    "--skip",
];

/// What the command line asks of a bench binary.
pub struct BenchArgs {
    /// All arguments, the program's name first (criterion reads them again itself).
    args: Vec<String>,
}

impl BenchArgs {
    /// This process's arguments.
    pub fn from_env() -> BenchArgs {
        BenchArgs {
            args: std::env::args().collect(),
        }
    }

    /// Whether this is the smoke mode of `cargo test --benches` (no `--bench`, or `--test`):
    /// every case runs once or a few times.
    pub fn testing(&self) -> bool {
        !self.has("--bench") || self.has("--test")
    }

    /// Whether only the benchmarks' names are asked for (`--list`).
    pub fn listing(&self) -> bool {
        self.has("--list")
    }

    /// Whether the filter, if any, lets the section named `section` run: no filter, or a
    /// filter that is part of the name or contains it. The filter is the last argument that
    /// is neither an option nor the value of a criterion option.
    pub fn selects(&self, section: &str) -> bool {
        self.filter()
            .is_none_or(|filter| section.contains(filter) || filter.contains(section))
    }

    /// Answers `--list`, if it was given, with the sections a bench runs besides criterion's
    /// benchmarks (or instead of them), in the form criterion and libtest list benchmarks
    /// (`<name>: bench`); whether it was given.
    pub fn answer_list(&self, sections: &[&str]) -> bool {
        let listing = self.listing();
        if listing {
            for section in sections {
                println!("{section}: bench");
            }
        }
        listing
    }

    /// Whether `flag` is among the arguments.
    fn has(&self, flag: &str) -> bool {
        self.args.iter().any(|arg| arg == flag)
    }

    /// The filter argument, if any (see [`BenchArgs::selects`]).
    fn filter(&self) -> Option<&str> {
        let mut filter = None;
        let mut skip_value = false;
        for arg in self.args.iter().skip(1) {
            if skip_value {
                skip_value = false;
            } else if arg.starts_with('-') {
                skip_value = WITH_VALUE.contains(&arg.as_str());
            } else {
                filter = Some(arg.as_str());
            }
        }
        filter
    }
}

/// The server URL from the environment variable `variable`, or `default` (the one the
/// tests use too).
pub fn server_url(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.into())
}

/// The number in the environment variable `variable`, if it is set and parses.
pub fn env_number<T: std::str::FromStr>(variable: &str) -> Option<T> {
    std::env::var(variable).ok()?.parse().ok()
}
