//! Request bodies, spliced from events that were serialised when they were staged: v0's
//! `/batch/` body and v1's `/i/v1/analytics/events` body, and their compression.

use flate2::Compression as FlateLevel;

use crate::config::Compression;

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
    push_payloads(&mut body, payloads);
    body.extend_from_slice(b"],\"sent_at\":\"");
    body.extend_from_slice(sent_at.as_bytes());
    body.push(b'"');
    close_body(body, historical_migration)
}

/// `{"created_at":…,"batch":[…][,"historical_migration":true]}`: v1's body. No key and no
/// `sent_at` (the key travels in `Authorization`, the send time in `PostHog-Request-Timestamp`).
pub fn v1_body(payloads: &[&str], historical_migration: bool, created_at: &str) -> Vec<u8> {
    let size = payloads.iter().map(|p| p.len() + 1).sum::<usize>() + 96;
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(b"{\"created_at\":\"");
    body.extend_from_slice(created_at.as_bytes());
    body.extend_from_slice(b"\",\"batch\":[");
    push_payloads(&mut body, payloads);
    body.push(b']');
    close_body(body, historical_migration)
}

/// The payloads, comma-separated: the inside of the `batch` array both versions send.
fn push_payloads(body: &mut Vec<u8>, payloads: &[&str]) {
    for (i, payload) in payloads.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(payload.as_bytes());
    }
}

/// The end both versions' bodies share: the optional `historical_migration` flag and the
/// closing brace.
fn close_body(mut body: Vec<u8>, historical_migration: bool) -> Vec<u8> {
    if historical_migration {
        body.extend_from_slice(b",\"historical_migration\":true");
    }
    body.push(b'}');
    body
}

/// `body` compressed as `compression` says (`None` for [`Compression::None`]). The fast level
/// of each codec: event batches are small and repetitive, so it already gets most of the ratio
/// for a fraction of the CPU.
pub fn compress(body: &[u8], compression: Compression) -> std::io::Result<Option<Vec<u8>>> {
    Ok(Some(match compression {
        Compression::None => return Ok(None),
        Compression::Gzip => gzip(body)?,
        Compression::Deflate => {
            let mut out = Vec::with_capacity(body.len() / 4 + 64);
            deflate_into(body, Framing::Zlib, &mut out)?;
            out
        }
        Compression::Brotli => {
            let mut out = Vec::with_capacity(body.len() / 4 + 64);
            let params = brotli::enc::BrotliEncoderParams {
                quality: 1,
                lgwin: 22,
                ..Default::default()
            };
            brotli::BrotliCompress(&mut &body[..], &mut out, &params)?;
            out
        }
        Compression::Zstd => zstd::bulk::compress(body, 1)?,
    }))
}

/// Gzip at the fast level: the events are small and repetitive, so level 1 already gets most
/// of the ratio for a fraction of the CPU of the default level.
pub fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    // RFC 1952: magic, deflate, no flags, no modification time, fastest level, unknown OS.
    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 0xff];
    let mut out = Vec::with_capacity(body.len() / 4 + 64);
    out.extend_from_slice(&HEADER);
    deflate_into(body, Framing::Raw, &mut out)?;
    let mut crc = flate2::Crc::new();
    crc.update(body);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE is the length modulo 2^32 (RFC 1952); bodies stay far below it.
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    Ok(out)
}

/// Which deflate stream [`deflate_into`] writes: raw (inside gzip's frame) or zlib's.
#[derive(Clone, Copy)]
enum Framing {
    Raw,
    Zlib,
}

/// Compressors kept between requests, per framing, reset before each use. Setting one up costs
/// about a third of compressing a 250-event batch (its hash tables and window, some 300 KB,
/// allocated and zeroed), which a relay under load paid on every request. A few are kept, as
/// many as requests compress at once in practice; a thread-local cache would keep one per
/// runtime thread instead.
static COMPRESSORS: [std::sync::Mutex<Vec<flate2::Compress>>; 2] = [
    std::sync::Mutex::new(Vec::new()),
    std::sync::Mutex::new(Vec::new()),
];

/// Compressors kept per framing at most.
const KEPT_COMPRESSORS: usize = 4;

