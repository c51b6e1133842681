//! Frame pacing: many redraw requests inside one interval become one frame.

use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct FrameClock {
    interval: Duration,
    last: Option<Instant>,
}

impl FrameClock {
    pub fn new(fps: u32) -> FrameClock {
        FrameClock {
            interval: Duration::from_secs(1) / fps.max(1),
            last: None,
        }
    }

    /// Whether a frame may be drawn now.
    pub fn due(&self, now: Instant) -> bool {
        self.last.is_none_or(|l| now >= l + self.interval)
    }

    /// The earliest moment the next frame may be drawn.
    pub fn next(&self, now: Instant) -> Instant {
        self.last.map_or(now, |l| (l + self.interval).max(now))
    }

    pub fn drawn(&mut self, now: Instant) {
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_frame_is_immediate_then_paced() {
        let mut c = FrameClock::new(50);
        let t0 = Instant::now();
        assert!(c.due(t0));
        c.drawn(t0);
        assert!(!c.due(t0 + Duration::from_millis(5)));
        assert_eq!(c.next(t0), t0 + Duration::from_millis(20));
        assert!(c.due(t0 + Duration::from_millis(20)));
    }
}
