//! The provider's one ZooKeeper session, shared by all its holds: opened on first use, on
//! tollgate's own runtime (so that no caller's runtime, stalled or shut down, takes the session
//! and every hold on it with it), and opened again after it expired.
//!
//! Every hold is registered with the session it was taken on. The session's watcher task
//! fires the loss signal of every hold at once when the session expires, is closed, or fails
//! authentication, and when the connection stays down for a whole session timeout (the server
//! has then expired the session, or is about to). After a reconnect within the timeout, each
//! hold's node is checked again, since deletions while disconnected may have gone unseen.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use zookeeper_client as zk;

use super::{error, failure, Settings};
use crate::backend::kit::runtime::background;
use crate::{LossNotifier, Result};

/// A session that was opened, and the holds taken on it.
pub(crate) struct Live {
    pub(crate) client: zk::Client,
    holds: Mutex<HashMap<String, LossNotifier>>,
    /// The primitives' paths this session has a persistent recursive watch on (set, or on
    /// its way): every deletion of a node under one reaches [`Live::lose`].
    watched: Mutex<HashSet<String>>,
    /// Set once the session is over: expired, closed, failed, or down for its timeout.
    over: AtomicBool,
}

impl Live {
    fn holds(&self) -> MutexGuard<'_, HashMap<String, LossNotifier>> {
        self.holds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the session can no longer hold anything.
    pub(crate) fn is_over(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }

    /// Starts the persistent recursive watch on `dir` if this session has none yet: the
    /// request goes out now, before whatever the caller sends next (a create), so the watch
    /// sees every later deletion under `dir`. The future returned waits for the reply and
    /// hands the watcher to [`Live::follow`]; it does nothing when the watch was set or on its
    /// way already.
    pub(crate) fn watch_dir<'a>(
        self: &'a Arc<Self>,
        dir: &'a str,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        let watching = {
            let mut watched = self
                .watched
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Sent under the lock, so that a create of another acquire that found the path
            // watched goes out after it.
            watched.insert(dir.to_owned()).then(|| {
                self.client
                    .watch(dir, zk::AddWatchMode::PersistentRecursive)
            })
        };
        async move {
            if let Some(watching) = watching {
                self.follow(dir, watching.await);
            }
        }
    }

    /// Follows the watch on `dir` (from [`Live::watch_dir`]), or forgets it if it could not be
    /// set (the next acquire tries again).
    fn follow(
        self: &Arc<Self>,
        dir: &str,
        watcher: std::result::Result<zk::PersistentWatcher, zk::Error>,
    ) {
        let Ok(mut watcher) = watcher else {
            self.watched
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(dir);
            return;
        };
        let live = Arc::downgrade(self);
        let follow = async move {
            loop {
                let event = watcher.changed().await;
                match event.event_type {
                    zk::EventType::NodeDeleted => match live.upgrade() {
                        Some(live) => live.lose(&event.path),
                        None => return,
                    },
                    // No more events come after the session's end.
                    zk::EventType::Session if event.session_state.is_terminated() => return,
                    _ => {}
                }
                if live.strong_count() == 0 {
                    return;
                }
            }
        };
        if let Ok(runtime) = background() {
            drop(runtime.spawn(follow));
        }
    }

    /// Registers the hold on `node`, whose loss `notifier` reports. Its path's persistent
    /// watch sees the node's deletion by anyone but this hold's release, which fires the loss.
    pub(crate) fn register(&self, node: String, notifier: LossNotifier) {
        if self.is_over() {
            notifier.notify_lost();
            return;
        }
        self.holds().insert(node, notifier);
    }

    /// Takes the hold on `node` out of the session's care (it is being released): its
    /// node's deletion is no loss.
    pub(crate) fn unregister(&self, node: &str) {
        self.holds().remove(node);
    }

    /// Fires the loss of the hold on `node`, if it is still registered.
    fn lose(&self, node: &str) {
        if let Some(notifier) = self.holds().remove(node) {
            tracing::warn!(
                node,
                "zookeeper: a held node was deleted or its session ended"
            );
            notifier.notify_lost();
        }
    }

    /// Ends the session's holds: every one is lost.
    fn end(&self) {
        self.over.store(true, Ordering::Release);
        for (_, notifier) in self.holds().drain() {
            notifier.notify_lost();
        }
    }

    /// After a reconnect: every hold whose node is gone is lost (all asked at once).
    async fn check_holds(&self) {
        let nodes: Vec<String> = self.holds().keys().cloned().collect();
        let checks = nodes.iter().map(|node| self.client.check_stat(node));
        for (node, check) in nodes
            .iter()
            .zip(futures_util::future::join_all(checks).await)
        {
            if let Ok(None) = check {
                self.lose(node);
            }
        }
    }
}

