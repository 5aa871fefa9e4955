-- One-time join tokens (`agents token create HOST`): the enrollment fallback for a host that
-- cannot reach its KDC. Each is bound to one host (FQDN, lower-case) and spent by the first
-- enrollment it grants (used_at set by one conditional UPDATE, so exactly one caller wins on
-- any number of replicas). The secret itself is never stored: token_hash is the hex SHA-256
-- of it. A revoked token keeps its row (revoked_at, revoked_by) so `agents token list` still
-- shows it. Times are Unix ms; id is the token's public name (`jt-` and 12 hex digits).
CREATE TABLE join_tokens (
    id          TEXT    PRIMARY KEY,
    host        TEXT    NOT NULL,
    token_hash  TEXT    NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL,
    created_by  TEXT    NOT NULL,
    used_at     BIGINT,
    used_from   TEXT,
    revoked_at  BIGINT,
    revoked_by  TEXT
);
CREATE INDEX join_tokens_host ON join_tokens (host, created_at);
