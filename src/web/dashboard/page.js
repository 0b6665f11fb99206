"use strict";
// The room as tiles, in the manifest's order. Rows from /api/v1/pcs, fill history from
// /api/history, events from /api/events and then /api/events/stream (read with fetch, so
// the bearer token goes in a header, never in a URL).
const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";
const selected = new Set();
let rows = [], history = {}, focus = null;

function human(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return (i ? bytes.toFixed(1) : bytes) + " " + units[i];
}
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}
function token() { return sessionStorage.getItem("cowctl-token") || ""; }
function auth() { const t = token(); return t ? { "Authorization": "Bearer " + t } : {}; }
function say(text) { document.getElementById("msg").textContent = text; }

// Fill in percent of what the COW may grow to, and its colour.
function fill(r) {
  const cap = r.max_sectors && r.max_sectors > r.total_sectors ? r.max_sectors : r.total_sectors;
  if (r.used_sectors == null || !cap) return null;
  return Math.min(100, 100 * r.used_sectors / cap);
}
function level(r, pct) {
  if (["overflow", "invalid", "merge_failed", "parked"].includes(r.state) || pct >= 100) return "over";
  return r.warn || pct >= WARN ? "warn" : "ok";
}
function when(secs) {
  const d = new Date(secs * 1000), today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : d.toLocaleDateString();
}

// A polyline of fill % (0..100 up) over the samples' time span, in a w×h box.
function drawHistory(svg, samples, w, h) {
  svg.replaceChildren();
  const warn = document.createElementNS(SVG, "line");
  const wy = (h * (1 - WARN / 100)).toFixed(1);
  for (const [k, v] of [["x1", 0], ["x2", w], ["y1", wy], ["y2", wy]]) warn.setAttribute(k, v);
  svg.appendChild(warn);
  if (!samples || !samples.length) return;
  const t0 = samples[0][0], span = Math.max(1, samples[samples.length - 1][0] - t0);
  const pts = samples.map(([t, used, total], i) => {
    const x = samples.length === 1 ? w : (w * (t - t0) / span);
    const y = h * (1 - (total ? used / total : 0));
    return x.toFixed(1) + "," + y.toFixed(1);
  });
  if (pts.length === 1) pts.unshift("0," + pts[0].split(",")[1]);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", pts.join(" "));
  svg.appendChild(line);
  svg.dataset.samples = samples.length;
}

function tile(r) {
  const pct = fill(r), lvl = pct == null ? "ok" : level(r, pct);
  const t = el("article", "tile" + (selected.has(r.name) ? " selected" : "") + (focus === r.name ? " focus" : ""));
  Object.assign(t.dataset, { pc: r.name, state: r.state, fill: pct == null ? "" : pct.toFixed(1), level: lvl });
  const head = el("div", "head");
  const box = el("input");
  box.type = "checkbox";
  box.checked = selected.has(r.name);
  box.onclick = e => { e.stopPropagation(); toggle(r.name, box.checked); };
  head.append(box, el("span", "name", r.name), el("span", "state state-" + r.state, r.state.replace("_", " ")));
  const bar = el("div", "bar"), f = el("div", "fill " + lvl);
  f.style.width = (pct || 0).toFixed(1) + "%";
  bar.append(f, el("span", null, pct == null ? "-" : pct.toFixed(1) + "% of " + human((r.max_sectors > r.total_sectors ? r.max_sectors : r.total_sectors) * 512)));
  const version = r.image + (r.image_version ? " " + r.image_version : "") + (r.next_version ? " → " + r.next_version : "");
  const v = el("div", "line version", version);
  if (r.next_version) v.title = "moves to " + r.next_version + " at its next reset";
  const boot = el("div", "line boot", r.last_reset ? "reset " + when(r.last_reset) + " (" + r.resets + "×)" : "never reset");
  const spark = document.createElementNS(SVG, "svg");
  spark.setAttribute("class", "spark");
  spark.setAttribute("viewBox", "0 0 100 24");
  spark.setAttribute("preserveAspectRatio", "none");
  drawHistory(spark, history[r.name], 100, 24);
  t.append(head, bar, v, boot, spark);
  t.onclick = () => { toggle(r.name, !selected.has(r.name)); focus = r.name; render(); };
  return t;
}

function toggle(name, on) {
  if (on) selected.add(name); else selected.delete(name);
  if (on) focus = name;
  render();
}

// The requests the buttons send for the selection (shown on them, so a test can read it).
function requests(action) {
  return [...selected].map(pc => "POST /api/v1/pcs/" + encodeURIComponent(pc) + "/" + action);
}

