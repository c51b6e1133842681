//! crossterm events → `Msg`.

use crate::app::msg::Msg;
use crossterm::event::{Event, EventStream, KeyEventKind};
use futures::{Stream, StreamExt};

/// Maps one terminal event; key releases and focus changes are dropped.
pub fn to_msg(ev: Event) -> Option<Msg> {
    match ev {
        Event::Key(k) if k.kind != KeyEventKind::Release => Some(Msg::Key(k)),
        Event::Paste(s) => Some(Msg::Paste(s)),
        Event::Mouse(m) => Some(Msg::Mouse(m)),
        Event::Resize(w, h) => Some(Msg::Resize(w, h)),
        _ => None,
    }
}

/// The terminal's events as `Msg`s. A read error ends the stream (the terminal is gone).
pub fn stream() -> impl Stream<Item = Msg> + Unpin {
    EventStream::new()
        .take_while(|r| futures::future::ready(r.is_ok()))
        .filter_map(|r| futures::future::ready(r.ok().and_then(to_msg)))
}
