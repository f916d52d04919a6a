//! One reply being answered on an update socket: the frames around the human message, then the
//! bot message's scripted cumulative steps (`replies.rs`) and their ending, in the frame
//! shapes of the double's mode. A stop ends a reply as `cancelled`; a shutdown ends it
//! silently. Frames carrying the bot message are noted on the send's record.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{watch, Notify};

use super::frames2023::{codename, inner_message, inner_noise};
use super::frames2025 as f25;
use super::replies::{script, Ending, Script};
use super::{shut_down, site2025, Bot, Shared, StoredMessage};

/// What a 2025 reply needs beyond a 2023 one.
pub(super) struct Turn2025 {
    pub(super) bot: &'static Bot,
    pub(super) chat_number: u64,
    pub(super) chat_code: String,
    /// 1 for the chat's first human message.
    pub(super) turn: u32,
    /// Points the reply costs.
    pub(super) cost: u64,
    pub(super) job_id: u64,
}

/// One send being answered.
struct Stream {
    shared: Arc<Shared>,
    chat_id: String,
    channel: String,
    /// Index of this send in the records.
    record: usize,
    reply: StoredMessage,
    stop: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
    /// Set in 2025 mode.
    y2025: Option<Turn2025>,
    /// The reply's points were charged (2025).
    charged: bool,
}

/// Why a stream ended early.
enum Interrupt {
    Stop,
    Shutdown,
}

/// Answers one 2023 send: registers the chat's messages, then streams on `channel`.
pub(super) fn start_2023(shared: Arc<Shared>, record: usize, chat_id: String, channel: String) {
    let (bot, prompt) = {
        let s = shared.lock();
        match s.records.get(record) {
            Some(r) => (r.bot.clone(), r.prompt.clone()),
            None => return,
        }
    };
    let human = shared.message("human", &prompt, "complete");
    let reply = shared.message(codename(&bot), "", "incomplete");
    let stop = Arc::new(Notify::new());
    shared.store(&chat_id, &human);
    shared.update(|s| {
        s.chats
            .entry(chat_id.clone())
            .or_default()
            .streams
            .push((record, stop.clone()));
        if let Some(r) = s.records.get_mut(record) {
            r.message_id = Some(reply.message_id);
        }
    });
    let stream = Stream {
        shutdown: shared.shutdown.subscribe(),
        shared,
        chat_id,
        channel,
        record,
        reply,
        stop,
        y2025: None,
        charged: false,
    };
    tokio::spawn(async move {
        let script = script(&bot, &prompt, 1);
        let wait = stream.shared.socket_wait;
        stream.shared.wait_for_socket(&stream.channel, wait).await;
        stream.run(human, script).await;
    });
}

/// Answers one taken 2025 send whose human message is stored and whose stream (`stop`) is
/// registered on the chat already (the send decision does both under one lock).
#[allow(clippy::too_many_arguments)]
pub(super) fn start_2025(
    shared: Arc<Shared>,
    record: usize,
    chat_id: String,
    channel: String,
    human: StoredMessage,
    reply: StoredMessage,
    stop: Arc<Notify>,
    turn: Turn2025,
) {
    let script = script(turn.bot.handle, &human.text, turn.turn);
    let stream = Stream {
        shutdown: shared.shutdown.subscribe(),
        shared,
        chat_id,
        channel,
        record,
        reply,
        stop,
        y2025: Some(turn),
        charged: false,
    };
    tokio::spawn(async move {
        let wait = stream.shared.socket_wait;
        stream.shared.wait_for_socket(&stream.channel, wait).await;
        stream.run(human, script).await;
    });
}

