-- `documents_v2` is the schema under test: the `documents-v2` flag routes writes to it.
CREATE TABLE documents (id TEXT PRIMARY KEY NOT NULL, owner TEXT NOT NULL, title TEXT NOT NULL);
CREATE TABLE documents_v2 (id TEXT PRIMARY KEY NOT NULL, owner TEXT NOT NULL, title TEXT NOT NULL);
