-- no-transaction
-- CONCURRENTLY cannot run inside a transaction; IF NOT EXISTS makes a re-run after a crash safe.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_account_id_idx ON orders (account_id);
