// The models are checked against `migrations/` at compile time (`#[tracked(migrations = ...)]`).
// Editing a migration already rebuilds them; this line makes a *new* migration file do so too.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
