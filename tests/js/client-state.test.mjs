// Unit tests of the web client's pure modules (web/protocol.js, web/state.js) in Node:
// room ids, token decoding, merging events into message windows, unread counts and the
// outbox. Run by tests/browser.rs.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeToken, isExpired, partnerOf, roomIdOf, sessionUserOf } from '../../web/protocol.js';
import { ChatState } from '../../web/state.js';

const me = { id: 'alice', name: 'Alice' };

function memoryStorage() {
  const items = new Map();
  return {
    getItem: (k) => (items.has(k) ? items.get(k) : null),
    setItem: (k, v) => items.set(k, String(v)),
    removeItem: (k) => items.delete(k),
  };
}

function msg(id, userId, extra = {}) {
  const sentAt = new Date(Date.UTC(2026, 0, 1, 0, 0, id)).toISOString();
  return { id, userId, message: `m${id}`, sentAt, seenAt: null, clientMessageId: null, ...extra };
}

// A `message:sent` snapshot of ids from..to, newest first.
function snapshot(roomId, user, from, to, make = (id) => msg(id, 'bob')) {
  const messages = [];
  for (let id = to; id >= from; id--) messages.push(make(id));
  return { roomId, user, messages };
}

test('room ids compare bytes, partners are read relative to me', () => {
  assert.equal(roomIdOf('alice', 'bob'), 'alice-bob');
  assert.equal(roomIdOf('bob', 'alice'), 'alice-bob');
  assert.equal(roomIdOf('10', '9'), '10-9');
  assert.equal(roomIdOf('Zed', 'alice'), 'Zed-alice');
  assert.equal(partnerOf('alice-bob', 'alice'), 'bob');
  assert.equal(partnerOf('alice-bob', 'bob'), 'alice');
  assert.equal(partnerOf('alice-alice', 'alice'), 'alice');
  assert.equal(partnerOf('bob-carol', 'alice'), null);
  assert.equal(partnerOf('bob-alice', 'alice'), null, 'not canonical');
});

test('token claims are decoded for display, names trimmed as the server does', () => {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const token = (claims) => `${part({ alg: 'HS256' })}.${part(claims)}.sig`;
  const claims = decodeToken(token({ sub: 'alice', name: '  Alice ✓ ', exp: 1 }));
  assert.deepEqual(sessionUserOf(claims), { id: 'alice', name: 'Alice ✓' });
  assert.deepEqual(sessionUserOf(decodeToken(token({ sub: 'bob', name: '   ' }))), { id: 'bob', name: 'bob' });
  assert.equal(decodeToken(token({ sub: 'not valid!' })), null);
  assert.equal(decodeToken('garbage'), null);
  assert.ok(isExpired({ exp: 100 }, 200_000));
  assert.ok(!isExpired({ exp: 100 }, 110_000), '30 s of leeway, like the server');
});

test('live snapshots extend the window, a gap replaces it', () => {
  const state = new ChatState(me, memoryStorage());
  const bob = { id: 'bob', name: 'Bob' };
  state.applySent(snapshot('alice-bob', bob, 1, 3));
  state.applySent(snapshot('alice-bob', bob, 1, 4));
  assert.deepEqual([...state.room('alice-bob').messages.keys()].sort((a, b) => a - b), [1, 2, 3, 4]);
  assert.equal(state.room('alice-bob').partner.name, 'Bob');
  // Missed 5..50 (say, while offline): the next snapshot 11..60 does not touch 1..4.
  state.applySent(snapshot('alice-bob', bob, 11, 60));
  const ids = [...state.room('alice-bob').messages.keys()];
  assert.equal(Math.min(...ids), 11);
  assert.equal(ids.length, 50);
  assert.ok(state.hasOlder('alice-bob'));
  state.applyHistory({ roomId: 'alice-bob', user: bob, messages: [msg(10, 'bob'), msg(9, 'bob')] }, 11);
  assert.equal(state.oldestId('alice-bob'), 9);
});

test('unread counts follow snapshots and my own reads', () => {
  const state = new ChatState(me, memoryStorage());
  const bob = { id: 'bob', name: 'Bob' };
  assert.ok(state.applySent(snapshot('alice-bob', bob, 1, 2)), 'an incoming message');
  assert.equal(state.room('alice-bob').unread, 2);
  state.applyMyReads([{ userId: 'alice', roomId: 'alice-bob', messageId: 1, seenAt: msg(1, 'bob').sentAt }]);
  assert.equal(state.room('alice-bob').unread, 1);
  state.applyMyReads([{ userId: 'alice', roomId: 'alice-bob', messageId: 1, seenAt: msg(1, 'bob').sentAt }]);
  assert.equal(state.room('alice-bob').unread, 1, 'reading twice counts once');
  // My own message: not incoming, unread unchanged.
  const mine = snapshot('alice-bob', me, 1, 3, (id) => (id === 3 ? msg(3, 'alice') : msg(id, 'bob', id === 1 ? { seenAt: 'x' } : {})));
  assert.equal(state.applySent(mine), null);
  assert.equal(state.room('alice-bob').unread, 1);
  assert.deepEqual(state.inbox().map((r) => r.roomId), ['alice-bob']);
});

