//! Which table a model's write goes to. Flag routing (in `flags::routing`) decides the variant
//! from the model's [`FlagRouted`] facts; this side turns the decision into the SQL for that
//! table, so routing never needs to know what a model's SQL looks like.

use super::codegen::{ModelSql, SqlSet};
use super::traits::TrackedModel;
use crate::backend::Backend;
use crate::backend::BoundQuery;
use crate::error::Result;
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
    let distinct_id = tx.effective_distinct_id(model.distinct_id());
    let (variant, stamps) = match distinct_id {
        Some(distinct_id) => choose_variant::<M>(tx.shared(), &distinct_id, true).await,
        None => (None, Vec::new()),
    };
    match variant {
        Some(variant) => (variant.sql.get(DB::DIALECT), variant.table, stamps),
        None => (M::__SQL.get(DB::DIALECT), M::TABLE, stamps),
    }
}

/// A table an existing row of a flag-routed model may be in, and the stamps of a write there:
/// `$feature/<flag>` with the variant for a variant's table, none for the default table (which
/// holds the rows of every other value, and of routes that fell back).
#[derive(Clone)]
pub(super) struct RowTable {
    pub(super) sql: &'static ModelSql,
    pub(super) table: &'static str,
    pub(super) stamps: Vec<Stamp>,
}

/// The tables of `M` other than `routed`, the default first, then the variants' in
/// declaration order. A row stays in the table it was written to when its user's route
/// changes (new definitions, a flag that could not be decided and fell back, a new owner), so
/// a write to an existing row that is not in the table routed now looks in these.
pub(super) fn other_tables<M: TrackedModel, DB: Backend>(routed: &str) -> Vec<RowTable> {
    let default = RowTable {
        sql: M::__SQL.get(DB::DIALECT),
        table: M::TABLE,
        stamps: Vec::new(),
    };
    let variants = M::__TABLE_VARIANTS.iter().map(|variant| RowTable {
        sql: variant.sql.get(DB::DIALECT),
        table: variant.table,
        stamps: vec![Stamp::new(
            format!("$feature/{}", variant.flag),
            &serde_json::Value::from(variant.variant),
        )],
    });
    let mut tables: Vec<RowTable> = Vec::new();
    for candidate in std::iter::once(default).chain(variants) {
        if candidate.table != routed && tables.iter().all(|kept| kept.table != candidate.table) {
            tables.push(candidate);
        }
    }
    tables
}

/// `first`, then the model's other tables: where an existing row of `M` may be.
pub(super) fn tables_from<M: TrackedModel, DB: Backend>(first: RowTable) -> Vec<RowTable> {
    let mut tables = other_tables::<M, DB>(first.table);
    tables.insert(0, first);
    tables
}

/// The first of `tables` that holds the row `select` finds (a `select_for_update` by key for
/// that table's SQL), read and locked where rows are, with that table; `None` when none does.
pub(super) async fn find_row<DB: Backend>(
    tx: &mut TrackedTransaction<'_, DB>,
    tables: Vec<RowTable>,
    select: impl Fn(&'static ModelSql) -> BoundQuery<DB>,
) -> Result<Option<(DB::Row, RowTable)>> {
    for table in tables {
        let rows = DB::fetch_all(tx.connection(), select(table.sql)).await?;
        if let Some(row) = rows.into_iter().next() {
            return Ok(Some((row, table)));
        }
    }
    Ok(None)
}
