// The pages. A view builds its fixed parts (headings, forms) into `root` once and
// returns `refresh()`, which the app calls on arrival and at every poll: it redraws
// only the live parts, so a half-typed form survives the poll.

import { api, get, path, withQuery } from './api.js';
import {
  h, at, num, rate, bytes, json, describe, toast, act, confirmButton, field, select,
  jsonObject, table, fill, facts, stat,
} from './dom.js';
import { lineChart, groupPicture } from './charts.js';

/** The overview's history for the charts: a sample a poll, ten minutes at 5 s. */
const history = [];
const HISTORY_LENGTH = 120;
let overview = null;

/** Polls `/api/overview` into the history; the app does so at every poll, on any page. */
export async function sampleOverview() {
  overview = await get('api/overview');
  const totals = overview.queue_totals ?? {};
  const perSecond = (k) => at(overview.message_stats ?? {}, `${k}_details.rate`) ?? 0;
  history.push({
    t: Date.now(),
    publish: perSecond('publish'),
    deliver: perSecond('deliver_get'),
    ack: perSecond('ack'),
    confirm: perSecond('confirm'),
    ready: totals.messages_ready ?? 0,
    unacked: totals.messages_unacknowledged ?? 0,
  });
  if (history.length > HISTORY_LENGTH) history.shift();
  return overview;
}

// Small pieces shared by the pages.

const later = (promise) => promise.catch((e) => toast(describe(e)));
const badge = (text) => h('span', { class: 'badge' }, text);
const name = (text) => h('span', { class: 'name' }, text);
const crumb = (href, text) => h('p', { class: 'crumbs' }, h('a', { href }, `‹ ${text}`));
const queueHref = (vhost, queue) => path`#/queue/${vhost}/${queue}`;
const exchangeHref = (vhost, exchange) => path`#/exchange/${vhost}/${exchange}`;
const defaultName = (exchange) => exchange || '(AMQP default)';
/** The default exchange's name in API paths. */
const apiName = (exchange) => exchange || 'amq.default';
const details = (summary, ...content) =>
  h('details', { class: 'card' }, h('summary', {}, summary), ...content);

/** Durable, auto-delete, exclusive or internal, and arguments, as short badges. */
function features(o) {
  const args = Object.keys(o.arguments ?? {});
  const shown = [
    o.durable ? badge('durable') : null,
    o.auto_delete ? badge('auto-delete') : null,
    o.exclusive ? badge('exclusive') : null,
    o.internal ? badge('internal') : null,
    o.arguments?.['x-partitions'] ? badge(`${o.arguments['x-partitions']} partitions`) : null,
    args.length ? h('span', { class: 'badge args', title: json(o.arguments) }, `${args.length} args`) : null,
  ].filter(Boolean);
  return shown.length ? shown : h('span', { class: 'muted' }, 'none');
}

/** A `<select>` of the vhosts the user sees, filled when the API answers. */
function vhostSelect({ value, ...attrs }, first = null) {
  const control = select(attrs, first ? [first] : []);
  later(get('api/vhosts?columns=name').then((vhosts) => {
    control.append(...vhosts.map((v) => h('option', { value: v.name, selected: v.name === value }, v.name)));
  }));
  return control;
}

/** Filter, sort and page of each paged list, kept while the tab lives. */
const lists = {};

/**
 * A list that the API pages, sorts and filters (`page`, `page_size`, `name`,
 * `use_regex`, `sort`, `sort_reverse`), with a vhost choice when `byVhost`. Columns
 * with a `sort` path sort by it when their header is clicked (again: reversed).
 */
