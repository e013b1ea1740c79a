// DynamoWave chat page: one plain ES module, no dependencies, served at /app.js.
// It speaks the v1 protocol (subprotocol `dynamowave.v1`, see docs/protocol.md) and follows its
// "resuming without loss" recipe: a fixed name, the last seq seen per room, and an outbox of
// unacked messages that are resent with their original ids after a reconnect.

const PROTOCOL = 'dynamowave.v1';
const DEFAULT_ROOM = 'general';
const ROOM_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f]/;
const HISTORY_PAGE = 50;
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 15_000;
const CONNECT_TIMEOUT_MS = 10_000; // socket opened but no `connected` frame
const IDLE_PING_MS = 25_000; // nothing received for this long: ask the server something
const PING_TIMEOUT_MS = 10_000; // ... and give the socket up if it stays silent
const ACK_TIMEOUT_MS = 30_000; // connected, message sent, no ack: mark it failed
const OFFLINE_FAIL_MS = 20_000; // disconnected this long: pending messages are marked failed
const UNAVAILABLE_RETRIES = 5;
const ERROR_SHOWN_MS = 15_000;
const STORAGE_NAME = 'dynamowave.name';
// Tokens are kept for this tab only (sessionStorage), never in localStorage or the URL.
const STORAGE_TOKEN = 'dynamowave.token';
// A token travels as a second offered subprotocol: never in the URL, so never in access logs.
const TOKEN_PROTOCOL_PREFIX = 'dynamowave.token.';
const STORAGE_ROOMS = 'dynamowave.rooms';
const QUICK_EMOJIS = ['👍', '❤️', '😂', '🎉'];
const READ_DELAY_MS = 500; // a burst of messages is marked read once
const TYPING_SEND_MS = 2000; // at most one `typing` per room this often
const TYPING_SHOW_MS = 5000; // someone's "is typing" shows this long after their last one

// ---------------------------------------------------------------------------------------------
// DOM helpers

const $ = (selector) => document.querySelector(selector);

/** Creates an element: h('li', {class: 'x', 'data-room': 'r', onclick: fn}, 'text', child). */
function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  node.append(...children.filter((child) => child != null && child !== false));
  return node;
}

const ui = {
  joinScreen: $('#join-screen'),
  joinForm: $('#join-form'),
  name: $('#name'),
  nameError: $('#name-error'),
  token: $('#token'),
  chatScreen: $('#chat-screen'),
  status: $('#status'),
  statusText: $('#status-text'),
  statusCountdown: $('#status-countdown'),
  reconnectNow: $('#reconnect-now'),
  sidebar: $('#sidebar'),
  sidebarToggle: $('#sidebar-toggle'),
  rooms: $('#rooms'),
  roomForm: $('#room-form'),
  roomInput: $('#room-input'),
  roomError: $('#room-error'),
  members: $('#members'),
  memberCount: $('#member-count'),
  me: $('#me'),
  signOut: $('#sign-out'),
  roomTitle: $('#room-title'),
  roomPeople: $('#room-people'),
  messages: $('#messages'),
  loadOlder: $('#load-older'),
  olderText: $('#older-text'),
  empty: $('#empty'),
  jump: $('#jump-latest'),
  errors: $('#errors'),
  composerForm: $('#composer-form'),
  composer: $('#composer'),
  composerLabel: $('#composer-label'),
  send: $('#send'),
  announcer: $('#announcer'),
  typing: $('#typing'),
};

const storage = {
  get(key) {
    try {
      return localStorage.getItem(key);
    } catch {
      return null;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(key, value);
    } catch {
      // private mode or storage disabled: the page works without it
    }
  },
};

/**
 * A UUIDv4 for a message id. crypto.randomUUID() exists only in secure contexts (https, or
 * localhost); the page may also be served over plain http on a LAN address.
 */