/// The provider's session slot.
pub(crate) struct Session {
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
}

impl Session {
    pub(crate) fn new() -> Self {
        Session {
            live: tokio::sync::Mutex::new(None),
        }
    }

    /// The session, opened (on tollgate's runtime) if there is none or the last one is over.
    ///
    /// # Cancel safety
    /// Cancel-safe: an open whose caller stops waiting finishes on tollgate's runtime, and
    /// the session it opened is closed again (nothing was created on it); the next caller
    /// opens another.
    pub(crate) async fn live(&self, settings: &Arc<Settings>) -> Result<Arc<Live>> {
        let mut slot = self.live.lock().await;
        if let Some(live) = &*slot {
            if !live.is_over() {
                return Ok(live.clone());
            }
        }
        let runtime = background()?;
        let opening = runtime.spawn(open(settings.clone()));
        let live = opening
            .await
            .map_err(|join| failure(format!("opening the session failed: {join}")))??;
        *slot = Some(live.clone());
        Ok(live)
    }

    /// Forgets `live` (it is over), so that the next caller opens a new session.
    pub(crate) async fn forget(&self, live: &Arc<Live>) {
        live.end();
        let mut slot = self.live.lock().await;
        if slot
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, live))
        {
            *slot = None;
        }
    }
}

/// Opens a session and starts its watcher task (on the current runtime: tollgate's).
async fn open(settings: Arc<Settings>) -> Result<Arc<Live>> {
    let mut connector = zk::Client::connector()
        .with_session_timeout(settings.session_timeout)
        .with_connection_timeout(settings.connect_timeout);
    if let Some((user, password)) = &settings.credentials {
        connector = connector.with_auth("digest", format!("{user}:{password}").as_bytes());
    }
    let connecting = tokio::time::timeout(
        settings.connect_timeout + settings.connect_timeout / 2,
        connector.connect(&settings.hosts),
    );
    let client = match connecting.await {
        Ok(Ok(client)) => client,
        Ok(Err(failure)) => return Err(error("cannot open a session", failure)),
        Err(elapsed) => {
            return Err(crate::Error::Backend {
                backend: super::BACKEND,
                message: format!(
                    "cannot open a session: no server of {} answered within {:?}",
                    settings.hosts, settings.connect_timeout
                ),
                source: Some(Box::new(elapsed)),
            })
        }
    };
    let live = Arc::new(Live {
        holds: Mutex::default(),
        watched: Mutex::default(),
        over: AtomicBool::new(false),
        client,
    });
    let session_timeout = live.client.session_timeout();
    tokio::spawn(watch_state(Arc::downgrade(&live), session_timeout));
    Ok(live)
}

/// Follows the session's state until it is over (or nobody holds the session any more).
async fn watch_state(live: std::sync::Weak<Live>, session_timeout: Duration) {
    let Some(mut states) = live.upgrade().map(|live| live.client.state_watcher()) else {
        return;
    };
    loop {
        let state = states.changed().await;
        let Some(current) = live.upgrade() else {
            return;
        };
        match state {
            zk::SessionState::Disconnected => {
                drop(current);
                // Down for a whole session timeout: the server has expired the session (or
                // is about to), and with it every hold.
                let back = tokio::time::timeout(session_timeout, async {
                    loop {
                        match states.changed().await {
                            zk::SessionState::SyncConnected
                            | zk::SessionState::ConnectedReadOnly => return None,
                            zk::SessionState::Disconnected => {}
                            terminal => return Some(terminal),
                        }
                    }
                })
                .await;
                let Some(current) = live.upgrade() else {
                    return;
                };
                match back {
                    Ok(None) => current.check_holds().await,
                    Ok(Some(_)) | Err(_) => {
                        tracing::warn!("zookeeper: the session ended; its holds are lost");
                        current.end();
                        return;
                    }
                }
            }
            state if state.is_terminated() => {
                tracing::warn!(?state, "zookeeper: the session ended; its holds are lost");
                current.end();
                return;
            }
            _ => {}
        }
    }
}
