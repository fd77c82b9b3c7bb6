//! The web UI: server-rendered pages (askama) with htmx for the inbox's
//! refresh, served by `tramite serve` at `/`. Everything it needs is in the
//! binary (templates compiled in, htmx and mermaid embedded); it calls the
//! same engine functions as the JSON API, with the same role checks.
//!
//! Sign-in takes a user's token and keeps a signed session (not the token)
//! in an HttpOnly, SameSite=Strict cookie; the language (Spanish by
//! default) and the inbox's filters are other cookies. What a page
//! shows of a procedure — steps, labels, forms, instructions, documents,
//! indicators — comes from its definition; nothing here knows P06.

mod text;
mod views;

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value};
use tramite_engine::definition::{NodeKind, VarType};
use tramite_engine::runtime::{CompleteTask, IndicatorQuery};
use tramite_engine::store::tasks::Filter;
use tramite_engine::text::Lang;

use crate::http::auth::SignedSession;
use crate::http::{AppState, Error, User};
use text::Words;
use views::*;

type Shared = State<Arc<AppState>>;

/// The web session (signed, not the token: see `Users::session`).
const SESSION_COOKIE: &str = "tramite_session";
/// The same over HTTPS: a `__Host-` cookie cannot be set by a sibling
/// subdomain (which could otherwise plant its own session under a longer
/// path, sent before ours), so it is the one read when present.
const HOST_SESSION_COOKIE: &str = "__Host-tramite_session";
const LANG_COOKIE: &str = "tramite_lang";
/// The inbox's last filters.
const INBOX_COOKIE: &str = "tramite_inbox";
const HTMX: &[u8] = include_bytes!("../../assets/htmx-2.0.11.min.js");
const MERMAID: &[u8] = include_bytes!("../../assets/mermaid-11.17.2.min.js");
const CSS: &str = include_str!("../../assets/app.css");

/// The pages' routes (merged into the API's router).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/inbox") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", get(forget).post(logout))
        .route("/lang/{lang}", get(set_lang))
        .route("/inbox", get(inbox))
        .route("/inbox/rows", get(inbox_rows))
        .route("/tasks/{id}", get(task_page).post(task_submit))
        .route("/tasks/{id}/claim", post(task_claim))
        .route("/tasks/{id}/unclaim", post(task_unclaim))
        .route("/instances", get(instances))
        .route("/instances/{id}", get(instance_page))
        .route("/instances/{id}/documents/{doc}", get(document_page))
        .route("/definitions", get(definitions))
        .route("/definitions/{code}", get(definition_page))
        .route("/incidents", get(incidents))
        .route("/incidents/{id}/retry", post(incident_retry))
        .route("/indicators", get(indicators))
        .route("/keepalive", get(keep_alive))
        .route(
            "/assets/htmx.min.js",
            get(|| asset(HTMX, "text/javascript")),
        )
        .route(
            "/assets/mermaid.min.js",
            get(|| asset(MERMAID, "text/javascript")),
        )
        .route("/assets/app.css", get(|| asset(CSS.as_bytes(), "text/css")))
        .layer(axum::middleware::from_fn(page_headers))
        .layer(axum::middleware::from_fn(same_origin))
}

/// A form posted from another site is refused before its handler runs:
/// the session cookie is `SameSite=Strict`, but SameSite counts every
/// subdomain of one domain as one site, so a compromised sibling page
/// could still complete tasks or sign an agent in as someone else.
/// Browsers send `Origin` (or at least `Referer`) with every form POST; it
/// must name the host the browser asked (`Host`, or `X-Forwarded-Host`
/// behind a proxy that rewrites `Host`). A POST with neither is not a
/// browser's and carries no ambient cookie to abuse.
async fn same_origin(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if request.method() != axum::http::Method::POST {
        return next.run(request).await;
    }
    let headers = request.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let sent_from = text("origin").or_else(|| text("referer"));
    if let Some(from) = sent_from {
        let from_host = from
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or_default());
        // Behind chained proxies `X-Forwarded-Host` is a list; its first
        // entry is the host the browser asked.
        let forwarded = text("x-forwarded-host")
            .and_then(|v| v.split(',').next())
            .map(str::trim);
        let asked = [text("host"), forwarded];
        if from_host.is_none_or(|h| !asked.contains(&Some(h))) {
            tracing::warn!(origin = from, "a form posted from another site was refused");
            let (w, _) = words(headers);
            return PageError {
                w,
                error: Error::Forbidden {
                    reason: "a form sent from another site".into(),
                },
                saying: None,
                user: None,
            }
            .into_response();
        }
    }
    next.run(request).await
}

/// A browser that asked for a page (`Accept: text/html`) outside the API
/// gets a refusal made before any page handler (no such address, a wrong
/// method, a body too large, a timeout) as a page in its language, not the
/// API's problem+json.
pub(crate) async fn as_page(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    let api = path.starts_with("/api/") || path.starts_with("/webhooks/");
    let browser = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let (w, _) = words(request.headers());
    let response = next.run(request).await;
    let problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/problem+json"));
    if api || !browser || !problem {
        return response;
    }
    let status = response.status();
    let message = match status {
        StatusCode::NOT_FOUND => w.not_found,
        StatusCode::FORBIDDEN => w.forbidden,
        s if s.is_client_error() => w.bad_request,
        _ => w.error,
    };
    let page = ErrorPage {
        w,
        user: None,
        message,
    };
    (status, render(&page)).into_response()
}

/// Pages hold clients' data, so none is kept by the browser, and none is
/// shown inside another site's frame: on a shared
/// call-centre PC the Back button after "Salir" must not bring back the
/// last agent's task (assets set their own caching). An htmx request
/// whose session has ended (the inbox's refresh) is told to load the
/// sign-in page, instead of having it pasted into the task table.
async fn page_headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let htmx = request.headers().contains_key("hx-request");
    let back = back_after_sign_in(&request);
    let (w, _) = words(request.headers());
    let mut response = next.run(request).await;
    // axum's own refusals (a query or a form it cannot read, a wrong
    // content type) are English text/plain: shown as a page instead.
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/plain"));
    if response.status().is_client_error() && plain {
        let page = ErrorPage {
            w,
            user: None,
            message: w.bad_request,
        };
        response = (response.status(), render(&page)).into_response();
    }
    let to_login = response.status() == StatusCode::SEE_OTHER
        && response
            .headers()
            .get(header::LOCATION)
            .is_some_and(|l| l == "/login");
    if htmx && to_login {
        response = (StatusCode::UNAUTHORIZED, [("hx-redirect", "/login")]).into_response();
    } else if to_login
        && let Some(back) = back
        && let Ok(location) = HeaderValue::from_str(&format!("/login?next={}", enc(&back)))
    {
        // Signed in again, the agent lands where they were (a task's page
        // then gives back what they had typed).
        response.headers_mut().insert(header::LOCATION, location);
    }
    if !response.headers().contains_key(header::CACHE_CONTROL) {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    // No page inside another's frame: a sibling site (same-site for the
    // cookie, and its clicks carry our own Origin) could lay a transparent
    // task page over its own and have an agent press "Tomar" or an outcome.
    let headers = response.headers_mut();
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'none'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn asset(bytes: &'static [u8], kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        bytes,
    )
        .into_response()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn words(headers: &HeaderMap) -> (&'static Words, Lang) {
    let lang = match cookie(headers, LANG_COOKIE).as_deref() {
        Some("en") => Lang::En,
        _ => Lang::Es,
    };
    (text::of(lang), lang)
}

/// Who is asking, and in which language.
struct Session {
    user: User,
    w: &'static Words,
    lang: Lang,
}

/// A page's failure: sign in again, or an error page in the user's language.
struct PageError {
    w: &'static Words,
    error: Error,
    /// What the page says, where its status alone would mislead (a 409 on
    /// an incident is not about a task).
    saying: Option<&'static str>,
    /// Who is signed in, when the page knows: the error page keeps the
    /// header with "Salir" (on a shared PC, an agent leaving from a 403
    /// must still be able to sign out there).
    user: Option<User>,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, _, _, _) = self.error.parts();
        if status == StatusCode::UNAUTHORIZED {
            return Redirect::to("/login").into_response();
        }
        if status.is_server_error() {
            tracing::error!(error = %self.error, "page failed");
        }
        let message = match status {
            _ if let Some(saying) = self.saying => saying,
            StatusCode::FORBIDDEN => self.w.forbidden,
            StatusCode::NOT_FOUND => self.w.not_found,
            StatusCode::CONFLICT => self.w.conflict,
            _ => self.w.error,
        };
        let page = ErrorPage {
            w: self.w,
            user: self.user,
            message,
        };
        (status, render(&page)).into_response()
    }
}

fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The signed-in user of a page request: a session cookie that checks out
/// (signature, expiry, the user's token unchanged) and that was not signed
/// out on any node.
async fn session(s: &AppState, headers: &HeaderMap) -> Result<Session, PageError> {
    let (w, lang) = words(headers);
    let signed = signed_session(s, headers).ok_or(PageError {
        w,
        error: Error::Unauthorized,
        saying: None,
        user: None,
    })?;
    match s.engine.session_ended(&signed.id).await {
        Ok(false) => Ok(Session {
            user: signed.user,
            w,
            lang,
        }),
        Ok(true) => Err(PageError {
            w,
            error: Error::Unauthorized,
            saying: None,
            user: None,
        }),
        Err(e) => Err(PageError {
            w,
            error: e.into(),
            saying: None,
            user: None,
        }),
    }
}

/// The session cookie's session, if it checks out (signed out or not).
/// Over HTTPS only the `__Host-` cookie counts: the plain one can be set by
/// a sibling subdomain (`Domain=example.com`), which would sign the
/// browser's user in as someone else.
fn signed_session(s: &AppState, headers: &HeaderMap) -> Option<SignedSession> {
    session_cookie(s, headers).map(|(_, signed)| signed)
}

/// [`signed_session`], with the name of the cookie that holds it.
fn session_cookie(s: &AppState, headers: &HeaderMap) -> Option<(&'static str, SignedSession)> {
    let named = |name: &'static str| cookie(headers, name).map(|value| (name, value));
    named(HOST_SESSION_COOKIE)
        .or_else(|| {
            if forwarded_https(headers) {
                None
            } else {
                named(SESSION_COOKIE)
            }
        })
        .and_then(|(name, v)| Some((name, s.users.by_session(&v, s.engine.now())?)))
}

/// How long after its last renewal a session's cookie is renewed again:
/// not on every request (each would carry a `Set-Cookie`).
const RENEW_AFTER_MS: i64 = 60_000;

/// Middleware on the pages: a page opened or a form sent with a session
/// that checks out moves the session's idle deadline on
/// ([`crate::http::auth::IDLE_MS`]): the same session, in a new cookie.
/// The inbox refreshing itself (an htmx request) is no use of it, and an
/// answer that sets the cookie itself (signing in or out) keeps its own.
pub(crate) async fn renew_session(
    State(s): Shared,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    let used = if headers.contains_key("hx-request") {
        None
    } else {
        session_cookie(&s, headers)
    };
    let mut response = next.run(request).await;
    let now = s.engine.now();
    let Some((name, signed)) = used else {
        return response;
    };
    let renewed_at = signed.idle - crate::http::auth::IDLE_MS;
    let sets_its_own = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|v| v.as_bytes().starts_with(format!("{name}=").as_bytes()));
    if now - renewed_at < RENEW_AFTER_MS || sets_its_own {
        return response;
    }
    let secure = if name == HOST_SESSION_COOKIE {
        "; Secure"
    } else {
        ""
    };
    if let Some(value) = s.users.used(&signed, now)
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            (signed.expires - now) / 1000,
        ))
    {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// `GET /keepalive`: nothing but a use of the session (the task page calls
/// it while the agent types, so that a long call is not idleness).
async fn keep_alive(State(s): Shared, headers: HeaderMap) -> StatusCode {
    if signed_session(&s, &headers).is_some() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::UNAUTHORIZED
    }
}

