// Benchmark peer for DynamoWave: a plain Node.js chat server written the way the `ws` README
// shows ("broadcast to all connected clients"). It speaks the AWS serverless-chat sample's
// protocol: a client sends {"action":"sendmessage","data":"..."} (or "message" instead of
// "data") and the server sends that string, as is, to every open client, the sender included.
// Other frames are ignored. Listens on 127.0.0.1:$PORT (default 8081), any path (e.g. /ws).
const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.env.PORT || 8081);
const wss = new WebSocketServer({ host: '127.0.0.1', port });

wss.on('connection', (ws) => {
  ws.on('error', console.error);

  ws.on('message', (raw) => {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      return;
    }
    if (!msg || msg.action !== 'sendmessage') return;
    const text = msg.data ?? msg.message;
    if (typeof text !== 'string') return;

    wss.clients.forEach((client) => {
      if (client.readyState === WebSocket.OPEN) {
        client.send(text);
      }
    });
  });
});

wss.on('listening', () => {
  console.log(`node-ws chat on ws://127.0.0.1:${port}/ws`);
});
