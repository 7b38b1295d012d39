// VAE latent explorer: plain JavaScript over the service's own /v1 API. No build step, no dependencies.
//
// Every API call goes through `api()`, which turns the service's {"error", "error_type"} bodies (and network
// failures) into an ApiError that `showError` puts in the page's alert region: nothing is swallowed.
// Paths are relative ("v1/...") so the page also works behind a proxy that mounts the service under a prefix.
"use strict";

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------------------
// API access and errors
// ---------------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status, type) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

function apiKey() {
  return $("api-key").value.trim();
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(`${method} /${path}: the service did not answer (${err.message})`, 0, "network");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data && data.error ? data.error : text.slice(0, 300) || response.statusText;
    const type = data && data.error_type ? data.error_type : "http_error";
    if (response.status === 401) $("auth").open = true;
    throw new ApiError(`${method} /${path} → ${response.status} ${type}: ${message}`, response.status, type);
  }
  if (data === null) throw new ApiError(`${method} /${path}: the answer was not JSON`, response.status, "bad_json");
  return data;
}

// Errors are kept per source (a panel, or "page"): a later success in one panel never hides another's error.
const errors = new Map();

function renderErrors() {
  const lines = [...errors.values()];
  $("error-text").textContent = lines.join("\n");
  $("error").hidden = lines.length === 0;
}

function showError(err, source = "page") {
  const text = err instanceof ApiError ? err.message : `Error: ${err && err.message ? err.message : err}`;
  errors.set(source, text);
  renderErrors();
  if (!(err instanceof ApiError)) console.error(err);
}

function clearError(source) {
  if (source === undefined) errors.clear();
  else errors.delete(source);
  renderErrors();
}

// The footer names what is in flight, for people and for screen readers (it is a polite live region).
const busy = new Set();
function renderStatus() {
  $("status").textContent = busy.size ? `working: ${[...busy].join(", ")}…` : "";
}

// Each panel keeps a counter so a slow, older answer never overwrites a newer one.
const tickets = {};
function ticket(name) {
  tickets[name] = (tickets[name] || 0) + 1;
  const mine = tickets[name];
  return () => tickets[name] === mine;
}

// Run an async action for a panel: mark its section busy, report errors, ignore stale answers.
async function run(name, action, sectionId = name) {
  const current = ticket(name);
  const section = $(sectionId);
  section.setAttribute("aria-busy", "true");
  busy.add(name);
  renderStatus();
  try {
    await action(current);
    if (current()) clearError(name);
  } catch (err) {
    if (current()) showError(err, name);
  } finally {
    if (current()) {
      section.removeAttribute("aria-busy");
      busy.delete(name);
      renderStatus();
    }
  }
}

// Images come back as base64 PNG; accept them with or without a data: prefix.
function pngSrc(b64) {
  return b64.startsWith("data:") ? b64 : `data:image/png;base64,${b64}`;
}

function numberFrom(id, label, { integer = false } = {}) {
  const raw = $(id).value.trim();
  const value = Number(raw);
  if (raw === "" || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    throw new Error(`${label} must be ${integer ? "a whole number" : "a number"} (got "${raw}")`);
  }
  return value;
}

// ---------------------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------------------

const state = {
  models: [],
  model: null, // the selected entry of /v1/models
  input: null, // {src: data URL sent to the service, origin: "drawing" or a file name}
  posterior: null, // {mean, logVar} for state.input under state.model
  samples: [], // [{src, z}]
  ends: { a: null, b: null }, // {src, image?: data URL, z?: latent, model}
  frames: [],
  manifold: null, // {latents, size}
};

function modelName(m) {
  return m.name;
}

function is2d() {
  return state.model && state.model.latent_dim === 2;
}

function fmt(x, digits = 2) {
  return typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "–";
}

// /v1/models answers {default_model, models: [{name, version, ready, default, latent_dim, providers, error,
// manifest}]}; the manifest carries image, dataset, likelihood and metrics.
function manifestOf(m) {
  return m.manifest || m;
}

function refreshModels() {
  return run("models", loadModels);
}

