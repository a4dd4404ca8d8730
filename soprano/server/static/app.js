// Browser client for /v1/stream: sends text, plays binary PCM frames gaplessly with Web Audio
// (each frame is scheduled to start exactly where the previous one ends), draws the waveform,
// and shows time to first audio and x real time. window.sopranoStats is read by the browser
// test to check frames arrived and were scheduled.
// A server with API keys serves this page with <body data-api-key="required">: the page asks
// for the key, keeps it in sessionStorage, checks it with a Bearer fetch of /v1/models and
// passes it as ?api_key= on the WebSocket URL (browsers cannot set WebSocket headers).
"use strict";
const $ = (id) => document.getElementById(id);
const stats = (window.sopranoStats = { frames: 0, scheduled: 0, errors: [], done: 0 });
let ws = null, ctx = null, playHead = 0, sentAt = 0, firstAt = 0, audioSeconds = 0;
let recent = new Float32Array(0);

const keyNeeded = document.body.dataset.apiKey === "required";
const KEY_ITEM = "soprano-api-key";

function askForKey(message) {
  $("key-form").hidden = false;
  $("api-key").focus();
  setStatus(message);
}

async function connect() {
  const key = sessionStorage.getItem(KEY_ITEM) || "";
  let query = "";
  if (keyNeeded) {
    if (!key) return askForKey("this server needs an API key");
    const r = await fetch("/v1/models", { headers: { Authorization: `Bearer ${key}` } });
    if (r.status === 401) {
      showError("API key refused");
      return askForKey("enter a valid API key");
    }
    $("key-form").hidden = true;
    query = `?api_key=${encodeURIComponent(key)}`;
  }
  ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/stream${query}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => setStatus("connected");
  ws.onclose = () => { setStatus("disconnected – reconnecting"); setTimeout(connect, 1000); };
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onJson(JSON.parse(ev.data)) : onFrame(ev.data));
}

function setStatus(text) { $("status").textContent = text; }

function showError(message) {
  stats.errors.push(message);
  $("error").textContent = message;
  $("error").hidden = false;
}

function onJson(msg) {
  if (msg.type === "ready") setStatus(`ready (session ${msg.session_id.slice(0, 8)})`);
  else if (msg.type === "error") showError(msg.message);
  else if (msg.type === "done") { stats.done += 1; setStatus("done"); }
}

function onFrame(buf) {
  const view = new DataView(buf);
  const n = view.getUint32(0, false);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  const pcm = new Int16Array(buf.slice(4 + n));
  const samples = Float32Array.from(pcm, (v) => v / 32768);
  stats.frames += 1;
  $("frames").textContent = stats.frames;
  if (!firstAt) {
    firstAt = performance.now();
    $("ttfa").textContent = `${Math.round(firstAt - sentAt)} ms`;
  }
  audioSeconds += samples.length / header.sample_rate;
  $("xrt").textContent = `${(audioSeconds / ((performance.now() - sentAt) / 1000)).toFixed(2)}x`;
  schedule(samples, header.sample_rate);
  drawWave(samples);
}

function schedule(samples, rate) {
  const buffer = ctx.createBuffer(1, samples.length, rate);
  buffer.copyToChannel(samples, 0);
  const src = ctx.createBufferSource();
  src.buffer = buffer;
  src.connect(ctx.destination);
  playHead = Math.max(playHead, ctx.currentTime + 0.05);
  src.start(playHead);
  playHead += buffer.duration;
  stats.scheduled += 1;
}

function drawWave(samples) {
  const keep = 32000 * 2;
  const merged = new Float32Array(Math.min(keep, recent.length + samples.length));
  const tail = recent.subarray(Math.max(0, recent.length - (merged.length - samples.length)));
  merged.set(tail);
  merged.set(samples.subarray(Math.max(0, samples.length - merged.length)), tail.length);
  recent = merged;
  const c = $("wave"), g = c.getContext("2d");
  g.fillStyle = "#111"; g.fillRect(0, 0, c.width, c.height);
  g.strokeStyle = "#30d158"; g.beginPath();
  const step = Math.max(1, Math.floor(recent.length / c.width));
  for (let x = 0; x < c.width; x++) {
    let peak = 0;
    for (let i = x * step; i < (x + 1) * step && i < recent.length; i++) peak = Math.max(peak, Math.abs(recent[i]));
    const h = peak * c.height / 2;
    g.moveTo(x + 0.5, c.height / 2 - h); g.lineTo(x + 0.5, c.height / 2 + h);
  }
  g.stroke();
}

function startUtterance() {
  ctx = ctx || new AudioContext();
  if (ctx.state === "suspended") ctx.resume();
  $("error").hidden = true;
  sentAt = performance.now(); firstAt = 0; audioSeconds = 0;
  const config = { type: "config", speed: Number($("speed").value) };
  if ($("voice").value) config.voice_path = $("voice").value;
  ws.send(JSON.stringify(config));
}

$("speak").onclick = () => {
  startUtterance();
  ws.send(JSON.stringify({ type: "text", text: $("text").value }));
  ws.send(JSON.stringify({ type: "flush" }));
  setStatus("speaking…");
};
$("key-form").onsubmit = (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY_ITEM, $("api-key").value.trim());
  $("error").hidden = true;
  if (ws) { ws.onclose = null; ws.close(); ws = null; }
  connect();
};
$("stop").onclick = () => { ws.send(JSON.stringify({ type: "stop" })); playHead = 0; if (ctx) ctx.suspend().then(() => ctx.resume()); };
$("speed").oninput = () => ($("speed-value").textContent = Number($("speed").value).toFixed(1));

// Live typing: each new word goes out as it is typed; Enter flushes the rest.
let sentLength = 0;
$("text").addEventListener("input", () => {
  if (!$("live").checked) return;
  const value = $("text").value;
  if (value.length < sentLength) sentLength = value.length;
  const lastSpace = value.lastIndexOf(" ");
  if (lastSpace + 1 > sentLength) {
    if (sentLength === 0) startUtterance();
    ws.send(JSON.stringify({ type: "text", text: value.slice(sentLength, lastSpace + 1) }));
    sentLength = lastSpace + 1;
  }
});
$("text").addEventListener("keydown", (ev) => {
  if (!$("live").checked || ev.key !== "Enter") return;
  ev.preventDefault();
  const rest = $("text").value.slice(sentLength);
  if (rest.trim()) ws.send(JSON.stringify({ type: "text", text: rest }));
  ws.send(JSON.stringify({ type: "flush" }));
  sentLength = 0;
  $("text").value = "";
});

connect();
