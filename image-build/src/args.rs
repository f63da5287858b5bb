//! A tiny argument parser: positionals, `--flag` and `--opt VALUE` (or
//! `--opt=VALUE`). Unknown options are errors.

use std::collections::BTreeMap;

/// Errors of parsing a subcommand's arguments.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("unknown option {0}")]
    Unknown(String),
    #[error("option {0} needs a value")]
    MissingValue(String),
    #[error("option {0} takes no value")]
    UnexpectedValue(String),
    #[error("expected {expected} argument{} ({usage}), got {got}", if *.expected == 1 { "" } else { "s" })]
    Count {
        expected: usize,
        got: usize,
        usage: &'static str,
    },
}

/// Parsed arguments.
#[derive(Debug, Default)]
pub struct Args {
    pub positional: Vec<String>,
    pub flags: Vec<String>,
    pub values: BTreeMap<String, String>,
}

impl Args {
    /// `flags` take no value, `options` take one.
    pub fn parse(argv: &[String], flags: &[&str], options: &[&str]) -> Result<Self, ArgsError> {
        let mut out = Args::default();
        let mut it = argv.iter();
        let mut only_positional = false;
        while let Some(a) = it.next() {
            if only_positional || !a.starts_with("--") {
                out.positional.push(a.clone());
                continue;
            }
            if a == "--" {
                only_positional = true;
                continue;
            }
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (a.as_str(), None),
            };
            if flags.contains(&name) {
                if inline.is_some() {
                    return Err(ArgsError::UnexpectedValue(name.into()));
                }
                out.flags.push(name.into());
            } else if options.contains(&name) {
                let v = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| ArgsError::MissingValue(name.into()))?,
                };
                out.values.insert(name.into(), v);
            } else {
                return Err(ArgsError::Unknown(name.into()));
            }
        }
        Ok(out)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Checks the positional count.
    pub fn expect(&self, n: usize, usage: &'static str) -> Result<(), ArgsError> {
        if self.positional.len() == n {
            Ok(())
        } else {
            Err(ArgsError::Count {
                expected: n,
                got: self.positional.len(),
                usage,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parse_table() {
        let a = Args::parse(
            &v(&["x", "--json", "--platform", "linux/arm64", "y"]),
            &["--json"],
            &["--platform"],
        )
        .unwrap();
        assert_eq!(a.positional, v(&["x", "y"]));
        assert!(a.flag("--json"));
        assert_eq!(a.value("--platform"), Some("linux/arm64"));
        let a = Args::parse(
            &v(&["--platform=linux/amd64", "--", "--json"]),
            &["--json"],
            &["--platform"],
        )
        .unwrap();
        assert_eq!(a.positional, v(&["--json"]));
        assert_eq!(a.value("--platform"), Some("linux/amd64"));
        assert_eq!(
            Args::parse(&v(&["--nope"]), &[], &[]).unwrap_err(),
            ArgsError::Unknown("--nope".into())
        );
        assert_eq!(
            Args::parse(&v(&["--platform"]), &[], &["--platform"]).unwrap_err(),
            ArgsError::MissingValue("--platform".into())
        );
        assert_eq!(
            Args::parse(&v(&["--json=1"]), &["--json"], &[]).unwrap_err(),
            ArgsError::UnexpectedValue("--json".into())
        );
    }
}
