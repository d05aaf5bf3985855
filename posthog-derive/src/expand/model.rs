//! The `TrackedModel` impl (SQL, mapping, change detection) and the `TrackedRow<DB>` impl
//! (binding and decoding, generic over every backend whose types fit).

use proc_macro2::{Literal, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use super::private::{Private, bind_method, respan, stage_milestones_method, write_method};
use super::{event, sql};
use crate::internals::ast::{Container, Field};
use crate::internals::attr::ContextSource;

/// The items for `identify`, groups and `context` fields; none when the model uses none of
/// them, so the trait's defaults apply.
fn identity_items(container: &Container) -> TokenStream {
    let attrs = &container.attrs;
    let private = Private;
    let mut items = Vec::new();
    if attrs.identify.is_some() {
        let person = container
            .fields
            .iter()
            .filter(|field| field.is_person())
            .fold(0u128, |bits, field| bits | (1u128 << field.index));
        let person = Literal::u128_suffixed(person);
        let write_person = event::write_person_properties(container);
        let write_changed_person = event::write_changed_person_properties(container);
        let person_writers = [
            write_method("__write_person_properties", false, write_person),
            write_method(
                "__write_changed_person_properties",
                true,
                write_changed_person,
            ),
        ];
        items.push(quote! {
            const __IDENTIFY: bool = true;
            const __PERSON: #private::ChangeMask = #private::ChangeMask::from_bits(#person);
            #(#person_writers)*
        });
    }
    if let (Some(group_type), Some(group_key)) = (&attrs.group_type, &attrs.group_key) {
        let group_type = &group_type.value;
        items.push(quote_spanned! {group_key.span()=>
            const __GROUP_TYPE: #private::Option<&'static str> = #private::Some(#group_type);
            fn __group_key(&self) -> #private::Option<#private::String> {
                #private::ToDistinctId::to_distinct_id(&self.#group_key)
            }
        });
    }
    let groups: Vec<TokenStream> = container
        .fields
        .iter()
        .filter_map(|field| {
            let group = &field.attrs.group.as_ref()?.value;
            let ident = field.ident;
            Some(quote_spanned! {field.ty.span()=>
                (#group, #private::ToDistinctId::to_distinct_id(&self.#ident))
            })
        })
        .collect();
    if !groups.is_empty() {
        items.push(quote! {
            fn __groups(&self) -> #private::Vec<(&'static str, #private::Option<#private::String>)> {
                #private::vec![#(#groups),*]
            }
        });
    }
    let fills: Vec<TokenStream> = container
        .fields
        .iter()
        .filter_map(|field| {
            let ident = field.ident;
            let value = match &field.attrs.context.as_ref()?.value {
                ContextSource::DistinctId => {
                    quote!(__context.distinct_id().map(#private::ToOwned::to_owned))
                }
                ContextSource::SessionId => {
                    quote!(__context.session_id().map(#private::ToOwned::to_owned))
                }
                ContextSource::Property(key) => quote!(__context.property_text(#key)),
                // `check` reported it; the derive expands nothing while errors stand.
                ContextSource::Unknown(_) => return None,
            };
            Some(quote_spanned! {field.ty.span()=>
                if let #private::Some(__value) = #value {
                    #private::ContextValue::fill(&mut self.#ident, __value);
                }
            })
        })
        .collect();
    if !fills.is_empty() {
        items.push(quote! {
            const __CONTEXT_FIELDS: bool = true;
            fn __fill_from_context(&mut self, __context: &#private::TrackingContext) {
                #(#fills)*
            }
        });
    }
    quote!(#(#items)*)
}

/// What the database fills in at insert, for writing the row and its events in one statement
/// (PostgreSQL): each `generated` field's property name with the field's index (its column's
/// position in the inserted row), and whether the row's identity (distinct id, group key,
/// a `group` field) is generated, which rules that out.
fn generated_items(container: &Container) -> TokenStream {
    let attrs = &container.attrs;
    let generated = container.fields.iter().filter(|field| field.is_generated());
    let properties = generated.clone().filter_map(|field| {
        let name = field.property_name()?;
        let index = field.index;
        Some(quote!((#name, #index)))
    });
    let identity_generated = generated.clone().any(|field| {
        attrs.distinct_id.as_ref() == Some(field.ident)
            || attrs.group_key.as_ref() == Some(field.ident)
            || field.attrs.group.is_some()
    });
    // A generated key cannot change on an update (the row is found by it); any other tracked
    // generated column may be computed again, so `update` reads the row back.
    let update_reads_back = generated
        .clone()
        .any(|field| !field.is_key() && field.property_name().is_some());
    quote! {
        const __GENERATED_PROPERTIES: &'static [(&'static str, usize)] = &[#(#properties),*];
        const __IDENTITY_GENERATED: bool = #identity_generated;
        const __UPDATE_READS_BACK: bool = #update_reads_back;
    }
}

pub fn tracked_model_impl(container: &Container) -> TokenStream {
    let ident = container.ident;
    let attrs = &container.attrs;
    let private = Private;
    let table = container.table();
    let [insert_event, update_event, delete_event] = container.event_names();
    let sql_set = sql::sql_set(container);
    let table_variants = (!attrs.table_variants.is_empty()).then(|| {
        let variants = attrs.table_variants.iter().map(|variant| {
            let (flag, name, table) = (
                &variant.flag.value,
                &variant.variant.value,
                &variant.table.value,
            );
            let sql = sql::sql_set_for(container, table);
            quote! {
                #private::TableVariant { flag: #flag, variant: #name, table: #table, sql: #sql }
            }
        });
        quote! {
            const __TABLE_VARIANTS: &'static [#private::TableVariant<#private::SqlSet>] = &[#(#variants),*];
        }
    });

    let tracked_updatable = container
        .fields
        .iter()
        .filter(|field| field.is_updatable() && field.is_tracked())
        .fold(0u128, |bits, field| bits | (1u128 << field.index));
    let tracked_updatable = Literal::u128_suffixed(tracked_updatable);

    let distinct_id = match &attrs.distinct_id {
        Some(field) => {
            let private = private.spanned(field.span());
            quote_spanned! {field.span()=>
                #private::ToDistinctId::to_distinct_id(&self.#field)
            }
        }
        None => quote!(#private::None),
    };

    let identity = identity_items(container);
    let generated = generated_items(container);

    let write_properties = event::write_properties(container);
    let write_key_properties = event::write_key_properties(container);
    let write_changed_properties = event::write_changed_properties(container);
    let stage_milestones = stage_milestones_method(event::stage_milestones(container));
    let property_writers = [
        write_method("__write_properties", false, write_properties),
        write_method("__write_key_properties", false, write_key_properties),
        write_method("__write_changed_properties", true, write_changed_properties),
    ];

    let change_checks = container
        .fields
        .iter()
        .filter(|f| f.is_updatable())
        .map(|field| {
            let index = field.index;
            let name = field.ident;
            quote_spanned! {field.ty.span()=>
                if self.#name != __before.#name {
                    __mask.insert(#index);
                }
            }
        });
    let key_comparisons = container.keys().map(|field| {
        let name = field.ident;
        quote_spanned!(field.ty.span()=> && self.#name == __other.#name)
    });
    let key = key_type(container);

    quote! {
        #[automatically_derived]
        impl #private::TrackedModel for #ident {
            type Key = #key;
            const TABLE: &'static str = #table;
            const INSERT_EVENT: &'static str = #insert_event;
            const UPDATE_EVENT: &'static str = #update_event;
            const DELETE_EVENT: &'static str = #delete_event;
            const __SQL: &'static #private::SqlSet = #sql_set;
            #table_variants
            const __TRACKED_UPDATABLE: #private::ChangeMask =
                #private::ChangeMask::from_bits(#tracked_updatable);

            fn distinct_id(&self) -> #private::Option<#private::String> {
                #distinct_id
            }

            #identity
            #generated

            #(#property_writers)*

            fn __changed(&self, __before: &Self) -> #private::ChangeMask {
                let mut __mask = #private::ChangeMask::EMPTY;
                #(#change_checks)*
                __mask
            }

            fn __same_key(&self, __other: &Self) -> bool {
                true #(#key_comparisons)*
            }

            #stage_milestones
        }
    }
}

pub fn tracked_row_impl(container: &Container) -> TokenStream {
    let ident = container.ident;
    let private = Private;
    let sqlx = quote!(#private::sqlx);
    let fields = &container.fields;

    // Every field is read back (insert returns the row as stored, `load_for_update` reads
    // it), and bound when it is inserted, updated, or a key in a WHERE; the bounds are on the
    // database (see `Binds` in posthog-track for why).
    let bounds = fields.iter().map(|field| {
        let ty = field.ty;
        // Every token spanned on the field's type, or rustc points at the derive.
        if field.is_generated() && !field.is_key() {
            respan(quote!(__DB: #private::Reads<#ty>,), ty.span())
        } else {
            respan(quote!(__DB: #private::Column<#ty>,), ty.span())
        }
    });

    let bind = |field: &Field| {
        let name = field.ident;
        let ty = field.ty;
        quote!(__query = <__DB as #private::Binds<#ty>>::bind_column(__query, &self.#name);)
    };
    let bind_insert = fields.iter().filter(|f| !f.is_generated()).map(bind);
    let bind_update = fields.iter().filter(|f| f.is_updatable()).map(bind);
    let bind_key = container.keys().map(bind);
    let bind_changed = fields.iter().filter(|f| f.is_updatable()).map(|field| {
        let bind = bind(field);
        let index = field.index;
        quote! {
            if __changed.contains(#index) {
                #bind
            }
        }
    });
    let keys: Vec<&Field> = container.keys().collect();
    let bind_key_value = keys.iter().enumerate().map(|(position, field)| {
        let ty = field.ty;
        let value = if keys.len() == 1 {
            quote!(__key)
        } else {
            let position = syn::Index::from(position);
            quote!(&__key.#position)
        };
        quote!(__query = <__DB as #private::Binds<#ty>>::bind_column(__query, #value);)
    });
    let bind_methods = [
        bind_method("__bind_insert", quote!(&self,), bind_insert),
        bind_method("__bind_update", quote!(&self,), bind_update),
        bind_method(
            "__bind_changed",
            quote!(&self, __changed: #private::ChangeMask,),
            bind_changed,
        ),
        bind_method("__bind_key", quote!(&self,), bind_key),
        bind_method(
            "__bind_key_value",
            quote!(__key: &<Self as #private::TrackedModel>::Key,),
            bind_key_value,
        ),
    ];
    // The SQL selects every column in field order.
    let read_fields = fields.iter().enumerate().map(|(position, field)| {
        let name = field.ident;
        let ty = field.ty;
        quote! {
            #name: <__DB as #private::Reads<#ty>>::read_column(__row, #position)?
        }
    });

    quote! {
        #[automatically_derived]
        impl<__DB> #private::TrackedRow<__DB> for #ident
        where
            __DB: #private::Backend,
            #(#bounds)*
        {
            #(#bind_methods)*

            fn __from_row(
                __row: &<__DB as #sqlx::Database>::Row,
            ) -> #private::Result<Self, #sqlx::Error> {
                #private::Ok(Self {
                    #(#read_fields,)*
                })
            }
        }
    }
}

/// `Upsertable`, for a model whose key the application gives: `upsert` on a model with a
/// `generated` key is then a compile error at the call (the trait's `on_unimplemented`).
pub fn upsertable_impl(container: &Container) -> TokenStream {
    if container.keys().any(Field::is_generated) {
        return TokenStream::new();
    }
    let ident = container.ident;
    let private = Private;
    quote! {
        #[automatically_derived]
        impl #private::Upsertable for #ident {}
    }
}

/// `TrackedModel::Key`: the type of the `#[tracked(key)]` field, or a tuple of the key fields'
/// types in field order (`()` when there is none, which only a failed derive has).
pub fn key_type(container: &Container) -> TokenStream {
    let key_types: Vec<&syn::Type> = container.keys().map(|field| field.ty).collect();
    match key_types.as_slice() {
        [ty] => quote!(#ty),
        types => quote!((#(#types),*)),
    }
}
