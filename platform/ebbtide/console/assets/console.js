// The ebbtide console's page. One event stream (/api/events): a snapshot first (the session, the pipeline
// graph, the charts' history), then one tick a second with every function at once. Pages that need more ask
// for it (dead letters, shadow samples, an order). Data is only ever put in the page as text (textContent,
// attributes): nothing read from a message is parsed as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const CSRF = document.querySelector('meta[name="ebbtide-csrf"]').content;
const MAX_CHARTS = 24; // charts drawn at once (the most active first); the filter picks others

// What the tests (and a curious person in the developer tools) can read: the charts' own data included
// (`edgeRates(tick)` names a tick's edge rates).
const state = (window.ebbtide = {
  session: null,
  graph: null,
  tick: null,
  history: {}, // function -> {t: [], backlog: [], instances: []}
  charts: {}, // function -> uPlot
  selectedLetter: null,
  deadTotal: null,
  events: null, // the EventSource: a test listens to every tick on it
  edgeRates: (tick) => edgeRates(tick),
});

// -- small helpers ------------------------------------------------------------------------------------------

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

const $ = (id) => document.getElementById(id);
const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

function perSecond(rate) {
  if (!rate) return "0/s";
  return rate < 10 ? `${rate.toFixed(1)}/s` : `${integer.format(rate)}/s`;
}

function ms(value) {
  if (!value) return "–";
  return value < 1 ? value.toFixed(3) : value < 10 ? value.toFixed(2) : decimal.format(value);
}

function notice(text, kind) {
  const box = $("notice");
  box.textContent = text;
  box.className = `notice ${kind || ""}`;
  box.hidden = !text;
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.error || `${response.status}`);
  return body;
}

// An action: from this page only (its CSRF token, JSON), after the person confirmed it.
async function act(url, body, question) {
  if (!(await confirmed(question))) return null;
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Ebbtide-CSRF": CSRF },
    body: JSON.stringify(body || {}),
  });
  const answer = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) {
    notice(answer.error || `refused (${response.status})`, "error");
    return null;
  }
  return answer;
}

function confirmed(question) {
  const dialog = $("confirm");
  $("confirm-text").textContent = question;
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-ok").removeEventListener("click", ok);
      $("confirm-cancel").removeEventListener("click", cancel);
      dialog.removeEventListener("cancel", cancel);
      dialog.close();
      resolve(answer);
    };
    const ok = () => done(true);
    const cancel = () => done(false);
    $("confirm-ok").addEventListener("click", ok);
    $("confirm-cancel").addEventListener("click", cancel);
    dialog.addEventListener("cancel", cancel);
    dialog.showModal();
  });
}

// Actions are offered only with admin credentials; otherwise they are shown disabled, saying why.
function applyMode() {
  const session = state.session;
  const why = session.actions ? "" : `Read-only: ${session.read_only_why}. Redrive, purge, promote and abort are not offered.`;
  $("mode").textContent = session.actions ? "actions on (admin)" : "read-only";
  $("mode").className = `badge ${session.actions ? "admin" : "read-only"}`;
  $("mode").title = why || "started with admin credentials: redrive, purge, promote and abort ask for confirmation";
  for (const id of ["dead-read-only", "rollouts-read-only"]) {
    $(id).textContent = why;
    $(id).hidden = !why;
  }
  for (const button of document.querySelectorAll("button.action")) {
    if (!session.actions) {
      button.disabled = true;
      button.title = why;
    }
  }
}

// -- views --------------------------------------------------------------------------------------------------

function show(view) {
  const known = ["overview", "scaling", "dead-letters", "rollouts", "orders"];
  if (!known.includes(view)) view = "overview";
  for (const name of known) $(`view-${name}`).hidden = name !== view;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("current", link.dataset.view === view);
  if (view === "dead-letters") loadDeadLetters();
  if (view === "scaling") drawCharts();
}

window.addEventListener("hashchange", () => show(location.hash.slice(1)));

// -- the live stream ----------------------------------------------------------------------------------------

