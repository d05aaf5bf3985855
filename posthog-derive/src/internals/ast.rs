//! The typed form of a model: the struct, its fields and their parsed attributes, each keeping
//! the span that errors point at.

use proc_macro2::Span;
use syn::{Data, DeriveInput, Fields, Ident, Type};

use super::attr::{self, DecisionKind};
use super::case::to_snake_case;
use super::ctxt::Ctxt;

/// Which derive is running: the two share the struct-shape rules.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Derive {
    TrackedModel,
    EventSchema,
}

impl Derive {
    pub fn name(self) -> &'static str {
        match self {
            Derive::TrackedModel => "TrackedModel",
            Derive::EventSchema => "EventSchema",
        }
    }

    /// What each named field of the struct stands for.
    fn field_purpose(self) -> &'static str {
        match self {
            Derive::TrackedModel => "each named field is a column",
            Derive::EventSchema => "each named field is an event property",
        }
    }
}

/// A struct deriving `TrackedModel`.
pub struct Container<'a> {
    pub ident: &'a Ident,
    pub attrs: attr::Container,
    pub fields: Vec<Field<'a>>,
    pub original: &'a DeriveInput,
}

/// One named field.
pub struct Field<'a> {
    /// Position in the struct; also the bit of the field in a change mask.
    pub index: usize,
    pub ident: &'a Ident,
    pub ty: &'a Type,
    pub attrs: attr::Field,
    /// The doc comment, for the tracking plan.
    pub doc: String,
}

impl<'a> Container<'a> {
    /// Reads the struct, reporting shapes the derive cannot handle. `None` when there is no
    /// struct with named fields to work on.
    pub fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let fields = named_fields(cx, input, Derive::TrackedModel)?;
        if let Some(param) = input.generics.params.first() {
            cx.error_spanned_by(
                param,
                "#[derive(TrackedModel)] does not support generic parameters: the SQL and the \
                 event mapping are fixed at compile time for one concrete struct",
            );
        }
        let attrs = attr::Container::from_ast(cx, &input.attrs);
        let fields = fields
            .iter()
            .enumerate()
            .filter_map(|(index, field)| {
                Some(Field {
                    index,
                    ident: field.ident.as_ref()?,
                    ty: &field.ty,
                    attrs: attr::Field::from_ast(cx, field),
                    doc: doc_comment(&field.attrs),
                })
            })
            .collect();
        Some(Container {
            ident: &input.ident,
            attrs,
            fields,
            original: input,
        })
    }
}

/// The named fields of a struct, or an error explaining why the input has none.
pub fn named_fields<'a>(
    cx: &Ctxt,
    input: &'a DeriveInput,
    derive: Derive,
) -> Option<&'a syn::punctuated::Punctuated<syn::Field, syn::Token![,]>> {
    let (span, what) = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(fields) => return Some(&fields.named),
            Fields::Unnamed(fields) => (fields.paren_token.span.join(), "a tuple struct"),
            Fields::Unit => (input.ident.span(), "a unit struct"),
        },
        Data::Enum(data) => (data.enum_token.span, "an enum"),
        Data::Union(data) => (data.union_token.span, "a union"),
    };
    cx.error_at(
        span,
        format!(
            "#[derive({})] needs a struct with named fields ({}), not {what}",
            derive.name(),
            derive.field_purpose()
        ),
    );
    None
}

impl Container<'_> {
    /// The model's own table; empty when missing (`check` reported it).
    pub fn table(&self) -> &str {
        self.attrs
            .table
            .as_ref()
            .map_or("", |table| table.value.as_str())
    }

    /// The insert, update and delete event names, defaults applied.
    pub fn event_names(&self) -> [String; 3] {
        let attrs = &self.attrs;
        // `struct r#match` is `match_created`, not `r#match_created`.
        let snake = to_snake_case(&unraw(self.ident));
        let event_name = |explicit: &Option<attr::Spanned<String>>, suffix: &str| {
            explicit
                .as_ref()
                .map_or_else(|| format!("{snake}_{suffix}"), |name| name.value.clone())
        };
        [
            event_name(&attrs.insert_event, "created"),
            event_name(&attrs.update_event, "updated"),
            event_name(&attrs.delete_event, "deleted"),
        ]
    }

    pub fn keys(&self) -> impl Iterator<Item = &Field<'_>> + Clone {
        self.fields.iter().filter(|field| field.is_key())
    }

    /// The key the database generates, when the key is a single generated field.
    pub fn generated_key(&self) -> Option<&Field<'_>> {
        let mut keys = self.keys();
        match (keys.next(), keys.next()) {
            (Some(key), None) if key.is_generated() => Some(key),
            _ => None,
        }
    }

    /// The fields sent to PostHog.
    pub fn tracked(&self) -> impl Iterator<Item = &Field<'_>> + Clone {
        self.fields.iter().filter(|field| field.is_tracked())
    }
}

