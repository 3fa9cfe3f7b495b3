// The built-in chat client: login, inbox, conversation. This is the reference front end
// for the plain dialect (docs/protocol.md); state rules live in state.js, the socket in
// socket.js, DOM building in view.js. This file wires them to the page.

import { decodeToken, isExpired, isValidUserId, roomIdOf, sessionUserOf } from './protocol.js';
import { ChatSocket } from './socket.js';
import { ChatState } from './state.js';
import { el, inboxRow, initial, messageItem, updateMessageItem } from './view.js';

const TOKEN_KEY = 'chat.token';
const TYPING_SEND_EVERY_MS = 2_500;
const TYPING_SHOW_MS = 4_000;
const READ_BATCH = 100; // the most items one `message:read` may carry
const NEAR_EDGE_PX = 120;

const $ = (id) => document.getElementById(id);
let session = null;

function boot() {
  const fromLink = new URLSearchParams(location.hash.slice(1)).get('token');
  if (fromLink) {
    sessionStorage.setItem(TOKEN_KEY, fromLink);
    // The token must not stay in the address bar, the history, or a shared screenshot.
    history.replaceState(null, '', location.pathname + location.search);
  }
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    signIn($('token-input').value.trim());
  });
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else showLogin('');
}

function signIn(token) {
  const claims = decodeToken(token);
  if (!claims) return signOut('That is not a chat-server token: expected a JWT whose `sub` is a user id.');
  if (isExpired(claims)) return signOut('This token has expired. Mint a new one and sign in again.');
  sessionStorage.setItem(TOKEN_KEY, token);
  $('token-input').value = '';
  $('login').hidden = true;
  $('app').hidden = false;
  session = new Session(token, claims);
}

function signOut(message) {
  session?.stop();
  session = null;
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin(message);
}

function showLogin(message) {
  $('app').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message;
  $('login-error').hidden = !message;
  document.title = 'chat-server';
}

// Human words for a protocol error object.
function describe(error) {
  switch (error.code) {
    case 'message_too_large':
      return `Too long to send: ${error.message}`;
    case 'rate_limited':
      return `You are sending too fast; trying again in ${Math.ceil((error.retryAfterMs ?? 1000) / 1000)} s.`;
    case 'unauthorized':
      return `Signed out: ${error.message}`;
    case 'blocked':
      return `Not sent: ${error.message}`;
    default:
      return error.message || error.code;
  }
}

class Session {
  constructor(token, claims) {
    this.token = token;
    this.claims = claims;
    this.me = sessionUserOf(claims);
    this.state = new ChatState(this.me, sessionStorage);
    this.openRoomId = null;
    this.nodes = new Map(); // timeline key -> <li> of the open conversation
    this.sending = false; // an outbox message is on the wire
    this.pausedUntil = 0; // rate limited: no send before this time
    this.pumpTimer = null;
    this.visible = new Set(); // ids of partner messages visible in the open conversation
    this.reading = false; // a `message:read` batch is on the wire
    this.readTimer = null;
    this.readRetryTimer = null;
    this.typingTimer = null;
    this.lastTypingSentAt = 0;
    this.loadingOlder = false;
    this.editing = null; // { roomId, messageId } while the composer edits a sent message
    this.everConnected = false;
    this.listeners = new AbortController();
    this.observer = new IntersectionObserver((entries) => this.onVisibility(entries), {
      root: $('scroller'),
      threshold: [0, 0.5, 1],
    });
    this.socket = new ChatSocket({
      url: `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws?token=${encodeURIComponent(token)}`,
      onOpen: () => this.onOpen(),
      onEvent: (event, data) => this.onEvent(event, data),
      onDown: (info) => this.onDown(info),
    });
    this.bindPage();
    $('me-avatar').textContent = initial(this.me.name);
    $('me-name').textContent = this.me.name;
    $('me-id').textContent = this.me.id;
    this.closeRoom();
    this.renderInbox();
    this.socket.connect();
  }

  stop() {
    this.socket.stop();
    this.observer.disconnect();
    this.listeners.abort();
    clearTimeout(this.readTimer);
    clearTimeout(this.readRetryTimer);
    clearTimeout(this.typingTimer);
    clearTimeout(this.pumpTimer);
    $('banner').hidden = true;
    $('inbox').replaceChildren();
    $('messages').replaceChildren();
  }

