//! Events: how a write becomes the exact JSON that PostHog's `/batch/` endpoint receives.
//!
//! Each event is serialised once, when it is staged, into the wire form
//! `{"uuid", "event", "distinct_id", "timestamp", "properties"}`. Its uuid and timestamp are
//! fixed at that moment and never change, so every retry resends identical bytes and PostHog's
//! uuid deduplication absorbs duplicates. The relay splices these payloads into a batch without
//! parsing them again.

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::error::{Error, Result};

/// The `$lib` property of every event.
pub const LIB_NAME: &str = "posthog-track";
/// The `$lib_version` property of every event.
pub const LIB_VERSION: &str = env!("CARGO_PKG_VERSION");

/// An event serialised for PostHog, waiting in a transaction or in the outbox.
#[derive(Clone, PartialEq, Eq)]
pub struct StagedEvent {
    /// PostHog deduplicates on this; it never changes once staged.
    pub uuid: Uuid,
    /// Event name, e.g. `user_signed_up`.
    pub event: Cow<'static, str>,
    /// Whom the event is about.
    pub distinct_id: String,
    /// When the write happened, RFC 3339 in UTC with a `Z`.
    pub timestamp: String,
    /// The complete event as JSON, exactly as it goes into a `/batch/` request.
    pub payload: String,
}

impl fmt::Debug for StagedEvent {
    // The payload is user data; showing it raw in Debug output makes logs unreadable, so show
    // the identifying fields and the payload size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StagedEvent")
            .field("uuid", &self.uuid)
            .field("event", &self.event)
            .field("distinct_id", &self.distinct_id)
            .field("timestamp", &self.timestamp)
            .field("payload_bytes", &self.payload.len())
            .finish()
    }
}

impl StagedEvent {
    /// The payload parsed back into JSON, for tests and inspection.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// Formats a timestamp the way PostHog expects: RFC 3339, UTC, microseconds, `Z`.
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Writes one event's JSON. Sections are written in order: properties, then `$set`, then
/// `$set_once`; generated code always calls them in that order.
///
/// Property keys arrive pre-escaped from the derive (`"\"email\":"`), so the only runtime work
/// per property is serialising its value.
#[derive(Debug)]
pub struct EventWriter {
    buf: Vec<u8>,
    event: Cow<'static, str>,
    /// A timestamp given for this event, overriding the write's.
    timestamp: Option<String>,
    /// A distinct id given for this event, overriding the write's (`$groupidentify`).
    distinct_id: Option<String>,
    section: Section,
    first_in_section: bool,
    /// The event's v1 `options` object, written after its properties when set.
    options: Option<String>,
    /// Properties whose values the database fills in: written as [`splice_marker`]s for SQL to
    /// replace (see `model::fold`).
    splice: &'static [(&'static str, usize)],
    /// Whether an absent person value clears the property (`$unset`): on an update, the
    /// person loses what the row no longer has. An insert leaves it out instead, so that it
    /// does not erase what the visitor's person got before the row existed.
    unset_absent: bool,
    /// The person properties to `$unset`.
    unset: Vec<&'static str>,
    /// The write's stamps (the request's `$session_id` and properties, `$feature/<flag>`),
    /// written first, right after `$lib_version`, each as `,"key":value`.
    stamps: Arc<[Stamp]>,
    /// Where the stamps begin in `buf`.
    stamps_at: usize,
    /// Which stamps are in `buf`: not one a later stamp of its name replaced, nor one the
    /// event's own property of its name took out.
    stamped: Vec<bool>,
}

/// Stands for the value of column `index` in an event rendered before its row is inserted.
/// Byte 0x01 never appears raw in JSON that serde writes (it escapes control characters in
/// strings, and keys are escaped at compile time), so a marker cannot collide with data.
pub(crate) fn splice_marker(index: usize) -> String {
    let mut marker = Vec::with_capacity(8);
    write_splice_marker(&mut marker, index);
    String::from_utf8_lossy(&marker).into_owned()
}

fn write_splice_marker(buf: &mut Vec<u8>, index: usize) {
    // Writing to a Vec cannot fail.
    let _ = write!(buf, "\u{1}{index}\u{1}");
}

/// Where a property goes in an event: the event's own properties, `$set` or `$set_once`.
/// Sections are written in this order (the discriminants order them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The event's own properties.
    Properties,
    /// `$set`: person properties as they are now.
    Set,
    /// `$set_once`: person properties kept from their first value.
    SetOnce,
}

