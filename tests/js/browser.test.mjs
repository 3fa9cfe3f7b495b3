// End-to-end test of the built-in web client in headless Chromium, driven by
// tests/browser.rs, which owns the server and passes CHAT_URL, ALICE_TOKEN, BOB_TOKEN,
// CAROL_TOKEN and SCREENSHOT_DIR. Lines starting with "@@control " on stdout ask the Rust
// side to act on the server ("kill", "restart"); it answers with one line on stdin.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const URL = process.env.CHAT_URL;
const ALICE = process.env.ALICE_TOKEN;
const BOB = process.env.BOB_TOKEN;
const CAROL = process.env.CAROL_TOKEN;
const DAVE = process.env.DAVE_TOKEN;
const SHOTS = process.env.SCREENSHOT_DIR;
const XSS = '<script>alert(1)</script>';
const WAIT = 15_000;

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

// Asks the test driver to act on the server and waits for its answer.
async function control(command) {
  console.log(`@@control ${command}`);
  const { value, done } = await stdinLines.next();
  assert.ok(!done, `no answer to ${command}`);
  assert.equal(value.trim(), `${command}: done`);
}

let browser;
const dialogs = [];

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  // launch() starts Chromium with a fresh temporary user-data-dir of its own.
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
});

after(async () => {
  await browser?.close();
  // stdin stays open (the driver writes to it), so leave explicitly.
  setImmediate(() => process.exit(process.exitCode ?? 0));
});

async function openPage(viewport) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on('dialog', (dialog) => {
    dialogs.push(dialog.message());
    dialog.dismiss().catch(() => {});
  });
  page.on('pageerror', (error) => console.log(`page error: ${error.message}`));
  page.setDefaultTimeout(WAIT);
  return { context, page };
}

// The message bubbles of the open conversation that show exactly `text`.
function bubbles(page, text) {
  return page.locator('#messages .msg').filter({
    has: page.locator('.text', { hasText: new RegExp(`^${text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`) }),
  });
}

async function send(page, text) {
  await page.locator('#composer-input').fill(text);
  await page.locator('#composer-input').press('Enter');
}

async function stateOf(locator) {
  return locator.getAttribute('data-state');
}

async function eventually(check, what, timeout = WAIT) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    last = await check();
    if (last === true) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`${what} (last: ${JSON.stringify(last)})`);
}

