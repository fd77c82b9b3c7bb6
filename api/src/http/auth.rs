//! Bearer tokens for users defined in a configuration file, stored as
//! SHA-256 hashes. Each user has roles: the procedure's roles (which tasks
//! they see) and system roles: `process_owner` (deploy), `operator`
//! (cancel, retry, resolve), `channel` (start instances, publish messages).
//! Requests are read by the roles their procedure names, operators and
//! process owners ([`User::may_read`]).

use std::collections::HashMap;

use axum::http::HeaderMap;
use hmac::Mac;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use tramite_engine::definition::Definition;

use super::error::Error;

/// The users file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// The users.
    pub users: Vec<UserEntry>,
}

/// One user in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// Their name (recorded as who did what).
    pub name: String,
    /// SHA-256 of their token, in hex.
    pub token_sha256: String,
    /// Their roles.
    pub roles: Vec<String>,
    /// The channels their starts may name (`[ivr]` for the IVR's token);
    /// left out or empty: any the procedure accepts. A token that lives
    /// in one integration should start requests as that channel only: a
    /// leaked Botmaker token could otherwise pose as the IVR.
    #[serde(default)]
    pub channels: Vec<String>,
    /// The messages they may publish (`POST /api/v1/messages`). Left out
    /// or empty: none if `channels` ties the token to its channels (the
    /// IVR's token must not deliver a client's WhatsApp documents, which
    /// only the signed webhook brings), any otherwise.
    #[serde(default)]
    pub messages: Vec<String>,
}

/// A web session whose cookie checked out: its user, its id (what
/// signing out ends) and when it expires, ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedSession {
    /// Who.
    pub user: User,
    /// 32 hexadecimal digits, random.
    pub id: String,
    /// Expiry, ms.
    pub expires: i64,
    /// When it ends unless used before, ms ([`IDLE_MS`] after its last
    /// use, never past `expires`).
    pub idle: i64,
}

/// A signed-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Name.
    pub name: String,
    /// Roles.
    pub roles: Vec<String>,
    /// The channels their starts may name; empty: any.
    pub channels: Vec<String>,
    /// The messages they may publish; empty: none if `channels` is not,
    /// any otherwise.
    pub messages: Vec<String>,
}

