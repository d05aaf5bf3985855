//! What the examples' tests share.

/// An example's binary, which `cargo test` builds beside the test binaries (as it builds every
/// example) unless told to build only some targets.
///
/// # Panics
///
/// When it was not built.
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test -p posthog-track-examples` (or \
         `--workspace`), which builds the examples, or `cargo build --example {name}` first",
        binary.display()
    );
    binary
}
