-- The failure poll (a leader answering authentication failures that agents reported through
-- followers) filters by error code in SQL: this index holds failed attempts only, by code and
-- arrival, so a flood of other failures can never push the ones that matter past its LIMIT.
CREATE INDEX attempts_auth_failures ON attempts (error_code, received_at) WHERE success = 0;

-- Ticket purges the controller could not hand to a host's agent (not connected, or cut off for
-- not reading its stream): one per host (a purge is idempotent, the newest reason wins), sent
-- again when the agent connects and removed once the agent answers it.
CREATE TABLE undelivered_purges (
    host        TEXT    PRIMARY KEY,
    reason      TEXT    NOT NULL,
    recorded_at BIGINT  NOT NULL
);
