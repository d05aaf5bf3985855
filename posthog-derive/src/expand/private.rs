//! The tokens every generated concern shares: the path to the runtime's `__private` module,
//! and respanning. A leaf: it imports no other `expand` module.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
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
