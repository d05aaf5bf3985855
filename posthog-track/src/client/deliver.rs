//! Delivery of a set of events with PostHog's rules: split what is too large, isolate what is
//! rejected, and report per event what happened, so that one bad event never holds back or
//! takes down the others.

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
}

/// Sends `payloads` and returns the fate of each, in order.
pub async fn deliver(
    transport: &Transport,
    payloads: &[&str],
    historical_migration: bool,
) -> Vec<Fate> {
    let mut fates = vec![Fate::Delivered; payloads.len()];
    let mut sendable = Vec::with_capacity(payloads.len());
    for (index, payload) in payloads.iter().enumerate() {
        if oversized(payload) {
            fates[index] = Fate::Dead {
                reason: format!(
                    "event is {} bytes; PostHog accepts at most about 1 MB",
                    payload.len()
                ),
            };
        } else {
            sendable.push(index);
        }
    }
    // Keep each request well under PostHog's size limit.
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
            &mut fates,
        )
        .await;
        start = end;
    }
    fates
}

/// Sends one part; on 413 or 400 splits it in halves until the culprits stand alone.
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
            // Never retried: a wrong key does not fix itself. Outbox events are kept as dead
            // with this reason, to be requeued once the key is fixed.
            Outcome::Unauthorized { reason, .. } => Fate::Dead {
                reason: format!(
                    "{reason} (check POSTHOG_API_KEY; requeue these events once it is fixed)"
                ),
            },
            Outcome::TooLarge | Outcome::Rejected { .. } if indices.len() > 1 => {
                let (left, right) = indices.split_at(indices.len() / 2);
                send_part(transport, payloads, left, historical_migration, fates).await;
                send_part(transport, payloads, right, historical_migration, fates).await;
                return;
            }
            Outcome::TooLarge => Fate::Dead {
                reason: "413 Payload Too Large: the event alone exceeds PostHog's request limit"
                    .to_owned(),
            },
            Outcome::Rejected { reason, .. } => Fate::Dead { reason },
        };
        for &index in indices {
            fates[index] = fate.clone();
        }
    })
}