async function api(path, token) {
  const response = await fetch(`${URL}${path}`, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(response.status, 200, path);
  return response.json();
}

async function storedMessages(token, roomId = 'alice-bob', before = null) {
  const query = before ? `limit=50&before=${before}` : 'limit=50';
  return (await api(`/api/rooms/${roomId}/messages?${query}`, token)).room.messages;
}

async function unreadOf(token, roomId) {
  return (await api('/api/rooms', token)).rooms.find((r) => r.roomId === roomId).unread;
}

// The ids of a room's messages that are marked seen (the whole room, paging back).
async function seenIds(token, roomId) {
  const all = [...(await storedMessages(token, roomId))];
  while (all.length && all[all.length - 1].id > 1) {
    all.push(...(await storedMessages(token, roomId, all[all.length - 1].id)));
  }
  return all.filter((m) => m.seenAt).map((m) => m.id).sort((x, y) => x - y);
}

test('two people chat in the built-in client, across a server restart', { timeout: 90_000 }, async () => {
  // Alice signs in from the link `chat-server token` prints, on a desktop.
  const alice = await openPage({ width: 1280, height: 800 });
  const a = alice.page;
  await a.goto(`${URL}/#token=${ALICE}`);
  await a.locator('#me-name', { hasText: 'Alice' }).waitFor();
  assert.equal(await a.locator('#me-id').textContent(), 'alice');
  assert.ok(!a.url().includes('token'), `the token left the address bar: ${a.url()}`);
  assert.equal(await a.evaluate(() => sessionStorage.getItem('chat.token')), ALICE);

  // Bob pastes his token on a phone; a malformed one is refused with a message first.
  const bob = await openPage({ width: 390, height: 844 });
  const b = bob.page;
  await b.goto(URL);
  await b.locator('#token-input').fill('not a token');
  await b.locator('#login-form button[type=submit]').click();
  await b.locator('#login-error', { hasText: 'not a chat-server token' }).waitFor();
  await b.screenshot({ path: join(SHOTS, 'phone-login.png') });
  await b.locator('#token-input').fill(BOB);
  await b.locator('#login-form button[type=submit]').click();
  await b.locator('#me-name', { hasText: 'Bob' }).waitFor();
  await b.locator('#inbox-empty').waitFor();

  // A token the server refuses (bad signature) sends the tab back to sign-in, saying why.
  const forged = await openPage({ width: 390, height: 844 });
  const badToken = `${BOB.split('.').slice(0, 2).join('.')}.${'A'.repeat(43)}`;
  await forged.page.goto(`${URL}/#token=${badToken}`);
  await forged.page.locator('#login-error', { hasText: 'Signed out' }).waitFor();
  assert.equal(await forged.page.evaluate(() => sessionStorage.getItem('chat.token')), null);
  await forged.context.close();

  // Alice starts a conversation by user id; her message gets its first tick.
  await a.locator('#new-chat-input').fill('bob');
  await a.locator('#new-chat-form button').click();
  await a.locator('#partner-name', { hasText: 'Bob' }).waitFor();
  await send(a, 'Hello Bob!');
  const hello = bubbles(a, 'Hello Bob!');
  // Bob is online: his client has it before he opens it, so Alice sees ✓✓ delivered.
  await eventually(async () => (await stateOf(hello)) === 'delivered' || (await stateOf(hello)), 'delivered tick on Hello');
  assert.equal(await hello.locator('.tick').textContent(), '✓✓');

  // Bob sees the conversation in his inbox with an unread badge, opens it.
  const row = b.locator('#inbox [data-room="alice-bob"]');
  await row.locator('.badge', { hasText: '1' }).waitFor();
  assert.equal(await row.locator('.partner').textContent(), 'Alice');
  assert.match(await row.locator('.preview').textContent(), /Hello Bob!/);
  await b.screenshot({ path: join(SHOTS, 'phone-inbox.png') });
  await row.click();
  await bubbles(b, 'Hello Bob!').waitFor();

  // Bob read it: Alice gets the seen tick, and Bob's badge is gone.
  await eventually(async () => (await stateOf(hello)) === 'seen' || (await stateOf(hello)), 'seen tick on Hello');
  await eventually(async () => (await b.locator('#inbox [data-room="alice-bob"] .badge').count()) === 0, 'badge cleared');

  // Typing is shown on the other side.
  await b.locator('#composer-input').pressSequentially('Hi Al', { delay: 20 });
  await a.locator('#typing', { hasText: 'Bob is typing' }).waitFor();

  // Markup in a message is text, everywhere, and runs nothing.
  await b.locator('#composer-input').fill('');
  await send(b, XSS);
  await bubbles(a, XSS).waitFor();
  await bubbles(b, XSS).waitFor();
  for (const page of [a, b]) {
    assert.equal(await page.locator('#messages script, #inbox script').count(), 0);
  }
  assert.match(await a.locator('#inbox [data-room="alice-bob"] .preview').textContent(), /<script>alert\(1\)<\/script>/);
  await a.locator('#typing:empty').waitFor();
  await eventually(async () => (await stateOf(bubbles(b, XSS))) === 'seen' || (await stateOf(bubbles(b, XSS))), 'seen tick on the markup message');

  // A long message reaches the browser as WebSocket fragments of at most 1 KiB, cut
  // between characters of every width; Chromium reassembles them.
  const long = 'é€😀a'.repeat(250);
  await send(a, long);
  await bubbles(b, long).waitFor();
  await bubbles(a, long).waitFor();

  // A message over the server's size limit fails visibly and is not retried.
  await send(a, 'x'.repeat(9000));
  await a.locator('#messages .msg[data-state="failed"] .failure', { hasText: 'Too long' }).waitFor();
  await a.locator('#messages .msg[data-state="failed"] .discard').click();
  assert.equal(await a.locator('#messages .msg[data-state="failed"]').count(), 0);

  await a.screenshot({ path: join(SHOTS, 'desktop-conversation.png') });
  await b.screenshot({ path: join(SHOTS, 'phone-conversation.png') });

  // The server goes away mid-conversation; Alice types during the outage.
  await control('kill');
  await a.locator('#banner', { hasText: 'Connection lost' }).waitFor();
  await b.locator('#banner', { hasText: 'Connection lost' }).waitFor();
  const outage = 'typed while the server was down';
  await send(a, outage);
  assert.equal(await stateOf(bubbles(a, outage)), 'pending');
  await a.screenshot({ path: join(SHOTS, 'desktop-outage.png') });

  // Back on the same address: the pending message is delivered exactly once.
  await control('restart');
  await a.locator('#banner').waitFor({ state: 'hidden' });
  await eventually(async () => ['sent', 'delivered', 'seen'].includes(await stateOf(bubbles(a, outage))) || (await stateOf(bubbles(a, outage))), 'the outage message is stored');
  await bubbles(b, outage).waitFor();
  await eventually(async () => (await stateOf(bubbles(a, outage))) === 'seen' || (await stateOf(bubbles(a, outage))), 'Bob saw the outage message');
  await new Promise((r) => setTimeout(r, 500)); // room for a duplicate to show up
  assert.equal(await bubbles(a, outage).count(), 1);
  assert.equal(await bubbles(b, outage).count(), 1);

  // A resend whose first answer was lost: Alice's second tab forwards her message, then
  // loses the ack and the echo along with its connection. The client resends with the
  // same clientMessageId and the server stores it once.
  const tab2 = await openPage({ width: 1280, height: 800 });
  const lost = 'my ack got lost';
  let dropAnswers = false;
  let sends = 0; // `message` frames carrying the text: the first send and any resend
  let limitNext = false; // refuse the next 'slow 1' with rate_limited
  await tab2.context.routeWebSocket(/\/ws/, (ws) => {
    const server = ws.connectToServer();
    let cutting = false; // from the first lost answer on, this connection is dead air
    ws.onMessage((frame) => {
      if (String(frame).includes(lost)) sends += 1;
      const parsed = JSON.parse(frame);
      if (limitNext && parsed.event === 'message' && parsed.data.message === 'slow 1') {
        // Answer for the server, as its rate limiter would.
        limitNext = false;
        const error = { code: 'rate_limited', message: 'too many requests; slow down', retryAfterMs: 800 };
        ws.send(JSON.stringify({ event: 'ack', ack: parsed.ack, data: { ok: false, error } }));
        return;
      }
      server.send(frame);
    });
    server.onMessage((frame) => {
      if (cutting) return;
      if (dropAnswers && String(frame).includes(lost)) {
        dropAnswers = false;
        cutting = true;
        setTimeout(() => ws.close({ code: 4000, reason: 'test cut' }), 50);
        return;
      }
      ws.send(frame);
    });
  });
  const t = tab2.page;
  await t.goto(`${URL}/#token=${ALICE}`);
  await t.locator('#inbox [data-room="alice-bob"]').click();
  await bubbles(t, outage).waitFor();
  dropAnswers = true;
  await send(t, lost);
  await t.locator('#banner', { hasText: 'Connection lost' }).waitFor();
  await eventually(async () => ['sent', 'delivered', 'seen'].includes(await stateOf(bubbles(t, lost))) || (await stateOf(bubbles(t, lost))), 'the resent message is confirmed');
  assert.equal(sends, 2, 'sent once, lost the answer, resent once');
  await bubbles(b, lost).waitFor();
  await new Promise((r) => setTimeout(r, 500));
  for (const page of [a, b, t]) assert.equal(await bubbles(page, lost).count(), 1);

  // rate_limited: the message waits (with a notice) and is retried after retryAfterMs;
  // the one typed after it waits its turn, so the order typed is kept.
  limitNext = true;
  await send(t, 'slow 1');
  await send(t, 'slow 2');
  await t.locator('#toast', { hasText: 'sending too fast' }).waitFor();
  assert.equal(await stateOf(bubbles(t, 'slow 2')), 'pending');
  await bubbles(b, 'slow 2').waitFor();
  const bobTexts = await b.locator('#messages .msg .text').allTextContents();
  assert.deepEqual(bobTexts.slice(-2), ['slow 1', 'slow 2']);
  await tab2.context.close();

  // History, on the phone: Carol (another device) sends Bob 70 messages. After a reload
  // (still signed in) the conversation opens at its latest 50, pages older ones on
  // scroll up, and marks read only what was actually on screen.
  await a.evaluate(async ({ token, count }) => {
    const ws = new WebSocket(`ws://${location.host}/ws?token=${token}`);
    await new Promise((resolve) => (ws.onopen = resolve));
    const acks = new Map();
    ws.onmessage = (e) => {
      const frame = JSON.parse(e.data);
      if (frame.event === 'ack') acks.get(frame.ack)?.(frame.data);
    };
    const request = (ack, data) =>
      new Promise((resolve) => {
        acks.set(ack, resolve);
        ws.send(JSON.stringify({ event: 'message', ack, data }));
      });
    for (let i = 1, ack = 1; i <= count; ack++) {
      const reply = await request(ack, { userId: 'carol', roomId: 'bob-carol', message: `note ${i}` });
      if (reply.ok) i++;
      else await new Promise((r) => setTimeout(r, reply.error.retryAfterMs ?? 100));
    }
    ws.close();
  }, { token: CAROL, count: 70 });
  await b.locator('#back').click();
  const carol = b.locator('#inbox [data-room="bob-carol"]');
  await carol.locator('.badge', { hasText: '70' }).waitFor();
  await b.reload();
  await b.locator('#me-name', { hasText: 'Bob' }).waitFor();
  await carol.locator('.badge', { hasText: '70' }).waitFor();
  assert.equal(await carol.locator('.partner').textContent(), 'Carol');
  await carol.click();
  await bubbles(b, 'note 70').waitFor();
  assert.equal(await bubbles(b, 'note 1').count(), 0, 'only the latest page at first');
  await eventually(async () => (await unreadOf(BOB, 'bob-carol')) < 70 || (await unreadOf(BOB, 'bob-carol')), 'the visible messages are read');
  await b.locator('#scroller').evaluate((scroller) => (scroller.scrollTop = 0));
  await bubbles(b, 'note 1').waitFor();
  await b.locator('#history-note', { hasText: 'beginning of the conversation' }).waitFor();
  assert.equal(await b.locator('#messages .msg').count(), 70);
  // Prepending kept the reader's place (around note 20); the oldest is one more swipe up.
  assert.equal(await seenIds(BOB, 'bob-carol').then((ids) => ids.includes(1)), false);
  await b.locator('#scroller').evaluate((scroller) => (scroller.scrollTop = 0));
  await eventually(async () => (await seenIds(BOB, 'bob-carol')).includes(1) || (await seenIds(BOB, 'bob-carol')), 'the oldest message is read once on screen');
  const seen = await seenIds(BOB, 'bob-carol');
  assert.ok(seen.includes(70), 'the newest was on screen');
  assert.ok(!seen.includes(35), `the middle was never on screen, yet read: ${seen}`);
  await b.screenshot({ path: join(SHOTS, 'phone-history.png') });

  // The store agrees: every message once, ids 1, 2, 3, … without gaps.
  const stored = await storedMessages(BOB);
  const texts = stored.map((m) => m.message).reverse();
  assert.deepEqual(texts, ['Hello Bob!', XSS, long, outage, lost, 'slow 1', 'slow 2']);
  assert.deepEqual(stored.map((m) => m.id).reverse(), [1, 2, 3, 4, 5, 6, 7]);
  assert.deepEqual(dialogs, []);
  // Alice's tab would read what the next test sends her.
  await alice.context.close();
  await bob.context.close();
});

test('a read lost with the server is sent again once it is back', { timeout: 90_000 }, async () => {
  // Alice's tab talks through a relay that can hold back her `message:read` frames, so
  // the server can die with a read on the wire, neither applied nor acknowledged.
  const alice = await openPage({ width: 1280, height: 800 });
  let holdReads = false;
  let readHeld;
  const aReadIsHeld = new Promise((resolve) => (readHeld = resolve));
  await alice.context.routeWebSocket(/\/ws/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((frame) => {
      if (holdReads && JSON.parse(frame).event === 'message:read') readHeld();
      else server.send(frame);
    });
  });
  const a = alice.page;
  await a.goto(`${URL}/#token=${ALICE}`);
  await a.locator('#new-chat-input').fill('bob');
  await a.locator('#new-chat-form button').click();
  await a.locator('#partner-name', { hasText: 'Bob' }).waitFor();

  const bob = await openPage({ width: 1280, height: 800 });
  const b = bob.page;
  await b.goto(`${URL}/#token=${BOB}`);
  await b.locator('#new-chat-input').fill('alice');
  await b.locator('#new-chat-form button').click();
  await b.locator('#partner-name', { hasText: 'Alice' }).waitFor();

  const badge = a.locator('#inbox [data-room="alice-bob"] .badge');
  // Within a bounded time after the restart: no badge in Alice's inbox, the server
  // counts the room read, and Bob's message shows ✓✓ on his side.
  async function readEverywhere(text) {
    await eventually(async () => {
      const shown = await badge.allTextContents(); // does not wait, unlike textContent()
      return shown.length === 0 || shown;
    }, `Alice's badge for ${text} is gone`);
    await eventually(async () => (await unreadOf(ALICE, 'alice-bob')) === 0 || (await unreadOf(ALICE, 'alice-bob')), `the server counts ${text} read`);
    await eventually(async () => (await stateOf(bubbles(b, text))) === 'seen' || (await stateOf(bubbles(b, text))), `✓✓ on ${text} for Bob`);
  }

  // The case: Bob's "Sure" reaches the conversation Alice is looking at, and the
  // server is killed while her read of it is on the wire.
  holdReads = true;
  await send(b, 'Sure');
  await bubbles(a, 'Sure').waitFor();
  await aReadIsHeld;
  await control('kill');
  holdReads = false;
  await a.locator('#banner', { hasText: 'Connection lost' }).waitFor();
  await badge.filter({ hasText: '1' }).waitFor();
  await control('restart');
  await readEverywhere('Sure');

  // Read while the server is down: Alice switches to another conversation, Bob writes,
  // the server dies, and she opens Bob's conversation (still in memory) during the outage.
  await a.locator('#new-chat-input').fill('carol');
  await a.locator('#new-chat-form button').click();
  await a.locator('#partner-name', { hasText: 'carol' }).waitFor();
  await send(b, 'Still there?');
  await badge.filter({ hasText: '1' }).waitFor();
  await control('kill');
  await a.locator('#banner', { hasText: 'Connection lost' }).waitFor();
  await a.locator('#inbox [data-room="alice-bob"]').click();
  await bubbles(a, 'Still there?').waitFor();
  await control('restart');
  await readEverywhere('Still there?');

  assert.equal(await bubbles(a, 'Sure').count(), 1);
  assert.deepEqual(dialogs, []);
  await alice.context.close();
  await bob.context.close();
});

