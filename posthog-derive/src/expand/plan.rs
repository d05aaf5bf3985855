//! The model's entry in the tracking plan, registered at compile time so a program can
//! collect every event it can send without a database.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};

use super::private::Private;
use crate::internals::ast::{Container, doc_comment, unraw};
use crate::internals::attr::DecisionKind;

pub fn plan_registration(container: &Container) -> TokenStream {
    let private = Private;
    let model = unraw(container.ident);
    let table = container.table();
    let description = doc_comment(&container.original.attrs);
    let [insert_event, update_event, delete_event] = container.event_names();
    let attrs = &container.attrs;
    let identify = attrs.identify.is_some();
    let upsert = !container.keys().any(|key| key.is_generated());
    let group_type = match &attrs.group_type {
        Some(group_type) => {
            let group_type = &group_type.value;
            quote!(#private::Some(#group_type))
        }
        None => quote!(#private::None),
    };
    let groups = container
        .fields
        .iter()
        .filter_map(|field| Some(&field.attrs.group.as_ref()?.value));
    let fields = container.fields.iter().map(|field| {
        let name = unraw(field.ident);
        let property = match field.property_name() {
            Some(property) => quote!(#private::Some(#property)),
            None => quote!(#private::None),
        };
        let rust_type = field.ty.to_token_stream().to_string();
        let person = if field.is_person_set() {
            quote!(#private::Some(#private::PersonProperty::Set))
        } else if field.is_person_set_once() {
            quote!(#private::Some(#private::PersonProperty::SetOnce))
        } else {
            quote!(#private::None)
        };
        let key = field.is_key();
        let skip_reason = match field.decision() {
            Some(DecisionKind::Skip(reason)) => quote!(#private::Some(#reason)),
            _ => quote!(#private::None),
        };
        let milestones = field
            .attrs
            .milestones
            .iter()
            .map(|milestone| &milestone.event.value);
        let doc = &field.doc;
        quote! {
            #private::FieldPlan {
                field: #name,
                property: #property,
                rust_type: #rust_type,
                person: #person,
                key: #key,
                skip_reason: #skip_reason,
                milestones: &[#(#milestones),*],
                description: #doc,
            }
        }
    });
    let table_variants = attrs.table_variants.iter().map(|variant| {
        let (flag, name, table) = (
            &variant.flag.value,
            &variant.variant.value,
            &variant.table.value,
        );
        quote!(#private::VariantPlan { flag: #flag, variant: #name, table: #table })
    });
    quote! {
        #private::inventory::submit! {
            #private::PlanEntry(&#private::ModelPlan {
                model: #model,
                table: #table,
                table_variants: &[#(#table_variants),*],
                description: #description,
                events: #private::ModelEvents { insert: #insert_event, update: #update_event, delete: #delete_event },
                identify: #identify,
                group_type: #group_type,
                upsert: #upsert,
                groups: &[#(#groups),*],
                fields: &[#(#fields),*],
            })
        }
    }
}
