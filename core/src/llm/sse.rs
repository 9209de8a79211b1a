//! TODO: sse (being written)
