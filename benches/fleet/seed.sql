-- The schema and data of every benchmark tenant before the release in benches/fleet/migrations/:
-- plans/demo-seed.sql's accounts and orders, plus the tables a small SaaS tenant has around them,
-- and a few hundred rows, so migrations (a CHECK that scans orders, an index build) do real work.
CREATE TABLE accounts (
    id bigserial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    display_name text NOT NULL,
    created_at timestamptz DEFAULT now()
);

CREATE TABLE products (
    id bigserial PRIMARY KEY,
    sku text NOT NULL UNIQUE,
    title text NOT NULL,
    price_cents bigint NOT NULL CHECK (price_cents >= 0),
    attributes jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    account_id bigint REFERENCES accounts,
    total_cents bigint NOT NULL,
    status text NOT NULL DEFAULT 'open',
    placed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE order_items (
    order_id bigint NOT NULL REFERENCES orders ON DELETE CASCADE,
    product_id bigint NOT NULL REFERENCES products,
    quantity integer NOT NULL CHECK (quantity > 0),
    unit_price_cents bigint NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    account_id bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    user_agent text,
    expires_at timestamptz NOT NULL
);

CREATE INDEX sessions_account_idx ON sessions (account_id);
CREATE INDEX orders_placed_at_idx ON orders (placed_at);

INSERT INTO accounts (email, display_name)
SELECT format('user%s@example.com', n), format('User %s', n)
FROM generate_series(1, 60) AS n;

INSERT INTO products (sku, title, price_cents, attributes)
SELECT format('SKU-%s', lpad(n::text, 5, '0')), format('Product %s', n), 100 + n * 37 % 9000,
       jsonb_build_object('color', (ARRAY['red', 'green', 'blue'])[1 + n % 3], 'weight_g', n * 11)
FROM generate_series(1, 40) AS n;

INSERT INTO orders (account_id, total_cents, status, placed_at)
SELECT 1 + n % 60, 500 + n * 131 % 20000, (ARRAY['open', 'paid', 'refunded'])[1 + n % 3],
       timestamptz '2026-01-01' + n * interval '37 minutes'
FROM generate_series(1, 200) AS n;

INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents)
SELECT o, 1 + (o * 7 + k) % 40, 1 + k, 100 + (o + k) % 900
FROM generate_series(1, 200) AS o, generate_series(0, 1) AS k;

INSERT INTO sessions (id, account_id, user_agent, expires_at)
SELECT md5(n::text)::uuid, 1 + n % 60, 'Mozilla/5.0 (bench)', timestamptz '2027-01-01' + n * interval '1 hour'
FROM generate_series(1, 100) AS n;
