//! Name helpers: the default event names and "did you mean" suggestions.

/// `UserAccount` -> `user_account`, `HTTPRequest` -> `http_request`.
pub fn to_snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut snake = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let prev_upper = i > 0 && chars[i - 1].is_uppercase();
            if i > 0 && (prev_lower || (prev_upper && next_lower)) && !snake.ends_with('_') {
                snake.push('_');
            }
            snake.extend(c.to_lowercase());
        } else {
            snake.push(c);
        }
    }
    snake
}

/// The candidate closest to `input`, if it is close enough to be what the user meant.
pub fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    // A third of the length, rounded up: one edit in a three-letter key, two in a five-letter one.
    let limit = input.chars().count().div_ceil(3).max(1);
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(input, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Edit distance where a swap of two neighbouring letters counts as one edit (optimal string
/// alignment), so `kye` is one edit from `key`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between the first i chars of a and the first j chars of b.
    let mut d = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitution = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + substitution);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case() {
        let cases = "User user, UserAccount user_account, HTTPRequest http_request, \
                     OrderV2 order_v2, already_snake already_snake";
        for case in cases.split(", ") {
            let (name, snake) = case.split_once(' ').unwrap();
            assert_eq!(to_snake_case(name), snake);
        }
    }

    #[test]
    fn suggestions() {
        let keys = ["property", "person", "person_once", "skip"];
        assert_eq!(did_you_mean("proprety", keys), Some("property"));
        assert_eq!(did_you_mean("persn", keys), Some("person"));
        assert_eq!(did_you_mean("banana", keys), None);
        assert_eq!(did_you_mean("tabel", ["table", "schema"]), Some("table"));
        assert_eq!(
            did_you_mean("kye", ["key", "generated", "column"]),
            Some("key")
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("tabel", "table"), 1);
    }
}