function pagedList(key, source, columns, { byVhost = false } = {}) {
  const st = (lists[key] ??= { page: 1, size: 20, name: '', regex: false, sort: '', reverse: false, vhost: '' });
  const body = h('div');
  const pager = h('div', { class: 'pager' });
  const again = () => {
    st.page = 1;
    later(refresh());
  };
  let typing;
  const toolbar = h('div', { class: 'toolbar' },
    h('input', {
      type: 'search', class: 'filter', placeholder: 'Filter by name', 'aria-label': 'Filter by name', value: st.name,
      oninput: (e) => {
        st.name = e.target.value;
        clearTimeout(typing);
        typing = setTimeout(again, 300);
      },
    }),
    h('label', { class: 'check' }, h('input', {
      type: 'checkbox', checked: st.regex, onchange: (e) => { st.regex = e.target.checked; again(); },
    }), 'Regex'),
    byVhost ? vhostSelect({
      'aria-label': 'Vhost', value: st.vhost, onchange: (e) => { st.vhost = e.target.value; again(); },
    }, ['', 'All vhosts']) : null,
    select({ 'aria-label': 'Page size', onchange: (e) => { st.size = Number(e.target.value); again(); } },
      [10, 20, 50, 100, 500].map((n) => [String(n), `${n} a page`]), String(st.size)));
  const head = (c) => (c.sort ? h('button', {
    type: 'button',
    class: 'sort',
    onclick: () => {
      // Figures sort largest first, names from A.
      if (st.sort === c.sort) st.reverse = !st.reverse;
      else [st.sort, st.reverse] = [c.sort, Boolean(c.num)];
      later(refresh());
    },
  }, c.label, st.sort === c.sort ? (st.reverse ? ' ▼' : ' ▲') : '') : c.label);
  const turn = (page) => () => {
    st.page = page;
    later(refresh());
  };
  async function refresh() {
    const url = byVhost && st.vhost ? `${source}/${encodeURIComponent(st.vhost)}` : source;
    let reply;
    try {
      reply = await get(withQuery(url, {
        page: st.page,
        page_size: st.size,
        name: st.name,
        use_regex: st.regex ? 'true' : '',
        sort: st.sort,
        sort_reverse: st.reverse ? 'true' : '',
      }));
    } catch (e) {
      // The list shrank below this page since the last poll: start from the first.
      if (e.status === 400 && st.page > 1) {
        st.page = 1;
        return refresh();
      }
      throw e;
    }
    fill(body, table(columns, reply.items, {
      head,
      empty: st.name ? 'Nothing matches the filter.' : 'None yet.',
    }));
    fill(pager,
      h('button', { type: 'button', disabled: st.page <= 1, onclick: turn(st.page - 1) }, '‹ Previous'),
      h('span', {}, `Page ${reply.page} of ${Math.max(1, reply.page_count)} · `
        + `${num(reply.filtered_count)} of ${num(reply.total_count)}`),
      h('button', { type: 'button', disabled: st.page >= reply.page_count, onclick: turn(st.page + 1) }, 'Next ›'));
    return reply;
  }
  return { element: h('div', { class: 'list' }, toolbar, body, pager), refresh };
}

/** A form whose submission runs `send()` (async), showing what it returns as done. */
function form(attrs, fields, button, send) {
  return h('form', {
    class: 'form',
    ...attrs,
    onsubmit: act(async () => {
      const said = await send();
      if (said) toast(said, 'ok');
    }),
  }, fields, h('div', { class: 'buttons' }, h('button', { type: 'submit', class: 'primary' }, button)));
}

// Overview

function overviewView(root) {
  const live = h('div');
  fill(root, h('h1', {}, 'Overview'), live);
  return async () => {
    const o = overview ?? await sampleOverview();
    const q = o.queue_totals ?? {};
    const objects = o.object_totals ?? {};
    const r = (k) => rate(at(o.message_stats ?? {}, `${k}_details.rate`));
    fill(live,
      h('div', { class: 'stats' },
        stat('Ready', num(q.messages_ready ?? 0)),
        stat('Unacked', num(q.messages_unacknowledged ?? 0)),
        stat('Total', num(q.messages ?? 0)),
        stat('Publish', r('publish')),
        stat('Deliver / get', r('deliver_get')),
        stat('Ack', r('ack'))),
      h('div', { class: 'charts' },
        lineChart('Message rates', history, [
          { key: 'publish', label: 'Publish' },
          { key: 'deliver', label: 'Deliver / get' },
          { key: 'ack', label: 'Ack' },
          { key: 'confirm', label: 'Confirm' },
        ], rate),
        lineChart('Queued messages', history, [
          { key: 'ready', label: 'Ready' },
          { key: 'unacked', label: 'Unacked' },
        ], num)),
      h('h2', {}, 'Objects'),
      h('div', { class: 'stats' }, ['connections', 'channels', 'exchanges', 'queues', 'consumers']
        .filter((k) => k in objects)
        .map((k) => stat(k[0].toUpperCase() + k.slice(1), num(objects[k])))),
      h('h2', {}, 'Node'),
      facts([
        ['Product', `${o.product_name} ${o.product_version}`],
        ['RabbitMQ API', o.rabbitmq_version],
        ['Cluster', o.cluster_name],
        ['Node', o.node ?? '(monitoring users see it)'],
      ]),
      o.listeners ? table([
        { label: 'Protocol', cell: (l) => l.protocol },
        { label: 'Address', cell: (l) => l.ip_address },
        { label: 'Port', num: true, cell: (l) => l.port },
      ], o.listeners) : null);
  };
}

// Connections and channels

function connectionsView(root) {
  const list = pagedList('connections', 'api/connections', [
    {
      label: 'Name',
      sort: 'name',
      cell: (c) => [name(c.name), c.user_provided_name ? h('div', { class: 'muted small' }, c.user_provided_name) : null],
    },
    { label: 'User', sort: 'user', cell: (c) => c.user },
    { label: 'Vhost', sort: 'vhost', cell: (c) => c.vhost },
    {
      label: 'Client',
      cell: (c) => `${c.client_properties?.product ?? ''} ${c.client_properties?.version ?? ''}`.trim(),
    },
    { label: 'TLS', cell: (c) => (c.ssl ? 'yes' : 'no') },
    { label: 'State', sort: 'state', cell: (c) => c.state },
    { label: 'Channels', sort: 'channels', num: true, cell: (c) => num(c.channels) },
    { label: 'From client', sort: 'recv_oct_details.rate', num: true, cell: (c) => `${bytes(at(c, 'recv_oct_details.rate'))}/s` },
    { label: 'To client', sort: 'send_oct_details.rate', num: true, cell: (c) => `${bytes(at(c, 'send_oct_details.rate'))}/s` },
    {
      label: '',
      cell: (c) => confirmButton('Close', async () => {
        await api('DELETE', path`api/connections/${c.name}`);
        toast(`Closed ${c.name}`, 'ok');
        await list.refresh();
      }),
    },
  ]);
  fill(root, h('h1', {}, 'Connections'), list.element);
  return list.refresh;
}

