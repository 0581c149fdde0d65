-- A repeat reading settles the newest unconfirmed alert of its (patient, rule), resolved or
-- not (Store::confirm_alert and the engine's grouped writes): without this index that lookup
-- scanned every alert, as alerts_open_rule_idx covers only unresolved ones.
CREATE INDEX alerts_unconfirmed_idx ON alerts (patient_id, rule_id, id) WHERE confirmation = 'unconfirmed';