function connect() {
  const events = (state.events = new EventSource("/api/events"));
  events.addEventListener("open", () => {
    $("connection").textContent = "live";
    $("connection").className = "badge live";
  });
  events.addEventListener("error", () => {
    $("connection").textContent = "reconnecting…";
    $("connection").className = "badge down";
  });
  events.addEventListener("snapshot", (event) => onSnapshot(JSON.parse(event.data)));
  events.addEventListener("tick", (event) => onTick(JSON.parse(event.data)));
}

function onSnapshot(snapshot) {
  state.session = snapshot.session;
  state.graph = snapshot.graph;
  state.history = {};
  for (const [name, points] of Object.entries(snapshot.history)) {
    state.history[name] = { t: points.map((p) => p[0]), backlog: points.map((p) => p[1]), instances: points.map((p) => p[2]) };
  }
  $("server").textContent = `NATS ${snapshot.session.server} · ${snapshot.session.manifest}`;
  applyMode();
  drawGraph(snapshot.graph);
  fillFunctionChoice();
  for (const chart of Object.values(state.charts)) chart.destroy();
  state.charts = {};
  $("charts").replaceChildren();
  if (snapshot.tick) onTick(snapshot.tick, true);
  show(location.hash.slice(1));
}

function onTick(tick, fromSnapshot) {
  state.tick = tick;
  if (!fromSnapshot) {
    const horizon = tick.t - state.session.history_s;
    for (const [name, point] of Object.entries(tick.points)) {
      const series = (state.history[name] ||= { t: [], backlog: [], instances: [] });
      series.t.push(point[0]);
      series.backlog.push(point[1]);
      series.instances.push(point[2]);
      while (series.t.length && series.t[0] < horizon) {
        series.t.shift();
        series.backlog.shift();
        series.instances.shift();
      }
    }
  }
  $("clock").textContent = new Date(tick.t * 1000).toLocaleTimeString();
  const problems = $("problems");
  problems.textContent = tick.problems.length ? `Not read this tick: ${tick.problems.join("; ")}` : "";
  problems.hidden = !tick.problems.length;
  renderSummary(tick);
  renderFunctions(tick);
  renderGraphRates(tick);
  if (!$("view-scaling").hidden) drawCharts();
  renderRollouts(tick);
  const total = tick.dead_letters ? Object.values(tick.dead_letters).reduce((a, b) => a + b, 0) : null;
  $("dead-count").textContent = total === null ? "" : integer.format(total);
  if (total !== state.deadTotal) {
    state.deadTotal = total;
    if (!$("view-dead-letters").hidden) loadDeadLetters();
  }
}

function renderSummary(tick) {
  const sum = (key) => tick.functions.reduce((a, f) => a + f[key], 0);
  const stale = tick.functions.filter((f) => f.stale).length;
  const dead = tick.dead_letters ? Object.values(tick.dead_letters).reduce((a, b) => a + b, 0) : null;
  $("summary").textContent = [
    `${tick.functions.length} functions${stale ? ` (${stale} stale)` : ""}`,
    `backlog ${integer.format(sum("backlog"))}`,
    `instances ${integer.format(sum("instances"))}`,
    `${decimal.format(sum("rate"))} msgs/s`,
    `dead letters ${dead === null ? "unknown" : integer.format(dead)}`,
  ].join(" · ");
}

function renderFunctions(tick) {
  const body = $("functions").tBodies[0];
  const rows = new Map([...body.rows].map((row) => [row.dataset.function, row]));
  tick.functions.forEach((f, index) => {
    let row = rows.get(f.name);
    if (!row) {
      row = el("tr", { "data-function": f.name });
      for (let i = 0; i < 10; i++) row.append(el("td", { class: i > 0 && i < 9 ? "n" : "" }));
    }
    if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] || null);
    const dead = tick.dead_letters ? integer.format(tick.dead_letters[f.name] || 0) : "–";
    const cells = [
      f.name,
      f.stale ? "stale" : integer.format(f.backlog),
      f.instances,
      f.in_flight,
      decimal.format(f.rate),
      ms(f.p50_ms),
      ms(f.p99_ms),
      dead,
      f.replicas,
      rolloutSummary(f.name, tick) || "",
    ];
    cells.forEach((text, i) => {
      if (row.cells[i].textContent !== String(text)) row.cells[i].textContent = text;
    });
    row.classList.toggle("stale", f.stale);
    row.classList.toggle("busy", f.instances > 0);
  });
}

