//! Rules and tunables: parsing python-crush rule steps into [`Step`]s.
//!
//! ```text
//! ["take", NAME]                                   start from a bucket (or device)
//! ["choose" | "chooseleaf", "firstn" | "indep", N, "type", TYPE]
//!                                                  N <= 0 means replicas + N; TYPE is a
//!                                                  bucket type name, or 0 for devices
//! ["emit"]                                         append the working set to the result
//! ["set_choose_tries", N]  ["set_chooseleaf_tries", N]  ["set_choose_local_tries", N]
//! ["set_choose_local_fallback_tries", 0]  ["set_chooseleaf_vary_r", N]
//! ["set_chooseleaf_stable", N]                     override a tunable for later steps
//! ```
//! Like libcrush, `set_*tries` with N <= 0 and the other `set_*` steps with N < 0 are no-ops.
//! The legacy local fallback (a permutation walk) is not implemented, so a positive
//! `choose_local_fallback_tries` is refused rather than silently ignored.

use serde_json::Value;

use crate::error::MapError;
use crate::map::{Child, Names, as_array, as_i64, as_object, as_str};

/// Largest `chooseleaf_vary_r`: it is a shift amount plus one.
const MAX_VARY_R: u32 = 32;

/// A rule: a name and its steps.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) steps: Vec<Step>,
}

/// One parsed rule step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Take(Child),
    Choose {
        leaf: bool,
        firstn: bool,
        n: i32,
        type_id: u32,
    },
    Emit,
    /// `Some(v)` overrides, `None` keeps the current value (libcrush's ignored arguments).
    Set(Setting, Option<u32>),
}

/// Which tunable a `set_*` step overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setting {
    ChooseTries,
    ChooseleafTries,
    ChooseLocalTries,
    ChooseleafVaryR,
    ChooseleafStable,
}

/// Map-wide tunables (python-crush defaults: Ceph's "optimal" profile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tunables {
    pub(crate) choose_local_tries: u32,
    /// Retries, not tries: the number of attempts is one more (a historical off-by-one).
    pub(crate) choose_total_tries: u32,
    pub(crate) chooseleaf_descend_once: bool,
    pub(crate) chooseleaf_vary_r: u32,
    pub(crate) chooseleaf_stable: bool,
}

impl Default for Tunables {
    fn default() -> Self {
        Self {
            choose_local_tries: 0,
            choose_total_tries: 50,
            chooseleaf_descend_once: true,
            chooseleaf_vary_r: 1,
            chooseleaf_stable: true,
        }
    }
}

/// Parses the optional `tunables` object.
pub(crate) fn parse_tunables(value: Option<&Value>) -> Result<Tunables, MapError> {
    let mut tunables = Tunables::default();
    let Some(value) = value else {
        return Ok(tunables);
    };
    for (name, value) in as_object(value, "tunables")? {
        let at = format!("tunables.{name}");
        let n = as_i64(value, &at)?;
        match name.as_str() {
            "choose_local_tries" => tunables.choose_local_tries = in_range(n, 0, u32::MAX, &at)?,
            "choose_local_fallback_tries" if n == 0 => {}
            "choose_local_fallback_tries" => {
                return Err(MapError::Unsupported {
                    at,
                    feature: "choose_local_fallback_tries > 0",
                });
            }
            "choose_total_tries" => {
                tunables.choose_total_tries = in_range(n, 0, u32::MAX - 1, &at)?;
            }
            "chooseleaf_descend_once" => tunables.chooseleaf_descend_once = flag(n, &at)?,
            "chooseleaf_vary_r" => tunables.chooseleaf_vary_r = in_range(n, 0, MAX_VARY_R, &at)?,
            "chooseleaf_stable" => tunables.chooseleaf_stable = flag(n, &at)?,
            // Only affects how straw (v1) buckets are built; straw2 ignores it.
            "straw_calc_version" => {}
            _ => return Err(MapError::UnknownTunable { name: name.clone() }),
        }
    }
    Ok(tunables)
}

/// Parses the `rules` object (name -> steps), sorted by name.
pub(crate) fn parse_rules(value: &Value, names: &Names<'_>) -> Result<Vec<Rule>, MapError> {
    as_object(value, "rules")?
        .iter()
        .map(|(name, steps)| {
            let at = format!("rule \"{name}\"");
            let steps = as_array(steps, &at)?
                .iter()
                .enumerate()
                .map(|(i, step)| parse_step(step, &format!("{at} step {i}"), names))
                .collect::<Result<_, _>>()?;
            Ok(Rule {
                name: name.clone(),
                steps,
            })
        })
        .collect()
}

