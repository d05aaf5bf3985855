//! Parsing of `#[tracked(...)]` attributes, and nothing else: each key is checked for its own
//! shape here; rules that relate fields to each other live in `check`.

use proc_macro2::{Span, TokenTree};
use syn::meta::ParseNestedMeta;
use syn::{Ident, LitStr, Path, Token};

use super::case::did_you_mean;
use super::ctxt::Ctxt;
use super::name::blank;

const ATTRIBUTE: &str = "tracked";

const CONTAINER_KEYS: &[&str] = &[
    "table",
    "distinct_id",
    "insert_event",
    "update_event",
    "delete_event",
    "schema",
    "table_variant",
    "migrations",
    "migrations_dialect",
    "untracked_columns",
    "identify",
    "group_type",
    "group_key",
];
const FIELD_KEYS: &[&str] = &[
    "key",
    "generated",
    "column",
    "property",
    "person",
    "person_once",
    "skip",
    "milestone",
    "group",
    "context",
];
const MILESTONE_KEYS: &[&str] = &["event", "when"];
const TABLE_VARIANT_KEYS: &[&str] = &["flag", "variant", "table"];

/// An attribute value together with the tokens it came from, for error spans.
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

/// `#[tracked(...)]` on the struct.
#[derive(Default)]
pub struct Container {
    pub table: Option<Spanned<String>>,
    pub distinct_id: Option<Ident>,
    pub insert_event: Option<Spanned<String>>,
    pub update_event: Option<Spanned<String>>,
    pub delete_event: Option<Spanned<String>>,
    pub schema: Option<Path>,
    /// `table_variant(flag = ..., variant = ..., table = ...)`, in the order written.
    pub table_variants: Vec<TableVariant>,
    /// `migrations = "migrations"`: the directory of SQL migrations to check the model against.
    pub migrations: Option<Spanned<String>>,
    /// `migrations_dialect = "postgres" | "mysql" | "sqlite"`.
    pub migrations_dialect: Option<Spanned<String>>,
    /// `untracked_columns("search_vector", ...)`: columns of the table the model leaves alone.
    pub untracked_columns: Vec<Spanned<String>>,
    /// `identify`: inserts send `$identify` for the row's distinct id.
    pub identify: Option<Span>,
    /// `group_type = "company"`: the model is a PostHog group of this type.
    pub group_type: Option<Spanned<String>>,
    /// `group_key = field`: the field whose value is the group's key.
    pub group_key: Option<Ident>,
    /// A key could not be read (unknown, or malformed), so `table` may have been meant;
    /// `check` then does not also report it missing.
    pub incomplete: bool,
}

/// Rows whose user is in `variant` of the feature flag `flag` go to `table`.
pub struct TableVariant {
    pub flag: Spanned<String>,
    pub variant: Spanned<String>,
    pub table: Spanned<String>,
}

/// The analytics decision of a field: where its value goes, or why it goes nowhere.
pub enum DecisionKind {
    /// An event property.
    Property,
    /// An event property and a `$set` person property.
    Person,
    /// An event property and a `$set_once` person property.
    PersonOnce,
    /// Kept out of analytics, with the reason.
    Skip(String),
}

impl DecisionKind {
    pub fn keyword(&self) -> &'static str {
        match self {
            DecisionKind::Property => "property",
            DecisionKind::Person => "person",
            DecisionKind::PersonOnce => "person_once",
            DecisionKind::Skip(_) => "skip",
        }
    }
}

pub struct Decision {
    pub kind: DecisionKind,
    /// `property = "name"`: the property name, when it differs from the field name.
    pub rename: Option<Spanned<String>>,
    /// The keyword, for errors about the decision itself.
    pub span: Span,
}

/// Where a `context` field's value comes from.
pub enum ContextSource {
    DistinctId,
    SessionId,
    /// `property.<key>`.
    Property(String),
    /// Anything else; `check` reports it.
    Unknown(String),
}

