//! expand: one file per generated concern.

mod backfill;
mod event;
mod model;
mod plan;
mod private;
pub mod schema;
mod sql;

use proc_macro2::TokenStream;
use quote::quote;
use syn::DeriveInput;

use crate::internals::ast::Container;
use crate::internals::ctxt::Ctxt;
use crate::internals::{check, migrations};
use private::{Private, stage_milestones_method, write_method};

pub fn derive_tracked_model(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let container = Container::from_ast(&cx, input);
    let mut migration_files = Vec::new();
    if let Some(container) = &container {
        check::check(&cx, container);
        migration_files = migrations::check(&cx, container);
    }
    let rebuild_on_change = rebuild_on_change(&migration_files);
    match (cx.check(), container) {
        (Ok(()), Some(container)) => {
            let model = model::tracked_model_impl(&container);
            let row = model::tracked_row_impl(&container);
            let schema = schema::schema_check(&container);
            let plan = plan::plan_registration(&container);
            let backfill = backfill::backfill_impls(&container);
            let upsertable = model::upsertable_impl(&container);
            quote!(#model #row #upsertable #schema #plan #backfill #rebuild_on_change)
        }
        (Err(errors), container) => {
            let errors = errors.to_compile_error();
            let dummy = container.map(|container| dummy(&container));
            quote!(#errors #dummy #rebuild_on_change)
        }
        // `Container::from_ast` returns `None` only after reporting an error.
        (Ok(()), None) => TokenStream::new(),
    }
}

/// Cargo rebuilds a crate when a file it `include_bytes!` changes: that makes an edited
/// migration re-run the checks. (A new file is the build script's job; see `migrations`.)
fn rebuild_on_change(files: &[std::path::PathBuf]) -> TokenStream {
    let files = files.iter().map(|file| file.to_string_lossy().into_owned());
    quote! {
        #( const _: &[u8] = ::core::include_bytes!(#files); )*
    }
}

/// Impls that let the rest of the user's code type-check while the derive reports its errors,
/// so the user sees the mistake in the model rather than a cascade of "no method `insert`".
/// They are never run: the crate does not compile while the errors stand.
fn dummy(container: &Container) -> Option<TokenStream> {
    if !container.original.generics.params.is_empty() {
        return None;
    }
    let ident = container.ident;
    let private = Private;
    // The real key type where the key fields are known, so that `load_for_update(&id, ..)`
    // at the call sites type-checks rather than adding a "mismatched types" to the report.
    // (Not a type that is itself an error, such as `&str` without a lifetime: that would
    // add one.)
    let unusable = |ty: &syn::Type| {
        matches!(ty, syn::Type::Reference(reference) if reference.lifetime.is_none())
            || matches!(ty, syn::Type::Infer(_))
    };
    let key = if container.keys().any(|field| unusable(field.ty)) {
        quote!(())
    } else {
        model::key_type(container)
    };
    let backfill = backfill::dummy(ident, &key);
    // They write nothing (their parameters' leading underscores keep them lint-free).
    let stage_milestones = stage_milestones_method(TokenStream::new());
    let property_writers = [
        write_method("__write_properties", false, TokenStream::new()),
        write_method("__write_key_properties", false, TokenStream::new()),
        write_method("__write_changed_properties", true, TokenStream::new()),
    ];
    Some(quote! {
        #backfill
        #[automatically_derived]
        impl #private::TrackedModel for #ident {
            type Key = #key;
            const TABLE: &'static str = "";
            const INSERT_EVENT: &'static str = "";
            const UPDATE_EVENT: &'static str = "";
            const DELETE_EVENT: &'static str = "";
            const __SQL: &'static #private::SqlSet = &#private::SqlSet::UNUSABLE;
            const __TRACKED_UPDATABLE: #private::ChangeMask = #private::ChangeMask::EMPTY;
            fn distinct_id(&self) -> #private::Option<#private::String> {
                #private::None
            }
            #(#property_writers)*
            fn __changed(&self, _: &Self) -> #private::ChangeMask {
                #private::ChangeMask::EMPTY
            }
            fn __same_key(&self, _: &Self) -> bool {
                true
            }
            #stage_milestones
        }
        #[automatically_derived]
        impl #private::Upsertable for #ident {}
        #[automatically_derived]
        impl<__DB: #private::Backend> #private::TrackedRow<__DB> for #ident {
            fn __bind_insert(&self, q: #private::BoundQuery<__DB>) -> #private::BoundQuery<__DB> { q }
            fn __bind_update(&self, q: #private::BoundQuery<__DB>) -> #private::BoundQuery<__DB> { q }
            fn __bind_changed(
                &self,
                _: #private::ChangeMask,
                q: #private::BoundQuery<__DB>,
            ) -> #private::BoundQuery<__DB> {
                q
            }
            fn __bind_key(&self, q: #private::BoundQuery<__DB>) -> #private::BoundQuery<__DB> { q }
            fn __bind_key_value(
                _: &#key,
                q: #private::BoundQuery<__DB>,
            ) -> #private::BoundQuery<__DB> {
                q
            }
            fn __from_row(
                _: &<__DB as #private::sqlx::Database>::Row,
            ) -> #private::Result<Self, #private::sqlx::Error> {
                #private::Err(#private::sqlx::Error::RowNotFound)
            }
        }
    })
}
