//! TODO: openai (being written)
