//! MySQL/MariaDB: a table's name keeps its case (as on Linux), so `accounts` is not the table
//! created as `Accounts`.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "accounts", migrations = "../migrations/quoted_mysql", migrations_dialect = "mysql")]
pub struct Account {
    #[tracked(key, generated, property = "account_id", column = "AccountId")]
    pub id: i64,
    #[tracked(property = "display_name", column = "DisplayName")]
    pub name: String,
}

fn main() {}
