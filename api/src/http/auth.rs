//! Bearer tokens for users defined in a configuration file, stored as
//! SHA-256 hashes. Each user has roles: the procedure's roles (which tasks
//! they see) and system roles: `process_owner` (deploy), `operator`
//! (cancel, retry, resolve), `channel` (start instances, publish messages).

use std::collections::HashMap;

use axum::http::HeaderMap;
use serde::Deserialize;
use sha2::{Digest, Sha256};

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
}

/// A signed-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Name.
    pub name: String,
    /// Roles.
    pub roles: Vec<String>,
}

impl User {
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
        match asked {
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
}

/// Known users by token hash.
#[derive(Debug, Clone, Default)]
pub struct Users {
    by_hash: HashMap<String, User>,
}

/// SHA-256 of a token, hex.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Users {
    /// From the users file.
    pub fn from_file(file: UsersFile) -> Users {
        Users {
            by_hash: file
                .users
                .into_iter()
                .map(|u| {
                    (
                        u.token_sha256.to_ascii_lowercase(),
                        User {
                            name: u.name,
                            roles: u.roles,
                        },
                    )
                })
                .collect(),
        }
    }

    /// Adds a user with a token (development mode, tests).
    pub fn with(mut self, name: &str, token: &str, roles: &[&str]) -> Users {
        self.by_hash.insert(
            hash(token),
            User {
                name: name.to_owned(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            },
        );
        self
    }

    /// The user a token belongs to.
    pub fn by_token(&self, token: &str) -> Option<User> {
        self.by_hash.get(&hash(token.trim())).cloned()
    }

    /// The user a request's `Authorization: Bearer …` names.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<User, Error> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Error::Unauthorized)?;
        self.by_hash
            .get(&hash(token.trim()))
            .cloned()
            .ok_or(Error::Unauthorized)
    }
}
