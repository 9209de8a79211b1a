//! The mock's control plane: fault-injection rules (`/_mock/behaviour`) and the request
//! recorder (`/_mock/requests`). Owns no provider shapes; see the top of `mock_upstream.rs`
//! for the documented API.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use base64::Engine;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::{common, Mock, MockBody};

/// One fault-injection rule. Matching fields first, then effects.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Behaviour {
    /// Applies only to requests whose body `model` equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Applies only to requests on this path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How many requests the rule applies to (absent: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
    /// Answer with this status and a provider-shaped error body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// With `status`: a `retry-after` header, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Wait this long before the response head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Drop the connection with a RST instead of answering.
    #[serde(default)]
    pub reset: bool,
    /// Pause between stream events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_ms: Option<u64>,
    /// Cut the connection after this many stream events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_after: Option<usize>,
    /// Applies only to requests that offer a tool of this name and whose last turn is not a
    /// tool result; the answer is then a call to that tool (a scripted agent turn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with_tool: Option<String>,
    /// With `with_tool`: the call's arguments (default: made from the tool's schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_arguments: Option<serde_json::Value>,
}

impl Behaviour {
    fn matches(
        &self,
        model: Option<&str>,
        path: &str,
        request: Option<&serde_json::Value>,
    ) -> bool {
        self.model.as_deref().is_none_or(|m| Some(m) == model)
            && self.path.as_deref().is_none_or(|p| p == path)
            && self.with_tool.as_deref().is_none_or(|tool| {
                request.is_some_and(|r| {
                    common::offered_tools(r).iter().any(|t| t == tool)
                        && !common::last_turn_is_tool_result(r)
                })
            })
    }

    /// The tool call this rule scripts, if any.
    pub fn forced_call(&self) -> Option<common::ForcedCall> {
        self.with_tool.as_ref().map(|name| common::ForcedCall {
            name: name.clone(),
            arguments: self.tool_arguments.clone(),
        })
    }
}

struct Rule {
    id: u64,
    behaviour: Behaviour,
    used: u64,
}

/// The registered rules, tried in order.
#[derive(Default)]
pub struct Rules {
    rules: Mutex<Vec<Rule>>,
    next_id: AtomicU64,
}

impl Rules {
    /// The first rule that matches and has uses left; uses one of them.
    pub fn take_match(
        &self,
        model: Option<&str>,
        path: &str,
        request: Option<&serde_json::Value>,
    ) -> Option<Behaviour> {
        let mut rules = self.rules.lock().ok()?;
        if rules.is_empty() {
            return None;
        }
        let rule = rules.iter_mut().find(|r| {
            r.behaviour.matches(model, path, request)
                && r.behaviour.times.is_none_or(|t| r.used < t)
        })?;
        rule.used += 1;
        Some(rule.behaviour.clone())
    }

    fn add(&self, behaviour: Behaviour) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut rules) = self.rules.lock() {
            rules.push(Rule {
                id,
                behaviour,
                used: 0,
            });
        }
        id
    }

    fn list(&self) -> serde_json::Value {
        let rules = match self.rules.lock() {
            Ok(rules) => rules,
            Err(_) => return serde_json::json!([]),
        };
        serde_json::Value::Array(
            rules
                .iter()
                .map(|r| serde_json::json!({"id": r.id, "used": r.used, "rule": r.behaviour}))
                .collect(),
        )
    }

    fn clear(&self) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.clear();
        }
    }
}

/// One received provider request.
#[derive(Serialize)]
struct Record {
    id: u64,
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body_b64: String,
    received_at: f64,
    events_sent_at: Vec<f64>,
    behaviour: Option<Behaviour>,
}

/// Every provider request received, newest last, bounded by `limit`.
pub struct Recorder {
    limit: usize,
    records: Mutex<VecDeque<Record>>,
    next_id: AtomicU64,
}

impl Recorder {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            records: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Stores a request; returns its id (None when recording is off).
    pub fn record(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
        received_at: f64,
        behaviour: Option<&Behaviour>,
    ) -> Option<u64> {
        if self.limit == 0 {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let record = Record {
            id,
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body_b64: base64::engine::general_purpose::STANDARD.encode(body),
            received_at,
            events_sent_at: Vec::new(),
            behaviour: behaviour.cloned(),
        };
        let mut records = self.records.lock().ok()?;
        while records.len() >= self.limit {
            records.pop_front();
        }
        records.push_back(record);
        Some(id)
    }

    /// Notes that a body chunk of request `id` was handed to the connection at `at`.
    pub fn event_sent(&self, id: u64, at: f64) {
        if let Ok(mut records) = self.records.lock() {
            if let Some(record) = records.iter_mut().rev().find(|r| r.id == id) {
                record.events_sent_at.push(at);
            }
        }
    }

    fn list(&self) -> serde_json::Value {
        match self.records.lock() {
            Ok(records) => {
                serde_json::to_value(&*records).unwrap_or_else(|_| serde_json::json!([]))
            }
            Err(_) => serde_json::json!([]),
        }
    }

    fn clear(&self) {
        if let Ok(mut records) = self.records.lock() {
            records.clear();
        }
    }
}

/// Serves `/_mock/...`.
pub fn handle(mock: &Mock, method: &Method, path: &str, body: &Bytes) -> http::Response<MockBody> {
    match (method, path) {
        (&Method::GET, "/_mock/requests") => {
            common::json_response(StatusCode::OK, &mock.recorder.list())
        }
        (&Method::DELETE, "/_mock/requests") => {
            mock.recorder.clear();
            common::json_response(StatusCode::OK, &serde_json::json!({"cleared": true}))
        }
        (&Method::GET, "/_mock/behaviour") => {
            common::json_response(StatusCode::OK, &mock.rules.list())
        }
        (&Method::DELETE, "/_mock/behaviour") => {
            mock.rules.clear();
            common::json_response(StatusCode::OK, &serde_json::json!({"cleared": true}))
        }
        (&Method::POST, "/_mock/behaviour") => match serde_json::from_slice::<Behaviour>(body) {
            Ok(behaviour) => {
                let id = mock.rules.add(behaviour);
                common::json_response(StatusCode::OK, &serde_json::json!({"id": id}))
            }
            Err(e) => plain_error(StatusCode::BAD_REQUEST, &format!("bad behaviour rule: {e}")),
        },
        _ => plain_error(
            StatusCode::NOT_FOUND,
            &format!("no control route {method} {path}"),
        ),
    }
}

/// A control-plane error: `{"error": message}`.
pub fn plain_error(status: StatusCode, message: &str) -> http::Response<MockBody> {
    common::json_response(status, &serde_json::json!({"error": message}))
}