function channelsView(root) {
  const r = (k) => (c) => rate(at(c, `message_stats.${k}_details.rate`));
  const list = pagedList('channels', 'api/channels', [
    { label: 'Channel', sort: 'name', cell: (c) => name(c.name) },
    { label: 'User', sort: 'user', cell: (c) => c.user },
    { label: 'Vhost', sort: 'vhost', cell: (c) => c.vhost },
    { label: 'Mode', cell: (c) => [c.confirm ? badge('confirm') : null, c.transactional ? badge('tx') : null] },
    { label: 'Prefetch', sort: 'prefetch_count', num: true, cell: (c) => num(c.prefetch_count) },
    { label: 'Unacked', sort: 'messages_unacknowledged', num: true, cell: (c) => num(c.messages_unacknowledged) },
    { label: 'Unconfirmed', sort: 'messages_unconfirmed', num: true, cell: (c) => num(c.messages_unconfirmed) },
    { label: 'Consumers', sort: 'consumer_count', num: true, cell: (c) => num(c.consumer_count) },
    { label: 'Publish', sort: 'message_stats.publish_details.rate', num: true, cell: r('publish') },
    { label: 'Deliver / get', sort: 'message_stats.deliver_get_details.rate', num: true, cell: r('deliver_get') },
    { label: 'Ack', sort: 'message_stats.ack_details.rate', num: true, cell: r('ack') },
  ]);
  fill(root, h('h1', {}, 'Channels'), list.element);
  return list.refresh;
}

// Exchanges

function exchangesView(root) {
  const list = pagedList('exchanges', 'api/exchanges', [
    { label: 'Vhost', sort: 'vhost', cell: (x) => x.vhost },
    { label: 'Name', sort: 'name', cell: (x) => h('a', { href: exchangeHref(x.vhost, x.name) }, defaultName(x.name)) },
    { label: 'Type', sort: 'type', cell: (x) => x.type },
    { label: 'Features', cell: features },
    { label: 'Policy', sort: 'policy', cell: (x) => x.policy ?? '' },
  ], { byVhost: true });
  const vhost = vhostSelect({ name: 'vhost', value: '/' });
  const xname = h('input', { name: 'name', required: true });
  const types = (overview?.exchange_types ?? []).map((t) => t.name);
  const type = select({ name: 'type' }, types.length ? types : ['direct', 'fanout', 'topic', 'headers'], 'direct');
  const durable = h('input', { type: 'checkbox', checked: true });
  const autoDelete = h('input', { type: 'checkbox' });
  const internal = h('input', { type: 'checkbox' });
  const args = h('textarea', { rows: 2, placeholder: '{"alternate-exchange": "unrouted"}' });
  const declare = form({}, [
    field('Vhost', vhost), field('Name', xname), field('Type', type),
    h('div', { class: 'checks' },
      h('label', { class: 'check' }, durable, 'Durable'),
      h('label', { class: 'check' }, autoDelete, 'Auto-delete'),
      h('label', { class: 'check' }, internal, 'Internal')),
    field('Arguments (JSON)', args),
  ], 'Declare', async () => {
    await api('PUT', path`api/exchanges/${vhost.value}/${xname.value}`, {
      type: type.value,
      durable: durable.checked,
      auto_delete: autoDelete.checked,
      internal: internal.checked,
      arguments: jsonObject(args.value, 'Arguments'),
    });
    await list.refresh();
    return `Declared exchange ${xname.value}`;
  });
  fill(root, h('h1', {}, 'Exchanges'), list.element, details('Declare an exchange', declare));
  return list.refresh;
}

/** The bindings of a queue or from an exchange, each with its unbind button. */
function bindingsTable(vhost, bindings, after) {
  return table([
    { label: 'From', cell: (b) => h('a', { href: exchangeHref(vhost, b.source) }, defaultName(b.source)) },
    {
      label: 'To',
      cell: (b) => h('a', {
        href: b.destination_type === 'queue' ? queueHref(vhost, b.destination) : exchangeHref(vhost, b.destination),
      }, `${b.destination_type} ${b.destination}`),
    },
    { label: 'Routing key', cell: (b) => h('code', {}, b.routing_key) },
    { label: 'Arguments', cell: (b) => h('code', {}, json(b.arguments)) },
    {
      label: '',
      // The default exchange's bindings are implicit: they cannot be removed.
      cell: (b) => (b.source === '' ? '' : confirmButton('Unbind', async () => {
        const kind = b.destination_type === 'queue' ? 'q' : 'e';
        await api('DELETE', path`api/bindings/${vhost}/e/${b.source}/${kind}/${b.destination}/${b.properties_key}`);
        toast('Unbound', 'ok');
        await after();
      })),
    },
  ], bindings, { empty: 'No bindings.' });
}

