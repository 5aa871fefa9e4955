-- The agents' deny-list: a host listed here is refused on the agent endpoint of every
-- controller replica sharing this store (its stream refused at Hello with PERMISSION_DENIED,
-- a live one cut within a second), whatever certificate it holds. One row per host while it
-- is revoked; `agents unrevoke` deletes the row. Host is the FQDN, lower-case. Times are
-- Unix ms.
CREATE TABLE agent_revocations (
    host        TEXT    PRIMARY KEY,
    revoked_at  BIGINT  NOT NULL,
    reason      TEXT    NOT NULL,
    revoked_by  TEXT    NOT NULL
);

-- Audit events that are not AD modifies (the `audit` table holds one row per LDAP modify,
-- tied to its plan, and drives "last delegation change" in the diagnosis: a revocation must
-- not look like one). Append-only: kind is 'agent-revoked' or 'agent-unrevoked'; detail is
-- the reason given.
CREATE TABLE audit_events (
    id      BIGSERIAL PRIMARY KEY,
    time    BIGINT  NOT NULL,
    kind    TEXT    NOT NULL,
    host    TEXT    NOT NULL,
    actor   TEXT    NOT NULL,
    detail  TEXT    NOT NULL
);
CREATE INDEX audit_events_host ON audit_events (host, id);