impl EventWriter {
    fn begin(
        event: Cow<'static, str>,
        distinct_id: &str,
        uuid: Uuid,
        timestamp: &str,
        stamps: Arc<[Stamp]>,
    ) -> Self {
        let mut buf = Vec::with_capacity(384);
        buf.extend_from_slice(b"{\"uuid\":\"");
        buf.extend_from_slice(
            uuid.hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        );
        buf.extend_from_slice(b"\",\"event\":");
        write_json_str(&mut buf, &event);
        buf.extend_from_slice(b",\"distinct_id\":");
        write_json_str(&mut buf, distinct_id);
        buf.extend_from_slice(b",\"timestamp\":\"");
        buf.extend_from_slice(timestamp.as_bytes());
        buf.extend_from_slice(b"\",\"properties\":{\"$lib\":\"");
        buf.extend_from_slice(LIB_NAME.as_bytes());
        buf.extend_from_slice(b"\",\"$lib_version\":\"");
        buf.extend_from_slice(LIB_VERSION.as_bytes());
        buf.push(b'"');
        let stamps_at = buf.len();
        // Of two stamps by one name the later wins (flags attached after the context, a routed
        // write's flag after both): a key twice in JSON is read as either value.
        let stamped: Vec<bool> = stamps
            .iter()
            .enumerate()
            .map(|(n, stamp)| !stamps[n + 1..].iter().any(|later| later.key == stamp.key))
            .collect();
        for (stamp, _) in stamps.iter().zip(&stamped).filter(|(_, in_buf)| **in_buf) {
            buf.push(b',');
            buf.extend_from_slice(stamp.json.as_bytes());
        }
        EventWriter {
            buf,
            event,
            timestamp: None,
            distinct_id: None,
            section: Section::Properties,
            first_in_section: false,
            options: None,
            splice: &[],
            unset_absent: false,
            unset: Vec::new(),
            stamps,
            stamps_at,
            stamped,
        }
    }

    /// Takes out the stamp named `key`, if there is one: the event's own property of that
    /// name wins. The stamps stay where they were written otherwise, so that events without
    /// such a clash are byte for byte what earlier versions wrote (a backfill's uuids hash
    /// them).
    fn unstamp(&mut self, key: &str) {
        let mut at = self.stamps_at;
        for (stamp, in_buf) in self.stamps.iter().zip(self.stamped.iter_mut()) {
            if !*in_buf {
                continue;
            }
            let len = 1 + stamp.json.len();
            if stamp.key == key {
                self.buf.drain(at..at + len);
                *in_buf = false;
                return;
            }
            at += len;
        }
    }

    /// Sets the event's `options` object (left out when nothing in it is set).
    pub(crate) fn options(&mut self, options: &EventOptions) {
        self.options = (!options.is_empty())
            .then(|| serde_json::to_string(options).ok())
            .flatten();
    }

