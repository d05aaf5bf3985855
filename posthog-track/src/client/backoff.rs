//! Exponential backoff with jitter, and `Retry-After`.

use std::time::Duration;

/// How long to wait before retrying a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Wait after the first failure.
    pub initial: Duration,
    /// Ceiling for the exponential growth (and for a server's `Retry-After`).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The wait after `failures` consecutive failures (1 for the first). A server's
    /// `Retry-After` wins when it asks for longer; "equal jitter" keeps retries from many
    /// relays apart while never retrying sooner than half the computed delay.
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let exponent = failures.saturating_sub(1).min(20);
        let base = self.initial.saturating_mul(1 << exponent).min(self.max);
        let half = base / 2;
        let jittered = half + half.mul_f64(fastrand::f64());
        match retry_after {
            Some(asked) => asked.min(self.max).max(jittered),
            None => jittered,
        }
    }
}

/// Parses `Retry-After`: delta-seconds or an HTTP date in any of the three forms a recipient
/// must accept (RFC 9110 5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms).
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = match httpdate::parse_http_date(value) {
        Ok(at) => chrono::DateTime::<chrono::Utc>::from(at),
        // Not an HTTP date, but a date all the same (a numeric zone, say): honoured too.
        Err(_) => chrono::DateTime::parse_from_rfc2822(value)
            .ok()?
            .with_timezone(&chrono::Utc),
    };
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_jitter_and_cap() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let first = backoff.delay(1, None);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff.delay(3, None);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(backoff.delay(30, None) <= Duration::from_secs(1));
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        };
        assert_eq!(
            backoff.delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            backoff.delay(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn retry_after_formats() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:28:30 GMT", now),
            Some(Duration::from_secs(30)),
            "RFC 850"
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:28:30 2015", now),
            Some(Duration::from_secs(30)),
            "asctime"
        );
        assert_eq!(
            parse_retry_after("Thu Oct  1 07:28:30 2015", now),
            Some(Duration::ZERO),
            "asctime, a past date"
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    /// Properties over inputs from the network and the outbox.
    mod inputs {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            /// Any `Retry-After` value (PostHog's, or a proxy's) at any time within chrono's
            /// range: parsed or ignored, never a panic; and the delay it leads to stays within
            /// the ceiling, whatever it asked for and however many failures came before.
            #[test]
            fn any_retry_after_is_parsed_or_ignored(
                value in prop_oneof![
                    "\\PC{0,40}",
                    "[0-9]{1,30}",
                    "-?[0-9]{1,25}(\\.[0-9]{0,5})?",
                    "(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{1,2} (Jan|Feb|Dec) [0-9]{1,6} [0-9]{2}:[0-9]{2}:[0-9]{2} (GMT|[+-][0-9]{4})",
                    "(Mon|Sun) (Jan|Dec) [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} [0-9]{4,6}",
                    "[A-Za-z]{6,9}, [0-9]{2}-(Jan|Dec)-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT",
                ],
                now_seconds in -8_000_000_000_000i64..8_000_000_000_000,
                failures in any::<u32>(),
                initial in (any::<u64>(), 0..1_000_000_000u32),
                max in (any::<u64>(), 0..1_000_000_000u32),
            ) {
                let now = chrono::DateTime::from_timestamp(now_seconds, 0).unwrap_or_default();
                let asked = parse_retry_after(&value, now);
                let backoff = Backoff {
                    initial: Duration::new(initial.0, initial.1),
                    max: Duration::new(max.0, max.1),
                };
                let delay = backoff.delay(failures, asked);
                prop_assert!(delay <= backoff.max, "{delay:?} > {:?}", backoff.max);
            }
        }
    }
}
