//! Flag-routed tables: which table a model's write goes to when a feature flag puts the row's
//! user in a variant (`#[tracked(table_variant(flag = ..., variant = ..., table = ...))]`).

use super::request::FlagsRequest;
use super::value::{FlagValue, json_value};
use crate::backend::Backend;
use crate::event::Stamp;
use crate::model::{ModelSql, SqlSet, TrackedModel};
use crate::tracker::Tracker;
use crate::transaction::TrackedTransaction;

/// Where a write of `model` goes: a flag-routed table when the row's user is in one of the
/// model's routed variants, `TABLE` otherwise, with the `$feature/<flag>` stamps for the
/// write's events.
pub(crate) async fn route<M: TrackedModel, DB: Backend>(
    model: &M,
    tx: &mut TrackedTransaction<'_, DB>,
) -> (&'static ModelSql, &'static str, Vec<Stamp>) {
    if M::__TABLE_VARIANTS.is_empty() {
        return (M::__SQL.get(DB::DIALECT), M::TABLE, Vec::new());
    }
    let distinct_id = model
        .distinct_id()
        .or_else(|| tx.distinct_id().map(str::to_owned));
    let tracker = tx.tracker().clone();
    let (variant, stamps) = match distinct_id {
        Some(distinct_id) => choose_variant::<M>(&tracker, &distinct_id).await,
        None => (None, Vec::new()),
    };
    match variant {
        Some(variant) => (variant.sql.get(DB::DIALECT), variant.table, stamps),
        None => (M::__SQL.get(DB::DIALECT), M::TABLE, stamps),
    }
}

/// The table a model's row for `distinct_id` lives in, for reads that must follow the same
/// flag routing as the writes. Records the flag's exposure like a write does.
pub async fn routed_table<M: TrackedModel>(tracker: &Tracker, distinct_id: &str) -> &'static str {
    choose_variant::<M>(tracker, distinct_id)
        .await
        .0
        .map_or(M::TABLE, |variant| variant.table)
}

/// The first of `M`'s routed variants whose flag puts `distinct_id` in it, and a
/// `$feature/<flag>` stamp per flag evaluated. Each flag is evaluated once (locally when
/// definitions are loaded) and its exposure recorded. A flag that cannot be evaluated (no
/// key, PostHog unreachable) counts as "not in the variant", like a user outside the
/// experiment: a write never fails because flags are unavailable.
async fn choose_variant<M: TrackedModel>(
    tracker: &Tracker,
    distinct_id: &str,
) -> (Option<&'static TableVariant>, Vec<Stamp>) {
    let mut stamps = Vec::new();
    let mut evaluated: Vec<(&str, Option<FlagValue>)> = Vec::new();
    for variant in M::__TABLE_VARIANTS {
        let value = match evaluated.iter().find(|(flag, _)| *flag == variant.flag) {
            Some((_, value)) => value.clone(),
            None => {
                let value = match tracker
                    .get_feature_flag(variant.flag, FlagsRequest::new(distinct_id))
                    .await
                {
                    Ok(value) => value,
                    Err(error) => {
                        tracing::warn!(flag = variant.flag, %error, "flag unavailable; using the default table");
                        None
                    }
                };
                if let Some(value) = &value {
                    stamps.push(Stamp::new(
                        format!("$feature/{}", variant.flag),
                        &json_value(value),
                    ));
                }
                evaluated.push((variant.flag, value.clone()));
                value
            }
        };
        if value.as_ref().and_then(FlagValue::variant) == Some(variant.variant) {
            return (Some(variant), stamps);
        }
    }
    (None, stamps)
}

/// A table a flag variant routes rows to.
#[doc(hidden)]
#[derive(Debug)]
pub struct TableVariant {
    pub flag: &'static str,
    pub variant: &'static str,
    pub table: &'static str,
    pub sql: &'static SqlSet,
}