function newId() {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

const utf8 = new TextEncoder();
const byteLength = (text) => utf8.encode(text).length;

// ---------------------------------------------------------------------------------------------
// State

const state = {
  name: '', // the user name: also the scope of message ids on the server, so it never changes
  token: '', // a JWT for servers with --auth jwt; the server's `connected` then names the user
  connectionId: null,
  ws: null,
  gen: 0, // +1 per socket; tells replies of an old socket from the current one
  ready: false, // `connected` received on the current socket
  stopped: true, // not trying to be connected (join screen, signed out, closed by the server)
  attempt: 0, // reconnect attempts since the last `connected`
  reconnectTimer: null,
  reconnectAt: 0,
  connectTimer: null,
  downSince: Date.now(), // when the connection was last lost (or first tried)
  lastFrameAt: 0,
  pingSentAt: 0,
  limits: { maxFrameBytes: 32768, maxMessageBytes: 131072 },
  replies: [], // frames sent on this socket whose reply has not come yet, oldest first
  rooms: new Map(), // room name -> Room (the rooms the user is in, in list order)
  shown: null, // the Room on screen
  outbox: new Map(), // message id -> own message record not yet acked (pending or failed)
  lastSentId: null,
  ops: new Map(), // id -> {frame, tries, sentGen}: an edit, delete or react not acked yet
  readsOff: false, // the server's store keeps no read positions: stop sending `read`
};

/**
 * One joined room. Message records: {key, id, room, user, data, seq, ts, own, el, state,
 * editedAt, reactions, mine} where state is 'sent', 'pending' or 'failed', key is
 * `${user}\u0000${id}` (a message id is unique per (room, user), not per room), reactions are
 * the counts by emoji and mine the emojis this user is known (from `reaction` frames) to have set.
 * A deleted message keeps its record (deleted: true) so that it is never shown again.
 */
function createRoom(name) {
  return {
    name,
    log: h('ol', { class: 'log', 'aria-label': `Messages in #${name}` }),
    bySeq: new Map(), // seq -> record
    byKey: new Map(), // key -> record
    seqs: [], // the seqs shown, ascending
    last: null, // highest seq processed (null until the first `joined`)
    joinedGen: -1, // state.gen of the socket on which `joined` came
    historyDone: false, // the first page of history has come
    loadingOlder: false,
    more: false, // older messages exist on the server
    members: [],
    unread: 0,
    scrollTop: null, // remembered while another room is shown
    item: null, // its <li> in #rooms
    reads: new Map(), // other user -> the seq they have read through
    marked: new Set(), // the records showing a "Read by" mark
    myRead: 0, // this user's read position, as the server knows it
    readSent: 0, // the last `read` sent on this socket
    typing: new Map(), // user -> the timer that hides their "is typing"
    typingSentAt: 0,
  };
}

const keyOf = (user, id) => `${user}\u0000${id}`;

// ---------------------------------------------------------------------------------------------
// Connection

function wsUrl() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}/ws?name=${encodeURIComponent(state.name)}`;
}

function connect() {
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  if (state.ws) return;
  state.stopped = false;
  setStatus('connecting');
  let socket;
  try {
    socket = new WebSocket(wsUrl(), state.token ? [PROTOCOL, TOKEN_PROTOCOL_PREFIX + state.token] : PROTOCOL);
  } catch (err) {
    showError(`Could not open a connection: ${err.message}`);
    scheduleReconnect();
    return;
  }
  state.ws = socket;
  state.gen += 1;
  state.ready = false;
  state.replies = [];
  socket.addEventListener('message', (event) => {
    if (socket === state.ws) onText(event.data);
  });
  socket.addEventListener('open', () => {
    if (socket !== state.ws || socket.protocol === PROTOCOL) return;
    // The server did not accept dynamowave.v1 (only the AWS sample's protocol): no use retrying.
    state.stopped = true;
    setStatus('offline', 'Incompatible server');
    showError(`This server does not speak the ${PROTOCOL} protocol this page needs.`);
    socket.close(1000);
  });
  socket.addEventListener('close', (event) => socketDown(socket, event.code, event.reason));
  clearTimeout(state.connectTimer);
  state.connectTimer = setTimeout(() => {
    if (socket === state.ws && !state.ready) socketDown(socket, 4000, 'no answer from the server');
  }, CONNECT_TIMEOUT_MS);
}

/** The current socket is gone (closed, or given up on): clean up and plan what comes next. */
function socketDown(socket, code, reason) {
  if (socket !== state.ws) return; // an old socket we already gave up on
  if (state.ready) state.downSince = Date.now(); // failed reconnect attempts do not reset it
  state.ws = null;
  state.ready = false;
  state.replies = [];
  state.pingSentAt = 0;
  clearTimeout(state.connectTimer);
  if (socket.readyState === WebSocket.CONNECTING || socket.readyState === WebSocket.OPEN) {
    try {
      socket.close(4000, reason.slice(0, 100));
    } catch {
      // already closing
    }
  }
  for (const room of state.rooms.values()) room.loadingOlder = false;
  if (state.shown) renderOlder(state.shown);

  if (code === 1009) {
    // The server refused a frame as too large. It can only be the last message sent (the page
    // checks sizes against the announced limits first): do not resend it forever.
    const rec = state.outbox.get(state.lastSentId);
    if (rec && rec.state === 'pending') markFailed(rec, 'too large to send');
    showError('Message too large: the server closed the connection. Shorten it and retry.');
  }
  if (state.stopped) return;
  if (code === 1000 || code === 1008) {
    // Closed on purpose by the server (the management API), or refused by its policy (the
    // `error` frame before the close says why): retrying on our own would not help.
    state.stopped = true;
    setStatus('offline', code === 1000 ? 'Disconnected by the server' : 'Refused by the server');
    return;
  }
  if (!navigator.onLine) {
    setStatus('offline', 'Offline: waiting for the network');
    return; // the `online` event reconnects
  }
  scheduleReconnect();
}

/** Exponential backoff with full jitter: a random delay in [0, min(cap, base * 2^attempt)). */
function scheduleReconnect() {
  clearTimeout(state.reconnectTimer);
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
  const delay = Math.random() * ceiling;
  state.attempt += 1;
  state.reconnectAt = Date.now() + delay;
  state.reconnectTimer = setTimeout(connect, delay);
  setStatus('reconnecting');
}

function reconnectNow() {
  if (state.ws) return;
  state.attempt = 0;
  connect();
}

/** Gives the socket up when the server has gone silent (a half-open TCP connection). */
function checkLiveness() {
  if (!state.ready) return;
  const now = Date.now();
  if (state.pingSentAt && now - state.pingSentAt > PING_TIMEOUT_MS) {
    socketDown(state.ws, 4000, 'no answer from the server');
  } else if (!state.pingSentAt && now - state.lastFrameAt > IDLE_PING_MS) {
    // Any action the server does not know is answered with an `info` frame.
    if (sendFrame({ action: 'ping' })) state.pingSentAt = now;
  }
}

/** Sends a frame on the current socket and remembers it until its reply comes. */
function sendFrame(frame, context = {}) {
  const socket = state.ws;
  if (!socket || !state.ready || socket.readyState !== WebSocket.OPEN) return false;
  socket.send(JSON.stringify(frame));
  // `typing` gets no reply; everything else gets exactly one.
  if (frame.action !== 'typing') state.replies.push({ action: frame.action, room: frame.room, id: frame.id, ...context });
  return true;
}

const REPLY_TO = {
  ack: 'sendmessage',
  joined: 'join',
  left: 'leave',
  history: 'history',
  members: 'members',
  info: 'ping',
};

/**
 * The server answers a connection's frames in the order it received them, one reply each, so
 * the oldest request waiting for a reply of this type is the one being answered. (This is how
 * an error without an id, e.g. for `history`, is matched to its request.)
 */
function takeRequest(frame) {
  let index;
  if (frame.type === 'error') {
    index = frame.id ? state.replies.findIndex((r) => r.id === frame.id) : -1;
    if (index < 0) index = 0;
  } else if (frame.type === 'ack') {
    // Sends, edits, deletions and reactions are all acked: by id when it is there.
    index = state.replies.findIndex((r) => r.id === frame.id);
    if (index < 0) index = state.replies.findIndex((r) => r.action === 'sendmessage');
  } else {
    index = state.replies.findIndex((r) => r.action === REPLY_TO[frame.type]);
  }
  if (index < 0 || index >= state.replies.length) return null;
  const [request] = state.replies.splice(index, 1);
  return request;
}

// ---------------------------------------------------------------------------------------------
// Frames from the server

function onText(text) {
  state.lastFrameAt = Date.now();
  state.pingSentAt = 0;
  let frame = null;
  try {
    frame = JSON.parse(text);
  } catch {
    // not JSON: text posted with the management API (POST /@connections/{id})
  }
  if (!frame || typeof frame !== 'object' || typeof frame.type !== 'string') {
    showNotice(`Note from the server: ${text}`);
    return;
  }
  const handler = handlers[frame.type];
  if (handler) handler(frame);
}

const handlers = {
  connected(frame) {
    clearTimeout(state.connectTimer);
    state.ready = true;
    state.attempt = 0;
    state.connectionId = frame.connectionId;
    if (frame.limits) state.limits = frame.limits;
    if (frame.user && frame.user !== state.name) {
      // With a token the server names the user (the token's subject), whatever was typed.
      state.name = frame.user;
      ui.me.textContent = frame.user;
    }
    setStatus('connected');
    for (const room of state.rooms.values()) sendJoin(room);
  },

  joined(frame) {
    takeRequest(frame);
    const room = state.rooms.get(frame.room);
    if (!room) return;
    room.joinedGen = state.gen;
    if (room.last !== null && frame.seq < room.last) {
      // The server's log is shorter than what we saw: its data was replaced. Start over.
      resetRoom(room);
      showError(`#${room.name} was reset on the server; reloading its messages.`);
    }
    if (room.last === null) room.last = frame.seq;
    room.myRead = frame.lastRead ?? 0;
    room.readSent = 0;
    if (!room.historyDone) requestHistory(room, null);
    sendFrame({ action: 'members', room: room.name });
    flushOutbox(room);
    flushOps(room);
    scheduleRead();
  },

  message(frame) {
    const room = state.rooms.get(frame.room);
    if (!room) return;
    const rec = applyMessage(room, frame);
    if (rec && !rec.own) noteNewMessage(room, rec);
    stopTyping(room, frame.user);
    scheduleRead();
  },

  edited(frame) {
    const room = state.rooms.get(frame.room);
    if (!room) return;
    noteEntry(room, frame.eventSeq);
    const rec = room.bySeq.get(frame.seq);
    if (!rec || rec.deleted) return; // not loaded (history will show it as it is now), or gone
    rec.data = frame.data;
    rec.editedAt = frame.editedAt;
    withScroll(room, 'follow', () => paintMessage(rec));
  },

  deleted(frame) {
    const room = state.rooms.get(frame.room);
    if (!room) return;
    noteEntry(room, frame.eventSeq);
    const rec = room.bySeq.get(frame.seq);
    if (rec && !rec.deleted) removeMessage(room, rec);
  },

  reaction(frame) {
    const room = state.rooms.get(frame.room);
    if (!room) return;
    noteEntry(room, frame.eventSeq);
    const rec = room.bySeq.get(frame.seq);
    if (!rec || rec.deleted) return;
    rec.reactions = frame.counts ?? {};
    if (frame.user === state.name) {
      if (frame.on) rec.mine.add(frame.emoji);
      else rec.mine.delete(frame.emoji);
    }
    withScroll(room, 'follow', () => paintReactions(rec));
  },

  read(frame) {
    const room = state.rooms.get(frame.room);
    if (!room) return;
    if (frame.user === state.name) {
      // The answer to our `read` (or one from another tab of this user).
      const index = state.replies.findIndex((r) => r.action === 'read' && r.room === room.name);
      if (index >= 0) state.replies.splice(index, 1);
      room.myRead = Math.max(room.myRead, frame.seq);
      return;
    }
    setRead(room, frame.user, frame.seq);
  },

  typing(frame) {
    const room = state.rooms.get(frame.room);
    if (!room || frame.user === state.name) return;
    clearTimeout(room.typing.get(frame.user));
    room.typing.set(frame.user, setTimeout(() => stopTyping(room, frame.user), TYPING_SHOW_MS));
    if (room === state.shown) renderTyping();
  },

  ack(frame) {
    takeRequest(frame);
    // An edit, deletion or reaction: its `edited`/`deleted`/`reaction` frame shows it.
    if (state.ops.delete(frame.id)) return;
    const room = state.rooms.get(frame.room);
    const rec = state.outbox.get(frame.id);
    state.outbox.delete(frame.id);
    if (!room || !rec) return;
    // Committed (a duplicate ack carries the original seq and ts): a normal message now.
    const message = { room: room.name, seq: frame.seq, ts: frame.ts, id: frame.id, user: rec.user, data: rec.data };
    applyMessage(room, message, { fromAck: true });
  },

  history(frame) {
    const request = takeRequest(frame);
    const room = state.rooms.get(frame.room);
    if (!room) return;
    const older = request?.older === true;
    withScroll(room, older ? 'keep-bottom-distance' : 'follow', () => {
      for (const message of frame.messages) applyMessage(room, message);
    });
    room.more = frame.more && room.seqs.length > 0;
    room.historyDone = true;
    room.loadingOlder = false;
    if (room === state.shown) {
      renderOlder(room);
      renderEmpty(room);
    }
    scheduleRead();
  },

  members(frame) {
    takeRequest(frame);
    const room = state.rooms.get(frame.room);
    if (!room) return;
    room.members = frame.members;
    for (const member of frame.members) {
      if (member.user === state.name) room.myRead = Math.max(room.myRead, member.lastRead ?? 0);
      else setRead(room, member.user, member.lastRead ?? 0);
    }
    if (room === state.shown) renderMembers(room);
  },

  presence(frame) {
    const room = state.rooms.get(frame.room);
    if (room) requestMembersSoon(room);
  },

  left(frame) {
    takeRequest(frame);
  },

  info(frame) {
    takeRequest(frame);
  },

  error(frame) {
    const request = takeRequest(frame);
    const op = frame.id ? state.ops.get(frame.id) : null;
    if (op) {
      opFailed(op, frame);
      return;
    }
    if (request?.action === 'read') {
      // Not worth troubling the user; a store without read positions refuses them all.
      if (frame.code === 'bad_request') state.readsOff = true;
      return;
    }
    const rec = frame.id ? state.outbox.get(frame.id) : null;
    const roomName = rec?.room ?? request?.room ?? frame.room;
    const text = errorText(frame, roomName);
    const retryAfter = frame.retryAfterMs ?? 1000;
    const action = rec ? 'sendmessage' : request?.action;
    const gen = state.gen;
    const later = (fn) => setTimeout(() => gen === state.gen && state.ready && fn(), retryAfter);

    // rate_limited: the server said when to try again, and nothing was done: always retry.
    const retryable = frame.code === 'unavailable' || frame.code === 'rate_limited';
    if (rec) {
      if (frame.code === 'rate_limited' || (frame.code === 'unavailable' && rec.tries < UNAVAILABLE_RETRIES)) {
        rec.tries += 1;
        rec.sentGen = -1; // resend it (same id) after the delay, or after the next join
        later(() => trySend(rec));
      } else {
        markFailed(rec, failReason(frame.code));
      }
      if (frame.code === 'not_joined') {
        const room = state.rooms.get(rec.room);
        if (room) sendJoin(room);
      }
    } else if (action === 'join' && retryable) {
      later(() => {
        const room = state.rooms.get(roomName);
        if (room && room.joinedGen !== state.gen) sendJoin(room);
      });
    } else if (action === 'history') {
      const room = state.rooms.get(roomName);
      if (room) {
        room.loadingOlder = false;
        if (room === state.shown) renderOlder(room);
        if (retryable) later(() => requestHistory(room, request.older ? room.seqs[0] : null));
      }
    } else if (action === 'ping' || action === 'members') {
      return; // not worth troubling the user
    }
    showError(text);
  },
};

