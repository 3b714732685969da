//! One `LISTEN` session per provider: releases `NOTIFY` a channel, and waiters on that
//! channel try again at once instead of sleeping out a poll interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Client};

use super::{Tls, BACKEND};
use crate::backend::kit::runtime::background;
use crate::backend::kit::wait::Wake;
use crate::{Error, Result};

/// The listening session and who waits on which channel.
pub(crate) struct Listener {
    config: tokio_postgres::Config,
    tls: Tls,
    /// The session, opened on first use and again after it ends.
    session: tokio::sync::Mutex<Option<Arc<Client>>>,
    channels: Mutex<HashMap<String, Channel>>,
}

struct Channel {
    subscribers: usize,
    notifications: watch::Sender<u64>,
}

/// A waiter's subscription to one channel; dropping it unsubscribes.
pub(crate) struct Subscription {
    listener: Arc<Listener>,
    channel: String,
    notifications: watch::Receiver<u64>,
}

/// Wakes on a notification on the channel, or when the listening session ended (so the waiter
/// re-checks rather than waits in vain).
impl Wake for Subscription {
    fn arm(&mut self) {
        self.notifications.arm();
    }

    fn woken(&mut self) -> impl std::future::Future<Output = ()> + Send {
        self.notifications.woken()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channels = self.listener.channels();
        if let Some(channel) = channels.get_mut(&self.channel) {
            channel.subscribers -= 1;
            if channel.subscribers == 0 {
                channels.remove(&self.channel);
                // Stay LISTENing: it costs the server nothing, and a later subscriber to
                // the same channel need not wait for a round trip.
            }
        }
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("channels", &self.channels().len())
            .finish()
    }
}

impl Listener {
    pub(crate) fn new(config: tokio_postgres::Config, tls: Tls) -> Self {
        Listener {
            config,
            tls,
            session: tokio::sync::Mutex::new(None),
            channels: Mutex::default(),
        }
    }

    fn channels(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        self.channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Subscribes to `channel` (an identifier of ours: lower-case letters, digits and `_`).
    pub(crate) async fn subscribe(self: &Arc<Self>, channel: &str) -> Result<Subscription> {
        let notifications = {
            let mut channels = self.channels();
            let entry = channels
                .entry(channel.to_owned())
                .or_insert_with(|| Channel {
                    subscribers: 0,
                    notifications: watch::channel(0).0,
                });
            entry.subscribers += 1;
            entry.notifications.subscribe()
        };
        let subscription = Subscription {
            listener: self.clone(),
            channel: channel.to_owned(),
            notifications,
        };
        let client = self.session().await?;
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .await
            .map_err(|error| Error::backend(BACKEND, "LISTEN failed", error))?;
        Ok(subscription)
    }

    async fn session(self: &Arc<Self>) -> Result<Arc<Client>> {
        let mut session = self.session.lock().await;
        if let Some(client) = session.as_ref().filter(|client| !client.is_closed()) {
            return Ok(client.clone());
        }
        // On tollgate's own runtime, socket and driver both: no caller's runtime (one that
        // stalls, or shuts down) holds up or ends the notifications of every waiter.
        let (config, tls, weak) = (self.config.clone(), self.tls.clone(), Arc::downgrade(self));
        let client = background()?
            .spawn(async move {
                let unreachable =
                    |error| Error::backend(BACKEND, "cannot connect the listener", error);
                let client = match tls {
                    Tls::Plain => {
                        let (client, connection) = config
                            .connect(tokio_postgres::NoTls)
                            .await
                            .map_err(unreachable)?;
                        tokio::spawn(deliver(connection, weak));
                        client
                    }
                    Tls::Native(connector) => {
                        let (client, connection) =
                            config.connect(connector).await.map_err(unreachable)?;
                        tokio::spawn(deliver(connection, weak));
                        client
                    }
                };
                Ok::<_, Error>(client)
            })
            .await
            .map_err(|error| Error::backend(BACKEND, "the listener's connect stopped", error))??;
        let client = Arc::new(client);
        // Channels subscribed while there was no session.
        let channels: Vec<String> = self.channels().keys().cloned().collect();
        for channel in channels {
            let _ = client.batch_execute(&format!("LISTEN {channel}")).await;
        }
        *session = Some(client.clone());
        Ok(client)
    }

    fn wake(&self, channel: Option<&str>) {
        let channels = self.channels();
        for (name, entry) in channels.iter() {
            if channel.is_none_or(|channel| channel == name) {
                entry
                    .notifications
                    .send_modify(|count| *count = count.wrapping_add(1));
            }
        }
    }
}

/// Drives the listening session and hands notifications to their channels' waiters.
async fn deliver<S, T>(mut connection: tokio_postgres::Connection<S, T>, listener: Weak<Listener>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
        let Some(listener) = listener.upgrade() else {
            return;
        };
        match message {
            Some(Ok(AsyncMessage::Notification(notification))) => {
                listener.wake(Some(notification.channel()));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                // Whatever was missed, waiters re-check now.
                listener.wake(None);
                return;
            }
        }
    }
}
