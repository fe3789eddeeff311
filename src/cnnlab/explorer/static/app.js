// cnnlab explore: the page's behaviour. Plain JavaScript, no build step, nothing from a CDN.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;      // /api/info
let current = null;   // the last prediction (input, layers with maps and receptive fields)

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function showError(message) { $("error").textContent = message || ""; }

async function start() {
  info = await api("/api/info");
  $("run-info").textContent = `${info.model} on ${info.dataset}, input ${info.input_size.join("x")}` +
    (info.history.length ? `, test accuracy ${info.history[info.history.length - 1].test_acc.toFixed(3)}` : "");
  info.classes.forEach((name, i) => $("class-filter").add(new Option(name, i)));
  $("class-filter").onchange = loadThumbs;
  $("upload").onchange = uploadFile;
  if (info.can_draw) setUpDrawing();
  info.classes.forEach((name, i) => $("cam-class").add(new Option(name, i)));
  info.cam_layers.forEach((name) => $("cam-layer").add(new Option(name, name)));
  $("cam-layer").selectedIndex = info.cam_layers.length - 1;  // the last layer with a spatial map, as Grad-CAM's authors use
  $("cam-class").onchange = explainCurrent;
  $("cam-layer").onchange = explainCurrent;
  fillSummary();
  $("curves").src = "/api/curves.png";
  await loadThumbs();
  const first = document.querySelector("#thumbs img");
  if (first) first.click();
}

let thumbsAsked = 0, predictAsked = 0;  // only the latest answer is shown: a slow earlier one never overwrites it

async function loadThumbs() {
  const label = $("class-filter").value;
  const asked = ++thumbsAsked;
  const list = await api(`/api/test-images?limit=48${label === "" ? "" : "&label=" + label}`);
  if (asked !== thumbsAsked) return;
  const box = $("thumbs");
  box.innerHTML = "";
  for (const item of list.images) {
    const img = new Image();
    img.src = `/api/test-image/${item.index}.png`;
    img.alt = `test image ${item.index} (${info.classes[item.label]})`;
    img.title = img.alt;
    img.dataset.index = item.index;
    img.dataset.label = item.label;
    img.onclick = () => pickTest(item.index, img);
    box.appendChild(img);
  }
}

async function pickTest(index, img) {
  document.querySelectorAll("#thumbs img").forEach((el) => el.classList.remove("chosen"));
  if (img) img.classList.add("chosen");
  const asked = ++predictAsked;
  try {
    const result = await api(`/api/predict/test/${index}`, { method: "POST" });
    if (asked === predictAsked) { show(result, `test:${index}`); showError(""); }
  } catch (err) { if (asked === predictAsked) showError(err.message); }
}

async function postImage(blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  const asked = ++predictAsked;
  try {
    const result = await api("/api/predict/upload", { method: "POST", body: form });
    if (asked === predictAsked) { show(result, `upload:${name}`); showError(""); }
  } catch (err) { if (asked === predictAsked) showError(err.message); }
}

function uploadFile(event) {
  const file = event.target.files[0];
  if (file) postImage(file, file.name);
  event.target.value = "";
}

