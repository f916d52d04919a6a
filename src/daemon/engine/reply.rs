//! The reply stream between a running request and its front door.
//!
//! A request runs in its own task and never waits for its reader while the site streams:
//! events go into a bounded queue, and when the reader falls behind, text changes merge
//! into one pending [`Chunk`] (memory stays bounded, the reader ends with the same text).
//! The final event waits, bounded, for a reader that is slow; a reader that is gone (the
//! stream dropped) cancels the request through the stream's drop guard.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::warn;

use crate::error::Error;
use crate::protocol::{NotContinued, Timings};
use crate::reply::Chunk;

/// A finished completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub text: String,
    pub model: String,
    pub bot: String,
    pub timings: Timings,
    /// The conversation the request belongs to.
    pub conversation: Option<i64>,
    /// Sent as only the new message in the site chat of the earlier turns.
    pub continued: bool,
    /// Why a request that followed an earlier turn went to a fresh chat.
    pub reason: Option<NotContinued>,
    /// The site chat the reply is in, if the site named it.
    pub chat_code: Option<String>,
}

/// What a front door reads from a submitted request: progress, then one final event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyEvent {
    Queued {
        position: usize,
    },
    Started {
        model: String,
        bot: String,
        conversation: Option<i64>,
    },
    /// The prompt was handed to the site.
    Sent,
    /// The reply text changed (consecutive changes are merged when the reader is slow).
    Text(Chunk),
    Done(Completion),
    Failed(Error),
}

impl ReplyEvent {
    pub fn is_final(&self) -> bool {
        matches!(self, ReplyEvent::Done(_) | ReplyEvent::Failed(_))
    }
}

/// Events queued per request before text changes start to merge.
const REPLY_QUEUE: usize = 32;
/// How long a final event waits for a reader that does not read.
const FINAL_WAIT: Duration = Duration::from_secs(30);

/// Events of one submitted request. Dropping it before the final event cancels the request
/// (a client that went away).
pub struct ReplyStream {
    rx: mpsc::Receiver<ReplyEvent>,
    _cancel_on_drop: DropGuard,
}

impl ReplyStream {
    pub async fn next(&mut self) -> Option<ReplyEvent> {
        self.rx.recv().await
    }
}

/// The writing end, held by the request's task.
pub struct ReplySink {
    tx: mpsc::Sender<ReplyEvent>,
    /// Events not yet handed over because the reader is behind, in order; consecutive text
    /// changes are merged, so it holds a handful of events at most.
    backlog: VecDeque<ReplyEvent>,
}

/// A connected sink and stream; dropping the stream cancels `cancel`.
pub fn channel(cancel: CancellationToken) -> (ReplySink, ReplyStream) {
    let (tx, rx) = mpsc::channel(REPLY_QUEUE);
    (
        ReplySink {
            tx,
            backlog: VecDeque::new(),
        },
        ReplyStream {
            rx,
            _cancel_on_drop: cancel.drop_guard(),
        },
    )
}

impl ReplySink {
    /// Hands over a progress event without waiting; text merges while the reader is behind.
    pub fn push(&mut self, event: ReplyEvent) {
        match (self.backlog.back_mut(), event) {
            (Some(ReplyEvent::Text(held)), ReplyEvent::Text(next)) => {
                let merged = std::mem::replace(held, Chunk::Append(String::new())).merge(next);
                *held = merged;
            }
            (_, event) => self.backlog.push_back(event),
        }
        self.flush();
    }