    /// Writes an event property. `key_json` is the JSON-escaped key followed by a colon.
    pub fn property<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        key_json: &'static str,
        value: &T,
    ) -> Result<()> {
        self.enter(Section::Properties);
        if !self.stamps.is_empty() {
            self.unstamp(name);
        }
        self.entry(name, key_json, value)
    }

    /// Writes a person property to `section` (`$set` or `$set_once`). An absent value (`None`,
    /// or anything serialised as `null`) is never set to null: it is left out, or, for `$set`
    /// on an update ([`unset_absent`](EventWriter::unset_absent)), sent in `$unset`, so that a
    /// column cleared to NULL clears the person's property. A `$set` with nothing in it is not
    /// written at all.
    pub fn person<T: Serialize + ?Sized>(
        &mut self,
        section: Section,
        name: &'static str,
        key_json: &'static str,
        value: &T,
    ) -> Result<()> {
        let (start, previous_section, previous_first) =
            (self.buf.len(), self.section, self.first_in_section);
        self.enter(section);
        let value_start = self.buf.len() + usize::from(!self.first_in_section) + key_json.len();
        self.entry(name, key_json, value)?;
        if self.buf.get(value_start..) == Some(b"null".as_slice()) {
            self.buf.truncate(start);
            self.section = previous_section;
            self.first_in_section = previous_first;
            if self.unset_absent && section == Section::Set && !self.unset.contains(&name) {
                self.unset.push(name);
            }
        }
        Ok(())
    }

    /// Sends the absent `$set` person values written from now on as `$unset` (an update's
    /// events: see [`person`](EventWriter::person)).
    pub(crate) fn unset_absent(&mut self) {
        self.unset_absent = true;
    }

    /// Writes a property whose key is only known at run time (untyped events).
    pub(crate) fn dynamic_property(
        &mut self,
        section: Section,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<()> {
        self.enter(section);
        if section == Section::Properties && !self.stamps.is_empty() {
            self.unstamp(key);
        }
        if !std::mem::take(&mut self.first_in_section) {
            self.buf.push(b',');
        }
        write_json_str(&mut self.buf, key);
        self.buf.push(b':');
        serde_json::to_writer(&mut self.buf, value).map_err(|source| Error::Serialize {
            event: self.event.clone(),
            property: Cow::Owned(key.to_owned()),
            source,
        })
    }

    fn enter(&mut self, section: Section) {
        if self.section == section {
            return;
        }
        if self.section != Section::Properties {
            self.buf.push(b'}');
        }
        self.buf.extend_from_slice(match section {
            Section::Set => b",\"$set\":{",
            Section::SetOnce => b",\"$set_once\":{",
            // Generated code never goes back to plain properties; closing the nested object
            // above keeps the JSON valid even if a hand-written caller does.
            Section::Properties => b"",
        });
        self.section = section;
        self.first_in_section = section != Section::Properties;
    }

    fn entry<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        key_json: &'static str,
        value: &T,
    ) -> Result<()> {
        if !std::mem::take(&mut self.first_in_section) {
            self.buf.push(b',');
        }
        self.buf.extend_from_slice(key_json.as_bytes());
        if let Some(&(_, index)) = self.splice.iter().find(|(spliced, _)| *spliced == name) {
            write_splice_marker(&mut self.buf, index);
            return Ok(());
        }
        serde_json::to_writer(&mut self.buf, value).map_err(|source| Error::Serialize {
            event: self.event.clone(),
            property: Cow::Borrowed(name),
            source,
        })
    }

    fn finish(mut self) -> String {
        if self.section != Section::Properties {
            self.buf.push(b'}');
        }
        if !self.unset.is_empty() {
            self.buf.extend_from_slice(b",\"$unset\":[");
            for (n, name) in self.unset.iter().enumerate() {
                if n > 0 {
                    self.buf.push(b',');
                }
                write_json_str(&mut self.buf, name);
            }
            self.buf.push(b']');
        }
        self.buf.push(b'}');
        if let Some(options) = &self.options {
            self.buf.extend_from_slice(b",\"options\":");
            self.buf.extend_from_slice(options.as_bytes());
        }
        self.buf.push(b'}');
        // Every byte written is either ASCII punctuation, a `&str`, or serde_json output, all of
        // which are UTF-8; a failure here would be a bug in this file, so degrade, don't panic.
        String::from_utf8(self.buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

fn write_json_str(buf: &mut Vec<u8>, s: &str) {
    // serde_json cannot fail to serialise a str into a Vec.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// Builds the events of one tracked write: they share a distinct id and a timestamp, and each
/// gets its own UUIDv7.
#[derive(Debug)]
pub struct Stager<'a> {
    events: &'a mut Vec<StagedEvent>,
    distinct_id: String,
    timestamp: String,
    stamps: Arc<[Stamp]>,
    shape: EventShape,
    /// `events.len()` when the stager was made: the first event it stages is replay's first.
    base: usize,
}

/// How a stager renders events, when not the usual way: for writing a row and its events in
/// one statement (`model::fold`), the events are rendered once before the row exists, with the
/// database's values left as markers, and once after, from the row as stored, with the same
/// uuids and timestamp so that the two renderings can be compared byte for byte.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventShape {
    /// `(property, column index)` written as [`splice_marker`]s.
    pub(crate) splice: &'static [(&'static str, usize)],
    /// The timestamp and, in order, the uuids of the events to render again.
    pub(crate) replay: Option<(String, Vec<Uuid>)>,
    /// A rendering that is taken back and staged again: not counted as staged.
    pub(crate) rehearsal: bool,
}

/// A property every event of a write carries (`$feature/<flag>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) key: String,
    /// `"key":value`, ready to splice into the event.
    json: String,
}

impl Stamp {
    pub(crate) fn new(key: String, value: &serde_json::Value) -> Self {
        let mut json = Vec::with_capacity(key.len() + 16);
        write_json_str(&mut json, &key);
        json.push(b':');
        // serde_json cannot fail to serialise a Value into a Vec.
        let _ = serde_json::to_writer(&mut json, value);
        Stamp {
            key,
            json: String::from_utf8_lossy(&json).into_owned(),
        }
    }
}

impl<'a> Stager<'a> {
    pub(crate) fn new(events: &'a mut Vec<StagedEvent>, distinct_id: String) -> Self {
        let base = events.len();
        Stager {
            events,
            distinct_id,
            timestamp: format_timestamp(Utc::now()),
            stamps: Arc::new([]),
            shape: EventShape::default(),
            base,
        }
    }

