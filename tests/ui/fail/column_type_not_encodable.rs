//! A column type that the database's sqlx driver cannot encode fails where the model is
//! written to that database, naming the database.

use posthog_track::{TrackedModel, TrackedTransaction};

#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: String,
    #[tracked(property)]
    pub tags: Vec<String>,
}

async fn save(user: User, tx: &mut TrackedTransaction<'_, sqlx::Sqlite>) {
    user.insert(tx).await.unwrap();
}

fn main() {}
