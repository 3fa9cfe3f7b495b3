// What the client knows: the inbox, a contiguous window of each room's messages, and the
// outbox of messages and reads not yet acknowledged by the server, and where each room's
// catch-up starts (its change position). Pure data, no DOM and
// no network, so the rules (ordering, unread counts, deduplication by clientMessageId,
// what to send again) live in one place. Messages in the outbox are kept in
// sessionStorage so a reload loses no typed message; reads are not, because after a
// reload whatever is on screen is marked read again.

import { partnerOf } from './protocol.js';

// `message:sent` carries at most this many of a room's latest messages.
const SNAPSHOT_SIZE = 50;

export class ChatState {
  constructor(me, storage) {
    this.me = me; // SessionUser
    this.storage = storage;
    this.outboxKey = `chat.outbox.${me.id}`;
    this.rooms = new Map(); // roomId -> Room
    this.inboxCursor = null;
    this.outbox = this.loadOutbox(); // [{ clientMessageId, roomId, text, error, acked }]
    // Reads not yet acknowledged, in the order marked: `${roomId} ${messageId}` ->
    // { roomId, messageId, seenDate }. One per message, so it holds at most the partner
    // messages that were on screen while the server could not be told.
    this.reads = new Map();
    // Ids of the users I block, as the server last said (`blocks`, inbox rows, acks).
    this.blocked = new Set();
  }

  room(roomId) {
    let room = this.rooms.get(roomId);
    if (!room) {
      const partnerId = partnerOf(roomId, this.me.id) ?? roomId;
      room = {
        roomId,
        partner: { id: partnerId, name: partnerId },
        messages: new Map(), // id -> ChatMessage, always a run of consecutive ids
        loaded: false,
        lastMessage: null,
        unread: 0,
        // The room's change position as of what we hold (`messages` and `changes`
        // replies): where a catch-up after a reconnect starts. Null: reload instead.
        position: null,
      };
      this.rooms.set(roomId, room);
    }
    return room;
  }

  // Rooms with at least one message, most recent first (ties by room id, as the server).
  inbox() {
    return [...this.rooms.values()]
      .filter((r) => r.lastMessage)
      .sort((a, b) => {
        const byTime = b.lastMessage.sentAt.localeCompare(a.lastMessage.sentAt);
        return byTime !== 0 ? byTime : a.roomId < b.roomId ? -1 : 1;
      });
  }

  // A page of the `rooms` reply.
  applyInbox(reply) {
    for (const entry of reply.rooms) {
      const room = this.room(entry.roomId);
      room.partner = entry.user;
      room.unread = entry.unread;
      if (entry.blocked !== undefined) this.setBlocked(entry.user.id, entry.blocked);
      this.setLastMessage(room, entry.lastMessage);
    }
    this.inboxCursor = reply.nextCursor;
  }

  // The `blocks` reply: the whole list.
  applyBlocks(reply) {
    this.blocked = new Set(reply.blocks.map((b) => b.user.id));
  }

  // After a `block` / `unblock` ack. While I block someone the server counts nothing
  // unread from them, and so does the client.
  setBlocked(userId, blocked) {
    if (blocked) this.blocked.add(userId);
    else this.blocked.delete(userId);
    if (blocked) {
      for (const room of this.rooms.values()) if (room.partner.id === userId) room.unread = 0;
    }
  }

  isBlocked(userId) {
    return this.blocked.has(userId);
  }

  // A `message:sent` event. Returns the message that caused it when it is new to this
  // client and from the partner (an incoming message), else null.
  applySent(chatRoom) {
    const room = this.room(chatRoom.roomId);
    if (chatRoom.user.id !== this.me.id) room.partner = chatRoom.user;
    const snapshot = chatRoom.messages;
    const newest = snapshot[0];
    if (!newest) return null;
    const isNewIncoming =
      newest.userId !== this.me.id && (!room.lastMessage || newest.id > room.lastMessage.id);
    this.setLastMessage(room, newest);

    // The snapshot is exact about unread messages unless it may have cut some off.
    const unseen = snapshot.filter((m) => m.userId !== this.me.id && !m.seenAt).length;
    const oldest = snapshot[snapshot.length - 1];
    const mayBeCut = snapshot.length >= SNAPSHOT_SIZE && oldest.userId !== this.me.id && !oldest.seenAt;
    room.unread = mayBeCut ? Math.max(unseen, room.unread + (isNewIncoming ? 1 : 0)) : unseen;

    this.mergeWindow(room, snapshot);
    return isNewIncoming ? newest : null;
  }

  // A `messages` reply; `before` is the id the request paged from (undefined: latest).
  // `position` is the reply's change position.
  applyHistory(chatRoom, before, position) {
    const room = this.room(chatRoom.roomId);
    room.partner = chatRoom.user;
    if (before === undefined) {
      if (chatRoom.messages[0]) this.setLastMessage(room, chatRoom.messages[0]);
      this.mergeWindow(room, chatRoom.messages);
      // A window that was replaced (a gap) starts its catch-up from this reply.
      if (position !== undefined) room.position = position;
    } else {
      for (const m of chatRoom.messages) room.messages.set(m.id, m);
      this.settleOutbox(chatRoom.messages);
    }
    room.loaded = true;
  }