function errorText(frame, roomName) {
  const seconds = Math.max(1, Math.ceil((frame.retryAfterMs ?? 1000) / 1000));
  const where = roomName ? ` #${roomName}` : ' that room';
  switch (frame.code) {
    case 'rate_limited':
      return `You are sending too fast; wait ${seconds} s.`;
    case 'too_large':
      return 'That message is too large to send.';
    case 'unauthorized':
      return 'You are not signed in (or your session has expired).';
    case 'forbidden':
      return 'You are not allowed to do that.';
    case 'not_joined':
      return `You are not in${where} any more; rejoining. Retry your message.`;
    case 'not_found':
      return `Room${where} does not exist.`;
    case 'unavailable':
      return 'The server could not save; retrying.';
    case 'bad_request':
      return `The server refused it: ${frame.message}`;
    default:
      return frame.message || `Error: ${frame.code}`;
  }
}

function failReason(code) {
  switch (code) {
    case 'rate_limited':
      return 'sent too fast';
    case 'too_large':
      return 'too large';
    case 'unavailable':
      return 'the server could not save it';
    case 'not_joined':
      return 'not in this room';
    default:
      return 'refused by the server';
  }
}

// ---------------------------------------------------------------------------------------------
// Rooms

function sendJoin(room) {
  const frame = { action: 'join', room: room.name };
  if (room.last !== null) frame.after = room.last; // replay what was missed, exactly once
  sendFrame(frame);
}