impl ContextSource {
    fn parse(value: &str) -> Self {
        match value {
            "distinct_id" => ContextSource::DistinctId,
            "session_id" => ContextSource::SessionId,
            _ => match value.strip_prefix("property.") {
                Some(key) if blank(key).is_none() => ContextSource::Property(key.to_owned()),
                _ => ContextSource::Unknown(value.to_owned()),
            },
        }
    }
}

/// `milestone(event = "...", when = path)`.
pub struct Milestone {
    pub event: Spanned<String>,
    pub when: Option<Path>,
    pub span: Span,
}

/// `#[tracked(...)]` on a field.
#[derive(Default)]
pub struct Field {
    pub key: Option<Span>,
    pub generated: Option<Span>,
    pub column: Option<Spanned<String>>,
    /// Every decision written; `check` requires exactly one.
    pub decisions: Vec<Decision>,
    pub milestones: Vec<Milestone>,
    /// `group = "company"`: the field's value is the row's key in that group type.
    pub group: Option<Spanned<String>>,
    /// `context = "distinct_id"`: filled from the request context at insert.
    pub context: Option<Spanned<ContextSource>>,
    /// A key could not be read (unknown, or malformed), so the decision or `key` may have been
    /// meant; `check` then does not also report them missing.
    pub incomplete: bool,
}

impl Container {
    pub fn from_ast(cx: &Ctxt, attrs: &[syn::Attribute]) -> Self {
        let mut container = Container::default();
        let keys = (CONTAINER_KEYS, "the struct", FIELD_KEYS);
        container.incomplete = for_each_key(cx, attrs, keys, |key, meta| {
            match key {
                "table" => set_once(cx, meta, &mut container.table, parse_string(meta)?),
                "insert_event" => {
                    set_once(cx, meta, &mut container.insert_event, parse_string(meta)?)
                }
                "update_event" => {
                    set_once(cx, meta, &mut container.update_event, parse_string(meta)?)
                }
                "delete_event" => {
                    set_once(cx, meta, &mut container.delete_event, parse_string(meta)?)
                }
                "distinct_id" => {
                    let ident: Ident = parse_name(meta, "a field", "user_id")?;
                    set_once(cx, meta, &mut container.distinct_id, ident)
                }
                "schema" => {
                    let path: Path = parse_name(meta, "a type", "UserProperties")?;
                    set_once(cx, meta, &mut container.schema, path)
                }
                "table_variant" => {
                    container
                        .table_variants
                        .extend(parse_table_variant(cx, meta)?);
                }
                "migrations" => set_once(cx, meta, &mut container.migrations, parse_string(meta)?),
                "migrations_dialect" => set_once(
                    cx,
                    meta,
                    &mut container.migrations_dialect,
                    parse_string(meta)?,
                ),
                "identify" => flag(cx, meta, &mut container.identify),
                "group_type" => set_once(cx, meta, &mut container.group_type, parse_string(meta)?),
                "group_key" => {
                    let ident: Ident = parse_name(meta, "a field", "id")?;
                    set_once(cx, meta, &mut container.group_key, ident)
                }
                "untracked_columns" => container
                    .untracked_columns
                    .extend(parse_string_list(meta, "search_vector")?),
                _ => return Ok(false),
            }
            Ok(true)
        });
        container
    }
}

