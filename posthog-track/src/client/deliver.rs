//! Delivery of a set of events with PostHog's rules: split what is too large, isolate what is
//! rejected or keeps failing, stop at a configuration failure, and report per event what
//! happened, so that one bad event never holds back or takes down the others.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::transport::{Outcome, Transport, oversized};
use super::v1::{RequestMeta, Verdict, payload_uuid};
use super::wire::MAX_REQUEST_BYTES;
use crate::config::CaptureMode;

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Delivered,
    /// Try again later: a transient failure.
    Retry {
        retry_after: Option<Duration>,
        reason: String,
        /// PostHog answered the request and asked for this event again (v1's `retry`): the
        /// event is not at fault and counts no failure.
        asked: bool,
    },
    /// PostHog will never accept it: dead-letter it with the reason.
    Dead {
        reason: String,
    },
    /// A request holding only this event was refused (400, 413). That is what PostHog says of
    /// a bad event, and also what a proxy or a wrong host refusing every request says: the
    /// event is at fault only while PostHog accepts others (the relay decides).
    Refused {
        reason: String,
    },
    /// Not delivered because the set-up is wrong (key, host, proxy), not the event: keep it,
    /// unchanged and uncounted, until the set-up is fixed.
    Paused {
        reason: String,
    },
}

/// Groups that fail with a retryable answer this many times in a row, with no success in
/// between, end the round: PostHog (or the way to it) is down, and sending the rest would only
/// add load. The unsent events are handed back untried.
const RETRY_STREAK: usize = 4;

/// Most groups one class of repeatedly failing events is split into per round.
const MAX_SPLIT: usize = 16;

/// Splits events into the groups one round sends, from how many times each has already failed
/// (`prior`, in the events' order): fresh events travel together; events that failed `k` times
/// are split into `2^k` groups (at most [`MAX_SPLIT`]), so a poison event that fails its whole
/// request every time is cut off from the good events within a few rounds. Groups keep the
/// events' order.
pub fn groups(prior: &[u32]) -> Vec<Vec<usize>> {
    let mut classes: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for (index, &failures) in prior.iter().enumerate() {
        classes.entry(failures).or_default().push(index);
    }
    let mut groups = Vec::new();
    for (failures, members) in classes {
        let parts = (1usize << failures.min(16))
            .min(MAX_SPLIT)
            .min(members.len());
        let size = members.len().div_ceil(parts.max(1));
        groups.extend(members.chunks(size.max(1)).map(<[usize]>::to_vec));
    }
    groups.sort_by_key(|group| group.first().copied());
    groups
}

/// Events sent together, and the request they are sent as (a retry of a v1 request keeps its
/// id and counts its attempt up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Indices into the payloads, in order.
    pub members: Vec<usize>,
    /// The request's identity.
    pub request: RequestMeta,
}

impl Group {
    /// `members` as a new request at `attempt`.
    pub fn new(members: Vec<usize>, attempt: u32) -> Self {
        Group {
            members,
            request: RequestMeta::at_attempt(attempt),
        }
    }

    /// `members` as a new request at `attempt`, its times on this process's clock plus
    /// `clock_offset` (see [`RequestMeta::clock_offset`]).
    pub fn on_clock(members: Vec<usize>, attempt: u32, clock_offset: chrono::Duration) -> Self {
        Group {
            members,
            request: RequestMeta::on_clock(attempt, clock_offset),
        }
    }
}

/// What became of each payload, and the request each was last sent in (`None`: not sent).
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// One fate per payload, in order.
    pub fates: Vec<Fate>,
    /// The request each payload was last sent in.
    pub sent_in: Vec<Option<RequestMeta>>,
}

