//! Capture Analytics V1: one request's identity across its retries, and the per-event verdicts
//! of a 200 answer (`{"results": {"<uuid>": {"result": "ok" | "retry" | "drop" | "limited",
//! "details": "..."}}}`).

use std::collections::HashMap;

use serde::Deserialize;
use uuid::Uuid;

use crate::event::format_timestamp;

/// One v1 request, kept across its retries: PostHog deduplicates and correlates on the id, and
/// reads the attempt from `PostHog-Attempt`. v0 requests carry one too; it is not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestMeta {
    /// `PostHog-Request-Id`.
    pub id: Uuid,
    /// `PostHog-Attempt`: 1 for the first send, 2 for the first retry, ...
    pub attempt: u32,
    /// The body's `created_at`: when the batch was made, kept across retries.
    pub created_at: String,
    /// Added to this process's clock for the request's times (`created_at`, v0's `sent_at`):
    /// zero, or, for the relay, the database's clock minus this one, so that a relay whose
    /// clock is off does not shift the events (PostHog corrects each event's timestamp by the
    /// request's send time).
    pub clock_offset: chrono::Duration,
}

impl RequestMeta {
    /// A new request whose events were already sent `attempt - 1` times (by the relay, in
    /// other requests).
    pub fn at_attempt(attempt: u32) -> Self {
        Self::on_clock(attempt, chrono::Duration::zero())
    }

    /// [`at_attempt`](RequestMeta::at_attempt), its times on this process's clock plus
    /// `clock_offset`.
    pub fn on_clock(attempt: u32, clock_offset: chrono::Duration) -> Self {
        RequestMeta {
            id: Uuid::new_v4(),
            attempt: attempt.max(1),
            created_at: format_timestamp(shifted_now(clock_offset)),
            clock_offset,
        }
    }

    /// A new request for part of this one's events (a split), on the same clock.
    pub fn part(&self, attempt: u32) -> Self {
        Self::on_clock(attempt, self.clock_offset)
    }

    /// Now, on this request's clock.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        shifted_now(self.clock_offset)
    }

    /// The same request, sent once more.
    pub fn retry(&self) -> Self {
        RequestMeta {
            attempt: self.attempt.saturating_add(1),
            ..self.clone()
        }
    }
}

/// This process's clock plus `offset`, or this process's clock alone when the sum is beyond
/// chrono's calendar: the offset is measured from the database's clock, which is input.
fn shifted_now(offset: chrono::Duration) -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    now.checked_add_signed(offset).unwrap_or(now)
}

/// What PostHog said of one event of a v1 request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Stored.
    Ok,
    /// Not stored this time: send it again (same uuid and timestamp).
    Retry { details: String },
    /// Refused for good (invalid, say).
    Drop { details: String },
    /// Refused because a quota is exhausted: it may be accepted once the quota allows.
    Limited { details: String },
    /// A verdict this version does not know: not retried (forward compatibility).
    Unknown { result: String, details: String },
    /// The answer had no result for this event: sent again, PostHog deduplicates on the uuid.
    Missing,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    results: Option<HashMap<String, Entry>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    Full {
        result: String,
        #[serde(default)]
        details: Option<serde_json::Value>,
    },
    Bare(String),
    /// Any other shape: a verdict this version cannot read, so not retried.
    Other(serde_json::Value),
}

/// The verdict of each of `payloads` (in their order) from a 200 answer's body; `None` when the
/// body has no `results` map (a 200 without one is taken as all accepted, as in v0).
pub fn verdicts(body: &[u8], payloads: &[&str]) -> Option<Vec<Verdict>> {
    let answer: Answer = serde_json::from_slice(body).ok()?;
    let mut results = answer.results?;
    Some(
        payloads
            .iter()
            .map(|payload| {
                let Some(uuid) = payload_uuid(payload) else {
                    return Verdict::Missing;
                };
                let entry = results
                    .remove(&uuid)
                    .or_else(|| results.remove(&uuid.to_ascii_uppercase()));
                match entry {
                    None => Verdict::Missing,
                    Some(Entry::Bare(result)) => verdict(result, String::new()),
                    Some(Entry::Other(value)) => Verdict::Unknown {
                        result: value.to_string(),
                        details: String::new(),
                    },
                    Some(Entry::Full { result, details }) => {
                        let details = match details {
                            Some(serde_json::Value::String(text)) => text,
                            Some(serde_json::Value::Null) | None => String::new(),
                            Some(other) => other.to_string(),
                        };
                        verdict(result, details)
                    }
                }
            })
            .collect(),
    )
}

fn verdict(result: String, details: String) -> Verdict {
    match result.as_str() {
        "ok" => Verdict::Ok,
        "retry" => Verdict::Retry { details },
        "drop" => Verdict::Drop { details },
        "limited" => Verdict::Limited { details },
        _ => Verdict::Unknown { result, details },
    }
}

