// Browser tests of the chat page: real Chromium (playwright-core) against the real server binary.
// Run with `node --test web-tests/` (scripts/browser-tests.sh installs what they need).
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  launchBrowser, openChat, outputDir, Server, shownMessages, sleep, typeAndSend, waitConnected,
} from './helpers.js';

/** Joins (or creates) a room through the room form and waits until its history is shown. */
async function joinRoom(page, room) {
  await page.fill('#room-input', room);
  await page.click('#join-room');
  await page.waitForSelector(`#rooms [data-room="${room}"].current`);
  // The history request goes out after `joined`: once it is answered the room is joined.
  await page.waitForFunction(() => !/Loading/.test(document.querySelector('#older-text').textContent));
}

/** Asserts a list of shown messages is in strictly increasing seq order with no repeats. */
function assertOrdered(list, label) {
  const seqs = list.map((m) => m.seq);
  for (let i = 1; i < seqs.length; i++) {
    assert.ok(seqs[i] > seqs[i - 1], `${label}: data-seq not strictly increasing at ${i}: ${seqs.join(',')}`);
  }
  assert.equal(new Set(list.map((m) => m.id)).size, list.length, `${label}: a message id is shown twice`);
}

describe('DynamoWave chat page', { timeout: 240_000 }, () => {
  const server = new Server();
  let browser;
  const contexts = [];
  /** Opens a chat page and closes it with the test. */
  async function chat(name, viewport, options) {
    const page = await openChat(browser, server, name, viewport, options);
    contexts.push(page.context());
    return page;
  }

  before(async () => {
    await server.start();
    browser = await launchBrowser();
  });

  after(async () => {
    await Promise.all(contexts.map((context) => context.close().catch(() => {})));
    await browser?.close();
    await server.dispose();
  });

  test('a message sent on one page shows on the other with the same seq, once', async () => {
    const alice = await chat('alice');
    const bob = await chat('bob');
    await bob.waitForSelector('#members .member-name:text-is("alice")');

    // Record the state each message element is first shown in (the ack comes within ms).
    await alice.evaluate(() => {
      window.firstSeen = [];
      new MutationObserver((records) => {
        for (const record of records) {
          for (const node of record.addedNodes) {
            if (node.classList?.contains('message') && !window.firstSeen.some((s) => s.id === node.dataset.id)) {
              window.firstSeen.push({ id: node.dataset.id, className: node.className, seq: node.dataset.seq ?? null });
            }
          }
        }
      }).observe(document.querySelector('#messages'), { childList: true, subtree: true });
    });

    const text = `hello from alice ${Date.now()}`;
    await typeAndSend(alice, text);
    assert.equal(await alice.inputValue('#composer'), '', 'the composer is emptied after sending');
    const own = await alice.waitForSelector(`.message.own:not(.pending)[data-seq]:has-text("${text}")`);
    const id = await own.getAttribute('data-id');
    const seq = await own.getAttribute('data-seq');
    assert.match(id, /^[0-9a-f-]{36}$/, 'the client id is a UUID');
    assert.equal(await own.getAttribute('title'), `seq ${seq}`);

    const firstSeen = await alice.evaluate(() => window.firstSeen);
    const first = firstSeen.find((s) => s.id === id);
    assert.ok(first, 'the own message was added to the page');
    assert.match(first.className, /\bpending\b/, 'the own message is first shown as pending');
    assert.equal(first.seq, null, 'a pending message has no seq yet');

    const onBob = await bob.waitForSelector(`#messages .message[data-id="${id}"]`);
    assert.equal(await onBob.getAttribute('data-seq'), seq, 'both pages show the same seq');
    assert.equal(await onBob.evaluate((li) => li.classList.contains('own')), false);
    assert.equal((await onBob.textContent()).includes(text), true);

    // Bob answers; neither page shows any message twice (ack and own message frame are merged).
    await typeAndSend(bob, 'hi alice');
    await alice.waitForSelector('#messages .message:not(.own):has-text("hi alice")');
    await bob.waitForSelector('#messages .message.own:not(.pending)[data-seq]:has-text("hi alice")');
    await sleep(300);
    for (const [label, page] of [['alice', alice], ['bob', bob]]) {
      const list = await shownMessages(page);
      assert.equal(list.length, 2, `${label} shows ${JSON.stringify(list)}`);
      assertOrdered(list, label);
      assert.deepEqual(page.problems, [], `${label}: no errors in the console`);
    }
  });

  test('Shift+Enter makes a new line; Enter sends', async () => {
    const page = await chat('frank');
    await joinRoom(page, 'lines');
    await page.click('#composer');
    await page.keyboard.type('first line');
    await page.keyboard.press('Shift+Enter');
    await page.keyboard.type('second line');
    assert.equal(await page.inputValue('#composer'), 'first line\nsecond line');
    await page.keyboard.press('Enter');
    const body = await page.waitForSelector('#messages .message.own[data-seq] .body');
    assert.equal(await body.textContent(), 'first line\nsecond line');
  });

  test('message ids are UUIDs even without crypto.randomUUID (plain http off localhost)', async () => {
    const page = await chat('uma', undefined, {
      initScript: () => Object.defineProperty(Crypto.prototype, 'randomUUID', { value: undefined }),
    });
    assert.equal(await page.evaluate(() => typeof crypto.randomUUID), 'undefined');
    await joinRoom(page, 'ids');
    await typeAndSend(page, 'an id without randomUUID');
    const own = await page.waitForSelector('#messages .message.own[data-seq]');
    assert.match(await own.getAttribute('data-id'), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  test('usable with the keyboard alone', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    contexts.push(context);
    const page = await context.newPage();
    await page.goto(`${server.origin}/`);
    assert.equal(await page.evaluate(() => document.activeElement.id), 'name', 'the name field has the focus');
    await page.keyboard.type('kai');
    await page.keyboard.press('Enter');
    await waitConnected(page);
    assert.equal(await page.evaluate(() => document.activeElement.id), 'composer', 'then the composer has it');
    await page.keyboard.type('typed, not clicked');
    await page.keyboard.press('Enter');
    await page.waitForSelector('#messages .message.own[data-seq]:has-text("typed, not clicked")');

    // Tab through the page to the room field; every stop on the way shows a focus ring.
    for (let i = 0; i < 30 && (await page.evaluate(() => document.activeElement.id)) !== 'room-input'; i++) {
      await page.keyboard.press('Tab');
      if (await page.evaluate(() => document.activeElement === document.body)) continue; // wrapped around
      const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
      const shadow = await page.evaluate(() => getComputedStyle(document.activeElement).boxShadow);
      assert.ok(outline !== 'none' || shadow !== 'none', `focus is visible on ${await page.evaluate(() => document.activeElement.outerHTML.slice(0, 80))}`);
    }
    assert.equal(await page.evaluate(() => document.activeElement.id), 'room-input');
    await page.keyboard.type('keys');
    await page.keyboard.press('Enter');
    await page.waitForSelector('#rooms [data-room="keys"].current');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'composer', 'a joined room is ready to write in');
  });

  test('after the server closes a page, Reconnect resumes: missed messages once, in order', async () => {
    const olga = await chat('olga');
    const pete = await chat('pete');
    await joinRoom(olga, 'resume');
    await joinRoom(pete, 'resume');
    await typeAndSend(olga, 'before the break');
    await pete.waitForSelector('.message:has-text("before the break")');

    const members = await (await fetch(`${server.origin}/rooms/resume/members`)).json();
    const petes = (members.members ?? members).filter((m) => m.user === 'pete');
    assert.equal(petes.length, 1, JSON.stringify(members));
    const note = await fetch(`${server.origin}/@connections/${petes[0].connectionId}`, { method: 'POST', body: 'maintenance at noon' });
    assert.ok(note.ok);
    await pete.waitForSelector('.notice:has-text("maintenance at noon")');
    const closed = await fetch(`${server.origin}/@connections/${petes[0].connectionId}`, { method: 'DELETE' });
    assert.ok(closed.ok);
    await pete.waitForSelector('#status[data-state="offline"]:has-text("Disconnected by the server")');
    await sleep(500);
    assert.equal(await pete.getAttribute('#status', 'data-state'), 'offline', 'no automatic reconnect after a close by the server');

    for (const text of ['missed one', 'missed two', 'missed three']) await typeAndSend(olga, text);
    await olga.waitForFunction(() => document.querySelectorAll('#messages .message.own[data-seq]').length === 4);
    assert.equal(await pete.locator('.message:has-text("missed")').count(), 0);

    await pete.click('#reconnect-now');
    await waitConnected(pete);
    await pete.waitForFunction(() => document.querySelectorAll('#messages .message[data-seq]').length === 4);
    await sleep(300);
    const expected = (await shownMessages(olga)).map(({ seq, id }) => ({ seq, id }));
    assert.deepEqual((await shownMessages(pete)).map(({ seq, id }) => ({ seq, id })), expected);
  });

  test('room names are checked; rooms can be joined and switched; unread counts', async () => {
    const gina = await chat('gina');
    const hank = await chat('hank');

    await gina.fill('#room-input', 'not a room!');
    await gina.click('#join-room');
    await gina.waitForSelector('#room-error:has-text("letters")');
    assert.equal(await gina.getAttribute('#room-input', 'aria-invalid'), 'true');
    assert.equal(await gina.locator('#rooms [data-room]').count(), 1, 'an invalid room is not joined');

    await joinRoom(gina, 'e2e');
    await joinRoom(hank, 'e2e');
    assert.equal(await gina.textContent('#room-error'), '', 'the error is cleared');
    assert.deepEqual(await gina.$$eval('#rooms [data-room]', (items) => items.map((li) => li.dataset.room)), ['general', 'e2e']);

    // Hank looks at #general; Gina writes in #e2e: Hank's #e2e gets an unread count.
    await hank.click('#rooms [data-room="general"] .room-open');
    await hank.waitForSelector('#rooms [data-room="general"].current');
    await typeAndSend(gina, 'only in e2e');
    await gina.waitForSelector('.message.own[data-seq]:has-text("only in e2e")');
    await hank.waitForSelector('#rooms [data-room="e2e"] .badge:not([hidden]):text-is("1")');
    assert.equal(await hank.locator('#messages .message:has-text("only in e2e")').count(), 0);

    await hank.click('#rooms [data-room="e2e"] .room-open');
    await hank.waitForSelector('#messages .message:has-text("only in e2e")');
    assert.equal(await hank.isHidden('#rooms [data-room="e2e"] .badge'), true, 'the unread count is cleared');
    await hank.waitForSelector('#members .member-name:text-is("gina")');
  });

  test('history on join, and older pages when scrolled to the top', async () => {
    // 120 messages posted with the management API before anyone opens the room.
    for (let i = 1; i <= 120; i++) {
      const response = await fetch(`${server.origin}/rooms/history/messages`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ data: `old message ${i}`, user: 'archive', id: `old-${i}` }),
      });
      assert.ok(response.ok, `post ${i}: ${response.status}`);
    }
    const page = await chat('ivy');
    await joinRoom(page, 'history');
    let list = await shownMessages(page);
    assert.deepEqual(list.map((m) => m.seq), Array.from({ length: 50 }, (_, i) => 71 + i), 'the newest 50 are shown');

    // Scroll to the top: the next page loads above, without moving what is in view.
    await page.evaluate(() => { document.querySelector('#messages').scrollTop = 0; });
    await page.waitForFunction(() => document.querySelectorAll('#messages .message').length === 100);
    const top = await page.evaluate(() => document.querySelector('#messages').scrollTop);
    assert.ok(top > 100, `the view stays on the message that was at the top (scrollTop ${top})`);
    await page.evaluate(() => { document.querySelector('#messages').scrollTop = 0; });
    await page.waitForFunction(() => document.querySelectorAll('#messages .message').length === 120);
    await page.waitForSelector('#older-text:has-text("beginning of #history")');
    assert.equal(await page.isHidden('#load-older'), true);
    list = await shownMessages(page);
    assert.deepEqual(list.map((m) => m.seq), Array.from({ length: 120 }, (_, i) => i + 1));
    assert.equal(list[0].text, 'old message 1');
    assertOrdered(list, 'ivy');
  });

  test('a message too large for the server is refused on the page, with a visible error', async () => {
    const page = await chat('jack');
    await joinRoom(page, 'big');
    await page.fill('#composer', 'x'.repeat(40_000));
    await page.press('#composer', 'Enter');
    await page.waitForSelector('#errors .error:has-text("too large")');
    await mkdir(outputDir, { recursive: true });
    await page.screenshot({ path: path.join(outputDir, 'chat-error.png') });
    assert.equal(await page.locator('#messages .message').count(), 0, 'nothing was sent');
    assert.equal((await page.inputValue('#composer')).length, 40_000, 'the text is kept');
    await waitConnected(page, 1000);
  });

  test('a message that could not be sent is marked failed; Retry sends it with the same id', async () => {
    const page = await chat('kim');
    const watcher = await chat('lee');
    await joinRoom(page, 'retry');
    await joinRoom(watcher, 'retry');
    await page.clock.install();

    let id;
    await server.stop();
    try {
      await page.waitForSelector('#status[data-state="reconnecting"], #status[data-state="connecting"]');
      await typeAndSend(page, 'sent while the server is down');
      const pending = await page.waitForSelector('.message.own.pending');
      id = await pending.getAttribute('data-id');
      assert.match(await pending.textContent(), /Sending/);

      // Long enough without a connection: the message is marked failed, with a Retry button.
      await page.clock.fastForward(25_000);
      const failed = await page.waitForSelector(`.message.own.failed[data-id="${id}"]`, { timeout: 10_000 });
      assert.match(await failed.textContent(), /Not sent/);
      await mkdir(outputDir, { recursive: true });
      await page.screenshot({ path: path.join(outputDir, 'chat-failed.png') });
    } finally {
      await server.start();
    }
    await page.click(`.message[data-id="${id}"] button:text-is("Retry")`);
    const sent = await page.waitForSelector(`.message.own:not(.pending):not(.failed)[data-seq][data-id="${id}"]`, { timeout: 20_000 });
    const seq = await sent.getAttribute('data-seq');
    const seen = await watcher.waitForSelector(`#messages .message[data-id="${id}"]`, { timeout: 20_000 });
    assert.equal(await seen.getAttribute('data-seq'), seq);
    await sleep(300);
    assert.equal(await page.locator(`.message[data-id="${id}"]`).count(), 1);
    assert.equal(await watcher.locator(`.message[data-id="${id}"]`).count(), 1);
  });

  test('nothing is lost or shown twice when the server restarts mid-conversation', async () => {
    const sender = await chat('mona');
    const reader = await chat('ned');
    await joinRoom(sender, 'restart');
    await joinRoom(reader, 'restart');

    const states = [];
    const total = 20;
    const typing = (async () => {
      for (let i = 1; i <= total; i++) {
        await typeAndSend(sender, `restart message ${i}`);
        states.push(await sender.getAttribute('#status', 'data-state'));
        await sleep(100);
      }
    })();

    await sleep(700);
    try {
      await server.stop();
      await sleep(1000);
    } finally {
      await server.start();
    }
    await typing;
    assert.ok(states.some((s) => s !== 'connected'), `the sender noticed the restart: ${states.join(',')}`);

    const allShown = (n) => {
      const items = [...document.querySelectorAll('#messages .message')]
        .filter((li) => li.querySelector('.body').textContent.startsWith('restart message '));
      return items.length === n && items.every((li) => li.dataset.seq && !li.classList.contains('pending'));
    };
    await sender.waitForFunction(allShown, total, { timeout: 60_000 });
    await reader.waitForFunction(allShown, total, { timeout: 60_000 });
    await waitConnected(sender);
    await waitConnected(reader);
    await sleep(500); // anything late (a duplicate) would show up by now

    const senderList = await shownMessages(sender);
    const readerList = await shownMessages(reader);
    assert.equal(senderList.length, total, `the sender shows ${senderList.length} messages`);
    assert.deepEqual(
      readerList.map(({ seq, id }) => ({ seq, id })),
      senderList.map(({ seq, id }) => ({ seq, id })),
      'both pages show the same (seq, id) sequence',
    );
    assertOrdered(senderList, 'sender');
    assertOrdered(readerList, 'reader');
    assert.deepEqual(
      senderList.map((m) => m.text).sort(),
      Array.from({ length: total }, (_, i) => `restart message ${i + 1}`).sort(),
      'every message is there exactly once',
    );
    assert.ok(senderList.every((m) => m.own && !m.failed));
    assert.ok(readerList.every((m) => !m.own));
  });

  test('screenshots at desktop and phone width', async () => {
    await mkdir(outputDir, { recursive: true });
    const rosa = await chat('Rosa');
    const sam = await chat('Sam');
    await joinRoom(rosa, 'design');
    await joinRoom(sam, 'design');
    await typeAndSend(sam, 'Morning! The new reconnect banner is live on staging.');
    await rosa.waitForSelector('.message:has-text("reconnect banner")');
    await typeAndSend(rosa, 'Nice. I stopped the server mid-sentence and nothing got lost.');
    await typeAndSend(sam, 'Two things I noticed:\n1. the status pill turns amber while it waits\n2. pending messages are dashed until the ack');
    await typeAndSend(rosa, 'Notes are in https://example.com/dynamowave/design-review');
    await rosa.waitForFunction(() => document.querySelectorAll('#messages .message[data-seq]').length === 4);
    await sam.waitForFunction(() => document.querySelectorAll('#messages .message[data-seq]').length === 4);
    for (const page of [rosa, sam]) {
      await page.waitForSelector('#room-people:text-is("2 people here")', { timeout: 5000 })
        .catch((err) => assert.fail(`${err.message}\n${page.frames.filter((f) => !f.includes('"message"')).join('\n')}`));
    }
    await rosa.fill('#composer', 'Drafting a reply…');
    await rosa.locator('#composer').blur();

    await rosa.screenshot({ path: path.join(outputDir, 'chat-desktop.png') });

    await rosa.setViewportSize({ width: 375, height: 740 });
    await sleep(100);
    await rosa.screenshot({ path: path.join(outputDir, 'chat-phone.png') });
    const overflow = await rosa.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `nothing sticks out sideways at 375 px (${overflow}px)`);

    await rosa.click('#sidebar-toggle');
    await rosa.waitForSelector('#sidebar.open #rooms [data-room="design"]');
    assert.equal(await rosa.getAttribute('#sidebar-toggle', 'aria-expanded'), 'true');
    await rosa.screenshot({ path: path.join(outputDir, 'chat-phone-menu.png') });
    await rosa.click('#rooms [data-room="general"] .room-open');
    assert.equal(await rosa.isVisible('#sidebar'), false, 'choosing a room closes the menu');

    const context = await browser.newContext({ viewport: { width: 375, height: 740 } });
    contexts.push(context);
    const join = await context.newPage();
    await join.goto(`${server.origin}/`);
    await join.click('#connect');
    await join.waitForSelector('#name-error:has-text("Enter a name")');
    await join.screenshot({ path: path.join(outputDir, 'join-phone.png') });
  });
});