/// Sends `payloads` in `groups` (see [`groups`]) and returns the fate of each payload, in
/// order. Payloads in no group come back as [`Fate::Paused`] with an empty reason.
/// `historical[i]` says whether payload `i` goes in a `historical_migration` request: a
/// group's historical and live events travel in separate requests.
pub async fn deliver(
    transport: &Transport,
    payloads: &[&str],
    groups: &[Group],
    historical: &[bool],
) -> Report {
    let is_historical = |index: usize| historical.get(index).copied().unwrap_or(false);
    let untried = Fate::Paused {
        reason: String::new(),
    };
    let mut fates = vec![untried.clone(); payloads.len()];
    let mut sent_in = vec![None; payloads.len()];
    let mut streak = 0;
    for Group {
        members: group,
        request,
    } in groups
    {
        let mut sendable = Vec::with_capacity(group.len());
        for &index in group {
            if oversized(payloads[index]) {
                fates[index] = Fate::Dead {
                    reason: format!(
                        "event is {} bytes; PostHog accepts at most about 1 MB",
                        payloads[index].len()
                    ),
                };
            } else if let Some(reason) = unreadable_in_v1(transport.mode(), payloads[index]) {
                fates[index] = Fate::Dead { reason };
            } else {
                sendable.push(index);
            }
        }
        // A group's live and historical events travel in separate requests (the flag is the
        // request's). Keep each request well under PostHog's size limit; only the first part
        // keeps the group's request identity, the others are requests of their own.
        let (past, live): (Vec<usize>, Vec<usize>) = sendable
            .into_iter()
            .partition(|&index| is_historical(index));
        let mut meta = request.clone();
        for (sendable, historical_migration) in [(live, false), (past, true)] {
            let mut start = 0;
            while start < sendable.len() {
                let mut end = start;
                let mut bytes = 0;
                while end < sendable.len()
                    && (end == start || bytes + payloads[sendable[end]].len() < MAX_REQUEST_BYTES)
                {
                    bytes += payloads[sendable[end]].len() + 1;
                    end += 1;
                }
                let part = Part {
                    transport,
                    payloads,
                    historical_migration,
                };
                part.send(&sendable[start..end], meta, &mut fates, &mut sent_in)
                    .await;
                meta = request.part(request.attempt);
                start = end;
            }
        }
        let outcome = group.iter().map(|&index| &fates[index]).find(|fate| {
            matches!(
                fate,
                Fate::Paused { .. } | Fate::Retry { .. } | Fate::Delivered
            )
        });
        match outcome {
            // A wrong key or host is wrong for every group: stop here.
            Some(Fate::Paused { reason }) if !reason.is_empty() => break,
            Some(Fate::Retry { .. }) => {
                streak += 1;
                if streak >= RETRY_STREAK {
                    break;
                }
            }
            Some(Fate::Delivered) => streak = 0,
            _ => {}
        }
    }
    Report { fates, sent_in }
}

/// Why v1 could never settle this payload: v1's verdicts are keyed by the event's uuid, so
/// without one PostHog's answer could not say what became of it, and it would be resent until
/// `max_age`. Only payloads written into the outbox by hand lack one.
fn unreadable_in_v1(mode: CaptureMode, payload: &str) -> Option<String> {
    if mode != CaptureMode::V1 || payload_uuid(payload).is_some() {
        return None;
    }
    Some(
        if serde_json::from_str::<serde::de::IgnoredAny>(payload).is_err() {
            "the payload is not JSON (written into the outbox by hand?)"
        } else {
            "the payload has no uuid (written into the outbox by hand?): v1 capture needs one \
             to read PostHog's verdict on the event"
        }
        .to_owned(),
    )
}

/// What every part of one delivery shares.
#[derive(Clone, Copy)]
struct Part<'a> {
    transport: &'a Transport,
    payloads: &'a [&'a str],
    historical_migration: bool,
}

/// The fate of an event from its v1 verdict.
fn fate_of(verdict: Verdict, retry_after: Option<Duration>) -> Fate {
    match verdict {
        Verdict::Ok => Fate::Delivered,
        Verdict::Retry { details } => Fate::Retry {
            retry_after,
            reason: format!("PostHog asked for this event again (retry: {details})"),
            asked: true,
        },
        Verdict::Missing => Fate::Retry {
            retry_after,
            reason: "PostHog's answer had no result for this event; sent again (PostHog \
                     deduplicates on the uuid)"
                .to_owned(),
            asked: true,
        },
        Verdict::Drop { details } => Fate::Dead {
            reason: format!("drop: PostHog dropped the event ({details})"),
        },
        Verdict::Limited { details } => Fate::Dead {
            reason: format!(
                "limited: PostHog refused the event because a quota is exhausted ({details}); \
                 requeue it once the quota allows"
            ),
        },
        Verdict::Unknown { result, details } => Fate::Dead {
            reason: format!(
                "{result}: PostHog answered with a verdict this version does not know \
                 ({details}); not retried"
            ),
        },
    }
}

