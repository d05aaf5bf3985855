//! Comparing the tracking plan with PostHog's event and property definitions: the minimal
//! changes that make PostHog describe what the plan describes. Pure data in, data out; the
//! HTTP side that reads the definitions and sends the changes is in `push`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::TrackingPlan;

/// Which kind of PostHog definition a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DefinitionKind {
    /// An event definition.
    Event,
    /// An event property definition.
    Property,
}

impl fmt::Display for DefinitionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DefinitionKind::Event => "event",
            DefinitionKind::Property => "property",
        })
    }
}

/// One difference between the plan and PostHog's definitions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DefinitionChange {
    /// A `PATCH` of an existing definition; only the fields that differ are sent.
    Update {
        /// Event or property.
        kind: DefinitionKind,
        /// PostHog's id of the definition.
        id: String,
        /// The event's or property's name.
        name: String,
        /// The description, from what PostHog holds (`""` for none) to the plan's.
        description: Option<(String, String)>,
        /// The property type, from what PostHog holds (`None` for none) to the plan's
        /// (`String`, `Numeric`, `Boolean` or `DateTime`).
        property_type: Option<(Option<String>, String)>,
    },
    /// The plan describes it but PostHog has not ingested it yet, so it has no definition to
    /// patch; the first push after its first event describes it.
    NotYetSeen {
        /// Event or property.
        kind: DefinitionKind,
        /// The event's or property's name.
        name: String,
    },
}

impl DefinitionChange {
    /// The change is a request to PostHog (not a note about an unseen name).
    pub fn is_patch(&self) -> bool {
        matches!(self, DefinitionChange::Update { .. })
    }
}

impl fmt::Display for DefinitionChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DefinitionChange::Update {
                kind,
                name,
                description,
                property_type,
                ..
            } => {
                write!(f, "PATCH {kind} {name}:")?;
                let mut separator = " ";
                if let Some((from, to)) = description {
                    write!(f, "{separator}description {from:?} -> {to:?}")?;
                    separator = ", ";
                }
                if let Some((from, to)) = property_type {
                    let from = from
                        .as_ref()
                        .map_or("null".to_owned(), |t| format!("{t:?}"));
                    write!(f, "{separator}property_type {from} -> {to:?}")?;
                }
                Ok(())
            }
            DefinitionChange::NotYetSeen { kind, name } => write!(
                f,
                "SKIP {kind} {name}: not yet seen by PostHog, will be described on the next push"
            ),
        }
    }
}

/// An event definition as PostHog's API returns it (the fields this crate uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EventDefinition {
    /// Its id (a UUID).
    pub id: String,
    /// The event's name.
    pub name: String,
    /// Its description, if any.
    #[serde(default)]
    pub description: Option<String>,
}

/// An event property definition as PostHog's API returns it (the fields this crate uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PropertyDefinition {
    /// Its id (a UUID).
    pub id: String,
    /// The property's name.
    pub name: String,
    /// Its description, if any.
    #[serde(default)]
    pub description: Option<String>,
    /// `String`, `Numeric`, `Boolean`, `DateTime`, `Duration`, or none yet.
    #[serde(default)]
    pub property_type: Option<String>,
}

/// The PostHog property type for a plan JSON type, or `None` to leave PostHog's alone
/// (objects, arrays, `any`).
pub fn posthog_property_type(json_type: &str) -> Option<&'static str> {
    match json_type {
        "string" => Some("String"),
        "number" | "integer" => Some("Numeric"),
        "boolean" => Some("Boolean"),
        "date-time" | "datetime" | "timestamp" | "date" => Some("DateTime"),
        _ => None,
    }
}

/// What the plan says about one name, merged over every event that carries it.
#[derive(Default)]
struct Wanted {
    description: String,
    /// The first event's type, and whether every later one agreed.
    property_type: Option<Option<&'static str>>,
    conflicting_types: bool,
}