async function loadModels() {
  const data = await api("GET", "v1/models");
  const list = Array.isArray(data) ? data : data.models || [];
  const usable = list.filter((m) => m.ready !== false);
  if (!usable.length) throw new Error("the service has no ready model to explore");
  state.models = usable;
  const select = $("model-select");
  select.replaceChildren(
    ...list.map((m) => {
      const opt = document.createElement("option");
      opt.value = modelName(m);
      opt.disabled = m.ready === false;
      const tail = m.ready === false ? ` (not ready: ${m.error || "loading"})` : m.default ? " (default)" : "";
      opt.textContent = `${m.name}${m.version ? ` v${m.version}` : ""} · latent ${m.latent_dim ?? "?"}${tail}`;
      return opt;
    }),
  );
  const wanted = new URLSearchParams(location.search).get("model");
  const chosen =
    usable.find((m) => modelName(m) === wanted) ||
    usable.find((m) => m.default || modelName(m) === data.default_model) ||
    usable[0];
  select.value = modelName(chosen);
  select.disabled = false;
  await selectModel(chosen);
}

function infoRow(dl, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  dl.append(dt, dd);
}

function imageSpec(m) {
  return manifestOf(m).image || { channels: 1, height: 28, width: 28 };
}

function renderModelInfo(m) {
  const man = manifestOf(m);
  const dl = $("model-info");
  dl.replaceChildren();
  const img = imageSpec(m);
  infoRow(dl, "latent size", String(m.latent_dim ?? man.latent_dim));
  infoRow(dl, "image", `${img.channels}×${img.height}×${img.width}`);
  if (man.likelihood) infoRow(dl, "likelihood", man.likelihood);
  const ds = man.dataset || {};
  if (ds.name) {
    const extra = ds.train_examples ? ` (${ds.train_examples.toLocaleString("en")} training images)` : "";
    infoRow(dl, "dataset", `${ds.name}${extra}`);
  }
  const metrics = man.metrics;
  if (metrics) {
    const parts = [`−ELBO ${fmt(metrics.neg_elbo)}`];
    if (metrics.iwae_nll != null) {
      parts.push(`IWAE NLL ${fmt(metrics.iwae_nll)}${metrics.iwae_k ? ` (k=${metrics.iwae_k})` : ""}`);
    }
    if (metrics.reconstruction != null) parts.push(`reconstruction ${fmt(metrics.reconstruction)}`);
    if (metrics.kl != null) parts.push(`KL ${fmt(metrics.kl)}`);
    if (metrics.active_units != null) parts.push(`${metrics.active_units} active units`);
    infoRow(dl, "test metrics (nats)", `${parts.join(" · ")}${metrics.split ? ` on ${metrics.split}` : ""}`);
  } else {
    infoRow(dl, "test metrics", "not measured");
  }
  const providers = (m.providers || []).map((p) => String(p).replace(/ExecutionProvider$/, ""));
  infoRow(dl, "providers", providers.length ? providers.join(", ") : "unknown");
  if (man.description) infoRow(dl, "about", man.description);
}

// Class-conditional sampling: models whose manifest has a `conditional` section list their class names, and
// /v1/sample takes one as `label`. The picker keeps the chosen class when the next model has it too.
function renderClassPicker(m) {
  const classes = (manifestOf(m).conditional || {}).classes || [];
  const select = $("label");
  const keep = select.value;
  const any = document.createElement("option");
  any.value = "";
  any.textContent = "any (prior)";
  const options = classes.map((name) => {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    return option;
  });
  select.replaceChildren(any, ...options);
  select.value = classes.includes(keep) ? keep : "";
  $("label-field").hidden = classes.length === 0;
  $("label-note").hidden = classes.length === 0;
  updateSampleHeading();
}

// Pixels: models that can draw images from p(x | z) (their /v1/models entry lists "sample" among
// pixels.choices) get a picker; its value goes with every request that returns decoded images, with the
// seed field's seed so that the same settings give the same pictures.
function renderPixelPicker(m) {
  const choices = (m.pixels || {}).choices || ["mean"];
  const select = $("pixels");
  if (!choices.includes(select.value)) select.value = "";
  const def = (m.pixels || {}).default || "mean";
  select.options[0].textContent = `model's default (${def === "sample" ? "drawn" : "mean"})`;
  $("pixels-field").hidden = !choices.includes("sample");
}