function rolloutSummary(name, tick) {
  const record = tick.rollouts[name];
  if (!record) return "";
  return `${record.mode} ${record.phase} ${record.candidate_sha256.slice(0, 12)}`;
}

// -- the pipeline graph -------------------------------------------------------------------------------------

const NODE_W = 200;
const NODE_H = 46;
const COLUMN_GAP = 70;
const ROW_GAP = 26;

function nodeBox(node) {
  return { x: 20 + node.column * (NODE_W + COLUMN_GAP), y: 20 + node.row * (NODE_H + ROW_GAP) };
}

function drawGraph(graph) {
  const columns = Math.max(...graph.nodes.map((n) => n.column)) + 1;
  const rows = Math.max(...graph.nodes.map((n) => n.row)) + 1;
  const width = 40 + columns * NODE_W + (columns - 1) * COLUMN_GAP;
  const height = 40 + rows * NODE_H + (rows - 1) * ROW_GAP;
  // Scaled down to the page's width (never up): the whole pipeline in view, left to right.
  const picture = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "the pipeline" });
  picture.style.maxWidth = `${width}px`;
  const byId = Object.fromEntries(graph.nodes.map((n) => [n.id, n]));
  const edges = svg("g", { class: "edges" });
  const labels = svg("g", { class: "edge-labels" });
  for (const edge of graph.edges) {
    const from = nodeBox(byId[edge.source]);
    const to = nodeBox(byId[edge.target]);
    const x1 = from.x + NODE_W, y1 = from.y + NODE_H / 2, x2 = to.x, y2 = to.y + NODE_H / 2;
    const bend = Math.max(30, (x2 - x1) / 2);
    const path = `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`;
    edges.append(svg("path", { d: path, class: `edge ${edge.kind}`, "data-edge": edge.id }));
    const label = svg("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 4, class: `edge-rate ${edge.kind}`, "data-edge": edge.id }, "");
    labels.append(label);
  }
  const nodes = svg("g", { class: "nodes" });
  for (const node of graph.nodes) {
    const box = nodeBox(node);
    const group = svg("g", { class: `node ${node.kind}${node.entry ? " entry" : ""}`, "data-node": node.id, transform: `translate(${box.x},${box.y})` });
    group.append(svg("rect", { width: NODE_W, height: NODE_H, rx: node.kind === "function" ? 8 : 3 }));
    const kind = { subject: node.entry ? "entry subject" : "subject", function: "function", bucket: "KV bucket", dlq: "dead letters" }[node.kind];
    group.append(svg("text", { x: 10, y: 18, class: "node-label" }, node.label));
    group.append(svg("text", { x: 10, y: 36, class: "node-detail", "data-detail": node.id }, kind));
    group.append(svg("title", {}, `${kind}: ${node.label}`));
    nodes.append(group);
  }
  picture.append(edges, nodes, labels);
  $("graph").replaceChildren(picture);
}

// A tick's edge rates come as a list in the order of the graph's edges.
function edgeRates(tick) {
  return Object.fromEntries(state.graph.edges.map((edge, index) => [edge.id, tick.edges[index] || 0]));
}

function renderGraphRates(tick) {
  if (!state.graph) return;
  const shared = Object.fromEntries(state.graph.edges.map((e) => [e.id, e.shared]));
  const rates = edgeRates(tick);
  for (const label of document.querySelectorAll("#graph text.edge-rate")) {
    const id = label.dataset.edge;
    const rate = rates[id];
    const deadLetter = label.classList.contains("dead_letter");
    label.textContent = deadLetter && !rate ? "" : `${shared[id] ? "Σ " : ""}${perSecond(rate)}`;
    label.classList.toggle("active", rate > 0);
  }
  for (const path of document.querySelectorAll("#graph path.edge")) path.classList.toggle("active", rates[path.dataset.edge] > 0);
  const functions = Object.fromEntries(tick.functions.map((f) => [`function:${f.name}`, f]));
  const dead = tick.dead_letters ? Object.values(tick.dead_letters).reduce((a, b) => a + b, 0) : null;
  for (const detail of document.querySelectorAll("#graph text.node-detail")) {
    const id = detail.dataset.detail;
    let text = null;
    if (functions[id]) {
      const f = functions[id];
      text = f.stale ? "stale" : `backlog ${integer.format(f.backlog)} · ${f.instances} inst · ${perSecond(f.rate)}`;
    } else if (id in tick.inflow) {
      text = `in ${perSecond(tick.inflow[id])}`;
    } else if (id.startsWith("dlq:")) {
      text = dead === null ? "held: unknown" : `held: ${integer.format(dead)}`;
    }
    if (text !== null && detail.textContent !== text) detail.textContent = text;
  }
}

