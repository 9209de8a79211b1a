//! LLM protocol logic: the OpenAI and Anthropic wire types that routing and conversion
//! need, an incremental SSE parser and encoder, and OpenAI <-> Anthropic conversion.
//!
//! Pure data transformation: no I/O, no clocks.

pub mod anthropic;
pub mod convert;
pub mod errors;
pub mod openai;
pub mod sse;