    fn flush(&mut self) {
        while let Some(event) = self.backlog.pop_front() {
            match self.tx.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.backlog.push_front(event);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.backlog.clear();
                    return;
                }
            }
        }
    }

    /// Ends the stream without waiting when the reader has room for what is held back and
    /// the final event; otherwise gives the final event back for [`ReplySink::finish`].
    pub fn try_finish(&mut self, last: ReplyEvent) -> Option<ReplyEvent> {
        self.flush();
        if !self.backlog.is_empty() {
            return Some(last);
        }
        match self.tx.try_send(last) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => None,
            Err(mpsc::error::TrySendError::Full(last)) => Some(last),
        }
    }

    /// Ends the stream: what is held back, then the final event, each waiting a bounded
    /// time for the reader.
    pub async fn finish(mut self, last: ReplyEvent) {
        self.backlog.push_back(last);
        while let Some(event) = self.backlog.pop_front() {
            if !matches!(
                tokio::time::timeout(FINAL_WAIT, self.tx.send(event)).await,
                Ok(Ok(()))
            ) {
                warn!("a client did not read its reply; dropped");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(c: &str) -> ReplyEvent {
        ReplyEvent::Text(Chunk::Append(c.into()))
    }

    fn done(t: &str) -> ReplyEvent {
        ReplyEvent::Done(Completion {
            conversation: None,
            continued: false,
            reason: None,
            chat_code: None,
            text: t.into(),
            model: "m".into(),
            bot: "b".into(),
            timings: Timings::default(),
        })
    }

    /// What a reader ends with after reading everything.
    async fn read_all(stream: &mut ReplyStream) -> (String, Vec<ReplyEvent>) {
        let mut got = String::new();
        let mut events = Vec::new();
        while let Some(e) = stream.next().await {
            if let ReplyEvent::Text(c) = &e {
                c.apply(&mut got);
            }
            let last = e.is_final();
            events.push(e);
            if last {
                break;
            }
        }
        (got, events)
    }

    #[tokio::test]
    async fn a_slow_reader_gets_merged_text_with_bounded_events() {
        let (mut sink, mut stream) = channel(CancellationToken::new());
        let mut expected = String::new();
        for i in 0..10_000 {
            let piece = format!("{i} ");
            expected.push_str(&piece);
            sink.push(text(&piece));
        }
        sink.push(ReplyEvent::Text(Chunk::Replace("new start ".into())));
        expected = "new start ".into();
        for i in 0..100 {
            let piece = format!("{i}.");
            expected.push_str(&piece);
            sink.push(text(&piece));
        }
        let writer = tokio::spawn(sink.finish(done(&expected)));
        let (got, events) = read_all(&mut stream).await;
        writer.await.expect("writer");
        assert_eq!(got, expected);
        assert!(events.len() <= REPLY_QUEUE + 2, "{} events", events.len());
        assert!(matches!(events.last(), Some(ReplyEvent::Done(_))));
    }

    #[tokio::test]
    async fn progress_events_keep_their_order_around_pending_text() {
        let (mut sink, mut stream) = channel(CancellationToken::new());
        for i in 0..(REPLY_QUEUE + 5) {
            sink.push(text(&i.to_string()));
        }
        // The queue is full: `Sent` is held back, after the held text, and not lost.
        sink.push(ReplyEvent::Sent);
        sink.push(text("after"));
        let mut seen = Vec::new();
        while let Ok(e) = stream.rx.try_recv() {
            seen.push(e);
        }
        assert_eq!(seen.len(), REPLY_QUEUE);
        sink.push(text("!"));
        let tail: Vec<ReplyEvent> = std::iter::from_fn(|| stream.rx.try_recv().ok()).collect();
        assert_eq!(
            tail,
            vec![
                text(
                    &(REPLY_QUEUE..REPLY_QUEUE + 5)
                        .map(|i| i.to_string())
                        .collect::<String>()
                ),
                ReplyEvent::Sent,
                text("after!"),
            ]
        );
    }

    #[tokio::test]
    async fn the_final_event_goes_at_once_when_there_is_room_else_it_is_given_back() {
        let (mut sink, mut stream) = channel(CancellationToken::new());
        sink.push(text("a"));
        assert!(sink.try_finish(done("a")).is_none());
        let (got, events) = read_all(&mut stream).await;
        assert_eq!((got.as_str(), events.len()), ("a", 2));

        let (mut sink, mut stream) = channel(CancellationToken::new());
        for i in 0..(REPLY_QUEUE + 3) {
            sink.push(text(&i.to_string()));
        }
        let Some(last) = sink.try_finish(done("x")) else {
            panic!("a full queue cannot take the final event");
        };
        assert_eq!(last, done("x"));
        let writer = tokio::spawn(sink.finish(last));
        let (_, events) = read_all(&mut stream).await;
        writer.await.expect("writer");
        assert_eq!(events.last(), Some(&done("x")), "nothing lost");
    }

    #[tokio::test]
    async fn dropping_the_stream_cancels_the_request() {
        let cancel = CancellationToken::new();
        let (_sink, stream) = channel(cancel.clone());
        assert!(!cancel.is_cancelled());
        drop(stream);
        assert!(cancel.is_cancelled());
    }
}