/// Appends `body` deflated at the fast level to `out`, with a kept compressor if there is one.
fn deflate_into(body: &[u8], framing: Framing, out: &mut Vec<u8>) -> std::io::Result<()> {
    let kept = &COMPRESSORS[framing as usize];
    let reused = crate::sync::lock(kept).pop();
    let mut compressor = match reused {
        Some(mut compressor) => {
            compressor.reset();
            compressor
        }
        None => flate2::Compress::new(FlateLevel::fast(), matches!(framing, Framing::Zlib)),
    };
    deflate_with(&mut compressor, body, out)?;
    // Only a compressor that finished its stream goes back: a failure's state is not reused.
    let mut kept = crate::sync::lock(kept);
    if kept.len() < KEPT_COMPRESSORS {
        kept.push(compressor);
    }
    Ok(())
}

fn deflate_with(
    compressor: &mut flate2::Compress,
    body: &[u8],
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(256));
        }
        let consumed = usize::try_from(compressor.total_in()).unwrap_or(usize::MAX);
        let input = body.get(consumed..).unwrap_or_default();
        let status = compressor
            .compress_vec(input, out, flate2::FlushCompress::Finish)
            .map_err(std::io::Error::other)?;
        if status == flate2::Status::StreamEnd {
            return Ok(());
        }
    }
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
    fn v1_body_has_no_key_and_no_sent_at() {
        let payloads = [r#"{"event":"a","distinct_id":"1"}"#];
        let body = v1_body(&payloads, true, "2026-01-01T00:00:00.000000Z");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["created_at"], "2026-01-01T00:00:00.000000Z");
        assert_eq!(json["batch"][0]["event"], "a");
        assert_eq!(json["historical_migration"], true);
        assert!(json.get("api_key").is_none() && json.get("sent_at").is_none());
        let plain = v1_body(&payloads, false, "t");
        let json: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert!(json.get("historical_migration").is_none());
    }

    #[test]
    fn every_encoding_round_trips() {
        use std::io::Read as _;
        let body = v1_body(&[r#"{"event":"a"}"#; 50], false, "t");
        assert_eq!(compress(&body, Compression::None).unwrap(), None);
        for compression in [
            Compression::Gzip,
            Compression::Deflate,
            Compression::Brotli,
            Compression::Zstd,
        ] {
            let packed = compress(&body, compression).unwrap().unwrap();
            assert!(packed.len() < body.len() / 4, "{compression:?}");
            let mut decoded = Vec::new();
            match compression {
                Compression::Gzip => {
                    flate2::read::GzDecoder::new(&packed[..])
                        .read_to_end(&mut decoded)
                        .unwrap();
                }
                Compression::Deflate => {
                    flate2::read::ZlibDecoder::new(&packed[..])
                        .read_to_end(&mut decoded)
                        .unwrap();
                }
                Compression::Brotli => {
                    brotli::Decompressor::new(&packed[..], 4096)
                        .read_to_end(&mut decoded)
                        .unwrap();
                }
                Compression::Zstd => decoded = zstd::decode_all(&packed[..]).unwrap(),
                Compression::None => unreachable!(),
            }
            assert_eq!(decoded, body, "{compression:?}");
        }
    }

    #[test]
    fn each_body_is_compressed_afresh_by_a_reused_compressor() {
        use std::io::Read as _;
        // Incompressible bytes (so the output outgrows its first allocation), then small
        // bodies: each must decode to itself alone, whatever the thread's compressor did before.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let bodies = [
            noise.clone(),
            b"{}".to_vec(),
            noise[..1000].to_vec(),
            Vec::new(),
        ];
        for body in bodies.iter().chain(bodies.iter()) {
            let mut decoded = Vec::new();
            flate2::read::GzDecoder::new(&gzip(body).unwrap()[..])
                .read_to_end(&mut decoded)
                .unwrap();
            assert_eq!(&decoded, body);
            let zlib = compress(body, Compression::Deflate).unwrap().unwrap();
            let mut decoded = Vec::new();
            flate2::read::ZlibDecoder::new(&zlib[..])
                .read_to_end(&mut decoded)
                .unwrap();
            assert_eq!(&decoded, body);
        }
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