test('blocks come from the server and mask unread counts while they stand', () => {
  const state = new ChatState(me, memoryStorage());
  const bob = { id: 'bob', name: 'Bob' };
  state.applySent(snapshot('alice-bob', bob, 1, 2));
  assert.equal(state.room('alice-bob').unread, 2);
  state.applyBlocks({ ok: true, blocks: [{ user: bob, blockedAt: 'x' }] });
  assert.ok(state.isBlocked('bob'));
  state.setBlocked('bob', false);
  assert.ok(!state.isBlocked('bob'));
  state.setBlocked('bob', true);
  assert.equal(state.room('alice-bob').unread, 0, 'nothing unread from someone I block');
  // An inbox row says whether I block its partner, and replaces what the client thought.
  const row = (blocked) => ({
    rooms: [{ roomId: 'alice-bob', user: bob, lastMessage: msg(2, 'bob'), unread: blocked ? 0 : 2, blocked }],
    nextCursor: null,
  });
  state.applyInbox(row(false));
  assert.ok(!state.isBlocked('bob'));
  assert.equal(state.room('alice-bob').unread, 2);
  state.applyInbox(row(true));
  assert.ok(state.isBlocked('bob'));
  // A row from a server without blocking (no field) leaves the list alone.
  state.applyInbox({ rooms: [{ roomId: 'alice-bob', user: bob, lastMessage: msg(2, 'bob'), unread: 0 }], nextCursor: null });
  assert.ok(state.isBlocked('bob'));
});

test('the outbox keeps typed order, survives a reload and settles on the echo', () => {
  const storage = memoryStorage();
  const state = new ChatState(me, storage);
  const first = state.addPending('alice-bob', 'one');
  state.addPending('alice-bob', 'two');
  const reloaded = new ChatState(me, storage);
  assert.deepEqual(reloaded.outbox.map((p) => p.text), ['one', 'two']);
  assert.deepEqual(reloaded.timeline('alice-bob').map((i) => i.key), reloaded.outbox.map((p) => `c:${p.clientMessageId}`));

  const echo = msg(1, 'alice', { message: 'one', clientMessageId: first.clientMessageId });
  reloaded.applySent({ roomId: 'alice-bob', user: me, messages: [echo] });
  assert.deepEqual(reloaded.outbox.map((p) => p.text), ['two']);
  const keys = reloaded.timeline('alice-bob').map((i) => i.key);
  assert.equal(keys[0], `c:${first.clientMessageId}`, 'the element key survives confirmation');
  assert.equal(keys.length, 2);

  reloaded.applySeen([{ userId: 'bob', roomId: 'alice-bob', messageId: 1, seenAt: echo.sentAt }]);
  assert.equal(reloaded.timeline('alice-bob')[0].message.seenAt, echo.sentAt);
});

test('an ack that does not fit the window holds the entry back until its echo or a reconnect', () => {
  const state = new ChatState(me, memoryStorage());
  const bob = { id: 'bob', name: 'Bob' };
  state.applySent(snapshot('alice-bob', bob, 1, 3));
  const first = state.addPending('alice-bob', 'one');
  const second = state.addPending('alice-bob', 'two');
  assert.equal(state.nextToSend(), first);

  // Stored as 5 while 4 is not held yet: the pending copy stays, but is not sent again.
  state.confirm('alice-bob', msg(5, 'alice', { message: 'one', clientMessageId: first.clientMessageId }));
  assert.deepEqual(state.outbox.map((p) => p.text), ['one', 'two']);
  assert.equal(state.nextToSend(), second);

  // A reconnect may have lost acks: everything is sent again, in order.
  state.resendAll();
  assert.equal(state.nextToSend(), first);

  // The `message:sent` that follows settles it.
  const echo = msg(5, 'alice', { message: 'one', clientMessageId: first.clientMessageId });
  state.applySent(snapshot('alice-bob', me, 1, 5, (id) => (id === 5 ? echo : msg(id, 'bob'))));
  assert.deepEqual(state.outbox.map((p) => p.text), ['two']);
});