function pixelOptions() {
  const pixels = $("pixels-field").hidden ? "" : $("pixels").value;
  const out = pixels ? { pixels } : {};
  if (pixels !== "mean") out.seed = numberFrom("seed", "Seed", { integer: true });
  return out;
}

function updateSampleHeading() {
  const label = $("label").value;
  $("sample-heading").textContent = label ? `Samples of class “${label}”` : "Samples from the prior";
}

// Colour models: uploads go to the service as they are (it composites transparency onto the manifest's
// background and keeps the three channels); the drawing pad stays white-on-black grey, made for digits.
function renderImageKind(m) {
  const img = imageSpec(m);
  document.body.dataset.background = img.background || "black";
  $("rec-hint").textContent =
    img.channels === 3
      ? "A colour model: upload a PNG/JPEG (transparent parts become its " +
        `${img.background || "black"} background). The pad draws grey strokes on black, made for digit ` +
        "models, so drawings are far from what this model was trained on."
      : "Draw a digit in white on black (mouse, pen or finger), or upload a PNG/JPEG.";
}

async function selectModel(m) {
  state.model = m;
  renderModelInfo(m);
  renderClassPicker(m);
  renderPixelPicker(m);
  renderImageKind(m);
  const url = new URL(location.href);
  url.searchParams.set("model", modelName(m));
  history.replaceState(null, "", url);
  // Latents belong to one model: drop them; images stay and are re-encoded by the new model.
  state.posterior = null;
  state.samples = [];
  $("samples").replaceChildren();
  for (const key of ["a", "b"]) {
    const end = state.ends[key];
    if (end && !end.image) setEnd(key, null);
    else if (end) end.z = null;
  }
  clearFrames();
  updateManifoldPanel();
  if (state.input && state.input.origin === "drawing") {
    // The drawing is re-fitted to the new model's image size.
    const img = imageSpec(m);
    state.input.src = mnistLike(pad.canvas, img.height, img.width) || state.input.src;
  }
  const jobs = [sample()];
  if (state.input) jobs.push(reconstruct());
  else resetReconstruction();
  if (is2d()) jobs.push(loadManifold());
  await Promise.all(jobs);
}

// ---------------------------------------------------------------------------------------------------------
// Drawing pad
// ---------------------------------------------------------------------------------------------------------

const pad = {
  canvas: null,
  ctx: null,
  drawing: false,
  last: null,
};

function initPad() {
  const canvas = $("pad");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  pad.canvas = canvas;
  pad.ctx = ctx;
  clearPad();

  const point = (ev) => {
    const rect = canvas.getBoundingClientRect();
    return {
      x: ((ev.clientX - rect.left) * canvas.width) / rect.width,
      y: ((ev.clientY - rect.top) * canvas.height) / rect.height,
    };
  };
  const strokeTo = (p) => {
    ctx.beginPath();
    ctx.moveTo(pad.last.x, pad.last.y);
    ctx.lineTo(p.x, p.y);
    ctx.stroke();
    pad.last = p;
  };
  canvas.addEventListener("pointerdown", (ev) => {
    if (ev.button !== undefined && ev.button > 0) return;
    ev.preventDefault();
    canvas.setPointerCapture(ev.pointerId);
    pad.drawing = true;
    pad.last = point(ev);
    strokeTo({ x: pad.last.x + 0.01, y: pad.last.y }); // a tap leaves a dot
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!pad.drawing) return;
    ev.preventDefault();
    const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
    for (const e of events.length ? events : [ev]) strokeTo(point(e));
  });
  const end = (ev) => {
    if (!pad.drawing) return;
    pad.drawing = false;
    if (canvas.hasPointerCapture(ev.pointerId)) canvas.releasePointerCapture(ev.pointerId);
    useDrawing();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
}

function clearPad() {
  const { canvas, ctx } = pad;
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#fff";
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  // Roughly MNIST's stroke: about 2.5 pixels of 28 once the digit is scaled into its 20-pixel box.
  ctx.lineWidth = canvas.width / 13;
}

