-- Scans every order to validate the constraint.
ALTER TABLE orders
    ADD CONSTRAINT orders_status_check CHECK (status IN ('open', 'paid', 'refunded'));
