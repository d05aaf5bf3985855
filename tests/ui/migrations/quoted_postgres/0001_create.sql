-- A quoted name keeps its case; an unquoted one folds to lower case (`Members` is `members`).
CREATE TABLE "Accounts" (
    "AccountId" BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "DisplayName" TEXT NOT NULL
);
CREATE TABLE Members (
    Id BIGINT PRIMARY KEY,
    "Email" TEXT NOT NULL
);
