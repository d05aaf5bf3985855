//! The tracking plan: every event the code can send, with its properties, as data that
//! analysts review in the same pull request as the code.
//!
//! Each `#[derive(TrackedModel)]` registers its model at compile time, so a test can collect
//! the whole plan without a database or a network, and compare it with a checked-in file:
//!
//! ```no_run
//! #[test]
//! fn tracking_plan_is_up_to_date() {
//!     // Fails with a readable diff when a model changed; POSTHOG_TRACK_UPDATE_PLAN=1 rewrites it.
//!     posthog_track::plan::assert_snapshot("tracking-plan.json");
//! }
//! ```
//!
//! [`PlanPush`] then writes the plan's descriptions and property types to PostHog's event and
//! property definitions (`posthog-track plan push`).

mod compare;
mod diff;
mod push;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use compare::{
    DefinitionChange, DefinitionKind, EventDefinition, PropertyDefinition, definition_changes,
    posthog_property_type,
};
pub use diff::{Change, Severity, diff};
pub use push::{EU_APP_HOST, PlanPush, PushOptions, US_APP_HOST};

/// What the derive records about a model (not public API).
#[doc(hidden)]
#[derive(Debug)]
pub struct ModelPlan {
    pub model: &'static str,
    pub table: &'static str,
    /// `table_variant(...)`: the tables its rows go to instead, per flag variant.
    pub table_variants: &'static [VariantPlan],
    pub description: &'static str,
    pub events: ModelEvents,
    /// `identify`: inserts and person-property changes send `$identify`.
    pub identify: bool,
    /// `group_type`: the model is a group, and its writes send `$groupidentify`.
    pub group_type: Option<&'static str>,
    /// No key is `generated`, so rows can be upserted.
    pub upsert: bool,
    /// The group types of its `group = "..."` fields.
    pub groups: &'static [&'static str],
    pub fields: &'static [FieldPlan],
}

/// What the derive records about a `table_variant(...)` (not public API).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct VariantPlan {
    pub flag: &'static str,
    pub variant: &'static str,
    pub table: &'static str,
}

/// The names of a model's write events (not public API).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct ModelEvents {
    pub insert: &'static str,
    pub update: &'static str,
    pub delete: &'static str,
}

/// Where a `person` or `person_once` field's value goes besides the event (not public API).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersonProperty {
    /// `$set`.
    Set,
    /// `$set_once`.
    SetOnce,
}

impl PersonProperty {
    /// The plan's name for it.
    fn name(self) -> &'static str {
        match self {
            PersonProperty::Set => "set",
            PersonProperty::SetOnce => "set_once",
        }
    }
}

/// What the derive records about a field (not public API).
#[doc(hidden)]
#[derive(Debug)]
pub struct FieldPlan {
    pub field: &'static str,
    /// `None` for a skipped field.
    pub property: Option<&'static str>,
    pub rust_type: &'static str,
    /// Also a person property.
    pub person: Option<PersonProperty>,
    pub key: bool,
    pub skip_reason: Option<&'static str>,
    pub milestones: &'static [&'static str],
    pub description: &'static str,
}

/// Registration of one model (not public API).
#[doc(hidden)]
pub struct PlanEntry(pub &'static ModelPlan);

inventory::collect!(PlanEntry);

/// Every event the code can send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TrackingPlan {
    /// Events, sorted by name and then by source.
    pub events: Vec<PlannedEvent>,
    /// Fields kept out of analytics on purpose, with their reasons.
    pub skipped: Vec<SkippedField>,
}

/// One event and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedEvent {
    /// The event's name.
    pub event: String,
    /// The write that sends it: `insert` (also `insert_all`), `update`, `delete` or
    /// `milestone`; `upsert_created` and `upsert_existed` for an `upsert` that created the
    /// row (the insert event) or found it (the update event, with every property); for
    /// PostHog's own events, `identify` (`$identify`), `group_identify` (`$groupidentify`,
    /// also what a backfill of a group model sends) or `backfill` (the `$set` person update
    /// that [`Tracker::backfill`](crate::Tracker::backfill) sends per row of a person model;
    /// its historical insert events are the model's `insert` event).
    pub trigger: String,
    /// The Rust model.
    pub model: String,
    /// The table written.
    pub table: String,
    /// For a flag-routed model, the tables its rows go to instead of `table`: those of the
    /// users in each variant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variant_tables: Vec<VariantTable>,
    /// For a `milestone`, the property whose change sends it (its old value is
    /// `previous_<property>`): one event name can have a milestone on several fields.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub milestone_of: String,
    /// The model's doc comment.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Its properties, in field order.
    pub properties: Vec<PlannedProperty>,
}