/// Whether the proxy in front says the request came over HTTPS: the first
/// entry of `X-Forwarded-Proto` (the client's side; proxies in a chain
/// append theirs).
fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|p| p.to_str().ok())
        .and_then(|p| p.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

impl Session {
    fn fail(&self, error: impl Into<Error>) -> PageError {
        PageError {
            w: self.w,
            error: error.into(),
            saying: None,
            user: Some(self.user.clone()),
        }
    }
}

impl PageError {
    /// The same failure, with a page that says `message`.
    fn saying(self, message: &'static str) -> PageError {
        PageError {
            saying: Some(message),
            ..self
        }
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_page(headers: HeaderMap, Query(q): Query<LoginQuery>) -> Response {
    let (w, _) = words(&headers);
    render(&LoginPage {
        w,
        user: None,
        error: None,
        next: q.next.filter(|n| safe_next(n)).unwrap_or_default(),
    })
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    /// The page to go back to (see [`back_after_sign_in`]).
    next: Option<String>,
}

/// Whether `next` is a page of this site to go back to after signing in:
/// a path, not `//host` nor `/\host` (either leaves the site), nothing a
/// header could not carry.
fn safe_next(next: &str) -> bool {
    next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && next.bytes().all(|b| b.is_ascii_graphic())
        && !matches!(next, "/login" | "/logout" | "/keepalive")
        && !next.starts_with("/login?")
        && !next.starts_with("/assets/")
}

/// The page a request that found no session should come back to once
/// signed in: the page itself, or, for a form, the page it was on (a
/// form's address takes only a POST). `None` for signing in and out, and
/// for what is no page.
fn back_after_sign_in(request: &axum::extract::Request) -> Option<String> {
    let path = request.uri().path();
    // The path alone: a query may hold a client's number (the inbox's
    // filter), which is no part of where to go back to.
    let page = match page_of_form(path) {
        Some(page) => page,
        // The inbox's rows are a part of its page.
        None if path == "/inbox/rows" => "/inbox",
        None if request.method() == axum::http::Method::GET || path.starts_with("/tasks/") => path,
        None => return None,
    };
    Some(page.to_owned()).filter(|p| p != "/" && safe_next(p))
}

/// The page whose form posts to `path`, where `path` is a form's address
/// that takes only a POST (a claim, a release, an incident's retry).
fn page_of_form(path: &str) -> Option<&str> {
    match path.rsplit_once('/') {
        Some((page, "claim" | "unclaim")) if page.starts_with("/tasks/") => Some(page),
        Some((page, "retry")) if page.starts_with("/incidents/") => Some("/incidents"),
        _ => None,
    }
}

async fn login(State(s): Shared, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    let (w, _) = words(&headers);
    let next = f.next.filter(|n| safe_next(n));
    // Who the browser's last session was: only they go back to the page it
    // asked for; someone else on the same PC starts in the inbox, and the
    // last person's typed values are dropped (`new_user`: base.html).
    let was = [HOST_SESSION_COOKIE, SESSION_COOKIE]
        .into_iter()
        .find_map(|name| cookie(&headers, name).and_then(|v| s.users.whose(&v)));
    let Some(session) = s.users.session(&f.token, s.engine.now()) else {
        tracing::info!("sign-in refused");
        let page = LoginPage {
            w,
            user: None,
            error: Some(w.bad_token),
            next: next.unwrap_or_default(),
        };
        return (StatusCode::UNAUTHORIZED, render(&page)).into_response();
    };
    let same_person = was
        .as_deref()
        .is_none_or(|was| s.users.by_token(&f.token).is_some_and(|u| u.name == was));
    let to = match (&next, same_person) {
        (Some(next), true) => next.as_str(),
        (_, true) => "/inbox",
        (_, false) => "/inbox?new_user=1",
    };
    let mut response = Redirect::to(to).into_response();
    // Over HTTPS (a proxy in front says so) the cookie never goes in clear.
    let https = forwarded_https(&headers)
        || headers
            .get(header::ORIGIN)
            .is_some_and(|o| o.as_bytes().starts_with(b"https://"));
    let (name, secure) = if https {
        (HOST_SESSION_COOKIE, "; Secure")
    } else {
        (SESSION_COOKIE, "")
    };
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{name}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        crate::http::auth::SESSION_MS / 1000,
    )) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    // The inbox's filters were the last user's (a client's business key, a
    // role this one may not hold): a new sign-in starts without them.
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("tramite_inbox=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

/// Signs out: the session ends on every node (a copy of the cookie, kept
/// or stolen, opens nothing more), then the browser forgets it. Both
/// cookies are read: a browser that signed in over HTTP and later over
/// HTTPS holds two sessions. If an end cannot be recorded (the database is
/// down), the cookies stay and an error page says so: "Salir" must not
/// look done when it is not.
async fn logout(State(s): Shared, headers: HeaderMap) -> Response {
    for name in [HOST_SESSION_COOKIE, SESSION_COOKIE] {
        let Some(signed) =
            cookie(&headers, name).and_then(|v| s.users.by_session(&v, s.engine.now()))
        else {
            continue;
        };
        // Kept past its expiry by the skew nodes' clocks may have: a node
        // whose clock is behind still takes the cookie until then.
        let until = signed.expires + crate::http::auth::CLOCK_SKEW_MS;
        if let Err(e) = s.engine.end_session(&signed.id, until).await {
            let (w, _) = words(&headers);
            return PageError {
                w,
                error: e.into(),
                saying: None,
                user: None,
            }
            .into_response();
        }
    }
    forget().await
}

/// `GET /logout` (a typed address, a bookmark): the browser forgets its
/// session, which is not ended on the server — a GET must change nothing
/// there (a page on a sibling subdomain counts as the same site for the
/// SameSite cookie, and a browser may load an address before it is
/// visited); the pages' "Salir" button posts.
async fn forget() -> Response {
    let mut response = Redirect::to("/login").into_response();
    // The session cookies, the inbox's filters (a client's business key
    // must not stay on a shared PC), and the bearer token earlier
    // versions kept.
    for gone in [
        "tramite_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        "__Host-tramite_session=; Path=/; HttpOnly; SameSite=Strict; Secure; Max-Age=0",
        "tramite_inbox=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        "tramite_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
    ] {
        response
            .headers_mut()
            .append(header::SET_COOKIE, HeaderValue::from_static(gone));
    }
    response
}

async fn set_lang(Path(lang): Path<String>, headers: HeaderMap) -> Response {
    let lang = if lang == "en" { "en" } else { "es" };
    let back = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.find("://").map(|i| &r[i + 3..]))
        .and_then(|r| r.find('/').map(|i| r[i..].to_owned()))
        // Back to a page of this site only (`//host` would leave it).
        .filter(|p| !p.starts_with("//") && !p.contains('\\'))
        .unwrap_or_else(|| "/inbox".to_owned());
    // A page that answered a form (a claim refused, a retry that failed)
    // has the form's address, which only takes a POST: back to the page
    // the form was on.
    let back = page_of_form(&back).map_or(back.clone(), str::to_owned);
    let mut response = Redirect::to(&back).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{LANG_COOKIE}={lang}; Path=/; SameSite=Strict; Max-Age=31536000"
    )) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

#[derive(Debug, Default, Deserialize)]
struct InboxQuery {
    role: Option<String>,
    status: Option<String>,
    business_key: Option<String>,
    done: Option<String>,
}

/// Rows the inbox shows at most (soonest due first); past that, the page
/// says so rather than leaving the rest unseen.
const INBOX_ROWS: usize = 100;

/// The inbox's rows, and whether more tasks match than it shows.
async fn inbox_model(
    s: &AppState,
    ses: &Session,
    q: &InboxQuery,
) -> Result<(Vec<TaskLine>, bool), PageError> {
    let role = q.role.clone().filter(|r| !r.is_empty());
    let roles = ses.user.inbox_roles(role).map_err(|e| ses.fail(e))?;
    if roles.is_empty() {
        return Ok((Vec::new(), false)); // no roles, no inbox
    }
    let mut tasks = s
        .engine
        .tasks(&Filter {
            roles,
            status: q.status.clone().filter(|x| x == "open" || x == "claimed"),
            business_key: typed_key(q.business_key.as_deref()),
            limit: INBOX_ROWS as i64 + 1,
            ..Filter::default()
        })
        .await
        .map_err(|e| ses.fail(e))?;
    let more = tasks.len() > INBOX_ROWS;
    tasks.truncate(INBOX_ROWS);
    let mut processes = HashMap::new();
    let now = s.engine.now();
    let mut lines = Vec::with_capacity(tasks.len());
    for t in tasks {
        if !processes.contains_key(&t.code) {
            let p = s
                .engine
                .latest_process(&t.code)
                .await
                .map_err(|e| ses.fail(e))?;
            processes.insert(t.code.clone(), p);
        }
        let mut process = Arc::clone(&processes[&t.code]);
        if process.definition.node(&t.node_id).is_none() {
            // A node the latest version no longer has (renamed in v2): the
            // task's own version names it. Rare, so read only then.
            let instance = s
                .engine
                .instance(&t.instance_id)
                .await
                .map_err(|e| ses.fail(e))?;
            process = s
                .engine
                .process(instance.definition_id)
                .await
                .map_err(|e| ses.fail(e))?;
        }
        lines.push(TaskLine::new(
            &t,
            process.definition.node(&t.node_id),
            ses,
            now,
        ));
    }
    Ok((lines, more))
}

async fn inbox(
    State(s): Shared,
    headers: HeaderMap,
    Query(q): Query<InboxQuery>,
) -> Result<Response, PageError> {
    let ses = session(&s, &headers).await?;
    let (lines, more) = inbox_model(&s, &ses, &q).await?;
    let names = role_names(&s, &ses.user.roles, ses.lang).await;
    let roles: Vec<Choice> = ses
        .user
        .roles
        .iter()
        .zip(names)
        .map(|(r, label)| Choice {
            value: r.clone(),
            label,
            selected: q.role.as_deref() == Some(r),
        })
        .collect();
    let query = format!(
        "role={}&status={}&business_key={}",
        enc(q.role.as_deref().unwrap_or_default()),
        enc(q.status.as_deref().unwrap_or_default()),
        enc(q.business_key.as_deref().unwrap_or_default())
    );
    let mut response = render(&InboxPage {
        w: ses.w,
        user: Some(&ses.user),
        roles,
        status: q.status.clone().unwrap_or_default(),
        business_key: q.business_key.clone().unwrap_or_default(),
        lines,
        more,
        query,
        done: q.done.is_some(),
    });
    // Kept so that finishing or releasing a task comes back to the same
    // filters (the filters given, URL-encoded; none clears them).
    let kept: Vec<String> = [
        ("role", &q.role),
        ("status", &q.status),
        ("business_key", &q.business_key),
    ]
    .into_iter()
    .filter_map(|(name, v)| {
        v.as_deref()
            .filter(|v| !v.is_empty())
            .map(|v| format!("{name}={}", enc(v)))
    })
    .collect();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{INBOX_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
        kept.join("&")
    )) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(response)
}

/// The inbox as the agent last filtered it, `extra` appended.
fn back_to_inbox(headers: &HeaderMap, extra: &str) -> Response {
    let kept = cookie(headers, INBOX_COOKIE).filter(|q| {
        q.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=&%_-.+~".contains(&b))
    });
    let query: Vec<&str> = kept
        .as_deref()
        .into_iter()
        .chain([extra])
        .filter(|q| !q.is_empty())
        .collect();
    if query.is_empty() {
        Redirect::to("/inbox").into_response()
    } else {
        Redirect::to(&format!("/inbox?{}", query.join("&"))).into_response()
    }
}

async fn inbox_rows(
    State(s): Shared,
    headers: HeaderMap,
    Query(q): Query<InboxQuery>,
) -> Result<Response, PageError> {
    let ses = session(&s, &headers).await?;
    let (lines, more) = inbox_model(&s, &ses, &q).await?;
    Ok(render(&InboxRows {
        w: ses.w,
        lines,
        more,
    }))
}

async fn task_claim(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let ses = session(&s, &headers).await?;
    of_my_role(&s, &ses, &id).await?;
    s.engine
        .claim(&id, &ses.user.name)
        .await
        .map_err(|e| ses.fail(e))?;
    Ok(Redirect::to(&format!("/tasks/{id}")).into_response())
}

/// Refuses (403) a task of a role the session's user does not have.
async fn of_my_role(s: &AppState, ses: &Session, id: &str) -> Result<(), PageError> {
    let task = s.engine.task(id).await.map_err(|e| ses.fail(e))?;
    if !ses.user.has(&task.role) {
        return Err(ses.fail(Error::Forbidden {
            reason: "not your role".into(),
        }));
    }
    Ok(())
}

