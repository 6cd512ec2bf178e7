// dermae web page: upload one image, show the model's output. No external code.
"use strict";

const DESCRIPTIONS = {
  akiec: "actinic keratosis / intraepithelial carcinoma",
  bcc: "basal cell carcinoma",
  bkl: "benign keratosis-like lesion",
  df: "dermatofibroma",
  mel: "melanoma",
  nv: "melanocytic nevus",
  vasc: "vascular lesion",
};
const $ = (id) => document.getElementById(id);
let maxUploadBytes = Infinity;
const BUSY_RETRIES = 3;
const MAX_RETRY_WAIT_S = 10;
let previewUrl = null;

function show(id, visible) { $(id).hidden = !visible; }
function pct(p) { return (100 * p).toFixed(1) + "%"; }

function setState(state) {
  $("result").dataset.state = state;
  show("placeholder", state === "idle");
  show("status", state === "loading");
  show("error", state === "error");
  show("output", state === "done");
}

function retryAfterSeconds(response) {
  const seconds = Number(response.headers.get("Retry-After"));
  return Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds, MAX_RETRY_WAIT_S) : 1;
}

function showError(message) {
  $("error").textContent = message;
  setState("error");
}

function renderResult(r) {
  $("top-class").textContent = r.prediction + " · " + pct(r.confidence);
  $("top-desc").textContent = DESCRIPTIONS[r.prediction] || "";
  const above = r.flagged;
  $("risk-value").textContent = pct(r.malignant_risk);
  $("risk-fill").style.width = pct(Math.min(1, r.malignant_risk));
  $("risk-fill").classList.toggle("above", above);
  $("risk-threshold").style.left = "calc(" + pct(r.threshold) + " - 1px)";
  $("threshold-label").textContent = "threshold " + pct(r.threshold);
  $("threshold-label").style.left = pct(Math.min(0.9, Math.max(0.1, r.threshold)));
  const decision = $("decision");
  decision.classList.toggle("above", above);
  decision.textContent = above
    ? "Above the threshold: the model rates this lesion as suspicious. This is not a diagnosis — a clinician should look at it."
    : "Below the threshold: the model does not rate this lesion as suspicious. This is not a diagnosis and does not rule anything out.";

  const bars = $("prob-bars");
  bars.replaceChildren();
  const entries = Object.entries(r.probabilities).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of entries) {
    const li = document.createElement("li");
    li.dataset.class = name;
    li.dataset.prob = String(p);
    if (r.malignant_classes.includes(name)) li.classList.add("malignant");
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const small = document.createElement("small");
    small.textContent = (DESCRIPTIONS[name] || "") + (r.malignant_classes.includes(name) ? " (malignant)" : "");
    label.appendChild(small);
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = pct(p);
    track.appendChild(fill);
    const value = document.createElement("span");
    value.className = "pct";
    value.textContent = pct(p);
    li.append(label, track, value);
    bars.appendChild(li);
  }
  $("timing").textContent = "Model " + r.model.arch + " (" + r.model.backend + "), answered in " +
    Math.round(r.elapsed_ms) + " ms.";
  setState("done");
}

async function analyse(file) {
  if (!file) return;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  $("preview").src = previewUrl;
  $("file-name").textContent = file.name;
  show("preview-box", true);
  if (file.size > maxUploadBytes) {
    showError("This file is " + (file.size / 1048576).toFixed(1) + " MB; the limit is " +
      (maxUploadBytes / 1048576).toFixed(1) + " MB. Please choose a smaller image.");
    return;
  }
  setState("loading");
  $("status").textContent = "Analysing…";
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    let response = await fetch("/predict", { method: "POST", body: form });
    // A busy server answers 503 with Retry-After: wait and send the same image again.
    for (let attempt = 1; response.status === 503 && attempt <= BUSY_RETRIES; attempt++) {
      const seconds = retryAfterSeconds(response);
      $("status").textContent = "The server is busy; trying again in " + seconds + " s (" +
        attempt + " of " + BUSY_RETRIES + ")…";
      await new Promise((resolve) => setTimeout(resolve, 1000 * seconds));
      $("status").textContent = "Analysing…";
      response = await fetch("/predict", { method: "POST", body: form });
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      showError("The image could not be analysed (" + response.status + "): " +
        (typeof body.detail === "string" ? body.detail : body.error || "unknown error"));
      return;
    }
    renderResult(body);
  } catch (err) {
    showError("The server could not be reached: " + err);
  }
}

async function loadInfo() {
  try {
    const health = await (await fetch("/health")).json();
    maxUploadBytes = health.limits.max_upload_bytes;
    $("limits-hint").textContent = "JPEG, PNG, WebP, BMP or TIFF · up to " +
      Math.round(maxUploadBytes / 1048576) + " MB";
    $("model-name").textContent = health.arch + " · " + health.model_file;
    const card = await (await fetch("/model")).json();
    const t = card.threshold;
    if (t) {
      $("model-info").textContent = "Threshold " + pct(t.malignant_risk) + " (" + t.source +
        (t.specificity ? ", target specificity " + t.specificity : "") + ")";
    }
  } catch (err) {
    $("model-info").textContent = "model information unavailable";
  }
}

function setup() {
  const input = $("file-input");
  input.addEventListener("change", () => analyse(input.files[0]));
  const zone = $("drop-zone");
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer.files.length) analyse(e.dataTransfer.files[0]);
  });
  setState("idle");
  loadInfo();
}

document.addEventListener("DOMContentLoaded", setup);