impl Wanted {
    fn describe(&mut self, description: &str) {
        // The first non-empty description wins; the plan is sorted, so this is stable.
        if self.description.is_empty() {
            self.description = description.to_owned();
        }
    }

    fn typed(&mut self, ty: Option<&'static str>) {
        match self.property_type {
            None => self.property_type = Some(ty),
            Some(first) if first != ty => self.conflicting_types = true,
            Some(_) => {}
        }
    }

    /// `None`: leave PostHog's type alone (no type it can hold, or the events disagree).
    fn property_type(&self) -> Option<&'static str> {
        if self.conflicting_types {
            None
        } else {
            self.property_type.flatten()
        }
    }
}

/// The minimal changes that make PostHog's `events` and `properties` match `plan`: a
/// description is patched only when the plan has a non-empty one that differs; a property type
/// only when every event of the plan agrees on a type PostHog can hold and it differs (a
/// `DateTime` that the plan calls a string stays `DateTime`: dates travel as strings).
pub fn definition_changes(
    plan: &TrackingPlan,
    events: &[EventDefinition],
    properties: &[PropertyDefinition],
) -> Vec<DefinitionChange> {
    let mut wanted_events: BTreeMap<&str, Wanted> = BTreeMap::new();
    let mut wanted_properties: BTreeMap<&str, Wanted> = BTreeMap::new();
    for event in &plan.events {
        wanted_events
            .entry(&event.event)
            .or_default()
            .describe(&event.description);
        // PostHog's own properties (`$groups`, `$anon_distinct_id`) keep PostHog's definitions.
        for property in event.properties.iter().filter(|p| !p.name.starts_with('$')) {
            let wanted = wanted_properties.entry(&property.name).or_default();
            wanted.describe(&property.description);
            wanted.typed(posthog_property_type(&property.json_type));
        }
    }

    let mut changes = Vec::new();
    let existing_events: BTreeMap<&str, &EventDefinition> =
        events.iter().map(|e| (e.name.as_str(), e)).collect();
    for (name, wanted) in &wanted_events {
        if wanted.description.is_empty() {
            continue;
        }
        match existing_events.get(name) {
            None => changes.push(DefinitionChange::NotYetSeen {
                kind: DefinitionKind::Event,
                name: (*name).to_owned(),
            }),
            Some(existing) => {
                let current = existing.description.clone().unwrap_or_default();
                if current != wanted.description {
                    changes.push(DefinitionChange::Update {
                        kind: DefinitionKind::Event,
                        id: existing.id.clone(),
                        name: (*name).to_owned(),
                        description: Some((current, wanted.description.clone())),
                        property_type: None,
                    });
                }
            }
        }
    }

    let existing_properties: BTreeMap<&str, &PropertyDefinition> =
        properties.iter().map(|p| (p.name.as_str(), p)).collect();
    for (name, wanted) in &wanted_properties {
        if wanted.description.is_empty() && wanted.property_type().is_none() {
            continue;
        }
        let Some(existing) = existing_properties.get(name) else {
            changes.push(DefinitionChange::NotYetSeen {
                kind: DefinitionKind::Property,
                name: (*name).to_owned(),
            });
            continue;
        };
        let current = existing.description.clone().unwrap_or_default();
        let description = (!wanted.description.is_empty() && current != wanted.description)
            .then(|| (current, wanted.description.clone()));
        let current_type = existing.property_type.as_deref().filter(|t| !t.is_empty());
        let property_type = match (wanted.property_type(), current_type) {
            (None, _) => None,
            (Some(want), Some(have)) if want == have => None,
            (Some("String"), Some("DateTime")) => None,
            (Some(want), have) => Some((have.map(str::to_owned), want.to_owned())),
        };
        if description.is_some() || property_type.is_some() {
            changes.push(DefinitionChange::Update {
                kind: DefinitionKind::Property,
                id: existing.id.clone(),
                name: (*name).to_owned(),
                description,
                property_type,
            });
        }
    }
    changes
}
