//! `upsert` finds an existing row by its key; a key the database generates is never written by
//! the INSERT, so the call is refused at compile time, at the call.

use posthog_track::{TrackedModel, Tracker};

#[derive(TrackedModel)]
#[tracked(table = "sessions", distinct_id = user_id)]
struct Session {
    #[tracked(key, generated, property)]
    id: i64,
    #[tracked(property)]
    user_id: String,
}

pub async fn open(tracker: &Tracker, pool: &sqlx::SqlitePool) -> posthog_track::Result<()> {
    let mut tx = tracker.begin(pool).await?;
    let session = Session { id: 0, user_id: "u1".into() };
    session.upsert(&mut tx).await?;
    tx.commit().await
}

fn main() {}
