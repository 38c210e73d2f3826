-- The application schema every demo tenant already has before the release in migrations/.
-- The emulator runs this once in a template database that each seeded tenant's main is copied from.
CREATE TABLE accounts (
    id bigserial PRIMARY KEY,
    email text NOT NULL,
    created_at timestamptz DEFAULT now()
);

CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    account_id bigint REFERENCES accounts,
    total_cents bigint NOT NULL,
    status text NOT NULL DEFAULT 'open'
);

INSERT INTO accounts (email) VALUES
    ('ada@example.com'),
    ('grace@example.com'),
    ('edsger@example.com');

INSERT INTO orders (account_id, total_cents, status) VALUES
    (1, 1250, 'open'),
    (1, 4999, 'paid'),
    (2, 300, 'refunded'),
    (3, 12000, 'paid');
