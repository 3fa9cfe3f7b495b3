// DOM building. Every piece of user text goes in through textContent (or an attribute
// set with setAttribute / dataset) and is never parsed as markup, so a message such as
// "<script>…" is shown as the text it is.

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === 'text') node.textContent = value;
    else if (name === 'class') node.className = value;
    else if (name === 'data') Object.assign(node.dataset, value);
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

export function shortTime(iso) {
  const date = new Date(iso);
  const today = new Date();
  return date.toDateString() === today.toDateString()
    ? timeFormat.format(date)
    : date.toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
}

// One inbox row: partner, last message, time, unread badge, and whether I block them.
export function inboxRow(room, me, isOpen, blocked = false) {
  const last = room.lastMessage;
  const mine = last.userId === me.id;
  const preview = el('span', { class: 'preview' });
  if (mine) preview.append(el('span', { class: 'tick', text: last.seenAt ? '✓✓ ' : '✓ ' }));
  preview.append(document.createTextNode(mine ? `You: ${last.message}` : last.message));
  const button = el(
    'button',
    { type: 'button', class: 'room', data: { room: room.roomId } },
    el('span', { class: 'avatar', text: initial(room.partner.name), 'aria-hidden': 'true' }),
    el(
      'span',
      { class: 'room-text' },
      el(
        'span',
        { class: 'room-top' },
        el('span', { class: 'partner', text: room.partner.name }),
        blocked ? el('span', { class: 'blocked-tag', text: 'Blocked' }) : null,
        el('time', { datetime: last.sentAt, text: shortTime(last.sentAt) }),
      ),
      el(
        'span',
        { class: 'room-bottom' },
        preview,
        room.unread > 0
          ? el('span', { class: 'badge', text: String(room.unread), 'aria-label': `${room.unread} unread` })
          : null,
      ),
    ),
  );
  if (isOpen) button.setAttribute('aria-current', 'true');
  return el('li', {}, button);
}

export function initial(name) {
  return ([...name.trim()][0] ?? '?').toUpperCase();
}

// One message bubble. `data-state` is pending | failed | sent | seen for my own
// messages and `incoming` for the partner's; `data-id` is the server id once known.
export function messageItem(item, me) {
  const node = el('li', { class: 'msg' }, el('p', { class: 'text' }), el('span', { class: 'meta' }));
  node.dataset.key = item.key;
  updateMessageItem(node, item, me);
  return node;
}

export function updateMessageItem(node, item, me) {
  const { message, pending } = item;
  const text = message ? message.message : pending.text;
  const mine = pending !== null || message.userId === me.id;
  let state;
  if (pending) state = pending.error ? 'failed' : 'pending';
  else if (!mine) state = 'incoming';
  else state = message.seenAt ? 'seen' : 'sent';
  if (node.dataset.state === state && node.dataset.text === text) return;

  node.dataset.state = state;
  node.dataset.text = text;
  node.classList.toggle('mine', mine);
  if (message) node.dataset.id = String(message.id);
  node.querySelector('.text').textContent = text;

  const meta = node.querySelector('.meta');
  meta.replaceChildren();
  if (message) {
    meta.append(el('time', { datetime: message.sentAt, title: dateFormat.format(new Date(message.sentAt)), text: timeFormat.format(new Date(message.sentAt)) }));
  }
  const ticks = {
    pending: ['sending…', 'Not on the server yet'],
    sent: ['✓', 'Sent'],
    seen: ['✓✓', message?.seenAt ? `Seen ${dateFormat.format(new Date(message.seenAt))}` : 'Seen'],
  }[state];
  if (ticks) meta.append(el('span', { class: 'tick', text: ticks[0], title: ticks[1], 'aria-label': ticks[1] }));
  if (state === 'failed') {
    meta.append(
      el('span', { class: 'failure', text: pending.error.message }),
      el('button', { type: 'button', class: 'discard', data: { discard: pending.clientMessageId }, text: 'Remove' }),
    );
  }
}
