-- syncpay schema, version 4: a carrier's resolve mode (issue 18).
--
-- PUSH: the carrier reports its leases (ReportLeases) and the server looks
-- them up. ASK: the carrier keeps its lease records and answers a resolve
-- request on its relay stream; no lease row is ever written for it
-- (ReportLeases reads this column under a share lock of the carrier row,
-- which SetResolveMode's update waits for). Carriers that existed before
-- this migration were pushing leases, so they stay PUSH; CreateCarrier
-- writes the mode explicitly (ASK unless the operator asks for PUSH).

ALTER TABLE carriers ADD COLUMN resolve_mode text NOT NULL DEFAULT 'PUSH'
    CHECK (resolve_mode IN ('PUSH', 'ASK'));