function requestHistory(room, before) {
  const frame = { action: 'history', room: room.name, limit: HISTORY_PAGE };
  if (before != null) frame.before = before;
  if (sendFrame(frame, { older: before != null }) && before != null) {
    room.loadingOlder = true;
    if (room === state.shown) renderOlder(room);
  }
}

function loadOlder() {
  const room = state.shown;
  if (!room || !room.more || room.loadingOlder || room.seqs.length === 0) return;
  if (room.joinedGen !== state.gen) return;
  requestHistory(room, room.seqs[0]);
}

const membersTimers = new Map();
function requestMembersSoon(room) {
  // Presence frames can come in bursts (a reconnecting crowd): ask once for each burst.
  if (membersTimers.has(room.name)) return;
  membersTimers.set(
    room.name,
    setTimeout(() => {
      membersTimers.delete(room.name);
      if (state.rooms.get(room.name) === room) sendFrame({ action: 'members', room: room.name });
    }, 100),
  );
}

function addRoom(name) {
  let room = state.rooms.get(name);
  if (!room) {
    room = createRoom(name);
    state.rooms.set(name, room);
    room.item = roomItem(room);
    ui.rooms.append(room.item);
    saveRooms();
    if (state.ready) sendJoin(room);
  }
  return room;
}

function leaveRoom(room) {
  if (room.joinedGen === state.gen) sendFrame({ action: 'leave', room: room.name });
  state.rooms.delete(room.name);
  room.item.remove();
  for (const [id, rec] of state.outbox) if (rec.room === room.name) state.outbox.delete(id);
  for (const [id, op] of state.ops) if (op.frame.room === room.name) state.ops.delete(id);
  for (const timer of room.typing.values()) clearTimeout(timer);
  saveRooms();
  if (state.shown === room) {
    const next = state.rooms.values().next().value ?? null;
    showRoom(next);
  }
  ui.roomInput.focus();
}

function resetRoom(room) {
  for (const rec of room.bySeq.values()) {
    rec.el.remove();
    room.byKey.delete(rec.key);
  }
  room.bySeq.clear();
  room.seqs = [];
  room.marked.clear();
  room.last = null;
  room.historyDone = false;
  room.more = false;
}

function saveRooms() {
  storage.set(STORAGE_ROOMS, JSON.stringify([...state.rooms.keys()]));
}

function roomItem(room) {
  const badge = h('span', { class: 'badge', hidden: true });
  const open = h('button', { type: 'button', class: 'room-open', onclick: () => showRoom(room, true) },
    h('span', { class: 'room-name' }, `#${room.name}`), badge);
  const leave = h('button', {
    type: 'button', class: 'room-leave small', 'aria-label': `Leave #${room.name}`, title: `Leave #${room.name}`,
    onclick: () => leaveRoom(room),
  }, 'Leave');
  return h('li', { class: 'room', 'data-room': room.name }, open, leave);
}

function renderRoomItem(room) {
  const open = room.item.querySelector('.room-open');
  const badge = room.item.querySelector('.badge');
  const current = room === state.shown;
  room.item.classList.toggle('current', current);
  if (current) open.setAttribute('aria-current', 'true');
  else open.removeAttribute('aria-current');
  badge.hidden = room.unread === 0;
  badge.textContent = room.unread > 99 ? '99+' : String(room.unread);
  badge.setAttribute('aria-label', `${room.unread} unread`);
  // At phone width the room list hides behind a toggle: it shows the unread total.
  let total = 0;
  for (const r of state.rooms.values()) total += r.unread;
  const toggleBadge = $('#toggle-badge');
  toggleBadge.hidden = total === 0;
  toggleBadge.textContent = total > 99 ? '99+' : String(total);
  toggleBadge.setAttribute('aria-label', `${total} unread`);
}

function showRoom(room, focusComposer = false) {
  const previous = state.shown;
  if (previous && previous !== room) {
    previous.scrollTop = isNearBottom() ? null : ui.messages.scrollTop;
    previous.log.remove();
  }
  state.shown = room;
  ui.jump.hidden = true;
  closeSidebar();
  for (const r of state.rooms.values()) renderRoomItem(r);
  const label = room ? `Message #${room.name}` : 'Join a room to send messages';
  ui.composer.placeholder = label;
  ui.composerLabel.textContent = label;
  ui.composer.disabled = !room;
  ui.send.disabled = !room;
  ui.roomTitle.textContent = room ? `#${room.name}` : 'No room';
  document.title = room ? `#${room.name} · DynamoWave` : 'DynamoWave chat';
  renderTyping();
  if (!room) {
    renderMembers(null);
    renderOlder(null);
    renderEmpty(null);
    return;
  }
  room.unread = 0;
  renderRoomItem(room);
  ui.empty.before(room.log);
  renderMembers(room);
  renderOlder(room);
  renderEmpty(room);
  ui.messages.scrollTop = room.scrollTop ?? ui.messages.scrollHeight;
  if (focusComposer) ui.composer.focus();
  scheduleRead();
}

function renderMembers(room) {
  ui.members.replaceChildren();
  if (!room) {
    ui.memberCount.textContent = '';
    ui.roomPeople.textContent = '';
    return;
  }
  // One entry per name; a name may have several connections (tabs, devices).
  const people = new Map();
  for (const member of room.members) {
    const person = people.get(member.user) ?? { user: member.user, connections: 0, me: false };
    person.connections += 1;
    if (member.connectionId === state.connectionId) person.me = true;
    people.set(member.user, person);
  }
  for (const person of people.values()) {
    ui.members.append(h('li', { class: person.me ? 'member me' : 'member' },
      h('span', { class: 'avatar', 'aria-hidden': 'true', style: `--hue: ${hue(person.user)}` }, initial(person.user)),
      h('span', { class: 'member-name' }, person.user),
      person.me ? h('span', { class: 'tag' }, 'you') : null,
      person.connections > 1 ? h('span', { class: 'tag' }, `${person.connections} tabs`) : null));
  }
  const count = people.size;
  ui.memberCount.textContent = count ? `(${count})` : '';
  ui.roomPeople.textContent = count === 1 ? '1 person here' : count ? `${count} people here` : '';
}

function renderOlder(room) {
  const loading = room?.loadingOlder;
  ui.loadOlder.hidden = !room || !room.more || loading;
  ui.olderText.textContent = !room || !room.historyDone
    ? (room ? 'Loading messages…' : '')
    : loading ? 'Loading earlier messages…'
      : room.more ? '' : room.seqs.length ? `This is the beginning of #${room.name}.` : '';
}

