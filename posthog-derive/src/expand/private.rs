//! The tokens every generated concern shares: the path to the runtime's `__private` module,
//! and respanning. A leaf: it imports no other `expand` module.

use proc_macro2::{Group, Ident, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote};

/// `::posthog_track::__private`: the one path generated code reaches the runtime through.
#[derive(Clone, Copy)]
pub struct Private;

impl Private {
    /// The path with every token spanned on `span`, for code whose errors point at the
    /// user's tokens (`quote_spanned!` does not respan what it interpolates).
    pub fn spanned(self, span: proc_macro2::Span) -> TokenStream {
        respan(self.into_token_stream(), span)
    }
}

impl ToTokens for Private {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        tokens.extend(quote!(::posthog_track::__private));
    }
}

/// A method that writes properties into `__writer` with `body` (only the fields in `__changed`
/// when `changed`), as `TrackedModel`'s property writers are declared; it fails only where
/// `body` does.
pub fn write_method(name: &str, changed: bool, body: TokenStream) -> TokenStream {
    let name = Ident::new(name, Span::call_site());
    let changed = changed.then(|| quote!(__changed: #Private::ChangeMask,));
    quote! {
        fn #name(
            &self,
            #changed
            __writer: &mut #Private::EventWriter,
        ) -> #Private::Result<()> {
            #body
            #Private::Ok(())
        }
    }
}

/// `TrackedModel::__stage_milestones`, staging with `body` the milestones whose condition
/// holds.
pub fn stage_milestones_method(body: TokenStream) -> TokenStream {
    quote! {
        fn __stage_milestones(
            &self,
            __before: &Self,
            __changed: #Private::ChangeMask,
            __stager: &mut #Private::Stager<'_>,
        ) -> #Private::Result<()> {
            #body
            #Private::Ok(())
        }
    }
}

/// A `TrackedRow` method that binds values onto `__query` with `binds` and returns it;
/// `params` are what it takes before the query.
pub fn bind_method(
    name: &str,
    params: TokenStream,
    binds: impl IntoIterator<Item = TokenStream>,
) -> TokenStream {
    let name = Ident::new(name, Span::call_site());
    let binds = binds.into_iter();
    quote! {
        fn #name(
            #params
            mut __query: #Private::BoundQuery<__DB>,
        ) -> #Private::BoundQuery<__DB> {
            #(#binds)*
            __query
        }
    }
}

/// `tokens` with every token, nested ones included, spanned on `span`.
pub(crate) fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|token| match token {
            TokenTree::Group(group) => {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                TokenTree::Group(respanned)
            }
            mut token => {
                token.set_span(span);
                token
            }
        })
        .collect()
}
