//! Budget periods and where the current one began, in UTC, from Unix seconds.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How often a budget starts again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// A UTC calendar day.
    Day,
    /// An ISO week (Monday 00:00 UTC to the next Monday).
    Week,
    /// A UTC calendar month.
    #[default]
    Month,
    /// Never: the budget is a total.
    Total,
}

impl Period {
    /// Every period, in the order the CLI lists them.
    pub const ALL: [Period; 4] = [Period::Day, Period::Week, Period::Month, Period::Total];

    /// The name used in configuration, the CLI and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Total => "total",
        }
    }

    /// Unix seconds at which the period holding `now_unix` began (0 for `Total`).
    pub fn start(self, now_unix: u64) -> u64 {
        let days = now_unix / 86_400;
        match self {
            Period::Day => days * 86_400,
            // 1970-01-01 was a Thursday: Monday-based weeks start 3 days later in the cycle.
            // The week holding the epoch began before it: its start is clamped to 0.
            Period::Week => days.saturating_sub((days + 3) % 7) * 86_400,
            Period::Month => {
                let (y, m, _) = civil_from_days(days as i64);
                (days_from_civil(y, m, 1) as u64) * 86_400
            }
            Period::Total => 0,
        }
    }

    /// Unix seconds at which the period holding `now_unix` ends (`None` for `Total`).
    pub fn end(self, now_unix: u64) -> Option<u64> {
        let start = self.start(now_unix);
        match self {
            Period::Day => Some(start + 86_400),
            // Seven days after the week's Monday (not after a clamped start).
            Period::Week => {
                let days = now_unix / 86_400;
                Some((days + 7 - (days + 3) % 7) * 86_400)
            }
            Period::Month => {
                let (y, m, _) = civil_from_days((start / 86_400) as i64);
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                Some(days_from_civil(y, m, 1) as u64 * 86_400)
            }
            Period::Total => None,
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Period {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Period::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("{s:?} is not a budget period: use day, week, month or total"))
    }
}

/// (year, month 1-12, day 1-31) of a count of days since 1970-01-01 (proleptic Gregorian;
/// Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a (year, month, day).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` of Unix seconds (UTC).
pub fn date_string(unix: u64) -> String {
    let (y, m, d) = civil_from_days((unix / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // 2026-12-03 15:04:05 UTC, a Thursday.
    const NOW: u64 = 1_796_310_245;

    #[test]
    fn period_starts() {
        assert_eq!(date_string(NOW), "2026-12-03");
        assert_eq!(date_string(Period::Day.start(NOW)), "2026-12-03");
        assert_eq!(Period::Day.start(NOW) % 86_400, 0);
        assert_eq!(date_string(Period::Week.start(NOW)), "2026-11-30");
        assert_eq!(date_string(Period::Month.start(NOW)), "2026-12-01");
        assert_eq!(date_string(Period::Month.end(NOW).unwrap()), "2027-01-01");
        assert_eq!(Period::Total.start(NOW), 0);
        assert_eq!(Period::Total.end(NOW), None);
        assert_eq!("Week".parse::<Period>(), Ok(Period::Week));
        assert!("year".parse::<Period>().is_err());
    }

    proptest! {
        #[test]
        fn civil_round_trips(days in -100_000i64..200_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        #[test]
        fn now_is_inside_its_period(now in prop_oneof![0u64..8 * 86_400, 0u64..8_000_000_000]) {
            for p in Period::ALL {
                let start = p.start(now);
                prop_assert!(start <= now);
                if let Some(end) = p.end(now) {
                    prop_assert!(now < end);
                    prop_assert_eq!(p.start(end), end, "the next period starts where this ends");
                }
            }
        }
    }
}
