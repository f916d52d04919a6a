//! `poectl`: the command-line client. CLI only; the protocol is spoken by `poed::client`.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use poed::client::{Client, ClientError};
use poed::protocol::{ChatMessage, CompleteRequest, Event, EventLine};

/// Exit codes (stable; documented in README).
mod exit {
    pub const OK: u8 = 0;
    /// The daemon answered the request with an error (its kind is on stderr).
    pub const REQUEST_FAILED: u8 = 1;
    // 2 is clap's usage error.
    /// No daemon answers on the socket.
    pub const NOT_RUNNING: u8 = 3;
    /// The connection failed or the daemon answered something unexpected.
    pub const CONNECTION: u8 = 4;
    /// Interrupted by Ctrl-C (the request was cancelled).
    pub const INTERRUPTED: u8 = 130;
    /// A bad input file (named with the line or field at fault).
    pub const BAD_INPUT: u8 = 2;
}

/// Ask Poe through the poed daemon.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// poed's socket.
    #[arg(long, env = "POED_SOCKET", value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// poed's config file, read for the history file's place (default:
    /// $XDG_CONFIG_HOME/poed/config.toml, if it exists).
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// The history file (default: from the config, next to the browser profile).
    #[arg(long, env = "POED_HISTORY", value_name = "PATH", global = true)]
    history_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ask a question; the answer streams to stdout.
    Ask {
        /// Model name (see `poectl models`); the daemon's default when absent.
        #[arg(short, long)]
        model: Option<String>,
        /// A system message sent before the prompt.
        #[arg(long, value_name = "TEXT")]
        system: Option<String>,
        /// Print the answer only when it is complete.
        #[arg(long)]
        no_stream: bool,
        /// Print the raw protocol events (one JSON object per line).
        #[arg(long)]
        json: bool,
        /// Go on with this conversation (its number in `poectl history`, or `conversation`
        /// in `--json` output): the prompt is its next message, sent in the same site chat
        /// when it can be.
        #[arg(short, long, value_name = "ID")]
        conversation: Option<i64>,
        /// The prompt; read from stdin when absent or `-`.
        prompt: Vec<String>,
    },
    /// List the models the daemon knows: the table, the config's aliases, the bots seen in
    /// replies and the site's bot list (any bot handle may be used with `ask -m`).
    Models {
        #[arg(long)]
        json: bool,
        /// Read the site's bot list first (opens its page in a tab: takes seconds).
        #[arg(long)]
        refresh: bool,
    },
    /// Show the daemon's state: browser, tabs, queue, account.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Sign the daemon's profile in: a browser window opens on the sign-in page.
    Login {
        /// Seconds to wait for you to sign in.
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
    },
    /// Manage the session cookies of the daemon's browser profile.
    Cookies {
        #[command(subcommand)]
        action: CookiesAction,
    },
    /// Talk in the terminal: answers stream, /help lists commands, Ctrl-D leaves.
    Chat {
        /// Model name (see `poectl models`); the daemon's default when absent.
        #[arg(short, long)]
        model: Option<String>,
        /// A system message sent before the conversation.
        #[arg(long, value_name = "TEXT")]
        system: Option<String>,
        /// Go on with a conversation from the history (its ID in `poectl history`).
        #[arg(long = "continue", value_name = "ID")]
        continue_id: Option<i64>,
    },
    /// The record of past requests: recent conversations, or show/search/export. Read from
    /// the history file; poed need not run.
    History {
        #[command(subcommand)]
        action: Option<HistoryAction>,
        /// How many conversations to list.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum HistoryAction {
    /// Print one conversation.
    Show {
        id: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Find messages containing every word (full-text search).
    Search {
        #[arg(required = true)]
        words: Vec<String>,
        /// How many messages to show.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write conversations as JSON (all of them when no ID is given).
    Export {
        ids: Vec<i64>,
        /// Write to this file (created 0600) instead of stdout.
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum CookiesAction {
    /// Import cookies (p-b, p-lat, ...) from a browser export: a JSON array or cookies.txt.
    Import {
        /// The exported file.
        file: PathBuf,
    },
}

fn fail(e: &ClientError) -> ExitCode {
    match e {
        ClientError::NotRunning { .. } => {
            eprintln!("poectl: {e}");
            ExitCode::from(exit::NOT_RUNNING)
        }
        ClientError::Request(err) => {
            eprintln!("poectl: {}: {}", err.kind, err.message);
            ExitCode::from(exit::REQUEST_FAILED)
        }
        other => {
            eprintln!("poectl: {other}");
            ExitCode::from(exit::CONNECTION)
        }
    }
}

async fn models(client: &Client, json: bool, refresh: bool) -> ExitCode {
    let answer = if refresh {
        client.refresh_models().await
    } else {
        client.models().await
    };
    let (default, models, discovered_at) = match answer {
        Ok(Event::Models {
            default,
            models,
            discovered_at,
        }) => (default, models, discovered_at),
        Ok(other) => return fail(&ClientError::Protocol(format!("{other:?}"))),
        Err(e) => return fail(&e),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"default": default, "models": models, "discovered_at": discovered_at})
        );
        return ExitCode::from(exit::OK);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for m in &models {
        let mark = if m.name == default { " (default)" } else { "" };
        let mut notes = Vec::new();
        if let Some(name) = m.display_name.as_deref().filter(|n| *n != m.bot) {
            notes.push(format!("\"{name}\""));
        }
        if let Some(at) = m.last_answered {
            notes.push(format!("answered {} ago", ago(now.saturating_sub(at))));
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!("  {}", notes.join(", "))
        };
        println!(
            "{:<40} {:<28} {:<10}{}{}",
            m.name,
            m.bot,
            m.source.as_str(),
            mark,
            notes
        );
    }
    let discovered = models
        .iter()
        .filter(|m| m.source == poed::protocol::ModelSource::Discovered)
        .count();
    match discovered_at {
        Some(_) if refresh => {
            println!("read the site's bot list: {discovered} bots not listed otherwise")
        }
        Some(at) => println!(
            "the site's bot list was read {} ago (`poectl models --refresh` reads it again)",
            ago(now.saturating_sub(at))
        ),
        None => println!(
            "any bot handle works with `ask -m`; `poectl models --refresh` lists the site's bots"
        ),
    }
    ExitCode::from(exit::OK)
}

/// `secs` as a short human duration.
fn ago(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn print_json(id: &poed::protocol::RequestId, event: &Event) {
    print!(
        "{}",
        EventLine {
            id: Some(id.clone()),
            event: event.clone(),
        }
        .to_line()
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(poed::config::default_socket_path);
    // Input files are checked before talking to the daemon.
    let cookies = match &args.command {
        Command::Cookies {
            action: CookiesAction::Import { file },
        } => match std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|text| poed::cookies::parse(&text))
        {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("poectl: {}: {e}", file.display());
                return ExitCode::from(exit::BAD_INPUT);
            }
        },
        _ => None,
    };
    let chat = match &args.command {
        Command::History {
            action,
            limit,
            json,
        } => return history(&args, action.as_ref(), *limit, *json),
        Command::Chat {
            model,
            system,
            continue_id,
        } => match start_chat(&args, model.clone(), system.clone(), *continue_id) {
            Ok(chat) => Some(chat),
            Err(code) => return code,
        },
        _ => None,
    };
    let client = match Client::connect(&socket).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if let Some(chat) = chat {
        return match poed::chat::run(&client, chat).await {
            Ok(()) => ExitCode::from(exit::OK),
            Err(poed::chat::ChatError::Client(e)) => fail(&e),
            Err(e) => {
                eprintln!("poectl: {e}");
                ExitCode::from(exit::CONNECTION)
            }
        };
    }
    match args.command {
        Command::History { .. } | Command::Chat { .. } => ExitCode::from(exit::OK),
        Command::Ask {
            model,
            system,
            no_stream,
            json,
            conversation,
            prompt,
        } => {
            let how = AskHow {
                no_stream,
                json,
                conversation,
            };
            ask(&client, model, system, how, prompt).await
        }
        Command::Cookies { .. } => match client.import_cookies(cookies.unwrap_or_default()).await {
            Ok((count, account)) => {
                println!("imported {count} cookies; account: {account}");
                if account == poed::protocol::AccountState::SignedIn {
                    ExitCode::from(exit::OK)
                } else {
                    eprintln!("poectl: the site does not accept these cookies as signed in; export them again while signed in to Poe");
                    ExitCode::from(exit::REQUEST_FAILED)
                }
            }
            Err(e) => fail(&e),
        },
        Command::Login { timeout } => login(&client, timeout).await,
        Command::Models { json, refresh } => models(&client, json, refresh).await,
        Command::Status { json } => match client.status().await {
            Ok(s) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                } else {
                    println!(
                        "poed {} (pid {}), up {}s, socket {}",
                        s.version,
                        s.pid,
                        s.uptime_ms / 1000,
                        s.socket
                    );
                    println!("site     {}", s.base_url);
                    println!(
                        "browser  {} ({}{}), restarts {}{}",
                        s.browser.state,
                        s.browser.mode,
                        s.browser
                            .version
                            .as_deref()
                            .map(|v| format!(", {v}"))
                            .unwrap_or_default(),
                        s.browser.restarts,
                        s.browser
                            .last_error
                            .as_deref()
                            .map(|e| format!(", last error: {e}"))
                            .unwrap_or_default()
                    );
                    println!(
                        "tabs     {} total, {} idle ({} warm), {} busy; queue {}/{}",
                        s.pool.tabs,
                        s.pool.idle,
                        s.pool.warm,
                        s.pool.busy,
                        s.pool.queued,
                        s.pool.queue_capacity
                    );
                    println!(
                        "account  {}{}",
                        s.account.state,
                        s.account
                            .last_site_error
                            .as_deref()
                            .map(|e| format!(", last site error: {e}"))
                            .unwrap_or_default()
                    );
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    if let Some(p) = &s.account.points {
                        let figure =
                            |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
                        let reset = p
                            .reset_at
                            .map(|t| format!(", reset in {}", human_secs(t.saturating_sub(now))))
                            .unwrap_or_default();
                        println!(
                            "points   {} of {}{reset} (seen {} ago)",
                            figure(p.balance),
                            figure(p.allotment),
                            human_secs(now.saturating_sub(p.seen_at))
                        );
                    }
                    if let Some(until) = s.account.out_of_points_until {
                        if until == 0 {
                            println!("         out of points (the site refused a send)");
                        } else {
                            println!(
                                "         out of points until the reset, in {}",
                                human_secs(until.saturating_sub(now))
                            );
                        }
                    }
                    if s.account.send_backoff_ms > 0 {
                        println!(
                            "pacing   sends held back {} ms after the site refused some",
                            s.account.send_backoff_ms
                        );
                    } else {
                        println!("pacing   no backoff (the site takes every send)");
                    }
                    for limit in &s.account.daily_limits {
                        let ago = now.saturating_sub(limit.seen_at);
                        println!(
                            "         daily limit reached for {} (seen {ago}s ago)",
                            limit.bot
                        );
                    }
                    let counts: Vec<String> =
                        s.requests.iter().map(|(k, v)| format!("{k} {v}")).collect();
                    println!(
                        "requests {}",
                        if counts.is_empty() {
                            "none yet".into()
                        } else {
                            counts.join(", ")
                        }
                    );
                }
                ExitCode::from(exit::OK)
            }
            Err(e) => fail(&e),
        },
    }
}

