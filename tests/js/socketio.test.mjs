// The Socket.IO dialect, driven by the official socket.io-client exactly as a front end
// uses it. Run by tests/socketio.rs, which starts the server and passes:
//   CHAT_URL            the server's base URL (http://127.0.0.1:PORT)
//   SIO_SCENARIO        which group of cases to run: protocol | lifecycle | blocking | tabs |
//                       restart | shutdown
//   TOKEN_<USER>        tokens minted by the test (TOKEN_ALICE, TOKEN_FORGED, ...)
// Cases that need the Rust side (plain-dialect tabs, killing or stopping the server) talk
// to it through their own events and through marker lines on stdout.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";

const URL = process.env.CHAT_URL;
const SCENARIO = process.env.SIO_SCENARIO;
// Generous: CI machines are small and busy.
const WAIT_MS = 20_000;

// A failed case can leave a socket behind whose client keeps reconnecting, which would keep
// node alive forever; once every case has run, exit with the status node:test set.
after(() => setTimeout(() => process.exit(), 2_000).unref());

function token(name) {
  const value = process.env[`TOKEN_${name.toUpperCase()}`];
  assert.ok(value, `TOKEN_${name.toUpperCase()} is set`);
  return value;
}

/** Opens a socket and resolves once it is connected; rejects on connect_error. */
function connect(options, path = "") {
  const socket = io(URL + path, { forceNew: true, ...options });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no connect in time")), WAIT_MS);
    socket.once("connect", () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once("connect_error", (err) => {
      clearTimeout(timer);
      socket.close();
      reject(err);
    });
  });
}

/** Resolves with the connect_error of a connection that must be refused. */
async function refused(options, path = "") {
  try {
    const socket = await connect({ reconnection: false, ...options }, path);
    socket.close();
  } catch (err) {
    return err;
  }
  assert.fail("the connection was accepted");
}

/** The next `event` whose data satisfies `pred`. */
function next(socket, event, pred = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off(event, listener);
      reject(new Error(`no ${event} in time`));
    }, WAIT_MS);
    function listener(data) {
      if (pred(data)) {
        clearTimeout(timer);
        socket.off(event, listener);
        resolve(data);
      }
    }
    socket.on(event, listener);
  });
}