/** Binds `queue` from an exchange named in the form, or `source` to a queue or exchange. */
function bindForm(vhost, { source, queue }, after) {
  const other = h('input', { name: 'other', required: true });
  const kind = queue === undefined ? select({ name: 'kind' }, [['q', 'Queue'], ['e', 'Exchange']], 'q') : null;
  const key = h('input', { name: 'routing_key' });
  const args = h('textarea', { rows: 2, placeholder: '{}' });
  return form({}, [
    kind ? field('Destination type', kind) : null,
    field(queue === undefined ? 'Destination' : 'From exchange', other),
    field('Routing key', key),
    field('Arguments (JSON)', args),
  ], 'Bind', async () => {
    const [from, k, to] = queue === undefined ? [source, kind.value, other.value] : [other.value, 'q', queue];
    await api('POST', path`api/bindings/${vhost}/e/${from}/${k}/${to}`, {
      routing_key: key.value,
      arguments: jsonObject(args.value, 'Arguments'),
    });
    await after();
    return 'Bound';
  });
}

/** Publishes through `exchange`, with the routing key `fixedKey` or one typed in. */
function publishForm(vhost, exchange, fixedKey, after) {
  const key = h('input', { name: 'routing_key' });
  const payload = h('textarea', { id: 'publish-payload', rows: 4, name: 'payload' });
  const headers = h('textarea', { rows: 2, placeholder: '{"x-key": "value"}' });
  const properties = h('textarea', { rows: 2, placeholder: '{"content_type": "text/plain"}' });
  const persistent = h('input', { type: 'checkbox' });
  return form({ id: 'publish-form' }, [
    fixedKey === null ? field('Routing key', key) : null,
    field('Payload', payload),
    field('Headers (JSON)', headers),
    field('Properties (JSON)', properties),
    h('label', { class: 'check' }, persistent, 'Persistent (delivery mode 2)'),
  ], 'Publish', async () => {
    const props = { ...jsonObject(properties.value, 'Properties'), delivery_mode: persistent.checked ? 2 : 1 };
    const hs = jsonObject(headers.value, 'Headers');
    if (Object.keys(hs).length) props.headers = hs;
    const reply = await api('POST', path`api/exchanges/${vhost}/${exchange}/publish`, {
      properties: props,
      routing_key: fixedKey ?? key.value,
      payload: payload.value,
      payload_encoding: 'string',
    });
    await after();
    if (!reply.routed) throw new Error('Published, but no queue took the message: it was unroutable.');
    return 'Published: the message was routed.';
  });
}

function exchangeView(root, [vhost, xname]) {
  const summary = h('div');
  const bindings = h('div');
  const builtIn = xname === '' || xname.startsWith('amq.');
  async function refresh() {
    const [x, from] = await Promise.all([
      get(path`api/exchanges/${vhost}/${apiName(xname)}`),
      get(path`api/exchanges/${vhost}/${apiName(xname)}/bindings/source`),
    ]);
    fill(summary, facts([
      ['Type', x.type],
      ['Features', features(x)],
      ['Policy', x.policy ?? 'none'],
      ['Arguments', h('code', {}, json(x.arguments))],
    ]));
    fill(bindings, bindingsTable(vhost, from, refresh));
  }
  fill(root,
    crumb('#/exchanges', 'Exchanges'),
    h('h1', {}, 'Exchange ', name(defaultName(xname)), ' ', badge(vhost)),
    summary,
    h('h2', {}, 'Bindings from this exchange'),
    bindings,
    // Every queue is bound to the default exchange by its name, and to nothing else.
    xname === '' ? null : details('Add a binding', bindForm(vhost, { source: xname }, refresh)),
    details('Publish a message', publishForm(vhost, apiName(xname), null, refresh)),
    builtIn ? null : h('div', { class: 'actions' }, confirmButton('Delete', async () => {
      await api('DELETE', path`api/exchanges/${vhost}/${xname}`);
      toast(`Deleted exchange ${xname}`, 'ok');
      location.hash = '#/exchanges';
    })),
  );
  return refresh;
}

// Queues

