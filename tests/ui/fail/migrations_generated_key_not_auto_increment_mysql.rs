//! MySQL and MariaDB have no RETURNING: a `generated` key is read back with LAST_INSERT_ID(),
//! which only an AUTO_INCREMENT column sets. A `CHAR(36) DEFAULT (UUID())` key would read back
//! another row.

use posthog_track::TrackedModel;

#[derive(TrackedModel)]
#[tracked(table = "users", distinct_id = id, migrations = "../migrations/mysql_uuid_key", migrations_dialect = "mysql")]
pub struct User {
    #[tracked(key, generated, property = "user_id")]
    pub id: String,
    #[tracked(person)]
    pub email: String,
}

fn main() {}
