//! What the flag clients share over HTTP: a client built without panicking, and answers read
//! up to a bound.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;

/// The HTTP client of one flags endpoint, or why it could not be built. Built once, when the
/// tracker is; the error surfaces on the first request, typed, instead of a panic in
/// `reqwest::Client::default()`.
#[derive(Debug, Clone)]
pub(crate) struct HttpClient(Result<reqwest::Client, Arc<reqwest::Error>>);

impl HttpClient {
    pub(crate) fn new(timeout: Duration) -> Self {
        // No redirects: the definitions URL carries the project key, which a redirect would
        // hand to another host; a redirect is reported as the error it is.
        Self::from_builder(
            reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none()),
        )
    }

    pub(crate) fn from_builder(builder: reqwest::ClientBuilder) -> Self {
        HttpClient(builder.build().map_err(Arc::new))
    }

    /// The client, or [`Error::Flags`] with the builder's error as its source.
    pub(crate) fn get(&self) -> Result<&reqwest::Client, Error> {
        self.0.as_ref().map_err(|error| {
            Error::flags(
                "the HTTP client for feature flags could not be built",
                Some(Box::new(Arc::clone(error))),
            )
        })
    }
}

/// What an operator should check when a flags endpoint answers `status`: the host, for a
/// redirect (never followed: it would hand the key to another host) or a missing endpoint;
/// nothing to add otherwise.
pub(crate) fn host_hint(status: reqwest::StatusCode) -> &'static str {
    match status.as_u16() {
        300..=399 => {
            " (check POSTHOG_HOST: it answered with a redirect, which is not followed since it \
             would send the key elsewhere; use the final URL)"
        }
        404 | 405 => {
            " (check POSTHOG_HOST: it must be the PostHog host, e.g. https://us.i.posthog.com, \
             or a proxy that forwards the /flags endpoints)"
        }
        _ => "",
    }
}

/// Most of an error answer a message shows.
pub(crate) const ERROR_BODY_BYTES: usize = 4 * 1024;
/// Characters of an error answer kept in a message.
const ERROR_BODY_CHARS: usize = 300;

/// A body read up to `limit` bytes, and whether there was more. Never reads the rest.
pub(crate) async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// The beginning of an error answer, for a message: a bounded read with `secret` redacted
/// (before it is cut, so no prefix of it survives), at most [`ERROR_BODY_CHARS`] characters,
/// `...` when cut.
pub(crate) async fn error_excerpt(response: reqwest::Response, secret: &str) -> String {
    let (body, more) = match read_bounded(response, ERROR_BODY_BYTES).await {
        Ok(read) => read,
        Err(_) => return String::new(),
    };
    excerpt(&body, more, secret)
}

/// The beginning of an answer already read (`more` when it was cut), for a message: `secret`
/// redacted before cutting, at most [`ERROR_BODY_CHARS`] characters, `...` when cut.
pub(crate) fn excerpt(body: &[u8], more: bool, secret: &str) -> String {
    let text = crate::client::transport::redact(&String::from_utf8_lossy(body), secret);
    let mut excerpt: String = text.chars().take(ERROR_BODY_CHARS).collect();
    if more || excerpt.len() < text.len() {
        excerpt.push_str("...");
    }
    excerpt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_cannot_be_built_is_an_error_not_a_panic() {
        let client = HttpClient::from_builder(reqwest::Client::builder().user_agent("bad\nvalue"));
        let error = client.get().unwrap_err();
        assert!(matches!(error, Error::Flags { .. }), "{error:?}");
        assert!(
            std::error::Error::source(&error).is_some(),
            "keeps reqwest's error"
        );
    }
}