function queuesView(root) {
  const r = (k) => (q) => rate(at(q, `message_stats.${k}_details.rate`));
  const list = pagedList('queues', 'api/queues', [
    { label: 'Vhost', sort: 'vhost', cell: (q) => q.vhost },
    { label: 'Name', sort: 'name', cell: (q) => h('a', { href: queueHref(q.vhost, q.name) }, q.name) },
    { label: 'Type', sort: 'type', cell: (q) => q.type },
    { label: 'Features', cell: features },
    { label: 'Ready', sort: 'messages_ready', num: true, cell: (q) => num(q.messages_ready) },
    { label: 'Unacked', sort: 'messages_unacknowledged', num: true, cell: (q) => num(q.messages_unacknowledged) },
    { label: 'Total', sort: 'messages', num: true, cell: (q) => num(q.messages) },
    { label: 'Consumers', sort: 'consumers', num: true, cell: (q) => num(q.consumers) },
    { label: 'Incoming', sort: 'message_stats.publish_details.rate', num: true, cell: r('publish') },
    { label: 'Deliver / get', sort: 'message_stats.deliver_get_details.rate', num: true, cell: r('deliver_get') },
    { label: 'Ack', sort: 'message_stats.ack_details.rate', num: true, cell: r('ack') },
  ], { byVhost: true });
  const vhost = vhostSelect({ name: 'vhost', value: '/' });
  const qname = h('input', { name: 'name', required: true });
  const type = select({ name: 'type' }, ['classic', 'quorum', 'stream'], 'classic');
  const durable = h('input', { type: 'checkbox', checked: true });
  const autoDelete = h('input', { type: 'checkbox' });
  const args = h('textarea', { rows: 2, placeholder: '{"x-partitions": 4}' });
  const declare = form({}, [
    field('Vhost', vhost), field('Name', qname), field('Type', type),
    h('div', { class: 'checks' },
      h('label', { class: 'check' }, durable, 'Durable'),
      h('label', { class: 'check' }, autoDelete, 'Auto-delete')),
    field('Arguments (JSON)', args),
  ], 'Declare', async () => {
    const arguments_ = jsonObject(args.value, 'Arguments');
    if (type.value !== 'classic') arguments_['x-queue-type'] = type.value;
    await api('PUT', path`api/queues/${vhost.value}/${qname.value}`, {
      durable: durable.checked,
      auto_delete: autoDelete.checked,
      arguments: arguments_,
    });
    await list.refresh();
    return `Declared queue ${qname.value}`;
  });
  fill(root, h('h1', {}, 'Queues'), list.element, details('Declare a queue', declare));
  return list.refresh;
}

/** A message as `/get` returns it. */
function messageCard(m, i) {
  const props = Array.isArray(m.properties) ? {} : m.properties;
  return h('article', { class: 'card message' },
    h('header', {},
      h('b', {}, `Message ${i + 1}`),
      h('span', { class: 'muted' }, ` · ${num(m.message_count)} left in the queue `),
      m.redelivered ? badge('redelivered') : null),
    facts([
      ['Exchange', defaultName(m.exchange)],
      ['Routing key', h('code', {}, m.routing_key)],
      ['Properties', h('code', {}, json(props))],
      ['Payload', `${num(m.payload_bytes)} bytes, ${m.payload_encoding}`],
    ]),
    h('pre', { class: 'payload' }, m.payload));
}

/** Gets messages from a queue into `out`, with RabbitMQ's ack modes. */
function getForm(vhost, queue, out, after) {
  const count = h('input', { type: 'number', min: 1, value: 1, name: 'count' });
  const mode = select({ name: 'ackmode' }, [
    ['ack_requeue_true', 'Nack, requeue'],
    ['reject_requeue_true', 'Reject, requeue'],
    ['ack_requeue_false', 'Ack: remove'],
    ['reject_requeue_false', 'Reject: drop or dead-letter'],
  ], 'ack_requeue_true');
  const encoding = select({ name: 'encoding' }, [['auto', 'Text or base64'], ['base64', 'Base64']], 'auto');
  const truncate = h('input', { type: 'number', min: 1, value: 50000, name: 'truncate' });
  return form({ id: 'get-form' }, [
    field('Messages', count), field('Ack mode', mode), field('Encoding', encoding), field('Truncate at (bytes)', truncate),
  ], 'Get', async () => {
    const got = await api('POST', path`api/queues/${vhost}/${queue}/get`, {
      count: Number(count.value),
      ackmode: mode.value,
      encoding: encoding.value,
      truncate: Number(truncate.value),
    });
    fill(out, got.length ? got.map(messageCard) : h('p', { class: 'muted' }, 'The queue is empty.'));
    await after();
  });
}

