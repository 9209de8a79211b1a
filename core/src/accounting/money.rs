//! Amounts of US dollars as integer nano-dollars: prices per million tokens are exact at
//! this resolution (a $0.075 / M token costs 75 nano-dollars), sums never drift, and a u64
//! holds more than eighteen billion dollars.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Nano-dollars per dollar.
pub const NANOS_PER_USD: u64 = 1_000_000_000;

/// An amount of US dollars, in nano-dollars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(pub u64);

impl Usd {
    /// Zero dollars.
    pub const ZERO: Usd = Usd(0);

    /// Parses a dollar amount such as `20`, `0.5`, `$12.75` (at most nine decimals).
    pub fn parse(text: &str) -> Result<Usd, String> {
        let trimmed = text.trim();
        let digits = trimmed.strip_prefix('$').unwrap_or(trimmed);
        let bad = || format!("{text:?} is not an amount of US dollars such as 20 or 0.50");
        if digits.is_empty() {
            return Err(bad());
        }
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty() && frac.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        if frac.len() > 9 {
            return Err(format!("{text:?} has more than nine decimals"));
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let mut nanos_frac: u64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            nanos_frac += u64::from(b - b'0') * 10u64.pow(8 - i as u32);
        }
        whole
            .checked_mul(NANOS_PER_USD)
            .and_then(|n| n.checked_add(nanos_frac))
            .map(Usd)
            .ok_or_else(|| format!("{text:?} is too large"))
    }

    /// From a float number of dollars (configuration and JSON), rounded to the nano-dollar.
    pub fn from_f64(usd: f64) -> Option<Usd> {
        if !usd.is_finite() || usd < 0.0 || usd > (u64::MAX / NANOS_PER_USD) as f64 {
            return None;
        }
        Some(Usd((usd * NANOS_PER_USD as f64).round() as u64))
    }

    /// The amount in dollars as a float (display and JSON only; sums stay integer).
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / NANOS_PER_USD as f64
    }

    /// Saturating sum.
    pub fn saturating_add(self, other: Usd) -> Usd {
        Usd(self.0.saturating_add(other.0))
    }

    /// Saturating difference.
    pub fn saturating_sub(self, other: Usd) -> Usd {
        Usd(self.0.saturating_sub(other.0))
    }
}

impl fmt::Display for Usd {
    /// `$12.34`, or more decimals (up to six) when the amount is below a cent's precision.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / NANOS_PER_USD;
        let frac = self.0 % NANOS_PER_USD;
        if frac % 10_000_000 == 0 {
            write!(f, "${whole}.{:02}", frac / 10_000_000)
        } else {
            let micro = (frac + 500) / 1000;
            let text = format!("{micro:06}");
            let text = text.trim_end_matches('0');
            write!(f, "${whole}.{text:0<2}")
        }
    }
}

impl Serialize for Usd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_f64())
    }
}

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A number of dollars, or a string as `Usd::parse` reads it ("20", "$0.50").
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Number(f64),
            Text(String),
        }
        match Form::deserialize(d)? {
            Form::Number(value) => Usd::from_f64(value).ok_or_else(|| {
                serde::de::Error::custom(format!("{value} is not a non-negative dollar amount"))
            }),
            Form::Text(text) => Usd::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_displays() {
        assert_eq!(Usd::parse("20"), Ok(Usd(20 * NANOS_PER_USD)));
        assert_eq!(Usd::parse("$0.5"), Ok(Usd(NANOS_PER_USD / 2)));
        assert_eq!(Usd::parse(".25"), Ok(Usd(NANOS_PER_USD / 4)));
        assert!(Usd::parse("").is_err());
        assert!(Usd::parse("-1").is_err());
        assert!(Usd::parse("1.2.3").is_err());
        assert!(Usd::parse("0.0000000001").is_err());
        assert_eq!(Usd(20 * NANOS_PER_USD).to_string(), "$20.00");
        assert_eq!(Usd(1_234_500).to_string(), "$0.001235");
        assert_eq!(Usd(150).to_string(), "$0.00");
        assert_eq!(Usd(12_340_000_000).to_string(), "$12.34");
    }

    proptest! {
        #[test]
        fn parse_display_of_cents_round_trips(cents in 0u64..10_000_000_000) {
            let usd = Usd(cents * 10_000_000);
            let shown = usd.to_string();
            prop_assert_eq!(Usd::parse(&shown), Ok(usd));
        }
    }
}
