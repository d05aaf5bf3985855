-- A table's name keeps its case, quoted or not (Linux's lower_case_table_names = 0); a
-- column's name is compared without case.
CREATE TABLE `Accounts` (
    `AccountId` BIGINT AUTO_INCREMENT PRIMARY KEY,
    `DisplayName` TEXT NOT NULL
) ENGINE = InnoDB;
CREATE TABLE Members (
    Id BIGINT PRIMARY KEY,
    `Email` TEXT NOT NULL
) ENGINE = InnoDB;