// -- scaling charts (uPlot) ---------------------------------------------------------------------------------

function chartOptions(name, width) {
  return {
    title: name,
    width,
    height: 200,
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, instances: { range: (u, min, max) => [0, Math.max(4, max + 1)] }, backlog: { range: (u, min, max) => [0, Math.max(10, max * 1.1)] } },
    series: [
      {},
      { label: "backlog", scale: "backlog", stroke: "#2563eb", fill: "rgba(37, 99, 235, 0.12)", width: 2 },
      { label: "instances", scale: "instances", stroke: "#dc2626", width: 2, paths: uPlot.paths.stepped({ align: 1 }) },
    ],
    axes: [
      {},
      { scale: "backlog", label: "backlog", size: 60 },
      { scale: "instances", label: "instances", side: 1, grid: { show: false }, size: 50 },
    ],
  };
}

function drawCharts() {
  if (!state.tick || typeof uPlot === "undefined") return;
  const filter = $("chart-filter").value.trim().toLowerCase();
  const names = state.tick.functions.map((f) => f.name).filter((n) => !filter || n.toLowerCase().includes(filter));
  // The most active first: the largest backlog of the window, then the name.
  const peak = (n) => Math.max(0, ...((state.history[n] || {}).backlog || []), ...((state.history[n] || {}).instances || []));
  names.sort((a, b) => peak(b) - peak(a) || a.localeCompare(b));
  const shown = names.slice(0, MAX_CHARTS);
  $("chart-count").textContent = names.length > shown.length ? `${shown.length} of ${names.length} shown (the most active)` : "";
  const container = $("charts");
  for (const [name, chart] of Object.entries(state.charts)) {
    if (!shown.includes(name)) {
      chart.destroy();
      delete state.charts[name];
      container.querySelector(`[data-chart="${CSS.escape(name)}"]`)?.remove();
    }
  }
  const width = Math.max(320, Math.min(560, container.clientWidth / 2 - 24));
  for (const name of shown) {
    const series = state.history[name] || { t: [], backlog: [], instances: [] };
    const data = [series.t.slice(), series.backlog.slice(), series.instances.slice()];
    if (!state.charts[name]) {
      const card = el("div", { class: "chart", "data-chart": name });
      container.append(card);
      state.charts[name] = new uPlot(chartOptions(name, width), data, card);
    } else {
      state.charts[name].setData(data);
    }
  }
}

$("chart-filter").addEventListener("input", drawCharts);

// -- dead letters -------------------------------------------------------------------------------------------

function fillFunctionChoice() {
  const choice = $("dead-function");
  const chosen = choice.value;
  choice.replaceChildren(el("option", { value: "" }, "all"));
  for (const node of state.graph.nodes.filter((n) => n.kind === "function")) choice.append(el("option", { value: node.label }, node.label));
  choice.value = chosen;
}

let loadingLetters = null;

async function loadDeadLetters() {
  if (loadingLetters) return loadingLetters;
  const function_ = $("dead-function").value;
  loadingLetters = (async () => {
    try {
      const letters = await getJSON(`/api/dead-letters?limit=500${function_ ? `&function=${encodeURIComponent(function_)}` : ""}`);
      renderDeadLetters(letters);
      $("dead-status").textContent = `${letters.length} shown, oldest first`;
    } catch (error) {
      $("dead-status").textContent = `cannot read the dead letters: ${error.message}`;
    } finally {
      loadingLetters = null;
    }
  })();
  return loadingLetters;
}

