-- The per-DC verify (runtime::replication): for every object a plan wrote, when its change
-- was seen on each other domain controller. One row per (plan, object, DC), written when the
-- watch starts (arrived_at NULL: still waiting) and completed when the change is read there.
CREATE TABLE replication (
    plan_id    BIGINT  NOT NULL,
    host       TEXT    NOT NULL,
    dn         TEXT    NOT NULL,
    dc         TEXT    NOT NULL,
    -- When the write was verified on the DC it was made on, Unix ms.
    written_at BIGINT  NOT NULL,
    -- When the change was first read on this DC, Unix ms.
    arrived_at BIGINT,
    PRIMARY KEY (plan_id, dn, dc)
);
CREATE INDEX replication_waiting ON replication (dc) WHERE arrived_at IS NULL;
