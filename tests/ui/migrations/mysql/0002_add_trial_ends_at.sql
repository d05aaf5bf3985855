ALTER TABLE `users` ADD COLUMN `trial_ends_at` DATETIME(6) NULL AFTER `plan`;