function renderDeadLetters(letters) {
  const body = $("dead-letters").tBodies[0];
  const checked = new Set([...body.querySelectorAll("input:checked")].map((box) => box.value));
  body.replaceChildren(
    ...letters.map((letter) => {
      const box = el("input", { type: "checkbox", value: letter.seq, "aria-label": `select #${letter.seq}`, checked: checked.has(String(letter.seq)) });
      box.addEventListener("click", (event) => event.stopPropagation());
      box.addEventListener("change", updateRedriveButton);
      const row = el(
        "tr",
        { "data-seq": letter.seq, class: state.selectedLetter === letter.seq ? "selected" : "" },
        el("td", {}, box),
        el("td", { class: "n" }, `#${letter.seq}`),
        el("td", {}, letter.function),
        el("td", {}, letter.reason || "–"),
        el("td", { class: "n" }, letter.deliveries),
        el("td", {}, letter.failed_at || "–"),
        el("td", { class: "n" }, letter.size),
        el("td", { class: "error" }, letter.error || "–"),
      );
      row.addEventListener("click", () => openLetter(letter.seq));
      return row;
    }),
  );
  if (!letters.length) body.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no dead letters")));
  if (state.selectedLetter !== null && !letters.some((l) => l.seq === state.selectedLetter)) {
    state.selectedLetter = null;
    $("dead-detail").hidden = true;
  }
  updateRedriveButton();
}

function selectedSeqs() {
  return [...$("dead-letters").tBodies[0].querySelectorAll("input:checked")].map((box) => Number(box.value));
}

function updateRedriveButton() {
  if (!state.session || !state.session.actions) return;
  const count = selectedSeqs().length;
  $("dead-redrive").disabled = !count;
  $("dead-redrive").textContent = count ? `Redrive ${count} selected` : "Redrive selected";
}

async function openLetter(seq) {
  state.selectedLetter = seq;
  for (const row of $("dead-letters").tBodies[0].rows) row.classList.toggle("selected", row.dataset.seq === String(seq));
  let detail;
  try {
    detail = await getJSON(`/api/dead-letters/${seq}`);
  } catch (error) {
    notice(`dead letter #${seq}: ${error.message}`, "error");
    return;
  }
  const row = detail.row;
  $("dead-detail-title").textContent = `Dead letter #${row.seq} of ${row.function}: ${row.reason || "no reason"}`;
  $("dead-detail-headers").tBodies[0].replaceChildren(...detail.headers.map(([key, value]) => el("tr", {}, el("th", {}, key), el("td", {}, value))));
  const payload = detail.payload;
  const kind = payload.text !== null ? "text" : "binary, as hex";
  $("dead-detail-payload-title").textContent = `Payload: ${integer.format(payload.size)} bytes (${kind})${payload.omitted ? `, ${integer.format(payload.omitted)} not shown` : ""}`;
  $("dead-detail-payload").textContent = payload.text !== null ? payload.text : payload.hex;
  $("dead-detail").hidden = false;
  $("dead-detail").dataset.seq = seq;
}

async function redrive(seqs) {
  const answer = await act(
    "/api/dead-letters/redrive",
    { seqs },
    `Send ${seqs.length === 1 ? `dead letter #${seqs[0]}` : `${seqs.length} dead letters`} back to the subject ${seqs.length === 1 ? "it" : "they"} came from? Each is republished once, then removed from the dead letters.`,
  );
  if (!answer) return;
  const failures = answer.failed.map((f) => `#${f.seq}: ${f.reason}`).join("; ");
  notice(`Redriven ${answer.redriven.length}${answer.failed.length ? `, failed ${answer.failed.length}: ${failures}` : ""}.`, answer.failed.length ? "error" : "ok");
  await loadDeadLetters();
}

$("dead-refresh").addEventListener("click", loadDeadLetters);
$("dead-function").addEventListener("change", loadDeadLetters);
$("dead-all").addEventListener("change", (event) => {
  for (const box of $("dead-letters").tBodies[0].querySelectorAll("input[type=checkbox]")) box.checked = event.target.checked;
  updateRedriveButton();
});
$("dead-redrive").addEventListener("click", () => {
  const seqs = selectedSeqs();
  if (seqs.length) redrive(seqs);
});
$("dead-detail-redrive").addEventListener("click", () => redrive([Number($("dead-detail").dataset.seq)]));
$("dead-purge").addEventListener("click", async () => {
  const function_ = $("dead-function").value || null;
  const answer = await act(
    "/api/dead-letters/purge",
    { function: function_ },
    `Delete every dead letter${function_ ? ` of ${function_}` : ""}, for good? This cannot be undone.`,
  );
  if (answer) {
    notice(`Purged ${answer.purged} dead letter(s).`, "ok");
    await loadDeadLetters();
  }
});

