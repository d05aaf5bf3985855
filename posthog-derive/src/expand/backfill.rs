//! What a backfill of existing rows needs from a model: the description of its fields, the
//! keyset-paginated `SELECT` of each dialect, the timestamp of a named column, and the key of
//! a row read back. Properties are written by the model's own `__write_properties`, so a field
//! type that cannot become JSON is still reported once.

use proc_macro2::TokenStream;
use quote::quote;

use super::private::{Private, respan};
use crate::internals::ast::{Container, Field, unraw};
use crate::internals::dialect::Dialect;
use syn::spanned::Spanned;

/// `impl BackfillModel` and `impl<DB> BackfillRow<DB>` for a model whose derive succeeded.
pub fn backfill_impls(container: &Container) -> TokenStream {
    let ident = container.ident;
    let private = Private;
    let fields = container.fields.iter().map(|field| {
        let name = unraw(field.ident);
        let column = field.column();
        let property = match field.property_name() {
            Some(property) => quote!(#private::Some(#property)),
            None => quote!(#private::None),
        };
        let person = if field.is_person_set() {
            quote!(#private::BackfillPerson::Set)
        } else if field.is_person_set_once() {
            quote!(#private::BackfillPerson::SetOnce)
        } else {
            quote!(#private::BackfillPerson::No)
        };
        let key = field.is_key();
        quote! {
            #private::BackfillField {
                field: #name,
                column: #column,
                property: #property,
                person: #person,
                key: #key,
            }
        }
    });
    let [postgres, mysql, sqlite] = Dialect::ALL.map(|dialect| page_sql(container, dialect));
    let distinct_id = container.attrs.distinct_id.is_some();
    let timestamps = container.fields.iter().map(|field| {
        let index = field.index;
        let ident = field.ident;
        // Autoref specialisation: a field whose type is a timestamp takes the first impl, any
        // other the second, so asking a non-timestamp column is an error at run time (with
        // the valid names), not a compile error in every model.
        quote! {
            #index => {
                use #private::{BackfillIsTimestamp as _, BackfillNotTimestamp as _};
                (&#private::BackfillTimestampProbe(&self.#ident)).__backfill_timestamp()
            }
        }
    });
    let timestamp_types = container.fields.iter().map(|field| {
        let index = field.index;
        let ty = field.ty;
        // The same specialisation on the field's type: a `with_events` column is checked
        // before a row is read.
        quote! {
            #index => {
                use #private::{BackfillIsTimestampType as _, BackfillNotTimestampType as _};
                (&#private::BackfillTimestampType::<#ty>::NEW).__backfill_is_timestamp()
            }
        }
    });
    let key_fields: Vec<(usize, &Field)> = container
        .fields
        .iter()
        .enumerate()
        .filter(|(_, field)| field.is_key())
        .collect();
    let key_bounds = key_fields.iter().map(|(_, field)| {
        let ty = field.ty;
        respan(
            quote!(__DB: #private::Reads<#ty> + #private::Binds<#ty>,),
            ty.span(),
        )
    });
    let prefix_binds = key_fields.iter().enumerate().map(|(n, (_, field))| {
        let ty = field.ty;
        let value = if key_fields.len() == 1 {
            quote!(__key)
        } else {
            let n = syn::Index::from(n);
            quote!(&__key.#n)
        };
        quote! {
            if #n < __len {
                __query = <__DB as #private::Binds<#ty>>::bind_column(__query, #value);
            }
        }
    });
    let key_reads: Vec<TokenStream> = key_fields
        .iter()
        .map(|(position, field)| {
            let ty = field.ty;
            quote!(<__DB as #private::Reads<#ty>>::read_column(__row, #position))
        })
        .collect();
    let key_value = match key_reads.as_slice() {
        [single] => quote!(#single),
        reads => quote!(#private::Ok((#(#reads?),*))),
    };
    quote! {
        #[automatically_derived]
        impl #private::BackfillModel for #ident {
            const __BACKFILL: &'static #private::BackfillSpec = &#private::BackfillSpec {
                fields: &[#(#fields),*],
                page_sql: #private::PerDialect {
                    postgres: #postgres,
                    mysql: #mysql,
                    sqlite: #sqlite,
                },
                distinct_id: #distinct_id,
            };

            fn __timestamp_of(&self, __index: usize) -> #private::BackfillTimestamp {
                match __index {
                    #(#timestamps)*
                    _ => #private::BackfillTimestamp::NotATimestamp,
                }
            }

            fn __is_timestamp(__index: usize) -> bool {
                match __index {
                    #(#timestamp_types)*
                    _ => false,
                }
            }
        }

        #[automatically_derived]
        impl<__DB> #private::BackfillRow<__DB> for #ident
        where
            __DB: #private::Backend,
            Self: #private::TrackedRow<__DB>,
            #(#key_bounds)*
        {
            fn __key_from_row(
                __row: &<__DB as #private::sqlx::Database>::Row,
            ) -> #private::Result<<Self as #private::TrackedModel>::Key, #private::sqlx::Error> {
                #key_value
            }

            fn __bind_key_prefix(
                __key: &<Self as #private::TrackedModel>::Key,
                __len: usize,
                mut __query: #private::BoundQuery<__DB>,
            ) -> #private::BoundQuery<__DB> {
                #(#prefix_binds)*
                __query
            }
        }
    }
}

/// The dummy impls that stand in while the derive reports errors (see `expand::dummy`).
pub fn dummy(ident: &syn::Ident, key: &TokenStream) -> TokenStream {
    let private = Private;
    quote! {
        #[automatically_derived]
        impl #private::BackfillModel for #ident {
            const __BACKFILL: &'static #private::BackfillSpec = &#private::BackfillSpec::UNUSABLE;
            fn __timestamp_of(&self, _: usize) -> #private::BackfillTimestamp {
                #private::BackfillTimestamp::NotATimestamp
            }
            fn __is_timestamp(_: usize) -> bool {
                false
            }
        }
        #[automatically_derived]
        impl<__DB: #private::Backend> #private::BackfillRow<__DB> for #ident {
            fn __key_from_row(
                _: &<__DB as #private::sqlx::Database>::Row,
            ) -> #private::Result<#key, #private::sqlx::Error> {
                #private::Err(#private::sqlx::Error::RowNotFound)
            }
            fn __bind_key_prefix(
                _: &#key,
                _: usize,
                q: #private::BoundQuery<__DB>,
            ) -> #private::BoundQuery<__DB> {
                q
            }
        }
    }
}

