-- Alert work is partitioned by patient (store::leases): each outbox row holds the patients of
-- one partition of a committed batch, so the node leasing that partition finds it, and names
-- the node that wrote it (a node evaluates its own batches from memory, others' from here).
ALTER TABLE alert_outbox ADD COLUMN part INTEGER NOT NULL DEFAULT 0;
ALTER TABLE alert_outbox ADD COLUMN node TEXT NOT NULL DEFAULT '';
CREATE INDEX alert_outbox_part_idx ON alert_outbox (part, id);