    /// Renders events the way `shape` says (see [`EventShape`]).
    pub(crate) fn with_shape(mut self, shape: EventShape) -> Self {
        if let Some((timestamp, _)) = &shape.replay {
            self.timestamp.clone_from(timestamp);
        }
        self.shape = shape;
        self
    }

    /// The uuid of the next event: the replayed one, or a new UUIDv7.
    fn next_uuid(&self) -> Uuid {
        self.shape
            .replay
            .as_ref()
            .and_then(|(_, uuids)| uuids.get(self.events.len().checked_sub(self.base)?))
            .copied()
            .unwrap_or_else(Uuid::now_v7)
    }

    fn begin(&self, name: Cow<'static, str>, distinct_id: &str, timestamp: &str) -> EventWriter {
        let mut writer = EventWriter::begin(
            name,
            distinct_id,
            self.next_uuid(),
            timestamp,
            self.stamps.clone(),
        );
        writer.splice = self.shape.splice;
        writer
    }

    /// Every event of this write will carry these properties too.
    pub(crate) fn with_stamps(mut self, stamps: Vec<Stamp>) -> Self {
        self.stamps = stamps.into();
        self
    }

    /// Starts an event of this write.
    pub fn event(&self, name: impl Into<Cow<'static, str>>) -> EventWriter {
        self.begin(name.into(), &self.distinct_id, &self.timestamp)
    }

    /// Starts an event that happened at `timestamp` rather than at this write.
    pub(crate) fn event_at(&self, name: Cow<'static, str>, timestamp: String) -> EventWriter {
        let mut writer = self.begin(name, &self.distinct_id, &timestamp);
        writer.timestamp = Some(timestamp);
        writer
    }

    /// Whom the write's events are about.
    pub(crate) fn distinct_id(&self) -> &str {
        &self.distinct_id
    }

    /// Starts an event of this write about another distinct id (a group's `$groupidentify`).
    /// It is not the request person's, so it joins no session: PostHog's sessions take their
    /// distinct id from their latest event, and this one shares its write's timestamp.
    pub(crate) fn event_for(&self, name: &'static str, distinct_id: String) -> EventWriter {
        let stamps: Arc<[Stamp]> = self
            .stamps
            .iter()
            .filter(|stamp| stamp.key != "$session_id")
            .cloned()
            .collect();
        let mut writer = EventWriter::begin(
            name.into(),
            &distinct_id,
            self.next_uuid(),
            &self.timestamp,
            stamps,
        );
        writer.splice = self.shape.splice;
        writer.distinct_id = Some(distinct_id);
        writer
    }

    /// Finishes an event and stages it. Refuses an event larger than PostHog accepts, so that
    /// a write can never commit an event that could not be delivered.
    pub fn push(&mut self, writer: EventWriter) -> Result<()> {
        let uuid = uuid_of(&writer.buf);
        let event = writer.event.clone();
        let timestamp = writer.timestamp.clone();
        let distinct_id = writer.distinct_id.clone();
        let payload = writer.finish();
        // A rehearsal's size is not the event's (markers stand for values): the event is
        // checked when it is rendered for real.
        if payload.len() > crate::client::wire::MAX_EVENT_BYTES && !self.shape.rehearsal {
            return Err(Error::EventTooLarge {
                event,
                bytes: payload.len(),
            });
        }
        self.events.push(StagedEvent {
            uuid,
            event,
            distinct_id: distinct_id.unwrap_or_else(|| self.distinct_id.clone()),
            timestamp: timestamp.unwrap_or_else(|| self.timestamp.clone()),
            payload,
        });
        if !self.shape.rehearsal {
            crate::metrics::staged();
        }
        Ok(())
    }
}

/// The plain properties a `fill` writes (no `$lib`, `$set` or stamps), as a JSON object: the
/// `$group_set` of a group model's `$groupidentify`.
pub(crate) fn properties_object(
    event: &'static str,
    fill: impl FnOnce(&mut EventWriter) -> Result<()>,
) -> Result<serde_json::Value> {
    let mut writer = EventWriter::begin(event.into(), "", Uuid::nil(), "", Arc::new([]));
    fill(&mut writer)?;
    let mut payload: serde_json::Value =
        serde_json::from_str(&writer.finish()).map_err(|source| Error::Serialize {
            event: event.into(),
            property: Cow::Borrowed("$group_set"),
            source,
        })?;
    let mut properties = match payload.get_mut("properties").map(serde_json::Value::take) {
        Some(serde_json::Value::Object(properties)) => properties,
        _ => serde_json::Map::new(),
    };
    for reserved in ["$lib", "$lib_version", "$set", "$set_once"] {
        properties.remove(reserved);
    }
    Ok(serde_json::Value::Object(properties))
}