function renderEmpty(room) {
  const empty = room && room.historyDone && !room.log.querySelector('.message');
  ui.empty.hidden = !empty;
  ui.empty.textContent = empty ? `No messages in #${room.name} yet. Say hello!` : '';
}

const initial = (name) => (Array.from(name.trim())[0] ?? '?').toUpperCase();

/** A stable hue for a name, so each person's avatar keeps its colour. */
function hue(name) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return hash % 360;
}

// ---------------------------------------------------------------------------------------------
// Messages

/**
 * Shows a committed message (from `message`, `history` or an `ack`) once: by seq, and by
 * (user, id) so the sender's pending copy becomes the message instead of a second one.
 * Returns the record when the message was new to the room.
 */
function applyMessage(room, m, { fromAck = false } = {}) {
  // `last` follows the room's stream (and history, which is contiguous up to the head), never
  // an ack: messages of others with lower seqs may still be on their way.
  if (!fromAck) room.last = Math.max(room.last ?? 0, m.seq);
  if (room.bySeq.has(m.seq)) return null;
  const key = keyOf(m.user, m.id);
  let rec = room.byKey.get(key);
  const isNew = !rec;
  if (rec && rec.seq != null) return null; // same message under another seq: cannot happen
  if (!rec) {
    rec = { key, id: m.id, room: room.name, user: m.user, own: m.user === state.name, el: h('li'), mine: new Set() };
    room.byKey.set(key, rec);
  }
  if (state.outbox.get(m.id) === rec) state.outbox.delete(m.id);
  Object.assign(rec, {
    seq: m.seq, ts: m.ts, data: m.data, state: 'sent', failReason: null,
    editedAt: m.editedAt ?? null, reactions: m.reactions ?? {},
  });
  room.bySeq.set(m.seq, rec);
  paintMessage(rec);
  withScroll(room, 'follow', () => placeMessage(room, rec));
  scheduleReadMarks(room);
  if (room === state.shown && room.seqs.length === 1) {
    renderEmpty(room);
    renderOlder(room);
  }
  return isNew ? rec : null;
}

/** Puts a record's element in seq order; messages without a seq (pending) stay at the end. */
function placeMessage(room, rec) {
  if (rec.seq == null) {
    room.log.append(rec.el);
    return;
  }
  const seqs = room.seqs;
  let lo = 0;
  let hi = seqs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (seqs[mid] < rec.seq) lo = mid + 1;
    else hi = mid;
  }
  seqs.splice(lo, 0, rec.seq);
  const next = lo + 1 < seqs.length ? room.bySeq.get(seqs[lo + 1]).el : room.log.querySelector('.message:not([data-seq])');
  room.log.insertBefore(rec.el, next);
}

/** (Re)draws a message record's element. */
function paintMessage(rec) {
  const li = rec.el;
  li.className = ['message', rec.own && 'own', rec.state === 'pending' && 'pending', rec.state === 'failed' && 'failed']
    .filter(Boolean).join(' ');
  li.dataset.id = rec.id;
  if (rec.seq != null) {
    li.dataset.seq = String(rec.seq);
    li.title = `seq ${rec.seq}`;
  } else {
    delete li.dataset.seq;
    li.removeAttribute('title');
  }
  const sent = rec.state === 'sent' && rec.seq != null;
  const meta = h('div', { class: 'meta' },
    h('span', { class: 'sender' }, rec.user),
    rec.own ? h('span', { class: 'visually-hidden' }, ' (you)') : null,
    rec.ts != null && rec.state === 'sent' ? timeElement(rec.ts) : null,
    rec.editedAt ? h('span', { class: 'edited', title: `Edited ${fullFormat.format(new Date(rec.editedAt))}` }, '(edited)') : null,
    rec.state === 'pending' ? h('span', { class: 'state' }, 'Sending…') : null,
    rec.state === 'failed' ? h('span', { class: 'state' }, `Not sent: ${rec.failReason}`) : null);
  const parts = [meta];
  if (rec.editing) {
    parts.push(editForm(rec));
  } else {
    const body = h('div', { class: 'body' });
    linkify(body, rec.data);
    parts.push(body);
  }
  if (rec.state === 'failed') {
    parts.push(h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'small retry', onclick: () => retry(rec) }, 'Retry')));
  }
  if (sent) {
    // Shown on hover or focus (always at touch widths): quick reactions, and Edit/Delete on one's own.
    parts.push(h('div', { class: 'toolbar', role: 'group', 'aria-label': 'Message actions' },
      ...QUICK_EMOJIS.map((emoji) => reactionButton(rec, emoji, 'quick')),
      rec.own && !rec.editing ? h('button', { type: 'button', class: 'tool edit', onclick: () => startEdit(rec) }, 'Edit') : null,
      rec.own ? h('button', { type: 'button', class: 'tool delete', onclick: () => deleteMessage(rec) }, 'Delete') : null));
    rec.reactionsEl = h('div', { class: 'reactions' });
    parts.push(rec.reactionsEl);
    paintReactions(rec);
  }
  if (rec.mark) parts.push(rec.mark);
  li.replaceChildren(...parts);
}

/** A button that sets or takes back this user's `emoji` on a message. */
function reactionButton(rec, emoji, kind) {
  const count = rec.reactions?.[emoji] ?? 0;
  const mine = rec.mine.has(emoji);
  return h('button', {
    type: 'button', class: `reaction ${kind}`, 'data-emoji': emoji, 'aria-pressed': String(mine),
    'aria-label': kind === 'count' ? `${emoji} ${count}` : `React with ${emoji}`,
    title: mine ? `Take back your ${emoji}` : `React with ${emoji}`,
    onclick: () => sendOp({ action: 'react', room: rec.room, seq: rec.seq, emoji, on: !rec.mine.has(emoji) }),
  }, emoji, kind === 'count' ? h('span', { class: 'reaction-count' }, String(count)) : null);
}

/** Redraws a message's reaction counts, and which quick reactions are this user's. */
function paintReactions(rec) {
  if (!rec.reactionsEl) return;
  const focused = rec.el.contains(document.activeElement) ? document.activeElement : null;
  const counts = Object.entries(rec.reactions ?? {}).filter(([, count]) => count > 0);
  rec.reactionsEl.replaceChildren(...counts.map(([emoji]) => reactionButton(rec, emoji, 'count')));
  rec.reactionsEl.hidden = counts.length === 0;
  for (const button of rec.el.querySelectorAll('.toolbar .reaction')) {
    button.setAttribute('aria-pressed', String(rec.mine.has(button.dataset.emoji)));
  }
  // A count pressed with the keyboard was replaced: keep the focus on its new button.
  if (focused?.classList.contains('count') && !focused.isConnected) {
    [...rec.reactionsEl.children].find((b) => b.dataset.emoji === focused.dataset.emoji)?.focus();
  }
}