/// The `uuid` of a staged payload: read in place when it leads the object (as every payload
/// this crate writes does), else parsed (a `before_send` hook may have reordered the keys).
pub fn payload_uuid(payload: &str) -> Option<String> {
    if let Some(uuid) = payload
        .strip_prefix("{\"uuid\":\"")
        .and_then(|rest| rest.get(..36))
        .filter(|uuid| Uuid::parse_str(uuid).is_ok())
    {
        return Some(uuid.to_ascii_lowercase());
    }
    let value: serde_json::Value = serde_json::from_str(payload).ok()?;
    value["uuid"].as_str().map(str::to_ascii_lowercase)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"{"uuid":"0190a1b2-0000-7000-8000-00000000000a","event":"e"}"#;
    const B: &str = r#"{"event":"e","uuid":"0190A1B2-0000-7000-8000-00000000000B"}"#;
    const C: &str = r#"{"uuid":"0190a1b2-0000-7000-8000-00000000000c","event":"e"}"#;

    #[test]
    fn verdicts_follow_the_payloads_by_uuid() {
        let body = br#"{"results":{
            "0190a1b2-0000-7000-8000-00000000000b":{"result":"drop","details":"invalid_event"},
            "0190a1b2-0000-7000-8000-00000000000a":{"result":"retry","details":"not_persisted"}
        }}"#;
        assert_eq!(
            verdicts(body, &[A, B, C]).unwrap(),
            [
                Verdict::Retry {
                    details: "not_persisted".into()
                },
                Verdict::Drop {
                    details: "invalid_event".into()
                },
                Verdict::Missing,
            ]
        );
    }

    #[test]
    fn unknown_and_limited_verdicts_are_kept_apart() {
        let body = br#"{"results":{
            "0190a1b2-0000-7000-8000-00000000000a":{"result":"limited","details":{"quota":"events"}},
            "0190a1b2-0000-7000-8000-00000000000c":{"result":"someday"}
        }}"#;
        assert_eq!(
            verdicts(body, &[A, C]).unwrap(),
            [
                Verdict::Limited {
                    details: r#"{"quota":"events"}"#.into()
                },
                Verdict::Unknown {
                    result: "someday".into(),
                    details: String::new()
                },
            ]
        );
    }

    #[test]
    fn an_unreadable_entry_is_an_unknown_verdict_not_a_lost_answer() {
        let body = br#"{"results":{
            "0190a1b2-0000-7000-8000-00000000000a":{"result":"ok"},
            "0190a1b2-0000-7000-8000-00000000000c":7
        }}"#;
        assert_eq!(
            verdicts(body, &[A, C]).unwrap(),
            [
                Verdict::Ok,
                Verdict::Unknown {
                    result: "7".into(),
                    details: String::new()
                }
            ]
        );
    }

    #[test]
    fn bodies_without_results_are_none_and_never_panic() {
        for body in [&b""[..], b"not json", b"{}", b"[1,2]", b"{\"results\":7}"] {
            assert_eq!(verdicts(body, &[A]), None, "{body:?}");
        }
    }

    /// The relay's offset is the database's clock minus this process's, read from the
    /// database: one beyond chrono's range (a database clock hundreds of thousands of years
    /// off) made `Utc::now() + offset` panic ("`DateTime + TimeDelta` overflowed") in every
    /// request's times.
    #[test]
    fn an_offset_beyond_the_calendar_leaves_this_clock() {
        for offset in [chrono::TimeDelta::MAX, chrono::TimeDelta::MIN] {
            let before = chrono::Utc::now();
            let meta = RequestMeta::on_clock(1, offset);
            let now = meta.now();
            assert!(now >= before && now <= chrono::Utc::now(), "{now}");
            let created = chrono::DateTime::parse_from_rfc3339(&meta.created_at).unwrap();
            // Written to the microsecond.
            assert!(
                created.timestamp_micros() >= before.timestamp_micros(),
                "{}",
                meta.created_at
            );
        }
    }

    #[test]
    fn a_retry_keeps_the_id_and_counts_up() {
        let first = RequestMeta::at_attempt(1);
        let second = first.retry();
        assert_eq!((first.attempt, second.attempt), (1, 2));
        assert_eq!(first.id, second.id);
        assert_eq!(first.created_at, second.created_at);
        assert_ne!(RequestMeta::at_attempt(1).id, first.id);
    }

    /// Properties over inputs from the network and the outbox.
    mod inputs {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            /// Any 200 answer's body (JSON of any shape around `results`, or bytes that are no
            /// JSON) and any payload text from the outbox (a row edited by hand, cut short, with
            /// multi-byte characters where the uuid should be): one verdict per payload or none,
            /// never a panic.
            #[test]
            fn any_answer_and_payload_give_verdicts_or_none(
                body in prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..64),
                    "\\{\"results\":\\{(\"[0-9a-fA-F-]{0,40}\":(\"[a-z]{0,6}\"|\\{\"result\":(\"(ok|retry|drop|limited)\"|[0-9]|null|\\[\\])(,\"details\":(\"\\PC{0,8}\"|7|\\{\\}|null))?\\}|[0-9]|null|\\[\\]),?){0,3}\\}\\}"
                        .prop_map(String::into_bytes),
                ],
                payloads in prop::collection::vec(
                    prop_oneof![
                        "\\PC{0,60}",
                        "\\{\"uuid\":\"[0-9a-fA-F\\-é]{30,40}\"?,?\\PC{0,10}",
                        "\\{\"event\":\"e\",\"uuid\":(\"[0-9a-f-]{36}\"|7|null|\\[\\])\\}",
                    ],
                    0..4,
                ),
            ) {
                let payloads: Vec<&str> = payloads.iter().map(String::as_str).collect();
                for payload in &payloads {
                    let _ = payload_uuid(payload);
                }
                if let Some(verdicts) = verdicts(&body, &payloads) {
                    prop_assert_eq!(verdicts.len(), payloads.len());
                }
            }
        }
    }
}
