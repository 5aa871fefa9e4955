-- Plans: every applied or gated change set. Values of list columns are JSON.
CREATE TABLE plans (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at  BIGINT  NOT NULL,
    state       TEXT    NOT NULL,
    trigger     TEXT    NOT NULL,
    digest      TEXT    NOT NULL,
    changes     TEXT    NOT NULL,
    gate_reasons TEXT   NOT NULL,
    decided_by  TEXT,
    decided_at  BIGINT,
    note        TEXT
);
CREATE INDEX plans_state ON plans (state);

-- Audit: one row per host per applied modify, before and after as read
-- from AD.
CREATE TABLE audit (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    time            BIGINT  NOT NULL,
    plan_id         BIGINT  NOT NULL REFERENCES plans (id),
    host            TEXT    NOT NULL,
    dn              TEXT    NOT NULL,
    uac_before      BIGINT  NOT NULL,
    uac_after       BIGINT  NOT NULL,
    delegate_before TEXT    NOT NULL,
    delegate_after  TEXT    NOT NULL,
    reasons         TEXT    NOT NULL,
    trigger         TEXT    NOT NULL,
    approved_by     TEXT
);
CREATE INDEX audit_host ON audit (host);
CREATE INDEX audit_plan ON audit (plan_id);
