//! HTML building: every text that reaches a page goes through [`esc`] (AD
//! content, host names, finding evidence and query parameters are all
//! hostile), the page frame, and the response headers every page carries.

use std::fmt::Write;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::session::Session;

/// `s` with the five HTML-significant characters escaped: safe inside
/// element content and inside double- or single-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` percent-encoded for a query string value.
pub fn q(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The sections of the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Matrix,
    Plans,
    Audit,
    Exposure,
    None,
}

const NAV: [(Nav, &str, &str); 5] = [
    (Nav::Overview, "/ui/", "Overview"),
    (Nav::Matrix, "/ui/matrix", "Readiness"),
    (Nav::Plans, "/ui/plans", "Plans"),
    (Nav::Audit, "/ui/audit", "Audit"),
    (Nav::Exposure, "/ui/exposure", "Exposure"),
];

/// A whole page: the frame (navigation, who is signed in, sign-out form) around `body`.
pub fn page(title: &str, nav: Nav, session: Option<&Session>, body: &str) -> Response {
    let mut h = String::with_capacity(body.len() + 2048);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · kcdsync</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"stylesheet\" href=\"/ui/style.css\"><script src=\"/ui/app.js\" defer></script></head><body>",
        esc(title)
    );
    if let Some(s) = session {
        h.push_str("<header><span class=\"brand\">kcdsync</span><nav>");
        for (n, href, label) in NAV {
            let cur = if n == nav { " aria-current=\"page\"" } else { "" };
            let _ = write!(h, "<a href=\"{href}\"{cur}>{label}</a>");
        }
        let _ = write!(
            h,
            "</nav><span class=\"live\" id=\"live\" title=\"live updates\">●</span>\
             <span class=\"who\">{} ({})</span>\
             <form method=\"post\" action=\"/ui/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form></header>",
            esc(&s.who.name),
            role_name(s.who.role),
            esc(&s.csrf)
        );
    }
    let _ = write!(
        h,
        "<main id=\"main\"><h1>{}</h1>{body}</main></body></html>",
        esc(title)
    );
    respond(StatusCode::OK, h)
}

pub fn role_name(r: crate::config::Role) -> &'static str {
    match r {
        crate::config::Role::Read => "read",
        crate::config::Role::Write => "write",
    }
}

/// An HTML response with the headers every dashboard response carries: no
/// caching anywhere (pages hold fleet state and a CSRF token), a CSP that
/// allows only this origin's own script and style (no inline script can run,
/// whatever a page were to echo), no framing, no sniffing, no referrer.
pub fn respond(status: StatusCode, html: String) -> Response {
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    r
}

pub fn secure_headers(h: &mut axum::http::HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

/// An error page: what went wrong and what to do, with its HTTP status.
pub fn error(status: StatusCode, session: Option<&Session>, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let mut r = page(
        title,
        Nav::None,
        session,
        &format!("<p class=\"error\">{}</p>", esc(message)),
    );
    *r.status_mut() = status;
    r
}

/// A `<span>` badge with a class from a fixed set and escaped text.
pub fn badge(class: &'static str, text: &str) -> String {
    format!("<span class=\"badge {class}\">{}</span>", esc(text))
}

/// Milliseconds since the epoch as `2026-12-04 01:40:11Z`.
pub fn when_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| "—".to_owned())
}

pub fn when(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(
        || "—".to_owned(),
        |t| when_ms(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn markup_in_ad_content_is_shown_not_run() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(q("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }

    proptest! {
        #[test]
        fn escaped_text_never_holds_a_markup_character(s in ".*") {
            let e = esc(&s);
            prop_assert!(!e.contains(['<', '>', '"', '\'']));
            // Every `&` starts one of the five entities.
            for (i, _) in e.match_indices('&') {
                let rest = &e[i..];
                prop_assert!(["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"].iter().any(|x| rest.starts_with(x)));
            }
        }
    }
}
