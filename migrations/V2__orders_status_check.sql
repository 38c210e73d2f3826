-- Some older tenants hold legacy statuses (e.g. 'cancelled'); on them this fails on the
-- validation branch and their main is left untouched, which is what validation is for.
ALTER TABLE orders
    ADD CONSTRAINT orders_status_check CHECK (status IN ('open', 'paid', 'refunded'));
