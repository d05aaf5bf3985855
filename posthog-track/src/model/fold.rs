//! PostgreSQL: an inserted row and its events in one statement.
//!
//! A tracked insert is otherwise two statements in its transaction: the model's
//! `INSERT ... RETURNING` and, at commit, the outbox `INSERT`. With many concurrent writers
//! the server is CPU-bound and pays per statement: the second statement costs about a quarter
//! of the write rate, while the same outbox row written by the model's own statement costs
//! about a twentieth (BENCHMARKS.md, "Many writers, several relays"). So here the events go in
//! with the row, through a data-modifying CTE:
//!
//! 1. the events are rendered from the row as given, each `generated` property (a value only
//!    the `INSERT` knows: a default timestamp, a sequence) left as a marker
//!    ([`splice_marker`]);
//! 2. one statement inserts the row, inserts the events with every marker replaced by SQL that
//!    renders the stored column as serde does, and returns the row and those renderings;
//! 3. the events are rendered again from the row as stored (with the same uuids and
//!    timestamp) and compared, byte for byte, with what the statement wrote. An event that
//!    differs is corrected with an `UPDATE` of its outbox row.
//!
//! So the outbox holds exactly what the two-statement path would have written; only the speed
//! depends on the SQL rendering. (A `ROLLBACK TO SAVEPOINT` sent by hand after a folded insert
//! can part them, as it can part a transaction's rows from its intentions. A transaction whose
//! insert failed or was cancelled after its statement does not commit: `commit` rolls it back
//! and fails with `Error::IncompleteWrite`.) A model whose events need correcting more often
//! than not stops folding. The column types rendered are learned from the first insert of
//! each model (which takes the two-statement path); a model with a generated property of any
//! other type never folds.
//!
//! Folding needs the outbox to keep the staging order and the events to reach it unchanged,
//! so a write folds only while everything staged before it in the transaction is folded too,
//! and only without a `before_send` hook or `$geoip_disable` (both applied at commit); see
//! `TrackedTransaction::can_fold`. Group models (whose `$groupidentify` embeds properties in
//! a nested object), models whose distinct id or group is `generated`, and tables with rules
//! or that are views, the model's or the outbox (PostgreSQL refuses those in a data-modifying
//! `WITH`), never fold.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use super::bulk::write_one;
use super::codegen::ModelSql;
use super::stage::stage_inserted;
use super::traits::{TrackedModel, TrackedRow};
use crate::backend::{Backend, Dialect};
use crate::error::Result;
use crate::event::{EventShape, StagedEvent, Stamp, splice_marker};
use crate::outbox;
use crate::transaction::TrackedTransaction;

/// The most events one insert folds: its own event and `$identify`.
const MAX_FOLDED_EVENTS: usize = 2;
/// A model stops folding once this many of its inserts needed a correction and they are at
/// least half of its folded inserts.
const CORRECTIONS_BEFORE_GIVING_UP: u64 = 8;

/// Whether inserts fold at all (on by default; benchmarks turn it off to compare).
static FOLDING: AtomicBool = AtomicBool::new(true);

/// What is known of each model's insert: none until its first insert on PostgreSQL.
static PLANS: LazyLock<RwLock<HashMap<PlanKey, Arc<Plan>>>> = LazyLock::new(Default::default);

/// A model's insert SQL and generated properties, by address and length: cheap to hash on
/// every insert. The same text at two addresses (a constant copied into two codegen units)
/// only means two plans, each learned once.
type PlanKey = (usize, usize, usize, usize);

fn key_of<M: TrackedModel>(sql: &ModelSql) -> PlanKey {
    let generated = M::__GENERATED_PROPERTIES;
    (
        sql.insert.as_ptr() as usize,
        sql.insert.len(),
        generated.as_ptr() as usize,
        generated.len(),
    )
}

/// Turns folding on or off for the whole process. For benchmarks that compare the two
/// paths; the outbox receives the same events either way.
#[doc(hidden)]
pub fn fold_inserts(on: bool) {
    FOLDING.store(on, Ordering::Relaxed);
}

/// `(folded, corrected)`: inserts whose events went in with their row in this process, and
/// how many of those needed an `UPDATE` because the SQL rendering differed. For tests and
/// benchmarks.
#[doc(hidden)]
pub fn fold_counts() -> (u64, u64) {
    counts(|_| true)
}

