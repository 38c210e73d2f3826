-- Every account starts on the free plan; a constant default is a catalog-only change on PG 11+.
ALTER TABLE accounts ADD COLUMN plan text NOT NULL DEFAULT 'free';
