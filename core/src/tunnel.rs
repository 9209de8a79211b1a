//! TODO: tunnel (being written)
