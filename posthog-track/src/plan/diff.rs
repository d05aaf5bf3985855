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

type Key<'a> = (&'a str, &'a str, &'a str);

fn index(plan: &TrackingPlan) -> BTreeMap<Key<'_>, &PlannedEvent> {
    plan.events
        .iter()
        .map(|e| ((e.event.as_str(), e.model.as_str(), e.trigger.as_str()), e))
        .collect()
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
                format!(
                    "event `{}` added ({} of `{}`)",
                    event.event, event.trigger, event.model
                ),
            );
        }
    }
    for (key, old_event) in &before {
        let Some(new_event) = after.get(key) else {
            push(
                Severity::Breaking,
                format!(
                    "event `{}` removed ({} of `{}`)",
                    old_event.event, old_event.trigger, old_event.model
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
        let place = format!(
            "`{}` ({} of `{}`)",
            old_event.event, old_event.trigger, old_event.model
        );
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
                    if old_prop.person != new_prop.person {
                        push(
                            Severity::Additive,
                            format!("property `{name}` of {place}: person property changed"),
                        );
                    }
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