function queueView(root, [vhost, qname]) {
  const summary = h('div');
  const consumers = h('div');
  const bindings = h('div');
  const messages = h('div', { id: 'messages' });
  async function refresh() {
    const [q, all, bound] = await Promise.all([
      get(path`api/queues/${vhost}/${qname}`),
      get(path`api/consumers/${vhost}`),
      get(path`api/queues/${vhost}/${qname}/bindings`),
    ]);
    const r = (k) => rate(at(q, `message_stats.${k}_details.rate`));
    const grouped = q.type === 'stream' || q.arguments?.['x-partitions'] !== undefined;
    fill(summary,
      h('div', { class: 'stats' },
        stat('Ready', num(q.messages_ready ?? 0)),
        stat('Unacked', num(q.messages_unacknowledged ?? 0)),
        stat('Total', num(q.messages ?? 0)),
        stat('Consumers', num(q.consumers ?? 0)),
        stat('Incoming', r('publish')),
        stat('Deliver / get', r('deliver_get')),
        stat('Ack', r('ack'))),
      facts([
        ['Type', q.type],
        ['State', q.state],
        ['Features', features(q)],
        ['Policy', q.policy ?? 'none'],
        ['Operator policy', q.operator_policy ?? 'none'],
        ['Effective policy', h('code', {}, json(q.effective_policy_definition ?? {}))],
        ['Arguments', h('code', {}, json(q.arguments))],
        ['Memory', bytes(q.memory)],
      ]),
      grouped ? h('p', {}, h('a', { class: 'button', href: path`#/groups/${vhost}/${qname}` }, 'Consumer groups ›')) : null);
    fill(consumers, table([
      { label: 'Tag', cell: (c) => h('code', {}, c.consumer_tag) },
      { label: 'Channel', cell: (c) => c.channel_details?.name },
      { label: 'Ack', cell: (c) => (c.ack_required ? 'manual' : 'auto') },
      { label: 'Exclusive', cell: (c) => (c.exclusive ? 'yes' : 'no') },
      { label: 'Prefetch', num: true, cell: (c) => num(c.prefetch_count) },
      { label: 'Arguments', cell: (c) => h('code', {}, json(c.arguments)) },
    ], all.filter((c) => c.queue?.name === qname), { empty: 'No consumers.' }));
    fill(bindings, bindingsTable(vhost, bound, refresh));
  }
  fill(root,
    crumb('#/queues', 'Queues'),
    h('h1', {}, 'Queue ', name(qname), ' ', badge(vhost)),
    summary,
    h('div', { class: 'actions' },
      confirmButton('Purge', async () => {
        await api('DELETE', path`api/queues/${vhost}/${qname}/contents`);
        toast(`Purged ${qname}`, 'ok');
        await refresh();
      }, { id: 'purge' }),
      confirmButton('Delete', async () => {
        await api('DELETE', path`api/queues/${vhost}/${qname}`);
        toast(`Deleted queue ${qname}`, 'ok');
        location.hash = '#/queues';
      }, { id: 'delete' })),
    h('div', { class: 'columns' },
      h('section', {}, h('h2', {}, 'Publish a message'),
        publishForm(vhost, 'amq.default', qname, refresh)),
      h('section', {}, h('h2', {}, 'Get messages'), getForm(vhost, qname, messages, refresh), messages)),
    h('h2', {}, 'Consumers'),
    consumers,
    h('h2', {}, 'Bindings'),
    bindings,
    details('Add a binding', bindForm(vhost, { queue: qname }, refresh)),
  );
  return refresh;
}

/** Consumer groups: of one queue, or of every partitioned queue and stream. */
function groupsView(root, [vhost, qname]) {
  const one = vhost !== undefined;
  const out = h('div');
  fill(root,
    one ? crumb(queueHref(vhost, qname), `Queue ${qname}`) : null,
    h('h1', {}, 'Consumer groups', one ? [' of ', name(qname), ' ', badge(vhost)] : null),
    out);
  return async () => {
    const queues = one ? [{ vhost, name: qname }] : (await get('api/queues?columns=name,vhost,type,arguments'))
      .filter((q) => q.type === 'stream' || q.arguments?.['x-partitions'] !== undefined);
    // A queue deleted since the list is left out, not an error.
    const replies = await Promise.allSettled(queues.map((q) => get(path`api/queues/${q.vhost}/${q.name}/groups`)));
    if (one && replies[0].status === 'rejected') throw replies[0].reason;
    const shown = replies.filter((r) => r.status === 'fulfilled' && r.value.groups.length).map((r) => r.value);
    fill(out, shown.length ? shown.map((g) => h('div', { class: 'queue-groups' },
      one ? null : h('h2', {}, h('a', { href: queueHref(g.vhost, g.queue) }, g.queue), ' ', badge(g.vhost)),
      g.groups.map((group) => groupPicture(g.type, group))))
      : h('p', { class: 'muted empty' }, 'No consumer groups now. They form on partitioned queues (x-partitions) '
        + 'and streams when consumers join with x-consumer-group.'));
  };
}

// Users, vhosts, policies, definitions