/// [`fold_counts`] for one model's inserts on `DB` (zeros before its first insert there).
#[doc(hidden)]
pub fn fold_counts_of<M: TrackedModel, DB: Backend>() -> (u64, u64) {
    let sql = M::__SQL.get(DB::DIALECT);
    counts(|plan| plan.insert == sql.insert && plan.generated == M::__GENERATED_PROPERTIES)
}

fn counts(selected: impl Fn(&Plan) -> bool) -> (u64, u64) {
    let plans = PLANS.read().unwrap_or_else(PoisonError::into_inner);
    plans
        .values()
        .filter(|plan| selected(plan))
        .fold((0, 0), |(folded, corrected), plan| {
            (
                folded + plan.folded.load(Ordering::Relaxed),
                corrected + plan.corrected.load(Ordering::Relaxed),
            )
        })
}

/// How one model's inserts fold.
#[derive(Debug)]
struct Plan {
    /// What the plan is for (the key holds only addresses).
    insert: &'static str,
    generated: &'static [(&'static str, usize)],
    /// `None`: a generated property has a type this module does not render; never fold.
    /// Otherwise the statement for one and for two events.
    statements: Option<[&'static str; MAX_FOLDED_EVENTS]>,
    /// Column index of each generated property, in the order the statement returns their
    /// renderings.
    rendered: Vec<usize>,
    folded: AtomicU64,
    corrected: AtomicU64,
    off: AtomicBool,
}

impl Plan {
    /// The plan for a model whose first insert returned `row`.
    fn learn<M: TrackedModel, DB: Backend>(sql: &'static ModelSql, row: &DB::Row) -> Plan {
        let mut rendered = Vec::new();
        let mut renderings = Vec::new();
        let mut renderable = true;
        for &(_, index) in M::__GENERATED_PROPERTIES {
            if rendered.contains(&index) {
                continue;
            }
            let rendering = sql
                .columns
                .get(index)
                .and_then(|column| json_of(&DB::column_type(row, index)?, column));
            match rendering {
                Some(rendering) => {
                    rendered.push(index);
                    renderings.push(rendering);
                }
                None => renderable = false,
            }
        }
        let statements = renderable.then(|| {
            [1, 2].map(|events| {
                &*Box::leak(statement(sql, &rendered, &renderings, events).into_boxed_str())
            })
        });
        Plan {
            insert: sql.insert,
            generated: M::__GENERATED_PROPERTIES,
            statements,
            rendered,
            folded: AtomicU64::new(0),
            corrected: AtomicU64::new(0),
            off: AtomicBool::new(false),
        }
    }

    fn folds(&self) -> bool {
        self.statements.is_some() && !self.off.load(Ordering::Relaxed)
    }

    fn record(&self, corrected: bool) {
        let folded = self.folded.fetch_add(1, Ordering::Relaxed) + 1;
        if corrected {
            let corrected = self.corrected.fetch_add(1, Ordering::Relaxed) + 1;
            if corrected >= CORRECTIONS_BEFORE_GIVING_UP && corrected * 2 >= folded {
                self.off.store(true, Ordering::Relaxed);
                tracing::debug!(
                    corrected,
                    folded,
                    "posthog-track: a model's events are rendered differently by SQL than by \
                     serde; its inserts write their events at commit from now on"
                );
            }
        }
    }
}

/// SQL that renders `column` (of PostgreSQL type `type_name`) as JSON text the way serde
/// renders the Rust value sqlx decodes it into, or `None` for types it does not know.
/// Exactness never depends on this (see the module docs), only the speed.
fn json_of(type_name: &str, column: &str) -> Option<String> {
    match type_name {
        "INT2" | "INT4" | "INT8" | "TEXT" | "VARCHAR" | "BPCHAR" | "CHAR" | "NAME" | "BOOL"
        | "UUID" | "DATE" => Some(format!("COALESCE(to_json({column})::text, 'null')")),
        "TIMESTAMPTZ" => Some(timestamp_json(&format!("{column} AT TIME ZONE 'UTC'"), "Z")),
        "TIMESTAMP" => Some(timestamp_json(column, "")),
        _ => None,
    }
}

/// chrono's serde form of a timestamp, from `local`, the column's UTC or naive wall time:
/// RFC 3339 with as many fractional digits as the value needs (none, 3, or 6 for
/// microseconds), so `.120000` is written `.120` and `.000000` not at all.
fn timestamp_json(local: &str, zone: &str) -> String {
    format!(
        "COALESCE('\"' || regexp_replace(to_char({local}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), \
         '(\\.000)?000$', '') || '{zone}\"', 'null')"
    )
}