/// The request's next event; the first Ctrl-C meanwhile cancels the request (its end,
/// usually a `cancelled` error, is still read and returned).
async fn next_or_cancel(
    client: &Client,
    reply: &mut poed::client::Reply,
    interrupted: &mut bool,
    what: &str,
) -> Option<Event> {
    loop {
        tokio::select! {
            e = reply.next() => return e,
            _ = tokio::signal::ctrl_c(), if !*interrupted => {
                *interrupted = true;
                eprintln!("\npoectl: cancelling {what}…");
                let _ = tokio::time::timeout(Duration::from_secs(5), client.cancel(&reply.id)).await;
            }
        }
    }
}

async fn login(client: &Client, timeout: f64) -> ExitCode {
    let mut reply = match client.login(Some(timeout)).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    // Ctrl-C cancels the sign-in (the window closes, the browser goes back to headless).
    let mut interrupted = false;
    loop {
        let event = next_or_cancel(client, &mut reply, &mut interrupted, "the sign-in").await;
        let Some(event) = event else { break };
        match event {
            Event::LoginStarted { url } => {
                eprintln!("poectl: sign in in the browser window that opened at {url}; waiting…")
            }
            Event::LoggedIn { account } => {
                println!("account: {account}");
                return ExitCode::from(exit::OK);
            }
            Event::Error { kind, .. } if interrupted && kind == poed::ErrorKind::Cancelled => {
                eprintln!("poectl: the sign-in was cancelled");
                return ExitCode::from(exit::INTERRUPTED);
            }
            Event::Error { kind, message, .. } => {
                eprintln!("poectl: {kind}: {message}");
                return ExitCode::from(exit::REQUEST_FAILED);
            }
            _ => {}
        }
    }
    fail(&ClientError::Closed)
}

