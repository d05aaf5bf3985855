CREATE TABLE documents (
    id BIGSERIAL PRIMARY KEY,
    owner TEXT NOT NULL,
    title TEXT NOT NULL
);

-- The variant's table has a column the original does not.
CREATE TABLE documents_v2 (
    id BIGSERIAL PRIMARY KEY,
    owner TEXT NOT NULL,
    title TEXT NOT NULL,
    currency TEXT
);