fn parse_step(value: &Value, at: &str, names: &Names<'_>) -> Result<Step, MapError> {
    let args = as_array(value, at)?;
    let Some(op) = args.first() else {
        return Err(MapError::BadStep {
            at: at.to_owned(),
            expected: "a non-empty array",
        });
    };
    let op = as_str(op, &format!("{at}[0]"))?;
    match op {
        "take" => parse_take(args, at, names),
        "choose" | "chooseleaf" => parse_choose(args, at, names, op == "chooseleaf"),
        "emit" if args.len() == 1 => Ok(Step::Emit),
        "emit" => Err(MapError::BadStep {
            at: at.to_owned(),
            expected: "[\"emit\"]",
        }),
        _ => parse_set(op, args, at),
    }
}

fn parse_take(args: &[Value], at: &str, names: &Names<'_>) -> Result<Step, MapError> {
    let [_, name] = args else {
        return Err(MapError::BadStep {
            at: at.to_owned(),
            expected: "[\"take\", NAME]",
        });
    };
    let name = as_str(name, &format!("{at}[1]"))?;
    let item = names.items.get(name).copied();
    item.map(Step::Take).ok_or_else(|| MapError::UnknownItem {
        at: at.to_owned(),
        name: name.to_owned(),
    })
}

fn parse_choose(args: &[Value], at: &str, names: &Names<'_>, leaf: bool) -> Result<Step, MapError> {
    const SHAPE: &str =
        "[\"choose\" or \"chooseleaf\", \"firstn\" or \"indep\", N, \"type\", TYPE]";
    let [_, mode, n, keyword, type_name] = args else {
        return Err(MapError::BadStep {
            at: at.to_owned(),
            expected: SHAPE,
        });
    };
    let firstn = match mode.as_str() {
        Some("firstn") => true,
        Some("indep") => false,
        _ => {
            return Err(MapError::BadStep {
                at: at.to_owned(),
                expected: SHAPE,
            });
        }
    };
    if keyword.as_str() != Some("type") {
        return Err(MapError::BadStep {
            at: at.to_owned(),
            expected: SHAPE,
        });
    }
    let n_at = format!("{at}[2]");
    let n = as_i64(n, &n_at)?;
    let n = in_range(n, i64::from(i32::MIN), i32::MAX, &n_at)?;
    let type_id = parse_type(type_name, &format!("{at}[4]"), names)?;
    Ok(Step::Choose {
        leaf,
        firstn,
        n,
        type_id,
    })
}

/// A type name, or the integer 0 for devices (what python-crush writes for device types).
fn parse_type(value: &Value, at: &str, names: &Names<'_>) -> Result<u32, MapError> {
    if value.as_i64() == Some(0) {
        return Ok(0);
    }
    let name = as_str(value, at)?;
    names.types.get(name).copied().ok_or_else(|| {
        let mut known: Vec<&str> = names.types.keys().map(String::as_str).collect();
        known.sort_unstable();
        MapError::UnknownType {
            at: at.to_owned(),
            name: name.to_owned(),
            known: known.join(", "),
        }
    })
}

fn parse_set(op: &str, args: &[Value], at: &str) -> Result<Step, MapError> {
    let setting = match op {
        "set_choose_tries" => Setting::ChooseTries,
        "set_chooseleaf_tries" => Setting::ChooseleafTries,
        "set_choose_local_tries" => Setting::ChooseLocalTries,
        "set_chooseleaf_vary_r" => Setting::ChooseleafVaryR,
        "set_chooseleaf_stable" => Setting::ChooseleafStable,
        "set_choose_local_fallback_tries" => Setting::ChooseLocalTries, // checked below
        _ => {
            return Err(MapError::UnknownStep {
                at: at.to_owned(),
                op: op.to_owned(),
            });
        }
    };
    let [_, n] = args else {
        return Err(MapError::BadStep {
            at: at.to_owned(),
            expected: "[\"set_...\", N]",
        });
    };
    let n_at = format!("{at}[1]");
    let n = as_i64(n, &n_at)?;
    if op == "set_choose_local_fallback_tries" {
        if n > 0 {
            let feature = "set_choose_local_fallback_tries > 0";
            return Err(MapError::Unsupported {
                at: at.to_owned(),
                feature,
            });
        }
        // Fallback tries are always 0 here, so 0 (or a negative no-op) changes nothing.
        return Ok(Step::Set(setting, None));
    }
    let value = match setting {
        // libcrush only applies positive try counts ...
        Setting::ChooseTries | Setting::ChooseleafTries if n <= 0 => None,
        // ... and non-negative values for the others.
        _ if n < 0 => None,
        Setting::ChooseleafVaryR => Some(in_range(n, 0, MAX_VARY_R, &n_at)?),
        Setting::ChooseleafStable => Some(u32::from(n != 0)),
        _ => Some(in_range(n, 0, u32::MAX, &n_at)?),
    };
    Ok(Step::Set(setting, value))
}

fn in_range<T>(n: i64, min: i64, max: T, at: &str) -> Result<T, MapError>
where
    T: TryFrom<i64> + Into<i64> + Copy,
{
    let expected = "outside the allowed range";
    if n < min || n > max.into() {
        return Err(MapError::OutOfRange {
            at: at.to_owned(),
            value: n.to_string(),
            expected,
        });
    }
    T::try_from(n).map_err(|_| MapError::OutOfRange {
        at: at.to_owned(),
        value: n.to_string(),
        expected,
    })
}

