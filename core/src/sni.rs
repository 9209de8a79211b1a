//! TODO: sni (being written)
