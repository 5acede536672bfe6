-- Root rotation: the new root cross-signed by the one before, sent after
-- each leaf while the old root is still trusted, so peers that trust only
-- the old root (not yet renewed) still verify certificates of the new one.
ALTER TABLE ca_roots ADD COLUMN cross_signed_pem TEXT;