/// The agent gives a task back (it escalates now if it is overdue and its
/// escalation was held off while they had it).
async fn task_unclaim(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let ses = session(&s, &headers).await?;
    of_my_role(&s, &ses, &id).await?;
    s.engine
        .unclaim(&id, &ses.user.name)
        .await
        .map_err(|e| ses.fail(e))?;
    Ok(back_to_inbox(&headers, ""))
}

/// A task the session's user may see and act on, with its instance and the
/// compiled version it runs on: 403 for another role's task, 404 for a node
/// that is not a user task.
async fn user_task(
    s: &AppState,
    ses: &Session,
    id: &str,
) -> Result<
    (
        tramite_engine::store::tasks::TaskRow,
        tramite_engine::store::instances::InstanceRow,
        Arc<tramite_engine::runtime::process::Process>,
    ),
    PageError,
> {
    let task = s.engine.task(id).await.map_err(|e| ses.fail(e))?;
    if !ses.user.has(&task.role) {
        return Err(ses.fail(Error::Forbidden {
            reason: format!("this task is for the role `{}`", task.role),
        }));
    }
    let instance = s
        .engine
        .instance(&task.instance_id)
        .await
        .map_err(|e| ses.fail(e))?;
    let process = s
        .engine
        .process(instance.definition_id)
        .await
        .map_err(|e| ses.fail(e))?;
    user_task_node(&process, &task.node_id).map_err(|e| ses.fail(e))?;
    Ok((task, instance, process))
}

/// The user task at `node` of a compiled version.
fn user_task_node<'a>(
    process: &'a tramite_engine::runtime::process::Process,
    node: &str,
) -> Result<&'a tramite_engine::definition::UserTask, tramite_engine::Error> {
    match process.definition.node(node).map(|n| &n.kind) {
        Some(NodeKind::UserTask(ut)) => Ok(ut),
        _ => Err(tramite_engine::Error::NotFound {
            what: "user task",
            id: node.to_owned(),
        }),
    }
}

async fn task_model(
    s: &AppState,
    ses: &Session,
    id: &str,
    submitted: Option<&HashMap<String, String>>,
    errors: &[tramite_engine::runtime::forms::FieldError],
) -> Result<TaskPage, PageError> {
    let (task, instance, process) = user_task(s, ses, id).await?;
    let def = &process.definition;
    let node = def.node(&task.node_id);
    let lang = ses.lang;
    let ut = user_task_node(&process, &task.node_id).map_err(|e| ses.fail(e))?;
    let history = s
        .engine
        .history(&instance.id)
        .await
        .map_err(|e| ses.fail(e))?;
    let received = s
        .engine
        .messages_of(&instance.id)
        .await
        .map_err(|e| ses.fail(e))?;
    let proposed = process.proposed(&ut.form, &instance);
    let fields = ut
        .form
        .iter()
        .map(|f| FieldView::new(f, lang, &proposed, submitted, errors))
        .collect();
    let open = matches!(task.status.as_str(), "open" | "claimed");
    let mine = task.assignee.as_deref() == Some(ses.user.name.as_str());
    let overdue = open && task.due_at.is_some_and(|d| d <= s.engine.now());
    let release_escalates_to = match &ut.escalation {
        Some(e) if overdue && e.interrupting => node_title(def.node(&e.next), lang),
        _ => String::new(),
    };
    let held_by_other = match &task.assignee {
        Some(who) if open && !mine => who.clone(),
        _ => String::new(),
    };
    Ok(TaskPage {
        w: ses.w,
        user: None,
        id: task.id.clone(),
        due: task.due_at.map(local_time).unwrap_or_default(),
        typed: Vec::new(),
        overdue,
        release_escalates_to,
        title: node_title(node, lang),
        step: node
            .and_then(|n| n.step.as_ref())
            .map(ToString::to_string)
            .unwrap_or_default(),
        code: def.code.clone(),
        procedure: def.name.get(lang).to_owned(),
        instance_id: instance.id.clone(),
        business_key: instance.business_key.clone(),
        channel: instance.channel.clone(),
        status: task_status_word(ses.w, &task.status).to_owned(),
        open,
        closed_by: task.completed_by.clone().unwrap_or_default(),
        closed_at: task.completed_at.map(local_time).unwrap_or_default(),
        assignee: task.assignee.clone().unwrap_or_default(),
        mine,
        claimable: task.status == "open",
        show_form: open && (held_by_other.is_empty() || submitted.is_some()),
        held_by_other,
        instructions: ut
            .instructions
            .as_ref()
            .map(|t| markdown(t.get(lang)))
            .unwrap_or_default(),
        context: context_lines(def, &instance.state.variables, lang),
        earlier: earlier_steps(def, &history, lang),
        fields,
        outcomes: ut
            .outcomes
            .iter()
            .map(|o| OutcomeView {
                id: o.id.clone(),
                label: o.label.get(lang).to_owned(),
                validate: o.validate,
                closes_as: match def.node(&o.next) {
                    Some(end) if !o.validate && matches!(end.kind, NodeKind::End(_)) => end
                        .label
                        .as_ref()
                        .map_or_else(|| end.id.clone(), |l| l.get(lang).to_owned()),
                    _ => String::new(),
                },
            })
            .collect(),
        has_errors: !errors.is_empty(),
        not_saved: "",
        general_errors: errors
            .iter()
            .filter(|e| !ut.form.iter().any(|f| f.name == e.field))
            .map(|e| general_error(e, ses.w, lang))
            .collect(),
        received: received
            .iter()
            .flat_map(|m| Attachment::of_message(m, lang))
            .collect(),
        documents: documents_of(def, &history, &instance.id, lang, Some(&task.node_id)),
    })
}

/// A problem of the form as a whole, or of a field it does not show, as
/// the agent reads it: what an outcome could not compute from the data is
/// the agent's to complete; the rest in the page's language.
fn general_error(e: &tramite_engine::runtime::forms::FieldError, w: &Words, lang: Lang) -> String {
    // Whether or not it names the variable the value was meant for: the
    // expression and CEL's words are for the process owner, not the agent.
    if e.message.starts_with("the outcome ") {
        return w.outcome_needs_data.to_owned();
    }
    let message = views::in_words(&e.message, lang);
    if e.field.is_empty() {
        message
    } else {
        format!("{}: {message}", e.field)
    }
}

async fn task_page(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let ses = session(&s, &headers).await?;
    let mut page = task_model(&s, &ses, &id, None, &[]).await?;
    page.user = Some(ses.user.clone());
    Ok(render(&page))
}

/// Whether `task` was completed with `outcome` and `data`, a field left
/// out the same as one sent empty: the page sends an emptied field as null
/// only when its variable held a value, which the first completion may
/// have changed.
fn same_answer(
    task: &tramite_engine::store::tasks::TaskRow,
    outcome: &str,
    data: &serde_json::Map<String, Value>,
) -> bool {
    let null = Value::Null;
    let stored = task.data.as_ref().and_then(Value::as_object);
    let stored_value = |k: &str| stored.and_then(|m| m.get(k)).unwrap_or(&null);
    task.outcome.as_deref() == Some(outcome)
        && data.iter().all(|(k, v)| stored_value(k) == v)
        && stored.is_none_or(|m| m.iter().all(|(k, v)| data.get(k).unwrap_or(&null) == v))
}

