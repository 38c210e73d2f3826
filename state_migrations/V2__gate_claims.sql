-- The gates between waves when several runners share a plan: each gate (a wave's checks after
-- it, at the end of its bake, a retry; asking for an approval) is run by one runner, elected
-- here under a lease it renews; the others wait for its verdict. A runner that dies loses the
-- lease and the next runner that asks runs the gate again.
CREATE TABLE schemafleet_gate (
    plan_id     text        NOT NULL REFERENCES schemafleet_plan ON DELETE CASCADE,
    wave        text        NOT NULL,
    -- Which gate of the wave: `after_wave`, `bake_end`, `retry:<seq of the checks_failed>`,
    -- `approval`.
    gate        text        NOT NULL,
    runner_id   text,
    lease_until timestamptz,
    -- NULL while undecided; then whether the gate let the rollout on.
    passed      boolean,
    claims      integer     NOT NULL DEFAULT 1,
    decided_at  timestamptz,
    PRIMARY KEY (plan_id, wave, gate)
);
