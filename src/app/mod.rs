//! The app: state, messages, the pure update and the effects it asks for, with the runners
//! that carry them out. The event loop that ties them to the terminal lives in `tuiapp`.

pub mod chat;
pub mod downloads;
pub mod effect;
pub mod hub;
pub mod library;
pub mod msg;
pub mod runner;
pub mod server;
pub mod state;
pub mod update;

#[cfg(test)]
pub(crate) mod tests;