async fn task_submit(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, PageError> {
    let ses = session(&s, &headers).await?;
    let (task, instance, process) = user_task(&s, &ses, &id).await?;
    let ut = user_task_node(&process, &task.node_id).map_err(|e| ses.fail(e))?;
    let outcome = form.get("outcome").cloned().unwrap_or_default();
    let (data, mut errors) = form_data(&ut.form, &form, &instance.state.variables);
    if errors.is_empty() {
        let sent = (outcome.clone(), data.clone());
        match s
            .engine
            .complete(CompleteTask {
                task: id.clone(),
                user: ses.user.name.clone(),
                outcome,
                data,
                roles: Some(ses.user.roles.clone()),
            })
            .await
        {
            Ok(task) => {
                crate::http::record_completion(&s.engine, task);
                return Ok(back_to_inbox(&headers, "done=1"));
            }
            Err(tramite_engine::Error::InvalidData { errors: e }) => errors = e,
            Err(e @ tramite_engine::Error::TaskClaimedByOther { .. }) => {
                // Another agent took it meanwhile: the page says who, with
                // what this agent typed still in the form.
                let status = Error::from(e).status();
                let mut page = task_model(&s, &ses, &id, Some(&form), &[]).await?;
                page.user = Some(ses.user.clone());
                return Ok((status, render(&page)).into_response());
            }
            Err(e @ tramite_engine::Error::TaskNotOpen { .. }) => {
                // A second click on the button (or a resent form): the
                // first one completed the task with this answer, which is
                // what the agent asked for. Asked of the engine, not read
                // first: its answer comes only once that completion is on
                // disk, where a read may see it a moment before. Another
                // answer (a stale tab, a value changed between two clicks)
                // was not recorded: the page says so below.
                if s.engine.task(&id).await.is_ok_and(|t| {
                    t.status == "completed"
                        && t.completed_by.as_deref() == Some(ses.user.name.as_str())
                        && same_answer(&t, &sent.0, &sent.1)
                }) {
                    return Ok(back_to_inbox(&headers, "done=1"));
                }
                // Completed or cancelled meanwhile: the page says by whom,
                // with the JSON API's status for it, and shows what the
                // agent had typed (call notes), to copy where the case
                // goes on.
                let status = Error::from(e).status();
                let mut page = task_model(&s, &ses, &id, None, &[]).await?;
                page.user = Some(ses.user.clone());
                page.typed = typed(&process.definition, &ut.form, &form, &ses);
                return Ok((status, render(&page)).into_response());
            }
            Err(e)
                if not_taken(&e)
                    || matches!(
                        e,
                        tramite_engine::Error::CommitOutcomeUnknown
                            | tramite_engine::Error::Stopped
                    ) =>
            {
                // The engine could not take it just then: the form comes
                // back with what was typed (a call's notes), not an error
                // page that loses it. Sent again after a commit that may
                // have happened, it is recognised as done (above).
                let notice = match &e {
                    // `Stopped` may also be a reply lost after a commit.
                    tramite_engine::Error::CommitOutcomeUnknown
                    | tramite_engine::Error::Stopped => ses.w.not_confirmed,
                    // Not a matter of seconds: someone must act.
                    e if e.is_storage_refusal()
                        || matches!(e, tramite_engine::Error::LogSyncFailed) =>
                    {
                        ses.w.not_saved_down
                    }
                    _ => ses.w.not_saved,
                };
                let status = Error::from(e).status();
                let mut page = task_model(&s, &ses, &id, Some(&form), &[]).await?;
                page.user = Some(ses.user.clone());
                page.not_saved = notice;
                if !page.open {
                    // Closed meanwhile (or by this very commit): the notes
                    // are shown all the same.
                    page.typed = typed(&process.definition, &ut.form, &form, &ses);
                }
                return Ok((status, render(&page)).into_response());
            }
            Err(e) => return Err(ses.fail(e)),
        }
    }
    let mut page = task_model(&s, &ses, &id, Some(&form), &errors).await?;
    page.user = Some(ses.user.clone());
    if !page.open {
        // Closed under the agent, with a value the page could not read:
        // what they typed is shown all the same.
        page.typed = typed(&process.definition, &ut.form, &form, &ses);
    }
    let status = Error::InvalidData { errors }.status();
    Ok((status, render(&page)).into_response())
}

/// Whether a completion failed without being taken, so that sending the
/// same form again is safe: the database was busy or takes no changes, the
/// request changed at the same moment, or the engine has stopped taking
/// changes.
fn not_taken(e: &tramite_engine::Error) -> bool {
    use tramite_engine::Error as E;
    e.is_busy() || e.is_storage_refusal() || matches!(e, E::Concurrent { .. } | E::LogSyncFailed)
}

/// What the agent typed into `fields` of `def`, as the pages show values
/// (an option by its label, a yes/no in words, a date as dd/mm/yyyy), to
/// show when the task closed under them.
fn typed(
    def: &tramite_engine::definition::Definition,
    fields: &[tramite_engine::definition::Field],
    form: &HashMap<String, String>,
    ses: &Session,
) -> Vec<(String, String)> {
    fields
        .iter()
        .filter_map(|f| {
            let raw = form.get(&f.name)?.trim();
            if raw.is_empty() {
                return None;
            }
            let label = f
                .label
                .as_ref()
                .map_or_else(|| f.name.clone(), |l| l.get(ses.lang).to_owned());
            let value = match (f.ty, raw) {
                (VarType::Boolean, "true" | "on" | "1") => Value::Bool(true),
                (VarType::Boolean, "false" | "off" | "0") => Value::Bool(false),
                _ => Value::String(raw.to_owned()),
            };
            Some((
                label,
                views::value_words(def, &f.name, &value, ses.w, ses.lang),
            ))
        })
        .collect()
}

/// The form's values, typed as the fields declare; a value that cannot be
/// read (letters in a number) is a field error, like the engine's own.
/// `current` is the request's variables: an optional field the agent
/// emptied clears the value it opened with, as `null` does in the API.
fn form_data(
    fields: &[tramite_engine::definition::Field],
    form: &HashMap<String, String>,
    current: &Map<String, Value>,
) -> (
    Map<String, Value>,
    Vec<tramite_engine::runtime::forms::FieldError>,
) {
    let mut data = Map::new();
    let mut errors = Vec::new();
    for f in fields {
        let raw = form.get(&f.name).map(|v| v.trim()).unwrap_or_default();
        let value = match f.ty {
            VarType::Boolean => match raw {
                "" if !form.contains_key(&format!("{}__present", f.name)) => continue,
                "true" | "on" | "1" => Value::Bool(true),
                "" | "false" | "off" | "0" => Value::Bool(false),
                // A hand-made or tampered request: refused as the JSON API
                // refuses it, not read as "no".
                _ => {
                    errors.push(tramite_engine::runtime::forms::FieldError {
                        field: f.name.clone(),
                        message: "must be yes or no".into(),
                    });
                    continue;
                }
            },
            // A required field left empty is the engine's to report.
            _ if raw.is_empty() => {
                // Only a value the page showed (`__shown`) is cleared: one
                // written after it was drawn (a message, another branch)
                // was never in front of the agent to empty.
                let emptied = !f.required
                    && form.contains_key(&format!("{}__shown", f.name))
                    && current.get(&f.name).is_some_and(|v| !v.is_null());
                if !emptied {
                    continue;
                }
                Value::Null
            }
            VarType::Integer => match raw.parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => {
                    errors.push(tramite_engine::runtime::forms::FieldError {
                        field: f.name.clone(),
                        message: "must be a whole number".into(),
                    });
                    continue;
                }
            },
            // `NaN` and `inf` parse, and would be stored as null.
            VarType::Number => match raw.replace(',', ".").parse::<f64>() {
                Ok(n) if n.is_finite() => Value::from(n),
                _ => {
                    errors.push(tramite_engine::runtime::forms::FieldError {
                        field: f.name.clone(),
                        message: "must be a number".into(),
                    });
                    continue;
                }
            },
            // One item per line, as the page shows a list.
            VarType::List => Value::Array(
                raw.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| Value::String(l.to_owned()))
                    .collect(),
            ),
            VarType::Object => match serde_json::from_str::<Value>(raw) {
                Ok(object @ Value::Object(_)) => object,
                _ => {
                    errors.push(tramite_engine::runtime::forms::FieldError {
                        field: f.name.clone(),
                        message: "must be an object, written as JSON ({\"name\": value, …})".into(),
                    });
                    continue;
                }
            },
            // A `datetime-local` input sends Bolivia's wall clock without an
            // offset (`2026-12-07T09:05`): it is that time in UTC−4. Anything
            // else (a full timestamp typed by hand) is the engine's to judge.
            VarType::Datetime if is_wall_clock(raw) => Value::String(format!("{raw}:00-04:00")),
            // A browser sends a line break as CRLF and counts it as one
            // character against `maxlength`: stored as one, it counts as
            // one against `max_length` too.
            _ => Value::String(raw.replace("\r\n", "\n")),
        };
        data.insert(f.name.clone(), value);
    }
    (data, errors)
}

/// Whether `text` is `YYYY-MM-DDTHH:MM`, as a `datetime-local` input sends.
fn is_wall_clock(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 16
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 => *c == b':',
            _ => c.is_ascii_digit(),
        })
}

#[derive(Debug, Default, Deserialize)]
struct InstancesQuery {
    code: Option<String>,
    status: Option<String>,
    business_key: Option<String>,
}

