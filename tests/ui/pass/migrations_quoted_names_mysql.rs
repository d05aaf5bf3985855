//! MySQL/MariaDB: a table is found under its name as created, quoted with backticks or not; a
//! column under its name in any case.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "Accounts", migrations = "../migrations/quoted_mysql", migrations_dialect = "mysql")]
pub struct Account {
    #[tracked(key, generated, property = "account_id", column = "AccountId")]
    pub id: i64,
    #[tracked(property = "display_name", column = "displayname")]
    pub name: String,
}

#[derive(TrackedModel)]
#[tracked(table = "Members", migrations = "../migrations/quoted_mysql", migrations_dialect = "mysql")]
pub struct Member {
    #[tracked(key, property)]
    pub id: i64,
    #[tracked(property)]
    pub email: String,
}

fn main() {
    assert_eq!(<Account as TrackedModel>::TABLE, "Accounts");
    assert_eq!(<Member as TrackedModel>::TABLE, "Members");
}