  // Newest-first messages that end at the room's latest message: merged when they touch
  // the window we hold, otherwise they replace it (we missed messages in between, e.g.
  // while disconnected), so the window never has a gap.
  mergeWindow(room, newestFirst) {
    if (newestFirst.length > 0) {
      const oldestNew = newestFirst[newestFirst.length - 1].id;
      const held = [...room.messages.keys()];
      const newestHeld = held.length ? Math.max(...held) : 0;
      if (!room.loaded || oldestNew > newestHeld + 1) room.messages = new Map();
      for (const m of newestFirst) room.messages.set(m.id, m);
      room.loaded = true;
    }
    this.settleOutbox(newestFirst);
  }

  setLastMessage(room, message) {
    if (!room.lastMessage || message.id >= room.lastMessage.id) room.lastMessage = message;
  }

  // The newest message id in the room's window (0 when empty).
  newestHeld(roomId) {
    const held = [...this.room(roomId).messages.keys()];
    return held.length ? Math.max(...held) : 0;
  }

  // A page of a `changes` reply: each listed message as it is now. Held ones are replaced;
  // ones newer than `newerThan` (the newest held when the catch-up began) extend the
  // window: every message sent since the position is listed, so once the last page is in,
  // the window has no gap. Older ones we do not hold are left for `messages` to bring
  // when scrolled to.
  applyChanges(chatRoom, position, newerThan) {
    const room = this.room(chatRoom.roomId);
    room.partner = chatRoom.user;
    for (const m of chatRoom.messages) {
      if (room.messages.has(m.id) || m.id > newerThan) room.messages.set(m.id, m);
      if (!room.lastMessage || m.id >= room.lastMessage.id) room.lastMessage = m;
    }
    room.position = position;
    this.settleOutbox(chatRoom.messages);
  }

  // `message:updated`: a message was edited or deleted.
  applyUpdated({ roomId, message }) {
    const room = this.rooms.get(roomId);
    if (!room) return;
    if (room.messages.has(message.id)) room.messages.set(message.id, message);
    if (room.lastMessage?.id === message.id) room.lastMessage = message;
  }

  // `message:delivered`: the partner's client has some of my messages.
  applyDelivered(items) {
    for (const { roomId, messageId, deliveredAt } of items) {
      const room = this.rooms.get(roomId);
      if (!room) continue;
      const held = room.messages.get(messageId);
      if (held && !held.deliveredAt) room.messages.set(messageId, { ...held, deliveredAt });
      if (room.lastMessage?.id === messageId && !room.lastMessage.deliveredAt) {
        room.lastMessage = { ...room.lastMessage, deliveredAt };
      }
    }
  }

  // The id to acknowledge with `message:received` for what this client holds of a room:
  // its newest partner message, when that is not marked delivered yet (the mark covers
  // everything before it). Null when there is nothing to say.
  toAcknowledge(roomId) {
    const room = this.rooms.get(roomId);
    if (!room) return null;
    const candidates = [...room.messages.values()];
    if (room.lastMessage) candidates.push(room.lastMessage);
    const newest = candidates
      .filter((m) => m.userId !== this.me.id)
      .reduce((best, m) => (!best || m.id > best.id ? m : best), null);
    return newest && !newest.deliveredAt && !newest.seenAt ? newest.id : null;
  }

  // Forgets every message window but `keep`'s (after a reconnect, events may have been
  // missed); the inbox stays until it is reloaded.
  forgetWindows(keep) {
    for (const room of this.rooms.values()) {
      if (room.roomId === keep) continue;
      room.messages = new Map();
      room.loaded = false;
      room.position = null;
    }
  }

  hasOlder(roomId) {
    const room = this.room(roomId);
    return room.loaded && room.messages.size > 0 && Math.min(...room.messages.keys()) > 1;
  }

  oldestId(roomId) {
    return Math.min(...this.room(roomId).messages.keys());
  }

  // `message:seen`: the partner saw some of my messages.
  applySeen(items) {
    for (const item of items) this.setSeen(item.roomId, item.messageId, item.seenAt);
  }

  // The `seen` list of my own `message:read` reply: fewer unread messages.
  applyMyReads(items) {
    for (const item of items) {
      if (this.setSeen(item.roomId, item.messageId, item.seenAt)) {
        const room = this.room(item.roomId);
        room.unread = Math.max(0, room.unread - 1);
      }
    }
  }

  setSeen(roomId, messageId, seenAt) {
    const room = this.rooms.get(roomId);
    if (!room) return false;
    let changed = false;
    const held = room.messages.get(messageId);
    if (held && !held.seenAt) {
      room.messages.set(messageId, { ...held, seenAt });
      changed = true;
    }
    if (room.lastMessage?.id === messageId && !room.lastMessage.seenAt) {
      room.lastMessage = { ...room.lastMessage, seenAt };
      changed = true;
    }
    return changed;
  }

