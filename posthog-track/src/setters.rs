//! `setters!`: the builder methods that only store their argument, one line each.

/// Defines by-value builder methods that store their arguments and return `self`:
///
/// ```ignore
/// setters! {
///     /// Docs, as on any method.
///     pub fn lease(lease: Duration) => relay.lease = lease;
///     pub fn backoff(backoff: Backoff) => queue.backoff = backoff, relay.backoff = backoff;
/// }
/// ```
///
/// Methods that check or fail stay written out, so that what a setter does beyond storing
/// stands out.
macro_rules! setters {
    ($(
        $(#[$attr:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) => $($($field:ident).+ = $value:expr),+;
    )*) => {
        $(
            $(#[$attr])*
            $vis fn $name(mut self, $($arg: $ty),*) -> Self {
                $(self.$($field).+ = $value;)+
                self
            }
        )*
    };
}
