//! The rules that relate a model's parts to each other. Every rule reports into the context
//! and carries on, so one build shows every mistake.

use std::collections::HashMap;

use proc_macro2::Span;

use super::ast::{Container, Field, property_ident, unraw};
use super::attr::{ContextSource, DecisionKind, Spanned};
use super::case::did_you_mean;
use super::ctxt::Ctxt;
use super::name::blank;

/// Change masks are a `u128`.
pub const MAX_FIELDS: usize = 128;

pub fn check(cx: &Ctxt, container: &Container) {
    check_table(cx, container);
    check_event_names(cx, container);
    check_distinct_id(cx, container);
    check_field_count(cx, container);
    check_keys(cx, container);
    for field in &container.fields {
        check_owned(cx, field);
        check_decision(cx, container, field);
        check_milestones(cx, field);
    }
    check_columns(cx, container);
    check_table_variants(cx, container);
    check_property_names(cx, container);
    check_identity(cx, container);
    for field in &container.fields {
        check_group(cx, field);
        check_context(cx, field);
    }
}

/// A model owns its fields: sqlx decodes rows into owned values, and a borrowed field would
/// otherwise fail as a missing lifetime, in the struct and in every generated impl.
fn check_owned(cx: &Ctxt, field: &Field) {
    let syn::Type::Reference(reference) = field.ty else {
        return;
    };
    let inner = &*reference.elem;
    let owned = match inner {
        syn::Type::Path(path) if path.path.is_ident("str") => "String".to_owned(),
        syn::Type::Slice(slice) => {
            format!("Vec<{}>", quote::ToTokens::to_token_stream(&slice.elem))
        }
        other => quote::ToTokens::to_token_stream(other).to_string(),
    };
    cx.error_spanned_by(
        field.ty,
        format!(
            "field `{}` borrows its value; a tracked model owns its fields (sqlx decodes rows \
             into owned values): use `{owned}`",
            unraw(field.ident)
        ),
    );
}

/// Sources a `context` field can be filled from (besides `property.<key>`), for suggestions.
const CONTEXT_SOURCES: &[&str] = &["distinct_id", "session_id"];

fn check_identity(cx: &Ctxt, container: &Container) {
    let attrs = &container.attrs;
    if let Some(identify) = attrs.identify
        && attrs.distinct_id.is_none()
    {
        cx.error_at(
            identify,
            "`identify` needs `distinct_id = field`: the person the insert identifies",
        );
    }
    match (&attrs.group_type, &attrs.group_key) {
        (Some(group_type), None) if !attrs.incomplete => cx.error_at(
            group_type.span,
            "`group_type` needs `group_key = field`, the field whose value is the group's key",
        ),
        (None, Some(group_key)) if !attrs.incomplete => cx.error_spanned_by(
            group_key,
            "`group_key` needs `group_type = \"...\"`, the PostHog group type (e.g. \"company\")",
        ),
        _ => {}
    }
    if let Some(group_type) = &attrs.group_type {
        check_group_type_name(cx, "group_type", group_type);
    }
    if let Some(group_key) = &attrs.group_key {
        let wanted = unraw(group_key);
        if !container
            .fields
            .iter()
            .any(|field| unraw(field.ident) == wanted)
        {
            let names: Vec<String> = container.fields.iter().map(|f| unraw(f.ident)).collect();
            let hint = match did_you_mean(&wanted, names.iter().map(String::as_str)) {
                Some(suggestion) => format!("; did you mean `{suggestion}`?"),
                None => String::new(),
            };
            cx.error_spanned_by(
                group_key,
                format!(
                    "`group_key` names `{wanted}`, but `{}` has no such field{hint}",
                    container.ident
                ),
            );
        }
    }
}

fn check_group(cx: &Ctxt, field: &Field) {
    if let Some(group) = &field.attrs.group {
        check_group_type_name(cx, "group", group);
    }
}