/// The model's `INSERT ... RETURNING` with `events` outbox rows written by the same
/// statement. Parameters: the model's, then five per event (uuid, event, distinct id,
/// timestamp, payload with markers). Returns the row's columns, then each rendering in
/// `rendered` order.
///
/// PostgreSQL builds the executor state of every expression on each execution, so the
/// statement is kept small: each rendering is computed once, in the row's `RETURNING`, and a
/// single event (the common case) is a plain `SELECT` of parameters from the row. The outbox
/// ids are not returned: a correction finds its row by uuid (see [`outbox_row`]).
fn statement(sql: &ModelSql, rendered: &[usize], renderings: &[String], events: usize) -> String {
    let first = sql.insert_width + 1;
    // One event: its parameters, selected from the row; more: a `VALUES` list, in order.
    let (columns, mut payload, values) = if events == 1 {
        let [uuid, event, distinct_id, timestamp, payload] = [0, 1, 2, 3, 4].map(|n| first + n);
        (
            format!("${uuid}::text, ${event}::text, ${distinct_id}::text, ${timestamp}::text"),
            format!("${payload}::text"),
            String::new(),
        )
    } else {
        let mut values = String::new();
        for n in 0..events {
            let _ = write!(values, "{}({n}", if n > 0 { ", " } else { "" });
            for parameter in first + 5 * n..first + 5 * (n + 1) {
                let _ = write!(values, ", ${parameter}::text");
            }
            values.push(')');
        }
        (
            "e.uuid, e.event, e.distinct_id, e.timestamp".to_owned(),
            "e.payload".to_owned(),
            format!(
                ", (VALUES {values}) AS e(n, uuid, event, distinct_id, timestamp, payload) \
                 ORDER BY e.n"
            ),
        )
    };
    let mut returning = String::new();
    for (index, rendering) in rendered.iter().zip(renderings) {
        let _ = write!(returning, ", {rendering} AS \"__posthog_track_{index}\"");
        payload = format!(
            "replace({payload}, chr(1) || '{index}' || chr(1), r.\"__posthog_track_{index}\")"
        );
    }
    format!(
        "WITH \"__posthog_track_row\" AS ({insert}{returning}), \
         \"__posthog_track_events\" AS (\
         INSERT INTO posthog_outbox (uuid, event, distinct_id, timestamp, payload) \
         SELECT {columns}, {payload} FROM \"__posthog_track_row\" r{values}) \
         SELECT * FROM \"__posthog_track_row\"",
        insert = sql.insert,
    )
}

/// Where the outbox row of the event `$1`, written by this session's statement, is: the
/// newest row with that uuid at or below the last value of the sequence PostgreSQL names for
/// the outbox's id (a sub-select, so that it bounds the backward scan of the primary key), or,
/// when that misses, any row with that uuid (a full scan; no other row can have the uuid,
/// which was made for this event).
///
/// The bound is read from `pg_sequences`, which says `NULL` where `currval` would fail and
/// abort the transaction: the id has no sequence PostgreSQL knows of, the sequence named is
/// not the one the ids come from (an identity column added after the serial one), or the role
/// may not read it. A `NULL` bound finds nothing, and the second lookup runs.
const OUTBOX_ROWS: [&str; 2] = [
    "(SELECT id FROM posthog_outbox \
     WHERE id <= (SELECT last_value FROM pg_sequences \
     WHERE format('%I.%I', schemaname, sequencename) \
     = pg_get_serial_sequence('posthog_outbox', 'id')) \
     AND uuid = $1 ORDER BY id DESC LIMIT 1)",
    "(SELECT id FROM posthog_outbox WHERE uuid = $1 LIMIT 1)",
];

/// Rewrites the outbox row of the event `uuid` to `distinct_id` and `payload`, or with
/// `None` deletes it.
async fn outbox_row<DB: Backend>(
    tx: &mut TrackedTransaction<'_, DB>,
    uuid: uuid::Uuid,
    rewrite: Option<(&str, &str)>,
) -> Result<()> {
    let uuid = uuid.hyphenated().to_string();
    for row in OUTBOX_ROWS {
        let query = match rewrite {
            Some((distinct_id, payload)) => {
                let sql = format!(
                    "UPDATE posthog_outbox SET distinct_id = $2, payload = $3 WHERE id = {row}"
                );
                let query = DB::bind_text(sqlx::query(sqlx::AssertSqlSafe(sql)), &uuid);
                DB::bind_text(DB::bind_text(query, distinct_id), payload)
            }
            None => {
                let sql = format!("DELETE FROM posthog_outbox WHERE id = {row}");
                DB::bind_text(sqlx::query(sqlx::AssertSqlSafe(sql)), &uuid)
            }
        };
        let result = DB::execute(tx.connection(), query).await?;
        if DB::rows_affected(&result) == 1 {
            return Ok(());
        }
    }
    Err(crate::error::Error::Database(sqlx::Error::Protocol(
        format!("the outbox row of event {uuid}, written by this transaction, was not found"),
    )))
}

