//! Model prices and the cost of a request.
//!
//! Owns: the built-in price table (`prices.toml`, reviewed data with its date and sources,
//! parsed once), the lookup of a model's price (operator override, exact id, id without a
//! dated snapshot suffix, longest `*` prefix), and [`cost`], exact in nano-dollars.
//! Must not: guess a price for a model the table does not know (a budgeted key is refused
//! instead; see ARCHITECTURE.md "Keys, budgets and rate limits").

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

use super::money::Usd;

/// The reviewed price file, compiled in.
pub const PRICES_TOML: &str = include_str!("prices.toml");

/// Tokens per price unit (prices are per million tokens).
const TOKENS_PER_UNIT: u128 = 1_000_000;

/// A model's price, in nano-dollars per million tokens (so `$2.50 / M` is `2_500_000_000`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Price {
    /// Input tokens not read from or written to a prompt cache.
    pub input: Usd,
    /// Output tokens.
    pub output: Usd,
    /// Input tokens read from the prompt cache.
    pub cached: Usd,
    /// Input tokens written to the prompt cache.
    pub cache_write: Usd,
}

impl Price {
    /// A price from dollars per million tokens; `cached` and `cache_write` default to
    /// `input`. `None` when an amount is negative, not finite, or absurdly large.
    pub fn from_usd_per_million(
        input: f64,
        output: f64,
        cached: Option<f64>,
        cache_write: Option<f64>,
    ) -> Option<Price> {
        let input = Usd::from_f64(input)?;
        Some(Price {
            input,
            output: Usd::from_f64(output)?,
            cached: match cached {
                Some(c) => Usd::from_f64(c)?,
                None => input,
            },
            cache_write: match cache_write {
                Some(c) => Usd::from_f64(c)?,
                None => input,
            },
        })
    }
}

/// Token counts a cost is computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TokenCounts {
    /// Every input token, cached and cache-written ones included.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Of `input`, read from the prompt cache.
    pub cached: u64,
    /// Of `input`, written to the prompt cache.
    pub cache_write: u64,
}

/// The cost of `tokens` at `price`, rounded up to the next nano-dollar (never under).
/// Cached and cache-write tokens beyond `input` are charged as such and not subtracted twice.
pub fn cost(tokens: TokenCounts, price: &Price) -> Usd {
    let cached = u128::from(tokens.cached);
    let cache_write = u128::from(tokens.cache_write);
    let plain = u128::from(tokens.input).saturating_sub(cached + cache_write);
    let total = plain * u128::from(price.input.0)
        + u128::from(tokens.output) * u128::from(price.output.0)
        + cached * u128::from(price.cached.0)
        + cache_write * u128::from(price.cache_write.0);
    let nanos = total.div_ceil(TOKENS_PER_UNIT);
    Usd(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The built-in table: provider name -> (model id or `prefix*`) -> price.
#[derive(Debug)]
pub struct PriceTable {
    /// When the table was last reviewed (`YYYY-MM-DD`).
    pub reviewed: String,
    providers: BTreeMap<String, BTreeMap<String, Price>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceEntry {
    input: f64,
    output: f64,
    cached: Option<f64>,
    cache_write: Option<f64>,
}

impl PriceTable {
    /// Parses a price file in the format of `prices.toml`.
    pub fn parse(text: &str) -> Result<PriceTable, String> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let reviewed = match doc.remove("reviewed") {
            Some(toml::Value::String(date)) => date,
            _ => return Err("the price file has no `reviewed = \"YYYY-MM-DD\"` line".to_owned()),
        };
        let mut providers = BTreeMap::new();
        for (provider, models) in doc {
            let toml::Value::Table(models) = models else {
                return Err(format!("`{provider}` is not a table of model prices"));
            };
            let mut table = BTreeMap::new();
            for (model, entry) in models {
                let entry: PriceEntry = entry
                    .try_into()
                    .map_err(|e| format!("price of `{provider}.{model}`: {e}"))?;
                let price = Price::from_usd_per_million(
                    entry.input,
                    entry.output,
                    entry.cached,
                    entry.cache_write,
                )
                .ok_or_else(|| format!("price of `{provider}.{model}` is not a dollar amount"))?;
                table.insert(model, price);
            }
            providers.insert(provider, table);
        }
        Ok(PriceTable {
            reviewed,
            providers,
        })
    }

    /// The built-in table (parsed once).
    pub fn builtin() -> &'static PriceTable {
        static TABLE: OnceLock<PriceTable> = OnceLock::new();
        TABLE.get_or_init(|| {
            PriceTable::parse(PRICES_TOML).unwrap_or_else(|e| PriceTable {
                reviewed: format!("unreadable built-in price file: {e}"),
                providers: BTreeMap::new(),
            })
        })
    }

    /// The providers the table has prices for.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        self.providers.keys().map(String::as_str)
    }

    /// How many models `provider` has prices for.
    pub fn model_count(&self, provider: &str) -> usize {
        self.providers.get(provider).map_or(0, BTreeMap::len)
    }

    /// The price of `model` at an upstream of `provider`.
    pub fn lookup(&self, provider: &str, model: &str) -> Option<Price> {
        lookup_in(self.providers.get(provider)?, model)
    }
}

