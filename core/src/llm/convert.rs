//! TODO: convert (being written)
