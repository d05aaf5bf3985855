//! The throttle: events per second, measured from the start of the run.

use std::time::Duration;

/// Spreads a run's events so that, at any point, no more than `rate x elapsed` were staged
/// (plus the page in hand): after each page the run waits until its events are due.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacer {
    rate: Option<u32>,
}

impl Pacer {
    pub(crate) fn new(rate: Option<u32>) -> Self {
        Pacer {
            rate: rate.filter(|rate| *rate > 0),
        }
    }

    /// How long to wait, `elapsed` into the run, after `staged` events.
    pub(crate) fn delay(&self, staged: u64, elapsed: Duration) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        // u64 -> f64 loses precision only past 2^53 events.
        #[allow(clippy::cast_precision_loss)]
        let due = Duration::from_secs_f64(staged as f64 / f64::from(rate));
        due.saturating_sub(elapsed)
    }

    /// Rows per page: a page holds about a tenth of a second of events, so the rate holds
    /// within a few percent over runs of a second or more; `page_size` otherwise.
    pub(crate) fn rows_per_page(&self, page_size: usize, events_per_row: usize) -> usize {
        let page_size = page_size.max(1);
        match self.rate {
            None => page_size,
            Some(rate) => {
                let per_tenth = (rate as usize / 10) / events_per_row.max(1);
                per_tenth.clamp(1, page_size)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_until_the_events_are_due() {
        let pacer = Pacer::new(Some(2_000));
        assert_eq!(
            pacer.delay(1_000, Duration::from_millis(100)),
            Duration::from_millis(400)
        );
        assert_eq!(pacer.delay(1_000, Duration::from_secs(1)), Duration::ZERO);
        assert_eq!(
            Pacer::new(None).delay(1_000_000, Duration::ZERO),
            Duration::ZERO
        );
        assert_eq!(
            Pacer::new(Some(0)).delay(10, Duration::ZERO),
            Duration::ZERO
        );
    }

    #[test]
    fn pages_hold_a_tenth_of_a_second_of_events() {
        assert_eq!(Pacer::new(Some(2_000)).rows_per_page(500, 1), 200);
        assert_eq!(Pacer::new(Some(2_000)).rows_per_page(500, 2), 100);
        assert_eq!(Pacer::new(Some(5)).rows_per_page(500, 3), 1);
        assert_eq!(Pacer::new(Some(1_000_000)).rows_per_page(500, 1), 500);
        assert_eq!(Pacer::new(None).rows_per_page(0, 1), 1);
    }
}
