//! Every mistake a user can make in a derive is a compile error with a clear message, spanned
//! on their code; these cases pin each message and span. Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p posthog-track-tests --test ui`, then read every diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/fail/*.rs");
    cases.pass("ui/pass/*.rs");
}
