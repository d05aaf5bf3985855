//! Nothing but benchmarks live in this package; see `BENCHMARKS.md`.