impl Field {
    pub fn from_ast(cx: &Ctxt, field: &syn::Field) -> Self {
        let mut parsed = Field::default();
        let keys = (FIELD_KEYS, "a field", CONTAINER_KEYS);
        parsed.incomplete = for_each_key(cx, &field.attrs, keys, |key, meta| {
            match key {
                "key" => flag(cx, meta, &mut parsed.key),
                "generated" => flag(cx, meta, &mut parsed.generated),
                "column" => set_once(cx, meta, &mut parsed.column, parse_string(meta)?),
                "property" | "person" | "person_once" => {
                    let rename = if meta.input.peek(Token![=]) {
                        Some(parse_string(meta)?)
                    } else {
                        None
                    };
                    let kind = match key {
                        "property" => DecisionKind::Property,
                        "person" => DecisionKind::Person,
                        _ => DecisionKind::PersonOnce,
                    };
                    push_decision(cx, meta, &mut parsed.decisions, kind, rename);
                }
                "skip" => {
                    if !meta.input.peek(Token![=]) {
                        cx.error_spanned_by(
                                &meta.path,
                                "`skip` needs a reason: `#[tracked(skip = \"why this stays out of analytics\")]`",
                            );
                        // Count it as the decision it was meant to be, so the field
                        // does not also get a "no decision" error.
                        let reason = "(missing)".to_owned();
                        push_decision(
                            cx,
                            meta,
                            &mut parsed.decisions,
                            DecisionKind::Skip(reason),
                            None,
                        );
                        skip_value(meta)?;
                        return Ok(true);
                    }
                    let reason = parse_string(meta)?;
                    push_decision(
                        cx,
                        meta,
                        &mut parsed.decisions,
                        DecisionKind::Skip(reason.value),
                        None,
                    );
                }
                "milestone" => parsed.milestones.extend(parse_milestone(cx, meta)?),
                "group" => set_once(cx, meta, &mut parsed.group, parse_string(meta)?),
                "context" => {
                    let source = parse_string(meta)?;
                    let source = Spanned {
                        value: ContextSource::parse(&source.value),
                        span: source.span,
                    };
                    set_once(cx, meta, &mut parsed.context, source)
                }
                _ => return Ok(false),
            }
            Ok(true)
        });
        parsed
    }

    /// The one decision, when there is exactly one.
    pub fn decision(&self) -> Option<&Decision> {
        match self.decisions.as_slice() {
            [decision] => Some(decision),
            _ => None,
        }
    }
}

fn push_decision(
    cx: &Ctxt,
    meta: &ParseNestedMeta,
    decisions: &mut Vec<Decision>,
    kind: DecisionKind,
    rename: Option<Spanned<String>>,
) {
    let span = key_span(meta);
    if let Some(first) = decisions.first() {
        let message = if first.kind.keyword() == kind.keyword() {
            format!("`{}` is written twice; keep one", kind.keyword())
        } else {
            format!(
                "a field takes exactly one analytics decision, but this one has both `{}` and `{}`; keep one",
                first.kind.keyword(),
                kind.keyword()
            )
        };
        cx.error_at(span, message);
    }
    decisions.push(Decision { kind, rename, span });
}

/// `table_variant(flag = "documents-v2", variant = "test", table = "documents_v2")`; `None`
/// when it was reported incomplete.
fn parse_table_variant(cx: &Ctxt, meta: &ParseNestedMeta) -> syn::Result<Option<TableVariant>> {
    let span = key_span(meta);
    let (mut flag, mut variant, mut table) = (None, None, None);
    meta.parse_nested_meta(|inner| {
        match key_name(&inner).as_str() {
            "flag" => set_once(cx, &inner, &mut flag, parse_string(&inner)?),
            "variant" => set_once(cx, &inner, &mut variant, parse_string(&inner)?),
            "table" => set_once(cx, &inner, &mut table, parse_string(&inner)?),
            _ => return unknown_key(cx, &inner, TABLE_VARIANT_KEYS, "`table_variant(...)`", &[]),
        }
        Ok(())
    })?;
    match (flag, variant, table) {
        (Some(flag), Some(variant), Some(table)) => Ok(Some(TableVariant {
            flag,
            variant,
            table,
        })),
        _ => {
            cx.error_at(
                span,
                "`table_variant` needs all three of `flag`, `variant` and `table`: \
                 `table_variant(flag = \"documents-v2\", variant = \"test\", table = \"documents_v2\")`",
            );
            Ok(None)
        }
    }
}

