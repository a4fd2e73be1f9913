"""The page `html_report` fills in: styles and script inline, data in a JSON script element.

`__TITLE__` is replaced by the escaped title and `__DATA__` by the report's JSON (with "<" escaped).
The script builds every table and chart from that JSON; the URL fragment (`#target=0.8&rule=global`)
sets the slider when the page opens, and the slider writes it back.
"""

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<title>__TITLE__ - tfsparse report</title>
<style>
  :root { --ink: #1d2433; --muted: #5b6477; --line: #dde1e8; --now: #3a6fd8; --dense: #c9d6f2;
          --target: #e07b39; --target-light: #f6d7c2; --bg: #f7f8fa; }
  * { box-sizing: border-box; }
  body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
         margin: 0; background: var(--bg); }
  header, main { max-width: 1480px; margin: 0 auto; padding: 0 20px; }
  header { padding-top: 18px; }
  h1 { font-size: 22px; margin: 0 0 4px; }
  h2 { font-size: 17px; margin: 26px 0 8px; }
  .muted { color: var(--muted); }
  .cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
  .card { background: white; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 200px; }
  .card b { display: block; font-size: 18px; }
  .panel { background: white; border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
  .controls { display: flex; flex-wrap: wrap; align-items: center; gap: 16px; }
  .controls input[type=range] { width: 320px; accent-color: var(--target); }
  #target-value { font-weight: 700; font-size: 18px; color: var(--target); min-width: 56px; display: inline-block; }
  #rule-explain { margin: 8px 0 0; color: var(--muted); max-width: 1100px; }
  table { border-collapse: collapse; width: 100%; background: white; }
  th, td { padding: 4px 6px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: middle; white-space: nowrap; }
  th { position: sticky; top: 0; background: #eef1f6; cursor: pointer; user-select: none; font-weight: 600;
       white-space: normal; vertical-align: bottom; }
  th.sorted-asc::after { content: " \25B2"; font-size: 10px; }
  th.sorted-desc::after { content: " \25BC"; font-size: 10px; }
  td.num { font-variant-numeric: tabular-nums; }
  .cell { display: flex; align-items: center; gap: 6px; }
  .scroll { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; }
  .bar { position: relative; width: 56px; height: 12px; background: #f0f2f5; border-radius: 3px; flex: none; }
  .bar span { position: absolute; left: 0; top: 0; bottom: 0; border-radius: 3px; }
  .bar .total { background: var(--dense); }
  .bar .kept { background: var(--now); }
  .bar.target .total { background: var(--target-light); }
  .bar.target .kept { background: var(--target); }
  .layer-name { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; }
  .legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin-top: 6px; }
  .legend span { display: inline-flex; align-items: center; gap: 5px; font-size: 12px; }
  .legend i { width: 14px; height: 3px; display: inline-block; }
  svg text { font-size: 11px; fill: var(--muted); }
  .chip { display: inline-block; border: 1px solid var(--line); border-radius: 10px; padding: 0 8px; margin: 1px 2px; font-size: 12px; }
  footer { max-width: 1480px; margin: 24px auto; padding: 0 20px; color: var(--muted); font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1 id="title">__TITLE__</h1>
  <div class="muted" id="source"></div>
  <div class="cards" id="summary"></div>
</header>
<main>
  <section class="panel" id="target-panel">
    <div class="controls">
      <label for="target-slider">Overall target sparsity of the prunable weights</label>
      <input type="range" id="target-slider" min="0" max="0.99" step="0.01" value="0.5">
      <span id="target-value"></span>
      <label for="rule">Per-layer rule</label>
      <select id="rule"></select>
    </div>
    <div class="cards" id="target-summary"></div>
    <p id="rule-explain"></p>
  </section>
  <h2>Layers</h2>
  <p class="muted">Click a column header to sort. Blue bars: now (light: total, dark: non-zero);
  orange bars: at the target.</p>
  <div class="scroll"><table id="layers"><thead></thead><tbody></tbody></table></div>
  <section id="sensitivity" hidden>
    <h2>Sensitivity</h2>
    <p class="muted" id="sensitivity-text"></p>
    <svg id="sensitivity-chart" width="760" height="340" role="img"></svg>
    <div class="legend" id="sensitivity-legend"></div>
  </section>
  <section id="groups" hidden>
    <h2>Channel dependency groups</h2>
    <p class="muted">Layers whose channels are coupled (residual adds, concatenations, depthwise
    convolutions, normalization): a channel is removed from every member of its group at once.</p>
    <table id="groups-table"><thead><tr><th>Group</th><th>Channels</th><th>Prunable</th><th>Members</th></tr></thead><tbody></tbody></table>
  </section>
  <ul id="notes" class="muted"></ul>
</main>
<footer>Written by tfsparse. FLOPs are per example (batch 1); a multiply-add counts as 2. Sparsity
counts the prunable weights of a layer (kernels; biases and normalization weights are not pruned),
or all its weights when none is prunable.</footer>
<script type="application/json" id="tfsparse-data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("tfsparse-data").textContent);
const LAYERS = DATA.layers;
const HAS_FLOPS = DATA.flops_available;
const COLORS = ["#3a6fd8", "#e07b39", "#2e9e6a", "#c2417b", "#7a5bd1", "#b59a1b", "#1b9aa8", "#8c4b2f", "#5b6477", "#d14b4b"];
const RULES = {
  uniform: "Uniform: every prunable layer at the target sparsity (a layer already sparser keeps its zeros).",
  global: "Global magnitude: one threshold on |weight| across every prunable layer, placed so that the target share of all prunable weights falls below it; each layer's sparsity is the share of its weights below the threshold. Computed from each layer's table of " + DATA.quantiles + " magnitude quantiles embedded in this page, so a layer's value is within about one quantile step (1/" + DATA.quantiles + ") of exact.",
  scan: "Sensitivity: one tolerated loss of the scan's metric for every scanned layer; each layer gets the highest sparsity whose metric (interpolated linearly between scanned points) stays within that tolerance of its value at its lowest scanned sparsity, and the tolerance is the smallest that meets the target. Layers the scan does not cover keep their sparsity now.",
};
const RULE_NAMES = {uniform: "uniform", global: "global magnitude", scan: "sensitivity scan"};

const fmt = (n) => Math.round(n).toLocaleString("en-US");
const pct = (x) => (100 * x).toFixed(1) + "%";
const el = (tag, attrs, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
};
const svgEl = (tag, attrs) => {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
};

function sparsityNow(l) {
  if (l.prunable) return 1 - l.prunable_nonzero / l.prunable;
  return l.params ? 1 - l.nonzero / l.params : 0;
}

// Share of a layer's prunable weights with |w| <= t, from its quantile table.
function cdf(q, t) {
  const last = q.length - 1;
  if (t < q[0]) return 0;
  if (t >= q[last]) return 1;
  let lo = 0, hi = last;  // invariant: q[lo] <= t < q[hi]
  while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (q[mid] <= t) lo = mid; else hi = mid; }
  const span = q[hi] - q[lo];
  return (lo + (span > 0 ? (t - q[lo]) / span : 0)) / last;
}

const PRUNABLE = LAYERS.filter((l) => l.prunable > 0);
const PRUNABLE_TOTAL = PRUNABLE.reduce((a, l) => a + l.prunable, 0);
function overall(sparsityOf) {
  if (!PRUNABLE_TOTAL) return 0;
  return PRUNABLE.reduce((a, l) => a + l.prunable * sparsityOf(l), 0) / PRUNABLE_TOTAL;
}

// Smallest x in [lo, hi] with f(x) >= target (f non-decreasing), by bisection.
function bisect(f, lo, hi, target) {
  if (f(lo) >= target) return lo;
  for (let i = 0; i < 60; i++) { const mid = (lo + hi) / 2; if (f(mid) >= target) hi = mid; else lo = mid; }
  return hi;
}

function scanSparsity(curve, delta, higher) {
  const base = curve[0][1];
  const drop = (m) => (higher ? base - m : m - base);
  let s = curve[0][0];
  for (let i = 1; i < curve.length; i++) {
    const d0 = drop(curve[i - 1][1]), d1 = drop(curve[i][1]);
    if (d1 <= delta) { s = curve[i][0]; continue; }
    s = curve[i - 1][0] + ((curve[i][0] - curve[i - 1][0]) * Math.max(0, delta - d0)) / (d1 - d0);
    break;
  }
  return s;
}

// {layer name: sparsity at the target}, and the rule's own note.
function plan(target, rule) {
  const result = new Map();
  let note = "";
  if (rule === "global") {
    const at = (t) => (l) => (l.quantiles ? Math.max(sparsityNow(l), cdf(l.quantiles, t)) : sparsityNow(l));
    const top = Math.max(0, ...PRUNABLE.map((l) => (l.quantiles ? l.quantiles[l.quantiles.length - 1] : 0)));
    const t = bisect((x) => overall(at(x)), 0, top, target);
    for (const l of PRUNABLE) result.set(l.name, at(t)(l));
    note = "threshold |w| <= " + t.toPrecision(4);
  } else if (rule === "scan") {
    const scan = DATA.scan;
    const curves = scan.curves;
    const at = (delta) => (l) => (curves[l.name]
      ? Math.max(sparsityNow(l), scanSparsity(curves[l.name], delta, scan.higher_is_better))
      : sparsityNow(l));
    let top = 0;
    for (const curve of Object.values(curves)) {
      for (const [, m] of curve) top = Math.max(top, scan.higher_is_better ? curve[0][1] - m : m - curve[0][1]);
    }
    const delta = bisect((x) => overall(at(x)), 0, top, target);
    for (const l of PRUNABLE) result.set(l.name, at(delta)(l));
    note = "tolerated " + scan.metric + " " + (scan.higher_is_better ? "loss" : "increase") + ": " + delta.toPrecision(3);
  } else {
    for (const l of PRUNABLE) result.set(l.name, Math.max(sparsityNow(l), target));
  }
  return {sparsities: result, note};
}

function atTarget(l, s) {
  const kept = l.prunable ? l.prunable * (1 - s) : 0;
  const nonzero = l.nonzero - l.prunable_nonzero + (l.prunable ? kept : l.prunable_nonzero);
  let flops = null;
  if (HAS_FLOPS) flops = l.flops_fixed + (l.flops - l.flops_fixed) * (l.prunable ? 1 - s : 1);
  return {sparsity: s, nonzero, flops};
}

const GROUPS_OF = new Map();
for (const g of DATA.groups || []) {
  for (const m of g.members) {
    if (!GROUPS_OF.has(m.layer)) GROUPS_OF.set(m.layer, []);
    if (!GROUPS_OF.get(m.layer).includes(g.index)) GROUPS_OF.get(m.layer).push(g.index);
  }
}

const COLUMNS = [
  {key: "name", label: "Layer", text: true},
  {key: "type", label: DATA.kind === "tflite" ? "Tensor" : "Type", text: true},
  {key: "sparsity", label: "Sparsity now"},
  {key: "params", label: "Parameters (non-zero / total)"},
  ...(HAS_FLOPS ? [{key: "flops", label: "FLOPs now (sparse / dense)"}] : []),
  {key: "target_sparsity", label: "Sparsity at target"},
  {key: "target_nonzero", label: "Non-zero parameters at target"},
  ...(HAS_FLOPS ? [{key: "target_flops", label: "FLOPs at target"}] : []),
  ...(DATA.groups ? [{key: "groups", label: "Groups", text: true}] : []),
];

const state = {
  target: 0.5,
  rule: DATA.scan ? "scan" : DATA.rules.includes("global") ? "global" : "uniform",
  sort: null,
  descending: true,
};
const maxParams = Math.max(1, ...LAYERS.map((l) => l.params));
const maxFlops = Math.max(1, ...LAYERS.map((l) => l.flops || 0));

function bar(total, kept, scale, target) {
  const node = el("div", {class: "bar" + (target ? " target" : "")});
  node.append(el("span", {class: "total", style: `width:${(100 * total) / scale}%`}));
  node.append(el("span", {class: "kept", style: `width:${(100 * kept) / scale}%`}));
  return node;
}
function cell(key, value, barNode, text) {
  const td = el("td", {"data-key": key, "data-value": String(value), class: "num"});
  const wrap = el("div", {class: "cell"});
  if (barNode) wrap.append(barNode);
  wrap.append(text);
  td.append(wrap);
  return td;
}

function rows(p) {
  return LAYERS.map((l) => {
    const s = p.sparsities.has(l.name) ? p.sparsities.get(l.name) : sparsityNow(l);
    return {layer: l, now: sparsityNow(l), target: atTarget(l, s)};
  });
}

function sortValue(r, key) {
  switch (key) {
    case "name": return r.layer.name;
    case "type": return r.layer.type;
    case "sparsity": return r.now;
    case "params": return r.layer.params;
    case "flops": return r.layer.flops || 0;
    case "target_sparsity": return r.target.sparsity;
    case "target_nonzero": return r.target.nonzero;
    case "target_flops": return r.target.flops || 0;
    case "groups": return (GROUPS_OF.get(r.layer.name) || []).join(",");
  }
  return 0;
}

function renderTable(all) {
  const thead = document.querySelector("#layers thead");
  thead.replaceChildren(el("tr", {}, ...COLUMNS.map((c) => {
    const th = el("th", {"data-key": c.key}, c.label);
    if (state.sort === c.key) th.className = state.descending ? "sorted-desc" : "sorted-asc";
    th.addEventListener("click", () => {
      state.descending = state.sort === c.key ? !state.descending : !c.text;
      state.sort = c.key;
      update();
    });
    return th;
  })));
  let ordered = all.slice();
  if (state.sort) {
    ordered.sort((a, b) => {
      const x = sortValue(a, state.sort), y = sortValue(b, state.sort);
      const order = typeof x === "string" ? x.localeCompare(y) : x - y;
      return state.descending ? -order : order;
    });
  }
  const tbody = document.querySelector("#layers tbody");
  tbody.replaceChildren(...ordered.map((r) => {
    const l = r.layer, t = r.target;
    const tr = el("tr", {"data-layer": l.name});
    tr.append(el("td", {"data-key": "name", class: "layer-name"}, l.name));
    tr.append(el("td", {"data-key": "type"}, l.type));
    tr.append(cell("sparsity", r.now, bar(1, r.now, 1, false), pct(r.now)));
    tr.append(cell("params", l.nonzero, bar(l.params, l.nonzero, maxParams, false), `${fmt(l.nonzero)} / ${fmt(l.params)}`));
    if (HAS_FLOPS) tr.append(cell("flops", l.flops_sparse, bar(l.flops, l.flops_sparse, maxFlops, false), `${fmt(l.flops_sparse)} / ${fmt(l.flops)}`));
    const touched = l.prunable > 0;
    tr.append(cell("target_sparsity", t.sparsity, bar(1, t.sparsity, 1, true), touched ? pct(t.sparsity) : "not pruned"));
    tr.append(cell("target_nonzero", t.nonzero, bar(l.params, t.nonzero, maxParams, true), fmt(t.nonzero)));
    if (HAS_FLOPS) tr.append(cell("target_flops", t.flops, bar(l.flops, t.flops, maxFlops, true), fmt(t.flops)));
    if (DATA.groups) tr.append(el("td", {"data-key": "groups"}, (GROUPS_OF.get(l.name) || []).join(", ")));
    return tr;
  }));
}

function card(id, label, value, detail) {
  const node = el("div", {class: "card", id});
  node.append(el("span", {class: "muted"}, label), el("b", {"data-role": "value"}, value));
  if (detail) node.append(el("span", {class: "muted"}, detail));
  return node;
}

function renderSummary() {
  const params = LAYERS.reduce((a, l) => a + l.params, 0);
  const nonzero = LAYERS.reduce((a, l) => a + l.nonzero, 0);
  const prunableNonzero = PRUNABLE.reduce((a, l) => a + l.prunable_nonzero, 0);
  const cards = [
    card("summary-params", "Parameters (non-zero / total)", `${fmt(nonzero)} / ${fmt(params)}`),
    card("summary-sparsity", "Sparsity of the prunable weights", PRUNABLE_TOTAL ? pct(1 - prunableNonzero / PRUNABLE_TOTAL) : "none prunable",
         `${fmt(PRUNABLE_TOTAL)} prunable weights in ${PRUNABLE.length} layers`),
  ];
  if (HAS_FLOPS) {
    const dense = LAYERS.reduce((a, l) => a + l.flops, 0);
    const sparse = LAYERS.reduce((a, l) => a + l.flops_sparse, 0);
    cards.push(card("summary-flops", "FLOPs per example (sparse / dense)", `${fmt(sparse)} / ${fmt(dense)}`));
  }
  document.getElementById("summary").replaceChildren(...cards);
  const what = DATA.kind === "tflite" ? "weight tensors" : "layers";
  document.getElementById("source").textContent =
    (DATA.title !== DATA.source ? DATA.source + " \u00b7 " : "") + LAYERS.length + " " + what;
}

function renderTargetSummary(all, p) {
  const params = LAYERS.reduce((a, l) => a + l.params, 0);
  const nonzero = all.reduce((a, r) => a + r.target.nonzero, 0);
  const reached = overall((l) => (p.sparsities.has(l.name) ? p.sparsities.get(l.name) : sparsityNow(l)));
  const cards = [
    card("target-reached", "Prunable weights' sparsity reached", pct(reached),
         Math.abs(reached - state.target) > 0.005 && reached < state.target ? "the target is out of this rule's reach" : p.note),
    card("target-params", "Non-zero parameters at target", fmt(nonzero), `of ${fmt(params)} (${(params / Math.max(nonzero, 1)).toFixed(2)}x fewer)`),
  ];
  if (HAS_FLOPS) {
    const dense = LAYERS.reduce((a, l) => a + l.flops, 0);
    const flops = all.reduce((a, r) => a + r.target.flops, 0);
    cards.push(card("target-flops", "FLOPs at target (non-zero weights)", fmt(flops), `of ${fmt(dense)} dense (${(dense / Math.max(flops, 1)).toFixed(2)}x fewer)`));
  }
  document.getElementById("target-summary").replaceChildren(...cards);
  document.getElementById("target-value").textContent = pct(state.target);
  document.getElementById("rule-explain").textContent = RULES[state.rule];
}

function renderSensitivity(p) {
  if (!DATA.scan) return;
  const scan = DATA.scan;
  document.getElementById("sensitivity").hidden = false;
  document.getElementById("sensitivity-text").textContent =
    `${scan.metric} (${scan.higher_is_better ? "higher" : "lower"} is better) against each layer's sparsity, the other layers left as they are. Dots: the sparsity the slider gives each layer.`;
  const svg = document.getElementById("sensitivity-chart");
  const W = 760, H = 340, left = 60, right = 20, top = 14, bottom = 40;
  const entries = Object.entries(scan.curves);
  const values = entries.flatMap(([, c]) => c.map(([, m]) => m));
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi - lo < 1e-12) { lo -= 0.5; hi += 0.5; }
  const pad = (hi - lo) * 0.05; lo -= pad; hi += pad;
  const x = (s) => left + s * (W - left - right);
  const y = (m) => top + (1 - (m - lo) / (hi - lo)) * (H - top - bottom);
  svg.replaceChildren();
  svg.append(svgEl("rect", {x: left, y: top, width: W - left - right, height: H - top - bottom, fill: "white", stroke: "#dde1e8"}));
  for (let i = 0; i <= 10; i += 2) {
    const s = i / 10;
    svg.append(svgEl("line", {x1: x(s), x2: x(s), y1: top, y2: H - bottom, stroke: "#eef1f6"}));
    const label = svgEl("text", {x: x(s), y: H - bottom + 15, "text-anchor": "middle"}); label.textContent = pct(s).replace(".0", ""); svg.append(label);
  }
  for (let i = 0; i <= 4; i++) {
    const m = lo + ((hi - lo) * i) / 4;
    svg.append(svgEl("line", {x1: left, x2: W - right, y1: y(m), y2: y(m), stroke: "#eef1f6"}));
    const label = svgEl("text", {x: left - 6, y: y(m) + 4, "text-anchor": "end"}); label.textContent = m.toPrecision(3); svg.append(label);
  }
  const xl = svgEl("text", {x: (left + W - right) / 2, y: H - 6, "text-anchor": "middle"}); xl.textContent = "sparsity of the layer"; svg.append(xl);
  const yl = svgEl("text", {x: 14, y: (top + H - bottom) / 2, "text-anchor": "middle", transform: `rotate(-90 14 ${(top + H - bottom) / 2})`}); yl.textContent = scan.metric; svg.append(yl);
  const legend = document.getElementById("sensitivity-legend");
  legend.replaceChildren();
  entries.forEach(([name, curve], i) => {
    const color = COLORS[i % COLORS.length];
    const dash = i >= COLORS.length ? "5 3" : "";
    svg.append(svgEl("polyline", {points: curve.map(([s, m]) => `${x(s)},${y(m)}`).join(" "), fill: "none", stroke: color, "stroke-width": 2, "stroke-dasharray": dash, "data-layer": name, class: "curve"}));
    if (state.rule === "scan" && p.sparsities.has(name)) {
      const s = p.sparsities.get(name);
      let m = curve[curve.length - 1][1];
      for (let j = 1; j < curve.length; j++) {
        if (s <= curve[j][0]) { const f = (s - curve[j - 1][0]) / Math.max(curve[j][0] - curve[j - 1][0], 1e-12); m = curve[j - 1][1] + f * (curve[j][1] - curve[j - 1][1]); break; }
      }
      svg.append(svgEl("circle", {cx: x(s), cy: y(m), r: 4, fill: color, class: "chosen", "data-layer": name}));
    }
    const item = el("span", {}, el("i", {style: `background:${color}`}), name);
    legend.append(item);
  });
}

