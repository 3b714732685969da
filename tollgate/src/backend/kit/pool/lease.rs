//! The two guards an operation holds on a session: a [`Reservation`] while it works, a
//! [`Held`] for a handle (see the [pool docs](super)).

use std::sync::Arc;

use super::{Pool, Pooled, Protocol, Use};
use crate::LossSignal;

/// Keys claimed on a session for one owner; what both guards share.
pub(super) struct Lease<P: Protocol> {
    pub(super) pool: Arc<Pool<P>>,
    pub(super) session: Arc<Pooled<P>>,
    pub(super) keys: Vec<P::Key>,
    pub(super) usage: Use,
}

impl<P: Protocol> Lease<P> {
    /// Gives the claims back and the session to the pool.
    fn end(&mut self) {
        let idle = {
            let mut claims = self.session.claims();
            claims.forget(&self.keys, self.usage);
            claims.is_idle()
        };
        self.keys.clear();
        self.usage = Use::Shared;
        if idle {
            self.pool.keep_idle_within_limit(&self.session);
        }
        self.pool.notify_change();
    }
}

/// Keys claimed on a session for an operation under way (see the module docs). Dropping it
/// gives the claims back and the session to the pool.
#[must_use = "dropping a reservation gives its claims back at once"]
pub(crate) struct Reservation<P: Protocol> {
    // `None` only once turned into a `Held`.
    lease: Option<Lease<P>>,
}

impl<P: Protocol> Reservation<P> {
    pub(super) fn new(lease: Lease<P>) -> Self {
        Reservation { lease: Some(lease) }
    }

    fn lease(&self) -> &Lease<P> {
        self.lease
            .as_ref()
            .expect("a reservation is used until it is held")
    }

    fn lease_mut(&mut self) -> &mut Lease<P> {
        self.lease
            .as_mut()
            .expect("a reservation is used until it is held")
    }

    pub(crate) fn session(&self) -> &Arc<Pooled<P>> {
        &self.lease().session
    }

    pub(crate) fn pool(&self) -> &Arc<Pool<P>> {
        &self.lease().pool
    }

    /// Claims one more key for this operation, if the session has not claimed it yet.
    pub(crate) fn claim(&mut self, key: P::Key) -> bool {
        let lease = self.lease_mut();
        let mut claims = lease.session.claims();
        if claims.keys.contains_key(&key) {
            return false;
        }
        claims.keys.insert(key.clone(), None);
        drop(claims);
        lease.keys.push(key);
        true
    }

    /// Gives back the claims of `keys`, which the server does not hold here.
    pub(crate) fn unclaim(&mut self, keys: &[P::Key]) {
        let lease = self.lease_mut();
        let mut claims = lease.session.claims();
        for key in keys {
            claims.keys.remove(key);
        }
        drop(claims);
        lease.keys.retain(|key| !keys.contains(key));
    }

    /// Moves the claims of `keys` to a reservation of their own, on the same session.
    pub(crate) fn split_off(&mut self, keys: &[P::Key]) -> Reservation<P> {
        let lease = self.lease_mut();
        lease.keys.retain(|key| !keys.contains(key));
        Reservation {
            lease: Some(Lease {
                pool: lease.pool.clone(),
                session: lease.session.clone(),
                keys: keys.to_vec(),
                usage: Use::Shared,
            }),
        }
    }

    /// Takes the session out of use: see [`Pool::retire`].
    pub(crate) fn retire(&self) {
        let lease = self.lease();
        lease.pool.retire(&lease.session);
    }

    /// The keys are held now, for a handle known by `primary`, whose loss signal this is.
    /// A dedicated session stays dedicated to the hold when `usage` says so.
    pub(crate) fn into_held(mut self, primary: &P::Key, usage: Use) -> (Held<P>, LossSignal) {
        let (notifier, signal) = LossSignal::detectable();
        let mut lease = self.lease.take().expect("a reservation is held once");
        let undedicate = lease.usage == Use::Dedicated && usage != Use::Dedicated;
        {
            let mut claims = lease.session.claims();
            if lease.session.is_broken() {
                notifier.notify_lost();
            }
            claims.keys.insert(primary.clone(), Some(notifier));
            if undedicate {
                claims.dedicated = false;
            }
        }
        if undedicate {
            lease.usage = Use::Shared;
            lease.pool.notify_change();
        }
        (Held { lease: Some(lease) }, signal)
    }
}

impl<P: Protocol> Drop for Reservation<P> {
    fn drop(&mut self) {
        if let Some(lease) = &mut self.lease {
            lease.end();
        }
    }
}

/// Keys held on a session for a handle (see the module docs).
#[must_use = "dropping a held lease retires its session"]
pub(crate) struct Held<P: Protocol> {
    // `None` only once given back by `released`.
    lease: Option<Lease<P>>,
}

impl<P: Protocol> Held<P> {
    pub(crate) fn session(&self) -> &Arc<Pooled<P>> {
        let lease = self.lease.as_ref();
        &lease.expect("a held lease is given back once").session
    }

    /// The release found the server no longer holding the hold's keys on this session
    /// (taken away behind our back): fires the hold's loss signal, so that its holder learns
    /// that it ran without the hold for a while, however short.
    pub(crate) fn found_lost(&self) {
        let lease = self
            .lease
            .as_ref()
            .expect("a held lease is given back once");
        for key in &lease.keys {
            if let Some(Some(notifier)) = lease.session.claims().keys.get(key) {
                notifier.notify_lost();
            }
        }
    }

    /// The server has released the keys here (or the session ended): the claims go, and the
    /// session is the pool's again.
    pub(crate) fn released(mut self) {
        if let Some(mut lease) = self.lease.take() {
            lease.end();
        }
    }
}

impl<P: Protocol> Drop for Held<P> {
    fn drop(&mut self) {
        // A release that did not run to the end: whether the server still holds the keys is
        // unknown, and the session must not take them again for someone else.
        if let Some(lease) = self.lease.take() {
            lease.pool.retire(&lease.session);
        }
    }
}
