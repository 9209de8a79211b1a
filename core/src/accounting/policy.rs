//! A key's policy: which models it may ask for, how many requests and tokens per minute,
//! how much money per period, and who owns it. Stored with the key (API keys) or read from
//! a JWT's claims, bounded by the operator's defaults.

use serde::{Deserialize, Serialize};

use super::money::Usd;
use super::period::Period;

/// A spend budget: at most `limit` per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// The most the key may spend in one period, in US dollars.
    #[serde(rename = "usd")]
    pub limit: Usd,
    /// How often the budget starts again.
    #[serde(default)]
    pub period: Period,
}

/// What a key may do. Every field absent means "no limit".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPolicy {
    /// Model names the key may ask for (exact names, aliases or globs with `*` and `?`);
    /// empty: every model.
    #[serde(default, skip_serializing_if = "ModelPatterns::is_empty")]
    pub models: ModelPatterns,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens (input and output) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Spend budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Who the key is for (free text, shown in listings and the usage log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl KeyPolicy {
    /// Whether nothing is set (no limit and no owner): the policy is left out when stored.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Whether the key has no limit at all.
    pub fn is_unlimited(&self) -> bool {
        self.models.is_empty() && self.rpm.is_none() && self.tpm.is_none() && self.budget.is_none()
    }

    /// This policy bounded by `ceiling` (an operator's limits for JWTs): every limit is the
    /// tighter of the two, a limit only `ceiling` sets applies, and models must match both.
    pub fn bounded_by(&self, ceiling: &KeyPolicy) -> KeyPolicy {
        fn min_opt<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        let budget = match (self.budget, ceiling.budget) {
            // Different periods cannot be compared: the operator's budget holds.
            (Some(own), Some(cap)) if own.period == cap.period => Some(Budget {
                limit: own.limit.min(cap.limit),
                period: own.period,
            }),
            (Some(_), Some(cap)) => Some(cap),
            (own, cap) => own.or(cap),
        };
        let models = match (self.models.is_empty(), ceiling.models.is_empty()) {
            (_, true) => self.models.clone(),
            (true, false) => ceiling.models.clone(),
            (false, false) => ModelPatterns {
                patterns: self.models.patterns.clone(),
                also: Some(Box::new(ceiling.models.clone())),
            },
        };
        KeyPolicy {
            models,
            rpm: min_opt(self.rpm, ceiling.rpm),
            tpm: min_opt(self.tpm, ceiling.tpm),
            budget,
            owner: self.owner.clone().or_else(|| ceiling.owner.clone()),
        }
    }
}

/// A list of model-name patterns: exact names or globs (`*` any run of characters, `?`
/// one character). Empty allows every model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelPatterns {
    patterns: Vec<String>,
    /// A second list the name must match as well (a JWT's models inside the operator's).
    also: Option<Box<ModelPatterns>>,
}

impl ModelPatterns {
    /// Patterns from a list; empty entries are dropped.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(patterns: I) -> Self {
        Self {
            patterns: patterns
                .into_iter()
                .map(Into::into)
                .map(|p: String| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
            also: None,
        }
    }

    /// Patterns from a comma-separated list (`gpt-*,claude-*`).
    pub fn parse(list: &str) -> Self {
        Self::new(list.split(','))
    }

    /// Whether no pattern is set (every model allowed).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty() && self.also.is_none()
    }

    /// The patterns, as written.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether `model` is allowed.
    pub fn allows(&self, model: &str) -> bool {
        let own = self.patterns.is_empty() || self.patterns.iter().any(|p| glob_match(p, model));
        own && self.also.as_ref().is_none_or(|also| also.allows(model))
    }
}

impl Serialize for ModelPatterns {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.patterns.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ModelPatterns {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            List(Vec<String>),
            Text(String),
        }
        Ok(match Form::deserialize(d)? {
            Form::List(list) => ModelPatterns::new(list),
            Form::Text(text) => ModelPatterns::parse(&text),
        })
    }
}

/// Whether `name` matches `pattern` (`*` any run, `?` one character; case-sensitive, as
/// model names are). Linear in the lengths (no backtracking blow-up).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn globs() {
        assert!(glob_match("gpt-*", "gpt-4o"));
        assert!(glob_match("*", ""));
        assert!(glob_match("claude-?-haiku*", "claude-3-haiku-20240307"));
        assert!(!glob_match("gpt-*", "o3"));
        assert!(glob_match("gpt-4o", "gpt-4o"));
        assert!(!glob_match("gpt-4o", "gpt-4o-mini"));
        assert!(glob_match("*mini*", "gpt-4o-mini-2024"));
        let m = ModelPatterns::parse("gpt-*, claude-* ,");
        assert_eq!(m.patterns(), ["gpt-*", "claude-*"]);
        assert!(m.allows("claude-sonnet-4-5"));
        assert!(!m.allows("gemini-2.5-pro"));
        assert!(ModelPatterns::default().allows("anything"));
    }

    #[test]
    fn bounded_by_takes_the_tighter_limit() {
        let own = KeyPolicy {
            models: ModelPatterns::parse("gpt-*"),
            rpm: Some(100),
            tpm: None,
            budget: Some(Budget {
                limit: Usd::parse("50").unwrap(),
                period: Period::Month,
            }),
            owner: Some("alice".into()),
        };
        let cap = KeyPolicy {
            models: ModelPatterns::parse("gpt-4o*,claude-*"),
            rpm: Some(10),
            tpm: Some(1000),
            budget: Some(Budget {
                limit: Usd::parse("5").unwrap(),
                period: Period::Month,
            }),
            owner: None,
        };
        let b = own.bounded_by(&cap);
        assert_eq!((b.rpm, b.tpm), (Some(10), Some(1000)));
        assert_eq!(b.budget.unwrap().limit, Usd::parse("5").unwrap());
        assert!(b.models.allows("gpt-4o-mini"));
        assert!(!b.models.allows("gpt-5"), "outside the operator's list");
        assert!(
            !b.models.allows("claude-opus-4"),
            "outside the token's list"
        );
        assert_eq!(b.owner.as_deref(), Some("alice"));
        assert_eq!(KeyPolicy::default().bounded_by(&cap).rpm, Some(10));
    }

    #[test]
    fn serde_forms() {
        let p: KeyPolicy = serde_json::from_str(
            r#"{"models":"gpt-*,o3","rpm":5,"budget":{"usd":20,"period":"week"}}"#,
        )
        .unwrap();
        assert_eq!(p.models.patterns(), ["gpt-*", "o3"]);
        assert_eq!(p.budget.unwrap().period, Period::Week);
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(
            text,
            r#"{"models":["gpt-*","o3"],"rpm":5,"budget":{"usd":20.0,"period":"week"}}"#
        );
        assert!(serde_json::from_str::<KeyPolicy>(r#"{"budget":{"usd":-1}}"#).is_err());
    }

    fn naive(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => naive(&p[1..], n) || (!n.is_empty() && naive(p, &n[1..])),
            (Some('?'), Some(_)) => naive(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => naive(&p[1..], &n[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_the_naive_definition(p in "[ab*?]{0,8}", n in "[ab]{0,10}") {
            let pc: Vec<char> = p.chars().collect();
            let nc: Vec<char> = n.chars().collect();
            prop_assert_eq!(glob_match(&p, &n), naive(&pc, &nc));
        }
    }
}
