//! TODO: llm (being written)
