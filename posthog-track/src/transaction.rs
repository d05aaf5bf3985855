//! Tracked transactions: a sqlx transaction plus the events its writes staged.

use std::fmt;
use std::ops::{Deref, DerefMut};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::event::{Event, StagedEvent, Stager, Stamp};
use crate::flags::FlagsSnapshot;
use crate::outbox;
use crate::tracker::{Delivery, Tracker};

/// A `sqlx::Transaction` whose tracked writes stage PostHog events.
///
/// The events are written to the outbox by [`commit`](TrackedTransaction::commit), inside the
/// transaction, so the rows and their events commit together. [`rollback`] or dropping the
/// transaction discards both.
///
/// It dereferences to the database connection, so your own sqlx queries run inside the same
/// transaction: `sqlx::query("...").execute(&mut *tx)`.
///
/// [`rollback`]: TrackedTransaction::rollback
pub struct TrackedTransaction<'c, DB: Backend> {
    tx: sqlx::Transaction<'c, DB>,
    staged: Vec<StagedEvent>,
    distinct_id: Option<String>,
    tracker: Tracker,
    /// `$feature/<flag>` properties every event of this transaction carries.
    flag_stamps: Vec<Stamp>,
}

impl<DB: Backend> fmt::Debug for TrackedTransaction<'_, DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedTransaction")
            .field("backend", &DB::DIALECT.name())
            .field("staged", &self.staged)
            .field("distinct_id", &self.distinct_id)
            .finish_non_exhaustive()
    }
}

impl<'c, DB: Backend> TrackedTransaction<'c, DB> {
    pub(crate) fn new(tx: sqlx::Transaction<'c, DB>, tracker: Tracker) -> Self {
        TrackedTransaction {
            tx,
            staged: Vec::new(),
            distinct_id: None,
            tracker,
            flag_stamps: Vec::new(),
        }
    }

    /// The distinct id for events of models without a `distinct_id` field, and for
    /// [`Event`]s without their own.
    pub fn set_distinct_id(&mut self, distinct_id: impl Into<String>) {
        self.distinct_id = Some(distinct_id.into());
    }

    /// The transaction's default distinct id, if set.
    pub fn distinct_id(&self) -> Option<&str> {
        self.distinct_id.as_deref()
    }

    /// The events staged so far, in order. They reach the outbox at commit.
    pub fn staged(&self) -> &[StagedEvent] {
        &self.staged
    }

    /// Stages an event that comes from no table, in this transaction.
    pub fn capture(&mut self, event: Event) -> Result<()> {
        let own = event.distinct_id.clone();
        let name = event.name.clone();
        let mut stager = self.stager_for(own, name, Vec::new())?;
        event.write(&mut stager)
    }

    /// Commits the rows and their events together: with [`Delivery::Outbox`] (the default)
    /// the staged events are written to the outbox inside the transaction and the tracker's
    /// relay is woken; with [`Delivery::AfterCommit`] they go to the in-memory queue once the
    /// commit succeeded.
    pub async fn commit(mut self) -> Result<()> {
        let staged = if self.tracker.records_events() {
            self.tracker
                .apply_before_send(std::mem::take(&mut self.staged))
        } else {
            Vec::new()
        };
        match self.tracker.inner.delivery {
            Delivery::Outbox => {
                if !staged.is_empty() {
                    outbox::write::<DB>(&mut self.tx, &staged).await?;
                }
                self.tx.commit().await?;
                if !staged.is_empty() {
                    self.tracker.inner.wake.notify_one();
                }
            }
            Delivery::AfterCommit => {
                self.tx.commit().await?;
                self.tracker.enqueue(staged).await?;
            }
        }
        Ok(())
    }

    /// Rolls back: no row and no event of this transaction remains.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }

    /// The underlying sqlx transaction, for APIs that want one by name.
    pub fn as_sqlx(&mut self) -> &mut sqlx::Transaction<'c, DB> {
        &mut self.tx
    }

    pub(crate) fn connection(&mut self) -> &mut DB::Connection {
        &mut self.tx
    }

    /// Stamps `$feature/<flag>` with each flag's value on every event staged from now on in
    /// this transaction, so that analyses can split by variant.
    pub fn attach_flags(&mut self, flags: &FlagsSnapshot) {
        for (key, value) in flags.feature_properties() {
            let stamp = Stamp::new(key, &value);
            self.flag_stamps
                .retain(|existing| existing.key != stamp.key);
            self.flag_stamps.push(stamp);
        }
    }

    pub(crate) fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// A stager whose events also carry `extra` (the flag a routed write used).
    pub(crate) fn stager_with(
        &mut self,
        own: Option<String>,
        event: &'static str,
        extra: Vec<Stamp>,
    ) -> Result<Stager<'_>> {
        self.stager_for(own, event.into(), extra)
    }

    fn stager_for(
        &mut self,
        own: Option<String>,
        event: std::borrow::Cow<'static, str>,
        extra: Vec<Stamp>,
    ) -> Result<Stager<'_>> {
        let distinct_id = own
            .or_else(|| self.distinct_id.clone())
            .ok_or(Error::MissingDistinctId { event })?;
        let mut stamps = self.flag_stamps.clone();
        stamps.extend(extra);
        Ok(Stager::new(&mut self.staged, distinct_id).with_stamps(stamps))
    }
}

impl<DB: Backend> Deref for TrackedTransaction<'_, DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl<DB: Backend> DerefMut for TrackedTransaction<'_, DB> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}
