//! An unsigned integer column on PostgreSQL, which has no unsigned types (sqlx encodes none):
//! the advice is a signed integer, not a JSON column.

use posthog_track::{TrackedModel, TrackedTransaction};

#[derive(Debug, Clone, TrackedModel)]
#[tracked(table = "orders", distinct_id = customer)]
pub struct Order {
    #[tracked(key, property = "order_id")]
    pub id: String,
    #[tracked(property)]
    pub customer: String,
    #[tracked(property)]
    pub amount_cents: u64,
}

async fn save(order: Order, tx: &mut TrackedTransaction<'_, sqlx::Postgres>) {
    order.insert(tx).await.unwrap();
}

fn main() {}
