// Pictures drawn as SVG: line charts of the overview's polled history, and consumer
// groups as one cell per partition (colour: owner, bar: lag).

import { h, s, num } from './dom.js';

/** The smallest of 1, 2, 5 × 10^k at or above `v`: a round top for an axis. */
function roundUp(v) {
  const step = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * step).find((t) => t >= v);
}

/** A short axis label: 1.5k, 2M. */
function short(v) {
  if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return `${+v.toFixed(1)}`;
}

/**
 * A line chart of `samples` ({ t: ms, [key]: value }) for each of `series`
 * ({ key, label }), with a legend of the latest values (`format`ted). The series' colours
 * are the style sheet's `.s0`, `.s1`, …
 */
export function lineChart(title, samples, series, format) {
  const [W, H, L, R, T, B] = [640, 210, 46, 12, 10, 24];
  const top = roundUp(Math.max(1, ...samples.flatMap((p) => series.map((c) => p[c.key] ?? 0))));
  const t0 = samples[0]?.t ?? 0;
  const t1 = samples.at(-1)?.t ?? 0;
  const x = (t) => L + (t1 > t0 ? (t - t0) / (t1 - t0) : 1) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const grid = [0, 0.25, 0.5, 0.75, 1].map((f) => [
    s('line', { class: 'grid', x1: L, x2: W - R, y1: y(top * f), y2: y(top * f) }),
    s('text', { class: 'axis', x: L - 6, y: y(top * f) + 4, 'text-anchor': 'end' }, short(top * f)),
  ]);
  const span = Math.round((t1 - t0) / 1000);
  const times = [
    s('text', { class: 'axis', x: L, y: H - 6 }, span ? `${span} s ago` : ''),
    s('text', { class: 'axis', x: W - R, y: H - 6, 'text-anchor': 'end' }, 'now'),
  ];
  // One sample is a dot at "now"; a line needs two.
  const marks = series.map((c, i) => (samples.length > 1
    ? s('polyline', {
      class: `line s${i}`,
      points: samples.map((p) => `${x(p.t).toFixed(1)},${y(p[c.key] ?? 0).toFixed(1)}`).join(' '),
    })
    : samples.map((p) => s('circle', { class: `dot s${i}`, cx: x(p.t), cy: y(p[c.key] ?? 0), r: 3 }))));
  const latest = samples.at(-1) ?? {};
  return h('figure', { class: 'card chart' },
    h('figcaption', {}, title),
    s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title }, grid, times, marks),
    h('ul', { class: 'legend' }, series.map((c, i) => h('li', {},
      h('i', { class: `swatch s${i}` }), `${c.label} `, h('b', {}, format(latest[c.key]))))));
}

/**
 * A group's partitions in one shape for either kind of queue: owners (consumer ids),
 * lag, unsettled deliveries, the consumers it drains to (or null), and whether
 * `x-partition` consumers take it outside the group.
 */
function partitionsOf(kind, group) {
  if (kind === 'partitioned') {
    return group.partition_states.map((p) => ({
      index: p.index,
      owners: p.owners,
      lag: p.lag,
      unacked: p.unacked,
      drainingTo: p.draining_to?.consumers ?? null,
      manual: p.manual,
    }));
  }
  // A stream's partition is read by its owner, and by no one while it drains to it.
  return group.partition_states.map((p) => ({
    index: p.index,
    owners: p.reading == null ? [] : [p.reading],
    lag: p.lag,
    unacked: p.unsettled,
    drainingTo: p.owner != null && p.reading !== p.owner ? [p.owner] : null,
    manual: false,
  }));
}

/**
 * One group of a `/groups` reply of `kind` (`partitioned` or `stream`) as a picture:
 * a cell per partition, its bar as tall as its lag against the largest, coloured by
 * its owner (`.m0` … `.m7` in the style sheet); a draining partition is hatched in
 * the colour of the member it goes to. Members are listed with their colours below.
 */
