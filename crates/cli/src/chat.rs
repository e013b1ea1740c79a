//! `dynamowave chat`: the terminal client.
//!
//! It joins a room, prints what is said there (recent history first), sends each line typed,
//! and understands `/join R`, `/leave R`, `/history [N]`, `/members`, `/quit`. When the
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
    /// Live messages that arrived while a room's first history page was on its way.
    held: HashMap<String, Vec<std::sync::Arc<ChatMessage>>>,
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
        _ if command.starts_with('/') => {
            status("commands: /join ROOM, /leave [ROOM], /history [N], /members, /quit");
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
        }
    }
    Ok(None)
}

async fn on_frame(
    client: &mut Client,
    state: &mut State,
    frame: ServerFrame,
) -> anyhow::Result<()> {
    match frame {
        ServerFrame::Joined { room, seq } => {
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
                    for m in messages.iter().chain(held.iter()) {
                        show_live(state, m);
                    }
                }
                // An explicit /history: print the page as it is.
                None => {
                    state.awaiting = state.awaiting.saturating_sub(1);
                    messages.iter().for_each(|m| print_message(state, m));
                }
            }
        }
        ServerFrame::Message(m) => {
            if let Some(held) = state.held.get_mut(m.room.as_str()) {
                held.push(m);
            } else {
                show_live(state, &m);
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

/// Prints a room message once: only seqs past the last one printed in that room.
fn show_live(state: &mut State, m: &ChatMessage) {
    let Some(last) = state.rooms.get_mut(m.room.as_str()) else {
        return;
    };
    if last.is_some_and(|last| m.seq.0 <= last) {
        return;
    }
    *last = Some(m.seq.0);
    print_message(state, m);
}

fn print_message(state: &State, m: &ChatMessage) {
    let data = if state.scripted {
        m.data.replace('\n', "\\n")
    } else {
        m.data.replace('\n', "\n    ")
    };
    println!("[#{} {}] {}: {}", m.room, m.seq, m.user, data);
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
