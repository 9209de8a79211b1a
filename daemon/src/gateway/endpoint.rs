//! The table of LLM endpoints Gate serves: path, client protocol, metrics label, and which
//! upstream protocol serves each one under which path.

use gate_core::route::WireProtocol;

/// The LLM endpoints Gate serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
    CountTokens,
}

impl Endpoint {
    /// The endpoint of a `POST` path.
    pub fn from_path(path: &str) -> Option<Self> {
        Some(match path {
            "/v1/chat/completions" | "/chat/completions" => Endpoint::ChatCompletions,
            "/v1/completions" | "/completions" => Endpoint::Completions,
            "/v1/embeddings" | "/embeddings" => Endpoint::Embeddings,
            "/v1/responses" | "/responses" => Endpoint::Responses,
            "/v1/messages" => Endpoint::Messages,
            "/v1/messages/count_tokens" => Endpoint::CountTokens,
            _ => return None,
        })
    }

    /// The protocol a client of this endpoint speaks.
    pub fn client_protocol(self) -> WireProtocol {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => WireProtocol::Anthropic,
            _ => WireProtocol::OpenAi,
        }
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "count_tokens",
        }
    }

    /// Whether an upstream speaking `protocol` can serve this endpoint (natively or by
    /// conversion).
    pub fn served_by(self, protocol: WireProtocol) -> bool {
        protocol == WireProtocol::OpenAi
            || matches!(
                self,
                Endpoint::Messages | Endpoint::CountTokens | Endpoint::ChatCompletions
            )
    }

    /// The path under the upstream's base URL.
    pub fn upstream_path(self, protocol: WireProtocol) -> &'static str {
        match (protocol, self) {
            (WireProtocol::OpenAi, Endpoint::Completions) => "/completions",
            (WireProtocol::OpenAi, Endpoint::Embeddings) => "/embeddings",
            (WireProtocol::OpenAi, Endpoint::Responses) => "/responses",
            (WireProtocol::OpenAi, _) => "/chat/completions",
            (WireProtocol::Anthropic, Endpoint::CountTokens) => "/v1/messages/count_tokens",
            (WireProtocol::Anthropic, _) => "/v1/messages",
        }
    }
}
