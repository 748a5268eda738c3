// loopwm play: the page. It draws what the server sends and sends back actions and settings;
// every value it sends is checked again by the server.
"use strict";

const $ = (id) => document.getElementById(id);
const HISTORY = 240; // steps kept in the strip chart
const state = {
  hello: null, frames: 0, fps: 0, lastFrame: null, errors: [], history: [],
  frameTimes: [], pressed: new Set(), digit: null, socket: null,
};
window.loopwmPlay = state; // read by the end-to-end test, handy in the console too

function send(message) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify(message));
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws`);
  state.socket = socket;
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "hello") onHello(message);
    else if (message.type === "frame") onFrame(message);
    else if (message.type === "settings") showSettings(message.settings);
    else if (message.type === "error") onError(message.error);
  };
  socket.onclose = (event) => {
    $("status").textContent = `disconnected (${event.code}${event.reason ? ": " + event.reason : ""}); reload to reconnect`;
  };
}

function onError(text) {
  state.errors.push(text);
  $("error-line").textContent = text;
}

// ----- controls -----
function fillSelect(select, options) {
  select.replaceChildren(...options.map((name) => {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    return option;
  }));
}

function onHello(hello) {
  state.hello = hello;
  const model = hello.model;
  $("world").textContent = `${hello.env_id} · ${hello.run} · ${model.kind} model, ${model.params.toLocaleString()} parameters`;
  fillSelect($("policy"), hello.policies);
  fillSelect($("exit"), hello.exits);
  $("depth").max = hello.depth_max;
  $("rate").max = hello.limits.max_rate;
  for (const id of ["exit", "threshold", "depth"]) $(id).disabled = !model.looped;
  showSettings(hello.settings);
  const a = hello.action;
  $("keys").textContent = a.kind === "discrete"
    ? `keys: digits 0-${Math.min(a.n, 10) - 1} choose an action; arrows ← → ↑ ↓ are actions ${a.start}..${a.start + Math.min(a.n, 4) - 1}; with no key held the action is ${a.start}`
    : "keys: arrows or WASD push (← → along the first action axis, ↑ ↓ along the second); space: pause";
  // worlds whose states cannot be drawn: the imagined view compares observation values as bars
  // (the real view too, unless the environment renders its own frames)
  const bars = !hello.drawn;
  $("imagined").hidden = bars;
  $("imagined-bars").hidden = !bars;
  $("real-bars").hidden = !bars;
}

function showSettings(s) {
  $("policy").value = s.policy;
  $("exit").value = s.exit;
  $("threshold").value = s.threshold;
  $("depth").value = s.depth;
  $("depth-value").textContent = s.exit === "fixed" ? `${s.depth} (fixed)` : `at most ${s.depth}`;
  $("rate").value = Math.round(s.rate);
  $("rate-value").textContent = Math.round(s.rate);
  $("sync-every").value = s.sync_every;
  $("run").textContent = s.running ? "pause" : "run";
  state.settings = s;
}

function setting(name, value) { send({ type: "settings", [name]: value }); }

$("policy").onchange = () => setting("policy", $("policy").value);
$("exit").onchange = () => setting("exit", $("exit").value);
$("threshold").onchange = () => { const v = Number($("threshold").value); if (Number.isFinite(v)) setting("threshold", v); };
$("depth").oninput = () => setting("depth", Number($("depth").value));
$("rate").oninput = () => setting("rate", Number($("rate").value));
$("sync-every").onchange = () => setting("sync_every", Math.max(0, Math.round(Number($("sync-every").value) || 0)));
$("run").onclick = () => setting("running", !(state.settings && state.settings.running));
$("step").onclick = () => send({ type: "step" });
$("reset").onclick = () => send({ type: "reset" });
$("resync").onclick = () => send({ type: "resync" });

// ----- keyboard -----
const KEYS = { ArrowLeft: "left", a: "left", A: "left", ArrowRight: "right", d: "right", D: "right",
               ArrowUp: "up", w: "up", W: "up", ArrowDown: "down", s: "down", S: "down" };

function keyAction() {
  const a = state.hello.action, p = state.pressed;
  if (a.kind === "discrete") {
    if (state.digit !== null && state.digit < a.n) return a.start + state.digit;
    const order = ["left", "right", "up", "down"];
    for (let i = 0; i < Math.min(a.n, 4); i++) if (p.has(order[i])) return a.start + i;
    return a.start;
  }
  const axes = [(p.has("right") ? 1 : 0) - (p.has("left") ? 1 : 0), (p.has("up") ? 1 : 0) - (p.has("down") ? 1 : 0)];
  return Array.from({ length: a.dim }, (_, i) => {
    const v = axes[i] || 0;
    return v > 0 ? a.high[i] : v < 0 ? a.low[i] : Math.min(Math.max(0, a.low[i]), a.high[i]);
  });
}

function onKey(event, down) {
  if (!state.hello || event.target.tagName === "INPUT" || event.target.tagName === "SELECT") return;
  if (down && event.key === " ") { setting("running", !state.settings.running); event.preventDefault(); return; }
  const name = KEYS[event.key];
  const digit = /^[0-9]$/.test(event.key) ? Number(event.key) : null;
  if (!name && digit === null) return;
  event.preventDefault(); // arrows would scroll the page
  if (name) down ? state.pressed.add(name) : state.pressed.delete(name);
  if (digit !== null) state.digit = down ? digit : null;
  send({ type: "action", action: keyAction() });
}
document.addEventListener("keydown", (e) => { if (!e.repeat) onKey(e, true); });
document.addEventListener("keyup", (e) => onKey(e, false));
window.addEventListener("blur", () => { state.pressed.clear(); state.digit = null; if (state.hello) send({ type: "action", action: keyAction() }); });

// ----- frames -----
const fmt = (v, digits = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

function onFrame(f) {
  state.frames += 1;
  state.lastFrame = f;
  const now = performance.now();
  state.frameTimes.push(now);
  while (state.frameTimes.length && now - state.frameTimes[0] > 1000) state.frameTimes.shift();
  state.fps = state.frameTimes.length > 1 ? (state.frameTimes.length - 1) * 1000 / (now - state.frameTimes[0]) : 0;
  if (f.real) $("real").src = f.real;
  if (f.imagined) $("imagined").src = f.imagined;
  if (f.real_values) {
    drawBars($("real-bars"), f.real_values, f.real_values);
    drawBars($("imagined-bars"), f.imagined_values, f.real_values);
    $("real-bars").hidden = !!f.real; // the real world draws itself when it renders
    $("real").hidden = !f.real;
  }
  $("fps").textContent = fmt(state.fps, 1);
  $("sps").textContent = fmt(f.imagined_steps_per_second, 0);
  $("error").textContent = fmt(f.error, 3);
  $("iterations").textContent = f.iterations ?? "–";
  $("token-iterations").textContent = fmt(f.token_iterations);
  $("solver").textContent = f.solver_iterations ?? "–";
  $("contacts").textContent = f.contacts ?? "–";
  $("t").textContent = f.t;
  $("status").textContent = f.episode_end ? `episode ended after ${f.episode_end.steps} steps (return ${fmt(f.episode_end.return)}); new episode` : "";
  if (f.settings) showSettings(f.settings);
  if (f.iterations !== undefined) {
    state.history.push({ iterations: f.iterations, tokens: f.token_iterations, solver: f.solver_iterations, contacts: f.contacts });
    if (state.history.length > HISTORY) state.history.shift();
    drawChart();
  }
}

function drawBars(canvas, values, reference) {
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  g.fillStyle = "#111"; g.fillRect(0, 0, w, h);
  const scale = Math.max(1e-6, ...reference.map(Math.abs), ...values.map(Math.abs));
  const bw = w / values.length;
  values.forEach((v, i) => {
    const y = (v / scale) * (h / 2 - 4);
    g.fillStyle = "#5aaaff";
    g.fillRect(i * bw + 1, h / 2 - Math.max(y, 0), Math.max(bw - 2, 1), Math.abs(y));
  });
  g.fillStyle = "#3c4152"; g.fillRect(0, h / 2, w, 1);
}

function drawChart() {
  const canvas = $("chart"), g = canvas.getContext("2d"), w = canvas.width, h = canvas.height, pad = 6;
  g.fillStyle = "#111"; g.fillRect(0, 0, w, h);
  const hist = state.history;
  const left = Math.max(2, ...hist.map((s) => s.iterations));
  const right = Math.max(2, ...hist.map((s) => Math.max(s.solver ?? 0, s.contacts ?? 0)));
  const x = (i) => w - (hist.length - 1 - i) * (w / (HISTORY - 1));
  const line = (key, top, colour) => {
    g.strokeStyle = colour; g.lineWidth = 2; g.beginPath();
    let started = false;
    hist.forEach((s, i) => {
      if (s[key] === null || s[key] === undefined) return;
      const y = h - pad - (s[key] / top) * (h - 2 * pad);
      started ? g.lineTo(x(i), y) : g.moveTo(x(i), y);
      started = true;
    });
    g.stroke();
  };
  line("solver", right, "#5aaaff");
  line("contacts", right, "#78dc78");
  line("tokens", left, "#ffd580");
  line("iterations", left, "#ff9628");
  g.fillStyle = "#9aa0b4"; g.font = "12px system-ui";
  g.fillText(`${left} iterations`, 6, 14);
  g.textAlign = "right";
  g.fillText(`${right} sweeps / contacts`, w - 6, 14);
  g.textAlign = "left";
}

connect();
