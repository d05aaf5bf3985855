//! SQLite: names are found without regard to ASCII case, quoted or not.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "accounts", migrations = "../migrations/quoted_sqlite", migrations_dialect = "sqlite")]
pub struct Account {
    #[tracked(key, generated, property = "account_id", column = "accountid")]
    pub id: i64,
    #[tracked(property = "display_name", column = "DISPLAYNAME")]
    pub name: String,
}

fn main() {
    assert_eq!(<Account as TrackedModel>::TABLE, "accounts");
}
