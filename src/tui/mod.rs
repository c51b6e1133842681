//! The real terminal: lifecycle, input events and frame pacing.

pub mod events;
pub mod frame;
pub mod terminal;