// MNIST's own preprocessing (LeCun et al.): the digit's bounding box scaled to fit 20x20, then placed so its
// centre of mass sits at the centre of the 28x28 image. Doing the same here makes drawings look like the data
// the model was trained on; the service then sees an image already at the model's size.
function mnistLike(source, height, width) {
  const { width: sw, height: sh } = source;
  const pixels = source.getContext("2d").getImageData(0, 0, sw, sh).data;
  let top = sh, left = sw, bottom = -1, right = -1;
  for (let y = 0; y < sh; y++) {
    for (let x = 0; x < sw; x++) {
      if (pixels[(y * sw + x) * 4] > 20) {
        if (y < top) top = y;
        if (y > bottom) bottom = y;
        if (x < left) left = x;
        if (x > right) right = x;
      }
    }
  }
  if (bottom < 0) return null;
  const boxW = right - left + 1, boxH = bottom - top + 1;
  // A small drawing is enlarged at most twice its drawn size, so a dot stays a dot rather than a disc.
  const fit = (Math.min(height, width) * (20 / 28)) / Math.max(boxW, boxH);
  const scale = Math.min(fit, (2 * Math.min(height, width)) / Math.min(sw, sh));
  const dw = boxW * scale, dh = boxH * scale;

  const first = document.createElement("canvas");
  first.width = width;
  first.height = height;
  const fctx = first.getContext("2d", { willReadFrequently: true });
  fctx.fillStyle = "#000";
  fctx.fillRect(0, 0, width, height);
  fctx.imageSmoothingQuality = "high";
  fctx.drawImage(source, left, top, boxW, boxH, (width - dw) / 2, (height - dh) / 2, dw, dh);

  const small = fctx.getImageData(0, 0, width, height).data;
  let mass = 0, mx = 0, my = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const v = small[(y * width + x) * 4];
      mass += v;
      mx += v * (x + 0.5);
      my += v * (y + 0.5);
    }
  }
  const shiftX = Math.round(width / 2 - mx / mass), shiftY = Math.round(height / 2 - my / mass);
  const out = document.createElement("canvas");
  out.width = width;
  out.height = height;
  const octx = out.getContext("2d");
  octx.fillStyle = "#000";
  octx.fillRect(0, 0, width, height);
  octx.drawImage(first, shiftX, shiftY);
  return out.toDataURL("image/png");
}

function useDrawing() {
  if (!state.model) return;
  const img = imageSpec(state.model);
  const src = mnistLike(pad.canvas, img.height, img.width);
  if (!src) {
    showError(new Error("the drawing pad is empty: draw a digit first"), "reconstruct");
    return;
  }
  state.input = { src, origin: "drawing" };
  reconstruct();
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

// Inversion happens on a canvas in the browser (a photo of ink on paper -> MNIST's light-on-dark); without it
// the file goes to the service untouched, so the service's own image preparation decides what the model sees.
async function invertImage(dataUrl) {
  const img = new Image();
  await new Promise((resolve, reject) => {
    img.onload = resolve;
    img.onerror = () => reject(new Error("the browser could not decode this image to invert it"));
    img.src = dataUrl;
  });
  const scale = Math.min(1, 1024 / Math.max(img.naturalWidth, img.naturalHeight));
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(img.naturalWidth * scale));
  canvas.height = Math.max(1, Math.round(img.naturalHeight * scale));
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  ctx.globalCompositeOperation = "difference";
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  return canvas.toDataURL("image/png");
}

async function onUpload() {
  const file = $("upload").files[0];
  if (!file) return;
  try {
    let src = await readFile(file);
    if ($("upload-invert").checked) src = await invertImage(src);
    state.input = { src, origin: file.name };
    await reconstruct();
  } catch (err) {
    showError(err, "reconstruct");
  }
}

// ---------------------------------------------------------------------------------------------------------
// Reconstruction and the posterior chart
// ---------------------------------------------------------------------------------------------------------

