//! Effects: what `update` asks the outside world to do. The runners in `runner` carry them out.

use super::downloads::DownloadsEffect;
use super::hub::HubEffect;
use super::library::LibraryEffect;
use super::server::ServerEffect;

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    LoadTheme(String),
    Chat(super::chat::ChatEffect),
    Library(LibraryEffect),
    Hub(HubEffect),
    Downloads(DownloadsEffect),
    Server(ServerEffect),
}