impl User {
    /// Refuses a start by `channel` unless the user may name it.
    pub fn may_start_by(&self, channel: &str) -> Result<(), Error> {
        if self.channels.is_empty() || self.channels.iter().any(|c| c == channel) {
            return Ok(());
        }
        Err(Error::Forbidden {
            reason: format!(
                "this token starts requests by {} only",
                self.channels
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }

    /// Refuses publishing message `name` unless the user may (see
    /// [`UserEntry::messages`]).
    pub fn may_publish(&self, name: &str) -> Result<(), Error> {
        if self.messages.iter().any(|m| m == name)
            || (self.messages.is_empty() && self.channels.is_empty())
        {
            return Ok(());
        }
        let reason = if self.messages.is_empty() {
            "this token is tied to its channels and publishes no messages (its users entry lists none under `messages`)".to_owned()
        } else {
            format!(
                "this token publishes {} only",
                self.messages
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Err(Error::Forbidden { reason })
    }

    /// Whether the user has `role`.
    pub fn has(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Refuses unless the user has one of `roles`; `action` says what for.
    pub fn require_any(&self, roles: &[&str], action: &str) -> Result<(), Error> {
        if roles.iter().any(|r| self.has(r)) {
            return Ok(());
        }
        let names: Vec<String> = roles.iter().map(|r| format!("`{r}`")).collect();
        Err(Error::Forbidden {
            reason: format!("{action} needs the {} role", names.join(" or ")),
        })
    }

    /// The roles whose tasks the user's inbox shows: `asked`, if it is one
    /// of theirs, else all of theirs. Empty for a user without roles, which
    /// the caller must read as no inbox: the engine's task filter reads no
    /// roles as any role.
    pub fn inbox_roles(&self, asked: Option<String>) -> Result<Vec<String>, Error> {
        // `?role=` (a form's empty choice, as the web inbox sends it) is
        // no filter, not a role called "".
        match asked.filter(|r| !r.is_empty()) {
            Some(role) if self.has(&role) => Ok(vec![role]),
            Some(role) => Err(Error::Forbidden {
                reason: format!("you do not have the role `{role}`"),
            }),
            None => Ok(self.roles.clone()),
        }
    }

    /// Refuses unless the user has `role`.
    pub fn require(&self, role: &str) -> Result<(), Error> {
        self.require_any(&[role], "this")
    }

    /// Whether the user reads every request: operators act on any,
    /// process owners answer for the procedures.
    pub fn reads_all(&self) -> bool {
        READS_ALL.iter().any(|r| self.has(r))
    }

    /// Refuses unless the user may read requests of `definition`: a
    /// request holds a client's identity, address and documents, so only
    /// the people the procedure names (its roles and owner) read it, and
    /// those who read every request. A channel's token, kept inside a
    /// third party's integration, starts requests but reads none.
    pub fn may_read(&self, definition: &Definition) -> Result<(), Error> {
        if self.reads_all() || self.roles.iter().any(|r| definition.names_role(r)) {
            return Ok(());
        }
        Err(Error::Forbidden {
            reason: format!(
                "requests of {} are read by its roles, `operator` and `process_owner`",
                definition.code
            ),
        })
    }
}

/// The roles that read every request.
pub const READS_ALL: [&str; 2] = ["operator", "process_owner"];

/// Known users by token hash, the key that signs their web sessions, and
/// how refused credentials are slowed down.
#[derive(Clone, Default)]
pub struct Users {
    by_hash: HashMap<String, User>,
    sessions: SessionKey,
    refusals: Refusals,
}

/// How answers that refuse credentials (401: a wrong token, over the API
/// or at the sign-in page) are slowed: each waits [`Refusals::delay`],
/// [`REFUSALS_AT_ONCE`] at a time, so that a node answers at most a few
/// guesses a second, however many connections ask. A caller with a good
/// token is never slowed. Per node: two nodes answer twice as many.
#[derive(Clone, Debug)]
pub struct Refusals {
    delay: std::time::Duration,
    gate: std::sync::Arc<tokio::sync::Semaphore>,
}

/// How long a refusal waits by default.
pub const REFUSAL_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// How many refusals wait at once (the others queue behind them).
pub const REFUSALS_AT_ONCE: usize = 4;

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            delay: REFUSAL_DELAY,
            gate: std::sync::Arc::new(tokio::sync::Semaphore::new(REFUSALS_AT_ONCE)),
        }
    }
}

/// Middleware: an answer that refuses credentials (401) goes out only
/// after its turn at the gate and the delay.
pub(super) async fn slow_refusals(
    axum::extract::State(refusals): axum::extract::State<Refusals>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(request).await;
    if response.status() == axum::http::StatusCode::UNAUTHORIZED
        && !refusals.delay.is_zero()
        && let Ok(_turn) = refusals.gate.acquire().await
    {
        tokio::time::sleep(refusals.delay).await;
    }
    response
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("users", &self.by_hash.len())
            .finish_non_exhaustive()
    }
}

/// How long a sign-in to the web UI lasts (ms): a working shift.
pub const SESSION_MS: i64 = 12 * 3600 * 1000;

/// How long a web session lasts unused (ms): on a shared PC, an agent who
/// walks away without "Salir" leaves it open for this long, not for the
/// rest of the shift. A page opened, a form sent, or typing in a task's form
/// (the page tells the server every few minutes) counts as use; the inbox
/// refreshing itself does not.
pub const IDLE_MS: i64 = 30 * 60 * 1000;

/// How far apart two nodes' clocks may be for a session to pass (ms).
pub const CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// The key web sessions are signed with: random for the process unless
/// given ([`Users::with_session_key`]).
#[derive(Clone)]
struct SessionKey(std::sync::Arc<[u8; 32]>);

impl Default for SessionKey {
    fn default() -> SessionKey {
        SessionKey(std::sync::Arc::new(rand::random()))
    }
}

/// SHA-256 of a token, hex.
pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Bytes as lower-case hexadecimal ([`unhex`] reads it back).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A users file entry that would let the wrong person in, or nobody.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserProblem {
    /// A user without a name (claims and the journal record names).
    #[error("user {position} has no name")]
    NoName {
        /// 1-based position in the file.
        position: usize,
    },
    /// Two entries with one name would be one person to claims and
    /// assignments.
    #[error("`{name}` is listed twice")]
    NameTwice {
        /// The name.
        name: String,
    },
    /// Not 64 hexadecimal digits: the plain token pasted in, or a cut hash.
    #[error("`{name}`: token_sha256 must be 64 hexadecimal digits (sha256sum of the token)")]
    NotAHash {
        /// The user.
        name: String,
    },
    /// The hash of no text at all: an empty sign-in would pass.
    #[error("`{name}`: token_sha256 is the hash of an empty token")]
    EmptyToken {
        /// The user.
        name: String,
    },
    /// Two users with one token: one of them would sign in as the other.
    #[error("`{name}` has the same token as `{other}`")]
    SameToken {
        /// The later user.
        name: String,
        /// The earlier one.
        other: String,
    },
}

impl Users {
    /// From the users file; every entry that would let the wrong person in
    /// (or nobody) is reported, not just the first.
    pub fn from_file(file: UsersFile) -> Result<Users, Vec<UserProblem>> {
        let empty = hash("");
        let mut problems = Vec::new();
        let mut names = std::collections::HashSet::new();
        let mut by_hash: HashMap<String, User> = HashMap::new();
        for (n, u) in file.users.into_iter().enumerate() {
            let name = u.name.trim().to_owned();
            if name.is_empty() {
                problems.push(UserProblem::NoName { position: n + 1 });
                continue;
            }
            if !names.insert(name.clone()) {
                problems.push(UserProblem::NameTwice { name: name.clone() });
            }
            let digest = u.token_sha256.trim().to_ascii_lowercase();
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                problems.push(UserProblem::NotAHash { name });
                continue;
            }
            if digest == empty {
                problems.push(UserProblem::EmptyToken { name });
                continue;
            }
            if let Some(other) = by_hash.get(&digest) {
                problems.push(UserProblem::SameToken {
                    name,
                    other: other.name.clone(),
                });
                continue;
            }
            by_hash.insert(
                digest,
                User {
                    name,
                    roles: u.roles,
                    channels: u.channels,
                    messages: u.messages,
                },
            );
        }
        if problems.is_empty() {
            Ok(Users {
                by_hash,
                sessions: SessionKey::default(),
                refusals: Refusals::default(),
            })
        } else {
            Err(problems)
        }
    }

    /// Whether a user of this name has `role` (assigning a task to someone
    /// who could never open it would strand it).
    pub fn named_with_role(&self, name: &str, role: &str) -> Option<bool> {
        self.by_hash
            .values()
            .find(|u| u.name == name)
            .map(|u| u.has(role))
    }

    /// Adds a user with a token (development mode, tests).
    pub fn with(mut self, name: &str, token: &str, roles: &[&str]) -> Users {
        self.by_hash.insert(
            hash(token),
            User {
                name: name.to_owned(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                channels: Vec::new(),
                messages: Vec::new(),
            },
        );
        self
    }

    /// The user a token belongs to.
    pub fn by_token(&self, token: &str) -> Option<User> {
        let token = token.trim();
        if token.is_empty() {
            return None;
        }
        self.by_hash.get(&hash(token)).cloned()
    }

    /// Refusals of credentials wait `delay` each (see [`Refusals`]); zero
    /// answers them at once (tests that refuse on purpose).
    pub fn with_refusal_delay(mut self, delay: std::time::Duration) -> Users {
        self.refusals.delay = delay;
        self
    }

    /// How refusals of credentials are slowed, for [`slow_refusals`].
    pub(super) fn refusals(&self) -> Refusals {
        self.refusals.clone()
    }

    /// Signs web sessions with a key derived from `secret`: every node
    /// serving one database needs the same, or a session begun on one is
    /// refused by the others (and every restart ends the sessions).
    pub fn with_session_key(mut self, secret: &str) -> Users {
        self.sessions = SessionKey(std::sync::Arc::new(
            Sha256::digest(secret.as_bytes()).into(),
        ));
        self
    }

    /// A web session for the holder of `token`, from `now` (ms) for
    /// [`SESSION_MS`]; `None` when no user has the token. The cookie is not
    /// the token: stolen, it opens the pages until it expires or its user
    /// signs out, not the API, and a user given a new token loses the
    /// sessions of the old one. Each session has a random id of its own,
    /// which signing out ends ([`tramite_engine::Engine::end_session`]).
    pub fn session(&self, token: &str, now: i64) -> Option<String> {
        let token = token.trim();
        if token.is_empty() {
            return None;
        }
        let digest = hash(token);
        let user = self.by_hash.get(&digest)?;
        let id = hex(&rand::random::<[u8; 16]>());
        Some(self.cookie(&user.name, &digest, now + SESSION_MS, &id, now))
    }

    /// The cookie of session `id`, used at `now`: its idle deadline moved
    /// on, its expiry and id as they were.
    fn cookie(&self, name: &str, digest: &str, expires: i64, id: &str, now: i64) -> String {
        let idle = (now + IDLE_MS).min(expires);
        let mac = hex(&self
            .session_mac(name, digest, (expires, idle), id)
            .finalize()
            .into_bytes());
        format!("{}.{expires}.{idle}.{id}.{mac}", hex(name.as_bytes()))
    }

    /// The cookie of `session`, used again at `now`; `None` if its user is
    /// gone.
    pub fn used(&self, session: &SignedSession, now: i64) -> Option<String> {
        let (digest, _) = self
            .by_hash
            .iter()
            .find(|(_, u)| u.name == session.user.name)?;
        Some(self.cookie(
            &session.user.name,
            digest,
            session.expires,
            &session.id,
            now,
        ))
    }

    /// The session a cookie's value names, if it is ours, unexpired and
    /// used within [`IDLE_MS`] at `now`, and its user still has the token
    /// it began with. Whether it was signed out is the database's to say.
    pub fn by_session(&self, value: &str, now: i64) -> Option<SignedSession> {
        let signed = self.signed(value)?;
        // Nodes' clocks differ by a little: a session minted on one a
        // minute ahead is still good on the other (the signature covers
        // the expiry; the bound only refuses the absurd).
        let (expires, idle) = (signed.expires, signed.idle);
        if expires <= now || expires > now + SESSION_MS + CLOCK_SKEW_MS {
            return None;
        }
        if idle <= now || idle > expires || idle > now + IDLE_MS + CLOCK_SKEW_MS {
            return None;
        }
        Some(signed)
    }

    /// Who a cookie's session was, ended or not, if it is ours: to tell
    /// whether the person signing in again is the one it was (the page it
    /// asked for is theirs to go back to, not the next person's).
    pub fn whose(&self, value: &str) -> Option<String> {
        self.signed(value).map(|s| s.user.name)
    }

    /// The session a cookie's value names if its signature is ours,
    /// whatever its times.
    fn signed(&self, value: &str) -> Option<SignedSession> {
        let mut parts = value.trim().split('.');
        let (name, expires, idle, id, mac) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some() || id.len() != 32 || unhex(id).is_none() {
            return None;
        }
        let expires: i64 = expires.parse().ok()?;
        let idle: i64 = idle.parse().ok()?;
        let name = String::from_utf8(unhex(name)?).ok()?;
        let (digest, user) = self.by_hash.iter().find(|(_, u)| u.name == name)?;
        self.session_mac(&name, digest, (expires, idle), id)
            .verify_slice(&unhex(mac)?)
            .ok()?;
        Some(SignedSession {
            user: user.clone(),
            id: id.to_owned(),
            expires,
            idle,
        })
    }

    fn session_mac(
        &self,
        name: &str,
        digest: &str,
        (expires, idle): (i64, i64),
        id: &str,
    ) -> hmac::Hmac<Sha256> {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(self.sessions.0.as_slice())
            .expect("HMAC takes any key");
        for part in [
            name.as_bytes(),
            b"\n",
            digest.as_bytes(),
            b"\n",
            id.as_bytes(),
            b"\n",
        ] {
            mac.update(part);
        }
        mac.update(expires.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(idle.to_string().as_bytes());
        mac
    }

    /// The user a request's `Authorization: Bearer …` names.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<User, Error> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // The scheme's name is case-insensitive (RFC 9110 §11.1).
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or(Error::Unauthorized)?;
        self.by_token(token).ok_or(Error::Unauthorized)
    }
}

/// Bytes from lower- or upper-case hexadecimal (session cookies, webhook
/// signatures).
pub(super) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Refusals of credentials go out a few at a time, each after the
    /// delay; an answer that refuses nothing is not slowed.
    #[tokio::test(start_paused = true)]
    async fn refusals_are_slowed_a_few_at_a_time() {
        use axum::http::{Request, StatusCode};
        use tower::ServiceExt;
        let app = axum::Router::new()
            .route(
                "/no",
                axum::routing::get(|| async { StatusCode::UNAUTHORIZED }),
            )
            .route("/yes", axum::routing::get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(
                Refusals::default(),
                slow_refusals,
            ));
        let call = |uri: &'static str| {
            let app = app.clone();
            async move {
                let request = Request::get(uri).body(axum::body::Body::empty()).unwrap();
                app.oneshot(request).await.unwrap().status()
            }
        };
        let start = tokio::time::Instant::now();
        assert_eq!(call("/yes").await, StatusCode::OK);
        assert_eq!(start.elapsed(), std::time::Duration::ZERO);
        let mut guesses = tokio::task::JoinSet::new();
        for _ in 0..2 * REFUSALS_AT_ONCE {
            guesses.spawn(call("/no"));
        }
        while let Some(status) = guesses.join_next().await {
            assert_eq!(status.unwrap(), StatusCode::UNAUTHORIZED);
        }
        assert_eq!(start.elapsed(), 2 * REFUSAL_DELAY, "two rounds of four");
    }