// -- rollouts -----------------------------------------------------------------------------------------------

function renderRollouts(tick) {
  const container = $("rollouts");
  const names = tick.functions.filter((f) => tick.rollouts[f.name] || Object.keys(f.rollout).length).map((f) => f.name);
  $("rollouts-none").hidden = names.length > 0;
  const cards = new Map([...container.children].map((card) => [card.dataset.function, card]));
  for (const [name, card] of cards) if (!names.includes(name)) card.remove();
  for (const name of names) {
    let card = cards.get(name);
    if (!card) {
      card = rolloutCard(name);
      container.append(card);
    }
    fillRolloutCard(card, tick.functions.find((f) => f.name === name), tick.rollouts[name]);
  }
}

function rolloutCard(name) {
  const promote = el("button", { type: "button", class: "action", "data-action": "promote" }, "Promote");
  const abort = el("button", { type: "button", class: "action danger", "data-action": "abort" }, "Abort");
  const samples = el("button", { type: "button", "data-action": "samples" }, "Kept samples, side by side");
  promote.addEventListener("click", () => changePhase(name, "promote"));
  abort.addEventListener("click", () => changePhase(name, "abort"));
  samples.addEventListener("click", () => loadSamples(name));
  const card = el(
    "div",
    { class: "rollout", "data-function": name },
    el("h3", {}, name),
    el("p", { class: "record" }),
    el("p", { class: "counts" }),
    el("ul", { class: "replicas" }),
    el("div", { class: "toolbar" }, promote, abort, samples),
  );
  if (state.session && !state.session.actions) {
    for (const button of [promote, abort]) {
      button.disabled = true;
      button.title = `Read-only: ${state.session.read_only_why}`;
    }
  }
  return card;
}

function fillRolloutCard(card, row, record) {
  const text = record
    ? `${record.mode} of ${record.candidate_sha256.slice(0, 12)} on ${decimal.format(record.share * 100)}% of its messages: ${record.phase}` +
      (record.why ? ` (${record.why})` : "") +
      `; live module: ${record.live_sha256 ? `${record.live_sha256.slice(0, 12)} (promoted)` : "the manifest's"}`
    : "no rollout record; the replicas still count one";
  card.querySelector(".record").textContent = text;
  card.querySelector(".record").dataset.phase = record ? record.phase : "";
  const counts = row.rollout;
  const parts = [];
  const shadow = ["same", "different", "candidate_fault"].filter((v) => `shadow.${v}` in counts);
  if (shadow.length) parts.push(`shadow verdicts: ${["same", "different", "candidate_fault"].map((v) => `${v} ${integer.format(counts[`shadow.${v}`] || 0)}`).join(", ")}`);
  for (const version of ["live", "candidate"]) {
    const results = Object.entries(counts).filter(([k]) => k.startsWith(`canary.${version}.`));
    if (results.length) parts.push(`canary ${version}: ${results.map(([k, n]) => `${k.split(".")[2]} ${integer.format(n)}`).join(", ")}`);
  }
  const countsLine = card.querySelector(".counts");
  countsLine.textContent = parts.join(" · ") || "no verdicts counted yet";
  for (const verdict of ["same", "different", "candidate_fault"]) countsLine.dataset[verdict.replace("_f", "F")] = counts[`shadow.${verdict}`] || 0;
  card.querySelector(".replicas").replaceChildren(
    ...row.modules.map((r) => el("li", {}, `replica ${r.host_id}: module ${r.module_sha256.slice(0, 12)}${r.candidate_sha256 ? `, candidate ${r.candidate_sha256.slice(0, 12)}` : ""}`)),
  );
  const active = record && record.phase === "active";
  if (state.session && state.session.actions) {
    card.querySelector('[data-action="promote"]').disabled = !active;
    card.querySelector('[data-action="abort"]').disabled = !(active || (record && record.phase === "promoted"));
  }
}

