//! TODO: config (being written)
