// The upload page: send the chosen file to /predict, /preview and /explain and show the answers.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, maxBytes: null, objectUrls: [], generation: 0 };

function megabytes(bytes) {
  return `${(bytes / 2 ** 20).toLocaleString(undefined, { maximumFractionDigits: 1 })} MB`;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
}

function clearResult() {
  $("error").hidden = true;
  $("error").textContent = "";
  $("result").hidden = true;
  for (const url of state.objectUrls) URL.revokeObjectURL(url);
  state.objectUrls = [];
  for (const id of ["preview", "heatmap"]) $(id).removeAttribute("src");
  $("heatmap-status").textContent = "";
}

// FastAPI answers {"detail": "..."} for our refusals and {"detail": [{msg, loc}, ...]} for bad parameters.
async function errorMessage(response) {
  let detail = "";
  try {
    const body = await response.json();
    detail = Array.isArray(body.detail)
      ? body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ")
      : String(body.detail ?? "");
  } catch (_) {
    detail = response.statusText;
  }
  return `Error ${response.status}: ${detail || "the server could not process this file"}`;
}

function post(path, file) {
  const form = new FormData();
  form.append("file", file, file.name);
  return fetch(path, { method: "POST", body: form });
}

async function imageInto(imgId, path, file) {
  const response = await post(path, file);
  if (!response.ok) throw new Error(await errorMessage(response));
  const url = URL.createObjectURL(await response.blob());
  state.objectUrls.push(url);
  $(imgId).src = url;
  return response;
}

function fact(list, name, value) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}

function showPrediction(p) {
  const threshold = p.model.threshold;
  if (p.task === "regression") {
    $("score-label").textContent = "Predicted CAC (Agatston)";
    $("score").textContent = Math.round(p.predicted_cac).toLocaleString();
  } else {
    $("score-label").textContent = `Probability of CAC > ${threshold}`;
    $("score").textContent = `${(100 * p.probability).toFixed(1)} %`;
  }
  const positive = p.label === 1;
  $("verdict").textContent = positive ? `CAC > ${threshold} likely` : `CAC > ${threshold} unlikely`;
  $("verdict").className = `verdict ${positive ? "positive" : "negative"}`;

  const facts = $("facts");
  facts.replaceChildren();
  if (p.task === "regression") fact(facts, "Agatston band", p.agatston_band);
  if (p.task === "regression" && p.probability !== null) {
    fact(facts, `Probability of CAC > ${threshold}`, `${(100 * p.probability).toFixed(1)} % (calibrated)`);
  }
  fact(facts, "File", p.file);
  fact(facts, "Image", `${p.format.toUpperCase()}, ${p.cols} × ${p.rows} px${p.view ? `, view ${p.view}` : ""}`);
  fact(facts, "View gate", p.gate);
  fact(facts, "Decision threshold", p.model.decision_threshold.toPrecision(3));
  fact(facts, "Model", `${p.model.arch} ${p.model.task}, run ${p.model.run_name}`);
  fact(facts, "Time", `${p.seconds.toFixed(2)} s`);

  const warnings = $("warnings");
  warnings.replaceChildren();
  for (const text of p.warnings) {
    const li = document.createElement("li");
    li.textContent = `⚠ ${text}`;
    warnings.append(li);
  }
  $("result").hidden = false;
}

async function explain(file, generation) {
  const method = $("method").value;
  $("heatmap-status").textContent = "computing…";
  try {
    await imageInto("heatmap", `/explain?method=${encodeURIComponent(method)}`, file);
    if (generation === state.generation) $("heatmap-status").textContent = "";
  } catch (err) {
    if (generation === state.generation) $("heatmap-status").textContent = err.message;
  }
}

async function analyse(file) {
  const generation = ++state.generation;
  state.file = file;
  clearResult();
  if (state.maxBytes !== null && file.size > state.maxBytes) {
    showError(`${file.name}: ${megabytes(file.size)} is above the server's limit of ${megabytes(state.maxBytes)}`);
    return;
  }
  setStatus(`Scoring ${file.name}…`);
  let response;
  try {
    response = await post("/predict", file);
  } catch (err) {
    setStatus("");
    showError(`Could not reach the server: ${err.message}`);
    return;
  }
  if (generation !== state.generation) return; // another file was chosen meanwhile
  if (!response.ok) {
    setStatus("");
    showError(await errorMessage(response));
    return;
  }
  showPrediction(await response.json());
  setStatus(`Scored ${file.name}.`);
  imageInto("preview", "/preview", file).catch((err) => showError(err.message));
  explain(file, generation);
}

async function loadModel() {
  try {
    const response = await fetch("/health");
    const health = await response.json();
    const m = health.model;
    state.maxBytes = health.max_upload_bytes;
    $("limit").textContent = `up to ${megabytes(health.max_upload_bytes)}`;
    const what = m.task === "regression" ? "predicts the CAC score" : `predicts P(CAC > ${m.threshold})`;
    $("model").textContent =
      `Model ${m.arch} (${m.task}, ${m.folds.length} fold${m.folds.length === 1 ? "" : "s"}, ` +
      `${m.image_size} px, run ${m.run_name}) ${what} · cacxr ${m.cacxr_version}`;
  } catch (err) {
    $("model").textContent = `The server did not describe its model (${err.message}).`;
  }
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) analyse(file);
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("dragging"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) analyse(file);
  });
  $("method").addEventListener("change", () => {
    if (state.file) explain(state.file, state.generation);
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", setUp);
