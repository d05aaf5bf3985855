//! `#[derive(EventSchema)]`, and the drift check that ties a model to its schema.
//!
//! The check is a never-called function that builds the schema from the model with a struct
//! literal and no `..`: rustc itself then reports a model field the schema lacks, a schema
//! field no model field feeds, and every type mismatch, each spanned on the model's code.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::{DeriveInput, Ident};

use crate::internals::ast::{self, Container, unraw};
use crate::internals::ctxt::Ctxt;

/// The schema field a property name maps to, when the name can be a Rust field name.
pub fn property_ident(name: &str, span: Span) -> Option<Ident> {
    let mut chars = name.chars();
    let first = chars.next()?;
    let is_identifier = (first.is_alphabetic() || first == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
        && !matches!(name, "_" | "self" | "Self" | "super" | "crate");
    if !is_identifier {
        return None;
    }
    Some(match syn::parse_str::<Ident>(name) {
        Ok(_) => Ident::new(name, span),
        // A keyword, such as a field `r#type` sent as `type`.
        Err(_) => Ident::new_raw(name, span),
    })
}

/// The never-called function that makes rustc compare the model with its schema.
pub fn schema_check(container: &Container) -> TokenStream {
    let Some(schema) = &container.attrs.schema else {
        return TokenStream::new();
    };
    let model = container.ident;
    let assignments = container.fields.iter().filter_map(|field| {
        let name = field.property_name()?;
        let property = property_ident(&name, field.property_span())?;
        let ident = field.ident;
        let value = quote_spanned!(field.ident.span()=> __model.#ident);
        Some(quote!(#property: #value))
    });
    let private = quote!(::posthog_track::__private);
    // A projection rather than a call to a generic helper: "`X` is not an event schema" then
    // carries no "required by a bound in" note pointing into generated code.
    let assert_schema = quote_spanned! {syn::spanned::Spanned::span(schema)=>
        let _ = <#schema as #private::EventSchema>::PROPERTIES;
    };
    quote! {
        const _: () = {
            #[allow(dead_code, clippy::all)]
            fn __posthog_track_schema_check(__model: #model) -> #schema {
                #assert_schema
                #schema { #(#assignments),* }
            }
        };
    }
}

pub fn derive_event_schema(input: &DeriveInput) -> syn::Result<TokenStream> {
    let cx = Ctxt::new();
    let fields = ast::named_fields(&cx, input, "EventSchema");
    if let Some(param) = input.generics.params.first() {
        cx.error_spanned_by(
            param,
            "#[derive(EventSchema)] does not support generic parameters: an event schema lists \
             concrete property types",
        );
    }
    cx.check()?;
    let ident = &input.ident;
    let names = fields
        .into_iter()
        .flatten()
        .filter_map(|field| field.ident.as_ref().map(unraw));
    Ok(quote! {
        #[automatically_derived]
        impl ::posthog_track::__private::EventSchema for #ident {
            const PROPERTIES: &'static [&'static str] = &[#(#names),*];
        }
    })
}