/** Emits with an ack callback, as front ends do, and resolves with the reply. */
function request(socket, event, data) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ack for ${event}`)), WAIT_MS);
    socket.emit(event, data, (reply) => {
      clearTimeout(timer);
      resolve(reply);
    });
  });
}

const sentWith = (cmid) => (room) => room.messages[0]?.clientMessageId === cmid;

if (SCENARIO === "protocol") {
  test("default options: long-polling first, then the upgrade to WebSocket", async () => {
    const socket = io(URL, { auth: { token: token("alice") } });
    let firstTransport;
    socket.io.on("open", () => (firstTransport = socket.io.engine.transport.name));
    await next(socket, "connect");
    assert.equal(firstTransport, "polling");

    const sent = next(socket, "message:sent", sentWith("default-1"));
    const reply = await request(socket, "message", {
      userId: "alice",
      roomId: "alice-bob",
      message: "over long-polling",
      clientMessageId: "default-1",
    });
    assert.equal(reply.ok, true);
    assert.equal(reply.message.userId, "alice");
    assert.equal(reply.message.message, "over long-polling");
    assert.equal(reply.message.clientMessageId, "default-1");
    assert.equal(reply.message.seenAt, null);
    assert.match(reply.message.sentAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    const room = await sent;
    assert.equal(room.roomId, "alice-bob");
    assert.deepEqual(room.user, { id: "alice", name: "alice" });
    assert.deepEqual(room.messages[0], reply.message);

    if (socket.io.engine.transport.name !== "websocket") {
      await next(socket.io.engine, "upgrade");
    }
    assert.equal(socket.io.engine.transport.name, "websocket");
    const again = await request(socket, "message", {
      userId: "alice",
      roomId: "alice-bob",
      message: "over the upgraded WebSocket",
    });
    assert.equal(again.ok, true);
    assert.equal(again.message.id, reply.message.id + 1);
    assert.equal(again.message.clientMessageId, null);
    socket.close();
  });

  test("websocket-only transport", async () => {
    const socket = await connect({ auth: { token: token("alice") }, transports: ["websocket"] });
    assert.equal(socket.io.engine.transport.name, "websocket");
    const reply = await request(socket, "message", {
      userId: "alice",
      roomId: "alice-carol",
      message: "ws only",
    });
    assert.equal(reply.ok, true);
    assert.equal(reply.message.id, 1);
    socket.close();
  });

  test("bad tokens get CONNECT_ERROR unauthorized; the auth payload wins over the query", async () => {
    for (const [what, options] of [
      ["forged", { auth: { token: token("forged") } }],
      ["expired", { auth: { token: token("expired") } }],
      ["garbage", { auth: { token: "garbage" } }],
      ["missing", {}],
      ["not a string", { auth: { token: 42 } }],
      ["forged in the query", { query: { token: token("forged") } }],
      ["forged auth, good query", { auth: { token: token("forged") }, query: { token: token("alice") } }],
      ["websocket, expired", { auth: { token: token("expired") }, transports: ["websocket"] }],
    ]) {
      const err = await refused(options);
      assert.equal(err.message, "unauthorized", what);
    }
    const byQuery = await connect({ query: { token: token("alice") } });
    const reply = await request(byQuery, "rooms", {});
    assert.equal(reply.ok, true);
    byQuery.close();
  });

  test("namespaces other than / are refused", async () => {
    for (const ns of ["/admin", "/admin/deeper", "/admin"]) {
      const err = await refused({ auth: { token: token("alice") } }, ns);
      assert.equal(err.message, "invalid namespace", ns);
    }
    // A refused namespace leaves the main one working.
    const alice = await connect({ auth: { token: token("alice") } });
    assert.equal((await request(alice, "rooms", {})).ok, true);
    alice.close();
  });

  test("the per-user connection cap answers CONNECT_ERROR too_many_connections", async () => {
    const auth = { token: token("dave") };
    const tabs = [];
    for (let i = 0; i < 3; i++) tabs.push(await connect({ auth }));
    const err = await refused({ auth });
    assert.equal(err.message, "too_many_connections");
    tabs.pop().close();
    // The slot is freed once the server has seen the disconnect.
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      try {
        tabs.push(await connect({ auth, reconnection: false }));
        break;
      } catch (e) {
        assert.equal(e.message, "too_many_connections");
        assert.ok(Date.now() < deadline, "the slot was never freed");
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    tabs.forEach((t) => t.close());
  });

  test("message:read gives the sender message:seen", async () => {
    const alice = await connect({ auth: { token: token("alice") } });
    const bob = await connect({ auth: { token: token("bob") } });
    const bobSees = next(bob, "message:sent", sentWith("read-1"));
    const sent = await request(alice, "message", {
      userId: "alice",
      roomId: "alice-bob",
      message: "read me",
      clientMessageId: "read-1",
    });
    const room = await bobSees;
    assert.equal(room.user.id, "alice");
    assert.equal(room.messages[0].id, sent.message.id);

    const seen = next(alice, "message:seen");
    const seenDate = new Date().toISOString();
    const reply = await request(bob, "message:read", [
      { userId: "bob", roomId: "alice-bob", messageId: sent.message.id, seenDate },
      { userId: "bob", roomId: "alice-bob", messageId: 999, seenDate },
    ]);
    assert.equal(reply.ok, true);
    assert.equal(reply.seen.length, 1);
    assert.deepEqual(reply.rejected.map((r) => [r.index, r.code]), [[1, "not_found"]]);
    const event = await seen;
    assert.deepEqual(event, reply.seen);
    assert.equal(event[0].userId, "bob");
    assert.equal(event[0].roomId, "alice-bob");
    assert.equal(event[0].messageId, sent.message.id);
    assert.match(event[0].seenAt, /Z$/);

    // Without an ack, the rejections come as one error event.
    const error = next(bob, "error");
    bob.emit("message:read", [{ userId: "bob", roomId: "alice-bob", messageId: 999, seenDate }]);
    const err = await error;
    assert.equal(err.code, "not_found");
    assert.equal(err.event, "message:read");
    assert.equal(err.rejected.length, 1);
    alice.close();
    bob.close();
  });

  test("a request sees every earlier write of its own connection", async () => {
    const alice = await connect({ auth: { token: token("alice") } });
    const dave = await connect({ auth: { token: token("dave") } });
    for (let round = 0; round < 5; round++) {
      const sent = await request(alice, "message", {
        userId: "alice",
        roomId: "alice-dave",
        message: `read me ${round}`,
      });
      const seenDate = new Date().toISOString();
      // Emitted back to back: the read's commit must land before `rooms` is answered.
      const [read, rooms] = await Promise.all([
        request(dave, "message:read", [
          { userId: "dave", roomId: "alice-dave", messageId: sent.message.id, seenDate },
        ]),
        request(dave, "rooms", {}),
      ]);
      assert.equal(read.seen.length, 1);
      const room = rooms.rooms.find((r) => r.roomId === "alice-dave");
      assert.equal(room.unread, 0, JSON.stringify(room));

      const [mine, page] = await Promise.all([
        request(dave, "message", { userId: "dave", roomId: "alice-dave", message: "answer" }),
        request(dave, "messages", { roomId: "alice-dave", limit: 1 }),
      ]);
      assert.equal(page.room.messages[0].id, mine.message.id);
    }
    alice.close();
    dave.close();
  });

  test("typing, requests without ack, unknown events and bad payloads", async () => {
    const alice = await connect({ auth: { token: token("alice") } });
    const bob = await connect({ auth: { token: token("bob") }, transports: ["websocket"] });

    const typing = next(alice, "typing");
    const typed = await request(bob, "typing", { roomId: "alice-bob" });
    assert.deepEqual(typed, { ok: true });
    assert.deepEqual(await typing, { roomId: "alice-bob", userId: "bob" });

    const rooms = next(alice, "rooms");
    alice.emit("rooms", { limit: 10 });
    const inbox = await rooms;
    assert.equal(inbox.ok, true);
    assert.ok(inbox.rooms.some((r) => r.roomId === "alice-bob" && r.user.id === "bob"));

    const messages = next(alice, "messages");
    alice.emit("messages", { roomId: "alice-bob", limit: 2 });
    const history = await messages;
    assert.equal(history.ok, true);
    assert.equal(history.room.roomId, "alice-bob");
    assert.equal(history.room.messages.length, 2);

    const unknown = next(alice, "error");
    alice.emit("shout", { loud: true });
    assert.deepEqual(
      { ...(await unknown), message: undefined },
      { code: "unknown_event", event: "shout", message: undefined },
    );
    const serverEvent = await request(alice, "message:sent", {});
    assert.equal(serverEvent.ok, false);
    assert.equal(serverEvent.error.code, "unknown_event");

    const shapeless = await request(alice, "message", { userId: "alice", roomId: "alice-bob" });
    assert.equal(shapeless.error.code, "bad_request");
    const forbidden = await request(alice, "message", {
      userId: "alice",
      roomId: "bob-carol",
      message: "x",
    });
    assert.equal(forbidden.error.code, "forbidden");
    const notCanonical = await request(alice, "message", {
      userId: "alice",
      roomId: "bob-alice",
      message: "x",
    });
    assert.equal(notCanonical.error.code, "invalid_room");

    // Binary payloads are refused, the connection and everyone else's stay up.
    const binary = await request(alice, "message", new Uint8Array([1, 2, 3]));
    assert.deepEqual(binary.ok, false);
    assert.equal(binary.error.code, "bad_request");
    const binaryError = next(alice, "error");
    alice.emit("message", { userId: "alice", roomId: "alice-bob", blob: new Uint8Array([4]) });
    const err = await binaryError;
    assert.equal(err.code, "bad_request");
    assert.equal(err.event, "message");
    assert.ok(alice.connected);
    const bobStillHears = next(bob, "message:sent", sentWith("after-binary"));
    const after = await request(alice, "message", {
      userId: "alice",
      roomId: "alice-bob",
      message: "still here",
      clientMessageId: "after-binary",
    });
    assert.equal(after.ok, true);
    await bobStillHears;
    alice.close();
    bob.close();
  });
}

if (SCENARIO === "protocol") {
  // Regression (issue 12): serde maps an array onto a struct by position, so these used to
  // store a message and answer a history page.
  test("payloads of the wrong JSON type are bad_request and change nothing", async () => {
    const alice = await connect({ auth: { token: token("alice") } });
    const cases = [
      ["message", ["alice", "alice-gus", "hi"]],
      ["message", "alice-gus"],
      ["message", 7],
      ["message", null],
      ["message", { userId: "alice", roomId: "alice-gus", message: ["hi"] }],
      ["message", { userId: ["alice"], roomId: "alice-gus", message: "hi" }],
      ["typing", ["alice-gus"]],
      ["rooms", [10]],
      ["rooms", "x"],
      ["messages", ["alice-gus"]],
      ["messages", { roomId: "alice-gus", limit: [5] }],
      ["message:read", { userId: "alice", roomId: "alice-gus", messageId: 1, seenDate: "2026-01-01T00:00:00Z" }],
      ["message:read", [["alice", "alice-gus", 1, "2026-01-01T00:00:00Z"]]],
    ];
    for (const [event, data] of cases) {
      const reply = await request(alice, event, data);
      assert.equal(reply.ok, false, `${event} ${JSON.stringify(data)}`);
      assert.equal(reply.error.code, "bad_request", `${event} ${JSON.stringify(data)}`);
    }
    // Only the first argument of an emit is the payload: the rest do not make an object.
    const spread = await alice.timeout(WAIT_MS).emitWithAck("message", "alice", "alice-gus", "hi");
    assert.equal(spread.error.code, "bad_request");
    // Without an ack: an error event naming the event.
    const error = next(alice, "error");
    alice.emit("messages", ["alice-gus"]);
    const err = await error;
    assert.deepEqual([err.code, err.event], ["bad_request", "messages"]);

    const history = await request(alice, "messages", { roomId: "alice-gus" });
    assert.deepEqual(history.room.messages, []);
    const inbox = await request(alice, "rooms", { limit: 100 });
    assert.ok(!inbox.rooms.some((r) => r.roomId === "alice-gus"));
    alice.close();
  });

  // Regression (issue 12): the name from a token used to be written after the CONNECT was
  // acknowledged, so a read right after could still show the old name. No pause below.
  test("a new name is seen by every read once its CONNECT is acknowledged", async () => {
    const alice = await connect({ auth: { token: token("alice") }, transports: ["websocket"] });
    const first = await connect({ auth: { token: token("erin_1") } });
    const hello = await request(first, "message", {
      userId: "erin",
      roomId: "alice-erin",
      message: "hello",
    });
    assert.equal(hello.ok, true);
    first.close();

    const second = await connect({ auth: { token: token("erin_2") } });
    const inbox = await request(alice, "rooms", { limit: 100 });
    const room = inbox.rooms.find((r) => r.roomId === "alice-erin");
    assert.deepEqual(room?.user, { id: "erin", name: "Erin" });

    const third = await connect({ auth: { token: token("erin_3") }, transports: ["websocket"] });
    const page = await request(alice, "messages", { roomId: "alice-erin" });
    assert.deepEqual(page.room.user, { id: "erin", name: "Erin M." });

    // Never seen before, in a room without messages.
    const fay = await connect({ auth: { token: token("fay") } });
    const empty = await request(alice, "messages", { roomId: "alice-fay" });
    assert.deepEqual(empty.room, { roomId: "alice-fay", user: { id: "fay", name: "Fay" }, messages: [] });
    for (const socket of [alice, second, third, fay]) socket.close();
  });
}

if (SCENARIO === "blocking") {
  /** Resolves if `socket` gets no `event` for `ms`; rejects if it does. */
  function silence(socket, event, ms = 400) {
    return new Promise((resolve, reject) => {
      const listener = (data) => {
        socket.off(event, listener);
        reject(new Error(`unexpected ${event}: ${JSON.stringify(data)}`));
      };
      socket.on(event, listener);
      setTimeout(() => {
        socket.off(event, listener);
        resolve();
      }, ms);
    });
  }

  test("block, unblock and blocks: sends refused, typing dropped, unread masked", async () => {
    const alice = await connect({ auth: { token: token("alice") } });
    const bob = await connect({ auth: { token: token("bob") }, transports: ["websocket"] });
    const send = (socket, from, message) =>
      request(socket, "message", { userId: from, roomId: "alice-bob", message });
    assert.equal((await send(alice, "alice", "before the block")).ok, true);

    const announced = next(bob, "block");
    const blocked = await request(bob, "block", { userId: "alice" });
    assert.equal(blocked.ok, true);
    assert.equal(blocked.userId, "alice");
    assert.deepEqual(await announced, { userId: "alice", blockedAt: blocked.blockedAt });
    assert.deepEqual(await request(bob, "block", { userId: "alice" }), blocked);

    const quiet = silence(bob, "message:sent");
    const refused = await send(alice, "alice", "are you there?");
    assert.deepEqual([refused.ok, refused.error.code], [false, "blocked"]);
    const own = await send(bob, "bob", "bye");
    assert.equal(own.error.code, "blocked");
    const errorEvent = next(alice, "error");
    alice.emit("message", { userId: "alice", roomId: "alice-bob", message: "no ack" });
    const err = await errorEvent;
    assert.deepEqual([err.code, err.event], ["blocked", "message"]);
    await quiet;

    const noTyping = silence(bob, "typing");
    assert.deepEqual(await request(alice, "typing", { roomId: "alice-bob" }), { ok: true });
    await noTyping;

    const inbox = await request(bob, "rooms", {});
    const row = inbox.rooms.find((r) => r.roomId === "alice-bob");
    assert.deepEqual([row.unread, row.blocked], [0, true]);

    const list = next(bob, "blocks");
    bob.emit("blocks");
    const blocks = await list;
    assert.deepEqual(blocks.blocks, [
      { user: { id: "alice", name: "alice" }, blockedAt: blocked.blockedAt },
    ]);

    for (const [event, data] of [
      ["block", {}],
      ["block", { userId: 5 }],
      ["block", { userId: "bob" }],
      ["block", ["alice"]],
      ["unblock", null],
      ["unblock", { userId: "not valid" }],
      ["blocks", "all"],
    ]) {
      const reply = await request(bob, event, data);
      assert.equal(reply.error?.code, "bad_request", `${event} ${JSON.stringify(data)}`);
    }
    assert.deepEqual(await request(bob, "blocks", {}), blocks);

    const unannounced = next(bob, "unblock");
    assert.deepEqual(await request(bob, "unblock", { userId: "alice" }), {
      ok: true,
      userId: "alice",
    });
    assert.deepEqual(await unannounced, { userId: "alice" });
    assert.deepEqual(await request(bob, "unblock", { userId: "alice" }), {
      ok: true,
      userId: "alice",
    });
    const hears = next(bob, "message:sent");
    assert.equal((await send(alice, "alice", "after the unblock")).ok, true);
    assert.equal((await hears).messages[0].message, "after the unblock");
    const typing = next(bob, "typing");
    alice.emit("typing", { roomId: "alice-bob" });
    assert.equal((await typing).userId, "alice");
    assert.deepEqual((await request(bob, "blocks", {})).blocks, []);
    alice.close();
    bob.close();
  });
}

if (SCENARIO === "tabs") {
  // The Rust side holds plain-dialect tabs of alice and bob.
  test("a Socket.IO tab and a plain tab of one user both get every event", async () => {
    const alice = await connect({ auth: { token: token("alice") } });
    const ownEcho = next(alice, "message:sent", sentWith("from-socketio"));
    const fromPlainTab = next(alice, "message:sent", sentWith("from-plain"));
    const seen = next(alice, "message:seen");
    const reply = await request(alice, "message", {
      userId: "alice",
      roomId: "alice-bob",
      message: "typed in the Socket.IO tab",
      clientMessageId: "from-socketio",
    });
    assert.equal(reply.ok, true);
    assert.equal((await ownEcho).messages[0].id, reply.message.id);
    const other = await fromPlainTab;
    assert.equal(other.user.id, "alice");
    assert.equal(other.messages[0].message, "typed in the plain tab");
    const [item] = await seen;
    assert.equal(item.userId, "bob");
    assert.equal(item.messageId, reply.message.id);
    alice.close();
  });
}

if (SCENARIO === "restart") {
  test("reconnects after a server restart and resends by clientMessageId without duplicates", async () => {
    const alice = await connect({ auth: { token: token("alice") } });
    const first = await request(alice, "message", {
      userId: "alice",
      roomId: "alice-bob",
      message: "before the crash",
      clientMessageId: "restart-1",
    });
    assert.equal(first.ok, true);

    const down = next(alice, "disconnect");
    console.log("##KILL-AND-RESTART-SERVER##");
    await down;
    // Offline: the client queues these and sends them once it is connected again,
    // including a blind resend of the message that was already acknowledged.
    const resent = request(alice, "message", {
      userId: "alice",
      roomId: "alice-bob",
      message: "before the crash",
      clientMessageId: "restart-1",
    });
    const fresh = request(alice, "message", {
      userId: "alice",
      roomId: "alice-bob",
      message: "after the crash",
      clientMessageId: "restart-2",
    });
    await next(alice, "connect");
    const again = await resent;
    assert.equal(again.ok, true);
    assert.deepEqual(again.message, first.message);
    const second = await fresh;
    assert.equal(second.message.id, first.message.id + 1);

    const history = await request(alice, "messages", { roomId: "alice-bob" });
    assert.deepEqual(
      history.room.messages.map((m) => [m.id, m.clientMessageId]),
      [
        [second.message.id, "restart-2"],
        [first.message.id, "restart-1"],
      ],
    );
    alice.close();
  });
}

if (SCENARIO === "shutdown") {
  test("a server shutdown disconnects every Socket.IO socket", async () => {
    const auth = { token: token("alice") };
    const sockets = await Promise.all([
      connect({ auth, reconnection: false }),
      connect({ auth, reconnection: false, transports: ["polling"] }),
      connect({ auth, reconnection: false, transports: ["websocket"] }),
    ]);
    const reasons = Promise.all(sockets.map((s) => next(s, "disconnect")));
    console.log("##TERMINATE-SERVER##");
    // The server closes every transport. A long-polling client whose pending poll is cut
    // as the connection closes reports that as a transport error rather than a close; both
    // mean the server ended the session (tests/socketio.rs checks it did so promptly).
    for (const reason of await reasons) {
      assert.ok(["transport close", "transport error"].includes(reason), reason);
    }
  });
}

if (SCENARIO === "lifecycle") {
  // The server runs with a 1 s edit window (tests/socketio.rs).
  const ROOM = "gina-hank";
  const send = async (socket, text) => {
    const reply = await request(socket, "message", { userId: "gina", roomId: ROOM, message: text });
    assert.equal(reply.ok, true, JSON.stringify(reply));
    return reply.message;
  };

  test("message:received gives the sender message:delivered; a lower mark changes nothing", async () => {
    const gina = await connect({ auth: { token: token("gina") } });
    const hank = await connect({ auth: { token: token("hank") } });
    const sent = await send(gina, "are you there?");
    const delivered = next(gina, "message:delivered");
    const reply = await request(hank, "message:received", [{ roomId: ROOM, messageId: sent.id }]);
    assert.deepEqual(reply, { ok: true, rejected: [] });
    const [receipt] = await delivered;
    assert.deepEqual(
      { userId: receipt.userId, roomId: receipt.roomId, messageId: receipt.messageId },
      { userId: "hank", roomId: ROOM, messageId: sent.id },
    );
    const again = await request(hank, "message:received", [
      { roomId: ROOM, messageId: sent.id },
      { roomId: ROOM, messageId: 999 },
    ]);
    assert.deepEqual(again.rejected.map((r) => [r.index, r.code]), [[1, "not_found"]]);
    const page = await request(gina, "messages", { roomId: ROOM });
    assert.equal(page.room.messages[0].deliveredAt, receipt.deliveredAt);
    gina.close();
    hank.close();
  });

  test("edit and delete: both sides get message:updated; refusals change nothing", async () => {
    const gina = await connect({ auth: { token: token("gina") } });
    const hank = await connect({ auth: { token: token("hank") } });
    const sent = await send(gina, "helo");
    const updates = [next(gina, "message:updated"), next(hank, "message:updated")];
    const edited = await request(gina, "message:edit", { roomId: ROOM, messageId: sent.id, message: "hello" });
    assert.equal(edited.ok, true, JSON.stringify(edited));
    assert.equal(edited.message.message, "hello");
    assert.ok(edited.message.editedAt);
    for (const update of await Promise.all(updates)) {
      assert.deepEqual(update, { roomId: ROOM, message: edited.message });
    }
    const same = await request(gina, "message:edit", { roomId: ROOM, messageId: sent.id, message: "hello" });
    assert.deepEqual(same, edited);
    const code = async (socket, event, data) => (await request(socket, event, data)).error?.code;
    assert.equal(await code(hank, "message:edit", { roomId: ROOM, messageId: sent.id, message: "mine" }), "forbidden");
    assert.equal(await code(gina, "message:edit", { roomId: ROOM, messageId: 999, message: "x" }), "not_found");
    assert.equal(await code(gina, "message:edit", { roomId: ROOM, messageId: sent.id, message: "" }), "invalid_message");
    assert.equal(await code(hank, "message:delete", { roomId: ROOM, messageId: sent.id }), "forbidden");

    const gone = [next(gina, "message:updated"), next(hank, "message:updated")];
    const deleted = await request(gina, "message:delete", { roomId: ROOM, messageId: sent.id });
    assert.equal(deleted.message.deleted, true);
    assert.equal(deleted.message.message, "");
    assert.equal(deleted.message.id, sent.id);
    for (const update of await Promise.all(gone)) assert.deepEqual(update.message, deleted.message);
    assert.deepEqual(await request(gina, "message:delete", { roomId: ROOM, messageId: sent.id }), deleted);
    assert.equal(await code(gina, "message:edit", { roomId: ROOM, messageId: sent.id, message: "back" }), "message_deleted");

    const late = await send(gina, "typo");
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    assert.equal(await code(gina, "message:edit", { roomId: ROOM, messageId: late.id, message: "fixed" }), "edit_window_closed");
    gina.close();
    hank.close();
  });

  test("catch-up: messages after an id, and changes since a position", async () => {
    const gina = await connect({ auth: { token: token("gina") } });
    const hank = await connect({ auth: { token: token("hank") } });
    const start = await request(hank, "changes", { roomId: ROOM });
    assert.equal(start.ok, true);
    const first = await send(gina, "one");
    await send(gina, "two");
    await request(gina, "message:edit", { roomId: ROOM, messageId: first.id, message: "uno" });
    const after = await request(hank, "messages", { roomId: ROOM, after: first.id - 1, limit: 2 });
    assert.deepEqual(after.room.messages.map((m) => m.id), [first.id, first.id + 1]);
    const changes = await request(hank, "changes", { roomId: ROOM, since: start.position });
    assert.deepEqual(changes.room.messages.map((m) => [m.id, m.message]), [[first.id + 1, "two"], [first.id, "uno"]]);
    assert.equal(changes.more, false);
    const bad = await request(hank, "changes", { roomId: ROOM, since: "not a position" });
    assert.equal(bad.error.code, "bad_request");
    gina.close();
    hank.close();
  });
}
