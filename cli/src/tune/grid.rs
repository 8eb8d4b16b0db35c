//! The points of a `cairn tune` sweep: `--sweep KEY=V1,V2,...` flags over dotted config keys
//! (`memory.write-buffer-ratio`, `rocksdb.compaction-style`, ...), their cartesian product, and
//! each point's configuration as a TOML document (the base config with the point's keys set).
//!
//! A key `env.NAME` sets the environment variable `NAME` of the runs instead of a config key
//! (`--sweep env.MALLOC_ARENA_MAX=1,2,8`, or an allocator through `env.LD_PRELOAD`; `""` is
//! the empty value).
//!
//! A value is read as a TOML value when it parses as one (`0.25`, `true`, `4`, `"level"`,
//! `[1, 2]`), else as a string (`128MiB`, `level`), so sizes and names need no quoting. Commas
//! inside `[...]` or quotes do not split values.
//!
//! ```
//! use cairn_cli::tune::grid::{Sweep, points};
//! let a: Sweep = "memory.managed-size=64MiB,128MiB".parse()?;
//! let b: Sweep = "memory.write-buffer-ratio=0.25,0.5".parse()?;
//! let grid = points(&[a, b]);
//! assert_eq!(grid.len(), 4);
//! assert_eq!(grid[1].label(), "64MiB / 0.5");
//! let toml = grid[1].apply(&toml::Table::new())?;
//! assert!(toml.contains("write-buffer-ratio = 0.5"));
//! # Ok::<(), cairn_cli::tune::grid::GridError>(())
//! ```

use std::str::FromStr;

/// A malformed `--sweep` or a key that cannot be set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GridError {
    /// The flag is not `KEY=V1,V2,...` with a non-empty key and at least one value.
    #[error(
        "--sweep {0:?}: expected KEY=V1,V2,... (a dotted config key such as memory.write-buffer-ratio)"
    )]
    Malformed(String),
    /// Two `--sweep` flags name the same key.
    #[error("--sweep {0} is given twice")]
    Duplicate(String),
    /// A key's path runs through a value that is not a table (`memory.managed-size.x`).
    #[error("cannot set {key}: {at} is not a table in the base config")]
    NotATable {
        /// The swept key.
        key: String,
        /// The prefix that is a value.
        at: String,
    },
    /// The grid has more points than [`MAX_POINTS`].
    #[error("the sweep has {0} points; at most {MAX_POINTS} (split it into several sweeps)")]
    TooLarge(usize),
}

/// Prefix of the keys that set an environment variable of the runs.
pub const ENV_PREFIX: &str = "env.";

/// The most points one sweep may have (each runs the workload `--reps` times).
pub const MAX_POINTS: usize = 256;

/// One `--sweep` flag: a dotted config key and the values it takes.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    /// Dotted key, e.g. `memory.write-buffer-ratio`.
    pub key: String,
    /// Its values, in the order given.
    pub values: Vec<toml::Value>,
}

impl FromStr for Sweep {
    type Err = GridError;

