//! What changed between two tracking plans, and whether it breaks existing analyses.

use std::collections::BTreeMap;
use std::fmt;

use super::{PlannedEvent, PlannedProperty, TrackingPlan};

/// Whether a change can break an existing insight, dashboard or export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// New events or properties: nothing that worked stops working.
    Additive,
    /// Removed events or properties, changed types: something that worked may stop.
    Breaking,
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Additive or breaking.
    pub severity: Severity,
    /// What changed, for people.
    pub description: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.severity {
            Severity::Additive => "additive",
            Severity::Breaking => "BREAKING",
        };
        write!(f, "[{tag}] {}", self.description)
    }
}

/// An event's source: its name, model, trigger and, for a milestone, the property whose
/// change sends it (a model can send one milestone event from several fields).
type Key<'a> = (&'a str, &'a str, &'a str, &'a str);

fn index(plan: &TrackingPlan) -> BTreeMap<Key<'_>, &PlannedEvent> {
    plan.events
        .iter()
        .map(|e| {
            let key = (
                e.event.as_str(),
                e.model.as_str(),
                e.trigger.as_str(),
                milestone_of(e),
            );
            (key, e)
        })
        .collect()
}

/// The property whose change sends a milestone: as recorded, or, in a plan written before
/// plans recorded it, the one whose old value the event carries as `previous_<property>`.
fn milestone_of(event: &PlannedEvent) -> &str {
    if !event.milestone_of.is_empty() || event.trigger != "milestone" {
        return &event.milestone_of;
    }
    event
        .properties
        .iter()
        .filter_map(|p| p.name.strip_prefix("previous_"))
        .find(|name| event.properties.iter().any(|p| p.name == *name))
        .unwrap_or_default()
}

/// An event's source, for people: "insert of `Order`", "milestone of `Account` on `plan`".
fn source(event: &PlannedEvent) -> String {
    match milestone_of(event) {
        "" => format!("{} of `{}`", event.trigger, event.model),
        property => format!("{} of `{}` on `{property}`", event.trigger, event.model),
    }
}

/// The changes from `old` to `new`, breaking ones first.
pub fn diff(old: &TrackingPlan, new: &TrackingPlan) -> Vec<Change> {
    let (before, after) = (index(old), index(new));
    let mut changes = Vec::new();
    let mut push = |severity, description: String| {
        changes.push(Change {
            severity,
            description,
        })
    };
    for (key, event) in &after {
        if !before.contains_key(key) {
            push(
                Severity::Additive,
                format!("event `{}` added ({})", event.event, source(event)),
            );
        }
    }
    for (key, old_event) in &before {
        let Some(new_event) = after.get(key) else {
            push(
                Severity::Breaking,
                format!(
                    "event `{}` removed ({})",
                    old_event.event,
                    source(old_event)
                ),
            );
            continue;
        };
        let props = |event: &'_ PlannedEvent| -> BTreeMap<String, PlannedProperty> {
            event
                .properties
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect()
        };
        let (old_props, new_props) = (props(old_event), props(new_event));
        let place = format!("`{}` ({})", old_event.event, source(old_event));
        for (name, new_prop) in &new_props {
            match old_props.get(name) {
                None => push(
                    Severity::Additive,
                    format!("property `{name}` added to {place}"),
                ),
                Some(old_prop) => {
                    if old_prop.json_type != new_prop.json_type {
                        push(
                            Severity::Breaking,
                            format!(
                                "property `{name}` of {place} changed type: {} -> {}",
                                old_prop.json_type, new_prop.json_type
                            ),
                        );
                    }
                    if !old_prop.nullable && new_prop.nullable {
                        push(
                            Severity::Breaking,
                            format!("property `{name}` of {place} may now be null"),
                        );
                    }
                    if old_prop.always && !new_prop.always {
                        push(
                            Severity::Breaking,
                            format!("property `{name}` of {place} is no longer always present"),
                        );
                    }
                    // A property that stops setting the person (or stops overwriting it, or
                    // starts overwriting a first value) leaves person-based insights and
                    // cohorts with other values than before: only a new one is additive.
                    // Milestone events never send `$set`: plans written before they said so
                    // marked their properties as person properties, which is no change.
                    if new_event.trigger == "milestone" {
                        continue;
                    }
                    let (severity, what) = match (&old_prop.person, &new_prop.person) {
                        (None, Some(new)) => (
                            Severity::Additive,
                            format!("is now also a person property (`${new}`)"),
                        ),
                        (Some(old), None) => (
                            Severity::Breaking,
                            format!("is no longer a person property (`${old}`)"),
                        ),
                        (Some(old), Some(new)) if old != new => (
                            Severity::Breaking,
                            format!("changed person property: `${old}` -> `${new}`"),
                        ),
                        _ => continue,
                    };
                    push(severity, format!("property `{name}` of {place} {what}"));
                }
            }
        }
        for name in old_props
            .keys()
            .filter(|name| !new_props.contains_key(*name))
        {
            push(
                Severity::Breaking,
                format!("property `{name}` removed from {place}"),
            );
        }
    }
    changes.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.description.cmp(&b.description))
    });
    changes
}