function editForm(rec) {
  const input = h('textarea', { class: 'edit-input', rows: 2, 'aria-label': 'Edit your message' });
  input.value = rec.draft;
  input.addEventListener('input', () => {
    rec.draft = input.value;
  });
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      finishEdit(rec, true);
    } else if (event.key === 'Escape') {
      event.preventDefault();
      finishEdit(rec, false);
    }
  });
  return h('form', { class: 'edit-form', onsubmit: (event) => { event.preventDefault(); finishEdit(rec, true); } },
    input,
    h('div', { class: 'edit-actions' },
      h('button', { type: 'submit', class: 'small primary' }, 'Save'),
      h('button', { type: 'button', class: 'small', onclick: () => finishEdit(rec, false) }, 'Cancel'),
      h('span', { class: 'hint' }, 'Enter to save, Esc to cancel')));
}

function startEdit(rec) {
  rec.editing = true;
  rec.draft = rec.data;
  const room = state.rooms.get(rec.room);
  withScroll(room, 'follow', () => paintMessage(rec));
  const input = rec.el.querySelector('.edit-input');
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
}

/** Closes a message's editor; with `save`, sends the new text (the `edited` frame shows it). */
function finishEdit(rec, save) {
  if (save && rec.draft !== rec.data) {
    if (!rec.draft.trim()) {
      showError('A message cannot be empty: use Delete to remove it.');
      return;
    }
    if (!sendOp({ action: 'edit', room: rec.room, seq: rec.seq, data: rec.draft })) return;
  }
  rec.editing = false;
  withScroll(state.rooms.get(rec.room), 'follow', () => paintMessage(rec));
  ui.composer.focus();
}

function deleteMessage(rec) {
  if (confirm('Delete this message for everyone?')) sendOp({ action: 'delete', room: rec.room, seq: rec.seq });
}

/** Takes a deleted message off the page; its record stays, so that it never comes back. */
function removeMessage(room, rec) {
  const hadFocus = rec.el.contains(document.activeElement);
  rec.deleted = true;
  rec.editing = false;
  const index = room.seqs.indexOf(rec.seq);
  if (index >= 0) room.seqs.splice(index, 1);
  withScroll(room, 'follow', () => rec.el.remove());
  room.marked.delete(rec);
  rec.mark = null;
  scheduleReadMarks(room);
  if (room === state.shown) renderEmpty(room);
  if (hadFocus) ui.composer.focus();
}

// ---------------------------------------------------------------------------------------------
// Edits, deletions and reactions (the server acks them like messages)

/** Sends an edit, delete or react frame with a new id; false (and an error shown) if it cannot go now. */
function sendOp(frame) {
  const room = state.rooms.get(frame.room);
  if (!room || room.joinedGen !== state.gen || !state.ready) {
    showError('Not connected: try again once the page is connected.');
    return false;
  }
  const op = { frame: { ...frame, id: newId() }, tries: 0, sentGen: -1 };
  if (byteLength(JSON.stringify(op.frame)) > state.limits.maxFrameBytes) {
    showError('That text is too large to send. Shorten it.');
    return false;
  }
  state.ops.set(op.frame.id, op);
  sendOpFrame(op);
  return true;
}

function sendOpFrame(op) {
  const room = state.rooms.get(op.frame.room);
  if (room && room.joinedGen === state.gen && sendFrame(op.frame)) op.sentGen = state.gen;
}

/** After a (re)join: resends what was not acked, with the same ids (the server deduplicates). */
function flushOps(room) {
  for (const op of state.ops.values()) {
    if (op.frame.room === room.name && op.sentGen !== state.gen) sendOpFrame(op);
  }
}

function opFailed(op, frame) {
  const retryable = frame.code === 'rate_limited' || frame.code === 'unavailable' || frame.code === 'not_joined';
  const room = state.rooms.get(op.frame.room);
  if (retryable && op.tries < UNAVAILABLE_RETRIES && room) {
    op.tries += 1;
    op.sentGen = -1; // again after the delay, or after the next join
    const gen = state.gen;
    if (frame.code === 'not_joined') sendJoin(room);
    else setTimeout(() => gen === state.gen && state.ready && sendOpFrame(op), frame.retryAfterMs ?? 1000);
    if (frame.code !== 'rate_limited') return;
  } else {
    state.ops.delete(op.frame.id);
  }
  const what = { edit: 'edit', delete: 'delete', react: 'react to' }[op.frame.action];
  if (frame.code === 'forbidden') showError(`You can only ${what} your own messages.`);
  else if (frame.code === 'not_found') showError('That message is no longer there.');
  else showError(errorText(frame, op.frame.room));
}

// ---------------------------------------------------------------------------------------------
// Read marks and typing

/** A message, event or read position moved the room on: note it for resuming and reading. */
function noteEntry(room, seq) {
  if (typeof seq === 'number') room.last = Math.max(room.last ?? 0, seq);
  scheduleRead();
}

let readTimer = null;
/** Soon (once for a burst), tells the server the shown room is read through its newest seq. */
function scheduleRead() {
  if (readTimer) return;
  readTimer = setTimeout(() => {
    readTimer = null;
    const room = state.shown;
    if (!room || state.readsOff || document.visibilityState !== 'visible' || !isNearBottom()) return;
    if (room.joinedGen !== state.gen || !room.historyDone || room.last == null) return;
    if (room.last <= Math.max(room.myRead, room.readSent)) return;
    if (sendFrame({ action: 'read', room: room.name, seq: room.last })) room.readSent = room.last;
  }, READ_DELAY_MS);
}

function setRead(room, user, seq) {
  if (seq <= (room.reads.get(user) ?? 0)) return;
  room.reads.set(user, seq);
  scheduleReadMarks(room);
}

function scheduleReadMarks(room) {
  if (room.marksQueued) return;
  room.marksQueued = true;
  queueMicrotask(() => {
    room.marksQueued = false;
    renderReadMarks(room);
  });
}

/** "Read by bob, carol" under the newest shown message each other person has read. */
function renderReadMarks(room) {
  const readers = new Map(); // record -> user names
  for (const [user, seq] of room.reads) {
    const rec = newestMessageUpTo(room, seq);
    if (rec) readers.set(rec, [...(readers.get(rec) ?? []), user]);
  }
  withScroll(room, 'follow', () => {
    for (const rec of room.marked) {
      if (readers.has(rec)) continue;
      rec.mark?.remove();
      rec.mark = null;
    }
    for (const [rec, users] of readers) {
      if (!rec.mark) {
        rec.mark = h('div', { class: 'read-by' });
        rec.el.append(rec.mark);
      }
      rec.mark.textContent = `Read by ${users.sort().join(', ')}`;
    }
  });
  room.marked = new Set(readers.keys());
}

/** The shown message with the highest seq not above `seq`, if any. */
function newestMessageUpTo(room, seq) {
  const seqs = room.seqs;
  let lo = 0;
  let hi = seqs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (seqs[mid] <= seq) lo = mid + 1;
    else hi = mid;
  }
  return lo > 0 ? room.bySeq.get(seqs[lo - 1]) : null;
}

/** On input in the composer: tells the room, at most every 2 s. */
function sendTyping() {
  const room = state.shown;
  if (!room || !ui.composer.value.trim() || room.joinedGen !== state.gen) return;
  const now = Date.now();
  if (now - room.typingSentAt < TYPING_SEND_MS) return;
  if (sendFrame({ action: 'typing', room: room.name })) room.typingSentAt = now;
}