fn flag(n: i64, at: &str) -> Result<bool, MapError> {
    match n {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(MapError::OutOfRange {
            at: at.to_owned(),
            value: n.to_string(),
            expected: "0 or 1",
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::CrushMap;

    fn map_with(rules: &str, tunables: &str) -> Result<CrushMap, String> {
        let text = format!(
            r#"{{"trees": [{{"type": "root", "name": "r", "id": -1, "children": [
                {{"type": "host", "name": "h", "id": -2, "children": [{{"id": 0, "name": "d"}}]}}]}}],
                "rules": {rules} {tunables}}}"#
        );
        CrushMap::from_json(&text).map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_every_step_kind() {
        let rules = r#"{"a": [["set_choose_tries", 100], ["set_chooseleaf_tries", 5],
            ["set_choose_local_tries", 0], ["set_choose_local_fallback_tries", 0],
            ["set_chooseleaf_vary_r", 0], ["set_chooseleaf_stable", 0], ["take", "r"],
            ["choose", "indep", -1, "type", "host"], ["chooseleaf", "firstn", 2, "type", 0],
            ["emit"]]}"#;
        let tunables = r#", "tunables": {"choose_total_tries": 19, "chooseleaf_vary_r": 0,
            "chooseleaf_stable": 0, "chooseleaf_descend_once": 0, "straw_calc_version": 1}"#;
        let map = map_with(rules, tunables).unwrap();
        assert_eq!(map.rules[0].steps.len(), 10);
        assert_eq!(map.tunables.choose_total_tries, 19);
    }

    #[test]
    fn malformed_rules_name_the_problem() {
        let cases = [
            (r#"[]"#, "", "rules must be a JSON object"),
            (
                r#"{"a": [["take"]]}"#,
                "",
                "rule \"a\" step 0: expected [\"take\", NAME]",
            ),
            (
                r#"{"a": [["take", "nope"]]}"#,
                "",
                "no bucket or device is named \"nope\"",
            ),
            (
                r#"{"a": [["choose", "firstn", 0, "type"]]}"#,
                "",
                "step 0: expected",
            ),
            (
                r#"{"a": [["choose", "sideways", 0, "type", "host"]]}"#,
                "",
                "expected",
            ),
            (
                r#"{"a": [["choose", "firstn", 0, "type", "rack"]]}"#,
                "",
                "no bucket has type \"rack\"",
            ),
            (
                r#"{"a": [["choose", "firstn", 1.5, "type", "host"]]}"#,
                "",
                "must be an integer",
            ),
            (
                r#"{"a": [["choose", "firstn", 3000000000, "type", "host"]]}"#,
                "",
                "out of range",
            ),
            (r#"{"a": [["emit", 1]]}"#, "", "expected [\"emit\"]"),
            (r#"{"a": [["dance"]]}"#, "", "unknown step \"dance\""),
            (r#"{"a": [[]]}"#, "", "a non-empty array"),
            (r#"{"a": [[1]]}"#, "", "step 0[0] must be a string"),
            (
                r#"{"a": [["set_choose_local_fallback_tries", 2]]}"#,
                "",
                "not supported",
            ),
            (
                r#"{"a": [["set_chooseleaf_vary_r", 99]]}"#,
                "",
                "out of range",
            ),
            (
                r#"{}"#,
                r#", "tunables": {"bogus": 1}"#,
                "unknown tunable \"bogus\"",
            ),
            (
                r#"{}"#,
                r#", "tunables": {"chooseleaf_stable": 2}"#,
                "0 or 1",
            ),
            (
                r#"{}"#,
                r#", "tunables": {"choose_local_fallback_tries": 5}"#,
                "not supported",
            ),
            (
                r#"{}"#,
                r#", "tunables": {"choose_total_tries": -1}"#,
                "out of range",
            ),
        ];
        for (rules, tunables, expected) in cases {
            let message = map_with(rules, tunables).err().unwrap_or_default();
            assert!(
                message.contains(expected),
                "{rules}: got {message:?}, want {expected:?}"
            );
        }
    }

    #[test]
    fn rule_selection() {
        let two = map_with(r#"{"a": [["emit"]], "b": [["emit"]]}"#, "").unwrap();
        assert!(
            two.rule_index(None)
                .unwrap_err()
                .to_string()
                .contains("2 rules (a, b)")
        );
        assert_eq!(two.rule_index(Some("b")).unwrap(), 1);
        assert!(
            two.rule_index(Some("c"))
                .unwrap_err()
                .to_string()
                .contains("no rule \"c\"")
        );
        let none = map_with("{}", "").unwrap();
        assert!(none.rule_index(None).is_err());
    }
}