/// Where a flag-routed model's rows go for the users in one variant of a feature flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariantTable {
    /// The feature flag's key.
    pub flag: String,
    /// The variant.
    pub variant: String,
    /// The table the rows of its users go to.
    pub table: String,
}

/// One property of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedProperty {
    /// The property's name.
    pub name: String,
    /// Its JSON type: string, number, boolean, array, object or any.
    #[serde(rename = "type")]
    pub json_type: String,
    /// The value may be null.
    pub nullable: bool,
    /// Present on every event of this name (an `update_changed` sends only what changed).
    pub always: bool,
    /// Also a person property: `set` or `set_once`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<String>,
    /// The field's doc comment.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// A field that never reaches PostHog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedField {
    /// The Rust model.
    pub model: String,
    /// The field.
    pub field: String,
    /// Why, as the code says.
    pub reason: String,
}

impl TrackingPlan {
    /// The plan of every `TrackedModel` linked into this program.
    pub fn collect() -> TrackingPlan {
        let mut models: Vec<&ModelPlan> = inventory::iter::<PlanEntry>
            .into_iter()
            .map(|entry| entry.0)
            .collect();
        models.sort_by_key(|model| (model.model, model.table));
        let mut plan = TrackingPlan::default();
        for model in models {
            plan.add_model(model);
        }
        plan.events.sort_by(|a, b| {
            (&a.event, &a.model, &a.trigger, &a.milestone_of).cmp(&(
                &b.event,
                &b.model,
                &b.trigger,
                &b.milestone_of,
            ))
        });
        plan
    }