/// `None` when the milestone was reported unusable; the keys after it are still read.
fn parse_milestone(cx: &Ctxt, meta: &ParseNestedMeta) -> syn::Result<Option<Milestone>> {
    let span = key_span(meta);
    let mut event = None;
    let mut when = None;
    meta.parse_nested_meta(|inner| {
        match key_name(&inner).as_str() {
            "event" => set_once(cx, &inner, &mut event, parse_string(&inner)?),
            "when" => {
                let path: Path = parse_name(
                    &inner,
                    "a function `fn(&before, &after) -> bool`",
                    "crate::plan_upgraded",
                )?;
                set_once(cx, &inner, &mut when, path);
            }
            _ => return unknown_key(cx, &inner, MILESTONE_KEYS, "`milestone(...)`", &[]),
        }
        Ok(())
    })?;
    let Some(event) = event else {
        cx.error_at(
            span,
            "`milestone` needs an event name: `milestone(event = \"plan_upgraded\", when = path::to::condition)`",
        );
        return Ok(None);
    };
    Ok(Some(Milestone { event, when, span }))
}

fn parse_string(meta: &ParseNestedMeta) -> syn::Result<Spanned<String>> {
    let name = key_name(meta);
    if !meta.input.peek(Token![=]) {
        return Err(meta.error(format!("`{name}` takes a string: `{name} = \"...\"`")));
    }
    let value = meta.value()?;
    if value.peek(LitStr) {
        let literal: LitStr = value.parse()?;
        return Ok(Spanned {
            value: literal.value(),
            span: literal.span(),
        });
    }
    // `table = users`: suggest the same word, quoted.
    let example = match value.fork().parse::<TokenTree>() {
        Ok(TokenTree::Ident(ident)) => ident.to_string(),
        _ => "...".to_owned(),
    };
    Err(value_error(
        meta,
        format!("`{name}` takes a string: write `{name} = \"{example}\"`"),
    ))
}

/// `key("a", "b")`.
fn parse_string_list(meta: &ParseNestedMeta, example: &str) -> syn::Result<Vec<Spanned<String>>> {
    let name = key_name(meta);
    if !meta.input.peek(syn::token::Paren) {
        return Err(value_error(
            meta,
            format!("`{name}` takes a list of strings: `{name}(\"{example}\")`"),
        ));
    }
    let content;
    syn::parenthesized!(content in meta.input);
    let literals = content.parse_terminated(|input| input.parse::<LitStr>(), Token![,])?;
    Ok(literals
        .into_iter()
        .map(|literal| Spanned {
            value: literal.value(),
            span: literal.span(),
        })
        .collect())
}

/// The value of `key = value` where the value names something in the code (a field, a type, a
/// function), written without quotes.
fn parse_name<T: syn::parse::Parse>(
    meta: &ParseNestedMeta,
    what: &str,
    example: &str,
) -> syn::Result<T> {
    let name = key_name(meta);
    if !meta.input.peek(Token![=]) {
        return Err(meta.error(format!("`{name}` names {what}: `{name} = {example}`")));
    }
    let value = meta.value()?;
    if value.peek(LitStr) {
        let literal: LitStr = value.fork().parse()?;
        return Err(syn::Error::new(
            literal.span(),
            format!(
                "`{name}` names {what}, not a string: write `{name} = {}` without quotes",
                literal.value()
            ),
        ));
    }
    value
        .parse()
        .map_err(|_| value_error(meta, format!("`{name}` names {what}: `{name} = {example}`")))
}

/// An error on the first token of a key's value, or on the key when no value follows.
fn value_error(meta: &ParseNestedMeta, message: String) -> syn::Error {
    match meta.input.fork().parse::<TokenTree>() {
        Ok(token) => syn::Error::new(token.span(), message),
        Err(_) => meta.error(message),
    }
}