impl Stream {
    async fn run(mut self, human: StoredMessage, script: Script) {
        let delay = script.delay.unwrap_or(self.shared.chunk_delay);
        let ended = if self.y2025.is_some() {
            self.play_2025(&human, script, delay).await
        } else {
            self.play_2023(&human, script, delay).await
        };
        if let Err(Interrupt::Stop) = ended {
            if self.reply.state == "incomplete" {
                let text = self.reply.text.clone();
                if self.y2025.is_some() {
                    let entry = self.set_reply(&text, "cancelled");
                    self.frame(vec![entry.clone()], true);
                    self.epilogue(entry);
                } else {
                    self.bot(&text, "cancelled", Vec::new(), None);
                }
            }
        }
        let (chat_id, record) = (self.chat_id.clone(), self.record);
        self.shared.update(|s| {
            if let Some(chat) = s.chats.get_mut(&chat_id) {
                chat.streams.retain(|(r, _)| *r != record);
            }
        });
    }

    /// Waits `delay`, unless a stop or the shutdown comes first.
    async fn pause(&mut self, delay: Duration) -> Result<(), Interrupt> {
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.stop.notified() => Err(Interrupt::Stop),
            _ = shut_down(&mut self.shutdown) => Err(Interrupt::Shutdown),
        }
    }

    /// Waits for a stop or the shutdown: a stalled reply.
    async fn stall(&mut self) -> Interrupt {
        tokio::select! {
            _ = self.stop.notified() => Interrupt::Stop,
            _ = shut_down(&mut self.shutdown) => Interrupt::Shutdown,
        }
    }

    /// Records a final state (and in 2025 charges the reply's points) before any frame shows
    /// it, so `chats()` has it by the time a reader sees the frame; the reply stops counting
    /// as in flight.
    fn finish_if_final(&mut self) {
        if self.reply.state == "incomplete" {
            return;
        }
        let (record, state) = (self.record, self.reply.state.clone());
        let cost = match &self.y2025 {
            Some(t) if !self.charged && !state.starts_with("error") => t.cost,
            _ => 0,
        };
        self.charged = true;
        let chat_id = &self.chat_id;
        self.shared.update(|s| {
            s.points = s.points.saturating_sub(cost);
            if let Some(r) = s.records.get_mut(record) {
                r.final_state = Some(state);
                r.cost += cost;
            }
            // The reply is no longer in flight, whatever frames still follow.
            if let Some(chat) = s.chats.get_mut(chat_id) {
                chat.streams.retain(|(r, _)| *r != record);
            }
        });
    }

    // -----------------------------------------------------------------------------------
    // 2023

    /// Sets the bot message, stores it server-side and sends one frame: the `before` entries,
    /// the bot message, then the `noise` subscription if any.
    fn bot(&mut self, text: &str, state: &str, before: Vec<String>, noise: Option<&str>) {
        self.reply.text = text.to_owned();
        self.reply.state = state.to_owned();
        self.shared.store(&self.chat_id, &self.reply);
        self.finish_if_final();
        let mut entries = before;
        entries.push(inner_message(&self.chat_id, &self.reply));
        if let Some(name) = noise {
            entries.push(inner_noise(name, &self.chat_id, &self.reply));
        }
        let frame = self.shared.outer(entries);
        self.shared.emit(&self.channel, frame, Some(self.record));
    }

    fn noise_frame(&self, name: &str) {
        let frame = self
            .shared
            .outer(vec![inner_noise(name, &self.chat_id, &self.reply)]);
        self.shared.emit(&self.channel, frame, None);
    }

    async fn play_2023(
        &mut self,
        human: &StoredMessage,
        script: Script,
        delay: Duration,
    ) -> Result<(), Interrupt> {
        let echo = inner_message(&self.chat_id, human);
        let title = inner_noise("chatTitleUpdated", &self.chat_id, &self.reply);
        let mut steps = script.steps.iter();
        // The first frame batches the echo, a noise entry and the bot's first update (a
        // thinking bot's comes later, on its own).
        match (steps.next(), script.think) {
            (Some(first), None) => self.bot(first, "incomplete", vec![echo, title], None),
            (Some(first), Some(think)) => {
                let frame = self.shared.outer(vec![echo, title]);
                self.shared.emit(&self.channel, frame, None);
                self.pause(think).await?;
                self.bot(first, "incomplete", Vec::new(), None);
            }
            (None, _) => {
                let frame = self.shared.outer(vec![echo, title]);
                self.shared.emit(&self.channel, frame, None);
            }
        }
        for (i, text) in steps.enumerate() {
            self.pause(delay).await?;
            match i {
                0 => {
                    self.noise_frame("viewerStateUpdated");
                    self.bot(text, "incomplete", Vec::new(), None);
                }
                1 => self.bot(text, "incomplete", Vec::new(), Some("messageStateUpdated")),
                _ => self.bot(text, "incomplete", Vec::new(), None),
            }
        }
        self.pause(delay).await?;
        match script.ending {
            Ending::Final(text, state) => self.bot(&text, state, Vec::new(), None),
            Ending::Stall => return Err(self.stall().await),
            Ending::MissedThen(rest, text) => {
                let frame = json!({"error": "missed_messages"}).to_string();
                self.shared.emit(&self.channel, frame, None);
                for step in rest {
                    self.pause(delay).await?;
                    self.bot(&step, "incomplete", Vec::new(), None);
                }
                self.pause(delay).await?;
                self.bot(&text, "complete", Vec::new(), None);
            }
            Ending::LostThenSilent(text, refetch_channel) => {
                self.reply.text = text;
                self.reply.state = "complete".into();
                self.shared.store(&self.chat_id, &self.reply);
                self.finish_if_final();
                let frame = if refetch_channel {
                    let entry = json!({"message_type": "refetchChannel",
                        "payload": {"channel": self.channel}});
                    self.shared.outer(vec![entry.to_string()])
                } else {
                    json!({"error": "missed_messages"}).to_string()
                };
                self.shared.emit(&self.channel, frame, None);
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // 2025

    /// Sends one 2025 outer frame of `entries`.
    fn frame(&self, entries: Vec<String>, carries_bot: bool) {
        let seq = self.shared.next_seq.fetch_add(1, Ordering::SeqCst);
        let frame = f25::outer(seq, &entries);
        let record = carries_bot.then_some(self.record);
        self.shared.emit(&self.channel, frame, record);
    }

    /// Sets and stores the bot message; returns its `messageAdded` entry.
    fn set_reply(&mut self, text: &str, state: &str) -> String {
        self.reply.text = text.to_owned();
        self.reply.state = state.to_owned();
        self.shared.store(&self.chat_id, &self.reply);
        self.finish_if_final();
        f25::message_added(self.chat_number(), &self.reply)
    }

    fn chat_number(&self) -> u64 {
        self.y2025.as_ref().map_or(0, |t| t.chat_number)
    }

    async fn play_2025(
        &mut self,
        human: &StoredMessage,
        script: Script,
        delay: Duration,
    ) -> Result<(), Interrupt> {
        let Some(t) = &self.y2025 else {
            return Ok(());
        };
        let (bot, n, turn, job) = (t.bot, t.chat_number, t.turn, t.job_id);
        let chat = f25::chat_object(n, &t.chat_code, bot, None);
        // The human message, then the chat, the job and the (empty) bot message.
        self.frame(vec![f25::message_created(human)], false);
        self.frame(vec![f25::message_added(n, human)], false);
        if turn == 1 {
            self.frame(vec![f25::chat_added(chat)], false);
        }
        self.frame(
            vec![
                f25::job("jobStarted", job, bot, "running"),
                f25::job("jobUpdated", job, bot, "running"),
            ],
            false,
        );
        if let Some(think) = script.think {
            self.pause(think).await?;
        }
        self.frame(vec![f25::message_created(&self.reply)], false);
        if turn == 1 {
            self.frame(vec![f25::chat_member_added(n, bot)], false);
        }
        let first = self.set_reply("", "incomplete");
        self.frame(vec![first], true);
        // Cumulative steps, one per frame, except the third and fourth share a frame.
        let mut steps = script.steps.into_iter();
        let mut i = 0;
        while let Some(text) = steps.next() {
            self.pause(delay).await?;
            let mut entries = vec![self.set_reply(&text, "incomplete")];
            if i == 2 {
                if let Some(next) = steps.next() {
                    entries.push(self.set_reply(&next, "incomplete"));
                }
            }
            self.frame(entries, true);
            i += 1;
        }
        self.pause(delay).await?;
        match script.ending {
            Ending::Final(text, state) => {
                let entry = self.set_reply(&text, state);
                self.frame(vec![entry.clone()], true);
                self.epilogue(entry);
            }
            Ending::Stall => return Err(self.stall().await),
            Ending::MissedThen(rest, text) => {
                self.shared.emit(
                    &self.channel,
                    json!({"error": "missed_messages"}).to_string(),
                    None,
                );
                for step in rest {
                    self.pause(delay).await?;
                    let entry = self.set_reply(&step, "incomplete");
                    self.frame(vec![entry], true);
                }
                self.pause(delay).await?;
                let entry = self.set_reply(&text, "complete");
                self.frame(vec![entry.clone()], true);
                self.epilogue(entry);
            }
            Ending::LostThenSilent(text, refetch_channel) => {
                // The reply completes server-side; the page only learns it by refetching.
                self.set_reply(&text, "complete");
                if refetch_channel {
                    self.frame(vec![f25::refetch_channel(&self.channel)], false);
                } else {
                    self.shared.emit(
                        &self.channel,
                        json!({"error": "missed_messages"}).to_string(),
                        None,
                    );
                }
            }
        }
        Ok(())
    }

    /// After the bot message's final frame (`last`, its entry): five identical repeats of it
    /// (the last one `late_repeat_ms` later),
    /// the job's end and cost, follow-ups, the title (first turn) and the viewer's points.
    fn epilogue(&self, last: String) {
        let Some(t) = &self.y2025 else {
            return;
        };
        let (bot, n, turn, job) = (t.bot, t.chat_number, t.turn, t.job_id);
        let state = self.reply.state.clone();
        let late = self.shared.late_repeat;
        for _ in 0..(if late.is_zero() { 5 } else { 4 }) {
            self.frame(vec![last.clone()], true);
        }
        if !late.is_zero() {
            // The fifth repeat comes late, when the page may already be sending its chat's
            // next message: a reader must not take it for the next reply.
            let (shared, channel, again) =
                (self.shared.clone(), self.channel.clone(), last.clone());
            tokio::spawn(async move {
                tokio::time::sleep(late).await;
                let seq = shared.next_seq.fetch_add(1, Ordering::SeqCst);
                shared.emit(&channel, f25::outer(seq, &[again]), None);
            });
        }
        let job_state = match state.as_str() {
            "complete" => "completed",
            "cancelled" => "cancelled",
            _ => "failed",
        };
        self.frame(vec![f25::job("jobUpdated", job, bot, job_state)], false);
        let cost = if state.starts_with("error") {
            0
        } else {
            t.cost
        };
        self.frame(vec![f25::job_cost(job, self.reply.message_id, cost)], false);
        if state == "complete" {
            self.frame(vec![f25::followups(n, self.reply.message_id)], false);
        }
        let viewer = site2025::viewer_state_entry(&self.shared);
        if turn == 1 {
            let title = title_of(&self.shared, &self.chat_id);
            self.frame(vec![f25::chat_title(n, &title), viewer], false);
        } else {
            self.frame(vec![viewer], false);
        }
    }
}

/// A chat title from the first human message: its first words.
fn title_of(shared: &Shared, chat_id: &str) -> String {
    let s = shared.lock();
    let first = s
        .chats
        .get(chat_id)
        .and_then(|c| c.messages.iter().find(|m| m.author == "human"))
        .map(|m| m.text.clone())
        .unwrap_or_default();
    let words: Vec<&str> = first.split_whitespace().take(5).collect();
    if words.is_empty() {
        "New chat".into()
    } else {
        words.join(" ")
    }
}