    fn add_model(&mut self, model: &ModelPlan) {
        let tracked: Vec<&FieldPlan> = model
            .fields
            .iter()
            .filter(|f| f.property.is_some())
            .collect();
        // Every event a write of a flag-routed model stages carries `$feature/<flag>` with the
        // flag's value for the row's user (not when the flag could not be decided).
        let mut flags: Vec<&str> = Vec::new();
        for variant in model.table_variants {
            if !flags.contains(&variant.flag) {
                flags.push(variant.flag);
            }
        }
        let features: Vec<PlannedProperty> = flags
            .iter()
            .map(|flag| special_property(&format!("$feature/{flag}"), "string", false))
            .collect();
        // Every event of a grouped model carries `$groups`.
        let groups = (model.group_type.is_some() || !model.groups.is_empty())
            .then(|| special_property("$groups", "object", true));
        // PostHog's properties, after the model's.
        let specials: Vec<PlannedProperty> =
            features.iter().cloned().chain(groups.clone()).collect();
        let every = |always: &dyn Fn(&FieldPlan) -> bool, include: &dyn Fn(&FieldPlan) -> bool| {
            tracked
                .iter()
                .filter(|f| include(f))
                .map(|f| property(f, always(f)))
                .chain(specials.iter().cloned())
                .collect::<Vec<_>>()
        };
        let variant_tables: Vec<VariantTable> = model
            .table_variants
            .iter()
            .map(|variant| VariantTable {
                flag: variant.flag.to_owned(),
                variant: variant.variant.to_owned(),
                table: variant.table.to_owned(),
            })
            .collect();
        let event = |name: &str, trigger: &str, properties: Vec<PlannedProperty>| PlannedEvent {
            event: name.to_owned(),
            trigger: trigger.to_owned(),
            model: model.model.to_owned(),
            table: model.table.to_owned(),
            variant_tables: variant_tables.clone(),
            milestone_of: String::new(),
            // PostHog's own events keep PostHog's descriptions.
            description: if name.starts_with('$') {
                String::new()
            } else {
                model.description.to_owned()
            },
            properties,
        };
        // The write methods' events: which properties each carries, and which of those are
        // always there.
        let every_field: fn(&FieldPlan) -> bool = |_| true;
        let key_field: fn(&FieldPlan) -> bool = |f| f.key;
        // `update` sends every property; `update_changed` only the key and what changed.
        let mut writes = vec![
            (model.events.insert, "insert", every_field, every_field),
            (model.events.update, "update", key_field, every_field),
        ];
        if model.upsert {
            // An upsert sends the insert event when it creates the row, and the update event
            // with every property (as `update` does) when the row existed.
            writes.push((
                model.events.insert,
                "upsert_created",
                every_field,
                every_field,
            ));
            writes.push((
                model.events.update,
                "upsert_existed",
                every_field,
                every_field,
            ));
        }
        writes.push((model.events.delete, "delete", every_field, key_field));
        for (name, trigger, always, include) in writes {
            self.events
                .push(event(name, trigger, every(&always, &include)));
        }
        for field in &tracked {
            for milestone in field.milestones {
                // A milestone sends the row's properties and the field's old value, but no
                // `$set`: none of them is a person property there.
                let mut properties = every(&|_| true, &|_| true);
                let mut previous = property(field, true);
                let changed = std::mem::take(&mut previous.name);
                previous.name = format!("previous_{changed}");
                properties.insert(properties.len() - specials.len(), previous);
                for property in &mut properties {
                    property.person = None;
                }
                let mut planned = event(milestone, "milestone", properties);
                planned.milestone_of = changed;
                self.events.push(planned);
            }
        }
        if model.identify {
            // The person properties alone: all of them at insert, the changed ones at update,
            // and an absent value is left out, so none is always there.
            let mut properties = vec![special_property("$anon_distinct_id", "string", false)];
            properties.extend(every(&|_| false, &|f| f.person.is_some()));
            self.events.push(event("$identify", "identify", properties));
        }
        if model.table_variants.is_empty()
            && (model.identify || model.fields.iter().any(|f| f.person.is_some()))
        {
            // A backfill's person update: the person properties of one row (a `None` left
            // out), and no flag. A flag-routed model is refused by the backfill (a run reads
            // one table), so it has none.
            let mut properties = every(&|_| false, &|f| f.person.is_some());
            properties.retain(|p| !p.name.starts_with("$feature/"));
            self.events.push(event("$set", "backfill", properties));
        }
        if model.group_type.is_some() {
            let mut properties = vec![
                special_property("$group_type", "string", true),
                special_property("$group_key", "string", true),
                special_property("$group_set", "object", true),
            ];
            properties.extend(specials.iter().cloned());
            self.events
                .push(event("$groupidentify", "group_identify", properties));
        }
        for field in model.fields.iter().filter(|f| f.property.is_none()) {
            self.skipped.push(SkippedField {
                model: model.model.to_owned(),
                field: field.field.to_owned(),
                reason: field.skip_reason.unwrap_or_default().to_owned(),
            });
        }
    }

    /// The plan as pretty JSON, stable across runs (for a checked-in file).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Reads a plan written by [`to_json`](TrackingPlan::to_json).
    pub fn from_json(json: &str) -> Result<TrackingPlan, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The plan as a Markdown document, for people.
    pub fn to_markdown(&self) -> String {
        let mut out = String::from("# Tracking plan\n");
        let mut by_event: BTreeMap<&str, Vec<&PlannedEvent>> = BTreeMap::new();
        for event in &self.events {
            by_event.entry(&event.event).or_default().push(event);
        }
        for (name, sources) in by_event {
            out.push_str(&format!("\n## `{name}`\n"));
            for event in sources {
                let milestone_of = if event.milestone_of.is_empty() {
                    String::new()
                } else {
                    format!(" (a change of `{}`)", event.milestone_of)
                };
                let variants: String = event
                    .variant_tables
                    .iter()
                    .map(|v| {
                        format!(
                            ", or `{}` for variant `{}` of flag `{}`",
                            v.table, v.variant, v.flag
                        )
                    })
                    .collect();
                out.push_str(&format!(
                    "\nSent on {}{milestone_of} of `{}` (table `{}`{variants}).",
                    trigger_phrase(&event.trigger),
                    event.model,
                    event.table
                ));
                if !event.description.is_empty() {
                    out.push_str(&format!(" {}", event.description));
                }
                out.push_str("\n\n| property | type | always | person | description |\n|---|---|---|---|---|\n");
                for p in &event.properties {
                    let ty = if p.nullable {
                        format!("{} or null", p.json_type)
                    } else {
                        p.json_type.clone()
                    };
                    out.push_str(&format!(
                        "| `{}` | {ty} | {} | {} | {} |\n",
                        p.name,
                        if p.always {
                            "yes"
                        } else if p.name.starts_with("$feature/") {
                            // Absent when the flag could not be decided.
                            "when decided"
                        } else {
                            "when changed"
                        },
                        p.person
                            .as_deref()
                            .map_or(String::new(), |person| format!("`${person}`")),
                        p.description
                    ));
                }
            }
        }
        if !self.skipped.is_empty() {
            out.push_str("\n## Never sent\n\n| model | field | why |\n|---|---|---|\n");
            for skipped in &self.skipped {
                out.push_str(&format!(
                    "| `{}` | `{}` | {} |\n",
                    skipped.model, skipped.field, skipped.reason
                ));
            }
        }
        out
    }
}

