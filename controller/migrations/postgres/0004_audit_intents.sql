-- Write-ahead audit: a row is stored as an 'intent' before its LDAP modify
-- and becomes 'done' (with the values read back) or 'aborted' afterwards; a
-- leader that dies in between leaves intents its successor resolves by
-- reading AD. Only 'done' rows are the audit.
ALTER TABLE audit ADD COLUMN state TEXT NOT NULL DEFAULT 'done';
CREATE INDEX audit_state ON audit (state);