test('a conversation can be blocked and unblocked from its header', { timeout: 60_000 }, async () => {
  const dave = await openPage({ width: 1280, height: 800 });
  const c = dave.page;
  await c.goto(`${URL}/#token=${DAVE}`);
  await c.locator('#new-chat-input').fill('alice');
  await c.locator('#new-chat-form button').click();
  await c.locator('#partner-id', { hasText: 'alice' }).waitFor();
  await send(c, 'Hi Alice');
  const hi = bubbles(c, 'Hi Alice');
  await eventually(async () => (await stateOf(hi)) === 'sent' || (await stateOf(hi)), 'first tick on Hi Alice');

  const alice = await openPage({ width: 1280, height: 800 });
  const a = alice.page;
  await a.goto(`${URL}/#token=${ALICE}`);
  const row = a.locator('#inbox [data-room="alice-dave"]');
  await row.click();
  await bubbles(a, 'Hi Alice').waitFor();
  const toggle = a.locator('#block-toggle');
  assert.equal(await toggle.textContent(), 'Block');
  // A second tab of Alice's, open before the block, follows it live.
  const aliceTab = await openPage({ width: 390, height: 844 });
  const tabRow = aliceTab.page.locator('#inbox [data-room="alice-dave"]');
  await aliceTab.page.goto(`${URL}/#token=${ALICE}`);
  await tabRow.waitFor();
  assert.equal(await tabRow.locator('.blocked-tag').count(), 0);

  // Alice blocks Dave: the header says so, the composer gives way to a notice, the
  // inbox row is tagged, and the server has the block.
  await toggle.click();
  await a.locator('#block-toggle', { hasText: 'Unblock' }).waitFor();
  await a.locator('#blocked-note').waitFor();
  assert.ok(await a.locator('#composer').isHidden());
  await row.locator('.blocked-tag').waitFor();
  await tabRow.locator('.blocked-tag').waitFor();
  const blocks = await api('/api/blocks', ALICE);
  assert.deepEqual(blocks.blocks.map((b) => b.user.id), ['dave']);
  await a.screenshot({ path: join(SHOTS, 'desktop-blocked.png') });

  // Dave's next message is refused, visibly, and never reaches Alice.
  await send(c, 'Blocked?');
  await c.locator('#messages .msg[data-state="failed"] .failure', { hasText: 'Not sent' }).waitFor();
  assert.equal(await bubbles(a, 'Blocked?').count(), 0);

  // After a reload the block is still shown: the client asks the server.
  await a.reload();
  await row.locator('.blocked-tag').waitFor();
  await row.click();
  await a.locator('#block-toggle', { hasText: 'Unblock' }).waitFor();

  // Unblocking brings the composer back and Dave gets through again.
  await a.locator('#block-toggle').click();
  await a.locator('#block-toggle', { hasText: /^Block$/ }).waitFor();
  assert.ok(await a.locator('#blocked-note').isHidden());
  await a.locator('#composer').waitFor();
  assert.equal(await row.locator('.blocked-tag').count(), 0);
  await eventually(async () => (await tabRow.locator('.blocked-tag').count()) === 0, "the other tab shows the unblock");
  await aliceTab.context.close();
  await c.locator('#messages .msg[data-state="failed"] .discard').click();
  await send(c, 'Back again');
  await bubbles(a, 'Back again').waitFor();
  assert.deepEqual(dialogs, []);
  await alice.context.close();
  await dave.context.close();
});