/// A trigger as the Markdown plan says it.
fn trigger_phrase(trigger: &str) -> &str {
    match trigger {
        "upsert_created" => "upsert (the row was new)",
        "upsert_existed" => "upsert (the row existed)",
        other => other,
    }
}

fn property(field: &FieldPlan, always: bool) -> PlannedProperty {
    let (json_type, nullable) = json_type(field.rust_type);
    PlannedProperty {
        name: field.property.unwrap_or(field.field).to_owned(),
        json_type: json_type.to_owned(),
        nullable,
        always,
        person: field.person.map(|person| person.name().to_owned()),
        description: field.description.to_owned(),
    }
}

/// A property of PostHog's own (`$groups`, `$group_set`, ...).
fn special_property(name: &str, json_type: &str, always: bool) -> PlannedProperty {
    PlannedProperty {
        name: name.to_owned(),
        json_type: json_type.to_owned(),
        nullable: false,
        always,
        person: None,
        description: String::new(),
    }
}

/// The JSON type serde gives a Rust type, from its spelling (the derive has no type
/// information beyond that), and whether it may be null.
fn json_type(rust_type: &str) -> (&'static str, bool) {
    let compact: String = rust_type.chars().filter(|c| !c.is_whitespace()).collect();
    let last_segment = |ty: &str| ty.rsplit("::").next().unwrap_or(ty).to_owned();
    if let Some(inner) = compact
        .strip_prefix("Option<")
        .and_then(|rest| rest.strip_suffix('>'))
    {
        return (json_type(inner).0, true);
    }
    let head = last_segment(compact.split('<').next().unwrap_or(&compact));
    let ty = match head.as_str() {
        "String" | "str" | "&str" | "Uuid" | "DateTime" | "NaiveDate" | "NaiveDateTime"
        | "NaiveTime" | "char" | "Cow" => "string",
        // serde sends `rust_decimal::Decimal` and `bigdecimal::BigDecimal` as strings ("49.50"),
        // unless rust_decimal's `serde-float` or `serde-arbitrary-precision` feature is on,
        // which the type's name cannot tell: plan what they send by default.
        "Decimal" | "BigDecimal" => "string",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64" | "u128"
        | "usize" | "f32" | "f64" => "number",
        "bool" => "boolean",
        "Vec" | "HashSet" | "BTreeSet" => "array",
        "HashMap" | "BTreeMap" | "Map" => "object",
        "Value" | "Json" => "any",
        _ => "object",
    };
    (ty, false)
}

/// An empty plan means the models are not linked into the test binary, not that there are
/// none: say how to link them.
fn refuse_empty(current: &TrackingPlan) -> Result<(), String> {
    if !current.events.is_empty() || !current.skipped.is_empty() {
        return Ok(());
    }
    let package = std::env::var("CARGO_PKG_NAME")
        .map(|name| name.replace('-', "_"))
        .unwrap_or_else(|_| "your_crate".to_owned());
    Err(format!(
        "the tracking plan is empty: no `#[derive(TrackedModel)]` is linked into this test \
         binary, so there is nothing to compare (and nothing would ever fail). A test in \
         `tests/` links only the crates it uses: add `use {package} as _;` (the crate that \
         defines the models) at the top of the test file"
    ))
}

