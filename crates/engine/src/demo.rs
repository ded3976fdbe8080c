//! The demo organization (written below).
