// Browser tests of edits, deletions, reactions, read marks and typing on the chat page: real
// Chromium (playwright-core) against the real server binary, two or three pages at a time.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { launchBrowser, openChat, Server, shownMessages, sleep, typeAndSend, waitConnected } from './helpers.js';

/** Joins (or creates) a room through the room form and waits until its history is shown. */
async function joinRoom(page, room) {
  await page.fill('#room-input', room);
  await page.click('#join-room');
  await page.waitForSelector(`#rooms [data-room="${room}"].current`);
  await page.waitForFunction(() => !/Loading/.test(document.querySelector('#older-text').textContent));
}

/** The shown message whose text contains `text`. */
const message = (page, text) => page.locator('#messages .message', { hasText: text });

/** Sends a message and waits until it is committed (acked) on the sender's page. */
async function send(page, text) {
  await typeAndSend(page, text);
  await page.locator('#messages .message.own[data-seq]:not(.pending)', { hasText: text }).waitFor();
}

/** Clicks a button of a message's toolbar (shown on hover, as a person would get it). */
async function tool(page, text, selector) {
  const item = message(page, text);
  await item.hover();
  await item.locator(`.toolbar ${selector}`).click();
}

/** [{emoji, count, mine}] of a message's reaction counts. */
function counts(page, text) {
  return message(page, text).locator('.reactions .reaction').evaluateAll((buttons) => buttons.map((b) => ({
    emoji: b.dataset.emoji,
    count: Number(b.querySelector('.reaction-count').textContent),
    mine: b.getAttribute('aria-pressed') === 'true',
  })));
}

/** Waits until `check()` (an async assertion) passes, up to `timeout` ms. */
async function eventually(check, timeout = 5000) {
  const until = Date.now() + timeout;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() > until) throw err;
      await sleep(100);
    }
  }
}

/** The connection id of `user` in `room`, from the management API. */
async function connectionOf(server, room, user) {
  const body = await (await fetch(`${server.origin}/rooms/${room}/members`)).json();
  const found = (body.members ?? body).filter((m) => m.user === user);
  assert.equal(found.length, 1, JSON.stringify(body));
  return found[0].connectionId;
}