function render() {
  const tiles = document.getElementById("tiles");
  tiles.replaceChildren(...rows.map(tile));
  const n = selected.size;
  document.getElementById("selected").textContent = n ? n + " selected: " + [...selected].join(", ") : "none selected";
  for (const a of ["reset", "wake"]) document.getElementById(a).dataset.requests = requests(a).join(" ");
  const name = focus || (rows[0] && rows[0].name);
  document.getElementById("focus-name").textContent = name ? name + ": fill over the last day" : "Fill over the last day";
  const s = history[name] || [];
  drawHistory(document.getElementById("plot"), s, 600, 200);
  document.getElementById("plot-range").textContent = s.length
    ? s.length + " samples since " + new Date(s[0][0] * 1000).toLocaleString() + " (dashed: the warning at " + WARN + "%)"
    : "no samples yet";
}

// Only new samples are fetched: the page keeps the day (1440 a PC) it has.
function newestSample() {
  let t = 0;
  for (const s of Object.values(history)) if (s.length) t = Math.max(t, s[s.length - 1][0]);
  return t;
}
function mergeHistory(h) {
  for (const name of Object.keys(history)) if (!rows.some(r => r.name === name)) delete history[name];
  for (const [name, s] of Object.entries(h)) history[name] = (history[name] || []).concat(s).slice(-1440);
}
async function getJson(url) {
  const r = await fetch(url, { headers: auth() });
  if (r.status === 401) { say("Enter the admin token to see the room."); return null; }
  return r.ok ? r.json() : null;
}
async function refresh() {
  try {
    const [r, h] = await Promise.all([getJson("/api/v1/pcs"), getJson("/api/history?since=" + newestSample())]);
    if (r) rows = r;
    if (h) mergeHistory(h);
    render();
    document.getElementById("when").textContent = new Date().toLocaleTimeString();
  } catch (e) { /* the next refresh tries again */ }
}

async function act(action) {
  const pcs = [...selected];
  if (!pcs.length) { say("Select PCs first (click their tiles)."); return; }
  if (!token() && rows.length === 0) { say("Enter the admin token first."); return; }
  if (action === "reset" && !confirm("Reset " + pcs.join(", ") + " to the golden image? Everything written to their disks is lost.")) return;
  const results = [];
  for (const pc of pcs) {
    const r = await fetch("/api/v1/pcs/" + encodeURIComponent(pc) + "/" + action, { method: "POST", headers: auth() });
    const body = await r.json().catch(() => ({}));
    results.push(r.ok ? pc + ": done" : pc + ": " + (body.error || r.status));
  }
  say(action + ": " + results.join("; "));
  refresh();
}

// Events: newest on top.
let lastEvent = 0;
function addEvent(e) {
  if (e.id <= lastEvent) return;
  lastEvent = e.id;
  const li = el("li", e.level);
  Object.assign(li.dataset, { kind: e.kind, pc: e.pc || "", by: e.by || "" });
  const t = el("time", null, new Date(e.time * 1000).toLocaleTimeString());
  li.append(t, document.createTextNode(e.text + (e.by ? " [" + e.by + "]" : "")));
  const list = document.getElementById("events");
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
  if (e.pc && ["reset", "autoextend", "state", "applied", "version"].includes(e.kind)) refresh();
}
async function follow() {
  for (;;) {
    try {
      const headers = Object.assign({ "Last-Event-ID": String(lastEvent) }, auth());
      const r = await fetch("/api/events/stream", { headers });
      if (!r.ok || !r.body) throw new Error(r.status);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i); buf = buf.slice(i + 2);
          const data = block.split("\n").filter(l => l.startsWith("data:")).map(l => l.slice(5).trim()).join("\n");
          if (data) addEvent(JSON.parse(data));
        }
      }
    } catch (e) { /* reconnect below */ }
    await new Promise(ok => setTimeout(ok, 3000));
  }
}
async function start() {
  document.getElementById("warn").textContent = WARN;
  const hash = new URLSearchParams(location.hash.slice(1));
  for (const pc of (hash.get("select") || "").split(",").filter(Boolean)) selected.add(pc);
  focus = [...selected][0] || null;
  document.getElementById("tokenform").onsubmit = e => {
    e.preventDefault();
    const v = document.getElementById("token").value.trim();
    if (v) sessionStorage.setItem("cowctl-token", v); else sessionStorage.removeItem("cowctl-token");
    document.getElementById("token").value = "";
    say(v ? "Token kept for this tab." : "Token forgotten.");
    refresh();
  };
  document.getElementById("all").onclick = () => {
    if (selected.size === rows.length) selected.clear(); else rows.forEach(r => selected.add(r.name));
    render();
  };
  document.getElementById("reset").onclick = () => act("reset");
  document.getElementById("wake").onclick = () => act("wake");
  const initial = JSON.parse(document.getElementById("data").textContent);
  if (initial) { rows = initial.rows; history = initial.history; render(); }
  await refresh();
  const evs = await getJson("/api/events?n=100");
  (evs || []).forEach(addEvent);
  if (!hash.has("nostream")) setTimeout(follow, 500);
  setInterval(refresh, REFRESH_MS);
}
start();