  bindPage() {
    const on = (target, type, handler) =>
      target.addEventListener(type, handler, { signal: this.listeners.signal });
    on($('logout'), 'click', () => signOut(''));
    on($('retry'), 'click', () => this.socket.retryNow());
    on($('back'), 'click', () => this.closeRoom());
    on($('block-toggle'), 'click', () => this.toggleBlock());
    on($('inbox-more'), 'click', () => this.loadInbox(this.state.inboxCursor));
    on($('inbox'), 'click', (e) => {
      const row = e.target.closest('[data-room]');
      if (row) this.openRoom(row.dataset.room);
    });
    on($('new-chat-form'), 'submit', (e) => {
      e.preventDefault();
      const partner = $('new-chat-input').value.trim();
      if (!isValidUserId(partner)) {
        $('new-chat-error').textContent = 'A user id is 1 to 64 of A-Z a-z 0-9 _ . @ + -';
        return;
      }
      $('new-chat-error').textContent = '';
      $('new-chat-input').value = '';
      this.openRoom(roomIdOf(this.me.id, partner));
    });
    on($('composer'), 'submit', (e) => {
      e.preventDefault();
      this.sendTyped();
    });
    on($('composer-input'), 'keydown', (e) => {
      if (e.key === 'Escape' && this.editing) {
        e.preventDefault();
        this.stopEditing();
        return;
      }
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.sendTyped();
      }
    });
    on($('composer-input'), 'input', () => this.maybeSendTyping());
    on($('scroller'), 'scroll', () => {
      if ($('scroller').scrollTop < NEAR_EDGE_PX) this.loadOlder();
    });
    on($('messages'), 'click', (e) => {
      const discard = e.target.closest('[data-discard]');
      if (discard) {
        this.state.discardPending(discard.dataset.discard);
        this.renderConversation();
      }
      const edit = e.target.closest('[data-edit]');
      if (edit) this.startEditing(Number(edit.dataset.edit));
      const remove = e.target.closest('[data-delete]');
      if (remove) this.deleteMessage(remove);
    });
    on(document, 'visibilitychange', () => this.scheduleReads());
  }

  // --- connection -------------------------------------------------------------------

  async onOpen() {
    this.everConnected = true;
    $('banner').hidden = true;
    // Events may have been missed while we were away: keep only the open window (the
    // reload below merges into it, or replaces it when there is a gap).
    this.state.forgetWindows(this.openRoomId);
    this.state.resendAll();
    this.pumpOutbox();
    // Reads go first, the ones whose ack was lost and what is on screen now: the server
    // answers `rooms` and `messages` from the store as they arrive, so a reload sent
    // alongside could predate the reads and bring the unread badge back.
    this.queueVisibleReads();
    await this.pumpReads();
    if (session !== this || !this.socket.isOpen) return; // the next onOpen reloads
    this.loadInbox(null);
    this.loadBlocks();
    if (this.openRoomId) this.catchUp(this.openRoomId);
  }

  // Brings the open room up to date after a reconnect: every change since the position
  // of what we hold (new messages, edits, deletes, marks), page by page, so the window
  // never has a gap. Without a position (never loaded), or if the server refuses it, the
  // latest page is loaded instead.
  async catchUp(roomId) {
    let position = this.state.room(roomId).position;
    if (position === null) return this.loadLatest(roomId);
    const newerThan = this.state.newestHeld(roomId);
    for (;;) {
      const reply = await this.ask('changes', { roomId, since: position, limit: 50 });
      if (roomId !== this.openRoomId || session !== this) return;
      if (!reply) return this.socket.isOpen ? this.loadLatest(roomId) : undefined;
      this.state.applyChanges(reply.room, reply.position, newerThan);
      position = reply.position;
      if (!reply.more) break;
    }
    this.renderInbox();
    this.renderConversation();
    this.acknowledge(roomId);
  }

  // Tells the server this client has the room's messages up to the newest it holds
  // (`message:received`, the partner's ✓✓ delivered). Fire and forget: the mark is a
  // high-water mark, so the next one covers one that was lost.
  acknowledge(roomId) {
    const messageId = this.state.toAcknowledge(roomId);
    if (messageId !== null) this.socket.emit('message:received', [{ roomId, messageId }]);
  }

  onDown({ wasOpen, retryInMs }) {
    const seconds = Math.max(1, Math.round(retryInMs / 1000));
    $('banner-text').textContent = this.everConnected
      ? `Connection lost. Reconnecting in ${seconds} s…`
      : `Cannot reach the server. Retrying in ${seconds} s…`;
    $('banner').hidden = false;
    if (!wasOpen) this.checkToken();
  }

  // A refused handshake looks like any other failure to a WebSocket, so ask the HTTP
  // API whether the token is still good; 401 means signing in again is the only way.
  async checkToken() {
    if (isExpired(this.claims)) return signOut('Your token has expired. Mint a new one and sign in again.');
    try {
      const response = await fetch('/api/rooms?limit=1', {
        headers: { Authorization: `Bearer ${this.token}` },
      });
      if (response.status === 401 && session === this) {
        const body = await response.json().catch(() => ({ error: { message: 'unauthorized' } }));
        signOut(`Signed out: ${body.error.message}`);
      }
    } catch {
      // The server is unreachable: the socket keeps retrying.
    }
  }

  onEvent(event, data) {
    switch (event) {
      case 'message:sent': {
        const incoming = this.state.applySent(data);
        if (incoming) this.acknowledge(data.roomId);
        if (incoming && data.roomId === this.openRoomId) this.hideTyping();
        this.renderInbox();
        if (data.roomId === this.openRoomId) {
          this.renderConversation({ toBottom: data.user.id === this.me.id && !incoming });
        }
        break;
      }
      case 'message:seen':
        this.state.applySeen(data);
        this.renderInbox();
        this.renderConversation();
        break;
      case 'message:delivered':
        this.state.applyDelivered(data);
        this.renderInbox();
        this.renderConversation();
        break;
      case 'message:updated':
        this.state.applyUpdated(data);
        if (data.message.deleted && this.editing?.messageId === data.message.id) this.stopEditing();
        this.renderInbox();
        this.renderConversation();
        break;
      case 'typing':
        if (data.roomId === this.openRoomId && data.userId !== this.me.id) this.showTyping();
        break;
      case 'block':
      case 'unblock':
        // My block list changed, maybe from another tab: show it here too. After an
        // unblock the server counts again what is still unseen, so ask it.
        this.state.setBlocked(data.userId, event === 'block');
        this.renderInbox();
        if (this.openRoomId) this.renderHeader();
        if (event === 'unblock') this.loadInbox(null);
        break;
      case 'error':
        this.toast(describe(data));
        break;
      default:
        break; // events this client does not know are ignored, as the protocol asks
    }
  }

  async ask(event, data) {
    try {
      const reply = await this.socket.request(event, data);
      if (!reply.ok) this.toast(describe(reply.error));
      return reply.ok ? reply : null;
    } catch {
      return null; // disconnected: onOpen reloads what is needed
    }
  }

  // --- inbox --------------------------------------------------------------------------

  async loadInbox(cursor) {
    const reply = await this.ask('rooms', cursor ? { limit: 50, cursor } : { limit: 50 });
    if (!reply || session !== this) return;
    this.state.applyInbox(reply);
    this.renderInbox();
  }

  renderInbox() {
    const rooms = this.state.inbox();
    $('inbox').replaceChildren(
      ...rooms.map((r) =>
        inboxRow(r, this.me, r.roomId === this.openRoomId, this.state.isBlocked(r.partner.id)),
      ),
    );
    $('inbox-empty').hidden = rooms.length > 0;
    $('inbox-more').hidden = !this.state.inboxCursor;
    const unread = rooms.reduce((sum, r) => sum + r.unread, 0);
    document.title = unread > 0 ? `(${unread}) chat-server` : 'chat-server';
  }

  // --- conversation -------------------------------------------------------------------

  openRoom(roomId) {
    this.closeRoom();
    this.openRoomId = roomId;
    document.body.classList.add('room-open');
    $('conversation').hidden = false;
    $('placeholder').hidden = true;
    this.renderHeader();
    this.renderInbox();
    const room = this.state.room(roomId);
    if (room.loaded) this.renderConversation({ toBottom: true });
    // A window built from live events alone has no catch-up position yet: the latest
    // page brings one (and merges into the window).
    if (!room.loaded || room.position === null) this.loadLatest(roomId);
    if (matchMedia('(min-width: 700px)').matches) $('composer-input').focus();
  }

  closeRoom() {
    this.stopEditing();
    this.openRoomId = null;
    document.body.classList.remove('room-open');
    this.observer.disconnect();
    this.visible.clear();
    this.nodes.clear();
    this.hideTyping();
    $('messages').replaceChildren();
    $('history-note').textContent = '';
    $('conversation').hidden = true;
    $('placeholder').hidden = false;
    this.renderInbox();
  }

  renderHeader() {
    const partner = this.state.room(this.openRoomId).partner;
    $('partner-avatar').textContent = initial(partner.name);
    $('partner-name').textContent = partner.id === this.me.id ? `${partner.name} (notes to self)` : partner.name;
    $('partner-id').textContent = partner.id;
    // Nobody blocks themself; for anyone else the header says, and the composer gives way
    // to a notice while the block stands (the server would refuse every send).
    const blocked = this.state.isBlocked(partner.id);
    $('block-toggle').hidden = partner.id === this.me.id;
    $('block-toggle').textContent = blocked ? 'Unblock' : 'Block';
    $('block-toggle').setAttribute('aria-pressed', String(blocked));
    $('blocked-note').hidden = !blocked;
    $('composer').hidden = blocked;
  }

  // --- blocking -----------------------------------------------------------------------

  async loadBlocks() {
    const reply = await this.ask('blocks', {});
    if (!reply || session !== this) return;
    this.state.applyBlocks(reply);
    this.renderInbox();
    if (this.openRoomId) this.renderHeader();
  }

  async toggleBlock() {
    const roomId = this.openRoomId;
    if (!roomId) return;
    const partner = this.state.room(roomId).partner;
    const block = !this.state.isBlocked(partner.id);
    const reply = await this.ask(block ? 'block' : 'unblock', { userId: partner.id });
    if (!reply || session !== this) return;
    // The `block` / `unblock` event that follows (to every tab) does it again, harmlessly;
    // this keeps the button right when a repeated request announces nothing.
    this.state.setBlocked(partner.id, block);
    if (roomId === this.openRoomId) this.renderHeader();
    this.renderInbox();
  }

  async loadLatest(roomId) {
    const reply = await this.ask('messages', { roomId, limit: 50 });
    if (!reply || roomId !== this.openRoomId) return;
    this.state.applyHistory(reply.room, undefined, reply.position);
    this.renderHeader();
    this.renderConversation({ toBottom: this.nodes.size === 0 });
    this.acknowledge(roomId);
  }

  async loadOlder() {
    const roomId = this.openRoomId;
    if (!roomId || this.loadingOlder || !this.state.hasOlder(roomId)) return;
    this.loadingOlder = true;
    $('history-note').textContent = 'Loading older messages…';
    const reply = await this.ask('messages', { roomId, before: this.state.oldestId(roomId), limit: 50 });
    this.loadingOlder = false;
    if (!reply || roomId !== this.openRoomId) return;
    const scroller = $('scroller');
    const fromBottom = scroller.scrollHeight - scroller.scrollTop;
    this.state.applyHistory(reply.room, this.state.oldestId(roomId));
    this.renderConversation();
    scroller.scrollTop = scroller.scrollHeight - fromBottom; // keep the reader's place
  }

  // Brings the list in line with the timeline, reusing each message's element.
  renderConversation({ toBottom = false } = {}) {
    const roomId = this.openRoomId;
    if (!roomId) return;
    const scroller = $('scroller');
    const list = $('messages');
    const nearBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
    const items = this.state.timeline(roomId);
    const keep = new Set(items.map((i) => i.key));
    for (const [key, node] of this.nodes) {
      if (!keep.has(key)) {
        this.observer.unobserve(node);
        this.visible.delete(Number(node.dataset.id));
        node.remove();
        this.nodes.delete(key);
      }
    }
    let cursor = list.firstChild;
    for (const item of items) {
      let node = this.nodes.get(item.key);
      if (node) updateMessageItem(node, item, this.me);
      else {
        node = messageItem(item, this.me);
        this.nodes.set(item.key, node);
      }
      if (node === cursor) cursor = cursor.nextSibling;
      else list.insertBefore(node, cursor);
      const unseenIncoming = item.message && item.message.userId !== this.me.id && !item.message.seenAt;
      if (unseenIncoming) this.observer.observe(node);
      else this.observer.unobserve(node);
    }
    const room = this.state.room(roomId);
    if (!this.loadingOlder) {
      $('history-note').textContent = !room.loaded
        ? 'Loading…'
        : this.state.hasOlder(roomId)
          ? ''
          : items.length === 0
            ? 'No messages yet. Say hello!'
            : 'This is the beginning of the conversation.';
    }
    if (toBottom || nearBottom) scroller.scrollTop = scroller.scrollHeight;
    // A short first page leaves nothing to scroll: fetch older messages right away.
    if (scroller.scrollHeight <= scroller.clientHeight) this.loadOlder();
  }

  // --- read receipts ------------------------------------------------------------------

  onVisibility(entries) {
    for (const entry of entries) {
      const id = Number(entry.target.dataset.id);
      const half = entry.rootBounds ? entry.rootBounds.height / 2 : Infinity;
      const seen = entry.isIntersecting && (entry.intersectionRatio >= 0.5 || entry.intersectionRect.height >= half);
      if (seen) this.visible.add(id);
      else this.visible.delete(id);
    }
    this.scheduleReads();
  }

  // Marks what is on screen as read, shortly after it got there, and only while the
  // tab is visible (a message in a background tab has not been seen).
  scheduleReads() {
    if (this.readTimer || document.visibilityState !== 'visible') return;
    this.readTimer = setTimeout(() => {
      this.readTimer = null;
      this.queueVisibleReads();
      this.pumpReads();
    }, 150);
  }

  // Queues a read of each unread partner message on screen, connected or not: the queue
  // is sent when the server can take it.
  queueVisibleReads() {
    const roomId = this.openRoomId;
    if (!roomId || document.visibilityState !== 'visible') return;
    const ids = this.state
      .unseenIncoming(roomId)
      .filter((m) => this.visible.has(m.id))
      .map((m) => m.id);
    this.state.queueReads(roomId, ids, new Date().toISOString());
  }

  // Sends the queued reads one batch at a time. A batch leaves the queue only when
  // answered; a lost connection leaves it queued for onOpen. Resolves once the queue is
  // empty or sending has to wait.
  async pumpReads() {
    if (this.reading || !this.socket.isOpen || session !== this) return;
    const batch = this.state.nextReads(READ_BATCH);
    if (batch.length === 0) return;
    this.reading = true;
    let reply;
    try {
      reply = await this.socket.request(
        'message:read',
        batch.map((r) => ({ userId: this.me.id, ...r })),
      );
    } catch {
      // As for messages: no reply in time on a live connection, try again shortly.
      if (this.socket.isOpen) this.retryReads(1000);
      return;
    } finally {
      this.reading = false;
    }
    if (session !== this) return;
    if (!reply.ok && reply.error.code === 'rate_limited') {
      // Nothing of the batch applied: it stays queued.
      this.retryReads(reply.error.retryAfterMs ?? 1000);
      return;
    }
    // Refused as a whole: it would be refused again, so it leaves the queue like any
    // answered batch.
    if (!reply.ok) this.toast(describe(reply.error));
    this.state.settleReads(batch, reply.ok ? reply.seen : []);
    this.renderInbox();
    this.renderConversation();
    await this.pumpReads(); // more than one batch may be queued
  }

  retryReads(afterMs) {
    clearTimeout(this.readRetryTimer);
    this.readRetryTimer = setTimeout(() => this.pumpReads(), afterMs);
  }

  // --- sending ------------------------------------------------------------------------

  sendTyped() {
    const input = $('composer-input');
    const text = input.value;
    if (!this.openRoomId || text.trim() === '') return;
    if (this.editing) return this.sendEdit(text);
    input.value = '';
    this.state.addPending(this.openRoomId, text);
    this.renderConversation({ toBottom: true });
    this.pumpOutbox();
  }

  // Sends the outbox one message at a time, in the order typed, so that a retry (after
  // rate_limited or a reconnect) can never overtake a later message. A resend is safe:
  // the server stores each (room, sender, clientMessageId) once.
  async pumpOutbox() {
    if (this.sending || !this.socket.isOpen || session !== this) return;
    const wait = this.pausedUntil - Date.now();
    if (wait > 0) {
      clearTimeout(this.pumpTimer);
      this.pumpTimer = setTimeout(() => this.pumpOutbox(), wait);
      return;
    }
    const entry = this.state.nextToSend();
    if (!entry) return;
    this.sending = true;
    let reply;
    try {
      reply = await this.socket.request('message', {
        userId: this.me.id,
        roomId: entry.roomId,
        message: entry.text,
        clientMessageId: entry.clientMessageId,
      });
    } catch {
      // Connection lost: it stays pending and onOpen pumps again. No reply in time on a
      // live connection: try again shortly (the server stores it once either way).
      if (this.socket.isOpen) this.pumpTimer = setTimeout(() => this.pumpOutbox(), 1000);
      return;
    } finally {
      this.sending = false;
    }
    if (session !== this) return;
    if (reply.ok) {
      // Stored. If it does not fit the window yet, its `message:sent` is on the way.
      this.state.confirm(entry.roomId, reply.message);
      this.renderInbox();
    } else if (reply.error.code === 'rate_limited') {
      this.pausedUntil = Date.now() + (reply.error.retryAfterMs ?? 1000);
      this.toast(describe(reply.error));
    } else {
      this.state.failPending(entry.clientMessageId, { code: reply.error.code, message: describe(reply.error) });
      this.toast(describe(reply.error));
    }
    if (entry.roomId === this.openRoomId) this.renderConversation();
    this.pumpOutbox();
  }

  // --- editing and deleting ----------------------------------------------------------

  // The composer takes the message's text; Enter saves it with `message:edit`, Escape
  // gives the composer back.
  startEditing(messageId) {
    const message = this.state.room(this.openRoomId).messages.get(messageId);
    if (!message || message.deleted) return;
    this.editing = { roomId: this.openRoomId, messageId };
    const input = $('composer-input');
    input.value = message.message;
    input.placeholder = 'Edit message (Esc cancels)';
    $('composer').classList.add('editing');
    input.focus();
  }

  stopEditing() {
    if (!this.editing) return;
    this.editing = null;
    const input = $('composer-input');
    input.value = '';
    input.placeholder = 'Message';
    $('composer').classList.remove('editing');
  }

  async sendEdit(text) {
    const { roomId, messageId } = this.editing;
    this.stopEditing();
    const reply = await this.ask('message:edit', { roomId, messageId, message: text });
    if (!reply || session !== this) return;
    // The `message:updated` that follows carries it too; the ack may come first.
    this.state.applyUpdated({ roomId, message: reply.message });
    this.renderInbox();
    this.renderConversation();
  }

  // Two clicks: the first arms the button, the second deletes.
  async deleteMessage(button) {
    if (button.dataset.armed !== 'true') {
      button.dataset.armed = 'true';
      button.textContent = 'Delete?';
      return;
    }
    const roomId = this.openRoomId;
    const reply = await this.ask('message:delete', { roomId, messageId: Number(button.dataset.delete) });
    if (!reply || session !== this) return;
    this.state.applyUpdated({ roomId, message: reply.message });
    this.renderInbox();
    this.renderConversation();
  }

  maybeSendTyping() {
    const roomId = this.openRoomId;
    const now = Date.now();
    if (!roomId || now - this.lastTypingSentAt < TYPING_SEND_EVERY_MS) return;
    if (this.state.room(roomId).partner.id === this.me.id) return; // nobody to tell
    if (this.socket.emit('typing', { roomId })) this.lastTypingSentAt = now;
  }

  showTyping() {
    const partner = this.state.room(this.openRoomId).partner;
    $('typing').textContent = `${partner.name} is typing…`;
    clearTimeout(this.typingTimer);
    this.typingTimer = setTimeout(() => this.hideTyping(), TYPING_SHOW_MS);
  }

  hideTyping() {
    clearTimeout(this.typingTimer);
    $('typing').textContent = '';
  }

  toast(text) {
    const toast = $('toast');
    toast.replaceChildren(el('span', { text }));
    toast.hidden = false;
    clearTimeout(this.toastTimer);
    this.toastTimer = setTimeout(() => (toast.hidden = true), 6_000);
  }
}

boot();
