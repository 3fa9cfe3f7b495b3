// Protocol helpers that every front end needs: user ids, room ids, token payloads.
// See docs/protocol.md; nothing here talks to the network.

const USER_ID = /^[A-Za-z0-9_.@+-]{1,64}$/;

export function isValidUserId(id) {
  return USER_ID.test(id);
}

// The room of two users: "<lowest>-<highest>", compared byte by byte. For the allowed
// ASCII alphabet JavaScript's `<` is exactly that comparison ("10" < "9").
export function roomIdOf(a, b) {
  return a < b ? `${a}-${b}` : `${b}-${a}`;
}

// The other participant of one of my rooms, read the way the server reads it: my id and
// one "-" taken off the front or the back, and the result must give the same room id.
export function partnerOf(roomId, me) {
  const candidates = [];
  if (roomId.startsWith(`${me}-`)) candidates.push(roomId.slice(me.length + 1));
  if (roomId.endsWith(`-${me}`)) candidates.push(roomId.slice(0, -(me.length + 1)));
  return candidates.find((p) => isValidUserId(p) && roomIdOf(me, p) === roomId) ?? null;
}

// The claims of a JWT, decoded for display only: the server verifies the signature.
// Returns null when the text is not a JWT with a usable `sub`.
export function decodeToken(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    if (typeof claims.sub !== 'string' || !isValidUserId(claims.sub)) return null;
    return claims;
  } catch {
    return null;
  }
}

// The SessionUser the server derives from the same claims (name trimmed, 1..100 chars).
export function sessionUserOf(claims) {
  const name = typeof claims.name === 'string' ? claims.name.trim() : '';
  const length = [...name].length;
  return { id: claims.sub, name: length >= 1 && length <= 100 ? name : claims.sub };
}

export function isExpired(claims, now = Date.now()) {
  // The server allows 30 s of leeway; so does the client, to agree with it.
  return typeof claims.exp === 'number' && claims.exp * 1000 + 30_000 < now;
}