    /// A session names its user until it expires, only under the key that
    /// signed it, and ends when the user's token changes; a tampered
    /// cookie (another name, a later expiry) names nobody.
    #[test]
    fn a_session_is_signed_expires_and_ends_with_the_token() {
        let users = Users::default().with("ana", "clave-ana", &["agente"]).with(
            "luis",
            "clave-luis",
            &["operator"],
        );
        let now = 1_800_000_000_000;
        let cookie = users.session("clave-ana", now).unwrap();
        assert!(!cookie.contains("clave-ana"));
        let session = users.by_session(&cookie, now + 1).unwrap();
        assert_eq!(
            (session.user.name.as_str(), session.expires, session.idle),
            ("ana", now + SESSION_MS, now + IDLE_MS)
        );
        assert_eq!(users.by_session(&cookie, now + IDLE_MS), None, "unused");
        // Used, it lasts another IDLE_MS from then, up to its expiry.
        let mut at = now;
        let mut used = cookie.clone();
        while at + IDLE_MS < now + SESSION_MS {
            at += IDLE_MS - 1;
            let session = users.by_session(&used, at).expect("used in time");
            used = users.used(&session, at).unwrap();
        }
        let last = users.by_session(&used, at).unwrap();
        assert_eq!(
            (last.id, last.expires, last.idle),
            (session.id.clone(), now + SESSION_MS, now + SESSION_MS),
            "the same session, never past its expiry"
        );
        assert_eq!(users.by_session(&used, now + SESSION_MS), None, "expired");
        assert_eq!(users.session("nadie", now), None);
        let again = users.session("clave-ana", now).unwrap();
        assert_ne!(
            users.by_session(&again, now + 1).unwrap().id,
            session.id,
            "each sign-in is a session of its own"
        );
        let [name, expires, idle, id, mac]: [&str; 5] =
            cookie.split('.').collect::<Vec<_>>().try_into().unwrap();
        let luis = hex(b"luis");
        let other_id = "f".repeat(32);
        for forged in [
            format!("{luis}.{expires}.{idle}.{id}.{mac}"),
            format!("{name}.{}.{idle}.{id}.{mac}", now + 3_600_000),
            format!("{name}.{expires}.{}.{id}.{mac}", now + 3_600_000),
            format!("{name}.{expires}.{idle}.{other_id}.{mac}"),
            format!("{name}.{expires}.{idle}.{id}.{}", "0".repeat(64)),
            // A cookie from before the idle deadline existed.
            format!("{name}.{expires}.{id}.{mac}"),
            format!("{name}.{expires}.{idle}.{id}"),
            "garbage".to_owned(),
        ] {
            assert_eq!(users.by_session(&forged, now + 1), None, "{forged}");
        }
        let other_key = users.clone().with_session_key("otra clave");
        assert_eq!(other_key.by_session(&cookie, now + 1), None, "another key");
        let mut replaced = users;
        replaced.by_hash.remove(&hash("clave-ana"));
        let replaced = replaced.with("ana", "clave-nueva", &["agente"]);
        assert_eq!(
            replaced.by_session(&cookie, now + 1),
            None,
            "a new token ends the old sessions"
        );
    }

