-- The console's users have roles: admin (everything, users), editor
-- (configuration), viewer (read only). Users made before roles existed
-- were admins.
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'admin' CHECK (role IN ('admin', 'editor', 'viewer'));
-- Console sessions end after a spell without use (idle expiry) as well as
-- at their fixed end; API tokens may carry a description.
ALTER TABLE tokens ADD COLUMN last_used_at TEXT;
ALTER TABLE tokens ADD COLUMN description TEXT NOT NULL DEFAULT '';
