//! Per-model parameter rules for OpenAI-format upstreams: which token-limit field a model
//! takes, which sampling parameters it refuses, its output cap, whether it takes
//! `reasoning_effort` and at which levels.
//!
//! Owns: the [`OPENAI_MODEL_RULES`] table (prefix of the model id -> [`ModelRule`]; the
//! longest matching prefix wins; a `vendor/` prefix, as OpenRouter writes ids, is ignored)
//! and [`apply_openai_model_rules`], which rewrites a converted Chat Completions request to
//! what that model accepts. To support a new family, add a row. An upstream may override a
//! row for its own models ([`ModelRuleOverride`], `[upstreams.x.model_rules."model"]`:
//! `reasoning`, `max_output_tokens`, `drop`), matched the same way as the table.
//! Must not: touch pass-through bodies (a client that speaks the upstream's protocol gets
//! its bytes forwarded; these rules are for requests Gate builds), do I/O.

use crate::llm::openai as oa;

/// What an OpenAI-format model accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelRule {
    /// Id prefix (`gpt-5`, `o3`, ...); `o3` matches `o3` and `o3-...` only.
    pub prefix: &'static str,
    /// A reasoning family: takes `max_completion_tokens` (refuses `max_tokens`), refuses
    /// `temperature`, `top_p` and `stop`.
    pub reasoning: bool,
    /// `reasoning_effort` levels it takes, lowest first; empty: the field is dropped.
    pub efforts: &'static [&'static str],
    /// Largest output (`max_tokens` / `max_completion_tokens`) it accepts; larger asks are
    /// clamped to it.
    pub max_output_tokens: Option<u32>,
}

const NO_EFFORT: &[&str] = &[];
const O_EFFORTS: &[&str] = &["low", "medium", "high"];
const GPT5_EFFORTS: &[&str] = &["minimal", "low", "medium", "high"];

const fn rule(
    prefix: &'static str,
    reasoning: bool,
    efforts: &'static [&'static str],
    max_output_tokens: Option<u32>,
) -> ModelRule {
    ModelRule {
        prefix,
        reasoning,
        efforts,
        max_output_tokens,
    }
}

/// The table. Models not in it get [`DEFAULT_RULE`]: `max_tokens`, no `reasoning_effort`,
/// no cap (OpenAI-compatible servers of unknown models decide themselves).
pub const OPENAI_MODEL_RULES: &[ModelRule] = &[
    rule("gpt-5-chat", false, NO_EFFORT, Some(16_384)),
    rule("gpt-5", true, GPT5_EFFORTS, Some(128_000)),
    rule("o1-mini", true, NO_EFFORT, Some(65_536)),
    rule("o1-preview", true, NO_EFFORT, Some(32_768)),
    rule("o1", true, O_EFFORTS, Some(100_000)),
    rule("o3", true, O_EFFORTS, Some(100_000)),
    rule("o4-mini", true, O_EFFORTS, Some(100_000)),
    rule("codex-mini", true, O_EFFORTS, Some(100_000)),
    rule("gpt-4.1", false, NO_EFFORT, Some(32_768)),
    rule("gpt-4o", false, NO_EFFORT, Some(16_384)),
    rule("chatgpt-4o", false, NO_EFFORT, Some(16_384)),
    rule("gpt-4-turbo", false, NO_EFFORT, Some(4_096)),
    rule("gpt-4", false, NO_EFFORT, Some(8_192)),
    rule("gpt-3.5-turbo", false, NO_EFFORT, Some(4_096)),
    // Open-weight reasoning models on OpenAI-compatible servers (Groq, vLLM, Ollama): they
    // take `reasoning_effort` and the classic `max_tokens`.
    rule("gpt-oss", false, O_EFFORTS, None),
];

/// The rule of models the table does not know.
pub const DEFAULT_RULE: ModelRule = rule("", false, NO_EFFORT, None);

/// `model` without a `vendor/` prefix (what the family prefixes are matched against).
fn model_id(model: &str) -> &str {
    model.rsplit('/').next().unwrap_or(model)
}

/// Whether `prefix` names the family of the model `id` (a [`model_id`]): `id` is `prefix`
/// or starts with it followed by `-` or `.` (`o3` matches `o3-mini`, not `o30`).
fn prefix_matches(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-') || rest.starts_with('.'))
}

/// The rule for `model` (longest matching prefix, [`DEFAULT_RULE`] when none matches).
pub fn openai_model_rule(model: &str) -> &'static ModelRule {
    // The vendor prefix is cut once, not once per row (this runs for every request).
    let id = model_id(model);
    OPENAI_MODEL_RULES
        .iter()
        .filter(|rule| prefix_matches(rule.prefix, id))
        .max_by_key(|rule| rule.prefix.len())
        .unwrap_or(&DEFAULT_RULE)
}

