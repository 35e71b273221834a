//! Console users: names, roles and Argon2id password hashes, kept in their
//! own small SQLite file (`console.db` beside the data), apart from the
//! monitoring data so a retention drop or a backend change never touches
//! them. Never stores or logs a password; hashing is slow on purpose, so
//! callers run [`UserStore::verify`] and [`UserStore::create`] on a
//! blocking thread.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use thiserror::Error;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Role {
    /// Everything, including managing users.
    #[serde(rename = "admin")]
    Admin,
    /// Looks at everything, changes nothing.
    #[serde(rename = "read-only")]
    ReadOnly,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "read-only" => Some(Role::ReadOnly),
            _ => None,
        }
    }
}

/// Why a user operation failed.
#[derive(Debug, Error)]
pub enum UserError {
    #[error("user database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("user `{0}` exists")]
    Exists(String),
    #[error("{0}")]
    Invalid(&'static str),
}

/// A user as listed (never with the hash).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UserView {
    pub name: String,
    pub role: Role,
    pub created_ms: i64,
}

/// The users of one collector.
pub struct UserStore {
    db: Mutex<Connection>,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    role TEXT NOT NULL,
    created_ms INTEGER NOT NULL
)";

fn hash(password: &str) -> Result<String, UserError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

fn check_name(name: &str) -> Result<(), UserError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
        return Err(UserError::Invalid(
            "a user name is 1 to 64 printable characters",
        ));
    }
    Ok(())
}

impl UserStore {
    /// Opens (creating) `dir/console.db`.
    pub fn open(dir: &Path) -> Result<UserStore, UserError> {
        let db = Connection::open(dir.join("console.db"))?;
        db.execute_batch(SCHEMA)?;
        Ok(UserStore { db: Mutex::new(db) })
    }

    /// An in-memory store, for tests.
    #[cfg(test)]
    pub fn in_memory() -> UserStore {
        let db = Connection::open_in_memory().expect("in-memory SQLite");
        db.execute_batch(SCHEMA).expect("schema");
        UserStore { db: Mutex::new(db) }
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates a user; refuses an existing name.
    pub fn create(
        &self,
        name: &str,
        password: &str,
        role: Role,
        now_ms: i64,
    ) -> Result<(), UserError> {
        check_name(name)?;
        if password.is_empty() {
            return Err(UserError::Invalid("the password must not be empty"));
        }
        let hash = hash(password)?;
        let inserted = self.lock().execute(
            "INSERT OR IGNORE INTO users (name, hash, role, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![name, hash, role.as_str(), now_ms],
        )?;
        if inserted == 0 {
            return Err(UserError::Exists(name.to_owned()));
        }
        Ok(())
    }

    /// Creates the admin from the configuration unless a user of that name
    /// exists (its password is then left as it is). True when created.
    pub fn ensure_admin(&self, name: &str, password: &str, now_ms: i64) -> Result<bool, UserError> {
        match self.create(name, password, Role::Admin, now_ms) {
            Ok(()) => Ok(true),
            Err(UserError::Exists(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The user's role when `password` is theirs.
    pub fn verify(&self, name: &str, password: &str) -> Result<Option<Role>, UserError> {
        let row: Option<(String, String)> = self
            .lock()
            .query_row(
                "SELECT hash, role FROM users WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((stored, role)) = row else {
            // Hash anyway, so a wrong name takes as long as a wrong password.
            let _ = hash(password);
            return Ok(None);
        };
        let parsed = PasswordHash::new(&stored).map_err(|e| UserError::Hash(e.to_string()))?;
        if Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_err()
        {
            return Ok(None);
        }
        Ok(Role::parse(&role))
    }

    /// Every user, by name.
    pub fn list(&self) -> Result<Vec<UserView>, UserError> {
        let db = self.lock();
        let mut stmt = db.prepare("SELECT name, role, created_ms FROM users ORDER BY name")?;
        let rows = stmt.query_map([], |r| {
            let role: String = r.get(1)?;
            Ok(UserView {
                name: r.get(0)?,
                role: Role::parse(&role).unwrap_or(Role::ReadOnly),
                created_ms: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes a user. False if there was none.
    pub fn delete(&self, name: &str) -> Result<bool, UserError> {
        Ok(self
            .lock()
            .execute("DELETE FROM users WHERE name = ?1", [name])?
            > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_verify_list_delete() {
        let users = UserStore::in_memory();
        assert!(users.ensure_admin("admin", "s3cret", 1).unwrap());
        assert!(!users.ensure_admin("admin", "other", 2).unwrap());
        assert_eq!(users.verify("admin", "s3cret").unwrap(), Some(Role::Admin));
        assert_eq!(users.verify("admin", "other").unwrap(), None);
        assert_eq!(users.verify("nobody", "s3cret").unwrap(), None);
        users.create("viewer", "pw", Role::ReadOnly, 3).unwrap();
        assert!(matches!(
            users.create("viewer", "pw", Role::Admin, 4),
            Err(UserError::Exists(_))
        ));
        assert!(matches!(
            users.create("", "pw", Role::Admin, 4),
            Err(UserError::Invalid(_))
        ));
        assert_eq!(users.verify("viewer", "pw").unwrap(), Some(Role::ReadOnly));
        let list = users.list().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].name, "viewer");
        assert_eq!(list[1].role, Role::ReadOnly);
        // The hash is never the password.
        let stored: String = users
            .lock()
            .query_row("SELECT hash FROM users WHERE name='admin'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(stored.starts_with("$argon2id$") && !stored.contains("s3cret"));
        assert!(users.delete("viewer").unwrap());
        assert!(!users.delete("viewer").unwrap());
    }
}
