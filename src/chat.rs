//! `poectl chat`: an interactive conversation in the terminal.
//!
//! A line editor with in-session input history runs on a thread of its own (it blocks on the
//! terminal); answers stream to stdout. Every turn sends the whole conversation, as an OpenAI
//! client does, so the daemon's history keeps it as one conversation. Ctrl-C while an answer
//! streams cancels that answer and returns to the prompt; Ctrl-C at the prompt clears the
//! line; Ctrl-D at an empty prompt leaves. `/new`, `/model NAME`, `/help` and `/exit` are the
//! commands ([`parse_input`]).

use std::io::Write;
use std::time::Duration;

use futures::FutureExt;
use rustyline::error::ReadlineError;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::client::{Client, ClientError};
use crate::protocol::{ChatMessage, CompleteRequest, Event, ModelInfo};

/// The prompt shown for each line.
pub const PROMPT: &str = ">>> ";

/// How long a cancelled answer may take to end before the chat stops waiting for it.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

const HELP: &str = "Commands:
  /new          start a new chat (same model and system message)
  /model NAME   switch the model (/model alone shows it)
  /help         this text
  /exit         leave (or Ctrl-D at an empty prompt)
Ctrl-C stops a streaming answer; at the prompt it clears the line.";

/// What a line typed at the prompt asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Text to send.
    Say(String),
    New,
    /// `/model NAME` switches; `/model` alone shows the model.
    Model(Option<String>),
    Help,
    Exit,
    /// A blank line: nothing to do.
    Blank,
    /// A `/word` that is no command.
    Unknown(String),
}

/// Reads one line typed at the prompt. A line starting with `/` is a command; `//` starts a
/// message that begins with one `/`.
pub fn parse_input(line: &str) -> Input {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Input::Blank;
    }
    if let Some(rest) = trimmed.strip_prefix("//") {
        return Input::Say(format!("/{rest}"));
    }
    let Some(command) = trimmed.strip_prefix('/') else {
        return Input::Say(line.trim_end_matches(['\r', '\n']).to_owned());
    };
    let (word, arg) = match command.split_once(char::is_whitespace) {
        Some((w, a)) => (w, Some(a.trim()).filter(|a| !a.is_empty())),
        None => (command, None),
    };
    match word {
        "new" | "clear" => Input::New,
        "model" => Input::Model(arg.map(str::to_owned)),
        "help" | "?" => Input::Help,
        "exit" | "quit" | "bye" => Input::Exit,
        _ => Input::Unknown(word.to_owned()),
    }
}

/// The conversation being held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chat {
    /// The model asked for; the daemon's default when `None`.
    pub model: Option<String>,
    pub system: Option<String>,
    /// The turns so far (user and assistant), without the system message.
    pub turns: Vec<ChatMessage>,
    /// The daemon's number for this conversation (from `--continue`, then from each
    /// answer): named in requests, so that an older stored one is found too.
    pub conversation: Option<i64>,
}

impl Chat {
    /// A chat that goes on from `transcript` (a leading system message becomes the chat's).
    pub fn from_transcript(model: Option<String>, transcript: Vec<ChatMessage>) -> Chat {
        let mut turns = transcript;
        let system = match turns.first() {
            Some(m) if m.role == "system" => Some(turns.remove(0).content),
            _ => None,
        };
        Chat {
            model,
            system,
            turns,
            conversation: None,
        }
    }

    /// The messages of a request that says `prompt` next.
    pub fn request(&self, prompt: &str) -> Vec<ChatMessage> {
        self.system
            .iter()
            .map(|s| ChatMessage::new("system", s.clone()))
            .chain(self.turns.iter().cloned())
            .chain(std::iter::once(ChatMessage::new("user", prompt)))
            .collect()
    }

    /// Keeps a finished exchange.
    pub fn answered(&mut self, prompt: &str, answer: &str) {
        self.turns.push(ChatMessage::new("user", prompt));
        self.turns.push(ChatMessage::new("assistant", answer));
    }

    /// Forgets the turns; model and system message stay.
    pub fn reset(&mut self) {
        self.turns.clear();
        self.conversation = None;
    }
}

/// Why the chat ended other than by the user leaving.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the line editor failed: {0}")]
    Editor(String),
}

/// The line editor on its own thread: each prompt sent to it is answered with one line.
struct LineReader {
    prompts: std::sync::mpsc::Sender<String>,
    lines: mpsc::UnboundedReceiver<Result<String, ReadlineError>>,
}