/// One upstream's own rule for a model family (`[upstreams.x.model_rules."<model>"]`): each
/// set field replaces the table row's; `drop` lists request parameters removed from what
/// Gate sends (after the table's rules).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelRuleOverride {
    /// Whether the family reasons (`max_completion_tokens`, no `temperature`/`top_p`/`stop`).
    pub reasoning: Option<bool>,
    /// Its output cap.
    pub max_output_tokens: Option<u32>,
    /// Chat Completions parameters it refuses ([`DROPPABLE_PARAMS`]).
    pub drop: Vec<String>,
}

/// The Chat Completions parameters an upstream's rule may drop: every top-level field a
/// converted request can carry but `model`, `messages` and `stream`.
pub const DROPPABLE_PARAMS: &[&str] = &[
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream_options",
    "n",
    "user",
    "reasoning_effort",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
];

/// The override in `rules` (keyed by model name) for `model`: the same matching as the
/// table (a `vendor/` prefix ignored, the longest key that is `model` or its family prefix).
pub fn find_override<'a>(
    rules: &'a std::collections::BTreeMap<String, ModelRuleOverride>,
    model: &str,
) -> Option<&'a ModelRuleOverride> {
    if let Some(exact) = rules.get(model) {
        return Some(exact);
    }
    let id = model_id(model);
    rules
        .iter()
        .filter(|(prefix, _)| prefix_matches(prefix, id))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, rule)| rule)
}

/// What an upstream adds to the table for one converted request: its output cap
/// (`[upstreams.x] max_output_tokens`) and its own rule for the model, if any.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamRules<'a> {
    /// Caps every converted request's output, on top of the model's cap.
    pub max_output_tokens: Option<u32>,
    /// The upstream's rule for this model ([`find_override`]).
    pub model: Option<&'a ModelRuleOverride>,
}

impl UpstreamRules<'_> {
    /// Only an output cap.
    pub fn capped(max_output_tokens: Option<u32>) -> UpstreamRules<'static> {
        UpstreamRules {
            max_output_tokens,
            model: None,
        }
    }

    /// A serialized converted request without the parameters the upstream's rule drops
    /// (the bytes unchanged when it drops none).
    pub fn drop_params(&self, body: Vec<u8>) -> Result<Vec<u8>, serde_json::Error> {
        let Some(rule) = self.model.filter(|r| !r.drop.is_empty()) else {
            return Ok(body);
        };
        let mut value: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)?;
        for name in &rule.drop {
            value.remove(name);
        }
        serde_json::to_vec(&value)
    }
}

/// Rewrites a Chat Completions request built by conversion to what its model accepts:
/// - the output limit (`max_completion_tokens`, else `max_tokens`) is clamped to the cap and
///   sent as `max_completion_tokens` to reasoning families, as `max_tokens` to the others;
/// - reasoning families lose `temperature`, `top_p` and `stop` (they refuse them);
/// - `reasoning_effort` is dropped for models that take none, and a level the model does
///   not have becomes the nearest one it has (`minimal` -> `low` on o-series, `xhigh` ->
///   `high`).
pub fn apply_openai_model_rules(request: &mut oa::ChatCompletionRequest) {
    apply_openai_model_rules_capped(request, None);
}

/// [`apply_openai_model_rules`], with an upstream's own output cap
/// (`[upstreams.x] max_output_tokens`) applied on top of the model's.
pub fn apply_openai_model_rules_capped(
    request: &mut oa::ChatCompletionRequest,
    upstream_cap: Option<u32>,
) {
    apply_openai_model_rules_for(request, UpstreamRules::capped(upstream_cap));
}

/// [`apply_openai_model_rules`] with what the upstream adds: its output cap, and its own
/// rule for the model, whose `reasoning` and `max_output_tokens` replace the table row's
/// (`drop` is applied to the serialized request, [`UpstreamRules::drop_params`]).
pub fn apply_openai_model_rules_for(
    request: &mut oa::ChatCompletionRequest,
    upstream: UpstreamRules<'_>,
) {
    let row = openai_model_rule(&request.model);
    let reasoning = upstream
        .model
        .and_then(|o| o.reasoning)
        .unwrap_or(row.reasoning);
    let model_cap = upstream
        .model
        .and_then(|o| o.max_output_tokens)
        .or(row.max_output_tokens);
    let limit = request
        .max_completion_tokens
        .take()
        .or(request.max_tokens.take())
        .map(|limit| match model_cap {
            Some(cap) => limit.min(cap),
            None => limit,
        })
        .map(|limit| match upstream.max_output_tokens {
            Some(cap) => limit.min(cap),
            None => limit,
        });
    let rule = row;
    if reasoning {
        request.max_completion_tokens = limit;
        request.temperature = None;
        request.top_p = None;
        request.stop = None;
    } else {
        request.max_tokens = limit;
    }
    request.reasoning_effort = request
        .reasoning_effort
        .take()
        .and_then(|effort| nearest_effort(rule.efforts, &effort));
}

