//! What every request passes before a handler sees it: a path that decodes
//! to UTF-8, no NUL character in the path, the query or a body (the
//! WhatsApp webhook's body excepted: it replaces them), a body within
//! [`MAX_BODY`]; a JSON body's byte-order mark is dropped.
//!
//! One place rather than one check per extractor: PostgreSQL's `text`
//! cannot hold U+0000 (a NUL reaching a query is a 500, and one written
//! into an instance's JSON state as `\u0000` breaks every later `::jsonb`
//! read of that row), and SQLite would store what PostgreSQL refuses; a
//! path that is not UTF-8 would be axum's own plain-text 400.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Error, MAX_BODY};

/// Refuses a request whose path, query or body holds a NUL, whose path is
/// not UTF-8 once decoded, or whose body is larger than [`MAX_BODY`].
pub(super) async fn check(request: Request, next: Next) -> Response {
    let uri = request.uri();
    let Some(path) = percent_decoded(uri.path()) else {
        return Error::InvalidPath.into_response();
    };
    if path.contains('\0') || uri.query().is_some_and(|q| q.contains("%00")) {
        return Error::NulCharacter.into_response();
    }
    // No handler reads the body of these: leave it unread.
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|t| t.split(';').next().unwrap_or(t).trim().to_ascii_lowercase());
    let form = content_type.as_deref() == Some("application/x-www-form-urlencoded");
    let json = content_type
        .as_deref()
        .is_some_and(|t| t == "application/json" || t.ends_with("+json"));
    let (parts, body) = request.into_parts();
    // Handlers buffer their bodies anyway; reading it here costs no copy.
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_large {
                Error::BodyTooLarge { limit: MAX_BODY }
            } else {
                Error::BodyUnreadable
            }
            .into_response();
        }
    };
    // The WhatsApp webhook replaces NULs itself (a refusal would hold back
    // the event's other messages: Meta sends it again and again).
    let signed = parts.uri.path() == "/webhooks/whatsapp";
    if !signed && has_nul(&bytes, form) {
        return Error::NulCharacter.into_response();
    }
    // A byte-order mark before JSON (what some Windows tools write) is
    // dropped, as RFC 8259 allows, rather than refused as a syntax error.
    // Not from a signed body: its signature covers the bytes as sent.
    let bytes = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) if json && !signed => bytes.slice(bytes.len() - rest.len()..),
        _ => bytes,
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// `text` with its `%XX` escapes decoded, if that is UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let hex = |b: u8| (b as char).to_digit(16);
    let raw = text.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match (
            raw[i],
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Whether a body holds a NUL: a raw 0 byte, a `form`'s `%00`, or JSON's
/// `\u0000` escape (not when its backslash is itself escaped, `\\u0000`,
/// which is the text `\u0000`). In JSON, `%00` is text.
fn has_nul(body: &[u8], form: bool) -> bool {
    if body.contains(&0) {
        return true;
    }
    if form {
        return body.windows(3).any(|w| w == b"%00");
    }
    body.windows(6).enumerate().any(|(at, w)| {
        w == b"\\u0000" && body[..at].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 0
    })
}

#[cfg(test)]
mod tests {
    use super::{has_nul, percent_decoded};

    #[test]
    fn nul_in_a_body_is_found_in_each_spelling() {
        assert!(has_nul(b"{\"a\": \"x\\u0000\"}", false));
        assert!(has_nul(b"{\"a\\u0000\": 1}", false));
        assert!(has_nul(b"nombre=x%00y", true));
        assert!(has_nul(b"a\0b", false));
        assert!(has_nul(b"\"\\\\\\u0000\"", false)); // an escaped backslash, then a NUL
        assert!(!has_nul(b"{\"a\": \"x\\\\u0000\"}", false)); // the text \u0000
        assert!(!has_nul(b"{\"a\": \"x\\u0001 %01\"}", false));
        assert!(!has_nul(b"{\"url\": \"https://x/?a=%00\"}", false)); // text in JSON
        assert!(!has_nul(b"", false));
        assert!(!has_nul(b"nota=a%5Cu0000", true)); // the text \u0000 in a form
    }

    #[test]
    fn paths_are_decoded() {
        assert_eq!(percent_decoded("/a%20b").as_deref(), Some("/a b"));
        assert_eq!(percent_decoded("/x%00").as_deref(), Some("/x\0"));
        assert_eq!(percent_decoded("/%C3%B1").as_deref(), Some("/ñ"));
        assert_eq!(percent_decoded("/%FF"), None);
        assert_eq!(percent_decoded("/100%").as_deref(), Some("/100%"));
        assert_eq!(percent_decoded("/%zz").as_deref(), Some("/%zz"));
    }
}
