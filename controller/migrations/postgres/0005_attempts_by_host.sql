-- Attempts are keyed by (host, attempt id): the host is the one the agent stream's client
-- certificate is bound to, so one agent's ids can never shadow another host's attempts (before
-- this, hv-a sending an id hv-b had used was silently dropped as a duplicate). Every row keeps
-- its host.
ALTER TABLE attempts DROP CONSTRAINT attempts_pkey;
ALTER TABLE attempts ADD PRIMARY KEY (host, attempt_id);
-- auth_failures_since reads failures by arrival time.
CREATE INDEX attempts_received ON attempts (received_at);