fn nearest_effort(levels: &[&str], effort: &str) -> Option<String> {
    if levels.is_empty() {
        return None;
    }
    if levels.contains(&effort) {
        return Some(effort.to_owned());
    }
    const ORDER: [&str; 6] = ["none", "minimal", "low", "medium", "high", "xhigh"];
    let rank = |level: &str| ORDER.iter().position(|l| *l == level);
    let wanted = rank(effort)?;
    levels
        .iter()
        .min_by_key(|level| rank(level).map_or(usize::MAX, |r| r.abs_diff(wanted)))
        .map(|level| (*level).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(model: &str) -> oa::ChatCompletionRequest {
        oa::ChatCompletionRequest {
            model: model.into(),
            max_tokens: Some(32_000),
            temperature: Some(0.5),
            top_p: Some(0.9),
            stop: Some(oa::StopSequences::One("x".into())),
            reasoning_effort: Some("minimal".into()),
            ..Default::default()
        }
    }

    #[test]
    fn prefixes_pick_the_longest_and_respect_word_boundaries() {
        assert_eq!(openai_model_rule("gpt-5").prefix, "gpt-5");
        assert_eq!(openai_model_rule("gpt-5.1-codex").prefix, "gpt-5");
        assert_eq!(openai_model_rule("gpt-5-chat-latest").prefix, "gpt-5-chat");
        assert_eq!(openai_model_rule("openai/o3-mini").prefix, "o3");
        assert_eq!(openai_model_rule("o1-mini-2024").prefix, "o1-mini");
        assert_eq!(openai_model_rule("gpt-4o-mini").prefix, "gpt-4o");
        assert_eq!(openai_model_rule("o30").prefix, "");
        assert_eq!(openai_model_rule("llama-3.3-70b").prefix, "");
    }

    #[test]
    fn reasoning_models_get_max_completion_tokens_and_no_sampling() {
        let mut r = request("gpt-5-mini");
        apply_openai_model_rules(&mut r);
        assert_eq!(
            (r.max_tokens, r.max_completion_tokens),
            (None, Some(32_000))
        );
        assert_eq!((r.temperature, r.top_p, r.stop), (None, None, None));
        assert_eq!(r.reasoning_effort.as_deref(), Some("minimal"));

        let mut r = request("o3");
        apply_openai_model_rules(&mut r);
        assert_eq!(r.reasoning_effort.as_deref(), Some("low"));
        let mut r = request("o1-mini");
        apply_openai_model_rules(&mut r);
        assert_eq!(r.reasoning_effort, None);
    }

    #[test]
    fn other_models_keep_max_tokens_clamped_to_their_cap() {
        let mut r = request("gpt-4o");
        apply_openai_model_rules(&mut r);
        assert_eq!(
            (r.max_tokens, r.max_completion_tokens),
            (Some(16_384), None)
        );
        assert_eq!(r.temperature, Some(0.5));
        assert_eq!(r.reasoning_effort, None);
        let mut r = request("my-local-model");
        apply_openai_model_rules(&mut r);
        assert_eq!(r.max_tokens, Some(32_000));
        assert!(r.stop.is_some());
        let mut r = request("my-local-model");
        apply_openai_model_rules_capped(&mut r, Some(8192));
        assert_eq!(r.max_tokens, Some(8192));
        let mut r = request("gpt-oss-20b");
        r.reasoning_effort = Some("xhigh".into());
        apply_openai_model_rules(&mut r);
        assert_eq!(r.reasoning_effort.as_deref(), Some("high"));
    }

    #[test]
    fn upstream_overrides_replace_the_row_and_drop_params() {
        let mut rules = std::collections::BTreeMap::new();
        rules.insert(
            "my-reasoner".to_owned(),
            ModelRuleOverride {
                reasoning: Some(true),
                max_output_tokens: Some(1000),
                drop: vec!["user".into()],
            },
        );
        rules.insert(
            "gpt-4o".to_owned(),
            ModelRuleOverride {
                max_output_tokens: Some(64_000),
                ..Default::default()
            },
        );
        let found = find_override(&rules, "vendor/my-reasoner-2");
        assert_eq!(found.and_then(|o| o.reasoning), Some(true));
        assert!(find_override(&rules, "my-reasoners").is_none());

        let mut r = request("my-reasoner-2");
        r.user = Some("u".into());
        let upstream = UpstreamRules {
            max_output_tokens: None,
            model: found,
        };
        apply_openai_model_rules_for(&mut r, upstream);
        assert_eq!((r.max_tokens, r.max_completion_tokens), (None, Some(1000)));
        assert_eq!((r.temperature, r.stop.is_some()), (None, false));
        let body = upstream
            .drop_params(serde_json::to_vec(&r).unwrap())
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(value.get("user").is_none());
        assert_eq!(value["max_completion_tokens"], 1000);

        // A larger cap than the table's replaces it; the upstream-wide cap still applies.
        let mut r = request("gpt-4o-mini");
        r.max_tokens = Some(50_000);
        let upstream = UpstreamRules {
            max_output_tokens: Some(40_000),
            model: find_override(&rules, "gpt-4o-mini"),
        };
        apply_openai_model_rules_for(&mut r, upstream);
        assert_eq!(r.max_tokens, Some(40_000));
        let unchanged = b"{\"a\":1}".to_vec();
        assert_eq!(upstream.drop_params(unchanged.clone()).unwrap(), unchanged);
    }
}
