//! PostgreSQL: the derive quotes names as written, so `"accounts"` is not the table created as
//! `"Accounts"`, `"Members"` is not the table created as `Members` (which folds to `members`),
//! and `"email"` is not the column created as `"Email"`.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "accounts", migrations = "../migrations/quoted_postgres", migrations_dialect = "postgres")]
pub struct Account {
    #[tracked(key, generated, property = "account_id", column = "AccountId")]
    pub id: i64,
    #[tracked(property = "display_name", column = "DisplayName")]
    pub name: String,
}

#[derive(TrackedModel)]
#[tracked(table = "Members", migrations = "../migrations/quoted_postgres", migrations_dialect = "postgres")]
pub struct Member {
    #[tracked(key, property)]
    pub id: i64,
    #[tracked(property, column = "Email")]
    pub email: String,
}

#[derive(TrackedModel)]
#[tracked(table = "members", migrations = "../migrations/quoted_postgres", migrations_dialect = "postgres")]
pub struct LowerMember {
    #[tracked(key, property)]
    pub id: i64,
    #[tracked(property)]
    pub email: String,
}

fn main() {}
