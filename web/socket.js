// The plain-dialect connection: one JSON object per WebSocket text frame, requests
// answered through `ack`, and reconnection with exponential backoff when the server
// goes away. It knows nothing about chat state; the app decides what to (re)send.

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 10_000;
const REQUEST_TIMEOUT_MS = 15_000;

// Why a request got no reply: the connection closed or the reply never came.
export class Disconnected extends Error {
  constructor(message = 'not connected') {
    super(message);
    this.code = 'disconnected';
  }
}

export class ChatSocket {
  // `url`: ws://host/ws?token=…; `onOpen()`, `onEvent(event, data)`,
  // `onDown({ wasOpen, retryInMs })` are called as things happen.
  constructor({ url, onOpen, onEvent, onDown }) {
    this.url = url;
    this.handlers = { onOpen, onEvent, onDown };
    this.ws = null;
    this.nextAck = 1;
    this.waiting = new Map(); // ack -> { resolve, reject, timer }
    this.attempt = 0;
    this.retryTimer = null;
    this.stopped = false;
  }

  get isOpen() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.stopped || this.ws) return;
    const ws = new WebSocket(this.url);
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.attempt = 0;
      this.handlers.onOpen();
    };
    ws.onmessage = (e) => this.receive(e.data);
    ws.onclose = () => {
      this.ws = null;
      this.failWaiting();
      if (this.stopped) return;
      const retryInMs = this.nextDelay();
      this.retryTimer = setTimeout(() => this.connect(), retryInMs);
      this.handlers.onDown({ wasOpen: opened, retryInMs });
    };
  }

  // Skips the rest of the backoff wait (the "retry now" button).
  retryNow() {
    if (!this.ws && !this.stopped) this.connect();
  }

  // Closes for good (log out).
  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.ws?.close(1000);
    this.failWaiting();
  }

  // Sends an event without `ack`; failures come back as `error` events.
  emit(event, data) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify({ event, data }));
    return true;
  }

  // Sends an event with `ack` and resolves with the reply (`{ ok, ... }`), or rejects
  // with Disconnected when the connection is not open or closes first.
  request(event, data) {
    if (!this.isOpen) return Promise.reject(new Disconnected());
    const ack = this.nextAck++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(ack);
        reject(new Disconnected('no reply in time'));
      }, REQUEST_TIMEOUT_MS);
      this.waiting.set(ack, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ event, data, ack }));
    });
  }

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame.event === 'ack') {
      const waiter = this.waiting.get(frame.ack);
      if (!waiter) return;
      this.waiting.delete(frame.ack);
      clearTimeout(waiter.timer);
      waiter.resolve(frame.data);
      return;
    }
    this.handlers.onEvent(frame.event, frame.data);
  }

  failWaiting() {
    for (const { reject, timer } of this.waiting.values()) {
      clearTimeout(timer);
      reject(new Disconnected('connection lost'));
    }
    this.waiting.clear();
  }

  // 0.5 s, 1 s, 2 s, … up to 10 s, with ±20 % jitter so a restarted server is not hit
  // by every client at the same instant.
  nextDelay() {
    const base = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** this.attempt);
    this.attempt += 1;
    return Math.round(base * (0.8 + Math.random() * 0.4));
  }
}
