//! The four main panes and the Parameters sidebar.

use super::{empty_state, pane_block};
use crate::app::state::{Pane, State};
use ratatui::layout::Rect;
use ratatui::Frame;

pub fn draw_main(f: &mut Frame, area: Rect, state: &State) {
    let pane = state.main_pane;
    match pane {
        Pane::Chat => return super::chat::draw(f, area, state),
        Pane::Library => return super::library::draw(f, area, state),
        Pane::Hub => return super::hub::draw(f, area, state),
        Pane::Downloads => return super::downloads::draw(f, area, state),
        _ => {}
    }
    let block = pane_block(pane.title(), state.focus == pane, state);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let lines: &[&str] = match pane {
        Pane::Hub => &["Hub search is not part of this build yet."],
        Pane::Downloads => &["No downloads."],
        Pane::Library => &["No models yet."],
        Pane::Chat => &["No model loaded."],
        Pane::Params => &[],
    };
    empty_state(f, inner, lines, state.theme.muted);
}

pub fn draw_params(f: &mut Frame, area: Rect, state: &State) {
    super::params::draw(f, area, state);
}