function reconstruct() {
  return run("reconstruct", async (current) => {
    if (!state.input) throw new Error("draw a digit or upload an image first");
    const input = state.input;
    let data;
    try {
      data = await api("POST", "v1/reconstruct", {
        images: [input.src],
        model: modelName(state.model),
        ...pixelOptions(),
      });
    } catch (err) {
      if (current()) {
        resetReconstruction();
        // An input the service refuses stays refused: do not resend it when the model changes.
        if (err instanceof ApiError && err.status >= 400 && err.status < 500) state.input = null;
      }
      throw err;
    }
    if (!current()) return;
    $("rec-input").src = input.src;
    $("rec-input").alt = `Model input (${input.origin})`;
    const out = $("rec-output");
    out.src = pngSrc(data.images[0]);
    out.alt = `Reconstruction of the ${input.origin} by ${state.model.name}`;
    $("rec-score").value = fmt(data.scores[0], 1);
    const mse = Array.isArray(data.mse) ? ` · MSE ${fmt(data.mse[0], 4)}` : "";
    // Under the discretized logistic the score is a code length of the 8-bit image: also shown per dimension.
    const spec = imageSpec(state.model);
    const dims = spec.channels * spec.height * spec.width;
    const bits = manifestOf(state.model).likelihood === "discretized_logistic" && Number.isFinite(data.scores[0])
      ? ` · ${fmt(data.scores[0] / (dims * Math.LN2), 2)} bits/dim`
      : "";
    // The score is a likelihood, not a novelty test: the conformal p-value (docs/novelty.md) is shown beside it.
    const p = Array.isArray(data.p_values) ? data.p_values[0] : null;
    const novelty = p === null || p === undefined
      ? " · novelty p-value: no calibration file"
      : ` · novelty p = ${fmt(p, 3)}${data.novel && data.novel[0] ? ` (novel at α = ${data.alpha})` : ""}`;
    $("score-unit").textContent = `nats (−ELBO)${bits}${mse}${novelty}`;
    state.posterior = { mean: data.mean ? data.mean[0] : null, logVar: data.log_var ? data.log_var[0] : null };
    renderPosterior(state.posterior);
    $("rec-to-a").disabled = false;
    $("rec-to-b").disabled = false;
  });
}

function resetReconstruction() {
  for (const id of ["rec-input", "rec-output"]) $(id).removeAttribute("src");
  $("rec-input").alt = "Model input: nothing yet";
  $("rec-output").alt = "Reconstruction: nothing yet";
  $("rec-score").value = "–";
  $("score-unit").textContent = "";
  $("rec-to-a").disabled = true;
  $("rec-to-b").disabled = true;
  state.posterior = null;
  renderPosterior(null);
}

