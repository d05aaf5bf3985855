//! Property operators, with the comparison rules of PostHog's evaluators (including their
//! Python-flavoured string conversions, which decide edge cases such as `true` vs `"True"`).

use std::collections::HashMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;

use super::definitions::PropertyFilter;
use super::value::{Inconclusive, Properties};

/// Whether `properties` satisfy `filter`; `Err` when they cannot say.
pub(crate) fn match_property(
    filter: &PropertyFilter,
    properties: &Properties,
    regexes: &Regexes,
) -> Result<bool, Inconclusive> {
    let operator = filter.operator.as_deref().unwrap_or("exact");
    let Some(actual) = properties.get(&filter.key) else {
        return Err(Inconclusive(format!(
            "property `{}` was not supplied",
            filter.key
        )));
    };
    let expected = &filter.value;
    if operator == "is_not_set" {
        return Err(Inconclusive(
            "operator is_not_set needs server evaluation".to_owned(),
        ));
    }
    if actual.is_null() && operator != "is_not" {
        return Ok(false);
    }
    let matched = match operator {
        "exact" => exact(expected, actual),
        "is_not" => !exact(expected, actual),
        "is_set" => true,
        "icontains" => lower(actual).contains(&lower(expected)),
        "not_icontains" => !lower(actual).contains(&lower(expected)),
        "starts_with" => lower(actual).starts_with(&lower(expected)),
        "not_starts_with" => !lower(actual).starts_with(&lower(expected)),
        "ends_with" => lower(actual).ends_with(&lower(expected)),
        "not_ends_with" => !lower(actual).ends_with(&lower(expected)),
        // An invalid pattern matches nothing, for both operators (as in PostHog's SDKs).
        "regex" => regexes
            .is_match(expected, &py_str(actual))?
            .unwrap_or(false),
        "not_regex" => regexes
            .is_match(expected, &py_str(actual))?
            .is_some_and(|matched| !matched),
        "gt" | "gte" | "lt" | "lte" => compare(operator, expected, actual),
        "is_date_before" | "is_date_after" => {
            let flag_date = relative_date(&py_str(expected))
                .or_else(|| parse_date(&py_str(expected)))
                .ok_or_else(|| {
                    Inconclusive("the date set on the flag is not a valid format".to_owned())
                })?;
            let Value::String(text) = actual else {
                return Err(Inconclusive(
                    "the date provided must be a string".to_owned(),
                ));
            };
            let date = parse_date(text).ok_or_else(|| {
                Inconclusive("the date provided is not a valid format".to_owned())
            })?;
            if operator == "is_date_before" {
                date < flag_date
            } else {
                date > flag_date
            }
        }
        "semver_eq" | "semver_neq" | "semver_gt" | "semver_gte" | "semver_lt" | "semver_lte" => {
            let actual = semver(&py_str(actual))
                .ok_or_else(|| Inconclusive("the property is not a valid semver".to_owned()))?;
            let expected = semver(&py_str(expected))
                .ok_or_else(|| Inconclusive("the flag's value is not a valid semver".to_owned()))?;
            match operator {
                "semver_eq" => actual == expected,
                "semver_neq" => actual != expected,
                "semver_gt" => actual > expected,
                "semver_gte" => actual >= expected,
                "semver_lt" => actual < expected,
                _ => actual <= expected,
            }
        }
        "semver_tilde" | "semver_caret" | "semver_wildcard" => {
            let actual = semver(&py_str(actual))
                .ok_or_else(|| Inconclusive("the property is not a valid semver".to_owned()))?;
            let text = py_str(expected);
            let (low, high) = match operator {
                "semver_tilde" => {
                    semver(&text).and_then(|(a, b, c)| Some(((a, b, c), (a, b.checked_add(1)?, 0))))
                }
                "semver_caret" => {
                    semver(&text).and_then(|lower| Some((lower, caret_upper(lower)?)))
                }
                _ => wildcard_bounds(&text),
            }
            .ok_or_else(|| Inconclusive(format!("`{text}` is not valid for {operator}")))?;
            low <= actual && actual < high
        }
        other => return Err(Inconclusive(format!("unknown operator `{other}`"))),
    };
    Ok(matched)
}