/// How `poectl ask` asks and prints.
struct AskHow {
    no_stream: bool,
    json: bool,
    conversation: Option<i64>,
}

async fn ask(
    client: &Client,
    model: Option<String>,
    system: Option<String>,
    how: AskHow,
    prompt: Vec<String>,
) -> ExitCode {
    let AskHow {
        no_stream,
        json,
        conversation,
    } = how;
    let prompt = if prompt.is_empty() || prompt == ["-"] {
        let mut s = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut s) {
            eprintln!("poectl: cannot read the prompt from stdin: {e}");
            return ExitCode::from(exit::CONNECTION);
        }
        s
    } else {
        prompt.join(" ")
    };
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(ChatMessage::new("system", system));
    }
    messages.push(ChatMessage::new("user", prompt));
    let mut reply = match client
        .complete(CompleteRequest {
            conversation,
            model,
            messages,
            stream: !no_stream,
        })
        .await
    {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let tty = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let mut interrupted = false;
    loop {
        let event = next_or_cancel(client, &mut reply, &mut interrupted, "the request").await;
        let Some(event) = event else {
            return fail(&ClientError::Closed);
        };
        if json {
            print_json(&reply.id, &event);
            let _ = out.flush();
        }
        match event {
            Event::Delta { text } if !json => {
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            Event::Replace { text } if !json => {
                eprintln!("\npoectl: the site rewrote its reply; the full text follows");
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            Event::Done { text, reason, .. } => {
                if no_stream && !json {
                    let _ = out.write_all(text.as_bytes());
                }
                if tty && !json && !text.ends_with('\n') {
                    let _ = out.write_all(b"\n");
                }
                let _ = out.flush();
                if let (Some(r), false) = (reason, json) {
                    eprintln!(
                        "poectl: sent in a new site chat ({}): {}",
                        r.kind, r.message
                    );
                }
                return ExitCode::from(exit::OK);
            }
            Event::Error { kind, message, .. } => {
                if interrupted && kind == poed::ErrorKind::Cancelled {
                    return ExitCode::from(exit::INTERRUPTED);
                }
                if !json {
                    if tty {
                        let _ = out.write_all(b"\n");
                    }
                    eprintln!("poectl: {kind}: {message}");
                }
                return ExitCode::from(exit::REQUEST_FAILED);
            }
            _ => {}
        }
    }
}

/// The history file: `--history-file`, else where poed's config puts it.
fn history_path(args: &Args) -> Result<PathBuf, String> {
    if let Some(p) = &args.history_file {
        return Ok(poed::config::expand_home(p));
    }
    let mut config = match &args.config {
        Some(path) => poed::config::Config::from_file(path)?,
        None => {
            let path = poed::config::default_config_path();
            if path.exists() {
                poed::config::Config::from_file(&path)?
            } else {
                poed::config::Config::default()
            }
        }
    };
    config.expand_home();
    if !config.history.enabled {
        return Err("the history is off (history.enabled = false in the config); name a file with --history-file to read an old one".into());
    }
    Ok(poed::history::file_path(
        &config.history,
        &config.browser.profile,
    ))
}

fn open_history(args: &Args) -> Result<poed::history::Store, ExitCode> {
    let opened = history_path(args)
        .and_then(|path| poed::history::Store::open_after_writes(&path).map_err(|e| e.to_string()));
    opened.map_err(|e| {
        eprintln!("poectl: {e}");
        ExitCode::from(exit::REQUEST_FAILED)
    })
}

fn history(args: &Args, action: Option<&HistoryAction>, limit: usize, json: bool) -> ExitCode {
    let store = match open_history(args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result: Result<String, poed::history::HistoryError> = match action {
        None => store.list(limit).map(|rows| {
            if json {
                pretty(&rows)
            } else {
                poed::history::text::list(&rows)
            }
        }),
        Some(HistoryAction::Show { id, json }) => match store.show(*id) {
            Ok(Some(c)) if *json => Ok(pretty(&c)),
            Ok(Some(c)) => Ok(poed::history::text::conversation(&c)),
            Ok(None) => {
                eprintln!(
                    "poectl: no conversation {id} in {}; `poectl history` lists them",
                    store.path().display()
                );
                return ExitCode::from(exit::REQUEST_FAILED);
            }
            Err(e) => Err(e),
        },
        Some(HistoryAction::Search { words, limit, json }) => {
            store.search(&words.join(" "), *limit).map(|hits| {
                if *json {
                    pretty(&hits)
                } else {
                    poed::history::text::hits(&hits)
                }
            })
        }
        Some(HistoryAction::Export { ids, output }) => match store.export(ids) {
            Ok(export) => {
                let text = pretty(&export);
                let Some(path) = output else {
                    return print_out(&text);
                };
                use std::os::unix::fs::OpenOptionsExt;
                let written = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .mode(0o600)
                    .open(path)
                    .and_then(|mut f| f.write_all(text.as_bytes()));
                return match written {
                    Ok(()) => ExitCode::from(exit::OK),
                    Err(e) => {
                        eprintln!("poectl: cannot write {}: {e}", path.display());
                        ExitCode::from(exit::BAD_INPUT)
                    }
                };
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(text) => print_out(&text),
        Err(e) => {
            eprintln!("poectl: {e}");
            ExitCode::from(exit::REQUEST_FAILED)
        }
    }
}

/// Prints `text` whole (a closed pipe, as with `| head`, is no error).
fn print_out(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.is_empty() && !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
    ExitCode::from(exit::OK)
}

/// Pretty JSON of the history's views (plain data: serialising cannot fail).
fn pretty<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// The chat to start: a new one, or one from the history (`--continue`).
fn start_chat(
    args: &Args,
    model: Option<String>,
    system: Option<String>,
    continue_id: Option<i64>,
) -> Result<poed::chat::Chat, ExitCode> {
    let Some(id) = continue_id else {
        return Ok(poed::chat::Chat {
            model,
            system,
            turns: Vec::new(),
            conversation: None,
        });
    };
    let store = open_history(args)?;
    let conversation = match store.show(id) {
        Ok(Some(c)) => c,
        Ok(None) => {
            eprintln!(
                "poectl: no conversation {id} in {}; `poectl history` lists them",
                store.path().display()
            );
            return Err(ExitCode::from(exit::REQUEST_FAILED));
        }
        Err(e) => {
            eprintln!("poectl: {e}");
            return Err(ExitCode::from(exit::REQUEST_FAILED));
        }
    };
    let mut chat = poed::chat::Chat::from_transcript(
        Some(model.unwrap_or_else(|| conversation.model.clone())),
        conversation.transcript(),
    );
    if system.is_some() {
        chat.system = system;
    }
    chat.conversation = Some(id);
    Ok(chat)
}

/// `secs` as a short human duration (`42s`, `5m 3s`, `7h 12m`).
fn human_secs(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}
