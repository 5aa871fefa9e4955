//! One-time join tokens: the enrollment fallback for hosts that cannot reach their KDC
//! (`crate::enrollment::token` decides; this keeps the rows). A token's creation and its
//! revocation are each written with their audit event in one transaction; its use is audited
//! by enrollment (`agent-enrolled`, naming the token) once the certificate is issued. Only the
//! SHA-256 of a token's secret is stored.

use serde::Serialize;
use sqlx::Row;

use super::audit::insert_event;
use super::{Store, StoreError, now_ms, text};

/// Audit event kinds of join tokens.
pub const EVENT_JOIN_TOKEN_CREATED: &str = "agent-join-token-created";
pub const EVENT_JOIN_TOKEN_REVOKED: &str = "agent-join-token-revoked";

/// A join token as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JoinToken {
    pub id: String,
    pub host: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub created_by: String,
    pub used_at_ms: Option<i64>,
    pub used_from: Option<String>,
    pub revoked_at_ms: Option<i64>,
    pub revoked_by: Option<String>,
}

/// What `revoke_join_token` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRevoked {
    /// Refused from now on.
    Now(JoinToken),
    /// It was already revoked or used: nothing written.
    Unchanged(JoinToken),
}

/// The columns `token_from_row` reads, in order (a macro: sqlx takes only literal SQL).
macro_rules! select_tokens {
    ($rest:literal) => {
        concat!(
            "SELECT id, host, created_at, expires_at, created_by, used_at, used_from, revoked_at, revoked_by ",
            "FROM join_tokens ",
            $rest
        )
    };
}

impl Store {
    /// Stores a new token (`hash`: the hex SHA-256 of its secret) with its audit event.
    pub async fn create_join_token(&self, token: &JoinToken, hash: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO join_tokens (id, host, token_hash, created_at, expires_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(text(&token.id))
        .bind(text(&token.host))
        .bind(text(hash))
        .bind(token.created_at_ms)
        .bind(token.expires_at_ms)
        .bind(text(&token.created_by))
        .execute(&mut *tx)
        .await?;
        let detail = format!(
            "join token {} for {} until {}",
            token.id,
            token.host,
            crate::report::format_ms(token.expires_at_ms)
        );
        insert_event(
            &mut tx,
            token.created_at_ms,
            EVENT_JOIN_TOKEN_CREATED,
            &token.host,
            &token.created_by,
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The token whose secret hashes to `hash`, whatever its state.
    pub async fn join_token_by_hash(&self, hash: &str) -> Result<Option<JoinToken>, StoreError> {
        let row = sqlx::query(select_tokens!("WHERE token_hash = $1"))
            .bind(text(hash))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// The token named `id`.
    pub async fn join_token(&self, id: &str) -> Result<Option<JoinToken>, StoreError> {
        let row = sqlx::query(select_tokens!("WHERE id = $1"))
            .bind(text(id))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Every token, newest first.
    pub async fn join_tokens(&self) -> Result<Vec<JoinToken>, StoreError> {
        let rows = sqlx::query(select_tokens!("ORDER BY created_at DESC, id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Spends token `id` at `at` for a caller at `from`, if it is still unused, unrevoked and
    /// unexpired: one conditional UPDATE, so of any number of callers on any number of
    /// replicas exactly one gets `true`.
    pub async fn consume_join_token(&self, id: &str, at: i64, from: &str) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE join_tokens SET used_at = $1, used_from = $2 \
             WHERE id = $3 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $1",
        )
        .bind(at)
        .bind(text(from))
        .bind(text(id))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Undoes [`Store::consume_join_token`] of `id` at `at` when nothing was issued for it (the
    /// CA could not sign, the audit could not be written): the token may be used again.
    pub async fn release_join_token(&self, id: &str, at: i64, from: &str) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE join_tokens SET used_at = NULL, used_from = NULL WHERE id = $1 AND used_at = $2 AND used_from = $3",
        )
        .bind(text(id))
        .bind(at)
        .bind(text(from))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Revokes token `id` (unless used or revoked already) with its audit event; `None` when
    /// there is no such token.
    pub async fn revoke_join_token(&self, id: &str, by: &str) -> Result<Option<TokenRevoked>, StoreError> {
        let at = now_ms();
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE join_tokens SET revoked_at = $1, revoked_by = $2 WHERE id = $3 AND used_at IS NULL AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(text(by))
        .bind(text(id))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let row = sqlx::query(select_tokens!("WHERE id = $1"))
            .bind(text(id))
            .fetch_optional(&mut *tx)
            .await?;
        let Some(token) = row.as_ref().map(token_from_row).transpose()? else {
            tx.rollback().await?;
            return Ok(None);
        };
        if n == 0 {
            tx.rollback().await?;
            return Ok(Some(TokenRevoked::Unchanged(token)));
        }
        let detail = format!("join token {id} revoked before use");
        insert_event(&mut tx, at, EVENT_JOIN_TOKEN_REVOKED, &token.host, by, &detail).await?;
        tx.commit().await?;
        Ok(Some(TokenRevoked::Now(token)))
    }
}

fn token_from_row(r: &sqlx::any::AnyRow) -> Result<JoinToken, StoreError> {
    Ok(JoinToken {
        id: r.try_get(0)?,
        host: r.try_get(1)?,
        created_at_ms: r.try_get(2)?,
        expires_at_ms: r.try_get(3)?,
        created_by: r.try_get(4)?,
        used_at_ms: r.try_get(5)?,
        used_from: r.try_get(6)?,
        revoked_at_ms: r.try_get(7)?,
        revoked_by: r.try_get(8)?,
    })
}