/// The key of `key`, `key = value` or `key(...)`; `None` for a path such as `a::b`, which no
/// key is.
/// Runs `handle` on each key of every `#[tracked(...)]` attribute in `attrs`; `handle` answers
/// whether it knew the key. `keys` are the keys valid here, where they are written and the
/// keys valid elsewhere (for the "did you mean" of an unknown key). Returns whether any key
/// could not be read (unknown or malformed), so `check` does not also report what it may have
/// meant as missing.
fn for_each_key(
    cx: &Ctxt,
    attrs: &[syn::Attribute],
    (keys, place, other_keys): (&[&str], &str, &[&str]),
    mut handle: impl FnMut(&str, &ParseNestedMeta) -> syn::Result<bool>,
) -> bool {
    let mut incomplete = false;
    for attr in attrs.iter().filter(|attr| attr.path().is_ident(ATTRIBUTE)) {
        let result = attr.parse_nested_meta(|meta| {
            let known = match key_of(&meta) {
                Some(key) => handle(&key, &meta)?,
                None => false,
            };
            if !known {
                incomplete = true;
                unknown_key(cx, &meta, keys, place, other_keys)?;
            }
            Ok(())
        });
        if let Err(error) = result {
            incomplete = true;
            cx.syn_error(error);
        }
    }
    incomplete
}

fn key_of(meta: &ParseNestedMeta) -> Option<String> {
    meta.path.get_ident().map(Ident::to_string)
}

/// The key, or an empty name for a path (already reported as unknown).
fn key_name(meta: &ParseNestedMeta) -> String {
    key_of(meta).unwrap_or_default()
}

/// Where the key is written, for errors about it.
fn key_span(meta: &ParseNestedMeta) -> Span {
    meta.path
        .get_ident()
        .map_or_else(Span::call_site, Ident::span)
}

fn flag(cx: &Ctxt, meta: &ParseNestedMeta, slot: &mut Option<Span>) {
    let span = key_span(meta);
    if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
        let name = key_name(meta);
        cx.error_at(
            span,
            format!("`{name}` takes no value: write `#[tracked({name})]`"),
        );
        let _ = skip_value(meta);
    }
    set_once(cx, meta, slot, span);
}

fn set_once<T>(cx: &Ctxt, meta: &ParseNestedMeta, slot: &mut Option<T>, value: T) {
    if slot.is_some() {
        let name = key_name(meta);
        cx.error_spanned_by(&meta.path, format!("`{name}` is written twice; keep one"));
    } else {
        *slot = Some(value);
    }
}

fn unknown_key(
    cx: &Ctxt,
    meta: &ParseNestedMeta,
    known: &[&str],
    place: &str,
    elsewhere: &[&str],
) -> syn::Result<()> {
    let name = key_of(meta).unwrap_or_else(|| {
        meta.path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect::<Vec<_>>()
            .join("::")
    });
    let message = if elsewhere.contains(&name.as_str()) {
        let other = if place == "a field" {
            "the struct"
        } else {
            "a field"
        };
        format!("`{name}` is not allowed on {place}; it belongs on {other}")
    } else {
        let list = known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        match did_you_mean(&name, known.iter().copied()) {
            Some(suggestion) => format!(
                "unknown attribute `{name}` on {place}; did you mean `{suggestion}`? (expected one of {list})"
            ),
            None => format!("unknown attribute `{name}` on {place}; expected one of {list}"),
        }
    };
    cx.error_spanned_by(&meta.path, message);
    skip_value(meta)
}

/// Consumes whatever follows an unusable key (`= value` or `(...)`) so that the keys after it
/// are still checked.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.input.parse::<Token![=]>()?;
        while !meta.input.is_empty() && !meta.input.peek(Token![,]) {
            meta.input.parse::<TokenTree>()?;
        }
    } else if meta.input.peek(syn::token::Paren) {
        meta.input.parse::<TokenTree>()?;
    }
    Ok(())
}