function stopTyping(room, user) {
  if (!room.typing.has(user)) return;
  clearTimeout(room.typing.get(user));
  room.typing.delete(user);
  if (room === state.shown) renderTyping();
}

function renderTyping() {
  const users = state.shown ? [...state.shown.typing.keys()] : [];
  const text = users.length === 1 ? `${users[0]} is typing…`
    : users.length === 2 ? `${users[0]} and ${users[1]} are typing…`
      : `${users.length} people are typing…`;
  if (ui.typing.textContent !== (users.length ? text : '')) {
    ui.typing.replaceChildren(...(users.length ? [h('span', {}, text)] : []));
  }
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
const dayTimeFormat = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: 'numeric', minute: '2-digit' });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });

function timeElement(ts) {
  const date = new Date(ts);
  const today = new Date().toDateString() === date.toDateString();
  return h('time', { datetime: date.toISOString(), title: fullFormat.format(date) },
    (today ? timeFormat : dayTimeFormat).format(date));
}

/** Appends text to a node, with http(s) URLs as links. Never parses HTML. */
function linkify(node, text) {
  let at = 0;
  for (const match of text.matchAll(/\bhttps?:\/\/[^\s<>"']+/g)) {
    const url = match[0].replace(/[.,;:!?)\]}]+$/, '');
    node.append(text.slice(at, match.index),
      h('a', { href: url, target: '_blank', rel: 'noopener noreferrer nofollow' }, url));
    at = match.index + url.length;
  }
  node.append(text.slice(at));
}

function noteNewMessage(room, rec) {
  if (room !== state.shown) {
    room.unread += 1;
    renderRoomItem(room);
    return;
  }
  if (!isNearBottom()) ui.jump.hidden = false;
  announce(`${rec.user}: ${rec.data}`);
}

let announceQueue = [];
let announceTimer = null;
function announce(text) {
  // Batched, so a burst (a replay after a reconnect) is one announcement and not fifty.
  announceQueue.push(text.length > 200 ? `${text.slice(0, 200)}…` : text);
  if (announceTimer) return;
  announceTimer = setTimeout(() => {
    ui.announcer.textContent = announceQueue.length > 3
      ? `${announceQueue.length} new messages in #${state.shown?.name}`
      : announceQueue.join('. ');
    announceQueue = [];
    announceTimer = null;
  }, 400);
}

// ---------------------------------------------------------------------------------------------
// Sending, the outbox and retries

function sendMessage(text) {
  const room = state.shown;
  if (!room) return false;
  const id = newId();
  const bytes = byteLength(JSON.stringify({ action: 'sendmessage', room: room.name, data: text, id }));
  if (bytes > state.limits.maxFrameBytes) {
    showError(`Message too large: ${formatKiB(bytes)} (the limit is ${formatKiB(state.limits.maxFrameBytes)}). Shorten it or split it.`);
    return false;
  }
  const rec = {
    key: keyOf(state.name, id), id, user: state.name, own: true, data: text, seq: null, ts: null,
    state: 'pending', room: room.name, sentGen: -1, sentAt: 0, createdAt: Date.now(), tries: 0,
    el: h('li'), mine: new Set(), reactions: {},
  };
  room.byKey.set(rec.key, rec);
  state.outbox.set(id, rec);
  paintMessage(rec);
  withScroll(room, 'bottom', () => placeMessage(room, rec));
  renderEmpty(room);
  trySend(rec);
  return true;
}

/** Sends an outboxed message if its room is joined on the current socket. */
function trySend(rec) {
  const room = state.rooms.get(rec.room);
  if (!room || rec.state !== 'pending' || room.joinedGen !== state.gen || !state.ready) return;
  if (sendFrame({ action: 'sendmessage', room: rec.room, data: rec.data, id: rec.id })) {
    rec.sentGen = state.gen;
    rec.sentAt = Date.now();
    state.lastSentId = rec.id;
  }
}

/** After a (re)join: sends the room's pending messages, in the order they were written. */
function flushOutbox(room) {
  for (const rec of state.outbox.values()) {
    if (rec.room === room.name && rec.state === 'pending' && rec.sentGen !== state.gen) trySend(rec);
  }
}

function markFailed(rec, reason) {
  if (rec.state !== 'pending') return;
  rec.state = 'failed';
  rec.failReason = reason;
  paintMessage(rec);
}

function retry(rec) {
  if (rec.state !== 'failed') return;
  rec.state = 'pending';
  rec.tries = 0;
  rec.sentGen = -1;
  rec.createdAt = Date.now();
  paintMessage(rec); // removes the Retry button, which had the focus
  ui.composer.focus();
  if (!state.ws) {
    state.stopped = false;
    reconnectNow();
  }
  trySend(rec);
}

/** Pending messages that cannot go out become failed, with a Retry button. */
function checkOutbox() {
  const now = Date.now();
  for (const rec of state.outbox.values()) {
    if (rec.state !== 'pending') continue;
    if (!state.ready) {
      if (now - Math.max(state.downSince, rec.createdAt) > OFFLINE_FAIL_MS) markFailed(rec, 'no connection');
    } else if (rec.sentGen === state.gen && now - rec.sentAt > ACK_TIMEOUT_MS) {
      markFailed(rec, 'no answer from the server');
    }
  }
}

const formatKiB = (bytes) => `${Math.ceil(bytes / 1024)} KB`;

// ---------------------------------------------------------------------------------------------
// Scrolling

