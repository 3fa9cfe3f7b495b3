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
  if (mine && !last.deleted) {
    const state = tickState(last);
    preview.append(el('span', { class: `tick ${state}`, text: state === 'sent' ? '✓ ' : '✓✓ ' }));
  }
  const text = last.deleted ? DELETED : last.message;
  preview.append(document.createTextNode(mine ? `You: ${text}` : text));
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

const DELETED = 'This message was deleted';

// The ticks of one of my stored messages: ✓ sent (durable), ✓✓ delivered (the partner's
// client has it; grey), ✓✓ seen (coloured).
function tickState(message) {
  if (message.seenAt) return 'seen';
  if (message.deliveredAt) return 'delivered';
  return 'sent';
}

export function initial(name) {
  return ([...name.trim()][0] ?? '?').toUpperCase();
}

// One message bubble. `data-state` is pending | failed | sent | delivered | seen for my
// own messages and `incoming` for the partner's; `data-id` is the server id once known.
// A deleted message shows as such, an edited one says so; my own stored messages that
// are not deleted get Edit and Delete buttons.
export function messageItem(item, me) {
  const node = el('li', { class: 'msg' }, el('p', { class: 'text' }), el('span', { class: 'meta' }));
  node.dataset.key = item.key;
  updateMessageItem(node, item, me);
  return node;
}

export function updateMessageItem(node, item, me) {
  const { message, pending } = item;
  const deleted = Boolean(message?.deleted);
  const text = message ? (deleted ? DELETED : message.message) : pending.text;
  const mine = pending !== null || message.userId === me.id;
  let state;
  if (pending) state = pending.error ? 'failed' : 'pending';
  else if (!mine) state = 'incoming';
  else state = tickState(message);
  const edited = message?.editedAt && !deleted ? 'edited' : '';
  if (
    node.dataset.state === state &&
    node.dataset.text === text &&
    node.dataset.edited === edited &&
    (node.dataset.deleted === 'true') === deleted
  ) {
    return;
  }

  node.dataset.state = state;
  node.dataset.text = text;
  node.dataset.edited = edited;
  node.dataset.deleted = String(deleted);
  node.classList.toggle('mine', mine);
  node.classList.toggle('deleted', deleted);
  if (message) node.dataset.id = String(message.id);
  node.querySelector('.text').textContent = text;

  const meta = node.querySelector('.meta');
  // A tick arriving between the two clicks of a delete must not disarm it.
  const armed = meta.querySelector('.delete')?.dataset.armed === 'true';
  meta.replaceChildren();
  if (message) {
    meta.append(el('time', { datetime: message.sentAt, title: dateFormat.format(new Date(message.sentAt)), text: timeFormat.format(new Date(message.sentAt)) }));
  }
  if (edited) meta.append(el('span', { class: 'edited', text: 'edited', title: dateFormat.format(new Date(message.editedAt)) }));
  const ticks = {
    pending: ['sending…', 'Not on the server yet'],
    sent: ['✓', 'Sent'],
    delivered: ['✓✓', message?.deliveredAt ? `Delivered ${dateFormat.format(new Date(message.deliveredAt))}` : 'Delivered'],
    seen: ['✓✓', message?.seenAt ? `Seen ${dateFormat.format(new Date(message.seenAt))}` : 'Seen'],
  }[state];
  if (ticks) meta.append(el('span', { class: 'tick', text: ticks[0], title: ticks[1], 'aria-label': ticks[1] }));
  if (message && mine && !deleted) {
    meta.append(
      el('button', { type: 'button', class: 'edit', data: { edit: String(message.id) }, text: 'Edit' }),
      el('button', {
        type: 'button',
        class: 'delete',
        data: armed ? { delete: String(message.id), armed: 'true' } : { delete: String(message.id) },
        text: armed ? 'Delete?' : 'Delete',
      }),
    );
  }
  if (state === 'failed') {
    meta.append(
      el('span', { class: 'failure', text: pending.error.message }),
      el('button', { type: 'button', class: 'discard', data: { discard: pending.clientMessageId }, text: 'Remove' }),
    );
  }
}