fn check_group_type_name(cx: &Ctxt, key: &str, name: &Spanned<String>) {
    if let Some(blank) = blank(&name.value) {
        cx.error_at(
            name.span,
            format!("`{key}` is {blank}; name the PostHog group type, e.g. \"company\""),
        );
    } else if name.value.starts_with('$') {
        cx.error_at(
            name.span,
            format!(
                "group type `{}` starts with `$`, which PostHog reserves",
                name.value
            ),
        );
    }
}

fn check_context(cx: &Ctxt, field: &Field) {
    let Some(source) = &field.attrs.context else {
        return;
    };
    if let Some(generated) = field.attrs.generated {
        cx.error_at(
            generated,
            "a `context` field is filled at insert, but a `generated` one is left to the \
             database; keep one of the two",
        );
    }
    let ContextSource::Unknown(value) = &source.value else {
        return;
    };
    const EXPECTED: &str = "expected `distinct_id`, `session_id`, or `property.<key>` for a \
                            property of the request context";
    // A blank source or key is not a misspelt one: "unknown context source ``" named nothing.
    if let Some(blank) = blank(value) {
        cx.error_at(source.span, format!("`context` is {blank}; {EXPECTED}"));
    } else if let Some(key) = value.strip_prefix("property.") {
        let blank = blank(key).unwrap_or("empty");
        cx.error_at(
            source.span,
            format!(
                "the key after `property.` is {blank}; name the property of the request \
                 context, e.g. `context = \"property.utm_source\"`"
            ),
        );
    } else {
        let hint = match did_you_mean(value, CONTEXT_SOURCES.iter().copied()) {
            Some(suggestion) => format!("did you mean `{suggestion}`? "),
            None => String::new(),
        };
        cx.error_at(
            source.span,
            format!("unknown context source `{value}`; {hint}{EXPECTED}"),
        );
    }
}

fn check_table(cx: &Ctxt, container: &Container) {
    match &container.attrs.table {
        None if container.attrs.incomplete => {}
        None => cx.error_at(
            container.ident.span(),
            format!(
                "`{}` needs a table: add `#[tracked(table = \"...\")]` to the struct",
                container.ident
            ),
        ),
        Some(table) => {
            if let Some(blank) = blank(&table.value) {
                cx.error_at(
                    table.span,
                    format!(
                        "the table name is {blank}; name the table the rows live in, e.g. \
                         `table = \"users\"`"
                    ),
                );
            }
        }
    }
}

fn check_event_names(cx: &Ctxt, container: &Container) {
    let attrs = &container.attrs;
    for (key, name) in [
        ("insert_event", &attrs.insert_event),
        ("update_event", &attrs.update_event),
        ("delete_event", &attrs.delete_event),
    ] {
        if let Some(name) = name {
            check_event_name(cx, key, "user_signed_up", &name.value, name.span);
        }
    }
}

/// The rules of every event name the derive is given: `key` is the attribute that gave it,
/// `example` a name to suggest.
fn check_event_name(cx: &Ctxt, key: &str, example: &str, name: &str, span: Span) {
    if let Some(blank) = blank(name) {
        cx.error_at(
            span,
            format!("`{key}` is {blank}; name the event, e.g. \"{example}\""),
        );
    } else if name.starts_with('$') {
        cx.error_at(
            span,
            format!(
                "event name `{name}` starts with `$`, which PostHog reserves for its own events; \
                 choose a name without it"
            ),
        );
    }
}

fn check_distinct_id(cx: &Ctxt, container: &Container) {
    let Some(distinct_id) = &container.attrs.distinct_id else {
        return;
    };
    let wanted = unraw(distinct_id);
    if container
        .fields
        .iter()
        .any(|field| unraw(field.ident) == wanted)
    {
        return;
    }
    let names: Vec<String> = container
        .fields
        .iter()
        .map(|field| unraw(field.ident))
        .collect();
    let message = match did_you_mean(&wanted, names.iter().map(String::as_str)) {
        Some(suggestion) => format!(
            "`distinct_id` names `{wanted}`, but `{}` has no such field; did you mean `{suggestion}`?",
            container.ident
        ),
        None => format!(
            "`distinct_id` names `{wanted}`, but `{}` has no such field",
            container.ident
        ),
    };
    cx.error_spanned_by(distinct_id, message);
}