function isNearBottom() {
  const box = ui.messages;
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

/**
 * Runs a change to a room's log and keeps the view steady: 'bottom' scrolls to the end,
 * 'follow' sticks to the end when the view was there (and otherwise leaves it), and
 * 'keep-bottom-distance' keeps the view put while older messages are added above it.
 * Nested calls (a page of history) are handled once, by the outermost.
 */
let scrollBatch = false;
function withScroll(room, mode, change) {
  if (room !== state.shown || scrollBatch) {
    change();
    return;
  }
  const box = ui.messages;
  const atBottom = isNearBottom();
  const fromBottom = box.scrollHeight - box.scrollTop;
  scrollBatch = true;
  try {
    change();
  } finally {
    scrollBatch = false;
  }
  if (mode === 'bottom' || (atBottom && mode !== 'keep-bottom-distance')) {
    box.scrollTop = box.scrollHeight;
    ui.jump.hidden = true;
  } else if (mode === 'keep-bottom-distance') {
    box.scrollTop = box.scrollHeight - fromBottom;
  }
}

// ---------------------------------------------------------------------------------------------
// Status, errors and notices

const STATUS_TEXT = {
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting',
  offline: 'Offline',
};

function setStatus(kind, text) {
  ui.status.dataset.state = kind;
  const label = text ?? STATUS_TEXT[kind];
  if (ui.statusText.textContent !== label) ui.statusText.textContent = label;
  ui.reconnectNow.hidden = !(kind === 'reconnecting' || kind === 'offline');
  ui.reconnectNow.textContent = kind === 'offline' ? 'Reconnect' : 'Reconnect now';
  updateCountdown();
}

function updateCountdown() {
  const waiting = ui.status.dataset.state === 'reconnecting' && state.reconnectTimer;
  const seconds = Math.max(1, Math.ceil((state.reconnectAt - Date.now()) / 1000));
  ui.statusCountdown.textContent = waiting ? ` in ${seconds} s` : '';
}

function showError(text) {
  const last = ui.errors.lastElementChild;
  if (last && last.dataset.text === text) {
    // The same error again: count it instead of stacking copies.
    const count = Number(last.dataset.count) + 1;
    last.dataset.count = String(count);
    last.querySelector('.error-count').textContent = ` (×${count})`;
    clearTimeout(last.timer);
    last.timer = setTimeout(() => last.remove(), ERROR_SHOWN_MS);
    return;
  }
  const item = h('div', { class: 'error', 'data-text': text, 'data-count': '1' },
    h('span', { class: 'error-text' }, text, h('span', { class: 'error-count' })),
    h('button', { type: 'button', class: 'small', onclick: () => item.remove() }, 'Dismiss'));
  item.timer = setTimeout(() => item.remove(), ERROR_SHOWN_MS);
  ui.errors.append(item);
  while (ui.errors.children.length > 3) ui.errors.firstElementChild.remove();
}

function showNotice(text) {
  const room = state.shown;
  if (!room) {
    showError(text);
    return;
  }
  withScroll(room, 'follow', () => room.log.append(h('li', { class: 'notice' }, text)));
  announce(text);
}

// ---------------------------------------------------------------------------------------------
// Forms and keyboard

function validName(raw) {
  const name = raw.trim();
  if (!name) return { error: 'Enter a name to chat with.' };
  if (byteLength(name) > 64) return { error: 'That name is too long: use at most 64 characters.' };
  if (CONTROL_CHARS.test(name)) return { error: 'Use only printable characters in your name.' };
  return { name };
}

function roomNameError(name) {
  if (!name) return 'Enter a room name.';
  if (name.length > 64) return 'Room names are at most 64 characters.';
  if (!ROOM_NAME.test(name)) {
    return 'Room names can use only letters (A–Z), digits, "_", "." and "-", without spaces.';
  }
  return null;
}

function start(name, token) {
  state.name = name;
  state.token = token;
  storage.set(STORAGE_NAME, name);
  try {
    if (token) sessionStorage.setItem(STORAGE_TOKEN, token);
    else sessionStorage.removeItem(STORAGE_TOKEN);
  } catch {
    // storage disabled: the token lasts until the page is closed
  }
  ui.me.textContent = name;
  ui.joinScreen.hidden = true;
  ui.chatScreen.hidden = false;
  let saved = [];
  try {
    saved = JSON.parse(storage.get(STORAGE_ROOMS) ?? '[]');
  } catch {
    saved = [];
  }
  const names = Array.isArray(saved) ? saved.filter((r) => typeof r === 'string' && ROOM_NAME.test(r)) : [];
  if (names.length === 0) names.push(DEFAULT_ROOM);
  for (const roomName of names) addRoom(roomName);
  showRoom(state.rooms.get(names.includes(DEFAULT_ROOM) ? DEFAULT_ROOM : names[0]));
  state.downSince = Date.now();
  connect();
  ui.composer.focus();
  setInterval(() => {
    updateCountdown();
    checkOutbox();
    checkLiveness();
  }, 1000);
}

ui.joinForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const { name, error } = validName(ui.name.value);
  ui.nameError.textContent = error ?? '';
  ui.name.setAttribute('aria-invalid', error ? 'true' : 'false');
  if (error) {
    ui.name.focus();
    return;
  }
  start(name, ui.token.value.trim());
});

ui.roomForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const name = ui.roomInput.value.trim();
  const error = roomNameError(name);
  ui.roomError.textContent = error ?? '';
  ui.roomInput.setAttribute('aria-invalid', error ? 'true' : 'false');
  if (error) {
    ui.roomInput.focus();
    return;
  }
  ui.roomInput.value = '';
  showRoom(addRoom(name), true);
});

ui.roomInput.addEventListener('input', () => {
  if (ui.roomError.textContent && !roomNameError(ui.roomInput.value.trim())) {
    ui.roomError.textContent = '';
    ui.roomInput.setAttribute('aria-invalid', 'false');
  }
});

ui.composerForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const text = ui.composer.value;
  if (!text.trim()) return;
  if (sendMessage(text)) {
    ui.composer.value = '';
    fitComposer();
  }
  ui.composer.focus();
});

ui.composer.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composerForm.requestSubmit();
  }
});

function fitComposer() {
  ui.composer.style.height = 'auto';
  ui.composer.style.height = `${Math.min(ui.composer.scrollHeight + 2, 200)}px`;
}
ui.composer.addEventListener('input', fitComposer);
ui.composer.addEventListener('input', sendTyping);

ui.messages.addEventListener('scroll', () => {
  if (isNearBottom()) {
    ui.jump.hidden = true;
    scheduleRead();
  }
  if (ui.messages.scrollTop < 120) loadOlder();
}, { passive: true });

ui.loadOlder.addEventListener('click', loadOlder);
ui.jump.addEventListener('click', () => {
  ui.messages.scrollTop = ui.messages.scrollHeight;
  ui.jump.hidden = true;
  ui.composer.focus();
});
ui.reconnectNow.addEventListener('click', () => {
  state.stopped = false;
  reconnectNow();
});
ui.signOut.addEventListener('click', () => {
  state.stopped = true;
  state.ws?.close(1000, 'signed out');
  location.reload();
});

function closeSidebar() {
  ui.sidebar.classList.remove('open');
  ui.sidebarToggle.setAttribute('aria-expanded', 'false');
}
ui.sidebarToggle.addEventListener('click', () => {
  const open = !ui.sidebar.classList.contains('open');
  ui.sidebar.classList.toggle('open', open);
  ui.sidebarToggle.setAttribute('aria-expanded', String(open));
});
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && ui.sidebar.classList.contains('open')) {
    closeSidebar();
    ui.sidebarToggle.focus();
  }
});

document.addEventListener('visibilitychange', scheduleRead);
window.addEventListener('online', () => {
  if (!state.ws && !state.stopped) reconnectNow();
});
window.addEventListener('offline', () => {
  if (!state.ready) setStatus('offline', 'Offline: waiting for the network');
});
window.addEventListener('beforeunload', (event) => {
  if (!state.stopped && [...state.outbox.values()].some((rec) => rec.state === 'pending')) event.preventDefault();
});

// ---------------------------------------------------------------------------------------------
// Start

ui.name.value = storage.get(STORAGE_NAME) ?? '';
try {
  ui.token.value = sessionStorage.getItem(STORAGE_TOKEN) ?? '';
} catch {
  // storage disabled
}
ui.name.focus();

// For debugging in the console only; the page itself uses no globals.
window.dynamowave = Object.freeze({
  get state() {
    return state;
  },
  reconnectNow,
});