function renderGroups() {
  if (!DATA.groups) return;
  document.getElementById("groups").hidden = false;
  const tbody = document.querySelector("#groups-table tbody");
  tbody.replaceChildren(...DATA.groups.map((g) => {
    const members = el("td", {});
    for (const m of g.members) members.append(el("span", {class: "chip"}, `${m.layer} (${m.kind})`));
    return el("tr", {"data-group": String(g.index)}, el("td", {}, String(g.index)), el("td", {class: "num"}, fmt(g.channels)),
              el("td", {}, g.prunable ? "yes" : "no"), members);
  }));
}

function update() {
  const p = plan(state.target, state.rule);
  const all = rows(p);
  renderTable(all);
  renderTargetSummary(all, p);
  renderSensitivity(p);
  const params = new URLSearchParams({target: state.target.toFixed(2), rule: state.rule});
  if (state.sort) { params.set("sort", state.sort); params.set("order", state.descending ? "desc" : "asc"); }
  if (location.hash.slice(1) !== params.toString()) history.replaceState(null, "", "#" + params.toString());
}

function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const target = parseFloat(params.get("target"));
  if (Number.isFinite(target)) state.target = Math.min(0.99, Math.max(0, target));
  const rule = params.get("rule");
  if (rule && DATA.rules.concat(DATA.scan ? ["scan"] : []).includes(rule)) state.rule = rule;
  const sort = params.get("sort");
  if (sort && COLUMNS.some((c) => c.key === sort)) { state.sort = sort; state.descending = params.get("order") !== "asc"; }
  document.getElementById("target-slider").value = String(state.target);
  document.getElementById("rule").value = state.rule;
}

const select = document.getElementById("rule");
for (const rule of DATA.rules.concat(DATA.scan ? ["scan"] : [])) select.append(el("option", {value: rule}, RULE_NAMES[rule]));
document.getElementById("target-slider").addEventListener("input", (event) => { state.target = parseFloat(event.target.value); update(); });
select.addEventListener("change", (event) => { state.rule = event.target.value; update(); });
window.addEventListener("hashchange", () => { readFragment(); update(); });
document.getElementById("notes").replaceChildren(...DATA.notes.map((n) => el("li", {}, n)));
renderSummary();
renderGroups();
readFragment();
update();
document.body.setAttribute("data-ready", "1");
</script>
</body>
</html>
"""