/// `model` in `table`: the exact id, then the id without a dated snapshot suffix, then the
/// longest `prefix*` entry matching either.
pub fn lookup_in(table: &BTreeMap<String, Price>, model: &str) -> Option<Price> {
    if let Some(price) = table.get(model) {
        return Some(*price);
    }
    let family = strip_snapshot_suffix(model);
    if let Some(price) = table.get(family) {
        return Some(*price);
    }
    table
        .iter()
        .filter_map(|(key, price)| {
            let prefix = key.strip_suffix('*')?;
            model.starts_with(prefix).then_some((prefix.len(), *price))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, price)| price)
}

/// `model` without one dated snapshot or version suffix: `-2025-08-07`, `-20250929`,
/// `@20250929`, `-0125` / `-001` (3 or 4 digits), `-latest`.
pub fn strip_snapshot_suffix(model: &str) -> &str {
    fn digits(s: &str, n: usize) -> bool {
        s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
    }
    if let Some(rest) = model.strip_suffix("-latest") {
        return rest;
    }
    // -YYYY-MM-DD
    if model.len() > 11 {
        let (head, tail) = model.split_at(model.len() - 11);
        let t = tail.as_bytes();
        if t[0] == b'-'
            && t[5] == b'-'
            && t[8] == b'-'
            && digits(&tail[1..5], 4)
            && digits(&tail[6..8], 2)
            && digits(&tail[9..11], 2)
            && !head.is_empty()
        {
            return head;
        }
    }
    if let Some(at) = model.rfind(['-', '@']) {
        let (head, tail) = (&model[..at], &model[at + 1..]);
        let dated = digits(tail, 8);
        let version = model.as_bytes()[at] == b'-' && (digits(tail, 4) || digits(tail, 3));
        if !head.is_empty() && (dated || version) {
            return head;
        }
    }
    model
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::money::NANOS_PER_USD as NANOS;
    use proptest::prelude::*;

    #[test]
    fn builtin_file_parses_and_covers_every_builtin_provider() {
        let table = PriceTable::parse(PRICES_TOML).expect("prices.toml parses");
        assert_eq!(table.reviewed.len(), 10, "reviewed is a YYYY-MM-DD date");
        for provider in [
            "openai",
            "anthropic",
            "google",
            "groq",
            "mistral",
            "openrouter",
        ] {
            assert!(
                table.model_count(provider) >= 5,
                "{provider} has prices for its flagship and popular models"
            );
        }
        let flagship = [
            ("openai", "gpt-5"),
            ("openai", "gpt-4o-mini"),
            ("anthropic", "claude-sonnet-4-5"),
            ("google", "gemini-2.5-pro"),
            ("groq", "llama-3.3-70b-versatile"),
            ("mistral", "mistral-large-latest"),
            ("openrouter", "anthropic/claude-sonnet-4.5"),
        ];
        for (provider, model) in flagship {
            assert!(
                table.lookup(provider, model).is_some(),
                "{provider} {model}"
            );
        }
    }

    #[test]
    fn snapshots_resolve_to_their_family() {
        let table = PriceTable::builtin();
        let gpt4o = table.lookup("openai", "gpt-4o").unwrap();
        assert_eq!(gpt4o.input, Usd(2_500_000_000));
        assert_eq!(table.lookup("openai", "gpt-4o-2024-08-06"), Some(gpt4o));
        assert_ne!(table.lookup("openai", "gpt-4o-mini"), Some(gpt4o));
        assert_eq!(
            table.lookup("anthropic", "claude-sonnet-4-5-20250929"),
            table.lookup("anthropic", "claude-sonnet-4-5")
        );
        assert_eq!(
            table.lookup("openai", "gpt-3.5-turbo-0125"),
            table.lookup("openai", "gpt-3.5-turbo")
        );
        assert_eq!(
            table.lookup("google", "gemini-2.0-flash-001"),
            table.lookup("google", "gemini-2.0-flash")
        );
        assert!(table.lookup("google", "gemma-3-27b-it").is_some(), "prefix");
        assert_eq!(table.lookup("openai", "o3-deep-research"), None, "no guess");
        assert_eq!(table.lookup("custom", "gpt-4o"), None);
        assert_eq!(strip_snapshot_suffix("gpt-5"), "gpt-5");
        assert_eq!(
            strip_snapshot_suffix("claude-3-5-haiku-latest"),
            "claude-3-5-haiku"
        );
        assert_eq!(strip_snapshot_suffix("x@20250101"), "x");
    }

    #[test]
    fn cost_is_exact() {
        let price = Price::from_usd_per_million(3.0, 15.0, Some(0.30), Some(3.75)).unwrap();
        let tokens = TokenCounts {
            input: 1_000_000,
            output: 1_000_000,
            cached: 0,
            cache_write: 0,
        };
        assert_eq!(cost(tokens, &price), Usd(18 * NANOS));
        // 1000 plain + 2000 cached + 500 written, 100 out:
        // 1000*3 + 2000*0.3 + 500*3.75 + 100*15 = 3000+600+1875+1500 = 6975 $/M -> $0.006975
        let tokens = TokenCounts {
            input: 3500,
            output: 100,
            cached: 2000,
            cache_write: 500,
        };
        assert_eq!(cost(tokens, &price), Usd(6_975_000));
        // One token at $0.075/M is 75 nano-dollars; at $0.0000001/M it rounds up to 1.
        let cheap = Price::from_usd_per_million(0.075, 0.0, None, None).unwrap();
        let one = TokenCounts {
            input: 1,
            ..TokenCounts::default()
        };
        assert_eq!(cost(one, &cheap), Usd(75));
        let tiny = Price::from_usd_per_million(0.000_000_1, 0.0, None, None).unwrap();
        assert_eq!(cost(one, &tiny), Usd(1));
    }

    proptest! {
        #[test]
        fn cost_is_monotonic_and_additive_within_rounding(
            a in 0u64..10_000_000, b in 0u64..10_000_000, out in 0u64..1_000_000,
            p in 0u64..100_000_000_000u64,
        ) {
            let price = Price { input: Usd(p), output: Usd(p / 3), cached: Usd(p / 10), cache_write: Usd(p) };
            let t = |input| TokenCounts { input, output: out, cached: 0, cache_write: 0 };
            let (ca, cab) = (cost(t(a), &price), cost(t(a + b), &price));
            prop_assert!(ca <= cab);
            let exact = (u128::from(a) * u128::from(p) + u128::from(out) * u128::from(p / 3)) as f64 / 1e6;
            prop_assert!((ca.0 as f64) >= exact.floor());
            prop_assert!((ca.0 as f64) < exact + 1.0);
        }
    }
}
