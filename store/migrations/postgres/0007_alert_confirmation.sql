-- An alert opened by a single reading in a critical or high band is 'unconfirmed' until the
-- repeat the engine asks the device for: 'confirmed' if the repeat holds the band,
-- 'not_confirmed' if it does not (the alert is then downgraded). NULL: opened by a run of
-- readings, or by a rule that does not ask for a repeat.
ALTER TABLE alerts ADD COLUMN confirmation TEXT;
