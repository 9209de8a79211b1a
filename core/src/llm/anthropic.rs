//! TODO: anthropic (being written)