/// Python's `str()` of a JSON value, which the reference evaluator compares with.
fn py_str(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Null => "None".to_owned(),
        Value::Number(number) => match (number.as_i64(), number.as_f64()) {
            (Some(integer), _) => integer.to_string(),
            (None, Some(float)) if float.fract() == 0.0 && float.abs() < 1e16 => {
                format!("{float:.1}")
            }
            _ => number.to_string(),
        },
        other => other.to_string(),
    }
}

fn lower(value: &Value) -> String {
    py_str(value).to_lowercase()
}

fn exact(expected: &Value, actual: &Value) -> bool {
    let actual = lower(actual);
    match expected {
        Value::Array(options) => options.iter().any(|option| lower(option) == actual),
        single => lower(single) == actual,
    }
}

/// Whether `operator` takes a regular expression.
pub(crate) fn is_regex_operator(operator: Option<&str>) -> bool {
    matches!(operator, Some("regex" | "not_regex"))
}

/// Longest pattern compiled; a longer one is treated as invalid (it matches nothing).
const MAX_PATTERN_BYTES: usize = 4 * 1024;
/// Bound on one compiled regex (and its lazy DFA), far above what flag patterns need.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Bound on the backtracking steps of one match of a pattern with look-around or
/// backreferences (the rest run in linear time): a hostile pattern ends the match as
/// undecided instead of holding the thread. PostHog's own evaluator bounds them the same way.
const BACKTRACK_LIMIT: usize = 20_000;

/// The `regex`/`not_regex` patterns of a set of definitions, compiled once when they are loaded
/// (an invalid or oversized pattern is kept as `None`: it matches nothing).
///
/// Patterns are Python's and PostHog's dialect, look-around and backreferences included, so
/// they are compiled by `fancy-regex`, which hands whatever it can to the `regex` crate.
#[derive(Debug, Clone, Default)]
pub(crate) struct Regexes(HashMap<String, Option<fancy_regex::Regex>>);

impl Regexes {
    /// Compiles `pattern` unless it was already.
    pub(crate) fn add(&mut self, pattern: &Value) {
        let pattern = py_str(pattern);
        if let std::collections::hash_map::Entry::Vacant(entry) = self.0.entry(pattern) {
            let compiled = compile(entry.key());
            entry.insert(compiled);
        }
    }

    /// Whether `pattern` matches somewhere in `text`: `None` for an invalid pattern, `Err`
    /// when the match ran out of its backtracking budget. A pattern that was not loaded with
    /// the definitions is compiled for this call.
    fn is_match(&self, pattern: &Value, text: &str) -> Result<Option<bool>, Inconclusive> {
        let pattern = py_str(pattern);
        let compiled;
        let regex = match self.0.get(&pattern) {
            Some(regex) => regex.as_ref(),
            None => {
                compiled = compile(&pattern);
                compiled.as_ref()
            }
        };
        regex
            .map(|regex| regex.is_match(text))
            .transpose()
            .map_err(|error| Inconclusive(format!("the regex could not be run: {error}")))
    }
}

fn compile(pattern: &str) -> Option<fancy_regex::Regex> {
    #[cfg(test)]
    tests::COMPILED.with(|compiled| compiled.set(compiled.get() + 1));
    if pattern.len() > MAX_PATTERN_BYTES {
        return None;
    }
    fancy_regex::RegexBuilder::new(pattern)
        .backtrack_limit(BACKTRACK_LIMIT)
        .delegate_size_limit(REGEX_SIZE_LIMIT)
        .delegate_dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .ok()
}

