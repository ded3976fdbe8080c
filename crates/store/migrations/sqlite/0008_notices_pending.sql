-- /metrics counts the notices still to deliver on every scrape: index those alone
-- (a delivered notice, nearly every row, enters no index but its key).
CREATE INDEX notices_pending ON notices (seq) WHERE status = 'pending';
