-- What lets runners ride out the store's restart, and share the account's API budget.
-- (V2 is left to the gates' and abort's change made alongside this one.)

-- Each writer (one process) numbers its own records, so a batch whose COMMIT answer was lost
-- with the connection is found again instead of written twice. Records written before this
-- migration keep NULL (never equal to another, so never a conflict); imported ones take their
-- seq, which is unique in the plan.
ALTER TABLE schemafleet_record ADD COLUMN writer_seq bigint;
CREATE UNIQUE INDEX schemafleet_record_writer ON schemafleet_record (plan_id, writer, writer_seq);

-- Which process marked a wave started or ended: the one that journals `wave_started` and
-- `wave_finished`, also when it asks again after a lost answer.
ALTER TABLE schemafleet_wave ADD COLUMN started_by text, ADD COLUMN finished_by text;

-- One token bucket per Neon account (named by a hash of the API URL and key, never the key):
-- every runner takes its API requests' tokens from here, in small batches, so the sum of all
-- runners' requests stays under the account's limit. Refilled on each take, by the store's
-- clock (runners' clocks may disagree).
CREATE TABLE schemafleet_api_bucket (
    account     text PRIMARY KEY,
    tokens      float8      NOT NULL,
    refilled_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
