//! `dynamowave chat`: the terminal client.
//!
//! It joins a room, prints what is said there (recent history first), sends each line typed,
//! and understands `/join R`, `/leave R`, `/history [N]`, `/members`, `/edit SEQ TEXT`,
//! `/delete SEQ`, `/react SEQ EMOJI`, `/unreact SEQ EMOJI`, `/read`, `/quit`. Edits,
//! deletions and reactions print as lines of their own (`[#room 7] ann edited 3: ...`); read
//! receipts and typing notices are shown on stderr in a terminal. In a terminal, sending a line
//! marks the room read through the newest entry shown (when that moved it); a script marks
//! only with `/read`. When the
//! connection drops it reconnects with exponential backoff and jitter, rejoins every room with
//! `after: <last seq seen>` (so nothing is missed or printed twice) and resends every message
//! not yet acked with its same id (the server deduplicates).
//!
//! With stdin not a terminal it reads lines from the pipe, prints one line per message, and
//! exits once the input ends and every line it sent has been acked, so scripts can use it.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dynamowave_client::Client;
use dynamowave_core::protocol::{ChatMessage, ServerFrame};
use dynamowave_core::types::random_token;
use rand::Rng;
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// WebSocket URL of the server.
    #[arg(default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Your name in the chat.
    #[arg(long, env = "USER")]
    pub name: Option<String>,
    /// The room to start in.
    #[arg(long, default_value = "general")]
    pub room: String,
    /// Messages of history shown when joining a room.
    #[arg(long, default_value_t = 20)]
    pub history: u64,
}

/// What the client remembers across reconnects.
struct State {
    current: String,
    /// Joined rooms and the last seq printed in each (None until the first history arrived).
    rooms: BTreeMap<String, Option<u64>>,
    /// Live entries that arrived while a room's first history page was on its way.
    held: HashMap<String, Vec<ServerFrame>>,
    /// Sent and not yet acked: id → (room, text).
    pending: BTreeMap<String, (String, String)>,
    history: u64,
    /// stdin is a pipe: print one line per message, exit at end of input.
    scripted: bool,
    input_done: bool,
    connected_once: bool,
    /// Answers still expected to `/history` and `/members`.
    awaiting: usize,
    /// The highest seq acked to us per room: a script exits only after printing up to it.
    acked: HashMap<String, u64>,
    /// The read mark last sent per room (a mark is sent only when it moves).
    marked: HashMap<String, u64>,
}

impl State {
    /// A script is done when its input ended, every room it is in has shown its history,
    /// everything it sent was acked and printed, and every answer it asked for arrived.
    fn script_done(&self) -> bool {
        self.scripted
            && self.input_done
            && self.pending.is_empty()
            && self.held.is_empty()
            && self.rooms.values().all(Option::is_some)
            && self.awaiting == 0
            && self.acked.iter().all(|(room, seq)| {
                self.rooms
                    .get(room)
                    .is_none_or(|last| last.is_some_and(|l| l >= *seq))
            })
    }
}

enum Exit {
    Quit,
}

pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let name = args.name.clone().unwrap_or_else(|| "guest".into());
    let separator = if args.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{separator}name={}", args.url, encode(&name));
    dynamowave_core::RoomId::parse(&args.room).map_err(|e| anyhow::anyhow!(e.message))?;
    let mut state = State {
        current: args.room.clone(),
        rooms: BTreeMap::from([(args.room.clone(), None)]),
        held: HashMap::new(),
        pending: BTreeMap::new(),
        history: args.history,
        scripted: !std::io::stdin().is_terminal(),
        input_done: false,
        connected_once: false,
        awaiting: 0,
        acked: HashMap::new(),
        marked: HashMap::new(),
    };
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let mut attempt = 0u32;
    loop {
        match session(&url, &mut state, &mut input).await {
            Ok(Exit::Quit) => return Ok(()),
            // The input ended and everything was acked: nothing is lost by stopping here.
            Err(_) if state.input_done && state.pending.is_empty() => return Ok(()),
            Err(e) if !state.connected_once => {
                // Never connected: say so plainly instead of retrying forever.
                anyhow::bail!("cannot connect to {}: {e}", args.url);
            }
            Err(e) => {
                attempt += 1;
                let backoff = backoff(attempt);
                status(&format!(
                    "disconnected ({e}); reconnecting in {:.1} s",
                    backoff.as_secs_f64()
                ));
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// Exponential backoff with full jitter: up to 0.5 s, 1 s, 2 s, ... capped at 15 s.
fn backoff(attempt: u32) -> Duration {
    let cap = (500u64 << attempt.min(5)).min(15_000);
    Duration::from_millis(rand::rng().random_range(cap / 4..=cap))
}

/// One connection: (re)join every room, resend what is pending, then relay until it ends.
async fn session(
    url: &str,
    state: &mut State,
    input: &mut Lines<BufReader<Stdin>>,
) -> anyhow::Result<Exit> {
    let mut client = Client::connect(url).await?;
    state.connected_once = true;
    status(&format!(
        "connected to {url}; room #{} (type /quit to leave)",
        state.current
    ));
    for (room, last) in &state.rooms {
        client.join(room, *last).await?;
    }
    for (id, (room, text)) in &state.pending {
        client.send_message(room, text, id).await?;
    }
    loop {
        if state.script_done() {
            return Ok(Exit::Quit);
        }
        tokio::select! {
            line = input.next_line(), if !state.input_done => {
                match line.context("reading stdin")? {
                    Some(line) => {
                        if let Some(exit) = on_line(&mut client, state, line.trim_end()).await? {
                            return Ok(exit);
                        }
                    }
                    None => {
                        state.input_done = true;
                        if !state.scripted {
                            return Ok(Exit::Quit);
                        }
                    }
                }
            }
            frame = client.next() => on_frame(&mut client, state, frame?).await?,
        }
    }
}

async fn on_line(
    client: &mut Client,
    state: &mut State,
    line: &str,
) -> anyhow::Result<Option<Exit>> {
    if line.is_empty() {
        return Ok(None);
    }
    let (command, arg) = line
        .split_once(' ')
        .map_or((line, ""), |(c, a)| (c, a.trim()));
    match command {
        "/quit" | "/exit" => return Ok(Some(Exit::Quit)),
        "/join" if !arg.is_empty() => {
            if let Err(e) = dynamowave_core::RoomId::parse(arg) {
                status(&e.message);
            } else {
                state.rooms.entry(arg.to_owned()).or_insert(None);
                state.current = arg.to_owned();
                client.join(arg, state.rooms[arg]).await?;
            }
        }
        "/leave" => {
            let room = if arg.is_empty() {
                state.current.clone()
            } else {
                arg.to_owned()
            };
            if state.rooms.remove(&room).is_some() {
                client.leave(&room).await?;
                if room == state.current {
                    state.current = state.rooms.keys().next().cloned().unwrap_or_default();
                }
            } else {
                status(&format!("you are not in #{room}"));
            }
        }
        "/history" => {
            let n = arg.parse().unwrap_or(state.history).clamp(1, 500);
            state.awaiting += 1;
            client.history(&state.current, None, None, Some(n)).await?;
        }
        "/members" => {
            state.awaiting += 1;
            client.members(&state.current).await?;
        }
        "/edit" | "/delete" | "/react" | "/unreact" | "/read"
            if !state.rooms.contains_key(&state.current) =>
        {
            status("join a room first: /join ROOM");
        }
        "/edit" => match arg
            .split_once(' ')
            .and_then(|(seq, text)| Some((seq.parse().ok()?, text)))
        {
            Some((seq, text)) => {
                let id = random_token(16);
                client.edit(&state.current, seq, text, &id).await?;
            }
            None => status("usage: /edit SEQ NEW TEXT"),
        },
        "/delete" => match arg.parse() {
            Ok(seq) => {
                client
                    .delete(&state.current, seq, &random_token(16))
                    .await?
            }
            Err(_) => status("usage: /delete SEQ"),
        },
        "/react" | "/unreact" => match arg
            .split_once(' ')
            .and_then(|(seq, emoji)| Some((seq.parse().ok()?, emoji.trim())))
        {
            Some((seq, emoji)) => {
                let on = command == "/react";
                client
                    .react(&state.current, seq, emoji, on, &random_token(16))
                    .await?;
            }
            None => status(&format!("usage: {command} SEQ EMOJI")),
        },
        "/read" => mark_read(client, state).await?,
        _ if command.starts_with('/') => {
            status(
                "commands: /join ROOM, /leave [ROOM], /history [N], /members, /edit SEQ TEXT, \
                 /delete SEQ, /react SEQ EMOJI, /unreact SEQ EMOJI, /read, /quit",
            );
        }
        _ if state.current.is_empty() || !state.rooms.contains_key(&state.current) => {
            status("join a room first: /join ROOM");
        }
        _ => {
            let id = random_token(16);
            state
                .pending
                .insert(id.clone(), (state.current.clone(), line.to_owned()));
            client.send_message(&state.current, line, &id).await?;
            // A person typing a reply has read what was shown; a script has not.
            if !state.scripted {
                mark_read(client, state).await?;
            }
        }
    }
    Ok(None)
}

/// Marks the current room read through the newest entry shown (nothing shown: nothing to do).
async fn mark_read(client: &mut Client, state: &mut State) -> anyhow::Result<()> {
    if let Some(&Some(last)) = state.rooms.get(&state.current)
        && last > state.marked.get(&state.current).copied().unwrap_or(0)
    {
        client.read(&state.current, last).await?;
        state.marked.insert(state.current.clone(), last);
    }
    Ok(())
}

async fn on_frame(
    client: &mut Client,
    state: &mut State,
    frame: ServerFrame,
) -> anyhow::Result<()> {
    match frame {
        ServerFrame::Joined { room, seq, .. } => {
            let room = room.as_str().to_owned();
            // First join of this room: show recent history, holding live messages meanwhile.
            if matches!(state.rooms.get(&room), Some(None)) {
                state.held.entry(room.clone()).or_default();
                client
                    .history(
                        &room,
                        Some(seq.0 + 1),
                        None,
                        Some(state.history.clamp(1, 500)),
                    )
                    .await?;
            }
        }
        ServerFrame::History { room, messages, .. } => {
            let room = room.as_str().to_owned();
            match state.held.remove(&room) {
                Some(held) => {
                    // The first page after a join: print it, then what was held back.
                    state.rooms.insert(room.clone(), Some(0));
                    for m in messages {
                        show_live(state, &ServerFrame::Message(m));
                    }
                    for frame in &held {
                        show_live(state, frame);
                    }
                }
                // An explicit /history: print the page as it is.
                None => {
                    state.awaiting = state.awaiting.saturating_sub(1);
                    messages.iter().for_each(|m| print_message(state, m));
                }
            }
        }
        frame @ (ServerFrame::Message(_)
        | ServerFrame::Edited { .. }
        | ServerFrame::Deleted { .. }
        | ServerFrame::Reaction { .. }) => {
            let Some((room, _)) = entry_position(&frame) else {
                return Ok(());
            };
            if let Some(held) = state.held.get_mut(room) {
                held.push(frame);
            } else {
                show_live(state, &frame);
            }
        }
        ServerFrame::Read { room, user, seq } => {
            if !state.scripted {
                status(&format!("{user} read #{room} through {seq}"));
            }
        }
        ServerFrame::Typing { room, user } => {
            if !state.scripted {
                status(&format!("{user} is typing in #{room}…"));
            }
        }
        ServerFrame::Ack { id, room, seq, .. } => {
            state.pending.remove(&id);
            let acked = state.acked.entry(room.as_str().to_owned()).or_default();
            *acked = (*acked).max(seq.0);
        }
        ServerFrame::Members { room, members } => {
            state.awaiting = state.awaiting.saturating_sub(1);
            let names: Vec<&str> = members.iter().map(|m| m.user.as_str()).collect();
            status(&format!("#{room}: {}", names.join(", ")));
        }
        ServerFrame::Presence {
            room, event, user, ..
        } => {
            if !state.scripted {
                status(&format!("{user} {event:?} #{room}").to_lowercase());
            }
        }
        ServerFrame::Error {
            id, code, message, ..
        } => {
            // A refused /history or /members is an answer too.
            if id.is_none() {
                state.awaiting = state.awaiting.saturating_sub(1);
            }
            let keep = code == dynamowave_core::ErrorCode::Unavailable;
            if let Some(id) = id.filter(|_| !keep) {
                state.pending.remove(&id);
            }
            status(&format!("error {code}: {message}"));
        }
        ServerFrame::Left { room } => status(&format!("left #{room}")),
        ServerFrame::Connected { .. } | ServerFrame::Info { .. } => {}
    }
    Ok(())
}

/// The room and the seq in the room's log of an entry's frame (an event's own seq).
fn entry_position(frame: &ServerFrame) -> Option<(&str, u64)> {
    match frame {
        ServerFrame::Message(m) => Some((m.room.as_str(), m.seq.0)),
        ServerFrame::Edited {
            room, event_seq, ..
        }
        | ServerFrame::Deleted {
            room, event_seq, ..
        }
        | ServerFrame::Reaction {
            room, event_seq, ..
        } => Some((room.as_str(), event_seq.0)),
        _ => None,
    }
}

/// Prints a room entry once: only seqs past the last one printed in that room.
fn show_live(state: &mut State, frame: &ServerFrame) {
    let Some((room, seq)) = entry_position(frame) else {
        return;
    };
    let Some(last) = state.rooms.get_mut(room) else {
        return;
    };
    if last.is_some_and(|last| seq <= last) {
        return;
    }
    *last = Some(seq);
    match frame {
        ServerFrame::Message(m) => print_message(state, m),
        ServerFrame::Edited {
            room,
            seq,
            data,
            user,
            event_seq,
            ..
        } => println!(
            "[#{room} {event_seq}] {user} edited {seq}: {}",
            one_line(state, data)
        ),
        ServerFrame::Deleted {
            room,
            seq,
            event_seq,
        } => println!("[#{room} {event_seq}] message {seq} was deleted"),
        ServerFrame::Reaction {
            room,
            seq,
            emoji,
            user,
            on,
            counts,
            event_seq,
        } => {
            let verb = if *on { "reacted" } else { "took back" };
            println!(
                "[#{room} {event_seq}] {user} {verb} {emoji} on {seq} ({})",
                format_counts(counts)
            );
        }
        _ => {}
    }
}

/// `👍 2, 🎉 1`, or `no reactions`.
fn format_counts(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "no reactions".into();
    }
    counts
        .iter()
        .map(|(emoji, n)| format!("{emoji} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn one_line(state: &State, text: &str) -> String {
    if state.scripted {
        text.replace('\n', "\\n")
    } else {
        text.replace('\n', "\n    ")
    }
}

fn print_message(state: &State, m: &ChatMessage) {
    let edited = if m.edited_at.is_some() {
        " (edited)"
    } else {
        ""
    };
    let reactions = if m.reactions.is_empty() {
        String::new()
    } else {
        format!(" [{}]", format_counts(&m.reactions))
    };
    println!(
        "[#{} {}] {}: {}{edited}{reactions}",
        m.room,
        m.seq,
        m.user,
        one_line(state, &m.data)
    );
}

/// Connection news and errors go to stderr, so stdout carries only messages.
fn status(text: &str) {
    eprintln!("-- {text}");
}

/// Percent-encodes a name for the query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