/// `PageSql { first, after, null_key }`: the first page of rows in key order, the page after a
/// key, and a row whose key holds a NULL (which no page reads).
/// The last placeholder is the page size. Keyset pagination, so a page costs the same however
/// far the backfill has gone (an `OFFSET` would rescan every earlier row).
fn page_sql(container: &Container, dialect: Dialect) -> TokenStream {
    let table = dialect.quote_table(container.table());
    let columns: Vec<String> = container
        .fields
        .iter()
        .map(|field| dialect.quote_ident(&field.column()))
        .collect();
    let keys: Vec<String> = container
        .keys()
        .map(|field| dialect.quote_ident(&field.column()))
        .collect();
    let select = format!("SELECT {} FROM {table}", columns.join(", "));
    let order = format!("ORDER BY {}", keys.join(", "));
    let first = format!("{select} {order} LIMIT {}", dialect.placeholder(1));
    let placeholders: Vec<String> = (1..=keys.len()).map(|n| dialect.placeholder(n)).collect();
    let (condition, key_placeholders) = if keys.len() == 1 {
        (format!("{} > {}", keys[0], placeholders[0]), 1)
    } else if dialect == Dialect::MySql {
        // MariaDB's optimiser makes no index range of a row-value comparison: each page would
        // scan the key from its first entry. The comparison spelled out is a range on every
        // backend; MySQL's `?` cannot be repeated, so the key's first 1, 2, ... n values are
        // bound in turn (`BackfillRow::__bind_key_prefix`).
        let disjuncts: Vec<String> = (0..keys.len())
            .map(|last| {
                let mut terms: Vec<String> = keys[..last]
                    .iter()
                    .map(|key| format!("{key} = ?"))
                    .collect();
                terms.push(format!("{} > ?", keys[last]));
                format!("({})", terms.join(" AND "))
            })
            .collect();
        (
            format!("({})", disjuncts.join(" OR ")),
            keys.len() * (keys.len() + 1) / 2,
        )
    } else {
        // A row-value comparison: PostgreSQL and SQLite (3.15+) order tuples
        // lexicographically, which is the ORDER BY of the keys, and search the index with it.
        (
            format!("({}) > ({})", keys.join(", "), placeholders.join(", ")),
            keys.len(),
        )
    };
    let after = format!(
        "{select} WHERE {condition} {order} LIMIT {}",
        dialect.placeholder(key_placeholders + 1)
    );
    let nulls: Vec<String> = keys.iter().map(|key| format!("{key} IS NULL")).collect();
    let null_key = format!("SELECT 1 FROM {table} WHERE {} LIMIT 1", nulls.join(" OR "));
    quote! {
        #Private::PageSql {
            first: #first,
            after: #after,
            null_key: #null_key,
        }
    }
}
