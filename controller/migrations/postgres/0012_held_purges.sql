-- A ticket purge held until its host's KDC has the change (runtime::replication): kept with
-- the (plan, object, DC) it waits on, so a restarted controller, or the replica elected after
-- it, still sends it when that DC catches up. NULL: no purge waits on this row.
ALTER TABLE replication ADD COLUMN purge_kdc TEXT;
ALTER TABLE replication ADD COLUMN purge_reason TEXT;
