//! Which table a model's write goes to. Flag routing (in `flags::routing`) decides the variant
//! from the model's [`FlagRouted`] facts; this side turns the decision into the SQL for that
//! table, so routing never needs to know what a model's SQL looks like.

use super::codegen::{ModelSql, SqlSet};
use super::traits::TrackedModel;
use crate::backend::Backend;
use crate::event::Stamp;
use crate::flags::FlagRouted;
use crate::flags::routing::{TableVariant, choose_variant};
use crate::transaction::TrackedTransaction;

impl<M: TrackedModel> FlagRouted for M {
    type Sql = SqlSet;
    const DEFAULT_TABLE: &'static str = M::TABLE;
    const VARIANTS: &'static [TableVariant<SqlSet>] = M::__TABLE_VARIANTS;
}

/// Where a write of `model` goes: a flag-routed table when the row's user is in one of the
/// model's routed variants, `TABLE` otherwise, with the `$feature/<flag>` stamps for the
/// write's events.
pub(super) async fn route<M: TrackedModel, DB: Backend>(
    model: &M,
    tx: &mut TrackedTransaction<'_, DB>,
) -> (&'static ModelSql, &'static str, Vec<Stamp>) {
    if M::__TABLE_VARIANTS.is_empty() {
        return (M::__SQL.get(DB::DIALECT), M::TABLE, Vec::new());
    }
    let distinct_id = model
        .distinct_id()
        .or_else(|| tx.distinct_id().map(str::to_owned));
    let (variant, stamps) = match distinct_id {
        Some(distinct_id) => choose_variant::<M>(tx.shared(), &distinct_id, true).await,
        None => (None, Vec::new()),
    };
    match variant {
        Some(variant) => (variant.sql.get(DB::DIALECT), variant.table, stamps),
        None => (M::__SQL.get(DB::DIALECT), M::TABLE, stamps),
    }
}