function setUpDrawing() {
  $("draw-box").hidden = false;
  const canvas = $("draw"), ctx = canvas.getContext("2d");
  const clear = () => { ctx.fillStyle = "black"; ctx.fillRect(0, 0, canvas.width, canvas.height); };
  clear();
  let drawing = false;
  const at = (e) => { const r = canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  canvas.onpointerdown = (e) => { drawing = true; ctx.beginPath(); ctx.moveTo(...at(e)); };
  canvas.onpointermove = (e) => {
    if (!drawing) return;
    ctx.lineTo(...at(e)); ctx.strokeStyle = "white"; ctx.lineWidth = 18; ctx.lineCap = "round"; ctx.stroke();
  };
  window.addEventListener("pointerup", () => { drawing = false; });
  $("draw-clear").onclick = clear;
  $("draw-predict").onclick = () => canvas.toBlob((blob) => postImage(blob, "drawing.png"), "image/png");
}

function show(result, source) {
  current = result;
  $("prediction").dataset.source = source;  // which input this prediction belongs to
  $("input-image").src = result.input;
  clearField();
  const p = result.prediction;
  $("prediction").textContent = `${p.class} (${(100 * p.probability).toFixed(1)}%)`;
  $("prediction").dataset.class = p.class;
  $("prediction").title = result.label ? `true class: ${result.label}` : "";
  const bars = $("bars");
  bars.innerHTML = "";
  [...result.probabilities].sort((a, b) => b.probability - a.probability).forEach((item, i) => {
    const row = document.createElement("div");
    row.className = "bar" + (i === 0 ? " top" : "");
    row.innerHTML = `<span></span><div class="fill"></div><span></span>`;
    row.children[0].textContent = item.class;
    row.children[1].style.width = `${Math.max(1, 100 * item.probability)}%`;
    row.children[2].textContent = `${(100 * item.probability).toFixed(1)}%`;
    bars.appendChild(row);
  });
  const layers = $("layers");
  layers.innerHTML = "";
  result.layers.forEach((layer, li) => {
    const column = document.createElement("div");
    column.className = "layer";
    column.innerHTML = `<h3></h3><div class="maps"></div>`;
    column.querySelector("h3").textContent = `${layer.name} · ${layer.shape.join("x")}`;
    layer.maps.forEach((url, c) => {
      const img = new Image();
      img.src = url;
      img.alt = `${layer.name} channel ${c}`;
      img.className = "feature-map";
      img.onclick = () => openMap(li, c, img);
      column.querySelector(".maps").appendChild(img);
    });
    layers.appendChild(column);
  });
  if (!$("detail").hidden && $("detail").dataset.layer !== undefined) {
    const li = Number($("detail").dataset.layer), c = Number($("detail").dataset.channel);
    if (result.layers[li]) openMap(li, c, null);
  }
  $("unit-box").hidden = true;
  $("cam-class").value = String(p.index);  // explain the predicted class first
  explainCurrent();
}

let explainAsked = 0;

async function explainCurrent() {
  if (!current || !current.picture) return;
  const asked = ++explainAsked;
  const target = $("cam-class").value, layer = $("cam-layer").value;
  try {
    const a = await api(`/api/explain/${current.picture}?target=${target}&layer=${encodeURIComponent(layer)}`);
    if (asked !== explainAsked) return;
    $("cam-image").src = a.gradcam;
    $("saliency-image").src = a.saliency;
    const note = $("cam-note");
    note.textContent = `Where the evidence for “${a.class}” (probability ${(100 * a.probability).toFixed(1)}%) lies: ` +
      `Grad-CAM at layer ${a.layer} (${a.cam_size.join("x")} map, upsampled; brighter = more evidence), and how strongly ` +
      `each input pixel moves the class score.`;
    note.dataset.target = a.target;
    note.dataset.layer = a.layer;
    note.dataset.picture = a.picture;
  } catch (err) { if (asked === explainAsked) showError(err.message); }
}

async function openMap(li, c, img) {
  const layer = current.layers[li];
  document.querySelectorAll(".layer img").forEach((el) => el.classList.remove("chosen"));
  if (img) img.classList.add("chosen");
  const detail = $("detail");
  detail.hidden = false;
  detail.dataset.layer = li;
  detail.dataset.channel = c;
  $("detail-title").textContent = `${layer.name}, channel ${c} (${layer.shape[1]}x${layer.shape[2]})`;
  $("detail-map").src = layer.maps[c];
  $("detail-map").onmousemove = (e) => hoverUnit(layer, e);
  $("detail-map").onmouseleave = clearField;
  $("detail-map").onclick = (e) => computeUnit(layer, c, e);
  loadPatches(layer.name, c);
  const kernels = $("kernels");
  kernels.innerHTML = "";
  const type = info.layers.find((l) => l.name === layer.name)?.type || "";
  if (!type.startsWith("Conv")) {
    $("detail-note").textContent = `${type}: no kernels; each unit pools a window of the previous layer.`;
    return;
  }
  try {
    const k = await api(`/api/kernels/${encodeURIComponent(layer.name)}/${c}`);
    $("detail-note").textContent = `${k.shape[0]} kernel(s) of ${k.shape[1]}x${k.shape[2]}, one per input channel ` +
      `(gray = 0, white = +${k.scale.toFixed(3)}, black = -${k.scale.toFixed(3)})` + (k.bias === null ? "" : `, bias ${k.bias.toFixed(3)}`);
    k.kernels.forEach((url, i) => {
      const tile = new Image();
      tile.src = url;
      tile.alt = `kernel from input channel ${i}`;
      tile.title = tile.alt;
      kernels.appendChild(tile);
    });
  } catch (err) { showError(err.message); }
}

function unitAt(layer, event) {
  const box = event.target.getBoundingClientRect();
  const i = Math.min(layer.shape[1] - 1, Math.floor((event.clientY - box.top) / box.height * layer.shape[1]));
  const j = Math.min(layer.shape[2] - 1, Math.floor((event.clientX - box.left) / box.width * layer.shape[2]));
  return [Math.max(0, i), Math.max(0, j)];
}

let patchesAsked = 0;

async function loadPatches(layerName, c) {
  const asked = ++patchesAsked;
  const box = $("patches");
  box.innerHTML = "<p class='hint'>one pass over the test set…</p>";
  box.dataset.ready = "";
  try {
    const result = await api(`/api/patches/${encodeURIComponent(layerName)}/${c}?k=8`);
    if (asked !== patchesAsked) return;
    box.innerHTML = "";
    result.patches.forEach((item) => {
      const fig = document.createElement("figure");
      const img = new Image();
      img.src = item.patch;
      img.className = item.clipped ? "clipped" : "";
      img.alt = `test image ${item.image} (${item.label}), rows ${item.rows.join("-")}, columns ${item.cols.join("-")}`;
      img.title = img.alt + (item.clipped ? ", clipped at the border" : "");
      img.onclick = () => pickTest(item.image, null);
      const caption = document.createElement("figcaption");
      caption.textContent = `${item.activation.toFixed(2)} · ${item.label}`;
      fig.append(img, caption);
      box.appendChild(fig);
    });
    box.dataset.ready = `${layerName}:${c}`;
  } catch (err) { if (asked === patchesAsked) { box.innerHTML = ""; showError(err.message); } }
}

const fmt = (v) => (v === null ? "−∞" : Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(2));

function grid(rows) {
  const table = document.createElement("table");
  rows.forEach((row) => {
    const tr = table.insertRow();
    row.forEach((v) => { tr.insertCell().textContent = fmt(v); });
  });
  return table;
}

let unitAsked = 0;

async function computeUnit(layer, c, event) {
  if (!current || !current.picture) return;
  const [i, j] = unitAt(layer, event);
  const asked = ++unitAsked;
  try {
    const u = await api(`/api/unit/${current.picture}/${encodeURIComponent(layer.name)}/${c}/${i}/${j}`);
    if (asked !== unitAsked) return;
    $("unit-box").hidden = false;
    $("unit-title").textContent = `How ${layer.name}[channel ${c}, row ${i}, column ${j}] is computed`;
    const view = $("unit-view");
    view.innerHTML = "";
    const shown = Math.min(u.window.length, 8);
    for (let k = 0; k < shown; k++) {
      const box = document.createElement("div");
      box.className = "channel";
      const title = document.createElement("div");
      if (u.kind === "conv") {
        title.textContent = `input channel ${u.input_channels[k]}: window × kernel = products, sum ${u.channel_sums[k].toFixed(4)}`;
        box.append(title, grid(u.window[k]), grid(u.kernel[k]), grid(u.products[k]));
      } else {
        title.textContent = `channel ${u.input_channels[k]}: the window (${u.kind === "max" ? "its maximum" : `sum / ${u.divisor}`})`;
        box.append(title, grid(u.window[k]));
      }
      view.appendChild(box);
    }
    if (u.window.length > shown) view.appendChild(Object.assign(document.createElement("p"), { textContent: `… and ${u.window.length - shown} more input channels` }));
    const how = u.kind === "conv" ? `sum of ${u.window.length} channel sums + bias ${u.bias.toFixed(4)}` : u.kind === "max" ? "maximum of the window" : `mean of the window`;
    const result = $("unit-result");
    result.textContent = `${how} = ${u.result.toFixed(6)}; the model computed ${u.activation.toFixed(6)}`;
    result.dataset.result = u.result;
    result.dataset.activation = u.activation;
    result.dataset.unit = `${layer.name}:${c}:${i},${j}`;
  } catch (err) { if (asked === unitAsked) showError(err.message); }
}

function hoverUnit(layer, event) {
  if (!layer.size) return;
  const [i, j] = unitAt(layer, event);
  const n = info.input_size[1];
  const [rows, cols] = [0, 1].map((axis) => {
    const centre = layer.start[axis] + (axis === 0 ? i : j) * layer.jump[axis];
    const half = (layer.size[axis] - 1) / 2;
    return [Math.max(0, Math.ceil(centre - half)), Math.min(n - 1, Math.floor(centre + half))];
  });
  const overlay = $("field-overlay"), ctx = overlay.getContext("2d"), scale = overlay.width / n;
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  ctx.fillStyle = "rgba(232, 135, 30, 0.3)";
  ctx.strokeStyle = "#e8871e";
  ctx.lineWidth = 2;
  const [x, y, w, h] = [cols[0] * scale, rows[0] * scale, (cols[1] - cols[0] + 1) * scale, (rows[1] - rows[0] + 1) * scale];
  ctx.fillRect(x, y, w, h);
  ctx.strokeRect(x, y, w, h);
  overlay.title = `unit (${i}, ${j}): input rows ${rows[0]}-${rows[1]}, columns ${cols[0]}-${cols[1]}`;
  overlay.dataset.unit = `${i},${j}`;
}

function clearField() {
  const overlay = $("field-overlay");
  overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
}

function fillSummary() {
  const table = $("summary");
  table.innerHTML = "<tr><th>layer</th><th>type</th><th>output</th><th>params</th><th>mult-adds</th><th>receptive field</th></tr>";
  for (const row of info.summary) {
    const tr = table.insertRow();
    [row.name, row.type, row.output_shape.join("x"), row.params.toLocaleString(), row.mult_adds.toLocaleString(),
     row.receptive_field ? row.receptive_field.map((v) => Math.round(v)).join("x") : ""].forEach((text) => {
      tr.insertCell().textContent = text;
    });
  }
}

start().catch((err) => showError(err.message));
