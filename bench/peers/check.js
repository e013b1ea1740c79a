// Smoke check of a chat server's compat protocol (the AWS serverless-chat sample): two clients
// connect, each sends one {"action":"sendmessage",...} frame (one with "data", one with
// "message"), and Alice also sends frames that must not be broadcast; both must receive exactly
// the two strings. (The AWS sample's $default route answers the sender alone with "Use the
// sendmessage route ..."; DynamoWave does that too, the peers ignore such frames: both pass.)
// Usage: node bench/peers/check.js ws://127.0.0.1:PORT/ws   (uses ws from node-ws/node_modules)
const path = require('path');
const WebSocket = require(path.join(__dirname, 'node-ws', 'node_modules', 'ws'));

const url = process.argv[2];
if (!url) {
  console.error('usage: node check.js ws://127.0.0.1:PORT/ws');
  process.exit(2);
}
const expected = ['hello from bob', 'hi bob, alice here'];
const got = { alice: [], bob: [] };

function open(name) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.on('open', () => resolve(ws));
    ws.on('error', reject);
    ws.on('message', (data, isBinary) => got[name].push(isBinary ? '<binary>' : data.toString()));
  });
}

const timer = setTimeout(() => finish('timed out'), 5000);

function finish(problem) {
  clearTimeout(timer);
  const bad = [];
  if (problem) bad.push(problem);
  for (const name of Object.keys(got)) {
    const seen = got[name]
      .filter((m) => !(name === 'alice' && m.startsWith('Use the sendmessage route')))
      .sort();
    if (JSON.stringify(seen) !== JSON.stringify(expected.slice().sort())) {
      bad.push(`${name} received ${JSON.stringify(got[name])}, expected ${JSON.stringify(expected)}`);
    }
  }
  if (bad.length) {
    console.log(`FAIL ${url}: ${bad.join('; ')}`);
    process.exit(1);
  }
  console.log(`OK ${url}: both clients received both messages`);
  process.exit(0);
}

(async () => {
  const alice = await open('alice');
  const bob = await open('bob');
  bob.send('{"action":"sendmessage","message":"hello from bob"}');
  await new Promise((r) => setTimeout(r, 200));
  alice.send('not json');
  alice.send('{"action":"other","data":"must be ignored"}');
  alice.send('{"action":"sendmessage","data":"hi bob, alice here"}');
  // Give the server time to deliver (and to show it does not send anything else).
  await new Promise((r) => setTimeout(r, 700));
  alice.close();
  bob.close();
  finish();
})().catch((e) => finish(`error: ${e.message}`));
