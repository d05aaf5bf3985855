//! Staging the events of a tracked write: the write's own event, `$identify` for an
//! `identify` model, `$groupidentify` for a group model, and the `$groups` every event of the
//! write carries.

use super::codegen::ChangeMask;
use super::traits::TrackedModel;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::event::{Section, StagedEvent, Stager, Stamp, is_blank, properties_object};
use crate::transaction::TrackedTransaction;

/// The events of an inserted row: `INSERT_EVENT` with every tracked property, `$identify`
/// for an `identify` model, `$groupidentify` for a group model; all or, on an error, none.
/// `stamps` are the routing's. The request's anonymous visitor goes to the first `identify`
/// row of the transaction only: one visitor is one person.
pub(super) fn stage_inserted<M: TrackedModel, DB: Backend>(
    model: &M,
    stamps: Vec<Stamp>,
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<()> {
    let anonymous_id = if M::__IDENTIFY {
        tx.anonymous_to_merge()
    } else {
        None
    };
    let merges = anonymous_id.is_some();
    let stamps = with_groups(model, stamps);
    tx.stage_all(|tx| {
        let mut stager = tx.stager_with(model.distinct_id(), M::INSERT_EVENT, stamps)?;
        stage_insert_event(model, &mut stager)?;
        if M::__IDENTIFY {
            stage_identify(model, anonymous_id, &mut stager, Written::Inserted)?;
        }
        stage_group_identify(model, &mut stager, None)
    })?;
    // Also when the row is the visitor (its distinct id is the anonymous id, so nothing was
    // merged): a later row must not take this person in.
    if merges {
        tx.mark_anonymous_merged();
    }
    Ok(())
}

/// Refuses, before any statement is sent, a write of `model` whose events would have no
/// distinct id (not the row's, the transaction's nor the request's): staging them after the
/// statement fails the same way, with the row already in the caller's transaction, which
/// could then only roll back. A `generated` distinct id is known only once the row is
/// stored; staging checks it then.
pub(super) fn require_distinct_id<M: TrackedModel, DB: Backend>(
    model: &M,
    event: &'static str,
    tx: &TrackedTransaction<'_, DB>,
) -> Result<()> {
    if M::__IDENTITY_GENERATED || tx.effective_distinct_id(model.distinct_id()).is_some() {
        return Ok(());
    }
    Err(Error::MissingDistinctId {
        event: event.into(),
    })
}

/// The events of a row written whole: `UPDATE_EVENT` with every tracked property, `$identify`
/// with every person property, `$groupidentify` with every property; all or none.
pub(super) fn stage_updated<M: TrackedModel, DB: Backend>(
    model: &M,
    stamps: Vec<Stamp>,
    tx: &mut TrackedTransaction<'_, DB>,
) -> Result<()> {
    let stamps = with_groups(model, stamps);
    tx.stage_all(|tx| {
        let mut stager = tx.stager_with(model.distinct_id(), M::UPDATE_EVENT, stamps)?;
        let mut writer = stager.event(M::UPDATE_EVENT);
        writer.unset_absent();
        model.__write_properties(&mut writer)?;
        stager.push(writer)?;
        if M::__IDENTIFY && !M::__PERSON.is_empty() {
            stage_identify(model, None, &mut stager, Written::Whole)?;
        }
        stage_group_identify(model, &mut stager, None)
    })
}

/// `stamps` plus `$groups` with the row's `#[tracked(group = "...")]` fields (and the row's
/// own group, for a group model), so every event of the write is attributed to them. A blank
/// key (empty, whitespace or invisible characters) is no group, as `None` is.
pub(crate) fn with_groups<M: TrackedModel>(model: &M, mut stamps: Vec<Stamp>) -> Vec<Stamp> {
    let mut groups = serde_json::Map::new();
    if let (Some(group_type), Some(key)) = (M::__GROUP_TYPE, group_key(model)) {
        groups.insert(group_type.to_owned(), key.into());
    }
    for (group_type, key) in model.__groups() {
        if let Some(key) = key.filter(|key| !is_blank(key)) {
            groups.insert(group_type.to_owned(), key.into());
        }
    }
    if !groups.is_empty() {
        stamps.push(Stamp::new("$groups".into(), &groups.into()));
    }
    stamps
}

/// What a write did to the row, for its `$identify`.
pub(super) enum Written {
    /// Inserted: every person property; an absent one is left out.
    Inserted,
    /// Updated whole: every person property; an absent one is `$unset`.
    Whole,
    /// Updated in these columns: their person properties; an absent one is `$unset`.
    Changed(ChangeMask),
}

/// `$identify` for an `identify` model: its person properties in `$set` / `$set_once` (only
/// the changed ones on a partial update; on an update, those the row no longer has in
/// `$unset`), and `$anon_distinct_id` when the request's anonymous visitor is someone else,
/// which merges that visitor into the person.
pub(super) fn stage_identify<M: TrackedModel>(
    model: &M,
    anonymous_id: Option<String>,
    stager: &mut Stager<'_>,
    written: Written,
) -> Result<()> {
    let mut writer = stager.event("$identify");
    if !matches!(written, Written::Inserted) {
        writer.unset_absent();
    }
    if let Some(anonymous_id) = anonymous_id.filter(|id| id != stager.distinct_id()) {
        writer.dynamic_property(
            Section::Properties,
            "$anon_distinct_id",
            &anonymous_id.into(),
        )?;
    }
    match written {
        Written::Changed(changed) => {
            model.__write_changed_person_properties(changed, &mut writer)?;
        }
        Written::Inserted | Written::Whole => model.__write_person_properties(&mut writer)?,
    }
    stager.push(writer)
}

/// `$groupidentify` for a group model: the row's tracked properties (only the `changed` ones
/// on an update) become the group's. PostHog's SDKs send it as `$<type>_<key>`.
pub(super) fn stage_group_identify<M: TrackedModel>(
    model: &M,
    stager: &mut Stager<'_>,
    changed: Option<ChangeMask>,
) -> Result<()> {
    let (Some(group_type), Some(group_key)) = (M::__GROUP_TYPE, group_key(model)) else {
        return Ok(());
    };
    let group_set = properties_object("$groupidentify", |writer| match changed {
        Some(changed) => model.__write_changed_properties(changed, writer),
        None => model.__write_properties(writer),
    })?;
    let mut writer = stager.event_for("$groupidentify", format!("${group_type}_{group_key}"));
    writer.dynamic_property(Section::Properties, "$group_type", &group_type.into())?;
    writer.dynamic_property(Section::Properties, "$group_key", &group_key.into())?;
    writer.dynamic_property(Section::Properties, "$group_set", &group_set)?;
    stager.push(writer)
}

/// A group model's key, unless it is blank (no group, as `None` is: PostHog ignores a
/// `$groupidentify` with an empty key and lumps whitespace keys into one group).
fn group_key<M: TrackedModel>(model: &M) -> Option<String> {
    model.__group_key().filter(|key| !is_blank(key))
}

pub(super) fn stage_insert_event<M: TrackedModel>(
    model: &M,
    stager: &mut Stager<'_>,
) -> Result<()> {
    let mut writer = stager.event(M::INSERT_EVENT);
    model.__write_properties(&mut writer)?;
    stager.push(writer)
}

/// Stages `model`'s insert event exactly as [`TrackedModel::insert`] does, without a database:
/// the event mapping alone, for benchmarks.
#[doc(hidden)]
pub fn stage_insert_event_detached<M: TrackedModel>(
    model: &M,
    fallback_distinct_id: &str,
    events: &mut Vec<StagedEvent>,
) -> Result<()> {
    let distinct_id = model
        .distinct_id()
        .unwrap_or_else(|| fallback_distinct_id.to_owned());
    stage_insert_event(model, &mut Stager::new(events, distinct_id))
}