fn check_field_count(cx: &Ctxt, container: &Container) {
    if container.fields.len() > MAX_FIELDS {
        cx.error_at(
            container.ident.span(),
            format!(
                "`{}` has {} fields; a tracked model has at most {MAX_FIELDS}",
                container.ident,
                container.fields.len()
            ),
        );
    }
}

fn check_keys(cx: &Ctxt, container: &Container) {
    let incomplete = container.fields.iter().any(|field| field.attrs.incomplete);
    if !incomplete && !container.fields.iter().any(Field::is_key) {
        cx.error_at(
            container.ident.span(),
            format!(
                "`{}` has no key: mark its primary key field with `#[tracked(key)]` \
                 (update, update_changed and delete find the row by it)",
                container.ident
            ),
        );
    }
}

fn check_decision(cx: &Ctxt, container: &Container, field: &Field) {
    let schema_mode = container.attrs.schema.is_some();
    match field.attrs.decisions.as_slice() {
        [] if !schema_mode && !field.attrs.incomplete => cx.error_at(
            field.ident.span(),
            format!(
                "field `{}` has no analytics decision: add `#[tracked(property)]` to send it to \
                 PostHog, or `#[tracked(skip = \"why\")]` to keep it out",
                unraw(field.ident)
            ),
        ),
        [decision] => {
            if let DecisionKind::Skip(reason) = &decision.kind
                && let Some(blank) = blank(reason)
            {
                cx.error_at(
                    decision.span,
                    format!(
                        "the skip reason is {blank}: say why `{}` stays out of analytics, \
                         e.g. `skip = \"credential\"`",
                        unraw(field.ident)
                    ),
                );
            }
        }
        // Several decisions were reported by `attr`.
        _ => {}
    }
}

fn check_milestones(cx: &Ctxt, field: &Field) {
    for milestone in &field.attrs.milestones {
        check_event_name(
            cx,
            "milestone(event = ...)",
            "plan_upgraded",
            &milestone.event.value,
            milestone.event.span,
        );
        let problem = if field.is_key() {
            Some("is the key, which update_changed never changes")
        } else if field.is_generated() {
            Some("is generated, so update_changed never writes it")
        } else if matches!(field.decision(), Some(DecisionKind::Skip(_))) {
            Some("is skipped, and a milestone sends its previous value to PostHog")
        } else {
            None
        };
        if let Some(problem) = problem {
            cx.error_at(
                milestone.span,
                format!(
                    "a milestone on `{}` can never fire: the field {problem}",
                    unraw(field.ident)
                ),
            );
        }
    }
}

fn check_columns(cx: &Ctxt, container: &Container) {
    let mut seen: HashMap<String, &Field> = HashMap::new();
    for field in &container.fields {
        let column = field.column();
        if let Some(blank) = blank(&column) {
            if let Some(attr) = &field.attrs.column {
                cx.error_at(
                    attr.span,
                    format!(
                        "the column name is {blank}; leave `column` out to use the field's name"
                    ),
                );
            }
            continue;
        }
        if let Some(first) = seen.get(&column) {
            let span = field
                .attrs
                .column
                .as_ref()
                .map_or_else(|| field.ident.span(), |c| c.span);
            cx.error_at(
                span,
                format!(
                    "column `{column}` is already written by field `{}`; each column belongs to one field",
                    unraw(first.ident)
                ),
            );
        } else {
            seen.insert(column, field);
        }
    }
}

