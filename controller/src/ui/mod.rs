//! The dashboard: server-rendered pages under `/ui/` on the fleet API's own
//! listener (same TLS, same connection limits, same callers).
//!
//! Sign-in takes an API token (or the client certificate the browser
//! presented) and starts a session ([`session`]); every page and action then
//! calls the FleetService in-process as that caller, so roles, leadership,
//! paging and errors are the API's, not a second copy of them. Every state
//! change is a POST carrying the session's CSRF token, refused when it comes
//! from another site. Live updates: `/ui/events` streams the API's Watch
//! events as server-sent events; `app.js` reloads the page's main part on each.
//!
//! - `session`: the session table, cookie and CSRF token;
//! - `throttle`: wrong sign-ins per client address;
//! - `html`: escaping, the page frame, the headers every response carries;
//! - `pages`: one module per page.

// Handlers and their helpers return `Result<_, Response>` whose Err is the response itself,
// handed straight back to axum: boxing it would only add an allocation per refused request.
#![allow(clippy::result_large_err)]

mod events;
mod html;
mod pages;
pub mod session;
mod throttle;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::config::Role;
use crate::grpc::auth::Verified;
use crate::grpc::fleet::FleetApi;
use html::{Nav, esc};
use session::{Session, Sessions};

/// A form body larger than this is refused before it is read.
const MAX_FORM_BYTES: usize = 16 * 1024;

#[derive(Clone)]
pub struct Ui {
    api: FleetApi,
    sessions: Arc<Sessions>,
    throttle: Arc<throttle::Throttle>,
}

/// The dashboard's routes, to merge with the gRPC services of the API listener.
pub fn router(api: FleetApi) -> Router {
    let ui = Ui {
        api,
        sessions: Arc::new(Sessions::default()),
        throttle: Arc::default(),
    };
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(pages::overview::show))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/matrix", get(pages::matrix::show))
        .route("/ui/check", get(pages::matrix::check))
        .route("/ui/plans", get(pages::plans::list))
        .route("/ui/plans/{id}", get(pages::plans::show))
        .route("/ui/plans/{id}/approve", post(pages::plans::approve))
        .route("/ui/plans/{id}/reject", post(pages::plans::reject))
        .route("/ui/audit", get(pages::audit::show))
        .route("/ui/exposure", get(pages::exposure::show))
        .route("/ui/events", get(events::stream))
        .route(
            "/ui/style.css",
            get(|| asset("text/css", include_str!("assets/style.css"))),
        )
        .route(
            "/ui/app.js",
            get(|| asset("text/javascript", include_str!("assets/app.js"))),
        )
        .route("/ui/{*rest}", get(not_found).post(not_found))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(ui)
}

async fn asset(kind: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    html::secure_headers(r.headers_mut());
    r
}

async fn not_found(v: Visitor) -> Response {
    html::error(
        StatusCode::NOT_FOUND,
        v.session.as_ref().map(|(_, s)| s),
        "no such page",
    )
}

/// Who is asking: their live session (re-checked against the current callers
/// table, so a token removed by SIGHUP ends it at the next click), the client
/// certificate the TLS handshake verified, and where the request says it came from.
pub struct Visitor {
    session: Option<(String, Session)>,
    cert: Option<Vec<u8>>,
    cross_site: bool,
    ip: Option<std::net::IpAddr>,
}

impl FromRequestParts<Ui> for Visitor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Self, Self::Rejection> {
        let session = session::from_headers(&parts.headers).and_then(|id| {
            let mut s = ui.sessions.get(&id)?;
            match ui.api.state.auth.recheck(&s.who) {
                Ok((name, role)) => {
                    (s.who.name, s.who.role) = (name, role);
                    Some((id, s))
                }
                Err(_) => {
                    ui.sessions.end(&id);
                    None
                }
            }
        });
        let tls = parts.extensions.get::<TlsConnectInfo<TcpConnectInfo>>();
        let cert = tls
            .and_then(|i| i.peer_certs())
            .and_then(|c| c.first().map(|c| c.as_ref().to_vec()));
        let ip = tls.and_then(|i| i.get_ref().remote_addr()).map(|a| a.ip());
        // Browsers say where a request comes from; anything but this origin
        // (or a typed URL) may not change state.
        let cross_site = parts
            .headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v != "same-origin" && v != "none");
        Ok(Visitor {
            session,
            cert,
            cross_site,
            ip,
        })
    }
}

impl Visitor {
    /// The session a page needs, or a redirect to sign in.
    fn reader(&self) -> Result<&Session, Response> {
        self.session
            .as_ref()
            .map(|(_, s)| s)
            .ok_or_else(|| Redirect::to("/ui/login").into_response())
    }

    /// The session a state change needs: signed in, with this session's CSRF
    /// token in the form, from this site, with the role `need`. 403 otherwise.
    fn changer(&self, form: &Form, need: Role, what: &str) -> Result<&Session, Response> {
        let forbidden = |s: Option<&Session>, m: &str| html::error(StatusCode::FORBIDDEN, s, m);
        let Some((_, s)) = self.session.as_ref() else {
            return Err(forbidden(None, "sign in first"));
        };
        if self.cross_site || !s.csrf_ok(form.get("csrf")) {
            return Err(forbidden(
                Some(s),
                "this form is not from this session (a missing or stale CSRF token, or another site): reload the page and try again",
            ));
        }
        if s.who.role < need {
            return Err(forbidden(
                Some(s),
                &format!("{} has the read role; {what} needs the write role", s.who.name),
            ));
        }
        Ok(s)
    }
}