async fn instances(
    State(s): Shared,
    headers: HeaderMap,
    Query(q): Query<InstancesQuery>,
) -> Result<Response, PageError> {
    let ses = session(&s, &headers).await?;
    let readable = crate::http::readable_versions(&s.engine, &ses.user)
        .await
        .map_err(|e| ses.fail(e))?;
    // As the API does: another procedure's requests are not "none".
    if let (Some(code), Some(readable)) = (q.code.as_deref().filter(|c| !c.is_empty()), &readable)
        && !readable.iter().any(|(_, c)| c == code)
    {
        return Err(ses.fail(Error::Forbidden {
            reason: format!(
                "requests of {code} are read by its roles, `operator` and `process_owner`"
            ),
        }));
    }
    let mut rows = s
        .engine
        .instances(&tramite_engine::store::instances::InstanceFilter {
            code: q.code.clone().filter(|c| !c.is_empty()),
            definitions: readable
                .as_ref()
                .map(|r| r.iter().map(|(id, _)| *id).collect()),
            status: q.status.clone().filter(|c| !c.is_empty()),
            business_key: typed_key(q.business_key.as_deref()),
            // One more than the page shows, to say that there are more.
            limit: INSTANCES_SHOWN as i64 + 1,
            ..Default::default()
        })
        .await
        .map_err(|e| ses.fail(e))?;
    let more = rows.len() > INSTANCES_SHOWN;
    rows.truncate(INSTANCES_SHOWN);
    let mut codes = codes(&s, &ses).await?;
    if let Some(readable) = &readable {
        codes.retain(|c| readable.iter().any(|(_, r)| r == c));
    }
    let mut lines = Vec::with_capacity(rows.len());
    for i in &rows {
        // Each row in its own version's words (compiled versions are cached).
        let process = s
            .engine
            .process(i.definition_id)
            .await
            .map_err(|e| ses.fail(e))?;
        let def = &process.definition;
        lines.push(InstanceLine {
            id: i.id.clone(),
            code: i.code.clone(),
            version: i.version,
            business_key: i.business_key.clone(),
            channel: i.channel.clone(),
            status: status_word(ses.w, &i.status).to_owned(),
            status_class: i.status.clone(),
            outcome: outcome_words(def, i.outcome.as_deref(), ses.lang),
            started: local_time(i.started_at),
            waits: i
                .state
                .tokens
                .iter()
                .map(|t| node_title(def.node(&t.node), ses.lang))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(render(&InstancesPage {
        w: ses.w,
        user: Some(&ses.user),
        codes: codes
            .into_iter()
            .map(|c| Choice {
                selected: q.code.as_deref() == Some(&c),
                label: c.clone(),
                value: c,
            })
            .collect(),
        status: q.status.clone().unwrap_or_default(),
        business_key: q.business_key.clone().unwrap_or_default(),
        lines,
        more,
    }))
}

/// A business key typed in a filter, without stray spaces (keys are
/// stored without them); none when left empty.
fn typed_key(typed: Option<&str>) -> Option<String> {
    typed
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
}

/// Requests the list shows, newest first.
const INSTANCES_SHOWN: usize = 100;

/// An instance's outcome as its end names it (the end node's label), else
/// the outcome's id.
fn outcome_words(
    def: &tramite_engine::definition::Definition,
    outcome: Option<&str>,
    lang: Lang,
) -> String {
    let Some(outcome) = outcome else {
        return String::new();
    };
    def.nodes
        .iter()
        .find(|n| matches!(&n.kind, NodeKind::End(e) if e.outcome == outcome))
        .and_then(|n| n.label.as_ref())
        .map_or_else(|| outcome.to_owned(), |l| l.get(lang).to_owned())
}

/// Each role's name as a procedure that declares it writes it; the
/// engine's own roles (`operator`, `process_owner`) by the page's words;
/// any other by its id.
async fn role_names(s: &AppState, roles: &[String], lang: Lang) -> Vec<String> {
    let mut names: Vec<Option<String>> = vec![None; roles.len()];
    if let Ok(rows) = s.engine.definition_ids().await {
        for (id, _) in rows {
            if names.iter().all(Option::is_some) {
                break;
            }
            let Ok(process) = s.engine.process(id).await else {
                continue;
            };
            for (role, name) in roles.iter().zip(names.iter_mut()) {
                if name.is_none()
                    && let Some(r) = process.definition.roles.iter().find(|r| r.id == *role)
                {
                    *name = Some(r.name.get(lang).to_owned());
                }
            }
        }
    }
    let w = text::of(lang);
    roles
        .iter()
        .zip(names)
        .map(|(role, name)| {
            name.unwrap_or_else(|| match role.as_str() {
                // The engine's own roles, which no procedure names.
                "operator" => w.role_operator.to_owned(),
                "process_owner" => w.role_process_owner.to_owned(),
                _ => role.clone(),
            })
        })
        .collect()
}

async fn codes(s: &AppState, ses: &Session) -> Result<Vec<String>, PageError> {
    let mut codes: Vec<String> = s
        .engine
        .definition_ids()
        .await
        .map_err(|e| ses.fail(e))?
        .into_iter()
        .map(|(_, code)| code)
        .collect();
    codes.dedup();
    Ok(codes)
}

/// An instance and its version, refused (403) unless the session's user
/// may read its requests.
async fn readable_instance(
    s: &AppState,
    ses: &Session,
    id: &str,
) -> Result<
    (
        tramite_engine::store::instances::InstanceRow,
        Arc<tramite_engine::runtime::process::Process>,
    ),
    PageError,
> {
    let i = s.engine.instance(id).await.map_err(|e| ses.fail(e))?;
    let process = s
        .engine
        .process(i.definition_id)
        .await
        .map_err(|e| ses.fail(e))?;
    ses.user
        .may_read(&process.definition)
        .map_err(|e| ses.fail(e))?;
    Ok((i, process))
}

async fn instance_page(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let ses = session(&s, &headers).await?;
    let (i, process) = readable_instance(&s, &ses, &id).await?;
    let def = &process.definition;
    let mut history = s.engine.history(&id).await.map_err(|e| ses.fail(e))?;
    crate::http::without_failures(&ses.user, &mut history);
    let incidents = s
        .engine
        .incidents(Some("open"), Some(&id))
        .await
        .map_err(|e| ses.fail(e))?;
    let mut children = Vec::new();
    for c in s.engine.children(&id).await.map_err(|e| ses.fail(e))? {
        let shown = readable(&s, &ses, &c).await?.then_some(c.id);
        children.push((shown.unwrap_or_default(), c.code));
    }
    let parent = match &i.parent_id {
        Some(parent) => match s.engine.instance(parent).await {
            Ok(p) if readable(&s, &ses, &p).await? => p.id,
            // Purged by retention, or another procedure's people's.
            Ok(_) | Err(tramite_engine::Error::NotFound { .. }) => String::new(),
            Err(e) => return Err(ses.fail(e)),
        },
        None => String::new(),
    };
    let waiting: Vec<&str> = i.state.tokens.iter().map(|t| t.node.as_str()).collect();
    let mut diagram =
        tramite_engine::diagram::render(def, tramite_engine::diagram::Format::Mermaid, ses.lang);
    diagram.push_str(&tramite_engine::diagram::mermaid_highlight(&waiting));
    Ok(render(&InstancePage {
        w: ses.w,
        user: Some(&ses.user),
        id: i.id.clone(),
        code: i.code.clone(),
        procedure: def.name.get(ses.lang).to_owned(),
        version: i.version,
        business_key: i.business_key.clone(),
        channel: i.channel.clone(),
        status: status_word(ses.w, &i.status).to_owned(),
        outcome: outcome_words(def, i.outcome.as_deref(), ses.lang),
        started: local_time(i.started_at),
        ended: i.ended_at.map(local_time).unwrap_or_default(),
        waits: waiting
            .iter()
            .map(|n| node_title(def.node(n), ses.lang))
            .collect(),
        diagram,
        variables: context_lines(def, &i.state.variables, ses.lang),
        timeline: timeline(def, &history, ses.w, ses.lang),
        documents: documents_of(def, &history, &i.id, ses.lang, None),
        incidents: incidents
            .iter()
            .map(|x| {
                // What failed inside a system is for those who can act on it.
                let message = if ses.user.has("operator") {
                    x.message.clone()
                } else {
                    ses.w.stopped_here.to_owned()
                };
                (
                    x.id.clone(),
                    node_title(def.node(&x.node_id), ses.lang),
                    message,
                )
            })
            .collect(),
        parent,
        children,
    }))
}

/// Whether the session's user may read `instance`, so that a link to it
/// leads somewhere.
async fn readable(
    s: &AppState,
    ses: &Session,
    instance: &tramite_engine::store::instances::InstanceRow,
) -> Result<bool, PageError> {
    let process = s
        .engine
        .process(instance.definition_id)
        .await
        .map_err(|e| ses.fail(e))?;
    Ok(ses.user.may_read(&process.definition).is_ok())
}

async fn document_page(
    State(s): Shared,
    headers: HeaderMap,
    Path((id, doc)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let ses = session(&s, &headers).await?;
    let (i, process) = readable_instance(&s, &ses, &id).await?;
    let def = &process.definition;
    let Some(d) = def.documents.iter().find(|d| d.id == doc) else {
        return Err(ses.fail(tramite_engine::Error::NotFound {
            what: "document",
            id: doc,
        }));
    };
    let history = s.engine.history(&id).await.map_err(|e| ses.fail(e))?;
    let received = s.engine.messages_of(&id).await.map_err(|e| ses.fail(e))?;
    Ok(render(&DocumentPage {
        w: ses.w,
        user: Some(ses.user.clone()),
        title: d.name.get(ses.lang).to_owned(),
        procedure: format!("{} — {}", def.code, def.name.get(ses.lang)),
        business_key: i.business_key.clone(),
        channel: i.channel.clone(),
        started: local_time(i.started_at),
        printed: local_time(s.engine.now()),
        manual: matches!(d.mode, tramite_engine::definition::DocumentMode::Manual),
        status: document_done(d, &history),
        copies: format!("{} + {}", d.originals, d.copies),
        lines: context_lines(def, &i.state.variables, ses.lang),
        received: received
            .iter()
            .flat_map(|m| Attachment::of_message(m, ses.lang))
            .collect(),
    }))
}

async fn definitions(State(s): Shared, headers: HeaderMap) -> Result<Response, PageError> {
    let ses = session(&s, &headers).await?;
    let rows = s.engine.definitions().await.map_err(|e| ses.fail(e))?;
    let mut lines: Vec<DefinitionLine> = Vec::new();
    for r in rows {
        if lines.iter().any(|l| l.code == r.code) {
            continue;
        }
        let p = s.engine.process(r.id).await.map_err(|e| ses.fail(e))?;
        lines.push(DefinitionLine {
            code: r.code.clone(),
            name: p.definition.name.get(ses.lang).to_owned(),
            version: r.version,
            deployed: local_time(r.deployed_at),
            steps: p.definition.nodes.len(),
        });
    }
    Ok(render(&DefinitionsPage {
        w: ses.w,
        user: Some(&ses.user),
        lines,
    }))
}

#[derive(Debug, Default, Deserialize)]
struct VersionQuery {
    version: Option<i64>,
}

async fn definition_page(
    State(s): Shared,
    headers: HeaderMap,
    Path(code): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Response, PageError> {
    let ses = session(&s, &headers).await?;
    let rows: Vec<_> = s
        .engine
        .definitions()
        .await
        .map_err(|e| ses.fail(e))?
        .into_iter()
        .filter(|d| d.code == code)
        .collect();
    let chosen = match q.version {
        Some(v) => rows.iter().find(|r| r.version == v),
        None => rows.first(),
    };
    let Some(row) = chosen else {
        return Err(ses.fail(tramite_engine::Error::NotDeployed { code }));
    };
    let p = s.engine.process(row.id).await.map_err(|e| ses.fail(e))?;
    Ok(render(&DefinitionPage {
        w: ses.w,
        user: Some(&ses.user),
        code: code.clone(),
        name: p.definition.name.get(ses.lang).to_owned(),
        version: row.version,
        versions: rows
            .iter()
            .map(|r| {
                (
                    r.version,
                    local_time(r.deployed_at),
                    r.version == row.version,
                )
            })
            .collect(),
        diagram: tramite_engine::diagram::render(
            &p.definition,
            tramite_engine::diagram::Format::Mermaid,
            ses.lang,
        ),
        source: row.source.clone(),
    }))
}

async fn incidents(State(s): Shared, headers: HeaderMap) -> Result<Response, PageError> {
    let ses = session(&s, &headers).await?;
    // As `GET /api/v1/incidents`: an incident's message is for the team
    // that can act on it.
    ses.user.require("operator").map_err(|e| ses.fail(e))?;
    let rows = s
        .engine
        .incidents(Some("open"), None)
        .await
        .map_err(|e| ses.fail(e))?;
    let mut lines = Vec::with_capacity(rows.len());
    for i in &rows {
        // The step in its procedure's words, where the instance is there.
        let node = match s.engine.instance(&i.instance_id).await {
            Ok(instance) => s
                .engine
                .process(instance.definition_id)
                .await
                .map(|p| node_title(p.definition.node(&i.node_id), ses.lang))
                .unwrap_or_else(|_| i.node_id.clone()),
            Err(_) => i.node_id.clone(),
        };
        lines.push(IncidentLine {
            id: i.id.clone(),
            instance: i.instance_id.clone(),
            node,
            message: i.message.clone(),
            at: local_time(i.created_at),
            after_effect: i.after_effect,
        });
    }
    Ok(render(&IncidentsPage {
        w: ses.w,
        user: Some(&ses.user),
        operator: ses.user.has("operator"),
        lines,
    }))
}

async fn incident_retry(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let ses = session(&s, &headers).await?;
    ses.user.require("operator").map_err(|e| ses.fail(e))?;
    match s.engine.retry_incident(&id, &ses.user.name).await {
        // Settled meanwhile (a second click, another operator): the list
        // says how things stand now.
        Ok(()) | Err(tramite_engine::Error::IncidentNotOpen { .. }) => {
            Ok(Redirect::to("/incidents").into_response())
        }
        Err(e @ tramite_engine::Error::IncidentNeedsResolution { .. }) => {
            Err(ses.fail(e).saying(ses.w.incident_needs_resolution))
        }
        Err(
            e @ (tramite_engine::Error::InstanceNotRunning { .. }
            | tramite_engine::Error::IncidentJobGone { .. }),
        ) => Err(ses.fail(e).saying(ses.w.incident_not_retriable)),
        Err(e) => Err(ses.fail(e)),
    }
}

async fn indicators(State(s): Shared, headers: HeaderMap) -> Result<Response, PageError> {
    let ses = session(&s, &headers).await?;
    let now = s.engine.now();
    let day = 86_400_000;
    // The last 30 local days, today included.
    let offset = -240i64 * 60_000;
    let today = (now + offset).div_euclid(day) * day - offset;
    let (from, to) = (today - 29 * day, today + day);
    let mut boards = Vec::new();
    for code in codes(&s, &ses).await? {
        let p = s
            .engine
            .latest_process(&code)
            .await
            .map_err(|e| ses.fail(e))?;
        let def = &p.definition;
        if def.indicators.is_empty() {
            continue;
        }
        let (durations, gates) = s
            .engine
            .statistics(&code, from, to)
            .await
            .map_err(|e| ses.fail(e))?;
        for ind in &def.indicators {
            let values = s
                .engine
                .indicator(&IndicatorQuery {
                    code: code.clone(),
                    indicator: ind.id.clone(),
                    from,
                    to,
                    period: Some(tramite_engine::definition::Period::Daily),
                    utc_offset_minutes: -240,
                })
                .await
                .map_err(|e| ses.fail(e))?;
            // Every day of the window, those without requests too.
            let days: Vec<_> = (0..30)
                .map(|n| {
                    let period = tramite_engine::runtime::indicators::period_of(
                        from + n * day,
                        tramite_engine::definition::Period::Daily,
                        -240,
                    );
                    values
                        .iter()
                        .find(|v| v.period == period)
                        .cloned()
                        .unwrap_or_else(|| {
                            tramite_engine::runtime::indicators::IndicatorValue::empty(period)
                        })
                })
                .collect();
            boards.push(Board::new(def, ind, &days, &durations, &gates, ses.lang));
        }
    }
    Ok(render(&IndicatorsPage {
        w: ses.w,
        user: Some(&ses.user),
        boards,
    }))
}

/// Percent-encodes a query value.
fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A definition's instructions as HTML: no raw HTML, and links and images
/// only to web, mail and phone addresses or to this site (a `javascript:`
/// link would run in every agent's session who clicks it).
fn markdown(text: &str) -> String {
    use pulldown_cmark::{Event, Tag};
    let parser = pulldown_cmark::Parser::new_ext(text, pulldown_cmark::Options::ENABLE_TABLES)
        .filter(|e| !matches!(e, Event::Html(_) | Event::InlineHtml(_)))
        .map(|e| match e {
            Event::Start(Tag::Link {
                link_type,
                dest_url,
                title,
                id,
            }) if !safe_url(&dest_url) => Event::Start(Tag::Link {
                link_type,
                dest_url: "#".into(),
                title,
                id,
            }),
            Event::Start(Tag::Image {
                link_type,
                dest_url,
                title,
                id,
            }) if !safe_url(&dest_url) => Event::Start(Tag::Image {
                link_type,
                dest_url: "#".into(),
                title,
                id,
            }),
            other => other,
        });
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, parser);
    html
}

/// A relative address, or one whose scheme is http, https, mailto or tel.
fn safe_url(url: &str) -> bool {
    let scheme_end = url.find(':');
    let path_start = url.find(['/', '?', '#']);
    match (scheme_end, path_start) {
        (None, _) => true,
        (Some(colon), Some(slash)) if slash < colon => true,
        (Some(colon), _) => matches!(
            url[..colon].to_ascii_lowercase().as_str(),
            "http" | "https" | "mailto" | "tel"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A note of 1,000 characters over several lines, as a browser counts
    /// them against `maxlength`, is 1,000 against `max_length` too: the
    /// CRLF the browser sends for each line break is stored as one.
    #[test]
    fn line_breaks_count_as_the_browser_counts_them() {
        let fields: Vec<tramite_engine::definition::Field> =
            serde_yaml::from_str("- {name: nota, type: text, max_length: 1000}").unwrap();
        let typed = vec!["x".repeat(99); 10].join("\r\n");
        assert_eq!(typed.len(), 1_008);
        let sent = HashMap::from([("nota".to_owned(), typed)]);
        let (data, errors) = form_data(&fields, &sent, &Map::new());
        assert!(errors.is_empty());
        let stored = data["nota"].as_str().unwrap();
        assert_eq!(stored.chars().count(), 999);
        assert!(!stored.contains('\r'));
        let form = tramite_engine::runtime::forms::Form::new(&fields).unwrap();
        assert!(form.check(&Value::Object(data)).is_empty());
    }

    /// A datetime field's input sends Bolivia's wall clock without an
    /// offset; it is stored as that time in UTC−4, the instant the agent
    /// meant. A full timestamp typed by hand goes on as it came.
    #[test]
    fn a_wall_clock_time_is_bolivian() {
        let fields: Vec<tramite_engine::definition::Field> =
            serde_yaml::from_str("- {name: cita, type: datetime}").unwrap();
        let sent = |v: &str| -> HashMap<String, String> {
            [("cita".to_owned(), v.to_owned())].into_iter().collect()
        };
        let (data, errors) = form_data(&fields, &sent("2026-12-07T09:05"), &Map::new());
        assert!(errors.is_empty());
        assert_eq!(data["cita"], "2026-12-07T09:05:00-04:00");
        assert_eq!(
            tramite_engine::runtime::machine::timestamp_ms(&data["cita"]),
            tramite_engine::runtime::machine::timestamp_ms(&serde_json::json!(
                "2026-12-07T13:05:00Z"
            ))
        );
        let (data, _) = form_data(&fields, &sent("2026-12-07T13:05:00Z"), &Map::new());
        assert_eq!(data["cita"], "2026-12-07T13:05:00Z");
    }

    #[test]
    fn form_values_that_mean_nothing_are_refused_not_guessed() {
        let fields: Vec<tramite_engine::definition::Field> = serde_yaml::from_str(
            "- {name: satisfecho, type: boolean}\n- {name: deuda, type: number}",
        )
        .unwrap();
        let form = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let (data, errors) = form_data(
            &fields,
            &form(&[("satisfecho", "on"), ("deuda", "12,5")]),
            &Map::new(),
        );
        assert!(errors.is_empty());
        assert_eq!(data["satisfecho"], true);
        assert_eq!(data["deuda"], 12.5);
        let (data, errors) = form_data(
            &fields,
            &form(&[("satisfecho__present", "1"), ("deuda", "")]),
            &Map::new(),
        );
        assert!(errors.is_empty());
        assert_eq!(data["satisfecho"], false);
        assert!(!data.contains_key("deuda"));
        // Emptied where the request had a value: cleared, as `null` does
        // in the API; an untouched field the form does not send stays.
        let had: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"deuda": 3.5, "satisfecho": true})).unwrap();
        let (data, errors) = form_data(
            &fields,
            &form(&[("deuda", " "), ("deuda__shown", "1")]),
            &had,
        );
        assert!(errors.is_empty());
        assert_eq!(data.get("deuda"), Some(&Value::Null));
        assert!(!data.contains_key("satisfecho"));
        // A value the page did not show (written after it was drawn) stays.
        let (data, _) = form_data(&fields, &form(&[("deuda", "")]), &had);
        assert!(!data.contains_key("deuda"), "{data:?}");
        let (data, errors) = form_data(
            &fields,
            &form(&[("satisfecho", "si"), ("deuda", "NaN")]),
            &Map::new(),
        );
        assert!(data.is_empty(), "{data:?}");
        let wrong: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.field.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            wrong,
            [
                ("satisfecho", "must be yes or no"),
                ("deuda", "must be a number")
            ]
        );
        let (_, errors) = form_data(&fields, &form(&[("deuda", "inf")]), &Map::new());
        assert_eq!(errors.len(), 1);
    }

    /// A list is written one item per line and an object as JSON, as the
    /// page shows them, and both come back with their types (as text,
    /// every submit of a list or object field was refused).
    #[test]
    fn lists_and_objects_come_back_typed() {
        let fields: Vec<tramite_engine::definition::Field> =
            serde_yaml::from_str("- {name: etiquetas, type: list}\n- {name: extra, type: object}")
                .unwrap();
        let form: HashMap<String, String> = [
            ("etiquetas", "fibra\r\n  poste  \n\n"),
            ("extra", r#"{"piso": 3}"#),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let (data, errors) = form_data(&fields, &form, &Map::new());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(data["etiquetas"], serde_json::json!(["fibra", "poste"]));
        assert_eq!(data["extra"], serde_json::json!({"piso": 3}));
        let form: HashMap<String, String> = [("extra".to_owned(), "[1, 2]".to_owned())].into();
        let (data, errors) = form_data(&fields, &form, &Map::new());
        assert!(data.is_empty());
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].message.starts_with("must be an object"),
            "{errors:?}"
        );
    }

    #[test]
    fn instructions_link_only_to_safe_addresses() {
        for bad in [
            "[Ver protocolo](javascript:fetch('/incidents/x/retry'))",
            "<javascript:alert(1)>",
            "[x](JaVaScRiPt:alert(1))",
            "[x](vbscript:msgbox)",
            "![i](data:text/html;base64,PHNjcmlwdD4=)",
            "[x][ref]\n\n[ref]: javascript:alert(1)",
        ] {
            let html = markdown(bad);
            let targets: Vec<&str> = [" href=\"", " src=\""]
                .iter()
                .flat_map(|attr| html.split(attr).skip(1))
                .filter_map(|rest| rest.split('"').next())
                .collect();
            assert!(
                !targets.is_empty() && targets.iter().all(|t| *t == "#"),
                "{bad} gave {html}"
            );
        }
        for good in [
            "[web](https://www.entel.bo/planes)",
            "[inbox](/inbox?role=x)",
            "[correo](mailto:ventas@example.bo)",
            "[llamar](tel:+59171712345)",
            "[abajo](#paso-3)",
            "[rel](docs/protocolo.pdf)",
            "[hora](/x?at=10:30)",
        ] {
            let target = &good[good.find('(').unwrap() + 1..good.len() - 1];
            assert!(
                markdown(good).contains(&format!("href=\"{target}\"")),
                "{good}"
            );
        }
    }
}
