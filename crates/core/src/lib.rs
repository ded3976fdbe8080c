//! The pure domain of commcredits. No I/O, no async, no clock reads: time is passed in.

pub mod catalog;
pub mod charging;
pub mod error;
pub mod funds;
pub mod money;
pub mod period;
pub mod phone;
pub mod pools;
pub mod rating;
pub mod recharge;

pub use error::{Error, ErrorCode, Result};
pub use jiff::Timestamp;