fn compare(operator: &str, expected: &Value, actual: &Value) -> bool {
    fn ordered<T: PartialOrd>(operator: &str, lhs: T, rhs: T) -> bool {
        match operator {
            "gt" => lhs > rhs,
            "gte" => lhs >= rhs,
            "lt" => lhs < rhs,
            _ => lhs <= rhs,
        }
    }
    let expected_number = match expected {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        Value::Bool(flag) => Some(f64::from(u8::from(*flag))),
        _ => None,
    };
    match (expected_number, actual) {
        // A string property is compared as a string, even against a numeric flag value.
        (Some(_), Value::String(text)) => {
            ordered(operator, text.as_str(), py_str(expected).as_str())
        }
        // Integers exactly, as Python compares an int with a float (past 2^53 a cast to
        // f64 would round the property).
        (Some(number), Value::Number(actual)) => match integer(actual) {
            Some(integer) => cmp_integer_float(integer, number)
                .is_some_and(|ordering| ordered(operator, ordering, std::cmp::Ordering::Equal)),
            None => ordered(operator, actual.as_f64().unwrap_or(f64::NAN), number),
        },
        (Some(number), Value::Bool(flag)) => ordered(operator, f64::from(u8::from(*flag)), number),
        _ => ordered(operator, py_str(actual).as_str(), py_str(expected).as_str()),
    }
}

/// A JSON integer, however large (`u64` included).
fn integer(number: &serde_json::Number) -> Option<i128> {
    number
        .as_i64()
        .map(i128::from)
        .or_else(|| number.as_u64().map(i128::from))
}

/// How `integer` orders against `float`, exactly; `None` against NaN.
fn cmp_integer_float(integer: i128, float: f64) -> Option<std::cmp::Ordering> {
    use std::cmp::Ordering;
    if float.is_nan() {
        return None;
    }
    // Beyond i64's range on either side (infinities included): a JSON integer is within it
    // (or u64's), so the order is known.
    if float >= 2f64.powi(64) {
        return Some(Ordering::Less);
    }
    if float < -(2f64.powi(63)) {
        return Some(Ordering::Greater);
    }
    let floor = float.floor();
    // Exact: an integral f64 within i128's range converts without rounding.
    Some(match integer.cmp(&(floor as i128)) {
        Ordering::Equal if float > floor => Ordering::Less,
        ordering => ordering,
    })
}

/// `-7d`, `3h`, `2w`, `1m`, `1y`: that long before now.
fn relative_date(text: &str) -> Option<DateTime<Utc>> {
    let text = text.strip_prefix('-').unwrap_or(text);
    let unit = text.chars().last()?;
    // The unit may be any character, multi-byte ones included: cut on its boundary.
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let number: i64 = digits.parse().ok()?;
    if number >= 10_000 {
        return None;
    }
    let now = Utc::now();
    match unit {
        'h' => Some(now - Duration::hours(number)),
        'd' => Some(now - Duration::days(number)),
        'w' => Some(now - Duration::weeks(number)),
        'm' => months_before(now, number),
        'y' => months_before(now, number * 12),
        _ => None,
    }
}

/// Calendar months back, the day clamped to the target month's length.
fn months_before(now: DateTime<Utc>, months: i64) -> Option<DateTime<Utc>> {
    let index = i64::from(now.year()) * 12 + i64::from(now.month0()) - months;
    let (year, month) = (
        i32::try_from(index.div_euclid(12)).ok()?,
        u32::try_from(index.rem_euclid(12)).ok()? + 1,
    );
    if !(1..=9999).contains(&year) {
        return None;
    }
    let days_in_month = (28..=31)
        .rev()
        .find(|&day| NaiveDate::from_ymd_opt(year, month, day).is_some())?;
    let date = NaiveDate::from_ymd_opt(year, month, now.day().min(days_in_month))?;
    Some(Utc.from_utc_datetime(&date.and_time(now.time())))
}

