//! Human durations as written in the config: `90s`, `15m`, `8h`, `1h30m`, `2d`.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: write a number followed by s, m, h or d, e.g. \"15m\" or \"1h30m\"")]
pub struct DurationError {
    pub input: String,
}

/// Parses `1h30m`-style durations. A bare number is rejected: the unit is
/// always explicit so that `max_session = "8"` cannot silently mean seconds.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: input.to_string(),
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        digits.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(err()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
    }
    if !digits.is_empty() {
        return Err(err());
    }
    Ok(Duration::from_secs(total))
}

/// A duration from the config: the text as written (`"1h30m"`) and its
/// value, parsed once when the config is read. It deserialises from the
/// same strings [`parse_duration`] accepts (a bare number is rejected),
/// serialises back to its text, and displays as its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dur {
    text: String,
    value: Duration,
}

impl Dur {
    /// Parses `text` as [`parse_duration`] does, keeping the text.
    pub fn parse(text: &str) -> Result<Dur, DurationError> {
        Ok(Dur {
            value: parse_duration(text)?,
            text: text.to_string(),
        })
    }

    /// `n` seconds, written `"{n}s"`.
    pub fn seconds(n: u64) -> Dur {
        Dur::of(n, 1, 's')
    }

    /// `n` minutes, written `"{n}m"`.
    pub fn minutes(n: u64) -> Dur {
        Dur::of(n, 60, 'm')
    }

    /// `n` hours, written `"{n}h"`.
    pub fn hours(n: u64) -> Dur {
        Dur::of(n, 3600, 'h')
    }

    fn of(n: u64, unit: u64, suffix: char) -> Dur {
        Dur {
            text: format!("{n}{suffix}"),
            value: Duration::from_secs(n.saturating_mul(unit)),
        }
    }

    /// The duration.
    pub fn get(&self) -> Duration {
        self.value
    }

    /// The text as written in the config.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::str::FromStr for Dur {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Dur, DurationError> {
        Dur::parse(s)
    }
}

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Dur;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration string such as \"90s\" or \"1h30m\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("8h").unwrap(), Duration::from_secs(28800));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172800));
    }

    #[test]
    fn rejects_missing_units_and_garbage() {
        for bad in ["", "8", "h", "1x", "1h30", "-5m", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
            assert!(Dur::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn a_dur_keeps_its_text_and_value() {
        let d = Dur::parse("1h30m").unwrap();
        assert_eq!(d.get(), Duration::from_secs(5400));
        assert_eq!(d.to_string(), "1h30m");
        assert_eq!(d.as_str(), "1h30m");
        assert_eq!(Dur::minutes(15).to_string(), "15m");
        assert_eq!(Dur::minutes(15).get(), Duration::from_secs(900));
        assert_eq!(Dur::seconds(60).get(), Duration::from_secs(60));
        assert_eq!(Dur::hours(2).get(), Duration::from_secs(7200));
    }

    #[test]
    fn a_dur_round_trips_through_toml_as_its_text() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct T {
            d: Dur,
        }
        for text in ["90s", "1h30m", "2d", "0s", " 15m"] {
            let t: T = toml::from_str(&format!("d = {text:?}")).unwrap();
            assert_eq!(t.d.as_str(), text);
            let back = toml::to_string(&t).unwrap();
            assert_eq!(back.trim(), format!("d = {text:?}"));
            let again: T = toml::from_str(&back).unwrap();
            assert_eq!(again.d, t.d);
        }
        for bad in ["d = \"8\"", "d = 8", "d = \"soon\""] {
            assert!(toml::from_str::<T>(bad).is_err(), "{bad}");
        }
    }
}
