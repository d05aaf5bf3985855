-- The shop of `axum_signup` and `revenue_attribution`. Portable SQL: the example runs it on
-- SQLite, PostgreSQL and MySQL/MariaDB alike.
CREATE TABLE IF NOT EXISTS companies (
    id VARCHAR(64) PRIMARY KEY NOT NULL,
    name VARCHAR(200) NOT NULL
);

CREATE TABLE IF NOT EXISTS accounts (
    id VARCHAR(64) PRIMARY KEY NOT NULL,
    email VARCHAR(200) NOT NULL,
    plan VARCHAR(20) NOT NULL,
    company_id VARCHAR(64) NOT NULL,
    -- From a request header, which TrackingContext cuts to 1,000 characters.
    anonymous_id VARCHAR(1000)
);

-- posthog_distinct_id, posthog_session_id and utm_source are attribution columns: who, in
-- which session, from which campaign, stored with the row by the request context (the ids
-- come from request headers, which TrackingContext cuts to 1,000 characters).
CREATE TABLE IF NOT EXISTS orders (
    id VARCHAR(64) PRIMARY KEY NOT NULL,
    user_id VARCHAR(64) NOT NULL,
    company_id VARCHAR(64) NOT NULL,
    revenue DOUBLE PRECISION NOT NULL,
    currency VARCHAR(3) NOT NULL,
    posthog_distinct_id VARCHAR(1000),
    posthog_session_id VARCHAR(1000),
    utm_source VARCHAR(100)
);
