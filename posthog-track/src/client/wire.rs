//! The `/batch/` request body, spliced from events that were serialised when they were staged.

use std::io::Write as _;

use flate2::Compression;
use flate2::write::GzEncoder;

/// PostHog discards events over 1 MB; refuse them at the source with room for the envelope.
pub const MAX_EVENT_BYTES: usize = 900 * 1024;

/// Requests stay far below PostHog's 20 MB limit: a large request is slow to retry whole.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// `{"api_key":…,"batch":[…],"sent_at":…[,"historical_migration":true]}`.
///
/// Payloads are complete event objects already; they are copied, never parsed again.
pub fn batch_body(
    api_key: &str,
    payloads: &[&str],
    historical_migration: bool,
    sent_at: &str,
) -> Vec<u8> {
    let size = payloads.iter().map(|p| p.len() + 1).sum::<usize>() + api_key.len() + 96;
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(b"{\"api_key\":");
    // serde_json cannot fail to write a str into a Vec.
    let _ = serde_json::to_writer(&mut body, api_key);
    body.extend_from_slice(b",\"batch\":[");
    for (i, payload) in payloads.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(payload.as_bytes());
    }
    body.extend_from_slice(b"],\"sent_at\":\"");
    body.extend_from_slice(sent_at.as_bytes());
    body.push(b'"');
    if historical_migration {
        body.extend_from_slice(b",\"historical_migration\":true");
    }
    body.push(b'}');
    body
}

/// Gzip at the fast level: the events are small and repetitive, so level 1 already gets most
/// of the ratio for a fraction of the CPU of the default level.
pub fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4 + 64), Compression::fast());
    encoder.write_all(body)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_valid_json_with_payloads_verbatim() {
        let payloads = [
            r#"{"event":"a","distinct_id":"1"}"#,
            r#"{"event":"b","distinct_id":"2"}"#,
        ];
        let body = batch_body("phc_key", &payloads, true, "2026-01-01T00:00:00.000000Z");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["api_key"], "phc_key");
        assert_eq!(json["batch"][1]["event"], "b");
        assert_eq!(json["historical_migration"], true);
        assert_eq!(json["sent_at"], "2026-01-01T00:00:00.000000Z");
        let plain = batch_body("k", &payloads[..1], false, "t");
        assert!(
            !String::from_utf8(plain)
                .unwrap()
                .contains("historical_migration")
        );
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let body = batch_body("k", &[r#"{"event":"a"}"#; 50], false, "t");
        let compressed = gzip(&body).unwrap();
        assert!(compressed.len() < body.len() / 4);
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, body);
    }
}