/// A url-encoded form or query string, first value of each key.
pub struct Form(Vec<(String, String)>);

impl Form {
    fn parse(bytes: &[u8]) -> Form {
        Form(form_urlencoded::parse(bytes).into_owned().collect())
    }

    fn query(q: Option<&str>) -> Form {
        Form::parse(q.unwrap_or("").as_bytes())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A trimmed, non-empty value of at most 256 characters.
    fn text(&self, key: &str) -> Option<&str> {
        self.get(key)
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.chars().count() <= 256)
    }
}

impl Ui {
    /// A FleetService request made as `who`.
    fn request<T>(who: &Verified, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.extensions_mut().insert(who.clone());
        r
    }
}

/// What a page handler answers: the page, or what stands in for it (the sign-in redirect,
/// an error page), so handlers can use `?`.
type Page = Result<Response, Response>;

/// An API call's message, or the error page for its status.
fn answer<T>(s: &Session, r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, Response> {
    r.map(tonic::Response::into_inner).map_err(|e| api_error(s, &e))
}

/// The page for an API error: its message, with the HTTP status that matches its code.
fn api_error(s: &Session, e: &tonic::Status) -> Response {
    use tonic::Code;
    let status = match e.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => StatusCode::CONFLICT,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    html::error(status, Some(s), e.message())
}

async fn login_form(v: Visitor) -> Response {
    if v.session.is_some() {
        return Redirect::to("/ui/").into_response();
    }
    login_page(&v, StatusCode::OK, None)
}

fn login_page(v: &Visitor, status: StatusCode, message: Option<&str>) -> Response {
    let mut b = String::new();
    if let Some(m) = message {
        b.push_str(&format!("<p class=\"error\">{}</p>", esc(m)));
    }
    b.push_str(
        "<form method=\"post\" action=\"/ui/login\" class=\"login\">\
         <label for=\"token\">API token</label>\
         <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"off\" required>\
         <button type=\"submit\" name=\"with\" value=\"token\">Sign in</button></form>\
         <p class=\"hint\">A token from the controller's <code>api.tokens_file</code>; its role (read or write) \
         is what this session may do.</p>",
    );
    if v.cert.is_some() {
        b.push_str(
            "<form method=\"post\" action=\"/ui/login\"><button type=\"submit\" name=\"with\" value=\"certificate\">\
             Sign in with your client certificate</button></form>",
        );
    }
    let mut r = html::page("Sign in", Nav::None, None, &b);
    *r.status_mut() = status;
    r
}

async fn login(State(ui): State<Ui>, v: Visitor, body: Bytes) -> Response {
    // No session yet, so no CSRF token: another site must not sign a browser
    // in as someone else (login CSRF).
    if v.cross_site {
        return html::error(StatusCode::FORBIDDEN, None, "sign-in from another site is refused");
    }
    let now = std::time::Instant::now();
    if let Some(ip) = v.ip
        && let Err(wait) = ui.throttle.check(ip, now)
    {
        tracing::warn!(%ip, "dashboard sign-in refused: too many wrong tokens from this address");
        return login_page(
            &v,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "too many wrong sign-ins from this address: try again in {} s",
                wait.as_secs().max(1)
            )),
        );
    }
    let form = Form::parse(&body);
    let who = match form.get("with") {
        Some("certificate") => match v.cert.as_deref() {
            Some(der) => ui.api.state.auth.by_cert(der).map_err(|e| e.to_string()),
            None => Err("this browser presented no client certificate".to_owned()),
        },
        _ => match form
            .get("token")
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 1024)
        {
            Some(t) => ui.api.state.auth.by_token(t).map_err(|e| e.to_string()),
            None => Err("enter an API token".to_owned()),
        },
    };
    match who {
        Ok(who) => {
            tracing::info!(caller = %who.name, "dashboard sign-in");
            if let Some(ip) = v.ip {
                ui.throttle.succeeded(ip);
            }
            if let Some((old, _)) = &v.session {
                ui.sessions.end(old);
            }
            let id = ui.sessions.start(who);
            let mut r = Redirect::to("/ui/").into_response();
            r.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_str(&session::set_cookie(&id)).expect("hex cookie"),
            );
            html::secure_headers(r.headers_mut());
            r
        }
        Err(m) => {
            tracing::info!(ip = ?v.ip, "dashboard sign-in refused: {m}");
            if let Some(ip) = v.ip {
                ui.throttle.failed(ip, now);
            }
            login_page(&v, StatusCode::UNAUTHORIZED, Some(&m))
        }
    }
}

async fn logout(State(ui): State<Ui>, v: Visitor, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(r) = v.changer(&form, Role::Read, "signing out") {
        return r;
    }
    if let Some((id, _)) = &v.session {
        ui.sessions.end(id);
    }
    let mut r = Redirect::to("/ui/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&session::clear_cookie()).expect("static cookie"),
    );
    html::secure_headers(r.headers_mut());
    r
}
