//! User stop strings over streamed text: text that might be the start of a stop string is held
//! back until it is known not to be one, and a matched stop string is never emitted.

pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds a piece; returns the text safe to emit and whether a stop string was hit.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Longest suffix of `pending` that is a proper prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in self.pending.char_indices() {
                let suffix = &self.pending[i..];
                if suffix.len() < s.len() && s.starts_with(suffix) {
                    hold = hold.max(suffix.len());
                    break;
                }
            }
        }
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// Text still held back when the generation ends without a stop string.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_partial_and_cuts_at_stop() {
        let mut m = StopMatcher::new(&["END".into()]);
        assert_eq!(m.push("abc E"), ("abc ".into(), false));
        assert_eq!(m.push("N"), ("".into(), false));
        assert_eq!(m.push("D tail"), ("".into(), true));
    }

    #[test]
    fn releases_false_alarm() {
        let mut m = StopMatcher::new(&["\n\n".into()]);
        assert_eq!(m.push("a\n"), ("a".into(), false));
        assert_eq!(m.push("b"), ("\nb".into(), false));
        assert_eq!(m.push("\n"), ("".into(), false));
        assert_eq!(m.flush(), "\n");
    }

    #[test]
    fn no_stops_passes_through() {
        let mut m = StopMatcher::new(&[]);
        assert_eq!(m.push("héllo"), ("héllo".into(), false));
    }

    #[test]
    fn stop_inside_one_piece() {
        let mut m = StopMatcher::new(&["</s>".into(), "User:".into()]);
        assert_eq!(m.push("ok User: hi </s>"), ("ok ".into(), true));
    }
}