function renderPosterior(post) {
  const svg = $("latent-chart");
  const tbody = $("latent-table");
  svg.replaceChildren();
  tbody.replaceChildren();
  if (!post || !post.mean) return;
  const mean = post.mean;
  const sigma = post.logVar ? post.logVar.map((lv) => Math.exp(lv / 2)) : mean.map(() => 0);
  const reach = Math.max(3, ...mean.map((m, i) => Math.abs(m) + sigma[i]));
  const rowH = mean.length > 32 ? 6 : 14;
  const labelled = rowH >= 10; // room for "z3" on the left and "0.41 ± 0.07" on the right
  const labelW = labelled ? 28 : 6, valueW = labelled ? 74 : 6;
  const W = 360, plotW = W - labelW - valueW, H = mean.length * rowH + 16;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const X = (v) => labelW + ((v + reach) / (2 * reach)) * plotW;
  const ns = "http://www.w3.org/2000/svg";
  const el = (name, attrs, text) => {
    const node = document.createElementNS(ns, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  el("rect", { x: X(-1), y: 0, width: X(1) - X(-1), height: H - 16, class: "prior" });
  el("line", { x1: X(0), x2: X(0), y1: 0, y2: H - 16, class: "axis" });
  for (const tick of [-reach, -1, 0, 1, reach]) {
    el("text", { x: X(tick), y: H - 4, class: "tick", "text-anchor": "middle" }, fmt(tick, tick % 1 ? 1 : 0));
  }
  mean.forEach((m, i) => {
    const cy = i * rowH + rowH / 2;
    if (labelled) {
      el("text", { x: labelW - 4, y: cy + 3, class: "tick", "text-anchor": "end" }, `z${i + 1}`);
      el("text", { x: W - 2, y: cy + 3, class: "tick", "text-anchor": "end" }, `${fmt(m)} ± ${fmt(sigma[i])}`);
    }
    el("line", { x1: X(m - sigma[i]), x2: X(m + sigma[i]), y1: cy, y2: cy, class: "sd" });
    el("circle", { cx: X(m), cy, r: labelled ? 3 : 2, class: "mean" });
    const tr = document.createElement("tr");
    for (const v of [`z${i + 1}`, fmt(m, 3), fmt(sigma[i], 3)]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    tbody.append(tr);
  });
}

// ---------------------------------------------------------------------------------------------------------
// Samples
// ---------------------------------------------------------------------------------------------------------

function sample() {
  return run("sample", async (current) => {
    if (!state.model) return;
    const body = {
      n: numberFrom("count", "Count", { integer: true }),
      seed: numberFrom("seed", "Seed", { integer: true }),
      temperature: numberFrom("temperature", "Temperature"),
      model: modelName(state.model),
      ...pixelOptions(),
    };
    const label = $("label").value;
    if (label) body.label = label;
    const data = await api("POST", "v1/sample", body);
    if (!current()) return;
    state.samples = data.images.map((b64, i) => ({ src: pngSrc(b64), z: data.latents ? data.latents[i] : null }));
    const grid = $("samples");
    grid.replaceChildren(
      ...state.samples.map((s, i) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "tile";
        button.setAttribute("aria-label", `Sample ${i + 1}: use as interpolation endpoint`);
        const img = document.createElement("img");
        img.className = "pix";
        img.src = s.src;
        img.alt = `Sample ${i + 1} (seed ${body.seed}${label ? `, class ${label}` : ""})`;
        button.append(img);
        button.addEventListener("click", () => pickSample(i));
        return button;
      }),
    );
    grid.dataset.seed = String(body.seed);
    grid.dataset.model = body.model;
    grid.dataset.label = label;
    // An interpolation to look at right away: the first two samples, until the user picks endpoints.
    if (!state.ends.a && !state.ends.b && state.samples.length >= 2 && state.samples[0].z) {
      setEnd("a", endFromSample(0));
      setEnd("b", endFromSample(1));
      interpolate();
    }
  });
}

function newSeed() {
  const buf = new Uint32Array(1);
  crypto.getRandomValues(buf);
  $("seed").value = String(buf[0] % 2147483647);
  sample();
}

// ---------------------------------------------------------------------------------------------------------
// Interpolation
// ---------------------------------------------------------------------------------------------------------

function endFromSample(i) {
  const s = state.samples[i];
  return { src: s.src, z: s.z, label: `sample ${i + 1}`, model: modelName(state.model) };
}

function setEnd(key, end) {
  state.ends[key] = end;
  const img = $(`end-${key}`);
  if (end) {
    img.src = end.src;
    img.alt = `Endpoint ${key.toUpperCase()}: ${end.label}`;
    $(`end-${key}-kind`).textContent = `(${end.label})`;
  } else {
    img.removeAttribute("src");
    img.alt = `Endpoint ${key.toUpperCase()}: not set`;
    $(`end-${key}-kind`).textContent = "";
  }
}

function pickSample(i) {
  if (!state.samples[i]) return;
  const key = $("pick-b").checked ? "b" : "a";
  setEnd(key, endFromSample(i));
  $(key === "a" ? "pick-b" : "pick-a").checked = true;
  if (state.ends.a && state.ends.b) interpolate();
}

function pickInput(key) {
  if (!state.input) return;
  const z = state.posterior && state.posterior.mean;
  setEnd(key, {
    src: $("rec-input").src,
    image: state.input.src,
    z,
    label: state.input.origin,
    model: modelName(state.model),
  });
  if (state.ends.a && state.ends.b) interpolate();
}

// Latent of an endpoint under the current model: its own, or the posterior mean from /v1/encode.
async function latentOf(end) {
  if (end.z && end.model === modelName(state.model)) return end.z;
  const data = await api("POST", "v1/encode", { images: [end.image], model: modelName(state.model) });
  end.z = data.mean[0];
  end.model = modelName(state.model);
  return end.z;
}

function clearFrames() {
  state.frames = [];
  $("filmstrip").replaceChildren();
  const slider = $("frame-slider");
  slider.max = "0";
  slider.value = "0";
  slider.disabled = true;
  $("frame").removeAttribute("src");
  $("frame").alt = "Interpolation frame: nothing yet";
  $("frame-label").value = "–";
}

function interpolate() {
  return run("interpolate", async (current) => {
    const { a, b } = state.ends;
    if (!a || !b) throw new Error("set both endpoints first: click samples, or use a drawing/upload as A and B");
    const method = $("method-slerp").checked ? "slerp" : "lerp";
    const body = {
      steps: numberFrom("steps", "Steps", { integer: true }),
      method,
      model: modelName(state.model),
      ...pixelOptions(),
    };
    // Two images go to the service as images (it encodes them); anything else as latents.
    if (a.image && b.image) body.images = [a.image, b.image];
    else body.latents = [await latentOf(a), await latentOf(b)];
    const data = await api("POST", "v1/interpolate", body);
    if (!current()) return;
    state.frames = data.images.map((b64, i) => ({ src: pngSrc(b64), z: data.latents ? data.latents[i] : null }));
    const slider = $("frame-slider");
    slider.max = String(state.frames.length - 1);
    slider.disabled = false;
    $("filmstrip").replaceChildren(
      ...state.frames.map((f, i) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "tile";
        button.setAttribute("aria-label", `Show frame ${i + 1}`);
        const img = document.createElement("img");
        img.className = "pix";
        img.src = f.src;
        img.alt = "";
        button.append(img);
        button.addEventListener("click", () => {
          slider.value = String(i);
          showFrame(i);
        });
        return button;
      }),
    );
    slider.value = String(Math.floor((state.frames.length - 1) / 2));
    showFrame(Number(slider.value));
    const strip = $("filmstrip");
    strip.dataset.method = method;
    strip.dataset.endpoints = body.images ? "images" : "latents";
  });
}

function showFrame(i) {
  const f = state.frames[i];
  if (!f) return;
  const n = state.frames.length;
  const img = $("frame");
  img.src = f.src;
  img.alt = `Interpolation frame ${i + 1} of ${n}`;
  img.dataset.index = String(i);
  $("frame-label").value = `${i + 1} / ${n} (t = ${fmt(n > 1 ? i / (n - 1) : 0)})`;
  for (const [j, tile] of [...$("filmstrip").children].entries()) {
    tile.classList.toggle("current", j === i);
    tile.setAttribute("aria-pressed", String(j === i));
  }
}

// ---------------------------------------------------------------------------------------------------------
// The 2-D manifold
// ---------------------------------------------------------------------------------------------------------

function updateManifoldPanel() {
  const ok = is2d();
  for (const id of ["manifold-size", "manifold-run", "z1", "z2", "decode-run"]) $(id).disabled = !ok;
  $("manifold").classList.toggle("inactive", !ok);
  const note = $("manifold-note");
  if (ok) {
    note.textContent =
      "Decoded images over a grid of latents spaced by the inverse Gaussian CDF (Kingma and Welling, fig. 4). " +
      "Click anywhere on the grid to decode that point.";
  } else {
    const twoD = state.models.filter((m) => m.latent_dim === 2).map((m) => m.name);
    note.textContent =
      `${state.model ? state.model.name : "This model"} has a ${state.model ? state.model.latent_dim : "?"}-D ` +
      `latent; the manifold needs a 2-D one${twoD.length ? ` (pick ${twoD.join(" or ")})` : ""}.`;
    const img = $("manifold-img");
    img.removeAttribute("src");
    img.alt = "Latent manifold grid: needs a 2-D model";
    $("manifold-marker").hidden = true;
    state.manifold = null;
  }
}

function loadManifold() {
  return run("manifold", async (current) => {
    if (!is2d()) return;
    const size = numberFrom("manifold-size", "Grid size", { integer: true });
    const query = new URLSearchParams({ model: modelName(state.model), size: String(size) });
    const data = await api("GET", `v1/manifold?${query}`);
    if (!current()) return;
    state.manifold = { latents: data.latents, size: data.size || size };
    const img = $("manifold-img");
    img.src = pngSrc(data.image);
    img.alt = `Latent manifold of ${state.model.name}: a ${state.manifold.size}×${state.manifold.size} grid`;
    $("manifold-marker").hidden = true;
  });
}

// A click position -> latent. The grid's latents are row-major, rows from high to low z2; between cell centres
// the latent is interpolated linearly, so any point of the picture decodes, not just the cell centres.
// The picture may have padding between tiles: the tile pitch is derived from the image's natural width.
function latentAt(img, clientX, clientY) {
  const { latents, size } = state.manifold;
  const rect = img.getBoundingClientRect();
  const spec = imageSpec(state.model);
  const fx = ((clientX - rect.left) / rect.width) * img.naturalWidth;
  const fy = ((clientY - rect.top) / rect.height) * img.naturalHeight;
  const padX = Math.max(0, (img.naturalWidth - size * spec.width) / (size + 1));
  const padY = Math.max(0, (img.naturalHeight - size * spec.height) / (size + 1));
  const clamp = (v) => Math.min(size - 1, Math.max(0, v));
  const col = clamp((fx - padX - spec.width / 2) / (spec.width + padX));
  const row = clamp((fy - padY - spec.height / 2) / (spec.height + padY));
  const lerpAxis = (pos, at) => {
    const lo = Math.floor(pos), hi = Math.min(size - 1, lo + 1), t = pos - lo;
    return at(lo) * (1 - t) + at(hi) * t;
  };
  const z1 = lerpAxis(col, (c) => latents[c][0]);
  const z2 = lerpAxis(row, (r) => latents[r * size][1]);
  return [z1, z2];
}

function onManifoldClick(ev) {
  const img = $("manifold-img");
  if (!state.manifold || !img.naturalWidth) return;
  const [z1, z2] = latentAt(img, ev.clientX, ev.clientY);
  $("z1").value = z1.toFixed(3);
  $("z2").value = z2.toFixed(3);
  const rect = img.getBoundingClientRect();
  const wrap = $("manifold-wrap").getBoundingClientRect();
  const marker = $("manifold-marker");
  marker.style.left = `${ev.clientX - wrap.left}px`;
  marker.style.top = `${ev.clientY - wrap.top}px`;
  marker.hidden = !(ev.clientX >= rect.left && ev.clientX <= rect.right);
  decodePoint();
}

function decodePoint() {
  return run("decode", async (current) => {
    if (!is2d()) return;
    const z = [numberFrom("z1", "z₁"), numberFrom("z2", "z₂")];
    const data = await api("POST", "v1/decode", { latents: [z], model: modelName(state.model) });
    if (!current()) return;
    const img = $("decoded");
    img.src = pngSrc(data.images[0]);
    img.alt = `Decoded latent z = (${fmt(z[0])}, ${fmt(z[1])})`;
    $("decoded-caption").textContent = `z = (${fmt(z[0])}, ${fmt(z[1])})`;
  }, "decode-form");
}

// ---------------------------------------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------------------------------------

function init() {
  $("api-key").value = sessionStorage.getItem("vae-api-key") || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("vae-api-key", apiKey());
    refreshModels();
  });
  $("error-dismiss").addEventListener("click", () => clearError());

  initPad();
  $("pad-clear").addEventListener("click", () => {
    clearPad();
    state.input = null;
    resetReconstruction();
  });
  $("rec-run").addEventListener("click", () => {
    if (state.input && state.input.origin !== "drawing") reconstruct();
    else useDrawing();
  });
  $("upload").addEventListener("change", onUpload);
  $("rec-to-a").addEventListener("click", () => pickInput("a"));
  $("rec-to-b").addEventListener("click", () => pickInput("b"));

  $("model-select").addEventListener("change", (ev) => {
    const m = state.models.find((x) => modelName(x) === ev.target.value);
    if (m) selectModel(m).catch((err) => showError(err));
  });

  $("sample-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sample();
  });
  $("seed").addEventListener("change", sample);
  $("temperature").addEventListener("change", sample);
  $("pixels").addEventListener("change", () => {
    sample();
    if (state.ends.a && state.ends.b) interpolate();
  });
  $("label").addEventListener("change", () => {
    updateSampleHeading();
    sample();
  });
  $("new-seed").addEventListener("click", newSeed);

  $("interp-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    interpolate();
  });
  for (const id of ["method-lerp", "method-slerp"]) {
    $(id).addEventListener("change", () => state.ends.a && state.ends.b && interpolate());
  }
  $("frame-slider").addEventListener("input", (ev) => showFrame(Number(ev.target.value)));

  $("manifold-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    loadManifold();
  });
  $("manifold-img").addEventListener("click", onManifoldClick);
  $("decode-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    decodePoint();
  });

  refreshModels();
}

init();