// The uuid is the first field of every payload (`{"uuid":"<36 chars>"`), so read it back
// rather than carrying it alongside the writer.
fn uuid_of(buf: &[u8]) -> Uuid {
    buf.get(9..45)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| Uuid::parse_str(s).ok())
        .unwrap_or_default()
}

/// Whether `text` (an id, an event name, a group type or key) is blank, no id or name at
/// all: empty, or nothing but whitespace and invisible characters (zero-width spaces and
/// joiners, a byte order mark). PostHog's capture takes a whitespace or zero-width id as a
/// person of its own (and refuses to merge it), and files an event under a name no one can see,
/// type or query, so such an id is treated as absent, as PostHog's SDKs treat an empty one, and
/// such a name is refused.
pub(crate) fn is_blank(text: &str) -> bool {
    text.chars().all(|c| c.is_whitespace() || is_invisible(c))
}

/// Unicode's default-ignorable code points (Default_Ignorable_Code_Point in
/// DerivedCoreProperties.txt), as inclusive ranges: format characters and fillers that render
/// as nothing. The derive's own table, written out by its hidden macro, so that a name it
/// refuses at compile time is one staging refuses too.
const INVISIBLE: &[(char, char)] = posthog_derive::__invisible_ranges!();

fn is_invisible(c: char) -> bool {
    // Names and ids are mostly ASCII, and no ASCII character is in the table.
    !c.is_ascii()
        && INVISIBLE
            .iter()
            .any(|&(first, last)| (first..=last).contains(&c))
}

/// Whether PostHog refuses to merge `id` (`$identify`'s `$anon_distinct_id`, `$create_alias`):
/// a blank id, or one of the ids its ingestion takes for a bug or a mistake (`"undefined"`,
/// `"null"`, `"[object Object]"`, `"0"`, `"anonymous"`, ...), bare or in quotes. PostHog
/// ingests other events for such an id as one person, and refuses merges with it (with an
/// ingestion warning).
pub(crate) fn is_illegal_merge_id(id: &str) -> bool {
    const ANY_CASE: [&str; 10] = [
        "anonymous",
        "guest",
        "distinctid",
        "distinct_id",
        "id",
        "not_authenticated",
        "email",
        "undefined",
        "true",
        "false",
    ];
    const EXACT: [&str; 7] = [
        "[object Object]",
        "NaN",
        "None",
        "none",
        "null",
        "0",
        "undefined",
    ];
    if is_blank(id) {
        return true;
    }
    let bare = [('"', '"'), ('\'', '\'')]
        .iter()
        .find_map(|&(open, close)| id.strip_prefix(open)?.strip_suffix(close))
        .unwrap_or(id);
    let lower = bare.to_lowercase();
    ANY_CASE.contains(&lower.as_str()) || EXACT.contains(&bare)
}

/// Turns a model's `distinct_id` field into the string PostHog receives.
///
/// Implemented for strings, integers, [`Uuid`] and `Option` of those (`None` falls back to the
/// transaction's distinct id).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a PostHog distinct id or group key",
    label = "the field named by `distinct_id` or `group_key`, or marked `group`, has this type",
    note = "use a field of type String, an integer, uuid::Uuid, or an Option of one of these"
)]
pub trait ToDistinctId {
    /// The distinct id, or `None` to use the transaction's.
    fn to_distinct_id(&self) -> Option<String>;
}

