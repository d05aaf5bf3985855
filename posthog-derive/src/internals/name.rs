//! What makes a name blank: the one notion `attr` (parsing) and `check` share, so a leaf
//! that imports nothing of the derive's own.

/// Why `name` names nothing: it is `empty`, `only whitespace`, or `only invisible characters`
/// (zero-width spaces and joiners, a byte order mark, with or without whitespace), any of
/// which PostHog would file under a name no one can see, type or query; `None` when it has a
/// visible character.
pub(crate) fn blank(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.trim().is_empty() {
        Some("only whitespace")
    } else if name.chars().all(|c| c.is_whitespace() || is_invisible(c)) {
        Some("only invisible characters")
    } else {
        None
    }
}

/// Unicode's default-ignorable code points (Default_Ignorable_Code_Point in
/// DerivedCoreProperties.txt), as inclusive ranges in ascending order: format characters and
/// fillers that render as nothing. This is the one copy of the table. The runtime crate cannot
/// share code with a proc-macro crate, so it takes the table from the hidden macro
/// `__invisible_ranges!` (lib.rs), which writes these ranges out; a name the derive refuses is
/// then one staging refuses too, by construction.
pub(crate) const INVISIBLE: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{034F}', '\u{034F}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF0}', '\u{FFF8}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0000}', '\u{E0FFF}'),
];

fn is_invisible(c: char) -> bool {
    INVISIBLE
        .iter()
        .any(|&(first, last)| (first..=last).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::{INVISIBLE, blank};

    #[test]
    fn a_name_without_a_visible_character_is_blank() {
        assert_eq!(blank(""), Some("empty"));
        assert_eq!(blank(" \t\n\u{a0}\u{3000}"), Some("only whitespace"));
        for name in [
            "\u{200b}",
            "\u{feff}",
            " \u{2060}\u{200d} ",
            "\u{200c}\t",
            "\u{e0041}",
        ] {
            assert_eq!(blank(name), Some("only invisible characters"), "{name:?}");
        }
        for name in ["a", " a ", "\u{200b}a", "é", "注册"] {
            assert_eq!(blank(name), None, "{name:?}");
        }
    }

    #[test]
    fn the_invisible_ranges_are_ascending_and_apart() {
        for &(first, last) in INVISIBLE {
            assert!(first <= last, "{first:?}..={last:?}");
        }
        for pair in INVISIBLE.windows(2) {
            assert!(pair[0].1 < pair[1].0, "{pair:?}");
        }
    }
}
