-- Attempts are keyed by (host, attempt id): the host is the one the agent stream's client
-- certificate is bound to, so one agent's ids can never shadow another host's attempts (before
-- this, hv-a sending an id hv-b had used was silently dropped as a duplicate). SQLite cannot
-- change a primary key in place: the table is rebuilt, every row keeping its host.
CREATE TABLE attempts_by_host (
    host        TEXT    NOT NULL,
    attempt_id  TEXT    NOT NULL,
    time        BIGINT  NOT NULL,
    vm          TEXT    NOT NULL,
    peer        TEXT    NOT NULL,
    role        BIGINT  NOT NULL,
    success     BIGINT  NOT NULL,
    event_id    BIGINT  NOT NULL,
    error_code  BIGINT  NOT NULL,
    message     TEXT    NOT NULL,
    account     TEXT    NOT NULL,
    received_at BIGINT  NOT NULL,
    PRIMARY KEY (host, attempt_id)
);
INSERT INTO attempts_by_host
    (host, attempt_id, time, vm, peer, role, success, event_id, error_code, message, account, received_at)
    SELECT host, attempt_id, time, vm, peer, role, success, event_id, error_code, message, account, received_at
    FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_by_host RENAME TO attempts;
CREATE INDEX attempts_host_time ON attempts (host, time);
-- auth_failures_since reads failures by arrival time.
CREATE INDEX attempts_received ON attempts (received_at);
