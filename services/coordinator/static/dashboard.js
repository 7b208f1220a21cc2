// SimulTrain's live dashboard: polls the coordinator's /v1/dashboard and draws it.
// No framework, no build step: the coordinator serves this file from its package.
// Every user-supplied string (edge names, ids, URLs) is set as text, never as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const params = new URLSearchParams(window.location.search);
// ?interval=ms overrides the poll period (tests poll faster); never below 200 ms.
const POLL_MS = Math.max(200, Number(params.get("interval")) || 2000);
let polls = 0;

function text(value, digits) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number" && digits !== undefined) return value.toFixed(digits);
  return String(value);
}

function bytes(value) {
  if (typeof value !== "number") return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let v = value;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function cell(row, value, className) {
  const td = document.createElement("td");
  td.textContent = value;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function svgEl(parent, name, attrs) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  parent.appendChild(el);
  return el;
}

function label(svg, x, y, value, anchor) {
  const t = svgEl(svg, "text", { x, y, "text-anchor": anchor || "start" });
  t.textContent = value;
  return t;
}

// A line chart: training loss on the left axis (0 to its maximum), held-out accuracy on the
// right (0 to 1), both against seconds since the first point.
function drawProgress(svg, points) {
  svg.replaceChildren();
  const W = 480, H = 200, L = 44, R = 40, T = 10, B = 24;
  svgEl(svg, "rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "axis", fill: "none" });
  if (points.length === 0) {
    label(svg, W / 2, H / 2, "no evaluation yet", "middle");
    return;
  }
  const t0 = points[0].time;
  const span = Math.max(points[points.length - 1].time - t0, 1);
  const losses = points.map((p) => p.train_loss).filter((v) => typeof v === "number");
  const lossMax = Math.max(...losses, 1e-9);
  const x = (t) => L + ((t - t0) / span) * (W - L - R);
  const y = (f) => T + (1 - f) * (H - T - B);
  const line = (key, scale, className) => {
    const coords = points
      .filter((p) => typeof p[key] === "number")
      .map((p) => `${x(p.time).toFixed(1)},${y(p[key] / scale).toFixed(1)}`);
    if (coords.length === 1) coords.push(coords[0]);
    svgEl(svg, "polyline", { points: coords.join(" "), class: className, "data-points": coords.length });
  };
  line("train_loss", lossMax, "loss");
  line("accuracy", 1, "accuracy");
  label(svg, L - 4, T + 10, lossMax.toFixed(2), "end");
  label(svg, L - 4, H - B, "0", "end");
  label(svg, W - R + 4, T + 10, "100 %");
  label(svg, W - R + 4, H - B, "0 %");
  label(svg, L, H - 6, "0 s");
  label(svg, W - R, H - 6, `${Math.round(span)} s`, "end");
  const last = points[points.length - 1];
  if (typeof last.accuracy === "number") {
    label(svg, L + 6, T + 14, `accuracy ${(100 * last.accuracy).toFixed(1)} % at v${last.master_version}`);
  }
}

// Bars: how many applied edge gradients had each staleness τ.
function drawStaleness(svg, staleness) {
  svg.replaceChildren();
  const W = 480, H = 200, L = 44, R = 10, T = 10, B = 24;
  const histogram = (staleness && staleness.histogram) || {};
  const entries = Object.entries(histogram).map(([k, v]) => [Number(k), v]).sort((a, b) => a[0] - b[0]);
  svgEl(svg, "rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "axis", fill: "none" });
  if (entries.length === 0) {
    label(svg, W / 2, H / 2, "no edge gradient applied yet", "middle");
    return;
  }
  const maxTau = entries[entries.length - 1][0];
  const maxCount = Math.max(...entries.map((e) => e[1]));
  const slot = (W - L - R) / (maxTau + 1);
  for (const [tau, count] of entries) {
    const h = (count / maxCount) * (H - T - B);
    const bar = svgEl(svg, "rect", {
      x: L + tau * slot + slot * 0.1, y: H - B - h, width: slot * 0.8, height: h, class: "bar",
      "data-tau": tau, "data-count": count,
    });
    svgEl(bar, "title", {}).textContent = `τ = ${tau}: ${count} batches`;
  }
  label(svg, L - 4, T + 10, String(maxCount), "end");
  label(svg, L, H - 6, "τ = 0");
  label(svg, W - R, H - 6, `τ = ${maxTau}`, "end");
  label(svg, L + 6, T + 14,
    `mean ${text(staleness.mean, 2)}, max ${text(staleness.max)}, dropped ${text(staleness.dropped)}`);
}

function figure(dl, name, value) {
  const div = document.createElement("div");
  const dt = document.createElement("dt");
  const dd = document.createElement("dd");
  dt.textContent = name;
  dd.textContent = value;
  dd.dataset.figure = name;
  div.append(dt, dd);
  dl.appendChild(div);
}

function renderClouds(clouds) {
  const box = document.getElementById("clouds");
  if (clouds.length === 0) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = "no cloud registered yet";
    box.replaceChildren(p);
    return;
  }
  const template = document.getElementById("cloud-card");
  const cards = clouds.map((cloud) => {
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.cloudId = cloud.cloud_id;
    card.querySelector(".cloud-id").textContent = `${cloud.cloud_id} (${cloud.url})`;
    const health = card.querySelector(".health");
    const healthy = cloud.status === "up" && cloud.reachable;
    health.textContent = healthy ? "healthy" : (cloud.reachable ? `status ${cloud.status}` : "unreachable");
    health.className = `health ${healthy ? "good" : "bad"}`;
    const d = cloud.detail || {};
    const dl = card.querySelector(".figures");
    figure(dl, "heartbeat", cloud.status);
    figure(dl, "master version", text(cloud.master_version));
    figure(dl, "mode", text(d.mode));
    figure(dl, "model", text(d.model_id));
    figure(dl, "device", text(d.device));
    figure(dl, "sessions", text(cloud.connected_edges.length));
    figure(dl, "samples applied", text(d.samples_applied));
    figure(dl, "training loss", text(d.loss, 4));
    const last = cloud.history.length ? cloud.history[cloud.history.length - 1] : null;
    figure(dl, "held-out accuracy", last && typeof last.accuracy === "number" ? `${(100 * last.accuracy).toFixed(1)} %` : "–");
    figure(dl, "compute busy", typeof cloud.busy_share === "number" ? `${(100 * cloud.busy_share).toFixed(0)} %` : "–");
    figure(dl, "uptime", typeof d.uptime_seconds === "number" ? `${Math.round(d.uptime_seconds)} s` : "–");
    if (cloud.error) figure(dl, "error", cloud.error);
    drawProgress(card.querySelector("svg.progress"), cloud.history);
    drawStaleness(card.querySelector("svg.staleness"), d.staleness);
    return card;
  });
  box.replaceChildren(...cards);
}

// One edge's staleness distribution: small bars, then mean and max (this edge's own batches).
function stalenessCell(row, staleness) {
  const td = cell(row, "");
  td.className = "edge-staleness";
  const histogram = (staleness && staleness.histogram) || {};
  const entries = Object.entries(histogram).map(([k, v]) => [Number(k), v]).sort((a, b) => a[0] - b[0]);
  if (entries.length === 0) {
    td.textContent = "–";
    return td;
  }
  const W = 80, H = 18;
  const svg = svgEl(td, "svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "mini" });
  const maxTau = entries[entries.length - 1][0];
  const maxCount = Math.max(...entries.map((e) => e[1]));
  const slot = W / (maxTau + 1);
  for (const [tau, count] of entries) {
    const h = Math.max(1, (count / maxCount) * H);
    const bar = svgEl(svg, "rect", {
      x: tau * slot, y: H - h, width: Math.max(1, slot * 0.8), height: h, class: "bar",
      "data-tau": tau, "data-count": count,
    });
    svgEl(bar, "title", {}).textContent = `τ = ${tau}: ${count} batches`;
  }
  const summary = document.createElement("span");
  summary.textContent = ` ${text(staleness.mean, 1)} / ${text(staleness.max)}`;
  summary.dataset.figure = "edge staleness";
  td.appendChild(summary);
  return td;
}

function renderEdges(edges) {
  const body = document.querySelector("#edges tbody");
  const rows = edges.map((e) => {
    const row = document.createElement("tr");
    row.dataset.edgeId = e.edge_id;
    cell(row, e.edge_id);
    cell(row, text(e.name));
    cell(row, e.cloud_id);
    cell(row, e.status, e.status === "down" ? "bad" : "good");  // up, or finished its steps
    cell(row, e.connected === null ? "–" : (e.connected ? "connected" : "disconnected"),
      e.connected ? "good" : "");
    cell(row, text(e.steps_applied));
    cell(row, text(e.step_rate, 1));
    cell(row, text(e.replica_version));
    cell(row, text(e.lag));
    stalenessCell(row, e.staleness);
    cell(row, bytes(e.bytes_up));
    cell(row, bytes(e.bytes_down));
    cell(row, text(e.reconciliations));
    return row;
  });
  body.replaceChildren(...rows);
  document.getElementById("no-edges").hidden = edges.length > 0;
}

function renderRun(config) {
  const r = config || {};
  const every = r.reconcile_every === null ? "∞" : r.reconcile_every;
  document.getElementById("run").textContent =
    `mode ${text(r.mode)} · dataset ${text(r.dataset)} · model ${text(r.model_id || "(dataset's)")} · ` +
    `window ${text(r.window)} · α ${text(r.alpha)} · R ${text(every)} · β ${text(r.beta)} · ` +
    `${text(r.optimizer_name)} lr ${text(r.optimizer_lr)}`;
}

async function poll() {
  const problem = document.getElementById("problem");
  try {
    const reply = await fetch("v1/dashboard", { cache: "no-store" });
    if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
    const data = await reply.json();
    renderRun(data.run_config);
    renderClouds(data.clouds);
    renderEdges(data.edges);
    polls += 1;
    const counter = document.getElementById("polls");
    counter.textContent = String(polls);
    counter.dataset.count = String(polls);
    document.getElementById("updated").textContent = new Date(data.generated_at * 1000).toLocaleTimeString();
    problem.hidden = true;
  } catch (err) {
    // Keep the last picture and say why it is not fresh; the next poll tries again.
    problem.textContent = `· coordinator not answering (${err.message})`;
    problem.hidden = false;
  } finally {
    window.setTimeout(poll, POLL_MS);
  }
}

poll();
