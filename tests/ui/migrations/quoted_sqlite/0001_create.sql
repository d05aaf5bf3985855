-- SQLite compares every name without ASCII case, quoted or not.
CREATE TABLE "Accounts" (
    "AccountId" INTEGER PRIMARY KEY,
    "DisplayName" TEXT NOT NULL
);
