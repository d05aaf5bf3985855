//! While the derive reports a mistake in the model, the code that uses the model type-checks:
//! the user sees the mistake, not "mismatched types" at every `load_for_update` call.

use posthog_track::{TrackedModel, TrackedTransaction};

#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "users", distinct_id = id)]
pub struct User {
    #[tracked(key, property = "user_id")]
    pub id: i64,
    #[tracked(property)]
    pub plan: String,
    pub trial_ends_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "seats", distinct_id = member)]
pub struct Seat {
    #[tracked(key, property)]
    pub team: String,
    #[tracked(key, property)]
    pub member: i64,
    pub role: String,
}

async fn upgrade(tx: &mut TrackedTransaction<'_, sqlx::Sqlite>) -> posthog_track::Result<()> {
    let Some(before) = User::load_for_update(&42, tx).await? else {
        return Ok(());
    };
    let mut after = before.clone();
    after.plan = "pro".to_owned();
    after.update_changed(&before, tx).await?;
    let key = ("core".to_owned(), 42);
    if let Some(seat) = Seat::load_for_update(&key, tx).await? {
        seat.delete(tx).await?;
    }
    Ok(())
}

fn main() {
    let _ = upgrade;
}