test('reads stay queued until a reply settles them, whatever happens in between', () => {
  const state = new ChatState(me, memoryStorage());
  const bob = { id: 'bob', name: 'Bob' };
  state.applySent(snapshot('alice-bob', bob, 1, 3));
  assert.equal(state.room('alice-bob').unread, 3);
  state.queueReads('alice-bob', [2, 3], 'T1');
  state.queueReads('alice-bob', [3], 'T2');
  const batch = state.nextReads(100);
  assert.deepEqual(batch, [
    { roomId: 'alice-bob', messageId: 2, seenDate: 'T1' },
    { roomId: 'alice-bob', messageId: 3, seenDate: 'T1' },
  ], 'one read per message, with the date it was first seen');
  assert.deepEqual(state.nextReads(1).map((r) => r.messageId), [2], 'batches are bounded');

  // The connection drops before the reply: nothing settles, and the reconnect (which
  // resends the outbox and forgets other rooms' windows) leaves the reads queued.
  state.resendAll();
  state.forgetWindows('alice-bob');
  assert.deepEqual(state.nextReads(100), batch);

  // Marked again meanwhile (on screen after the reconnect) and one more read queued
  // while the batch was on the wire: the reply settles the batch only.
  state.queueReads('alice-bob', [2, 3], 'T3');
  state.queueReads('alice-bob', [1], 'T3');
  state.settleReads(batch, [{ userId: 'alice', roomId: 'alice-bob', messageId: 2, seenAt: 'T1' }]);
  assert.deepEqual(state.nextReads(100), [{ roomId: 'alice-bob', messageId: 1, seenDate: 'T3' }]);
  assert.equal(state.room('alice-bob').unread, 2, 'only what the server changed counts');
  state.settleReads(state.nextReads(100), []);
  assert.deepEqual(state.nextReads(100), [], 'refused or already read: not sent again');
});

test('changes extend the window without a gap and replace what they list', () => {
  const state = new ChatState(me, memoryStorage());
  const bob = { id: 'bob', name: 'Bob' };
  const mine = (id) => msg(id, 'alice');
  state.applyHistory(snapshot('alice-bob', bob, 1, 3, mine), undefined, '7');
  const room = state.room('alice-bob');
  assert.equal(room.position, '7');
  // While away: 2 was edited, 3 deleted, 4 and 5 arrived, 1 was delivered.
  const changes = [
    msg(2, 'alice', { message: 'edited', editedAt: '2026-01-01T00:01:00.000Z' }),
    msg(5, 'bob'),
    msg(3, 'alice', { message: '', deleted: true, deletedAt: '2026-01-01T00:01:01.000Z' }),
    msg(4, 'bob'),
    msg(1, 'alice', { deliveredAt: '2026-01-01T00:01:02.000Z' }),
  ];
  // Two pages, as `changes` sends them: the second lists a message newer than what was
  // held when the catch-up began but older than what the first page brought.
  const newerThan = state.newestHeld('alice-bob');
  assert.equal(newerThan, 3);
  state.applyChanges({ roomId: 'alice-bob', user: bob, messages: changes.slice(0, 2) }, '9', newerThan);
  state.applyChanges({ roomId: 'alice-bob', user: bob, messages: changes.slice(2) }, '12', newerThan);
  assert.equal(room.position, '12');
  assert.deepEqual([...room.messages.keys()].sort((a, b) => a - b), [1, 2, 3, 4, 5]);
  assert.equal(room.messages.get(2).message, 'edited');
  assert.equal(room.messages.get(3).deleted, true);
  assert.ok(room.messages.get(1).deliveredAt);
  assert.equal(room.lastMessage.id, 5);
  // Older messages we never held are not pulled into the window.
  state.applyChanges({ roomId: 'alice-bob', user: bob, messages: [msg(0, 'bob')] }, '12', 5);
  assert.equal(room.messages.size, 5);
});

test('delivered and updated events change held messages and the inbox row', () => {
  const state = new ChatState(me, memoryStorage());
  const bob = { id: 'bob', name: 'Bob' };
  state.applySent(snapshot('alice-bob', { id: 'alice', name: 'Alice' }, 1, 2, (id) => msg(id, 'alice')));
  state.applyDelivered([{ roomId: 'alice-bob', messageId: 2, deliveredAt: '2026-01-01T00:02:00.000Z' }]);
  const room = state.room('alice-bob');
  assert.ok(room.messages.get(2).deliveredAt);
  assert.ok(room.lastMessage.deliveredAt);
  assert.equal(room.messages.get(1).deliveredAt, undefined);
  const tombstone = msg(2, 'alice', { message: '', deleted: true });
  state.applyUpdated({ roomId: 'alice-bob', message: tombstone });
  assert.deepEqual(room.messages.get(2), tombstone);
  assert.deepEqual(room.lastMessage, tombstone);
  // Unknown rooms are ignored rather than created.
  state.applyUpdated({ roomId: 'alice-carol', message: msg(1, 'carol') });
  assert.equal(state.rooms.has('alice-carol'), false);
  // What to acknowledge: the newest partner message, unless already delivered or seen.
  state.applySent(snapshot('alice-bob', bob, 1, 3, (id) => (id === 3 ? msg(3, 'bob') : msg(id, 'alice'))));
  assert.equal(state.toAcknowledge('alice-bob'), 3);
  state.applyUpdated({ roomId: 'alice-bob', message: msg(3, 'bob', { deliveredAt: 'x' }) });
  assert.equal(state.toAcknowledge('alice-bob'), null);
});