function usersView(root) {
  const users = h('div');
  const permissions = h('div');
  const user = h('input', { name: 'user', required: true, autocomplete: 'off' });
  const password = h('input', { type: 'password', name: 'password', required: true, autocomplete: 'new-password' });
  const tags = h('input', { name: 'tags', placeholder: 'management, policymaker, monitoring or administrator' });
  const who = h('input', { name: 'user', required: true });
  const vhost = vhostSelect({ name: 'vhost', value: '/' });
  const perm = (label) => h('input', { name: label, value: '.*', 'aria-label': label });
  const [configure, write, read] = [perm('configure'), perm('write'), perm('read')];
  async function refresh() {
    const [us, ps] = await Promise.all([get('api/users'), get('api/permissions')]);
    fill(users, table([
      { label: 'Name', cell: (u) => name(u.name) },
      { label: 'Tags', cell: (u) => u.tags.map(badge) },
      { label: 'Password', cell: (u) => (u.password_hash ? 'set' : 'none: cannot log in with one') },
      { label: 'Limits', cell: (u) => h('code', {}, json(u.limits)) },
      {
        label: '',
        cell: (u) => confirmButton('Delete', async () => {
          await api('DELETE', path`api/users/${u.name}`);
          toast(`Deleted user ${u.name}`, 'ok');
          await refresh();
        }),
      },
    ], us));
    fill(permissions, table([
      { label: 'User', cell: (p) => p.user },
      { label: 'Vhost', cell: (p) => p.vhost },
      { label: 'Configure', cell: (p) => h('code', {}, p.configure) },
      { label: 'Write', cell: (p) => h('code', {}, p.write) },
      { label: 'Read', cell: (p) => h('code', {}, p.read) },
      {
        label: '',
        cell: (p) => confirmButton('Revoke', async () => {
          await api('DELETE', path`api/permissions/${p.vhost}/${p.user}`);
          toast(`Revoked ${p.user}'s permissions in ${p.vhost}`, 'ok');
          await refresh();
        }),
      },
    ], ps, { empty: 'No permissions.' }));
  }
  fill(root,
    h('h1', {}, 'Users'), users,
    details('Add or update a user', form({}, [
      field('Name', user), field('Password', password), field('Tags', tags),
    ], 'Save', async () => {
      await api('PUT', path`api/users/${user.value}`, { password: password.value, tags: tags.value });
      await refresh();
      return `Saved user ${user.value}`;
    })),
    h('h2', {}, 'Permissions'), permissions,
    details('Set permissions', form({}, [
      field('User', who), field('Vhost', vhost),
      field('Configure', configure), field('Write', write), field('Read', read),
    ], 'Set', async () => {
      await api('PUT', path`api/permissions/${vhost.value}/${who.value}`, {
        configure: configure.value, write: write.value, read: read.value,
      });
      await refresh();
      return `Set ${who.value}'s permissions in ${vhost.value}`;
    })),
  );
  return refresh;
}

function vhostsView(root) {
  const list = h('div');
  const vname = h('input', { name: 'name', required: true });
  const description = h('input', { name: 'description' });
  const tags = h('input', { name: 'tags', placeholder: 'comma-separated' });
  const r = (k) => (v) => rate(at(v, `message_stats.${k}_details.rate`));
  async function refresh() {
    fill(list, table([
      { label: 'Name', cell: (v) => name(v.name) },
      { label: 'Description', cell: (v) => v.description },
      { label: 'Tags', cell: (v) => (v.tags ?? []).map(badge) },
      { label: 'Ready', num: true, cell: (v) => num(v.messages_ready) },
      { label: 'Unacked', num: true, cell: (v) => num(v.messages_unacknowledged) },
      { label: 'Total', num: true, cell: (v) => num(v.messages) },
      { label: 'Publish', num: true, cell: r('publish') },
      { label: 'Deliver / get', num: true, cell: r('deliver_get') },
      {
        label: '',
        cell: (v) => confirmButton('Delete', async () => {
          await api('DELETE', path`api/vhosts/${v.name}`);
          toast(`Deleted vhost ${v.name} with its queues and exchanges`, 'ok');
          await refresh();
        }),
      },
    ], await get('api/vhosts')));
  }
  fill(root, h('h1', {}, 'Virtual hosts'), list, details('Add a vhost', form({}, [
    field('Name', vname), field('Description', description), field('Tags', tags),
  ], 'Add', async () => {
    await api('PUT', path`api/vhosts/${vname.value}`, { description: description.value, tags: tags.value });
    await refresh();
    return `Added vhost ${vname.value}`;
  })));
  return refresh;
}

/**
 * One set of policies under `base` (`api/policies` or `api/operator-policies`): its list
 * and a form (titled `add`) to add or update one. Returns the nodes and the list's
 * refresh.
 */
