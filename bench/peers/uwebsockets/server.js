// Benchmark peer for DynamoWave: a Node.js chat server on uWebSockets.js (the npm package
// `uwebsockets`, which ships uWebSockets.js's prebuilt native module), written the way
// uWebSockets.js is meant to be used for broadcast: every socket subscribes to one topic when it
// opens and a message goes out with one app.publish(). It speaks the AWS serverless-chat sample's
// protocol: a client sends {"action":"sendmessage","data":"..."} (or "message" instead of
// "data") and the server sends that string, as is, as a text frame, to every open client, the
// sender included. Other frames (binary ones too) are ignored. Listens on 127.0.0.1:$PORT
// (default 8083), any path (e.g. /ws).
const uWS = require('uwebsockets');

const port = Number(process.env.PORT || 8083);
const TOPIC = 'chat';

const app = uWS.App();

app.ws('/*', {
  compression: uWS.DISABLED,
  // Like API Gateway's 128 KiB message limit; a larger frame closes the connection.
  maxPayloadLength: 128 * 1024,
  // Seconds without traffic before uWS closes a socket (it pings idle ones on its own first):
  // generous, so that silent members of a benchmark are never dropped.
  idleTimeout: 120,
  // uWS's default is 64 KiB: publish() then silently skips every subscriber whose unsent data is
  // over that until it catches up, so under the fanout points (with the load generator on the
  // same cores) the delivery ratio would measure this setting, not the server. The other peers
  // queue per connection without such a small bound; 64 MiB per socket is never reached by the
  // benchmark's points and still bounds memory. No close on reaching it (the default).
  maxBackpressure: 64 * 1024 * 1024,
  closeOnBackpressureLimit: false,

  open: (ws) => {
    ws.subscribe(TOPIC);
  },

  message: (ws, message, isBinary) => {
    if (isBinary) return;
    let msg;
    try {
      // `message` is an ArrayBuffer valid only during this call; toString() copies it.
      msg = JSON.parse(Buffer.from(message).toString('utf8'));
    } catch {
      return;
    }
    if (!msg || msg.action !== 'sendmessage') return;
    const text = msg.data ?? msg.message;
    if (typeof text !== 'string') return;

    // app.publish reaches every subscriber, the sender included (ws.publish would skip it).
    app.publish(TOPIC, text, false);
  },
});

app.any('/*', (res) => {
  res.writeStatus('426 Upgrade Required').end('WebSocket only\n');
});

// Exclusive: uSockets sets SO_REUSEPORT by default, so a second server on a port in use would
// "listen" too (and share the connections) instead of failing.
app.listen('127.0.0.1', port, uWS.LIBUS_LISTEN_EXCLUSIVE_PORT, (listenSocket) => {
  if (!listenSocket) {
    console.error(`uwebsockets: could not listen on 127.0.0.1:${port}`);
    process.exit(1);
  }
  console.log(`uwebsockets chat on ws://127.0.0.1:${port}/ws`);
});