async function changePhase(name, action) {
  const record = state.tick.rollouts[name];
  const question =
    action === "promote"
      ? `Promote the candidate ${record ? record.candidate_sha256.slice(0, 12) : ""} of ${name}? Every replica swaps it in (hot reload) and keeps it across restarts.`
      : `Abort the rollout of ${name}? ${record && record.phase === "promoted" ? "Every replica returns to the manifest's module." : "The candidate is dropped; the live module runs alone."}`;
  const answer = await act(`/api/rollouts/${encodeURIComponent(name)}/${action}`, {}, question);
  if (answer) notice(answer.done, "ok");
}

async function loadSamples(name) {
  let kept;
  try {
    kept = await getJSON(`/api/rollouts/${encodeURIComponent(name)}/samples`);
  } catch (error) {
    notice(`samples of ${name}: ${error.message}`, "error");
    return;
  }
  $("samples").hidden = false;
  $("samples").dataset.function = name;
  $("samples-title").textContent = `Kept samples of ${name}`;
  const record = state.tick && state.tick.rollouts[name];
  const keep = record ? Math.min(record.keep, kept.kept_per_verdict > 0 ? kept.kept_per_verdict : record.keep) : kept.kept_per_verdict;
  $("samples-counts").textContent =
    `kept: ${Object.entries(kept.counts).map(([v, n]) => `${v} ${n}`).join(", ")}` +
    (keep > 0 ? ` (the first ${keep} of each verdict are kept; the verdicts above are the replicas' running totals)` : "");
  $("samples-list").replaceChildren(
    ...kept.samples.map((sample) =>
      el(
        "div",
        { class: `sample ${sample.verdict}`, "data-verdict": sample.verdict },
        el("h4", {}, `${sample.verdict}: ${sample.subject}, ${kept.sequences_of} #${sample.stream_sequence || "?"}, judged ${sample.judged_at}`),
        el("p", { class: "input" }, `input (${integer.format(sample.input_size)} bytes): ${sample.input}`),
        el("div", { class: "side-by-side" }, answerColumn("live", sample.live), answerColumn(`candidate ${sample.candidate_sha256.slice(0, 12)}`, sample.candidate)),
      ),
    ),
  );
  if (!kept.samples.length) $("samples-list").append(el("p", { class: "muted" }, "no samples kept yet"));
}

function answerColumn(title, lines) {
  return el("div", { class: "answer" }, el("h5", {}, title), el("pre", {}, ...lines.map(([text, mark]) => el("span", { class: `line ${mark}` }, text, "\n"))));
}

// -- orders -------------------------------------------------------------------------------------------------

$("order-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("order-key").value.trim();
  $("order-status").textContent = "looking…";
  let found;
  try {
    found = await getJSON(`/api/orders/${encodeURIComponent(key)}`);
  } catch (error) {
    $("order-status").textContent = error.message;
    return;
  }
  $("order-status").textContent = found.entries.length ? `in ${found.entries.map((e) => e.bucket).join(", ")}` : `not in ${found.buckets.join(", ")}`;
  const result = $("order-result");
  if (!found.entries.length) {
    result.replaceChildren(el("p", { class: "muted" }, `No outbox holds ${key}. An order that failed is in the dead letters; one still on its way is in a backlog.`));
    return;
  }
  result.replaceChildren(
    ...found.entries.map((entry) => {
      let trace;
      if (entry.trace_url) trace = el("p", { class: "trace", "data-trace-id": entry.trace_id }, "trace: ", el("a", { href: entry.trace_url, rel: "noopener noreferrer", target: "_blank" }, entry.trace_id));
      else if (entry.trace_id) trace = el("p", { class: "trace", "data-trace-id": entry.trace_id }, `trace ${entry.trace_id} (\`ebbtide console --trace-url\` links it to your trace viewer)`);
      else trace = el("p", { class: "trace muted" }, "no trace context on this write: tracing was off, or this order not sampled");
      return el(
        "div",
        { class: "order", "data-bucket": entry.bucket },
        el("h3", {}, `${entry.bucket} / ${entry.key}`),
        el("p", { class: "muted" }, `revision ${entry.revision}, stored at ${entry.stored_at}`),
        el("pre", {}, entry.value.text !== null ? entry.value.text : entry.value.hex),
        trace,
      );
    }),
  );
});

connect();