    fn from_str(s: &str) -> Result<Self, GridError> {
        let malformed = || GridError::Malformed(s.to_string());
        let (key, values) = s.split_once('=').ok_or_else(malformed)?;
        let key = key.trim();
        let env_ok = key.strip_prefix(ENV_PREFIX).is_none_or(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        let key_ok = env_ok
            && !key.is_empty()
            && key.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !key_ok {
            return Err(malformed());
        }
        let values: Vec<toml::Value> = split_values(values)
            .into_iter()
            .map(|v| parse_value(&v))
            .collect();
        if values.is_empty() {
            return Err(malformed());
        }
        Ok(Self {
            key: key.to_string(),
            values,
        })
    }
}

/// Splits on commas outside brackets and quotes; trims; drops empty pieces.
fn split_values(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut cur = String::new();
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth <= 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// A TOML value when `text` is one, else the text as a string.
fn parse_value(text: &str) -> toml::Value {
    let doc = format!("v = {text}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.into())),
        Err(_) => toml::Value::String(text.to_string()),
    }
}

/// How a value is shown in labels and tables: strings bare (the empty one as `""`), everything
/// else as TOML.
fn show(v: &toml::Value) -> String {
    match v {
        // The empty string shown as itself, so a label or a CSV cell never comes out blank.
        toml::Value::String(s) if s.is_empty() => "\"\"".into(),
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One point of the grid: a value for every swept key.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// `(dotted key, value)`, in the order of the `--sweep` flags.
    pub settings: Vec<(String, toml::Value)>,
}

impl Point {
    /// The values joined by ` / ` (the keys are the sweep's, in flag order).
    pub fn label(&self) -> String {
        self.settings
            .iter()
            .map(|(_, v)| show(v))
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// `key=value` pairs joined by spaces: the point in full.
    pub fn describe(&self) -> String {
        self.settings
            .iter()
            .map(|(k, v)| format!("{k}={}", show(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The value of each key as shown, in flag order (CSV columns).
    pub fn shown_values(&self) -> Vec<String> {
        self.settings.iter().map(|(_, v)| show(v)).collect()
    }

    /// The environment variables this point sets (its `env.NAME` keys), with their values as
    /// the runs get them.
    pub fn env(&self) -> Vec<(String, String)> {
        self.settings
            .iter()
            .filter_map(|(k, v)| {
                let value = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Some((k.strip_prefix(ENV_PREFIX)?.to_string(), value))
            })
            .collect()
    }

    /// `base` with this point's config keys set (not its `env.` keys), as a TOML document.
    pub fn apply(&self, base: &toml::Table) -> Result<String, GridError> {
        let mut doc = base.clone();
        for (key, value) in &self.settings {
            if !key.starts_with(ENV_PREFIX) {
                set(&mut doc, key, value.clone())?;
            }
        }
        Ok(toml::to_string(&doc).unwrap_or_default())
    }
}

/// Sets a dotted key, creating the tables on its path.
fn set(doc: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), GridError> {
    let parts: Vec<&str> = key.split('.').collect();
    let (last, path) = parts
        .split_last()
        .ok_or_else(|| GridError::Malformed(key.to_string()))?;
    let mut table = doc;
    for (i, part) in path.iter().enumerate() {
        let entry = table
            .entry((*part).to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| GridError::NotATable {
            key: key.to_string(),
            at: parts[..=i].join("."),
        })?;
    }
    table.insert((*last).to_string(), value);
    Ok(())
}

/// Checks the sweeps name distinct keys and the grid is not too large.
pub fn check(sweeps: &[Sweep]) -> Result<(), GridError> {
    for (i, s) in sweeps.iter().enumerate() {
        if sweeps[..i].iter().any(|o| o.key == s.key) {
            return Err(GridError::Duplicate(s.key.clone()));
        }
    }
    let n = sweeps
        .iter()
        .try_fold(1usize, |n, s| n.checked_mul(s.values.len()))
        .unwrap_or(usize::MAX);
    if n > MAX_POINTS {
        return Err(GridError::TooLarge(n));
    }
    Ok(())
}

/// The cartesian product of the sweeps, the last flag varying fastest; one empty point when
/// there are no sweeps (a baseline measured alone).
pub fn points(sweeps: &[Sweep]) -> Vec<Point> {
    let mut out = vec![Point {
        settings: Vec::new(),
    }];
    for s in sweeps {
        out = out
            .into_iter()
            .flat_map(|p| {
                s.values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.settings.push((s.key.clone(), v.clone()));
                    q
                })
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_toml_when_they_parse_and_strings_otherwise() {
        let s: Sweep =
            "rocksdb.compression-per-level=[\"lz4\", \"zstd\"],[\"zstd\"], level ,0.5,true,\"a,b\""
                .parse()
                .expect("parses");
        assert_eq!(s.key, "rocksdb.compression-per-level");
        assert_eq!(s.values.len(), 6, "{:?}", s.values);
        assert!(s.values[0].is_array());
        assert_eq!(s.values[2], toml::Value::String("level".into()));
        assert_eq!(s.values[3], toml::Value::Float(0.5));
        assert_eq!(s.values[4], toml::Value::Boolean(true));
        assert_eq!(s.values[5], toml::Value::String("a,b".into()));
    }

    #[test]
    fn malformed_sweeps_are_refused() {
        for bad in [
            "",
            "=1",
            "memory.x",
            "memory..x=1",
            "memory.x=",
            "memory.x= , ",
            "a b=1",
            "env.=1",
            "env.A-B=1",
        ] {
            assert!(
                matches!(bad.parse::<Sweep>(), Err(GridError::Malformed(_))),
                "{bad}"
            );
        }
        let a: Sweep = "a.b=1".parse().expect("ok");
        assert!(matches!(
            check(&[a.clone(), a]),
            Err(GridError::Duplicate(_))
        ));
        let big: Sweep = format!(
            "a.b={}",
            (0..17).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
        )
        .parse()
        .expect("ok");
        let big2 = Sweep {
            key: "a.c".into(),
            values: big.values.clone(),
        };
        assert!(matches!(check(&[big, big2]), Err(GridError::TooLarge(289))));
    }

    #[test]
    fn the_grid_is_the_cartesian_product_and_apply_sets_dotted_keys() {
        let a: Sweep = "memory.managed-size=64MiB,128MiB".parse().expect("ok");
        let b: Sweep = "rocksdb.compaction-style=level,universal,fifo"
            .parse()
            .expect("ok");
        let grid = points(&[a, b]);
        assert_eq!(grid.len(), 6);
        assert_eq!(grid[0].label(), "64MiB / level");
        assert_eq!(grid[5].label(), "128MiB / fifo");
        let base: toml::Table =
            "[memory]\nwrite-buffer-ratio = 0.3\n[state]\nbackend = \"rocksdb\"\n"
                .parse()
                .expect("base");
        let doc: toml::Table = grid[4].apply(&base).expect("apply").parse().expect("toml");
        assert_eq!(doc["memory"]["managed-size"].as_str(), Some("128MiB"));
        assert_eq!(doc["memory"]["write-buffer-ratio"].as_float(), Some(0.3));
        assert_eq!(
            doc["rocksdb"]["compaction-style"].as_str(),
            Some("universal")
        );
        assert_eq!(points(&[]).len(), 1);
    }

    #[test]
    fn env_keys_set_the_environment_not_the_config() {
        let s: Sweep = "env.LD_PRELOAD=\"\",/usr/lib/libjemalloc.so.2"
            .parse()
            .expect("ok");
        let grid = points(&[s, "memory.managed-size=64MiB".parse().expect("ok")]);
        assert_eq!(grid[0].env(), [("LD_PRELOAD".to_string(), String::new())]);
        assert_eq!(grid[0].label(), "\"\" / 64MiB");
        assert_eq!(grid[1].env()[0].1, "/usr/lib/libjemalloc.so.2");
        let doc = grid[1].apply(&toml::Table::new()).expect("apply");
        assert!(
            !doc.contains("LD_PRELOAD") && doc.contains("managed-size"),
            "{doc}"
        );
    }

    #[test]
    fn a_key_through_a_value_names_the_prefix() {
        let base: toml::Table = "[memory]\nmanaged-size = \"64MiB\"\n"
            .parse()
            .expect("base");
        let p = points(&["memory.managed-size.x=1".parse().expect("ok")]);
        match p[0].apply(&base) {
            Err(GridError::NotATable { at, .. }) => assert_eq!(at, "memory.managed-size"),
            other => panic!("{other:?}"),
        }
    }
}
