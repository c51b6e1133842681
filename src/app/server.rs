//! The embedded API server: a toggle in the TUI and its state in the status bar. The runner
//! that starts and stops it is `runner::server`.

use std::net::SocketAddr;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ServerStatus {
    #[default]
    Off,
    Starting,
    On {
        addr: SocketAddr,
        requests: u64,
    },
    Stopping,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ServerMsg {
    Started {
        addr: SocketAddr,
        warning: Option<String>,
    },
    Failed(String),
    Stopped,
    Requests(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEffect {
    Start,
    Stop,
}

/// The toggle key: start when off, stop when on; ignored while changing.
pub fn toggle(status: &mut ServerStatus) -> Vec<ServerEffect> {
    match status {
        ServerStatus::Off => {
            *status = ServerStatus::Starting;
            vec![ServerEffect::Start]
        }
        ServerStatus::On { .. } => {
            *status = ServerStatus::Stopping;
            vec![ServerEffect::Stop]
        }
        ServerStatus::Starting | ServerStatus::Stopping => vec![],
    }
}

/// Folds a server message into the status; returns a notice for the status bar, if any.
pub fn update(status: &mut ServerStatus, msg: ServerMsg) -> Option<(bool, String)> {
    match msg {
        ServerMsg::Started { addr, warning } => {
            *status = ServerStatus::On { addr, requests: 0 };
            Some(match warning {
                Some(w) => (true, w),
                None => (false, format!("API server on http://{addr}")),
            })
        }
        ServerMsg::Failed(e) => {
            *status = ServerStatus::Off;
            Some((true, format!("API server: {e}")))
        }
        ServerMsg::Stopped => {
            *status = ServerStatus::Off;
            Some((false, "API server stopped".into()))
        }
        ServerMsg::Requests(n) => {
            if let ServerStatus::On { requests, .. } = status {
                *requests = n;
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toggle_starts_stops_and_ignores_presses_while_changing() {
        let mut s = ServerStatus::Off;
        assert_eq!(toggle(&mut s), vec![ServerEffect::Start]);
        assert!(
            toggle(&mut s).is_empty(),
            "a second press while starting does nothing"
        );
        let addr: SocketAddr = "127.0.0.1:11435".parse().unwrap();
        let notice = update(
            &mut s,
            ServerMsg::Started {
                addr,
                warning: None,
            },
        );
        assert_eq!(s, ServerStatus::On { addr, requests: 0 });
        assert!(notice.unwrap().1.contains("127.0.0.1:11435"));
        update(&mut s, ServerMsg::Requests(7));
        assert_eq!(s, ServerStatus::On { addr, requests: 7 });
        assert_eq!(toggle(&mut s), vec![ServerEffect::Stop]);
        update(&mut s, ServerMsg::Stopped);
        assert_eq!(s, ServerStatus::Off);
        assert_eq!(toggle(&mut s), vec![ServerEffect::Start]);
        let (err, text) = update(&mut s, ServerMsg::Failed("port 11435 is in use".into())).unwrap();
        assert!(err && text.contains("in use"));
        assert_eq!(s, ServerStatus::Off);
    }
}