impl<'a> Part<'a> {
    /// Sends one part; on 413 or 400 splits it in halves until the culprits stand alone (only
    /// a single event refused is refused for its own sake). v1 answers most bad events with
    /// their own verdicts, but a body it cannot read at all (one event's payload that is not
    /// JSON, written into the outbox by hand) is a 400 for the whole request on v1 too.
    fn send(
        self,
        indices: &'a [usize],
        meta: RequestMeta,
        fates: &'a mut [Fate],
        sent_in: &'a mut [Option<RequestMeta>],
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let part: Vec<&str> = indices.iter().map(|&i| self.payloads[i]).collect();
            let started = std::time::Instant::now();
            let outcome = self
                .transport
                .send(&part, self.historical_migration, &meta)
                .await;
            crate::metrics::request(part.len(), started.elapsed(), outcome_label(&outcome));
            for &index in indices {
                sent_in[index] = Some(meta.clone());
            }
            let splits = matches!(outcome, Outcome::TooLarge | Outcome::Rejected { .. });
            let fate = match outcome {
                Outcome::Delivered => Fate::Delivered,
                Outcome::PerEvent {
                    verdicts,
                    retry_after,
                } => {
                    for (&index, verdict) in indices.iter().zip(verdicts) {
                        fates[index] = fate_of(verdict, retry_after);
                    }
                    return;
                }
                Outcome::Retry {
                    retry_after,
                    reason,
                } => Fate::Retry {
                    retry_after,
                    reason,
                    asked: false,
                },
                Outcome::Misconfigured { reason } => Fate::Paused { reason },
                _ if splits && indices.len() > 1 => {
                    let (left, right) = indices.split_at(indices.len() / 2);
                    let attempt = meta.attempt;
                    self.send(left, meta.part(attempt), fates, sent_in).await;
                    if let Some(Fate::Paused { .. }) = left.first().map(|&i| &fates[i]) {
                        // The set-up broke half-way: the other half waits too.
                        let paused = fates[left[0]].clone();
                        for &index in right {
                            fates[index] = paused.clone();
                        }
                        return;
                    }
                    self.send(right, meta.part(attempt), fates, sent_in).await;
                    return;
                }
                Outcome::TooLarge => Fate::Refused {
                    reason: "413 Payload Too Large: the event alone exceeds the request limit \
                             of PostHog or of a proxy in front of it (a proxy's body limit, such \
                             as nginx's client_max_body_size, is often 1 MB)"
                        .to_owned(),
                },
                Outcome::Rejected { reason } => Fate::Refused { reason },
            };
            for &index in indices {
                fates[index] = fate.clone();
            }
        })
    }
}

/// The `outcome` label of a request, for [`crate::metrics::REQUEST_DURATION`].
fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Delivered => "delivered",
        Outcome::PerEvent { .. } => "per_event",
        Outcome::Retry { .. } => "retry",
        Outcome::TooLarge => "too_large",
        Outcome::Rejected { .. } => "rejected",
        Outcome::Misconfigured { .. } => "misconfigured",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_events_travel_together_and_failing_ones_are_split_ever_finer() {
        assert_eq!(groups(&[0, 0, 0, 0]), [vec![0, 1, 2, 3]]);
        assert_eq!(groups(&[1, 1, 1, 1]), [vec![0, 1], vec![2, 3]]);
        assert_eq!(
            groups(&[2, 2, 2, 2, 0]),
            [vec![0], vec![1], vec![2], vec![3], vec![4]]
        );
        let many: Vec<u32> = vec![9; 500];
        assert_eq!(groups(&many).len(), MAX_SPLIT, "bounded requests per round");
        assert_eq!(groups(&[]), Vec::<Vec<usize>>::new());
    }
}