    fn entry(name: &str, digest: &str) -> UserEntry {
        UserEntry {
            name: name.to_owned(),
            token_sha256: digest.to_owned(),
            roles: vec!["agente_ventas_digitales".to_owned()],
            channels: Vec::new(),
            messages: Vec::new(),
        }
    }

    #[test]
    fn a_users_file_that_lets_the_wrong_person_in_is_refused_whole() {
        let ana = hash("clave-ana");
        let file = UsersFile {
            users: vec![
                entry("ana", &ana.to_ascii_uppercase()),
                entry("luis", &ana),
                entry("", &hash("x")),
                entry("rosa", "clave-rosa"),
                entry("ana", &hash("otra")),
                entry("vacio", &hash("")),
            ],
        };
        let problems = Users::from_file(file).unwrap_err();
        assert_eq!(
            problems,
            vec![
                UserProblem::SameToken {
                    name: "luis".into(),
                    other: "ana".into()
                },
                UserProblem::NoName { position: 3 },
                UserProblem::NotAHash {
                    name: "rosa".into()
                },
                UserProblem::NameTwice { name: "ana".into() },
                UserProblem::EmptyToken {
                    name: "vacio".into()
                },
            ]
        );
        let users = Users::from_file(UsersFile {
            users: vec![entry("ana", &format!(" {} ", ana.to_ascii_uppercase()))],
        })
        .unwrap();
        assert_eq!(users.by_token("clave-ana").unwrap().name, "ana");
        assert_eq!(users.by_token(""), None);
        assert_eq!(
            users.named_with_role("ana", "agente_ventas_digitales"),
            Some(true)
        );
        assert_eq!(users.named_with_role("ana", "operator"), Some(false));
        assert_eq!(users.named_with_role("anna", "operator"), None);
    }
}