fn known_plan(key: PlanKey) -> Option<Arc<Plan>> {
    let plans = PLANS.read().unwrap_or_else(PoisonError::into_inner);
    plans.get(&key).cloned()
}

/// Inserts `model` into `table` with `sql` and stages its events: in one statement when it
/// can (PostgreSQL, see the module docs), otherwise the row now and the events at commit.
pub(super) async fn insert<M, DB>(
    model: &M,
    sql: &'static ModelSql,
    table: &'static str,
    stamps: Vec<Stamp>,
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<M>
where
    DB: Backend,
    M: TrackedRow<DB>,
{
    let foldable = DB::DIALECT == Dialect::Postgres
        && FOLDING.load(Ordering::Relaxed)
        && sql.insert_returns_row
        && M::__GROUP_TYPE.is_none()
        && !M::__IDENTITY_GENERATED
        && tx.can_fold();
    if foldable {
        match known_plan(key_of::<M>(sql)) {
            Some(plan) if plan.folds() => {
                return folded(model, sql, table, &plan, stamps, tx).await;
            }
            Some(_) => {}
            None => return learning(model, sql, stamps, tx).await,
        }
    }
    unfolded(model, sql, table, stamps, tx).await
}

/// The usual insert: the row now, its events at commit.
async fn unfolded<M, DB>(
    model: &M,
    sql: &'static ModelSql,
    table: &'static str,
    stamps: Vec<Stamp>,
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<M>
where
    DB: Backend,
    M: TrackedRow<DB>,
{
    let stored = write_one(model, sql, table, tx).await?;
    stage_inserted(&stored, stamps, tx)?;
    Ok(stored)
}

/// A model's first foldable insert: two statements, as ever, and the types of its generated
/// columns noted for the next.
async fn learning<M, DB>(
    model: &M,
    sql: &'static ModelSql,
    stamps: Vec<Stamp>,
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<M>
where
    DB: Backend,
    M: TrackedRow<DB>,
{
    let query = model.__bind_insert(sqlx::query(sql.insert));
    let row = DB::fetch_one(tx.connection(), query).await?;
    tx.wrote();
    let plan = Plan::learn::<M, DB>(sql, &row);
    if !plain_table::<DB>(sql, tx).await? {
        plan.off.store(true, Ordering::Relaxed);
    }
    let plan = Arc::new(plan);
    PLANS
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(key_of::<M>(sql))
        .or_insert(plan);
    let stored = M::__from_row(&row)?;
    stage_inserted(&stored, stamps, tx)?;
    Ok(stored)
}

/// Whether the model's table and the outbox are both ordinary (or partitioned) tables without
/// rules: PostgreSQL refuses a data-modifying `WITH` on a table with rules, and a view may be
/// written through them.
async fn plain_table<DB: Backend>(
    sql: &ModelSql,
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<bool> {
    // `UPDATE "schema"."table" SET `: the table as the statements name it, quoted.
    let Some(table) = sql
        .update_prefix
        .strip_prefix("UPDATE ")
        .and_then(|rest| rest.strip_suffix(" SET "))
    else {
        return Ok(false);
    };
    let query = DB::bind_text(
        sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM pg_class \
             WHERE oid IN (to_regclass($1), to_regclass('posthog_outbox')) \
             AND NOT relhasrules AND relkind IN ('r', 'p')",
        ),
        table,
    );
    let row = DB::fetch_one(tx.connection(), query).await?;
    Ok(DB::int(&row, 0)? == 2)
}

/// Renders `model`'s insert events with `shape` and takes them back out of the transaction.
fn render<M: TrackedModel, DB: Backend>(
    model: &M,
    stamps: Vec<Stamp>,
    shape: EventShape,
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<Vec<StagedEvent>> {
    let start = tx.staged().len();
    tx.set_shape(shape);
    let staged = stage_inserted(model, stamps, tx);
    tx.set_shape(EventShape::default());
    let events = tx.staged_mut().split_off(start);
    staged.map(|()| events)
}

async fn folded<M, DB>(
    model: &M,
    sql: &'static ModelSql,
    table: &'static str,
    plan: &Plan,
    stamps: Vec<Stamp>,
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<M>
where
    DB: Backend,
    M: TrackedRow<DB>,
{
    let given = EventShape {
        splice: M::__GENERATED_PROPERTIES,
        replay: None,
        rehearsal: true,
    };
    let before = render(model, stamps.clone(), given, tx)?;
    let Some(statement) = plan
        .statements
        .and_then(|statements| statements.get(before.len().checked_sub(1)?).copied())
    else {
        // More events than a fold writes (not the case for any model that folds today).
        return unfolded(model, sql, table, stamps, tx).await;
    };
    let query = before.iter().fold(
        model.__bind_insert(sqlx::query(statement)),
        outbox::bind_event::<DB>,
    );
    let row = DB::fetch_one(tx.connection(), query)
        .await
        .map_err(|error| {
            if let sqlx::Error::Database(database) = &error
                && database.code().as_deref() == Some("0A000")
            {
                // Something PostgreSQL does not allow in a data-modifying `WITH` (a rule added to
                // the table since): this transaction has failed, the model's next inserts won't
                // fold.
                plan.off.store(true, Ordering::Relaxed);
            }
            outbox::explain(error, DB::DIALECT)
        })?;
    tx.wrote();
    // From here on the row and its outbox rows are in the transaction. A failure below is
    // one the two-statement path would also have after its INSERT (decoding the row, mapping
    // it), and the outbox rows are removed again so that no event outlives its failed write.
    let uuids: Vec<uuid::Uuid> = before.iter().map(|event| event.uuid).collect();
    match settle(&row, sql, plan, before, stamps, tx).await {
        Ok(stored) => Ok(stored),
        Err(error) => {
            if let Err(removal) = remove(tx, &uuids).await {
                // The write has failed either way, and its transaction must be rolled back;
                // the error to return is the one that says why it failed.
                tracing::warn!(
                    error = %removal,
                    "posthog-track: the outbox rows of a failed insert could not be removed; \
                     roll its transaction back"
                );
            }
            Err(error)
        }
    }
}

/// After a folded statement returned `row`: the stored model, with its events rendered again
/// from it, compared with what the statement wrote from `before`, corrected where they differ,
/// and staged as folded.
async fn settle<M, DB>(
    row: &DB::Row,
    sql: &ModelSql,
    plan: &Plan,
    before: Vec<StagedEvent>,
    stamps: Vec<Stamp>,
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<M>
where
    DB: Backend,
    M: TrackedRow<DB>,
{
    let stored = M::__from_row(row)?;
    let width = sql.columns.len();
    let mut written: Vec<String> = before.iter().map(|event| event.payload.clone()).collect();
    for (n, &index) in plan.rendered.iter().enumerate() {
        let rendering = DB::text(row, width + n)?;
        let marker = splice_marker(index);
        for payload in &mut written {
            *payload = payload.replace(&marker, &rendering);
        }
    }
    let replay = EventShape {
        splice: &[],
        replay: Some((
            before[0].timestamp.clone(),
            before.iter().map(|event| event.uuid).collect(),
        )),
        rehearsal: false,
    };
    let after = render(&stored, stamps, replay, tx)?;
    let same_events = after.len() == before.len()
        && after
            .iter()
            .zip(&before)
            .all(|(a, b)| a.uuid == b.uuid && a.event == b.event);
    if !same_events {
        // The row as stored staged other events than the row as given (no model does):
        // write those at commit like any unfolded write.
        let uuids: Vec<uuid::Uuid> = before.iter().map(|event| event.uuid).collect();
        remove(tx, &uuids).await?;
        tx.staged_mut().extend(after);
        plan.record(true);
        return Ok(stored);
    }
    let mut corrected = false;
    for ((event, payload), given) in after.iter().zip(&written).zip(&before) {
        if event.payload != *payload || event.distinct_id != given.distinct_id {
            corrected = true;
            let rewrite = Some((event.distinct_id.as_str(), event.payload.as_str()));
            outbox_row(tx, event.uuid, rewrite).await?;
        }
    }
    tx.staged_mut().extend(after);
    tx.mark_folded();
    plan.record(corrected);
    Ok(stored)
}

/// Deletes the outbox rows a folded insert wrote.
async fn remove<DB: Backend>(
    tx: &mut TrackedTransaction<'_, DB>,
    uuids: &[uuid::Uuid],
) -> Result<()> {
    for &uuid in uuids {
        outbox_row(tx, uuid, None).await?;
    }
    Ok(())
}