// Runs plain-dialect requests from a blank page (another device of `token`'s user), each
// with an ack, one after the other; resolves with the replies.
async function device(token, requests) {
  const { context, page } = await openPage({ width: 400, height: 400 });
  const wsUrl = `${URL.replace('http', 'ws')}/ws?token=${encodeURIComponent(token)}`;
  const replies = await page.evaluate(async ({ wsUrl, requests }) => {
    const ws = new WebSocket(wsUrl);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = reject;
    });
    const waiting = new Map();
    ws.onmessage = (e) => {
      const frame = JSON.parse(e.data);
      if (frame.event === 'ack') waiting.get(frame.ack)?.(frame.data);
    };
    const out = [];
    for (const [i, [event, data]] of requests.entries()) {
      out.push(await new Promise((resolve) => {
        waiting.set(i, resolve);
        ws.send(JSON.stringify({ event, data, ack: i }));
      }));
    }
    ws.close();
    return out;
  }, { wsUrl, requests });
  await context.close();
  for (const reply of replies) assert.equal(reply.ok, true, JSON.stringify(reply));
  return replies;
}

test('delivered and seen ticks, editing, deleting, and catching up after a reconnect', { timeout: 90_000 }, async () => {
  const alice = await openPage({ width: 1280, height: 800 });
  const a = alice.page;
  await a.goto(`${URL}/#token=${ALICE}`);
  await a.locator('#new-chat-input').fill('carol');
  await a.locator('#new-chat-form button').click();
  await a.locator('#partner-name', { hasText: 'Carol' }).waitFor();

  // Carol's tab talks through a relay the test can cut, to take her offline while the
  // server and everyone else go on.
  const carol = await openPage({ width: 1280, height: 800 });
  let offline = false;
  const links = [];
  await carol.context.routeWebSocket(/\/ws/, (ws) => {
    if (offline) return ws.close();
    const server = ws.connectToServer();
    links.push({ ws, server });
  });
  const c = carol.page;
  await c.goto(`${URL}/#token=${CAROL}`);
  await c.locator('#me-name', { hasText: 'Carol' }).waitFor();

  // ✓ then ✓✓ grey once Carol's client has it (her conversation is not even open),
  // then ✓✓ coloured once she has seen it.
  await send(a, 'ping');
  const ping = bubbles(a, 'ping');
  await eventually(async () => (await stateOf(ping)) === 'delivered' || (await stateOf(ping)), 'delivered tick on ping');
  const grey = await ping.locator('.tick').evaluate((n) => getComputedStyle(n).color);
  await c.locator('#inbox [data-room="alice-carol"]').click();
  await bubbles(c, 'ping').waitFor();
  await eventually(async () => (await stateOf(ping)) === 'seen' || (await stateOf(ping)), 'seen tick on ping');
  const coloured = await ping.locator('.tick').evaluate((n) => getComputedStyle(n).color);
  assert.notEqual(grey, coloured, 'delivered and seen ticks look different');

  // Alice edits her message in the composer; Carol sees the new text, marked edited.
  await ping.locator('.edit').click();
  assert.equal(await a.locator('#composer-input').inputValue(), 'ping');
  await a.locator('#composer-input').fill('ping, edited');
  await a.locator('#composer-input').press('Enter');
  await bubbles(c, 'ping, edited').locator('.edited').waitFor();
  await bubbles(a, 'ping, edited').locator('.edited').waitFor();
  assert.equal(await bubbles(c, 'ping').count(), 0);

  // Deleting takes two clicks; both sides keep a tombstone in its place.
  await send(a, 'oops');
  await bubbles(c, 'oops').waitFor();
  const oops = bubbles(a, 'oops');
  await oops.locator('.delete').click();
  await oops.locator('.delete', { hasText: 'Delete?' }).click();
  for (const page of [a, c]) {
    await page.locator('#messages .msg.deleted', { hasText: 'This message was deleted' }).waitFor();
    assert.equal(await bubbles(page, 'oops').count(), 0);
  }
  await a.screenshot({ path: join(SHOTS, 'desktop-lifecycle.png') });

  // Carol drops off. Meanwhile Alice's phone sends 120 messages, edits 3 and deletes 2,
  // and Carol's phone reads one.
  offline = true;
  for (const { ws, server } of links.splice(0)) {
    ws.close();
    server.close();
  }
  await c.locator('#banner', { hasText: 'Connection lost' }).waitFor();
  const requests = [];
  for (let i = 1; i <= 120; i++) {
    requests.push(['message', { userId: 'alice', roomId: 'alice-carol', message: `away ${i}` }]);
  }
  await device(ALICE, requests);
  // Ids: 1 ping, 2 oops, then 3..122 for "away 1".."away 120".
  await device(ALICE, [
    ['message:edit', { roomId: 'alice-carol', messageId: 3, message: 'away 1, edited' }],
    ['message:edit', { roomId: 'alice-carol', messageId: 60, message: 'away 58, edited' }],
    ['message:edit', { roomId: 'alice-carol', messageId: 122, message: 'away 120, edited' }],
    ['message:delete', { roomId: 'alice-carol', messageId: 4 }],
    ['message:delete', { roomId: 'alice-carol', messageId: 100 }],
  ]);
  await device(CAROL, [
    ['message:read', [{ userId: 'carol', roomId: 'alice-carol', messageId: 50, seenDate: new Date().toISOString() }]],
  ]);

  // Back online: the tab catches up and shows exactly what the server has.
  offline = false;
  await c.locator('#retry').click();
  await c.locator('#banner').waitFor({ state: 'hidden' });
  const stored = [];
  for (let after = 0; ; ) {
    const page = (await api(`/api/rooms/alice-carol/messages?after=${after}`, CAROL)).room.messages;
    if (page.length === 0) break;
    stored.push(...page);
    after = page[page.length - 1].id;
  }
  assert.equal(stored.length, 122);
  const expected = stored.map((m) => [String(m.id), m.deleted ? 'This message was deleted' : m.message, m.editedAt && !m.deleted ? 'edited' : '']);
  await eventually(async () => {
    const shown = await c.locator('#messages .msg').evaluateAll((nodes) => nodes.map((n) => [n.dataset.id, n.dataset.text, n.dataset.edited]));
    return JSON.stringify(shown) === JSON.stringify(expected) || `${shown.length} shown`;
  }, 'Carol shows the server state after catching up');
  await c.screenshot({ path: join(SHOTS, 'desktop-caught-up.png') });
  assert.deepEqual(dialogs, []);
  await alice.context.close();
  await carol.context.close();
});