impl LineReader {
    fn start() -> Result<LineReader, ChatError> {
        let (prompts, prompt_rx) = std::sync::mpsc::channel::<String>();
        let (line_tx, lines) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("poectl-line-editor".into())
            .spawn(move || {
                let mut editor = match rustyline::DefaultEditor::new() {
                    Ok(e) => {
                        let _ = ready_tx.send(Ok(()));
                        e
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                while let Ok(prompt) = prompt_rx.recv() {
                    let line = editor.readline(&prompt);
                    if let Ok(l) = &line {
                        if !l.trim().is_empty() {
                            let _ = editor.add_history_entry(l.as_str());
                        }
                    }
                    if line_tx.send(line).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| ChatError::Editor(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(LineReader { prompts, lines }),
            Ok(Err(e)) => Err(ChatError::Editor(e)),
            Err(_) => Err(ChatError::Editor("the line editor did not start".into())),
        }
    }

    async fn read(&mut self, prompt: &str) -> Result<String, ReadlineError> {
        if self.prompts.send(prompt.to_owned()).is_err() {
            return Err(ReadlineError::Eof);
        }
        self.lines.recv().await.unwrap_or(Err(ReadlineError::Eof))
    }
}

/// Runs the chat until the user leaves (`Ok`) or the daemon cannot be reached.
pub async fn run(client: &Client, mut chat: Chat) -> Result<(), ChatError> {
    let (default_model, models) = match client.models().await? {
        Event::Models {
            default, models, ..
        } => (default, models),
        other => {
            return Err(ClientError::Protocol(format!("expected models, got {other:?}")).into())
        }
    };
    if let Some(m) = &chat.model {
        if !known(&models, m) {
            eprintln!("poectl: unknown model {m:?}; {}", model_names(&models));
            chat.model = None;
        }
    }
    let mut interrupts = signal(SignalKind::interrupt()).map_err(ClientError::Io)?;
    let mut reader = LineReader::start()?;
    let model_of = |chat: &Chat| chat.model.clone().unwrap_or_else(|| default_model.clone());
    println!(
        "Chatting with {}{}. /help for commands, Ctrl-D to leave.",
        model_of(&chat),
        if chat.turns.is_empty() {
            String::new()
        } else {
            format!(", going on after {} messages", chat.turns.len())
        }
    );
    loop {
        let line = match reader.read(PROMPT).await {
            Ok(line) => line,
            // Ctrl-C at the prompt: the line is dropped, a fresh prompt follows.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => return Ok(()),
            Err(e) => return Err(ChatError::Editor(e.to_string())),
        };
        match parse_input(&line) {
            Input::Blank => {}
            Input::Exit => return Ok(()),
            Input::Help => println!("{HELP}"),
            Input::New => {
                chat.reset();
                println!("New chat with {}.", model_of(&chat));
            }
            Input::Model(None) => println!("Model: {}", model_of(&chat)),
            Input::Model(Some(name)) => {
                if known(&models, &name) {
                    chat.model = Some(name);
                    // The daemon goes on in a new conversation with the other model.
                    chat.conversation = None;
                    println!("Model: {}", model_of(&chat));
                } else {
                    eprintln!("poectl: unknown model {name:?}; {}", model_names(&models));
                }
            }
            Input::Unknown(word) => eprintln!("poectl: no command /{word}; /help lists them"),
            Input::Say(prompt) => {
                // A Ctrl-C that came before this answer is not meant for it.
                while let Some(Some(())) = interrupts.recv().now_or_never() {}
                if let Some((answer, conversation)) =
                    answer(client, &mut chat, &prompt, &mut interrupts).await?
                {
                    chat.answered(&prompt, &answer);
                    chat.conversation = conversation.or(chat.conversation);
                }
            }
        }
    }
}

/// Streams one answer to stdout. `Some((text, conversation))` when it completed, `None`
/// when it failed or was cancelled (the turn is then not kept).
async fn answer(
    client: &Client,
    chat: &mut Chat,
    prompt: &str,
    interrupts: &mut tokio::signal::unix::Signal,
) -> Result<Option<(String, Option<i64>)>, ChatError> {
    let ask = |chat: &Chat| CompleteRequest {
        conversation: chat.conversation,
        model: chat.model.clone(),
        messages: chat.request(prompt),
        stream: true,
    };
    let mut reply = client.complete(ask(chat)).await?;
    let mut out = std::io::stdout();
    let mut shown = String::new();
    let mut cancelled = false;
    loop {
        let event = tokio::select! {
            e = reply.next() => e,
            _ = interrupts.recv(), if !cancelled => {
                cancelled = true;
                // The answer ends with a `cancelled` error, awaited below (bounded).
                let _ = tokio::time::timeout(CANCEL_WAIT, client.cancel(&reply.id)).await;
                continue;
            }
            _ = tokio::time::sleep(CANCEL_WAIT), if cancelled => None,
        };
        let Some(event) = event else {
            if cancelled {
                println!("\n[cancelled]");
                return Ok(None);
            }
            return Err(ClientError::Closed.into());
        };
        match event {
            Event::Delta { text } => {
                shown.push_str(&text);
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            Event::Replace { text } => {
                let _ = writeln!(out, "\n[the site rewrote its answer]");
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
                shown = text;
            }
            // A daemon that does not know the conversation's number (a history of its
            // own, or none): nothing was sent; the whole conversation goes without it.
            Event::Error {
                kind: crate::ErrorKind::UnknownConversation,
                ..
            } if chat.conversation.is_some() && shown.is_empty() => {
                chat.conversation = None;
                reply = client.complete(ask(chat)).await?;
            }
            Event::Done {
                text,
                reason,
                conversation,
                ..
            } => {
                if text != shown {
                    // The final text differs from what streamed: show the final one whole.
                    if !shown.is_empty() {
                        let _ = writeln!(out);
                    }
                    let _ = out.write_all(text.as_bytes());
                }
                let _ = writeln!(out);
                let _ = out.flush();
                if let Some(r) = reason {
                    eprintln!("[sent in a new site chat: {}]", r.message);
                }
                return Ok(Some((text, conversation)));
            }
            Event::Error { kind, message, .. } => {
                if !shown.is_empty() {
                    let _ = writeln!(out);
                }
                if cancelled && kind == crate::ErrorKind::Cancelled {
                    println!("[cancelled]");
                } else {
                    let _ = out.flush();
                    eprintln!("poectl: {kind}: {message}");
                }
                return Ok(None);
            }
            _ => {}
        }
    }
}

fn known(models: &[ModelInfo], name: &str) -> bool {
    models.iter().any(|m| m.name == name)
}

fn model_names(models: &[ModelInfo]) -> String {
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    format!("`poectl models` lists them: {}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_messages_or_commands() {
        assert_eq!(
            parse_input("hello there\n"),
            Input::Say("hello there".into())
        );
        assert_eq!(parse_input("  indented"), Input::Say("  indented".into()));
        assert_eq!(parse_input("   "), Input::Blank);
        assert_eq!(parse_input("/new"), Input::New);
        assert_eq!(
            parse_input(" /model  gpt-4 "),
            Input::Model(Some("gpt-4".into()))
        );
        assert_eq!(parse_input("/model"), Input::Model(None));
        assert_eq!(parse_input("/help"), Input::Help);
        assert_eq!(parse_input("/bye"), Input::Exit);
        assert_eq!(parse_input("/nope x"), Input::Unknown("nope".into()));
        assert_eq!(
            parse_input("//etc/passwd?"),
            Input::Say("/etc/passwd?".into())
        );
    }

    #[test]
    fn each_turn_sends_the_whole_conversation() {
        let mut chat = Chat {
            model: None,
            system: Some("Be brief.".into()),
            turns: vec![],
            conversation: None,
        };
        assert_eq!(
            chat.request("hi"),
            [
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "hi")
            ]
        );
        chat.answered("hi", "hello");
        assert_eq!(
            chat.request("more"),
            [
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "hi"),
                ChatMessage::new("assistant", "hello"),
                ChatMessage::new("user", "more"),
            ]
        );
        chat.reset();
        assert_eq!(chat.request("x").len(), 2);
    }

    #[test]
    fn a_stored_transcript_becomes_the_chat() {
        let t = vec![
            ChatMessage::new("system", "S"),
            ChatMessage::new("user", "u"),
            ChatMessage::new("assistant", "a"),
        ];
        let chat = Chat::from_transcript(Some("gpt-4".into()), t.clone());
        assert_eq!(chat.system.as_deref(), Some("S"));
        assert_eq!(chat.turns, t[1..]);
        assert_eq!(chat.request("v")[..3], t[..]);
        let chat = Chat::from_transcript(None, t[1..].to_vec());
        assert_eq!(chat.system, None);
    }
}
