//! PostgreSQL: a table and columns created with quoted, mixed-case names are found under the
//! same names (the derive quotes names as written); an unquoted mixed-case name is found under
//! its lower-case form.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "Accounts", migrations = "../migrations/quoted_postgres", migrations_dialect = "postgres")]
pub struct Account {
    #[tracked(key, generated, property = "account_id", column = "AccountId")]
    pub id: i64,
    #[tracked(property = "display_name", column = "DisplayName")]
    pub name: String,
}

#[derive(TrackedModel)]
#[tracked(table = "members", migrations = "../migrations/quoted_postgres", migrations_dialect = "postgres")]
pub struct Member {
    #[tracked(key, property)]
    pub id: i64,
    #[tracked(property, column = "Email")]
    pub email: String,
}

fn main() {
    assert_eq!(<Account as TrackedModel>::TABLE, "Accounts");
    assert_eq!(<Member as TrackedModel>::TABLE, "members");
}
