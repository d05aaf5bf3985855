//! The column-to-property mapping: the bodies of the `__write_*` and `__stage_milestones`
//! methods. Property keys are JSON-escaped here, at compile time, so staging an event costs
//! only the serialisation of its values.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use super::private::{Private, respan};
use crate::internals::ast::{Container, Field};

/// Which part of `properties` a value is written to.
#[derive(Clone, Copy)]
enum Section {
    Properties,
    Set,
    SetOnce,
}

/// `"\"name\":"`, the key as it appears in the event JSON.
fn json_key(name: &str) -> String {
    let mut key = String::with_capacity(name.len() + 3);
    key.push('"');
    for c in name.chars() {
        match c {
            '"' => key.push_str("\\\""),
            '\\' => key.push_str("\\\\"),
            c if (c as u32) < 0x20 => key.push_str(&format!("\\u{:04x}", c as u32)),
            c => key.push(c),
        }
    }
    key.push_str("\":");
    key
}

/// `__writer.property(name, key, &<owner>.<field>)?;`, or `__writer.person(<section>, ...)`
/// for `$set` and `$set_once`.
fn write(field: &Field, section: Section, name: &str, owner: TokenStream) -> TokenStream {
    let ident = field.ident;
    let key = json_key(name);
    let (method, section) = match section {
        Section::Properties => (quote!(property), None),
        Section::Set => (quote!(person), Some(quote!(#Private::Section::Set,))),
        Section::SetOnce => (quote!(person), Some(quote!(#Private::Section::SetOnce,))),
    };
    // Spanned on the field's type, so "`T: Serialize` is not satisfied" points at it; every
    // token of the call needs that span, or rustc widens the error to the field's name or
    // labels the derive as well.
    respan(
        quote! {
            __writer.#method(#section #name, #key, &#owner.#ident)?;
        },
        field.ty.span(),
    )
}

type Included = fn(&Field) -> bool;

const ALL_SECTIONS: [(Section, Included); 3] = [
    (Section::Properties, |_| true),
    (Section::Set, |field| field.is_person_set()),
    (Section::SetOnce, |field| field.is_person_set_once()),
];

/// Every tracked property of `fields`, then their `$set`, then their `$set_once`.
fn write_all<'a>(
    fields: impl Iterator<Item = &'a Field<'a>> + Clone,
    guard: impl Fn(&Field) -> Option<TokenStream>,
) -> TokenStream {
    write_sections(fields, guard, &ALL_SECTIONS)
}

/// `$set` and `$set_once` alone: the person properties of an `$identify`.
fn write_person<'a>(
    fields: impl Iterator<Item = &'a Field<'a>> + Clone,
    guard: impl Fn(&Field) -> Option<TokenStream>,
) -> TokenStream {
    write_sections(fields, guard, &ALL_SECTIONS[1..])
}

fn write_sections<'a>(
    fields: impl Iterator<Item = &'a Field<'a>> + Clone,
    guard: impl Fn(&Field) -> Option<TokenStream>,
    sections: &[(Section, Included)],
) -> TokenStream {
    let mut statements = Vec::new();
    for &(section, included) in sections {
        for field in fields.clone().filter(|field| included(field)) {
            let Some(name) = field.property_name() else {
                continue;
            };
            let statement = write(field, section, &name, quote!(self));
            statements.push(match guard(field) {
                Some(condition) => quote!(if #condition { #statement }),
                None => statement,
            });
        }
    }
    quote!(#(#statements)*)
}

/// Body of `__write_properties`: the whole row.
pub fn write_properties(container: &Container) -> TokenStream {
    write_all(container.tracked(), |_| None)
}

/// Body of `__write_key_properties`: what identifies the row.
pub fn write_key_properties(container: &Container) -> TokenStream {
    let keys = container.tracked().filter(|field| field.is_key());
    let statements = keys.filter_map(|field| {
        let name = field.property_name()?;
        Some(write(field, Section::Properties, &name, quote!(self)))
    });
    quote!(#(#statements)*)
}

/// Body of `__write_changed_properties`: the tracked fields in `__changed`.
pub fn write_changed_properties(container: &Container) -> TokenStream {
    let updatable = container.tracked().filter(|field| field.is_updatable());
    write_all(updatable, |field| {
        let index = field.index;
        Some(quote!(__changed.contains(#index)))
    })
}

/// Body of `__write_person_properties`: `$set` and `$set_once` of the whole row.
pub fn write_person_properties(container: &Container) -> TokenStream {
    write_person(container.tracked(), |_| None)
}

/// Body of `__write_changed_person_properties`: those of the fields in `__changed`.
pub fn write_changed_person_properties(container: &Container) -> TokenStream {
    write_person(container.tracked(), |field| {
        let index = field.index;
        Some(quote!(__changed.contains(#index)))
    })
}

/// Body of `__stage_milestones`.
pub fn stage_milestones(container: &Container) -> TokenStream {
    let plain: Vec<TokenStream> = container
        .tracked()
        .filter_map(|field| {
            let name = field.property_name()?;
            Some(write(field, Section::Properties, &name, quote!(self)))
        })
        .collect();
    let milestones = container.fields.iter().flat_map(|field| {
        let plain = &plain;
        field.attrs.milestones.iter().map(move |milestone| {
            let index = field.index;
            let ident = field.ident;
            let ty = field.ty;
            let event = &milestone.event.value;
            let previous_name = format!("previous_{}", field.property_name().unwrap_or_default());
            let previous = write(field, Section::Properties, &previous_name, quote!(__before));
            // Called through `&dyn Fn`, not as the function itself: a `when` of the wrong
            // signature then fails only the `Fn(&T, &T) -> bool` bound, spanned on `when`,
            // instead of also failing the call with a second, confusing error.
            let condition = match &milestone.when {
                Some(when) => {
                    let private = Private.spanned(when.span());
                    quote_spanned! {when.span()=>
                        && {
                            let __when: &dyn ::core::ops::Fn(&#ty, &#ty) -> bool =
                                &#private::milestone_condition::<#ty, _>(#when);
                            __when(&__before.#ident, &self.#ident)
                        }
                    }
                }
                None => quote!(),
            };
            quote! {
                if __changed.contains(#index) #condition {
                    let mut __writer = __stager.event(#event);
                    #(#plain)*
                    #previous
                    __stager.push(__writer)?;
                }
            }
        })
    });
    quote!(#(#milestones)*)
}

#[cfg(test)]
mod tests {
    use super::json_key;

    #[test]
    fn keys_are_json_escaped() {
        assert_eq!(json_key("plan"), "\"plan\":");
        assert_eq!(json_key("a\"b\\c"), "\"a\\\"b\\\\c\":");
        assert_eq!(json_key("tab\t"), "\"tab\\u0009\":");
    }
}