export function groupPicture(kind, group) {
  const parts = partitionsOf(kind, group);
  const members = group.members ?? [];
  const colour = new Map(members.map((m, i) => [m.consumer, i % 8]));
  const label = new Map(members.map((m, i) => [m.consumer, `#${i + 1}`]));
  const maxLag = Math.max(1, ...parts.map((p) => p.lag));
  const perRow = Math.min(parts.length, 8) || 1;
  const [CW, CH, GAP, WELL] = [96, 170, 12, 104];
  const width = perRow * (CW + GAP) - GAP;
  const height = Math.ceil(parts.length / perRow) * (CH + GAP) - GAP;
  const cells = parts.map((p, n) => {
    const x = (n % perRow) * (CW + GAP);
    const y = Math.floor(n / perRow) * (CH + GAP);
    const owner = p.owners[0] ?? p.drainingTo?.[0];
    const tint = colour.has(owner) ? `m${colour.get(owner)}` : 'unowned';
    const draining = p.drainingTo !== null;
    // The tallest bar leaves room above it for its figure.
    const bar = p.lag ? Math.max(2, ((WELL - 18) * p.lag) / maxLag) : 0;
    let who = 'no owner';
    if (draining) who = `→ ${p.drainingTo.map((c) => label.get(c) ?? c).join(' ')}`;
    else if (p.manual) who = 'manual';
    else if (p.owners.length) who = p.owners.map((c) => label.get(c) ?? c).join(' ');
    const state = draining ? ' draining' : (tint === 'unowned' ? ' free' : '');
    return s('g', { class: `cell${state}`, transform: `translate(${x} ${y})` },
      s('title', {}, `partition ${p.index}: lag ${p.lag}, unacked ${p.unacked}, ${who}`),
      s('text', { class: 'pname', x: CW / 2, y: 14, 'text-anchor': 'middle' }, `P${p.index}`),
      s('rect', { class: 'well', x: 0, y: 20, width: CW, height: WELL, rx: 4 }),
      s('rect', { class: `bar ${tint}`, x: 8, y: 20 + WELL - bar, width: CW - 16, height: bar }),
      s('text', { class: 'lag', x: CW / 2, y: 20 + WELL - bar - 5, 'text-anchor': 'middle' }, num(p.lag)),
      s('rect', { class: `owner ${tint}`, x: 0, y: WELL + 26, width: CW, height: 24, rx: 4 }),
      draining ? s('rect', { fill: 'url(#hatch)', x: 0, y: WELL + 26, width: CW, height: 24, rx: 4 }) : null,
      s('text', { class: 'who', x: CW / 2, y: WELL + 42, 'text-anchor': 'middle' }, who),
      s('text', { class: 'unacked', x: CW / 2, y: WELL + 64, 'text-anchor': 'middle' }, `${num(p.unacked)} unacked`));
  });
  const totalLag = parts.reduce((sum, p) => sum + p.lag, 0);
  const name = group.group === '' ? '(default group)' : group.group;
  return h('section', { class: 'card group' },
    h('h3', {}, `Group ${name}`, h('span', { class: 'muted' },
      ` · ${parts.length} partitions · ${members.length} members · lag ${num(totalLag)}`)),
    s('svg', {
      class: 'group-picture',
      viewBox: `0 0 ${width} ${height}`,
      width,
      role: 'img',
      'aria-label': `partitions of group ${name}`,
    }, s('defs', {}, s('pattern', {
      id: 'hatch', width: 6, height: 6, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)',
    }, s('rect', { class: 'hatch', width: 3, height: 6 }))), cells),
    h('p', { class: 'muted small' },
      'Bar: lag (ready messages), against the largest. Colour: the owning member. Hatched: draining to the member named.'),
    h('ul', { class: 'members' }, members.map((m) => h('li', {},
      h('i', { class: `swatch m${colour.get(m.consumer)}` }),
      h('b', {}, label.get(m.consumer)), ' ',
      m.details?.consumer_tag ?? `consumer ${m.consumer}`,
      h('span', { class: 'muted' }, ` ${m.details?.channel ?? ''}`),
      m.assigned ? h('span', { class: 'muted' }, ` · partitions ${m.assigned.join(', ') || 'none'}`) : null,
      m.standby ? h('span', { class: 'badge' }, 'standby') : null))));
}