/// Whether `POSTHOG_TRACK_UPDATE_PLAN` (its value, if set) asks to rewrite the plan: a yes
/// or no like every setting (`1`, `true`, `yes`, `on`, ...). Only `1` was taken, so `=true`
/// compared instead, and the test failed again with the diff it was meant to accept.
fn update_requested(value: Option<&str>) -> crate::Result<bool> {
    value.map_or(Ok(false), |value| {
        crate::config::parse_flag("POSTHOG_TRACK_UPDATE_PLAN", value)
    })
}

/// Compares the program's plan with the checked-in file at `path` (relative to the crate),
/// and panics with the differences, each marked additive or breaking. With
/// `POSTHOG_TRACK_UPDATE_PLAN=1` it rewrites the file instead.
///
/// # Panics
///
/// When the plan differs from the file, or the file is missing or unreadable.
///
/// Also when no model at all is registered: a test in `tests/` links only what it uses, so
/// without `use your_crate as _;` it would compare (or write) an empty plan and pass forever.
#[track_caller]
pub fn assert_snapshot(path: &str) {
    let current = TrackingPlan::collect();
    if let Err(message) = refuse_empty(&current) {
        panic!("{message}");
    }
    let full_path = std::path::Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned()),
    )
    .join(path);
    let update = update_requested(std::env::var("POSTHOG_TRACK_UPDATE_PLAN").ok().as_deref());
    if update.unwrap_or_else(|error| panic!("{error}")) {
        if let Err(error) = std::fs::write(&full_path, current.to_json()) {
            panic!("could not write {}: {error}", full_path.display());
        }
        return;
    }
    let text = match std::fs::read_to_string(&full_path) {
        Ok(text) => text,
        Err(error) => panic!(
            "could not read the tracking plan {}: {error}\nrun with POSTHOG_TRACK_UPDATE_PLAN=1 to write it",
            full_path.display()
        ),
    };
    let recorded = match TrackingPlan::from_json(&text) {
        Ok(plan) => plan,
        Err(error) => panic!("{} is not a tracking plan: {error}", full_path.display()),
    };
    let changes = diff(&recorded, &current);
    if !changes.is_empty() {
        let breaking = changes
            .iter()
            .filter(|c| c.severity == Severity::Breaking)
            .count();
        let list: Vec<String> = changes.iter().map(ToString::to_string).collect();
        panic!(
            "the tracking plan changed ({} change(s), {breaking} breaking):\n  {}\n\nreview with the analytics owners, then run with POSTHOG_TRACK_UPDATE_PLAN=1 to update {}",
            changes.len(),
            list.join("\n  "),
            path
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_update_switch_takes_any_yes_or_no() {
        for yes in ["1", "true", "TRUE", "yes", "on"] {
            assert!(update_requested(Some(yes)).unwrap(), "{yes}");
        }
        for no in ["0", "false", "no", "off"] {
            assert!(!update_requested(Some(no)).unwrap(), "{no}");
        }
        assert!(!update_requested(None).unwrap());
        let refused = update_requested(Some("please")).unwrap_err().to_string();
        assert!(refused.contains("POSTHOG_TRACK_UPDATE_PLAN"), "{refused}");
    }

    /// serde sends decimals as strings; the plan said number (Decimal) and object (BigDecimal).
    #[test]
    fn decimals_are_planned_as_the_strings_serde_sends() {
        for ty in [
            "Decimal",
            "rust_decimal::Decimal",
            "BigDecimal",
            "bigdecimal::BigDecimal",
        ] {
            assert_eq!(json_type(ty), ("string", false), "{ty}");
        }
        assert_eq!(json_type("Option<Decimal>"), ("string", true));
    }

    #[test]
    fn an_empty_plan_is_refused_with_the_way_to_link_the_models() {
        let message = refuse_empty(&TrackingPlan::default()).unwrap_err();
        assert!(message.contains("use posthog_track as _;"), "{message}");
    }
}