  // Partner messages in the window that nobody marked seen yet.
  unseenIncoming(roomId) {
    return [...this.room(roomId).messages.values()].filter(
      (m) => m.userId !== this.me.id && !m.seenAt,
    );
  }

  // The conversation as shown: stored messages by id, then my pending ones in the order
  // they were typed. Each item has a stable key, so a message keeps its element from
  // "pending" through "sent" to "seen".
  timeline(roomId) {
    const stored = [...this.room(roomId).messages.values()]
      .sort((a, b) => a.id - b.id)
      .map((message) => ({ key: this.keyOf(message), message, pending: null }));
    const pending = this.outbox
      .filter((p) => p.roomId === roomId)
      .map((p) => ({ key: `c:${p.clientMessageId}`, message: null, pending: p }));
    return stored.concat(pending);
  }

  keyOf(message) {
    return message.userId === this.me.id && message.clientMessageId
      ? `c:${message.clientMessageId}`
      : `m:${message.id}`;
  }

  addPending(roomId, text) {
    const entry = { clientMessageId: crypto.randomUUID(), roomId, text, error: null };
    this.outbox.push(entry);
    this.saveOutbox();
    return entry;
  }

  pending(clientMessageId) {
    return this.outbox.find((p) => p.clientMessageId === clientMessageId) ?? null;
  }

  // The ack of my `message`: the server has it. It replaces the pending copy only where
  // it fits the window without a gap; otherwise the pending copy stays, marked acked so it
  // is not sent again, until the `message:sent` that follows settles it.
  confirm(roomId, message) {
    const room = this.room(roomId);
    this.setLastMessage(room, message);
    const held = [...room.messages.keys()];
    const newestHeld = held.length ? Math.max(...held) : 0;
    const fits = room.messages.has(message.id) || message.id === newestHeld + 1;
    if (room.loaded && !fits) {
      const entry = this.pending(message.clientMessageId);
      if (entry) entry.acked = true;
      return;
    }
    if (room.loaded) room.messages.set(message.id, message);
    this.settleOutbox([message]);
  }

  // The next outbox entry to send, in the order typed: not refused, not yet acknowledged.
  nextToSend() {
    return this.outbox.find((p) => !p.error && !p.acked) ?? null;
  }

  // After a reconnect: an ack may have been lost with the old connection, so every entry
  // is sent again (the server stores each clientMessageId once).
  resendAll() {
    for (const entry of this.outbox) entry.acked = false;
  }

  // Marks partner messages of `roomId` as seen at `seenDate` (an ISO string). They stay
  // queued until a reply to a `message:read` carrying them arrives, across reconnects and
  // whatever window or room is open by then; marking one again keeps its first date.
  queueReads(roomId, messageIds, seenDate) {
    for (const messageId of messageIds) {
      const key = `${roomId} ${messageId}`;
      if (!this.reads.has(key)) this.reads.set(key, { roomId, messageId, seenDate });
    }
  }

  // The oldest `max` queued reads: the next `message:read` batch. Sending one again is
  // safe, the server applies a read once (the first one wins).
  nextReads(max) {
    return [...this.reads.values()].slice(0, max);
  }

  // The reply to a batch from nextReads: the server applied or refused each read for
  // good, so the batch leaves the queue (reads queued since stay); `seen` (what it
  // changed) lowers the unread counts.
  settleReads(batch, seen) {
    for (const read of batch) this.reads.delete(`${read.roomId} ${read.messageId}`);
    this.applyMyReads(seen);
  }

  failPending(clientMessageId, error) {
    const entry = this.pending(clientMessageId);
    if (entry) {
      entry.error = error;
      this.saveOutbox();
    }
  }

  discardPending(clientMessageId) {
    this.outbox = this.outbox.filter((p) => p.clientMessageId !== clientMessageId);
    this.saveOutbox();
  }

  // Drops outbox entries whose message the server has stored.
  settleOutbox(messages) {
    const stored = new Set(
      messages.filter((m) => m.userId === this.me.id && m.clientMessageId).map((m) => m.clientMessageId),
    );
    if (stored.size === 0) return;
    const before = this.outbox.length;
    this.outbox = this.outbox.filter((p) => !stored.has(p.clientMessageId));
    if (this.outbox.length !== before) this.saveOutbox();
  }

  loadOutbox() {
    try {
      const saved = JSON.parse(this.storage.getItem(this.outboxKey) ?? '[]');
      return Array.isArray(saved) ? saved : [];
    } catch {
      return [];
    }
  }

  saveOutbox() {
    if (this.outbox.length) this.storage.setItem(this.outboxKey, JSON.stringify(this.outbox));
    else this.storage.removeItem(this.outboxKey);
  }
}
