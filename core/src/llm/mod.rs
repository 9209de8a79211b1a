//! LLM protocol logic: the OpenAI, Anthropic and Gemini wire types that routing and conversion
//! need, an incremental SSE parser and encoder, OpenAI <-> Anthropic conversion, and the
//! gateway's pure request-path decisions (endpoint table, status mapping, header allow-lists,
//! usage extraction, secret scrubbing).
//!
//! Pure data transformation: no I/O, no clocks.

pub mod anthropic;
pub mod convert;
pub mod endpoint;
pub mod errors;
pub mod gemini;
pub mod json_members;
pub mod model_rules;
pub mod openai;
pub mod responses;
pub mod scrub;
pub mod sse;
pub mod usage;