describe('chat page: edits, deletions, reactions, read marks, typing', { timeout: 240_000 }, () => {
  const server = new Server();
  let browser;
  const pages = [];
  async function chat(name) {
    const page = await openChat(browser, server, name);
    pages.push(page);
    return page;
  }

  before(async () => {
    await server.start();
    browser = await launchBrowser();
  });

  after(async () => {
    await Promise.all(pages.map((page) => page.context().close().catch(() => {})));
    await browser?.close();
    await server.dispose();
  });

  test('an edit shows on the other page, marked (edited); only the author can edit', async () => {
    const ann = await chat('ann');
    const ben = await chat('ben');
    await joinRoom(ann, 'edits');
    await joinRoom(ben, 'edits');
    await send(ann, 'helo everyone');
    await message(ben, 'helo everyone').waitFor();
    assert.equal(await message(ben, 'helo everyone').locator('.tool.edit').count(), 0, 'no Edit on others’ messages');
    assert.equal(await message(ben, 'helo everyone').locator('.tool.delete').count(), 0, 'no Delete on others’ messages');

    await tool(ann, 'helo everyone', '.edit');
    const input = ann.locator('#messages .message.own .edit-input');
    assert.equal(await input.inputValue(), 'helo everyone', 'the editor starts with the text');
    assert.equal(await input.evaluate((el) => el === document.activeElement), true, 'and has the focus');
    await input.fill('hello everyone <b>not bold</b>');
    await input.press('Enter');

    for (const page of [ben, ann]) {
      const item = message(page, 'hello everyone');
      await item.locator('.edited').waitFor();
      assert.equal(await item.locator('.body').textContent(), 'hello everyone <b>not bold</b>', 'the new text, as text');
      assert.equal(await item.locator('.body b').count(), 0, 'user text is never parsed as HTML');
      assert.equal(await item.locator('.edited').textContent(), '(edited)');
    }
    assert.equal(await ann.locator('.edit-input').count(), 0, 'the editor is closed');
    const [annList, benList] = [await shownMessages(ann), await shownMessages(ben)];
    assert.equal(annList.length, 1);
    assert.deepEqual(benList.map(({ id, seq }) => ({ id, seq })), annList.map(({ id, seq }) => ({ id, seq })), 'the same message, in place');

    // Escape cancels an edit and sends nothing.
    await tool(ann, 'hello everyone', '.edit');
    await ann.locator('.edit-input').fill('never sent');
    await ann.locator('.edit-input').press('Escape');
    await sleep(300);
    assert.equal(await message(ben, 'never sent').count(), 0);
    assert.equal(await message(ann, 'hello everyone').locator('.body').textContent(), 'hello everyone <b>not bold</b>');
    for (const page of [ann, ben]) assert.deepEqual(page.problems, []);
  });

  test('a deleted message disappears on the other page', async () => {
    const cai = await chat('cai');
    const dee = await chat('dee');
    await joinRoom(cai, 'deletes');
    await joinRoom(dee, 'deletes');
    await send(cai, 'a typo I regret');
    await send(cai, 'the message that stays');
    await message(dee, 'the message that stays').waitFor();

    // Dismissing the confirmation deletes nothing.
    cai.once('dialog', (dialog) => dialog.dismiss());
    await tool(cai, 'a typo I regret', '.delete');
    await sleep(300);
    assert.equal(await message(dee, 'a typo I regret').count(), 1);

    cai.once('dialog', (dialog) => {
      assert.match(dialog.message(), /Delete this message/);
      dialog.accept();
    });
    await tool(cai, 'a typo I regret', '.delete');
    await message(dee, 'a typo I regret').waitFor({ state: 'detached' });
    await message(cai, 'a typo I regret').waitFor({ state: 'detached' });
    for (const page of [cai, dee]) {
      assert.deepEqual((await shownMessages(page)).map((m) => m.text), ['the message that stays']);
    }

    // A page opened later does not show it either (history skips deleted messages).
    const eli = await chat('eli');
    await joinRoom(eli, 'deletes');
    assert.deepEqual((await shownMessages(eli)).map((m) => m.text), ['the message that stays']);
    for (const page of [cai, dee, eli]) assert.deepEqual(page.problems, []);
  });

  test('reactions toggle, and their counts update live on both pages', async () => {
    const fay = await chat('fay');
    const gus = await chat('gus');
    await joinRoom(fay, 'reactions');
    await joinRoom(gus, 'reactions');
    await send(fay, 'lunch at noon?');
    await message(gus, 'lunch at noon?').waitFor();
    assert.deepEqual(await counts(gus, 'lunch at noon?'), [], 'no reactions yet');

    await tool(gus, 'lunch at noon?', '.reaction[data-emoji="👍"]');
    await eventually(async () => assert.deepEqual(await counts(gus, 'lunch at noon?'), [{ emoji: '👍', count: 1, mine: true }]));
    await eventually(async () => assert.deepEqual(await counts(fay, 'lunch at noon?'), [{ emoji: '👍', count: 1, mine: false }]));

    // Fay adds hers with the count button, then a 🎉 from the toolbar.
    await message(fay, 'lunch at noon?').locator('.reactions .reaction[data-emoji="👍"]').click();
    await eventually(async () => assert.deepEqual(await counts(fay, 'lunch at noon?'), [{ emoji: '👍', count: 2, mine: true }]));
    await tool(fay, 'lunch at noon?', '.reaction[data-emoji="🎉"]');
    const both = [{ emoji: '🎉', count: 1 }, { emoji: '👍', count: 2 }];
    const sorted = (list) => list.map(({ emoji, count }) => ({ emoji, count })).sort((a, b) => a.emoji.localeCompare(b.emoji));
    await eventually(async () => assert.deepEqual(sorted(await counts(gus, 'lunch at noon?')), sorted(both)));
    assert.equal(await message(fay, 'lunch at noon?').locator('.toolbar .reaction[data-emoji="🎉"]').getAttribute('aria-pressed'), 'true');

    // Gus takes his 👍 back: one left, Fay's.
    await message(gus, 'lunch at noon?').locator('.reactions .reaction[data-emoji="👍"]').click();
    await eventually(async () => {
      const list = await counts(gus, 'lunch at noon?');
      assert.deepEqual(list.find((r) => r.emoji === '👍'), { emoji: '👍', count: 1, mine: false });
    });
    await eventually(async () => {
      const list = await counts(fay, 'lunch at noon?');
      assert.deepEqual(list.find((r) => r.emoji === '👍'), { emoji: '👍', count: 1, mine: true });
    });
    // And Fay takes back her 🎉: its count goes away.
    await tool(fay, 'lunch at noon?', '.reaction[data-emoji="🎉"]');
    await eventually(async () => assert.deepEqual((await counts(gus, 'lunch at noon?')).map((r) => r.emoji), ['👍']));
    for (const page of [fay, gus]) assert.deepEqual(page.problems, []);
  });

  test('read marks: the sender sees how far the other page has read', async () => {
    const hal = await chat('hal');
    const ida = await chat('ida');
    await joinRoom(hal, 'reads');
    await joinRoom(ida, 'reads');
    assert.equal(await ida.evaluate(() => document.visibilityState), 'visible');

    await send(hal, 'first, read right away');
    // Ida's page shows #reads: it tells the server, and Hal's page shows the mark.
    await message(hal, 'first, read right away').locator('.read-by:text-is("Read by ida")').waitFor();

    // Ida looks at another room: Hal's next message stays unread, the mark stays put.
    await ida.click('#rooms [data-room="general"] .room-open');
    await ida.waitForSelector('#rooms [data-room="general"].current');
    await send(hal, 'second, read later');
    await ida.waitForSelector('#rooms [data-room="reads"] .badge:not([hidden])');
    await sleep(1000);
    assert.equal(await message(hal, 'second, read later').locator('.read-by').count(), 0);
    assert.equal(await message(hal, 'first, read right away').locator('.read-by').textContent(), 'Read by ida');

    // Ida comes back to #reads: the mark moves to the newest message.
    await ida.click('#rooms [data-room="reads"] .room-open');
    await message(hal, 'second, read later').locator('.read-by:text-is("Read by ida")').waitFor();
    assert.equal(await hal.locator('#messages .read-by').count(), 1, 'one mark per reader');

    // A page opened now learns the positions from `members` (lastRead).
    const jon = await chat('jon');
    await joinRoom(jon, 'reads');
    const mark = message(jon, 'second, read later').locator('.read-by');
    await eventually(async () => assert.match(await mark.textContent(), /^Read by .*ida/));
    for (const page of [hal, ida, jon]) assert.deepEqual(page.problems, []);
  });

  test('typing shows on the other page and goes away about 5 s after the last keystroke', async () => {
    const kim = await chat('kim');
    const lou = await chat('lou');
    await joinRoom(kim, 'typing');
    await joinRoom(lou, 'typing');
    await lou.waitForSelector('#members .member-name:text-is("kim")');

    await kim.click('#composer');
    await kim.keyboard.type('I am writing somethi');
    await lou.waitForSelector('#typing span:text-is("kim is typing…")');
    const shownAt = Date.now();
    assert.equal(await kim.textContent('#typing'), '', 'nobody is shown typing on one’s own page');

    await lou.waitForFunction(() => document.querySelector('#typing').textContent === '', null, { timeout: 10_000 });
    const shownFor = Date.now() - shownAt;
    assert.ok(shownFor > 3500 && shownFor < 7500, `hidden about 5 s after the last typing frame (${shownFor} ms)`);

    // Typing again shows it again; the message itself hides it at once.
    await kim.keyboard.type('ng');
    await lou.waitForSelector('#typing span:text-is("kim is typing…")', { timeout: 5000 });
    await kim.keyboard.press('Enter');
    await message(lou, 'I am writing something').waitFor();
    assert.equal(await lou.textContent('#typing'), '');
    for (const page of [kim, lou]) assert.deepEqual(page.problems, []);
  });

  test('a page that was away shows what changed meanwhile: after a reconnect (resume) and a reload', async () => {
    const max = await chat('max');
    const nia = await chat('nia');
    await joinRoom(max, 'away');
    await joinRoom(nia, 'away');
    await send(max, 'meet at 3');
    await send(max, 'bring snacks');
    await message(nia, 'bring snacks').waitFor();

    // The server closes Nia's connection; Max edits, deletes and reacts meanwhile.
    const closed = await fetch(`${server.origin}/@connections/${await connectionOf(server, 'away', 'nia')}`, { method: 'DELETE' });
    assert.ok(closed.ok);
    await nia.waitForSelector('#status[data-state="offline"]');
    await tool(max, 'meet at 3', '.edit');
    await max.locator('.edit-input').fill('meet at 4');
    await max.locator('.edit-input').press('Enter');
    await message(max, 'meet at 4').locator('.edited').waitFor();
    max.once('dialog', (dialog) => dialog.accept());
    await tool(max, 'bring snacks', '.delete');
    await message(max, 'bring snacks').waitFor({ state: 'detached' });
    await tool(max, 'meet at 4', '.reaction[data-emoji="🎉"]');
    await eventually(async () => assert.deepEqual(await counts(max, 'meet at 4'), [{ emoji: '🎉', count: 1, mine: true }]));
    assert.equal(await message(nia, 'meet at 3').count(), 1, 'Nia still shows the old text');

    // Reconnect: the page rejoins with `after` and the replay brings the edit, the deletion and
    // the reaction (events count in the messages' seq).
    const sentBefore = nia.frames.length;
    await nia.click('#reconnect-now');
    await waitConnected(nia);
    await message(nia, 'meet at 4').locator('.edited').waitFor();
    await message(nia, 'bring snacks').waitFor({ state: 'detached' });
    await eventually(async () => assert.deepEqual(await counts(nia, 'meet at 4'), [{ emoji: '🎉', count: 1, mine: false }]));
    const rejoin = nia.frames.slice(sentBefore).find((f) => f.includes('> {"action":"join","room":"away"'));
    assert.match(rejoin ?? '', /"after":\d+/, `the rejoin resumes after the last seq seen: ${rejoin}`);
    assert.deepEqual((await shownMessages(nia)).map((m) => m.text), ['meet at 4']);

    // The resume point counts the events: after another drop, the one edit made meanwhile
    // comes (replayed or live), and none of the earlier events again.
    const framesBefore = nia.frames.length;
    await nia.evaluate(() => window.dynamowave.state.ws.close());
    await tool(max, 'meet at 4', '.edit');
    await max.locator('.edit-input').fill('meet at 5');
    await max.locator('.edit-input').press('Enter');
    await message(nia, 'meet at 5').locator('.edited').waitFor({ timeout: 20_000 });
    await waitConnected(nia);
    await sleep(300);
    const received = nia.frames.slice(framesBefore).filter((f) => f.includes(' < '));
    const count = (type) => received.filter((f) => f.includes(`"type":"${type}"`)).length;
    assert.deepEqual([count('edited'), count('deleted'), count('reaction'), count('message')], [1, 0, 0, 0], received.join('\n'));

    // A reload starts over from history, which has messages as they are now.
    await nia.reload();
    await nia.click('#connect');
    await waitConnected(nia);
    await nia.click('#rooms [data-room="away"] .room-open');
    await message(nia, 'meet at 5').locator('.edited').waitFor();
    assert.deepEqual((await shownMessages(nia)).map((m) => m.text), ['meet at 5']);
    assert.deepEqual(await counts(nia, 'meet at 5'), [{ emoji: '🎉', count: 1, mine: false }]);
    for (const page of [max, nia]) assert.deepEqual(page.problems, []);
  });
});
