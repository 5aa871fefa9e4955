//! The leader lease: one holder at a time, with an epoch that fences a deposed holder's writes.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, now_ms, text};

/// A leader lease as stored: who holds it, where its API answers, under which epoch, until when
/// (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub address: String,
    pub epoch: i64,
    pub expires_at_ms: i64,
}

impl Store {
    /// Takes or renews the lease `name` for `holder` for `ttl_ms`, in one statement: a new
    /// lease starts at epoch 1; an expired lease is taken over (by anyone, its former holder
    /// included) at epoch + 1; the live holder renews it at the same epoch. Returns the epoch
    /// held, or `None` while another holder's lease is live. Times are this process's clock:
    /// replicas need clocks in step to well under the TTL.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        address: &str,
        ttl_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO leases (name, holder, address, epoch, expires_at) VALUES ($1, $2, $3, 1, $4) \
             ON CONFLICT (name) DO UPDATE SET \
               epoch = CASE WHEN leases.holder = excluded.holder AND leases.expires_at >= $5 THEN leases.epoch ELSE leases.epoch + 1 END, \
               holder = excluded.holder, address = excluded.address, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < $5 \
             RETURNING epoch",
        )
        .bind(text(name))
        .bind(text(holder))
        .bind(text(address))
        .bind(now + ttl_ms)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?)
    }

    /// The lease `name` as stored (live or expired), if it was ever taken.
    pub async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query("SELECT name, holder, address, epoch, expires_at FROM leases WHERE name = $1")
            .bind(text(name))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Lease {
                name: r.try_get(0)?,
                holder: r.try_get(1)?,
                address: r.try_get(2)?,
                epoch: r.try_get(3)?,
                expires_at_ms: r.try_get(4)?,
            })
        })
        .transpose()
    }

    /// Whether `holder` still holds the live lease `name` at `epoch` (the fencing check).
    pub async fn holds_lease(&self, name: &str, holder: &str, epoch: i64) -> Result<bool, StoreError> {
        let row =
            sqlx::query("SELECT 1 FROM leases WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at >= $4")
                .bind(text(name))
                .bind(text(holder))
                .bind(epoch)
                .bind(now_ms())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    /// Gives the lease up (it expires now), if `holder` holds it; the next taker gets epoch + 1.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE leases SET expires_at = $1 WHERE name = $2 AND holder = $3")
            .bind(now_ms() - 1)
            .bind(text(name))
            .bind(text(holder))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