/// ISO 8601 dates and date-times; naive ones are taken as UTC.
fn parse_date(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Some(stripped) = text
        .strip_suffix(" UTC")
        .or_else(|| text.strip_suffix(" utc"))
    {
        return parse_date(&format!("{stripped}Z"));
    }
    if let Ok(date) = DateTime::parse_from_rfc3339(text) {
        return Some(date.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%:z",
    ] {
        if let Ok(date) = DateTime::parse_from_str(text, format) {
            return Some(date.with_timezone(&Utc));
        }
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(date) = NaiveDateTime::parse_from_str(text, format) {
            return Some(Utc.from_utc_datetime(&date));
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(|date| Utc.from_utc_datetime(&date.and_time(chrono::NaiveTime::MIN)))
}

type Version = (u64, u64, u64);

/// `v1.2.3-beta+build` -> (1, 2, 3); missing parts are 0; leading zeros are invalid.
fn semver(text: &str) -> Option<Version> {
    let text = text.trim().trim_start_matches(['v', 'V']);
    let core = text.split('-').next()?.split('+').next()?;
    let mut parts = core.split('.');
    let major = numeric(parts.next()?)?;
    let minor = parts
        .next()
        .filter(|p| !p.is_empty())
        .map_or(Some(0), numeric)?;
    let patch = parts
        .next()
        .filter(|p| !p.is_empty())
        .map_or(Some(0), numeric)?;
    Some((major, minor, patch))
}

fn numeric(part: &str) -> Option<u64> {
    if part.is_empty()
        || !part.bytes().all(|b| b.is_ascii_digit())
        || (part.len() > 1 && part.starts_with('0'))
    {
        return None;
    }
    part.parse().ok()
}

/// The exclusive upper bound of `^version`; `None` when it does not fit in a `u64`.
fn caret_upper((major, minor, patch): Version) -> Option<Version> {
    Some(if major > 0 {
        (major.checked_add(1)?, 0, 0)
    } else if minor > 0 {
        (0, minor.checked_add(1)?, 0)
    } else {
        (0, 0, patch.checked_add(1)?)
    })
}

/// `1.*` -> [1.0.0, 2.0.0), `1.2.*` -> [1.2.0, 1.3.0), `1.2.3` -> [1.2.3, 1.2.4); `None` when
/// the upper bound does not fit in a `u64`.
fn wildcard_bounds(text: &str) -> Option<(Version, Version)> {
    let cleaned = text.trim().trim_start_matches(['v', 'V']).replace('*', "");
    let parts: Vec<&str> = cleaned
        .trim_end_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
        .collect();
    match parts.as_slice() {
        [major] => {
            let major = numeric(major)?;
            Some(((major, 0, 0), (major.checked_add(1)?, 0, 0)))
        }
        [major, minor] => {
            let (major, minor) = (numeric(major)?, numeric(minor)?);
            Some(((major, minor, 0), (major, minor.checked_add(1)?, 0)))
        }
        [major, minor, patch, ..] => {
            let (major, minor, patch) = (numeric(major)?, numeric(minor)?, numeric(patch)?);
            Some(((major, minor, patch), (major, minor, patch.checked_add(1)?)))
        }
        [] => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    thread_local! {
        /// Regexes compiled on this thread.
        pub(super) static COMPILED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn regexes_are_compiled_once_per_definitions_load() {
        let evaluator = crate::flags::LocalEvaluator::from_json(
            &json!({"flags": [{"key": "staff", "active": true, "filters": {"groups": [
                {"properties": [{"key": "email", "operator": "regex", "value": "@example\\.com$"}]},
                {"properties": [{"key": "email", "operator": "not_regex", "value": "^bot-"}]}
            ]}}]})
            .to_string(),
        )
        .unwrap();
        let before = COMPILED.with(std::cell::Cell::get);
        for n in 0..50 {
            let mut properties = Properties::new();
            properties.insert("email".into(), json!(format!("user{n}@example.com")));
            let value = evaluator
                .evaluate_with(
                    "staff",
                    "u",
                    &properties,
                    &Default::default(),
                    &Default::default(),
                )
                .map_err(|error| error.to_string());
            assert_eq!(value, Ok(crate::flags::FlagValue::Enabled(true)));
        }
        assert_eq!(
            COMPILED.with(std::cell::Cell::get),
            before,
            "no regex compiled per evaluation"
        );
    }

    fn check(operator: &str, expected: Value, actual: Value) -> Result<bool, String> {
        let filter: PropertyFilter =
            serde_json::from_value(json!({"key": "p", "operator": operator, "value": expected}))
                .unwrap();
        let mut properties = Properties::new();
        properties.insert("p".into(), actual);
        match_property(&filter, &properties, &Regexes::default())
            .map_err(|Inconclusive(reason)| reason)
    }

    #[test]
    fn equality_is_case_insensitive_and_accepts_lists() {
        assert_eq!(check("exact", json!("Pro"), json!("pro")), Ok(true));
        assert_eq!(
            check("exact", json!(["free", "pro"]), json!("PRO")),
            Ok(true)
        );
        assert_eq!(
            check("exact", json!("true"), json!(true)),
            Ok(true),
            "Python's str(True)"
        );
        assert_eq!(check("is_not", json!("pro"), json!("free")), Ok(true));
        assert_eq!(
            check("is_not", json!("pro"), json!(null)),
            Ok(true),
            "is_not accepts null"
        );
        assert_eq!(check("exact", json!("pro"), json!(null)), Ok(false));
        assert_eq!(check("exact", json!(5), json!("5")), Ok(true));
    }

    #[test]
    fn set_operators() {
        assert_eq!(check("is_set", json!(null), json!("x")), Ok(true));
        assert!(
            check("is_not_set", json!(null), json!("x")).is_err(),
            "needs the server"
        );
    }

    /// Checks each `(operator, flag value, property value, expected)` case, naming the case
    /// that fails.
    fn assert_cases(cases: &[(&str, Value, Value, Result<bool, ()>)]) {
        for (operator, expected, actual, outcome) in cases {
            let got = check(operator, expected.clone(), actual.clone()).map_err(|_| ());
            assert_eq!(&got, outcome, "{operator} {expected} against {actual}");
        }
    }

    #[test]
    fn string_operators() {
        let email = || json!("a@example.com");
        assert_cases(&[
            ("icontains", json!("EXAMPLE"), email(), Ok(true)),
            (
                "not_icontains",
                json!("example"),
                json!("a@other.com"),
                Ok(true),
            ),
            ("starts_with", json!("A@"), email(), Ok(true)),
            ("not_starts_with", json!("b"), email(), Ok(true)),
            ("ends_with", json!(".COM"), email(), Ok(true)),
            ("not_ends_with", json!(".org"), email(), Ok(true)),
            ("regex", json!(r"^a@.*\.com$"), email(), Ok(true)),
            ("not_regex", json!(r"^b"), email(), Ok(true)),
            // An invalid pattern matches nothing, either way round.
            ("regex", json!("(unclosed"), json!("x"), Ok(false)),
            ("not_regex", json!("(unclosed"), json!("x"), Ok(false)),
        ]);
    }

    #[test]
    fn numeric_operators_follow_the_property_type() {
        assert_eq!(check("gt", json!(10), json!(11)), Ok(true));
        assert_eq!(check("gte", json!("10"), json!(10)), Ok(true));
        assert_eq!(check("lt", json!(10), json!(9.5)), Ok(true));
        assert_eq!(check("lte", json!(10), json!(11)), Ok(false));
        // A string property compares as a string: "9" > "10".
        assert_eq!(check("gt", json!(10), json!("9")), Ok(true));
        assert_eq!(
            check("gt", json!("abc"), json!("abd")),
            Ok(true),
            "non-numeric: string order"
        );
    }

    #[test]
    fn absolute_and_relative_dates() {
        assert_eq!(
            check(
                "is_date_before",
                json!("2025-01-01"),
                json!("2024-12-31T23:00:00Z")
            ),
            Ok(true)
        );
        assert_eq!(
            check(
                "is_date_after",
                json!("2025-01-01T00:00:00+01:00"),
                json!("2024-12-31T23:30:00Z")
            ),
            Ok(true)
        );
        assert_eq!(
            check(
                "is_date_after",
                json!("-7d"),
                json!(Utc::now().to_rfc3339())
            ),
            Ok(true)
        );
        assert_eq!(
            check("is_date_before", json!("-1y"), json!("2000-01-01")),
            Ok(true)
        );
        assert_eq!(
            check(
                "is_date_before",
                json!("3h"),
                json!((Utc::now() - Duration::hours(4)).to_rfc3339())
            ),
            Ok(true)
        );
        assert!(check("is_date_before", json!("whenever"), json!("2000-01-01")).is_err());
        assert!(check("is_date_before", json!("2025-01-01"), json!("not a date")).is_err());
        assert!(
            check("is_date_before", json!("-10000d"), json!("2000-01-01")).is_err(),
            "overflow guard"
        );
        assert!(check("is_date_before", json!("2025-01-01"), json!(5)).is_err());
    }

    #[test]
    fn relative_months_clamp_the_day() {
        let march_31 = Utc.with_ymd_and_hms(2025, 3, 31, 12, 0, 0).unwrap();
        assert_eq!(
            months_before(march_31, 1).unwrap().date_naive(),
            NaiveDate::from_ymd_opt(2025, 2, 28).unwrap()
        );
        let leap = Utc.with_ymd_and_hms(2024, 2, 29, 0, 0, 0).unwrap();
        assert_eq!(
            months_before(leap, 12).unwrap().date_naive(),
            NaiveDate::from_ymd_opt(2023, 2, 28).unwrap()
        );
    }

    #[test]
    fn semver_operators() {
        assert_cases(&[
            ("semver_eq", json!("1.2"), json!("v1.2.0"), Ok(true)),
            ("semver_neq", json!("1.2.3"), json!("1.2.4"), Ok(true)),
            // Numeric, not lexical.
            ("semver_gt", json!("1.2.3"), json!("1.10.0"), Ok(true)),
            // The pre-release is ignored.
            ("semver_gte", json!("1.2.3"), json!("1.2.3-beta"), Ok(true)),
            ("semver_lt", json!("2.0.0"), json!("1.99.99"), Ok(true)),
            (
                "semver_lte",
                json!("2.0.0"),
                json!("2.0.0+build.5"),
                Ok(true),
            ),
            ("semver_tilde", json!("1.2.3"), json!("1.2.9"), Ok(true)),
            ("semver_tilde", json!("1.2.3"), json!("1.3.0"), Ok(false)),
            ("semver_caret", json!("1.2.3"), json!("1.9.0"), Ok(true)),
            ("semver_caret", json!("0.2.3"), json!("0.3.0"), Ok(false)),
            ("semver_caret", json!("0.0.3"), json!("0.0.3"), Ok(true)),
            ("semver_caret", json!("0.0.3"), json!("0.0.4"), Ok(false)),
            ("semver_wildcard", json!("1.*"), json!("1.99.0"), Ok(true)),
            ("semver_wildcard", json!("1.2.*"), json!("1.3.0"), Ok(false)),
            // A leading zero, a non-version and a bare wildcard are inconclusive.
            ("semver_eq", json!("1.2.3"), json!("01.2.3"), Err(())),
            ("semver_gt", json!("1.2.3"), json!("banana"), Err(())),
            ("semver_wildcard", json!("*"), json!("1.0.0"), Err(())),
        ]);
    }

    #[test]
    fn a_relative_date_ending_in_a_multibyte_character_is_inconclusive() {
        for flag_date in ["-1é", "1€", "-12😀", "é", "-é"] {
            assert!(
                check("is_date_before", json!(flag_date), json!("2000-01-01")).is_err(),
                "{flag_date}"
            );
        }
    }

    #[test]
    fn semver_components_near_u64_max_are_inconclusive() {
        let max = u64::MAX.to_string();
        for (operator, expected) in [
            ("semver_caret", format!("{max}.0.0")),
            ("semver_caret", format!("0.{max}.0")),
            ("semver_caret", format!("0.0.{max}")),
            ("semver_tilde", format!("1.{max}.0")),
            ("semver_wildcard", format!("{max}.*")),
            ("semver_wildcard", format!("1.{max}.*")),
            ("semver_wildcard", format!("1.2.{max}")),
        ] {
            assert!(
                check(operator, json!(expected), json!("1.0.0")).is_err(),
                "{operator} {expected}"
            );
        }
        // One below the maximum still has an upper bound.
        let below = (u64::MAX - 1).to_string();
        assert_eq!(
            check(
                "semver_caret",
                json!(format!("{below}.0.0")),
                json!(format!("{below}.5.0"))
            ),
            Ok(true)
        );
        // Past u64: not a number this evaluator can compare.
        assert!(check("semver_eq", json!("18446744073709551616"), json!("1.0.0")).is_err());
    }

    #[test]
    fn a_missing_property_is_inconclusive() {
        let filter: PropertyFilter =
            serde_json::from_value(json!({"key": "plan", "value": "pro"})).unwrap();
        assert!(match_property(&filter, &Properties::new(), &Regexes::default()).is_err());
    }

    /// PostHog's evaluators use Python's `re` and `fancy_regex`, which have look-around.
    #[test]
    fn look_around_patterns_are_evaluated() {
        assert_eq!(check("regex", json!("^(?!bot-)"), json!("alice")), Ok(true));
        assert_eq!(
            check("regex", json!("^(?!bot-)"), json!("bot-1")),
            Ok(false)
        );
        assert_eq!(
            check("not_regex", json!("^(?!bot-)"), json!("bot-1")),
            Ok(true)
        );
        assert_eq!(check("regex", json!(r"(\w)\1"), json!("hello")), Ok(true));
        // Invalid patterns still match nothing, for both operators.
        assert_eq!(check("regex", json!("(unclosed"), json!("x")), Ok(false));
        assert_eq!(
            check("not_regex", json!("(unclosed"), json!("x")),
            Ok(false)
        );
    }

    /// A pattern that backtracks without end is undecided (PostHog decides), never a hang.
    #[test]
    fn runaway_backtracking_is_undecided() {
        let text = json!(format!("{}!", "a".repeat(40)));
        for operator in ["regex", "not_regex"] {
            let outcome = check(operator, json!(r"(a|aa)+\1$"), text.clone());
            assert!(
                outcome
                    .as_ref()
                    .is_err_and(|reason| reason.contains("regex")),
                "{operator}: {outcome:?}"
            );
        }
    }

    /// Python compares an int with a float exactly: past 2^53 a cast would round.
    #[test]
    fn integers_compare_exactly_with_the_flag_value() {
        let big = 9_007_199_254_740_992_u64; // 2^53
        assert_eq!(check("gt", json!(big), json!(big + 1)), Ok(true));
        assert_eq!(check("lte", json!(big), json!(big + 1)), Ok(false));
        assert_eq!(
            check("gte", json!(u64::MAX), json!(u64::MAX)),
            Ok(false),
            "2^64 - 1 < 2^64"
        );
        assert_eq!(check("lt", json!(1.5), json!(1)), Ok(true));
        assert_eq!(check("gt", json!(1.5), json!(2)), Ok(true));
        assert_eq!(check("gt", json!(-1.5), json!(-1)), Ok(true));
        assert_eq!(check("lt", json!(-1.5), json!(-2)), Ok(true));
        assert_eq!(check("gte", json!("7"), json!(7)), Ok(true));
        assert_eq!(check("lt", json!(1e300), json!(i64::MAX)), Ok(true));
        assert_eq!(check("gt", json!(-1e300), json!(i64::MIN)), Ok(true));
    }
}
