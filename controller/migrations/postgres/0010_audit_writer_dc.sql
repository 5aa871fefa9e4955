-- Which domain controller each audited write was sent to (its dNSHostName, as its rootDSE
-- gives it): serve fails over to the next `[[ad.dc]]` when the one in `[ad] url` is down,
-- so "kcdsync wrote it" no longer says where. Empty for rows written before this column.
ALTER TABLE audit ADD COLUMN dc TEXT NOT NULL DEFAULT '';
