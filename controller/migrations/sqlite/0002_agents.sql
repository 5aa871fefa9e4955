-- The latest report of each host (protobuf HostReport bytes) and when the
-- host was last heard from.
CREATE TABLE host_reports (
    host        TEXT    PRIMARY KEY,
    report      BLOB    NOT NULL,
    received_at BIGINT  NOT NULL,
    last_seen   BIGINT  NOT NULL
);

-- Every migration attempt an agent reported, once per attempt id.
CREATE TABLE attempts (
    attempt_id  TEXT    PRIMARY KEY,
    host        TEXT    NOT NULL,
    time        BIGINT  NOT NULL,
    vm          TEXT    NOT NULL,
    peer        TEXT    NOT NULL,
    role        BIGINT  NOT NULL,
    success     BIGINT  NOT NULL,
    event_id    BIGINT  NOT NULL,
    error_code  BIGINT  NOT NULL,
    message     TEXT    NOT NULL,
    account     TEXT    NOT NULL,
    received_at BIGINT  NOT NULL
);
CREATE INDEX attempts_host_time ON attempts (host, time);
