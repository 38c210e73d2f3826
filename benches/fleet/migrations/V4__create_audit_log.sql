CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    account_id bigint REFERENCES accounts,
    action text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX audit_log_account_created_idx ON audit_log (account_id, created_at);
