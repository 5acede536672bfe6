-- Which root signed each workload certificate, so retiring an old root
-- counts exactly the certificates it still vouches for (not those issued
-- before some instant, which a clock at millisecond resolution cannot tell
-- apart from those issued just after a rotation).
ALTER TABLE certificates ADD COLUMN root TEXT;
