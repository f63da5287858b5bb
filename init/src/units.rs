//! Human units in the manifest: durations (`"400ms"`, `"5s"`, `"1m30s"`) and
//! byte sizes (`"64KiB"`, `"1MiB"`, `"4096"`).
//!
//! The formatter is the inverse of the parser, so a duration printed in a
//! marker line (`restart in 1.5s` is never printed; `restart in 1500ms` is)
//! can be pasted back into a manifest.

use std::fmt;
use std::time::Duration;

/// Why a duration or size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("empty value")]
    Empty,
    #[error("missing number before {unit:?}")]
    MissingNumber { unit: String },
    #[error("missing unit after {number} (use ms, s, m or h)")]
    MissingUnit { number: u64 },
    #[error("unknown unit {unit:?}")]
    UnknownUnit { unit: String },
    #[error("value too large")]
    Overflow,
    #[error("fractions are not supported (write 1500ms, not 1.5s)")]
    Fraction,
}

/// Parses a duration made of `<integer><unit>` groups, units `ms`, `s`, `m`,
/// `h` (`"1m30s"`, `"400ms"`). A bare number is refused: a manifest that says
/// `"timeout": "5"` is ambiguous, and guessing seconds or milliseconds is how
/// appliances end up waiting 5 ms for a database.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(UnitError::Empty);
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (number, after) = rest.split_at(digits);
        let unit_len = after.len()
            - after
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let (unit, next) = after.split_at(unit_len);
        if number.is_empty() {
            return Err(UnitError::MissingNumber {
                unit: if unit.is_empty() {
                    after.chars().take(8).collect()
                } else {
                    unit.to_owned()
                },
            });
        }
        if after.starts_with('.') {
            return Err(UnitError::Fraction);
        }
        let value: u64 = number.parse().map_err(|_| UnitError::Overflow)?;
        let factor: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => return Err(UnitError::MissingUnit { number: value }),
            other => {
                return Err(UnitError::UnknownUnit {
                    unit: other.to_owned(),
                });
            }
        };
        let part = value.checked_mul(factor).ok_or(UnitError::Overflow)?;
        total_ms = total_ms.checked_add(part).ok_or(UnitError::Overflow)?;
        rest = next;
    }
    Ok(Duration::from_millis(total_ms))
}

/// A duration printed the way the manifest writes it: whole hours, minutes
/// or seconds when exact, milliseconds otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0ms");
        }
        if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1_000) {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// Parses a byte size: a bare integer (bytes) or an integer with a unit,
/// binary `KiB MiB GiB` or decimal `K M G` / `KB MB GB` (the memory cgroup and
/// most people read `M` as MiB; we do not guess: `M` is 10^6, `MiB` is 2^20).
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(UnitError::Empty);
    }
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (number, unit) = text.split_at(digits);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err(UnitError::MissingNumber {
            unit: unit.to_owned(),
        });
    }
    let value: u64 = number.parse().map_err(|_| UnitError::Overflow)?;
    let factor: u64 = match unit {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(UnitError::UnknownUnit {
                unit: other.to_owned(),
            });
        }
    };
    value.checked_mul(factor).ok_or(UnitError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        let cases: &[(&str, Result<u64, UnitError>)] = &[
            ("400ms", Ok(400)),
            ("5s", Ok(5_000)),
            ("1m30s", Ok(90_000)),
            ("2h", Ok(7_200_000)),
            (" 10s ", Ok(10_000)),
            ("0ms", Ok(0)),
            ("", Err(UnitError::Empty)),
            ("5", Err(UnitError::MissingUnit { number: 5 })),
            ("5x", Err(UnitError::UnknownUnit { unit: "x".into() })),
            ("1.5s", Err(UnitError::Fraction)),
            ("s", Err(UnitError::MissingNumber { unit: "s".into() })),
            ("-1s", Err(UnitError::MissingNumber { unit: "-1s".into() })),
            ("99999999999999999999s", Err(UnitError::Overflow)),
            ("9999999999999999h", Err(UnitError::Overflow)),
        ];
        for (input, want) in cases {
            let got = parse_duration(input).map(|d| d.as_millis() as u64);
            assert_eq!(&got, want, "input {input:?}");
        }
    }

    #[test]
    fn durations_print_as_they_parse() {
        for ms in [
            0u64, 1, 400, 999, 1_000, 1_500, 60_000, 90_000, 3_600_000, 3_600_001,
        ] {
            let text = HumanDuration(Duration::from_millis(ms)).to_string();
            assert_eq!(
                parse_duration(&text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        assert_eq!(
            HumanDuration(Duration::from_millis(400)).to_string(),
            "400ms"
        );
        assert_eq!(
            HumanDuration(Duration::from_millis(10_000)).to_string(),
            "10s"
        );
        assert_eq!(
            HumanDuration(Duration::from_millis(1_500)).to_string(),
            "1500ms"
        );
    }

    #[test]
    fn sizes_parse() {
        let cases: &[(&str, Result<u64, UnitError>)] = &[
            ("4096", Ok(4096)),
            ("64KiB", Ok(65_536)),
            ("1MiB", Ok(1_048_576)),
            ("2GiB", Ok(2 << 30)),
            ("1M", Ok(1_000_000)),
            ("10 KB", Ok(10_000)),
            ("", Err(UnitError::Empty)),
            ("MiB", Err(UnitError::MissingNumber { unit: "MiB".into() })),
            ("1TiB", Err(UnitError::UnknownUnit { unit: "TiB".into() })),
            ("1mb", Err(UnitError::UnknownUnit { unit: "mb".into() })),
            ("99999999999GiB", Err(UnitError::Overflow)),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_size(input), want, "input {input:?}");
        }
    }
}
