//! `#[derive(EventSchema)]`, and the drift check that ties a model to its schema.
//!
//! The check is a never-called function that builds the schema from the model with a struct
//! literal and no `..`: rustc itself then reports a model field the schema lacks, a schema
//! field no model field feeds, and every type mismatch, each spanned on the model's code.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::DeriveInput;

use super::private::Private;
use crate::internals::ast::{self, Container, Derive, unraw};
use crate::internals::ctxt::Ctxt;

/// The never-called function that makes rustc compare the model with its schema.
pub fn schema_check(container: &Container) -> TokenStream {
    let Some(schema) = &container.attrs.schema else {
        return TokenStream::new();
    };
    let model = container.ident;
    let assignments = container.fields.iter().filter_map(|field| {
        let property = field.schema_ident()?;
        let ident = field.ident;
        let value = quote_spanned!(field.ident.span()=> __model.#ident);
        Some(quote!(#property: #value))
    });
    let private = Private;
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
    let fields = ast::named_fields(&cx, input, Derive::EventSchema);
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
        impl #Private::EventSchema for #ident {
            const PROPERTIES: &'static [&'static str] = &[#(#names),*];
        }
    })
}
