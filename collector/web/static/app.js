// The web view: one script for every page. It reads the address, fetches the JSON API and
// builds the page with DOM calls only. Agent content is untrusted: every value goes in through
// textContent or an attribute, never innerHTML, and links are built from ids we encode.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const main = () => document.getElementById("main");

// --- DOM helpers ----------------------------------------------------------------------------

function build(make, tag, attrs, children) {
  const node = make(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const h = (tag, attrs, ...children) => build((t) => document.createElement(t), tag, attrs, children);
const s = (tag, attrs, ...children) =>
  build((t) => document.createElementNS(SVG_NS, t), tag, attrs, children);

function show(...children) {
  main().replaceChildren(...children.flat(Infinity).filter((c) => c !== "" && c != null));
}

function link(path, text, query) {
  const search = query ? "?" + new URLSearchParams(query).toString() : "";
  return h("a", { href: path + search }, text);
}

const runPath = (run) => `/runs/${encodeURIComponent(run)}`;
const eventPath = (run, id) => `${runPath(run)}/events/${encodeURIComponent(id)}`;

async function api(path, query) {
  const search = query ? "?" + new URLSearchParams(query).toString() : "";
  const response = await fetch(`/api${path}${search}`, { headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

// --- formatting -----------------------------------------------------------------------------

function seconds(value) {
  if (value === null || value === undefined) return "–";
  return value < 1 ? `${Math.round(value * 1000)} ms` : `${value.toFixed(1)} s`;
}
const millis = (value) => (value === null || value === undefined ? "–" : seconds(value / 1000));
const cost = (value) => `$${(value || 0).toFixed(4)}`;
const when = (value) => (value ? new Date(value).toLocaleString() : "–");
const clip = (text, width) => {
  const flat = String(text ?? "").replace(/\s+/g, " ").trim();
  return flat.length <= width ? flat : flat.slice(0, width - 1) + "…";
};
const badge = (status) => h("span", { class: `status status-${status || "unknown"}` }, status || "?");
const kind = (e) => e.event_type + (e.event_subtype ? `/${e.event_subtype}` : "");

// --- runs -----------------------------------------------------------------------------------

const FILTERS = ["status", "q", "user", "since", "until"];

async function runsPage() {
  const params = new URLSearchParams(location.search);
  const query = { limit: params.get("limit") || "25" };
  for (const key of [...FILTERS, "before"]) if (params.get(key)) query[key] = params.get(key);
  const form = h("form", { class: "filters", method: "get", action: "/" },
    h("label", {}, "status", h("select", { name: "status" },
      ["", "running", "completed", "failed"].map((v) =>
        h("option", { value: v, selected: params.get("status") === v }, v || "any")))),
    h("label", {}, "task contains", h("input", { name: "q", value: params.get("q") || "" })),
    h("label", {}, "user", h("input", { name: "user", value: params.get("user") || "" })),
    h("label", {}, "from", h("input", { name: "since", type: "date", value: params.get("since") || "" })),
    h("label", {}, "to", h("input", { name: "until", type: "date", value: params.get("until") || "" })),
    h("button", { type: "submit" }, "Filter"));
  const body = h("tbody");
  const pager = h("div", { class: "pager" });
  show(h("h1", {}, "Runs"), form,
    h("table", { id: "runs" }, h("thead", {}, h("tr", {},
      ["Status", "Started", "Duration", "Events", "Tokens", "Cost", "Task", "User"].map((t, i) =>
        h("th", { class: i >= 2 && i <= 5 ? "num" : null }, t)))), body), pager);

  async function refresh() {
    const runs = await api("/runs", query);
    body.replaceChildren(...runs.map((run) => h("tr", { "data-run": run.id, "data-status": run.status },
      h("td", {}, badge(run.status)), h("td", {}, when(run.started_at)),
      h("td", { class: "num" }, seconds(run.duration_s)), h("td", { class: "num" }, run.events),
      h("td", { class: "num" }, run.tokens), h("td", { class: "num" }, cost(run.cost_usd)),
      h("td", { class: "task" }, link(runPath(run.id), clip(run.task || run.id, 120))),
      h("td", {}, run.user || ""))));
    if (!runs.length) body.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No runs.")));
    const older = Object.fromEntries(params);
    const last = runs[runs.length - 1];
    if (last) older.before = `${last.started_at},${last.id}`;
    pager.replaceChildren(
      params.get("before") ? link("/", "Newest", Object.fromEntries(FILTERS.filter((k) => params.get(k)).map((k) => [k, params.get(k)]))) : "",
      runs.length === Number(query.limit) ? link("/", "Older →", older) : "");
    // Running runs update live: look again while any run on the page is still going.
    if (runs.some((run) => run.status === "running")) setTimeout(refresh, 2000);
  }
  await refresh();
}

// --- run: the DAG ---------------------------------------------------------------------------

const BOX_W = 210, LANE_GAP = 56, ROW_GAP = 42, CHIP_W = 93, CHIP_H = 22;

function boxHeight(node) {
  const chips = node.children.length;
  return 66 + (chips ? 6 + Math.ceil(chips / 2) * (CHIP_H + 4) : 0);
}

// Rows and lanes from the stored edges alone (never from timing): a node goes below the
// nodes it depends on; a node reached by a conditional edge (a redo's branch point), and the
// retry after a branch point, go beside their source, so a failed attempt and its retry share
// a row.
function layout(tree) {
  const nodes = tree.nodes;
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const incoming = new Map(nodes.map((n) => [n.id, []]));
  const pending = new Map(nodes.map((n) => [n.id, 0]));
  const edges = tree.edges.filter((e) => byId.has(e.from) && byId.has(e.to) && e.from !== e.to);
  for (const e of edges) { incoming.get(e.to).push(e); pending.set(e.to, pending.get(e.to) + 1); }
  const order = [];
  const ready = nodes.filter((n) => pending.get(n.id) === 0);
  while (ready.length) {
    ready.sort((a, b) => a.order_index - b.order_index);
    const node = ready.shift();
    order.push(node);
    for (const e of edges.filter((x) => x.from === node.id)) {
      pending.set(e.to, pending.get(e.to) - 1);
      if (pending.get(e.to) === 0) ready.push(byId.get(e.to));
    }
  }
  for (const n of nodes) if (!order.includes(n)) order.push(n); // a cycle: stored order
  const place = new Map(), taken = new Set();
  let nextRow = 0;
  for (const node of order) {
    const ins = incoming.get(node.id).filter((e) => place.has(e.from));
    const beside = ins.find((e) => e.dependency_type !== "sequential") ||
      ins.find((e) => byId.get(e.from).node_type === "branch_point");
    let row, lane;
    if (beside) { row = place.get(beside.from).row; lane = place.get(beside.from).lane + 1; }
    else { row = ins.length ? Math.max(...ins.map((e) => place.get(e.from).row)) + 1 : nextRow; lane = 0; }
    while (taken.has(`${row}:${lane}`)) lane += 1;
    taken.add(`${row}:${lane}`);
    place.set(node.id, { row, lane });
    nextRow = Math.max(nextRow, row + 1);
  }
  const heights = [];
  for (const node of nodes) {
    const { row } = place.get(node.id);
    heights[row] = Math.max(heights[row] || 0, boxHeight(node));
  }
  const tops = [];
  let y = 16;
  for (let row = 0; row < heights.length; row++) { tops[row] = y; y += (heights[row] || 0) + ROW_GAP; }
  const boxes = new Map();
  let width = 0;
  for (const node of nodes) {
    const { row, lane } = place.get(node.id);
    const box = { x: 16 + lane * (BOX_W + LANE_GAP), y: tops[row], w: BOX_W, h: boxHeight(node), row };
    boxes.set(node.id, box);
    width = Math.max(width, box.x + BOX_W + 16);
  }
  return { boxes, edges, width, height: y };
}

function edgePath(a, b) {
  if (a.row === b.row) {
    const y = a.y + 22;
    return [`M${a.x + a.w},${y} L${b.x - 4},${y}`, (a.x + a.w + b.x) / 2, y - 7];
  }
  const x1 = a.x + a.w / 2, y1 = a.y + a.h, x2 = b.x + b.w / 2, y2 = b.y - 4;
  return [`M${x1},${y1} C${x1},${y1 + 24} ${x2},${y2 - 24} ${x2},${y2}`, (x1 + x2) / 2 + 6, (y1 + y2) / 2];
}

function nodeFigures(node) {
  const t = node.totals;
  const parts = [seconds(node.duration_s), `${t.events} ev`];
  if (t.tokens) parts.push(`${t.tokens} tok`);
  if (t.cost_usd) parts.push(cost(t.cost_usd));
  return parts.join(" · ");
}

function drawDag(tree, selected, onSelect) {
  const { boxes, edges, width, height } = layout(tree);
  const svg = s("svg", { class: "dag", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "the run's DAG" },
    s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
      markerHeight: 7, orient: "auto-start-reverse" }, s("path", { d: "M0,0 L10,5 L0,10 z" }))));
  for (const e of edges) {
    const [d, lx, ly] = edgePath(boxes.get(e.from), boxes.get(e.to));
    svg.append(s("path", { class: `edge ${e.dependency_type}`, d, "marker-end": "url(#arrow)",
      "data-from": e.from, "data-to": e.to }));
    if (e.dependency_type !== "sequential") {
      svg.append(s("text", { class: "condition", x: lx, y: ly, "text-anchor": "middle" },
        s("title", {}, `${e.dependency_type} edge: ${e.condition || ""}`), clip(e.condition || e.dependency_type, 12)));
    }
  }
  for (const node of tree.nodes) {
    const b = boxes.get(node.id);
    const hypothesis = node.meta && node.meta.hypothesis;
    const group = s("g", { class: `node ${node.status} ${node.node_type}${node.id === selected ? " selected" : ""}`,
      transform: `translate(${b.x},${b.y})`, "data-id": node.id, "data-name": node.name || "",
      "data-status": node.status, "data-type": node.node_type, tabindex: 0,
      onclick: (ev) => { ev.stopPropagation(); onSelect(node.id); } },
      s("title", {}, `${node.name || node.id} (${node.node_type}, ${node.status})`),
      s("rect", { class: "box", width: b.w, height: b.h }),
      s("text", { class: "title", x: 10, y: 18 }, clip(node.name || node.node_type, 26)),
      s("text", { class: "small", x: 10, y: 35 }, `${node.node_type} · ${node.status}`),
      s("text", { class: "small", x: 10, y: 52 },
        node.node_type === "branch_point" && hypothesis ? clip(hypothesis, 32) : nodeFigures(node)));
    node.children.forEach((child, i) => {
      const x = 8 + (i % 2) * (CHIP_W + 8), y = 66 + Math.floor(i / 2) * (CHIP_H + 4);
      group.append(s("g", { class: `agent ${child.status}`, transform: `translate(${x},${y})`,
        "data-id": child.id, "data-name": child.name || "", "data-status": child.status,
        onclick: (ev) => { ev.stopPropagation(); onSelect(child.id); } },
        s("title", {}, `${child.name} (${child.status}): ${nodeFigures(child)}`),
        s("rect", { width: CHIP_W, height: CHIP_H }),
        s("text", { x: 6, y: 15 }, clip(child.name || child.agent || "agent", 13))));
    });
    svg.append(group);
  }
  return svg;
}

function allNodes(tree) {
  return tree.nodes.flatMap((n) => [n, ...n.children]);
}

function retryOf(tree, node) {
  // The retry's meta names the failed attempt it redoes; a branch point names its source.
  const nodes = allNodes(tree);
  return nodes.find((n) => n.meta && n.meta.retry_of === node.id && n.node_type !== "branch_point") ||
    (node.meta && node.meta.retry_of ? nodes.find((n) => n.id === node.meta.retry_of) : null);
}

async function runPage(run) {
  let tree = await api(`/runs/${encodeURIComponent(run)}`);
  let selected = new URLSearchParams(location.search).get("node");
  const head = h("div");
  const graph = h("div", { class: "panel", id: "graph" });
  const side = h("div", { class: "panel", id: "node-panel" }, h("p", { class: "muted" }, "Click a node to see its events."));
  show(head, h("div", { class: "layout" }, graph, side));

  function render() {
    const r = tree.run;
    document.title = `run ${clip(r.task || r.id, 40)}`;
    head.replaceChildren(
      h("h1", {}, r.task || r.id),
      h("div", { class: "summary" }, badge(r.status), h("span", { id: "run-status", "data-status": r.status }, r.status),
        h("span", {}, `started ${when(r.started_at)}`), h("span", {}, seconds(r.duration_s)),
        h("span", {}, `${tree.totals.events} events`), h("span", {}, `${tree.totals.tokens} tokens`),
        h("span", {}, cost(tree.totals.cost_usd)), r.user ? h("span", {}, `user ${r.user}`) : "",
        link(`${runPath(r.id)}/timeline`, "Timeline"), link("/costs", "Costs", { run: r.id })),
      r.error ? h("div", { class: "errorbox" }, r.error) : "");
    graph.replaceChildren(tree.nodes.length ? drawDag(tree, selected, select)
      : h("p", { class: "muted" }, "This run has no workflow nodes; its events are in the timeline."));
  }

  async function select(id) {
    selected = id;
    history.replaceState(null, "", `${runPath(run)}?node=${encodeURIComponent(id)}`);
    render();
    const node = allNodes(tree).find((n) => n.id === id);
    if (!node) return;
    const list = h("ul", { class: "events-list", id: "node-events" });
    const more = h("div");
    const retry = retryOf(tree, node);
    const [failed, redo] = node.status === "failed" || !retry ? [node, retry] : [retry, node];
    side.replaceChildren(
      h("h2", {}, node.name || node.id, " ", badge(node.status)),
      h("div", { class: "muted" }, `${node.node_type}${node.agent ? " · agent " + node.agent : ""} · ${nodeFigures(node)}`),
      node.error ? h("div", { class: "errorbox" }, node.error) : "",
      node.meta && node.meta.hypothesis ? h("p", {}, h("b", {}, "Hypothesis: "), node.meta.hypothesis) : "",
      retry ? h("p", {}, link("/compare", `Compare ${failed.name} with ${redo.name}`,
        { a: `${run}:${failed.id}`, b: `${run}:${redo.id}` })) : "",
      h("p", {}, h("button", { type: "button", onclick: () => pick(node) }, "Pick for comparison"),
        " ", pickedLink(node)),
      h("h2", {}, "Events"), list, more);
    await loadEvents(list, more, { node: id, limit: 100 });
  }

  async function loadEvents(list, more, query) {
    const page = await api(`/runs/${encodeURIComponent(run)}/events`, query);
    list.append(...page.events.map((e) => h("li", { class: e.status === "failed" || e.error ? "failed" : null },
      link(eventPath(run, e.id), `#${e.execution_order} ${kind(e)}`), " ",
      h("span", { class: "muted" }, e.agent_name || ""), " ", badge(e.status), " ",
      h("span", {}, clip(e.error || preview(e), 90)))));
    more.replaceChildren(page.next_after === null ? "" :
      h("button", { type: "button", onclick: () => loadEvents(list, more, { ...query, after: page.next_after }) }, "More"));
  }

  render();
  if (selected) select(selected);
  if (tree.run.status === "running") {
    // Live: the server sends the tree again whenever it changes, until the run ends.
    const source = new EventSource(`/api/runs/${encodeURIComponent(run)}/stream`);
    source.onmessage = (message) => { tree = JSON.parse(message.data); render(); };
    source.addEventListener("end", () => source.close());
  }
}

function pick(node) {
  sessionStorage.setItem("picked", JSON.stringify({ ref: `${location.pathname.split("/")[2]}:${node.id}`, name: node.name }));
  location.reload();
}

function pickedLink(node) {
  const picked = JSON.parse(sessionStorage.getItem("picked") || "null");
  const here = `${location.pathname.split("/")[2]}:${node.id}`;
  if (!picked || picked.ref === here) return "";
  return link("/compare", `Compare with ${picked.name || picked.ref}`, { a: picked.ref, b: here });
}

function preview(e) {
  const value = e.inputs && Object.keys(e.inputs).length ? e.inputs : e.outputs;
  if (!value) return "";
  const text = value.content ?? value.code;
  if (text === undefined || text === null) return JSON.stringify(value);
  return typeof text === "string" ? text : JSON.stringify(text);
}

// --- event ----------------------------------------------------------------------------------

const TRUNCATION = /…\[truncated (\d+) chars\]$/;

function jsonView(value, depth = 0) {
  if (value === null || value === undefined) return h("span", { class: "json-null" }, "null");
  if (typeof value === "string") {
    const cut = value.match(TRUNCATION);
    return h("span", {}, h("span", { class: "json-string" }, JSON.stringify(value.replace(TRUNCATION, ""))),
      cut ? h("span", { class: "truncated" }, ` truncated: ${cut[1]} more chars`) : "");
  }
  if (typeof value !== "object") return h("span", { class: "json-number" }, String(value));
  const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
  const label = Array.isArray(value) ? `[${entries.length} items]` : `{${entries.length} keys}`;
  return h("details", { class: "json", open: depth < 2 }, h("summary", {}, label),
    entries.map(([k, v]) => h("div", {}, h("span", { class: "json-key" }, `${k}: `), jsonView(v, depth + 1))));
}

function codeOf(e) {
  const inputs = e.inputs || {}, outputs = e.outputs || {};
  if (typeof inputs.code !== "string") return null;
  const exit = outputs.exit_code ?? outputs.exitcode ?? e.meta?.exit_code;
  const output = outputs.output ?? outputs.logs ?? outputs.result;
  return [h("h2", {}, `Code (${inputs.language || "?"})`), h("pre", { class: "code" }, inputs.code),
    h("h2", {}, "Output", exit === undefined ? "" : ` · exit code ${exit}`),
    h("pre", { class: exit ? "errorbox" : null }, output === null || output === undefined ? "(none recorded)" : String(output))];
}

async function eventPage(run, id) {
  const e = await api(`/runs/${encodeURIComponent(run)}/events/${encodeURIComponent(id)}`);
  const truncated = Object.entries((e.meta && e.meta._truncated) || {});
  show(h("h1", {}, kind(e), " ", badge(e.status)),
    h("p", {}, link(runPath(run), "← the run", e.node_id ? { node: e.node_id } : null)),
    h("table", {}, h("tbody", {},
      [["agent", e.agent_name], ["node", e.node], ["order", e.execution_order], ["time", when(e.timestamp)],
        ["duration", millis(e.duration_ms)], ["depth", e.depth]].map(([k, v]) =>
        h("tr", {}, h("th", {}, k), h("td", {}, v ?? "–"))),
      e.parent_event_id ? h("tr", {}, h("th", {}, "inside"), h("td", {}, link(eventPath(run, e.parent_event_id), e.parent_event_id))) : "")),
    e.error ? h("div", { class: "errorbox", id: "event-error" }, e.error) : "",
    truncated.length ? h("p", {}, truncated.map(([path, size]) =>
      h("span", { class: "truncated" }, `${path} truncated (original ${size} chars) `))) : "",
    codeOf(e) || "",
    ["inputs", "outputs", "meta"].map((part) => [h("h2", {}, part), jsonView(e[part])]));
}

// --- compare --------------------------------------------------------------------------------

async function compareSide(ref) {
  const [run, nodeId] = String(ref || "").split(":");
  if (!run) throw new Error("say what to compare: /compare?a=RUN[:NODE]&b=RUN[:NODE]");
  const tree = await api(`/runs/${encodeURIComponent(run)}`);
  const node = nodeId ? allNodes(tree).find((n) => n.id === nodeId) : null;
  if (nodeId && !node) throw new Error(`no node ${nodeId} in run ${run}`);
  const page = await api(`/runs/${encodeURIComponent(run)}/events`, { limit: 300, ...(node ? { node: node.id } : {}) });
  const subject = node || { ...tree.run, name: tree.run.task, node_type: "run", totals: tree.totals, meta: tree.run.meta };
  const shown = page.events.filter((e) => ["message", "tool_call", "code_exec", "llm_call", "callback", "human_input", "handoff"].includes(e.event_type) || e.error);
  return h("div", { class: "side" },
    h("h2", {}, link(runPath(run), subject.name || run, node ? { node: node.id } : null), " ", badge(subject.status)),
    h("table", {}, h("tbody", {}, [["type", subject.node_type], ["duration", seconds(subject.duration_s)],
      ["events", subject.totals.events], ["tokens", subject.totals.tokens], ["cost", cost(subject.totals.cost_usd)],
      ["hypothesis", (subject.meta && subject.meta.hypothesis) || "–"]].map(([k, v]) =>
      h("tr", {}, h("th", {}, k), h("td", {}, v))))),
    subject.error ? h("div", { class: "errorbox" }, subject.error) : "",
    h("h2", {}, "Messages, tool calls and code"),
    h("ul", { class: "events-list" }, shown.map((e) => h("li", { class: e.error ? "failed" : null },
      link(eventPath(run, e.id), `#${e.execution_order} ${kind(e)}`), " ", h("b", {}, e.agent_name || ""),
      e.inputs && typeof e.inputs.code === "string" ? h("pre", { class: "code" }, e.inputs.code)
        : preview(e) ? h("pre", {}, String(preview(e)).slice(0, 2000)) : "",
      e.error ? h("div", { class: "errorbox" }, e.error) : ""))),
    page.next_after !== null ? h("p", { class: "muted" }, "First 300 events shown.") : "");
}

async function comparePage() {
  const params = new URLSearchParams(location.search);
  const sides = await Promise.all([compareSide(params.get("a")), compareSide(params.get("b"))]);
  show(h("h1", {}, "Compare"), h("div", { class: "compare" }, sides));
}

// --- timeline -------------------------------------------------------------------------------

const ROW_H = 20, LABEL_W = 300;

async function timelinePage(run) {
  const tree = await api(`/runs/${encodeURIComponent(run)}`);
  const t0 = Date.parse(tree.run.started_at);
  const span = Math.max(1, (tree.run.duration_s || 1) * 1000);
  const events = [];
  let scale = 0; // px per ms, set to fit at first draw
  const box = h("div", { class: "timeline", id: "timeline" });
  const inner = h("div", { class: "rows" });
  box.append(inner);
  const status = h("span", { class: "muted", id: "timeline-status" });
  const zoom = (factor) => { scale *= factor; draw(); };
  show(h("h1", {}, "Timeline: ", link(runPath(run), tree.run.task || run)),
    h("div", { class: "toolbar" }, h("button", { type: "button", onclick: () => zoom(2) }, "Zoom in"),
      h("button", { type: "button", onclick: () => zoom(0.5) }, "Zoom out"),
      h("button", { type: "button", onclick: () => { scale = 0; draw(); } }, "Fit"), status), box);

  function draw() {
    if (!scale) scale = Math.max(1e-6, (box.clientWidth - LABEL_W - 24) / span);
    inner.style.height = `${Math.max(events.length, tree.totals.events) * ROW_H}px`;
    inner.style.width = `${LABEL_W + span * scale + 24}px`;
    // Virtualised: only the rows in view exist in the page.
    const first = Math.max(0, Math.floor(box.scrollTop / ROW_H) - 5);
    const last = Math.min(events.length, first + Math.ceil(box.clientHeight / ROW_H) + 10);
    const rows = [];
    for (let i = first; i < last; i++) {
      const e = events[i];
      const start = Date.parse(e.started_at || e.timestamp) - t0;
      const bar = h("span", { class: `bar ${e.event_type} ${e.status}` });
      bar.style.left = `${LABEL_W + start * scale}px`;
      bar.style.width = `${Math.max(2, (e.duration_ms || 0) * scale)}px`;
      const label = h("span", { class: "label" }, link(eventPath(run, e.id), `${kind(e)} ${e.agent_name || ""}`));
      label.style.paddingLeft = `${e.depth * 12}px`;
      const row = h("div", { class: "row", title: `#${e.execution_order} ${kind(e)} ${millis(e.duration_ms)}` }, label, bar);
      row.style.top = `${i * ROW_H}px`;
      row.style.width = inner.style.width;
      rows.push(row);
    }
    inner.replaceChildren(...rows);
  }

  box.addEventListener("scroll", () => requestAnimationFrame(draw));
  box.addEventListener("wheel", (ev) => { if (ev.ctrlKey) { ev.preventDefault(); zoom(ev.deltaY < 0 ? 1.25 : 0.8); } }, { passive: false });
  // Pages of 1000 in order, drawn as they come: the page is usable after the first one, and
  // the rest load behind it.
  async function load(after) {
    const page = await api(`/runs/${encodeURIComponent(run)}/events`, { after, limit: 1000 });
    events.push(...page.events);
    status.textContent = `${events.length} of ${tree.totals.events} events${page.next_after === null ? "" : " (loading)"}`;
    draw();
    return page.next_after;
  }
  const next = await load(0);
  (async () => {
    for (let after = next; after !== null; after = await load(after));
  })().catch((error) => { status.textContent = String(error.message || error); });
}

// --- costs ----------------------------------------------------------------------------------

function costTable(title, rows, keyCell) {
  const top = Math.max(...rows.map((r) => r.cost_usd || r.tokens), 0) || 1;
  return [h("h2", {}, title), h("table", { class: "bars" },
    h("thead", {}, h("tr", {}, ["", "Prompt", "Completion", "Tokens", "Cost", ""].map((t, i) =>
      h("th", { class: i && i < 5 ? "num" : null }, t)))),
    h("tbody", {}, rows.length ? rows.map((r) => {
      const fill = h("div", { class: "fill" });
      fill.style.width = `${(100 * (r.cost_usd || r.tokens)) / top}%`;
      return h("tr", {}, h("td", {}, keyCell(r.key)), h("td", { class: "num" }, r.prompt_tokens),
        h("td", { class: "num" }, r.completion_tokens), h("td", { class: "num" }, r.tokens),
        h("td", { class: "num" }, cost(r.cost_usd)), h("td", { class: "bar" }, fill));
    }) : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No costs recorded."))))];
}

async function costsPage() {
  const params = new URLSearchParams(location.search);
  const query = params.get("run") ? { run: params.get("run") } : { days: params.get("days") || "30" };
  const data = await api("/costs", query);
  const plain = (key) => key ?? "(none)";
  show(h("h1", {}, data.run ? ["Costs of ", link(runPath(data.run), "run " + data.run)] : `Costs of the last ${data.days} days`),
    costTable("By agent", data.by_agent, plain), costTable("By model", data.by_model, plain),
    data.run ? "" : costTable("By run", data.by_run, (key) => link(runPath(key), key)),
    costTable("By day", data.by_day, plain));
}

// --- routing --------------------------------------------------------------------------------

const ROUTES = [
  [/^\/$/, runsPage],
  [/^\/runs\/([^/]+)$/, runPage],
  [/^\/runs\/([^/]+)\/timeline$/, timelinePage],
  [/^\/runs\/([^/]+)\/events\/([^/]+)$/, eventPage],
  [/^\/compare$/, comparePage],
  [/^\/costs$/, costsPage],
];

async function route() {
  for (const [pattern, page] of ROUTES) {
    const match = location.pathname.match(pattern);
    if (match) {
      try {
        await page(...match.slice(1).map(decodeURIComponent));
        document.body.dataset.ready = "true";
        performance.mark("page-ready"); // what the benchmarks measure: drawn and usable
      } catch (error) {
        show(h("p", { class: "error", id: "page-error" }, String(error.message || error)));
      }
      return;
    }
  }
  show(h("p", { class: "error" }, "No such page."));
}

route();
