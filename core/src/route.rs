//! TODO: route (being written)