impl ToDistinctId for str {
    fn to_distinct_id(&self) -> Option<String> {
        Some(self.to_owned())
    }
}
impl ToDistinctId for String {
    fn to_distinct_id(&self) -> Option<String> {
        Some(self.clone())
    }
}
impl ToDistinctId for Uuid {
    fn to_distinct_id(&self) -> Option<String> {
        Some(self.hyphenated().to_string())
    }
}
impl<T: ToDistinctId + ?Sized> ToDistinctId for &T {
    fn to_distinct_id(&self) -> Option<String> {
        (**self).to_distinct_id()
    }
}
impl<T: ToDistinctId> ToDistinctId for Option<T> {
    fn to_distinct_id(&self) -> Option<String> {
        self.as_ref().and_then(ToDistinctId::to_distinct_id)
    }
}
macro_rules! distinct_id_via_display {
    ($($t:ty),*) => {$(
        impl ToDistinctId for $t {
            fn to_distinct_id(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}
distinct_id_via_display!(
    i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize
);

/// PostHog's per-event overrides, sent as the event's `options` object (v1) and carrying only
/// what was set, so PostHog's defaults apply to the rest. They are also sent as the properties
/// v1's capture makes of them (`$process_person_profile`, `$cookieless_mode`,
/// `$ignore_sent_at`, `$product_tour_id`), which is how v0 reads them; as in v1's capture,
/// they win over a property of the same name. A `before_send` hook sees and may set or change
/// them as the event's `options` key; the properties follow what it returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct EventOptions {
    /// Process the event in cookieless mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookieless_mode: Option<bool>,
    /// Keep the event's timestamp as sent: no correction for the sender's clock skew.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable_skew_correction: Option<bool>,
    /// `false`: do not create or update a person profile for this event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_person_profile: Option<bool>,
    /// The product tour the event belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_tour_id: Option<String>,
}

impl EventOptions {
    /// No override: PostHog's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `cookieless_mode`.
    pub fn cookieless_mode(mut self, on: bool) -> Self {
        self.cookieless_mode = Some(on);
        self
    }

    /// Sets `disable_skew_correction`.
    pub fn disable_skew_correction(mut self, on: bool) -> Self {
        self.disable_skew_correction = Some(on);
        self
    }

    /// Sets `process_person_profile`.
    pub fn process_person_profile(mut self, on: bool) -> Self {
        self.process_person_profile = Some(on);
        self
    }

    /// Sets `product_tour_id`.
    pub fn product_tour_id(mut self, id: impl Into<String>) -> Self {
        self.product_tour_id = Some(id.into());
        self
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == EventOptions::default()
    }

    /// The properties v1's capture makes of these options (`$process_person_profile`,
    /// `$cookieless_mode`, `$ignore_sent_at`, `$product_tour_id`): what v0, which ignores the
    /// `options` object, reads instead. v1's capture writes them after the event's own
    /// properties, so they win over a property of the same name.
    pub(crate) fn as_properties(&self) -> Vec<(&'static str, serde_json::Value)> {
        let mut properties = Vec::new();
        if let Some(on) = self.process_person_profile {
            properties.push(("$process_person_profile", on.into()));
        }
        if let Some(on) = self.cookieless_mode {
            properties.push(("$cookieless_mode", on.into()));
        }
        if let Some(on) = self.disable_skew_correction {
            properties.push(("$ignore_sent_at", on.into()));
        }
        if let Some(id) = &self.product_tour_id {
            properties.push(("$product_tour_id", id.as_str().into()));
        }
        properties
    }
}

/// What [`EventOptions::as_properties`] makes of an event's `options` object, for an event a
/// `before_send` hook returned (it may have set or changed them): written into its properties,
/// over any of the same name, so that v0 reads what v1 does.
pub(crate) fn options_to_properties(event: &mut serde_json::Value) {
    let Some(options) = event.get("options").and_then(serde_json::Value::as_object) else {
        return;
    };
    let mut found = Vec::new();
    for (option, property) in [
        ("process_person_profile", "$process_person_profile"),
        ("cookieless_mode", "$cookieless_mode"),
        ("disable_skew_correction", "$ignore_sent_at"),
    ] {
        if let Some(on) = options.get(option).and_then(serde_json::Value::as_bool) {
            found.push((property, on.into()));
        }
    }
    if let Some(id) = options
        .get("product_tour_id")
        .and_then(serde_json::Value::as_str)
    {
        found.push(("$product_tour_id", id.into()));
    }
    if let Some(properties) = event
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        for (key, value) in found {
            properties.insert(key.to_owned(), value);
        }
    }
}

/// Adds `"$geoip_disable":true` to a staged event's properties, in place. Payloads this crate
/// stages open their properties with `"properties":{"$lib"`, found by a scan (a quote inside a
/// string value is escaped, so the pattern cannot match inside one).
pub(crate) fn disable_geoip(event: &mut StagedEvent) {
    const OPEN: &str = "\"properties\":{";
    if let Some(at) = event.payload.find(OPEN) {
        event
            .payload
            .insert_str(at + OPEN.len(), "\"$geoip_disable\":true,");
    }
}

/// An event that comes from no table: built by hand and staged in a transaction with
/// [`TrackedTransaction::capture`](crate::TrackedTransaction::capture).
#[derive(Debug, Clone)]
pub struct Event {
    pub(crate) name: Cow<'static, str>,
    pub(crate) distinct_id: Option<String>,
    pub(crate) properties: Vec<(Section, String, serde_json::Value)>,
    pub(crate) timestamp: Option<DateTime<Utc>>,
    pub(crate) unset: Vec<serde_json::Value>,
    pub(crate) options: EventOptions,
}

impl Event {
    /// An event with this name. Without [`Event::distinct_id`] it takes the transaction's.
    /// A name that is empty, whitespace or invisible characters (a zero-width space) is
    /// refused where the event is staged (`capture`) with [`Error::InvalidEventName`].
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Event {
            name: name.into(),
            distinct_id: None,
            properties: Vec::new(),
            timestamp: None,
            unset: Vec::new(),
            options: EventOptions::default(),
        }
    }

    /// PostHog's per-event overrides (v1's `options` object); see [`EventOptions`].
    pub fn options(mut self, options: EventOptions) -> Self {
        self.options = options;
        self
    }

    /// When the event happened, if not now (any offset; it is sent in UTC).
    pub fn timestamp<Tz: chrono::TimeZone>(mut self, at: DateTime<Tz>) -> Self {
        self.timestamp = Some(at.with_timezone(&Utc));
        self
    }

    /// Person properties for [`Tracker::identify`](crate::Tracker::identify): add them with
    /// `set`, `set_once` and `unset`.
    pub fn person() -> Self {
        Event::new("$identify")
    }

    /// The same event under another name (`$identify` for a person update, say).
    pub(crate) fn renamed(mut self, name: &'static str) -> Self {
        self.name = name.into();
        self
    }

    /// Whom the event is about.
    pub fn distinct_id(mut self, distinct_id: impl Into<String>) -> Self {
        self.distinct_id = Some(distinct_id.into());
        self
    }

    /// Adds an event property.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.properties
            .push((Section::Properties, key.into(), value.into()));
        self
    }

    /// Adds a `$set` person property.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.properties
            .push((Section::Set, key.into(), value.into()));
        self
    }

    /// Adds a `$set_once` person property.
    pub fn set_once(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.properties
            .push((Section::SetOnce, key.into(), value.into()));
        self
    }

    /// Adds `$feature/<flag>` for every flag of `flags`, so the event can be split by variant.
    pub fn flags(mut self, flags: &crate::flags::FlagsSnapshot) -> Self {
        for (key, value) in flags.feature_properties() {
            self = self.property(key, value);
        }
        self
    }

    /// Removes a person property (`$unset`).
    pub fn unset(mut self, key: impl Into<String>) -> Self {
        self.unset.push(serde_json::Value::String(key.into()));
        self
    }

    pub(crate) fn write(self, stager: &mut Stager<'_>) -> Result<()> {
        // Blank as an id is: nothing PostHog can file the event under.
        if is_blank(&self.name) {
            return Err(Error::InvalidEventName { event: self.name });
        }
        let mut properties = self.properties;
        // The options as properties too, so that they mean the same on v0 (which reads only
        // properties) as on v1, where they win over a property of the same name.
        for (key, value) in self.options.as_properties() {
            properties.retain(|(section, name, _)| *section != Section::Properties || name != key);
            properties.push((Section::Properties, key.to_owned(), value));
        }
        if !self.unset.is_empty() {
            properties.push((
                Section::Properties,
                "$unset".to_owned(),
                serde_json::Value::Array(self.unset),
            ));
        }
        let mut writer = match self.timestamp {
            Some(at) => stager.event_at(self.name, format_timestamp(at)),
            None => stager.event(self.name),
        };
        writer.options(&self.options);
        // A key given twice in a section is sent once, with its last value (`.property("plan",
        // "free").property("plan", "pro")` means "pro"): a JSON key twice is read as either.
        let last: Vec<bool> = {
            let mut seen = std::collections::HashSet::with_capacity(properties.len());
            let mut last: Vec<bool> = properties
                .iter()
                .rev()
                .map(|(section, key, _)| seen.insert((*section as u8, key.as_str())))
                .collect();
            last.reverse();
            last
        };
        let mut last = last.into_iter();
        properties.retain(|_| last.next().unwrap_or(true));
        // Sections must be written in order; a stable sort keeps each section's own order.
        properties.sort_by_key(|(section, _, _)| *section as u8);
        for (section, key, value) in &properties {
            writer.dynamic_property(*section, key, value)?;
        }
        stager.push(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each property key appears once in an event: an event's own property wins over a
    /// stamp (the request's property, an attached flag) of the same name, the later of two
    /// stamps wins, and a key given twice keeps its last value.
    #[test]
    fn a_property_key_is_written_once() {
        let mut events = Vec::new();
        let stamps = vec![
            Stamp::new("utm_source".into(), &serde_json::json!(42)),
            Stamp::new("$feature/beta".into(), &serde_json::json!("control")),
            Stamp::new("$session_id".into(), &serde_json::json!("s1")),
            Stamp::new("$feature/beta".into(), &serde_json::json!("test")),
        ];
        let mut stager = Stager::new(&mut events, "d1".to_owned()).with_stamps(stamps);
        Event::new("e")
            .property("plan", "free")
            .property("utm_source", "newsletter")
            .property("plan", "pro")
            .set("plan", "team")
            .write(&mut stager)
            .unwrap();
        let payload = &events[0].payload;
        for (key, count) in [
            ("\"plan\":", 2),
            ("\"utm_source\":", 1),
            ("\"$feature/beta\":", 1),
            ("\"$session_id\":", 1),
        ] {
            assert_eq!(payload.matches(key).count(), count, "{key} in {payload}");
        }
        let json: serde_json::Value = serde_json::from_str(payload).unwrap();
        let properties = &json["properties"];
        assert_eq!(properties["plan"], "pro", "{payload}");
        assert_eq!(properties["$set"]["plan"], "team", "{payload}");
        assert_eq!(properties["utm_source"], "newsletter", "{payload}");
        assert_eq!(properties["$feature/beta"], "test", "{payload}");
        assert_eq!(properties["$session_id"], "s1", "{payload}");
    }

    /// The table comes from the derive's macro: every range's first and last characters are
    /// blank, the characters just outside the table's ends are not.
    #[test]
    fn the_derive_s_invisible_characters_are_blank() {
        assert_eq!(INVISIBLE.len(), 17);
        for &(first, last) in INVISIBLE {
            assert!(is_blank(&format!("{first}{last} ")), "{first:?}..={last:?}");
        }
        for visible in ["\u{00AC}", "\u{00AE}", "\u{E1000}", "a\u{200B}"] {
            assert!(!is_blank(visible), "{visible:?}");
        }
    }

    /// The exact bytes of an event that mixes the sections: properties first, then `$set`,
    /// then `$set_once`, each section in the order its properties were added.
    #[test]
    fn untyped_event_sections_are_written_in_order() {
        let mut events = Vec::new();
        let mut stager = Stager::new(&mut events, "d1".to_owned());
        Event::new("signed_up")
            .set_once("first", 1)
            .property("plan", "pro")
            .set("email", "a@example.com")
            .unset("old")
            .property("n", 2)
            .set_once("second", true)
            .write(&mut stager)
            .unwrap();
        let event = &events[0];
        let expected = format!(
            "{{\"uuid\":\"{}\",\"event\":\"signed_up\",\"distinct_id\":\"d1\",\"timestamp\":\"{}\",\
             \"properties\":{{\"$lib\":\"{LIB_NAME}\",\"$lib_version\":\"{LIB_VERSION}\",\
             \"plan\":\"pro\",\"n\":2,\"$unset\":[\"old\"],\
             \"$set\":{{\"email\":\"a@example.com\"}},\
             \"$set_once\":{{\"first\":1,\"second\":true}}}}}}",
            event.uuid, event.timestamp
        );
        assert_eq!(event.payload, expected);
    }

    /// Typed writers leave an absent person property out (an insert) or send it as `$unset`
    /// from `$set` (an update), and leave no empty `$set` behind.
    #[test]
    fn absent_person_properties_leave_no_section() {
        let mut events = Vec::new();
        let mut stager = Stager::new(&mut events, "d1".to_owned());
        let mut writer = stager.event("e");
        writer
            .person(Section::Set, "b", "\"b\":", &None::<u8>)
            .unwrap();
        stager.push(writer).unwrap();
        let inserted = &events[0].payload;
        assert!(
            !inserted.contains("$set") && !inserted.contains("$unset"),
            "{inserted}"
        );
        let mut stager = Stager::new(&mut events, "d1".to_owned());
        let mut writer = stager.event("e");
        writer.unset_absent();
        writer.property("a", "\"a\":", &1).unwrap();
        writer
            .person(Section::Set, "b", "\"b\":", &None::<u8>)
            .unwrap();
        writer
            .person(Section::SetOnce, "c", "\"c\":", &"x")
            .unwrap();
        writer
            .person(Section::SetOnce, "d", "\"d\":", &None::<u8>)
            .unwrap();
        stager.push(writer).unwrap();
        let payload = &events[1].payload;
        assert!(
            payload.ends_with(",\"a\":1,\"$set_once\":{\"c\":\"x\"},\"$unset\":[\"b\"]}}"),
            "{payload}"
        );
        let json: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert_eq!(json["properties"]["$unset"], serde_json::json!(["b"]));
    }
}