fn check_property_names(cx: &Ctxt, container: &Container) {
    let schema_mode = container.attrs.schema.is_some();
    let mut seen: HashMap<String, &Field> = HashMap::new();
    for field in &container.fields {
        let Some(name) = field.property_name() else {
            continue;
        };
        let span = field.property_span();
        if let Some(blank) = blank(&name) {
            let keyword = field
                .attrs
                .decision()
                .map_or("property", |d| d.kind.keyword());
            cx.error_at(
                span,
                format!(
                    "the property name is {blank}; write `{keyword}` alone to send the field \
                     under its own name, or `{keyword} = \"name\"` to rename it"
                ),
            );
            continue;
        }
        if name.starts_with('$') {
            cx.error_at(
                span,
                format!(
                    "property `{name}` starts with `$`, which PostHog reserves for its own \
                     properties ($set, $lib, ...); choose a name without it"
                ),
            );
            continue;
        }
        if schema_mode && property_ident(&name, span).is_none() {
            cx.error_at(
                span,
                format!(
                    "property `{name}` cannot be a field of the event schema; with `schema = ...` \
                     property names must be Rust identifiers"
                ),
            );
        }
        if let Some(first) = seen.get(&name) {
            cx.error_at(
                span,
                format!(
                    "property `{name}` is already sent by field `{}`; give one of them another \
                     name with `property = \"...\"`",
                    unraw(first.ident)
                ),
            );
        } else {
            seen.insert(name, field);
        }
    }
    // A milestone adds `previous_<property>`; it must not shadow a real property.
    for field in &container.fields {
        if field.attrs.milestones.is_empty() {
            continue;
        }
        let Some(name) = field.property_name() else {
            continue;
        };
        let previous = format!("previous_{name}");
        if let Some(other) = seen.get(&previous) {
            cx.error_at(
                other.property_span(),
                format!(
                    "property `{previous}` collides with the `{previous}` that the milestone on \
                     `{}` sends; rename one of them",
                    unraw(field.ident)
                ),
            );
        }
    }
}

fn check_table_variants(cx: &Ctxt, container: &Container) {
    let main_table = container
        .attrs
        .table
        .as_ref()
        .map(|table| table.value.as_str());
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for variant in &container.attrs.table_variants {
        for (what, value) in [
            ("flag", &variant.flag),
            ("variant", &variant.variant),
            ("table", &variant.table),
        ] {
            if let Some(blank) = blank(&value.value) {
                cx.error_at(value.span, format!("the `table_variant` {what} is {blank}"));
            }
        }
        if Some(variant.table.value.as_str()) == main_table {
            cx.error_at(
                variant.table.span,
                "this variant's table is the model's own `table`; name the table its rows go to instead",
            );
        }
        let pair = (variant.flag.value.as_str(), variant.variant.value.as_str());
        if seen.contains(&pair) {
            cx.error_at(
                variant.variant.span,
                format!(
                    "variant `{}` of flag `{}` is routed twice; keep one",
                    pair.1, pair.0
                ),
            );
        } else {
            seen.push(pair);
        }
    }
    // The route is decided before the INSERT, by the row's distinct id: a `generated` one
    // still holds the placeholder then, so every row would be routed as the same user.
    let Some(distinct_id) = &container.attrs.distinct_id else {
        return;
    };
    let generated = container
        .fields
        .iter()
        .any(|field| field.ident == distinct_id && field.is_generated());
    if generated && !container.attrs.table_variants.is_empty() {
        cx.error_spanned_by(
            distinct_id,
            format!(
                "`distinct_id = {name}` names a `generated` field, but `table_variant` chooses \
                 the row's table by its distinct id before the INSERT, while `{name}` still \
                 holds the placeholder the database replaces: every row would be routed as the \
                 same user. Take the distinct id from a field the application sets (the \
                 owner's id), or leave `distinct_id` out so that the events and the route use \
                 the transaction's (`TrackingContext::with_distinct_id`)",
                name = unraw(distinct_id)
            ),
        );
    }
}
