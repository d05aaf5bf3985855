-- Not applied by the check: down migrations undo, they do not describe the schema.
ALTER TABLE users DROP COLUMN trial_ends_at;
