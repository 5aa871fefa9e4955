-- Leader election among controller replicas sharing one store: one row per
-- lease. `epoch` grows by one whenever the lease changes hands (or is taken
-- again after it expired); every AD write is fenced by (holder, epoch) and the
-- audit records the epoch it was written under. Times are Unix ms.
CREATE TABLE leases (
    name        TEXT    PRIMARY KEY,
    holder      TEXT    NOT NULL,
    address     TEXT    NOT NULL,
    epoch       BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL
);

-- The lease epoch an audited write was made under (0: no lease, a single
-- controller).
ALTER TABLE audit ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
