//! Delivery of a set of events with PostHog's rules: split what is too large, isolate what is
//! rejected or keeps failing, stop at a configuration failure, and report per event what
//! happened, so that one bad event never holds back or takes down the others.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::transport::{Outcome, Transport, oversized};
use super::wire::MAX_REQUEST_BYTES;

/// What became of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Delivered,
    /// Try again later: a transient failure.
    Retry {
        retry_after: Option<Duration>,
        reason: String,
    },
    /// PostHog will never accept it: dead-letter it with the reason.
    Dead {
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

/// Sends `payloads` in `groups` (see [`groups`]) and returns the fate of each payload, in
/// order. Payloads in no group come back as [`Fate::Paused`] with an empty reason.
/// `historical[i]` says whether payload `i` goes in a `historical_migration` request: a
/// group's historical and live events travel in separate requests.
pub async fn deliver(
    transport: &Transport,
    payloads: &[&str],
    groups: &[Vec<usize>],
    historical: &[bool],
) -> Vec<Fate> {
    let is_historical = |index: usize| historical.get(index).copied().unwrap_or(false);
    let untried = Fate::Paused {
        reason: String::new(),
    };
    let mut fates = vec![untried.clone(); payloads.len()];
    let mut streak = 0;
    for group in groups {
        let mut sendable = Vec::with_capacity(group.len());
        for &index in group {
            if oversized(payloads[index]) {
                fates[index] = Fate::Dead {
                    reason: format!(
                        "event is {} bytes; PostHog accepts at most about 1 MB",
                        payloads[index].len()
                    ),
                };
            } else {
                sendable.push(index);
            }
        }
        let (past, live): (Vec<usize>, Vec<usize>) = sendable
            .into_iter()
            .partition(|&index| is_historical(index));
        for (sendable, historical_migration) in [(live, false), (past, true)] {
            send_parts(
                transport,
                payloads,
                &sendable,
                historical_migration,
                &mut fates,
            )
            .await;
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
    fates
}

/// Sends `sendable` in requests that stay well under PostHog's size limit.
async fn send_parts(
    transport: &Transport,
    payloads: &[&str],
    sendable: &[usize],
    historical_migration: bool,
    fates: &mut [Fate],
) {
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
        send_part(
            transport,
            payloads,
            &sendable[start..end],
            historical_migration,
            fates,
        )
        .await;
        start = end;
    }
}

/// Sends one part; on 413 or 400 splits it in halves until the culprits stand alone (only a
/// single event refused is refused for its own sake).
fn send_part<'a>(
    transport: &'a Transport,
    payloads: &'a [&'a str],
    indices: &'a [usize],
    historical_migration: bool,
    fates: &'a mut [Fate],
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        let part: Vec<&str> = indices.iter().map(|&i| payloads[i]).collect();
        let outcome = transport.send(&part, historical_migration).await;
        let fate = match outcome {
            Outcome::Delivered => Fate::Delivered,
            Outcome::Retry {
                retry_after,
                reason,
            } => Fate::Retry {
                retry_after,
                reason,
            },
            Outcome::Misconfigured { reason } => Fate::Paused { reason },
            Outcome::TooLarge | Outcome::Rejected { .. } if indices.len() > 1 => {
                let (left, right) = indices.split_at(indices.len() / 2);
                send_part(transport, payloads, left, historical_migration, fates).await;
                if let Some(Fate::Paused { .. }) = left.first().map(|&i| &fates[i]) {
                    // The set-up broke half-way: the other half waits too.
                    let paused = fates[left[0]].clone();
                    for &index in right {
                        fates[index] = paused.clone();
                    }
                    return;
                }
                send_part(transport, payloads, right, historical_migration, fates).await;
                return;
            }
            Outcome::TooLarge => Fate::Dead {
                reason: "413 Payload Too Large: the event alone exceeds PostHog's request limit"
                    .to_owned(),
            },
            Outcome::Rejected { reason } => Fate::Dead { reason },
        };
        for &index in indices {
            fates[index] = fate.clone();
        }
    })
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
