// The chat page against a server with `--auth jwt`: the token goes in the optional field, travels
// as a subprotocol (never in the URL), and the server's `connected` names the user.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { launchBrowser, Server, serverBin, shownMessages, typeAndSend, waitConnected } from './helpers.js';

const SECRET = 'a-test-secret-that-is-long-enough-for-hs256';

describe('chat page with JWT sign-in', { timeout: 120_000 }, () => {
  const server = new Server(['--auth', 'jwt', '--jwt-secret', SECRET]);
  let browser;

  before(async () => {
    await server.start();
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server.dispose();
  });

  test('a token signs the page in as its subject, whatever name was typed', async () => {
    const token = execFileSync(serverBin, ['token', '--user', 'alice', '--jwt-secret', SECRET], { encoding: 'utf8' }).trim();
    const context = await browser.newContext();
    const page = await context.newPage();
    const urls = [];
    page.on('websocket', (ws) => urls.push(ws.url()));
    await page.goto(`${server.origin}/`);
    await page.fill('#name', 'someone-else');
    await page.fill('#token', token);
    await page.click('#connect');
    await waitConnected(page);
    assert.equal(await page.textContent('#me'), 'alice');
    assert.ok(urls.every((u) => !u.includes(token)), `the token stays out of the URL: ${urls}`);

    await typeAndSend(page, 'signed in with a token');
    await page.waitForSelector('#messages .message.own[data-seq]');
    const [message] = await shownMessages(page);
    assert.equal(message.text, 'signed in with a token');
    assert.equal((await page.textContent('#messages .message.own .sender')).trim(), 'alice');

    // The server stored it under the token's subject.
    const history = await (await fetch(`${server.origin}/rooms/general/messages`)).json();
    assert.deepEqual(history.messages.map((m) => [m.user, m.data]), [['alice', 'signed in with a token']]);
    await context.close();
  });
});
