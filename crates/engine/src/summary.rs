//! Summaries and the funding recommendation (being written).