function policySection({ title, base, noun, add, empty, example, applyChoices }) {
  const list = h('div');
  const vhost = vhostSelect({ name: 'vhost', value: '/' });
  const pname = h('input', { name: 'name', required: true });
  const pattern = h('input', { name: 'pattern', required: true, placeholder: '^orders\\.' });
  const applyTo = select({ name: 'apply-to' }, applyChoices, applyChoices[0]);
  const priority = h('input', { type: 'number', name: 'priority', value: 0 });
  const definition = h('textarea', { rows: 3, required: true, placeholder: example });
  const one = (v, n) => `${base}/${encodeURIComponent(v)}/${encodeURIComponent(n)}`;
  async function refresh() {
    fill(list, table([
      { label: 'Vhost', cell: (p) => p.vhost },
      { label: 'Name', cell: (p) => name(p.name) },
      { label: 'Pattern', cell: (p) => h('code', {}, p.pattern) },
      { label: 'Apply to', cell: (p) => p['apply-to'] },
      { label: 'Priority', num: true, cell: (p) => num(p.priority) },
      { label: 'Definition', cell: (p) => h('code', {}, json(p.definition)) },
      {
        label: '',
        cell: (p) => confirmButton('Delete', async () => {
          await api('DELETE', one(p.vhost, p.name));
          toast(`Deleted ${noun} ${p.name}`, 'ok');
          await refresh();
        }),
      },
    ], await get(base), { empty }));
  }
  const nodes = [h('h2', {}, title), list, details(add, form({}, [
    field('Vhost', vhost), field('Name', pname), field('Pattern (regex)', pattern),
    field('Apply to', applyTo), field('Priority', priority), field('Definition (JSON)', definition),
  ], 'Save', async () => {
    await api('PUT', one(vhost.value, pname.value), {
      pattern: pattern.value,
      'apply-to': applyTo.value,
      priority: Number(priority.value),
      definition: jsonObject(definition.value, 'Definition'),
    });
    await refresh();
    return `Saved ${noun} ${pname.value}`;
  }))];
  return { nodes, refresh };
}

function policiesView(root) {
  const own = policySection({
    title: 'User policies',
    base: 'api/policies',
    noun: 'policy',
    add: 'Add or update a policy',
    empty: 'No policies.',
    example: '{"max-length": 10000}',
    applyChoices: ['all', 'queues', 'exchanges'],
  });
  // An administrator's limits over queues, which a user policy can tighten, not loosen.
  const operator = policySection({
    title: 'Operator policies',
    base: 'api/operator-policies',
    noun: 'operator policy',
    add: 'Add or update an operator policy',
    empty: 'No operator policies.',
    example: '{"max-length": 100000, "message-ttl": 86400000}',
    applyChoices: ['queues', 'all'],
  });
  fill(root, h('h1', {}, 'Policies'), ...own.nodes, ...operator.nodes);
  return async () => {
    await own.refresh();
    await operator.refresh();
  };
}

function definitionsView(root) {
  const counts = h('div');
  const file = h('input', { type: 'file', accept: '.json,application/json' });
  const text = h('textarea', { rows: 8, placeholder: '{"queues": [], "exchanges": [], "bindings": []}' });
  const exportButton = h('button', {
    type: 'button',
    class: 'primary',
    onclick: act(async () => {
      const defs = await get('api/definitions');
      const blob = new Blob([JSON.stringify(defs, null, 2)], { type: 'application/json' });
      const link = h('a', {
        href: URL.createObjectURL(blob),
        download: `warren-definitions-${new Date().toISOString().slice(0, 10)}.json`,
      });
      link.click();
      // Revoked once the browser has started the download.
      setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
      fill(counts, table([
        { label: 'Kind', cell: ([k]) => k },
        { label: 'Count', num: true, cell: ([, v]) => num(v.length) },
      ], Object.entries(defs).filter(([, v]) => Array.isArray(v))));
    }),
  }, 'Download definitions');
  fill(root,
    h('h1', {}, 'Definitions'),
    h('section', { class: 'card' }, h('h2', {}, 'Export'),
      h('p', { class: 'muted' }, 'Users, vhosts, permissions, policies, queues, exchanges and bindings, as RabbitMQ exports them.'),
      exportButton, counts),
    h('section', { class: 'card' }, h('h2', {}, 'Import'),
      h('p', { class: 'muted' }, 'Merged into what the broker has: a file from RabbitMQ or Warren, or JSON pasted below.'),
      form({}, [field('File', file), field('Or JSON', text)], 'Import', async () => {
        const source = file.files[0] ? await file.files[0].text() : text.value;
        let defs;
        try {
          defs = JSON.parse(source);
        } catch (e) {
          throw new Error(`The definitions are not JSON: ${e.message}`);
        }
        await api('POST', 'api/definitions', defs);
        return 'Imported the definitions.';
      })),
  );
  // Nothing here changes by itself.
  return async () => {};
}

/** Each page by the first segment of its hash route; the nav link it belongs under. */
export const views = {
  overview: { view: overviewView, nav: 'overview' },
  connections: { view: connectionsView, nav: 'connections' },
  channels: { view: channelsView, nav: 'channels' },
  exchanges: { view: exchangesView, nav: 'exchanges' },
  exchange: { view: exchangeView, nav: 'exchanges' },
  queues: { view: queuesView, nav: 'queues' },
  queue: { view: queueView, nav: 'queues' },
  groups: { view: groupsView, nav: 'groups' },
  users: { view: usersView, nav: 'users' },
  vhosts: { view: vhostsView, nav: 'vhosts' },
  policies: { view: policiesView, nav: 'policies' },
  definitions: { view: definitionsView, nav: 'definitions' },
};
