-- The rollout state that `apply --state URL` keeps in PostgreSQL: the journal's records, and what
-- several runners of one plan share (tenant claims under leases, waves' budgets, pause/abort).
-- Applied by refinery, embedded in the binary; the history table is schemafleet_state_history.

CREATE TABLE schemafleet_plan (
    plan_id      text PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- The last journal seq handed out: allocated under this row's lock, so seq order is commit
    -- order and a reader following `seq > cursor` never skips a record committed later.
    last_seq     bigint NOT NULL DEFAULT 0,
    paused_by    text,
    paused_at    timestamptz,
    aborted_by   text,
    abort_reason text,
    aborted_at   timestamptz
);

-- One journal record per row, exactly the JSON line the file journal would hold.
CREATE TABLE schemafleet_record (
    plan_id text   NOT NULL REFERENCES schemafleet_plan ON DELETE CASCADE,
    seq     bigint NOT NULL,
    writer  text   NOT NULL,
    record  text   NOT NULL,
    PRIMARY KEY (plan_id, seq)
);

CREATE TABLE schemafleet_wave (
    plan_id    text    NOT NULL REFERENCES schemafleet_plan ON DELETE CASCADE,
    wave       text    NOT NULL,
    ord        integer NOT NULL,
    failures   integer NOT NULL DEFAULT 0,
    halted     boolean NOT NULL DEFAULT false,
    started    boolean NOT NULL DEFAULT false,
    finished   boolean NOT NULL DEFAULT false,
    bake_until text,
    PRIMARY KEY (plan_id, wave)
);

-- A tenant is claimed by one runner at a time: `runner_id` with a lease it renews; a claim whose
-- lease ran out belongs to nobody and is resumed by whoever claims it next.
CREATE TABLE schemafleet_tenant (
    plan_id     text    NOT NULL REFERENCES schemafleet_plan ON DELETE CASCADE,
    tenant      text    NOT NULL,
    wave        text    NOT NULL,
    ord         integer NOT NULL,
    region      text    NOT NULL,
    done        boolean NOT NULL DEFAULT false,
    outcome     text,
    runner_id   text,
    lease_until timestamptz,
    claims      integer NOT NULL DEFAULT 0,
    PRIMARY KEY (plan_id, tenant)
);
CREATE INDEX schemafleet_tenant_todo ON schemafleet_tenant (plan_id, wave, ord) WHERE NOT done;

CREATE TABLE schemafleet_runner (
    plan_id    text        NOT NULL REFERENCES schemafleet_plan ON DELETE CASCADE,
    runner_id  text        NOT NULL,
    regions    text        NOT NULL DEFAULT '',
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    in_flight  integer     NOT NULL DEFAULT 0,
    finished   boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (plan_id, runner_id)
);
