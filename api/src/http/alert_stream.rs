//! `GET /api/v1/alerts/stream`: alert events as Server-Sent Events.
//!
//! Each event is
//!
//! ```text
//! id: <alert event id>
//! event: <kind: opened, updated, severity_raised, reactivated, cleared, escalated,
//!         acknowledged, assigned, commented, resolved>
//! data: <the event as JSON, as in GET /api/v1/alerts/{id}'s `events`>
//! ```
//!
//! **Where it starts.** With a `Last-Event-ID` header (what a browser's `EventSource` sends
//! when it reconnects), or else an `?after=N` query, the stream first sends every event with
//! an id above it, oldest first, then continues live; the header wins over the query, since a
//! reconnecting `EventSource` repeats the original URL. `after=0` replays the whole history.
//! With neither, the stream starts at the newest event at the moment of connecting and sends
//! only what comes after.
//!
//! **Ordering.** Events are sent in increasing id order, each once. The store makes event
//! ids visible in increasing order (event writes are serialised, across nodes too: a
//! database lock), so "every event with an id above the last one sent" never skips one that
//! commits later. The stream reads from the store only: it wakes when an event is written by
//! this process or, on PostgreSQL, by any node on the same database
//! ([`store::Store::alert_feed`], fed by `NOTIFY`), and at least every second (a lost
//! notification, e.g. while the store's listener reconnects), reads the events after the
//! last one sent in pages of [`PAGE`], and sends them. Event ids come from the store, so a
//! client may resume on any node with the last id it got.
//!
//! **Failures.** A store error does not end the stream: it is logged, nothing is sent, and
//! the read is retried at the next tick. A comment (`:`) is sent every 15 s when idle, so
//! proxies keep the connection and clients notice a dead one.
//!
//! The stream's reads are audited once, at connect (`alerts.stream`, with the start id).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

use super::AppState;
use super::alerts::EventOut;
use super::auth::Caller;
use super::error::{ApiError, rejection};

/// Events read from the store at a time.
pub(crate) const PAGE: i64 = 500;
/// How often the store is read when no event was announced.
pub(crate) const POLL: Duration = Duration::from_secs(1);
/// How often an idle stream sends a keep-alive comment.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamQuery {
    after: Option<i64>,
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("Last-Event-ID must be an event id".into()))?
        .trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<i64>().map(Some).map_err(|_| {
        ApiError::BadRequest(format!("Last-Event-ID must be an event id; got {text:?}"))
    })
}

/// The stream's route (`/alerts/stream`, under `/api/v1`).
pub(super) fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/alerts/stream", axum::routing::get(stream))
}

async fn stream(
    State(state): State<AppState>,
    shutdown: Option<axum::Extension<crate::Shutdown>>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query.map_err(rejection)?;
    let resume = last_event_id(&headers)?.or(query.after);
    if resume.is_some_and(|a| a < 0) {
        return Err(ApiError::BadRequest(
            "the event id to resume after must not be negative".into(),
        ));
    }
    let after = match resume {
        Some(after) => after,
        None => state.store.last_alert_event_id().await?,
    };
    state
        .audit(
            &caller,
            "alerts.stream",
            format!("alert_events after={after}"),
        )
        .await?;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + POLL, POLL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let cursor = Cursor {
        store: state.store.clone(),
        cots: caller.cot_scope(),
        last_sent: after,
        pending: VecDeque::new(),
        feed: Some(state.store.alert_feed()),
        tick,
    };
    let events = futures_util::stream::unfold(cursor, |mut cursor| async move {
        let event = cursor.next().await;
        Some((Ok(event), cursor))
    });
    // At shutdown the stream ends, so the node stops at once and the console reconnects.
    let events = futures_util::StreamExt::take_until(events, async move {
        match shutdown {
            Some(axum::Extension(crate::Shutdown(cancel))) => cancel.cancelled_owned().await,
            None => std::future::pending().await,
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// Where one stream is: the last id sent and the events read but not yet sent.
struct Cursor {
    store: store::Store,
    cots: Option<Vec<i64>>,
    last_sent: i64,
    pending: VecDeque<store::AlertEvent>,
    /// `None` once the store's feed is gone (then only the tick wakes the stream).
    feed: Option<watch::Receiver<i64>>,
    tick: Interval,
}

impl Cursor {
    /// The next event to send; waits as long as there is none.
    async fn next(&mut self) -> Event {
        loop {
            if let Some(e) = self.pending.pop_front() {
                self.last_sent = e.id;
                return to_sse(&e);
            }
            // Marked seen before reading, so an event announced during the read wakes the
            // next wait instead of being noticed only at the next tick.
            if let Some(feed) = &mut self.feed {
                feed.borrow_and_update();
            }
            match self
                .store
                .alert_events_after(self.last_sent, self.cots.as_deref(), PAGE)
                .await
            {
                Ok(events) if !events.is_empty() => {
                    self.pending.extend(events);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, after = self.last_sent,
                        "alert stream: reading events failed; retrying");
                    self.tick.tick().await;
                    continue;
                }
            }
            self.wait().await;
        }
    }

    /// Until an event is announced (by any node) or the next poll tick.
    async fn wait(&mut self) {
        match &mut self.feed {
            Some(feed) => {
                tokio::select! {
                    changed = feed.changed() => {
                        if changed.is_err() {
                            self.feed = None;
                        }
                    }
                    _ = self.tick.tick() => {}
                }
            }
            None => {
                self.tick.tick().await;
            }
        }
    }
}

fn to_sse(e: &store::AlertEvent) -> Event {
    let event = Event::default().id(e.id.to_string()).event(e.kind.as_str());
    match event.json_data(EventOut::from(e)) {
        Ok(event) => event,
        // Serialising plain data does not fail; should it, the id still advances the client.
        Err(err) => {
            tracing::error!(error = %err, id = e.id, "alert stream: cannot serialise an event");
            Event::default()
                .id(e.id.to_string())
                .event(e.kind.as_str())
                .data("{}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_header() {
        let mut h = HeaderMap::new();
        assert_eq!(last_event_id(&h).ok(), Some(None));
        h.insert("last-event-id", "42".parse().expect("header"));
        assert_eq!(last_event_id(&h).ok(), Some(Some(42)));
        h.insert("last-event-id", "".parse().expect("header"));
        assert_eq!(last_event_id(&h).ok(), Some(None));
        h.insert("last-event-id", "abc".parse().expect("header"));
        assert!(last_event_id(&h).is_err());
    }
}
