//! The state one tracker's handles share: every `Tracker` clone, the transactions it begins and
//! the relays it starts hold the same `Arc<Shared>`. It lives apart from `tracker.rs` so that a
//! transaction can reach delivery and flags without depending on the tracker that made it
//! (data flows model -> transaction -> outbox -> relay, never back into the entry point).

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::config::Config;
use crate::dispatch::Dispatch;
use crate::flags::{DefinitionsCache, DefinitionsClient, ExposureCache, RemoteFlags, RoutingState};

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) dispatch: Dispatch,
    pub(crate) flags: Option<RemoteFlags>,
    pub(crate) exposures: Mutex<ExposureCache>,
    pub(crate) definitions: Arc<DefinitionsCache>,
    pub(crate) definitions_client: Option<DefinitionsClient>,
    pub(crate) local_evaluation_only: bool,
    pub(crate) poller: Mutex<Option<watch::Sender<bool>>>,
    pub(crate) routing: RoutingState,
}
