//! Derive macros for [posthog-track](https://docs.rs/posthog-track). Use them through the
//! re-exports in `posthog_track`; the attribute reference is the documentation of the
//! [`posthog_track::TrackedModel` derive](https://docs.rs/posthog-track/latest/posthog_track/derive.TrackedModel.html).
//!
//! The pipeline: `internals::attr` and `internals::ast` parse the struct and its
//! `#[tracked(...)]` attributes, `internals::check` applies every cross-field rule (collecting
//! all errors), and `expand` writes the impls, one file per generated concern.

mod expand;
mod internals;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Generates the SQL and the PostHog event mapping of a model. The attribute reference is on
/// the [`posthog_track::TrackedModel` derive](https://docs.rs/posthog-track/latest/posthog_track/derive.TrackedModel.html).
#[proc_macro_derive(TrackedModel, attributes(tracked))]
pub fn derive_tracked_model(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive_tracked_model(&input).into()
}

/// Marks a struct as the event schema of a model (`#[tracked(schema = ...)]`). See
/// `posthog_track::EventSchema`.
#[proc_macro_derive(EventSchema)]
pub fn derive_event_schema(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::schema::derive_event_schema(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// The table of invisible characters (`internals::name::INVISIBLE`) as an expression of type
/// `&[(char, char)]`, for `posthog_track`'s own check of names and ids. Not part of the API: it
/// exists because a proc-macro crate can export nothing but macros, and the two crates must
/// agree on what a blank name is.
#[doc(hidden)]
#[proc_macro]
pub fn __invisible_ranges(input: TokenStream) -> TokenStream {
    if !input.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "`__invisible_ranges!` takes no input",
        )
        .into_compile_error()
        .into();
    }
    let ranges = internals::name::INVISIBLE
        .iter()
        .map(|(first, last)| quote::quote!((#first, #last)));
    quote::quote!(&[#(#ranges),*]).into()
}