impl Field<'_> {
    pub fn is_key(&self) -> bool {
        self.attrs.key.is_some()
    }

    pub fn is_generated(&self) -> bool {
        self.attrs.generated.is_some()
    }

    /// Written by UPDATE: not a key (it is the WHERE) and not generated (the database owns it).
    pub fn is_updatable(&self) -> bool {
        !self.is_key() && !self.is_generated()
    }

    /// The database column.
    pub fn column(&self) -> String {
        match &self.attrs.column {
            Some(column) => column.value.clone(),
            None => unraw(self.ident),
        }
    }

    /// Where the field's value goes, when it has one clear decision.
    pub fn decision(&self) -> Option<&attr::DecisionKind> {
        self.attrs.decision().map(|decision| &decision.kind)
    }

    /// The property name the field's value is sent under; `None` for a skipped field.
    pub fn property_name(&self) -> Option<String> {
        match self.attrs.decision() {
            Some(decision) if matches!(decision.kind, attr::DecisionKind::Skip(_)) => None,
            Some(decision) => Some(match &decision.rename {
                Some(rename) => rename.value.clone(),
                None => unraw(self.ident),
            }),
            // No decision: in schema mode this is a property under the field's name; otherwise
            // `check` has already reported it.
            None => Some(unraw(self.ident)),
        }
    }

    /// The span of the property name: the rename when there is one, else the field.
    pub fn property_span(&self) -> Span {
        self.attrs
            .decision()
            .and_then(|decision| decision.rename.as_ref().map(|rename| rename.span))
            .unwrap_or_else(|| self.ident.span())
    }

    pub fn is_tracked(&self) -> bool {
        self.property_name().is_some()
    }

    /// A `$set` person property.
    pub fn is_person_set(&self) -> bool {
        matches!(self.decision(), Some(DecisionKind::Person))
    }

    /// A `$set_once` person property.
    pub fn is_person_set_once(&self) -> bool {
        matches!(self.decision(), Some(DecisionKind::PersonOnce))
    }

    /// A `person` or `person_once` field.
    pub fn is_person(&self) -> bool {
        self.is_person_set() || self.is_person_set_once()
    }

    /// The field of the event schema the property maps to; `None` for a skipped field, or
    /// when the property name cannot be a Rust field name (`check` reports that).
    pub fn schema_ident(&self) -> Option<Ident> {
        property_ident(&self.property_name()?, self.property_span())
    }
}

/// The Rust field a property name maps to, when the name can be one: `plan` -> `plan`,
/// `type` -> `r#type`; `None` for `plan-name` or `area_m²` (`²` is alphanumeric, but not a
/// character an identifier may hold).
pub fn property_ident(name: &str, span: Span) -> Option<Ident> {
    let mut chars = name.chars();
    let first = chars.next()?;
    // Checked before `Ident::new`, which panics on what is not an identifier.
    let is_identifier = (unicode_ident::is_xid_start(first) || first == '_')
        && chars.all(unicode_ident::is_xid_continue)
        && !matches!(name, "_" | "self" | "Self" | "super" | "crate");
    if !is_identifier {
        return None;
    }
    // A keyword, such as a field `r#type` sent as `type`: raw. The list covers every
    // edition's keywords, since the identifier is read in the edition of the user's crate
    // (`gen` is reserved in 2024, which syn does not know); a raw identifier that did not need
    // to be is still the same name.
    Some(
        if KEYWORDS.contains(&name) || syn::parse_str::<Ident>(name).is_err() {
            Ident::new_raw(name, span)
        } else {
            Ident::new(name, span)
        },
    )
}

/// The strict and reserved keywords of every edition up to 2024 that a raw identifier may
/// spell (`self`, `Self`, `super`, `crate` and `_` cannot be one).
const KEYWORDS: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "do", "dyn",
    "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl", "in", "let",
    "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref", "return",
    "static", "struct", "trait", "true", "try", "type", "typeof", "unsafe", "unsized", "use",
    "virtual", "where", "while", "yield",
];

/// `r#type` -> `type`.
pub fn unraw(ident: &Ident) -> String {
    let name = ident.to_string();
    match name.strip_prefix("r#") {
        Some(stripped) => stripped.to_owned(),
        None => name,
    }
}

/// The text of `///` comments, lines joined with spaces.
pub fn doc_comment(attrs: &[syn::Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|attr| attr.path().is_ident("doc"))
        .filter_map(|attr| match &attr.meta {
            syn::Meta::NameValue(syn::MetaNameValue {
                value:
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(text),
                        ..
                    }),
                ..
            }) => Some(text.value().trim().to_owned()),
            _ => None,
        })
        .filter(|line| !line.is_empty())
        .collect();
    lines.join(" ")
}
