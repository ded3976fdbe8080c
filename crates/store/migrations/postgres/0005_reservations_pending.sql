-- Only calls in progress are looked up by state (the timeout sweep, the books check,
-- the open-calls gauge): index those alone. A settled call, nearly every row and every
-- imported one, then enters no index but its key.
DROP INDEX reservations_due;
CREATE INDEX reservations_due ON reservations (expires_at) WHERE state = 'pending';
CREATE INDEX reservations_pending ON reservations (org_id, created_at, call_id) WHERE state = 'pending';
