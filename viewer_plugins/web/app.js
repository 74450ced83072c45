// The browser viewer: list images, open one, segment it through an interactive session (point clicks, boxes
// and lassos drawn on a slice), save.
// Plain ES module, no build step. NiiVue draws the image (volumes[0]), the session's mask (volumes[1],
// edited in place from the server's deltas) and, when the image has one, its latest saved label
// (volumes[2], shown faintly for reference). A session on a labeled image starts from that saved label
// (`from_label`), so the annotator corrects it rather than starting again.
//
// Multi-reader projects (docs/projects.md): with a project picked, Next hands out the caller's assigned cases
// and Save uploads the mask as their read; an adjudicator (or lead, admin) also sees every reader's read and
// the consensus as separately coloured layers (toggled in the sidebar), starts from the consensus and saves
// the adjudicated final. The image is shown in radiological convention by default (patient's right on the
// screen's left), with a toggle.
//
// `window.viewer` is the contract with tests/test_web_viewer.py: ready/error flags, the Niivue
// instance, the state, and `pending` (requests queued or in flight).

import { Niivue, NVImage } from "./vendor/niivue.js";
import { Api, ApiError, downloadName } from "./api.js";
import { applyDelta, decodeDelta } from "./delta.js";

const $ = (id) => document.getElementById(id);
const CLICK_MODEL_TYPES = ["deepgrow", "deepedit"];
const CLICK_SLOP_PX = 4; // a press that moves further is a drag (slice, contrast), not a click
const TOOLS = { p: "point", x: "box", l: "lasso" }; // key -> tool
const HELD_RAS_AXIS = [2, 1, 0]; // NiiVue tile (axCorSag: axial, coronal, sagittal) -> the RAS axis it holds fixed
const SAVED_OPACITY = 0.35;
const PALETTE = [
  [230, 57, 70], [46, 196, 102], [58, 134, 255], [255, 190, 11], [199, 84, 230],
  [20, 206, 210], [251, 133, 0], [240, 240, 240],
];
const CLIENT_KEY = "annotation-server.client";

const api = new Api(new URL("../", document.baseURI));
const state = {
  info: null,
  listing: {}, // image id -> MONAI Label datastore object
  imageId: null,
  session: null, // the server's session state
  labels: {}, // label name -> value (from the session; the app's order before one opens)
  canUndo: false,
  canRedo: false,
  dirty: false,
  openedAt: 0,
  savedVersion: null,
  calRange: null, // the image's own display range, for the "auto" window
  pending: 0,
  lastAnswer: null,
  newObject: false,
  tool: "point", // "point" | "box" | "lasso"
  roles: [], // the caller's roles (every role while logins are off)
  project: null, // the picked multi-reader project's id, or null
  layers: [], // reader and consensus layers of the open case: {name, tag, color, visible, volume}
  adjudicating: false, // the open case is adjudicated here (Save -> the adjudicated final)
};
const LAYER_COLORS = [[255, 99, 71], [65, 105, 225], [50, 205, 50], [238, 130, 238], [255, 215, 0], [0, 206, 209]];
const CONSENSUS_COLOR = [255, 255, 255];
const viewer = { ready: false, error: null, nv: null, api, state, maskVolume: () => viewer.nv?.volumes[1] ?? null };
viewer.nativeVoxel = (ras) => nativeVoxel(viewer.nv.volumes[0], ras); // NiiVue's (RAS) voxel -> the server's
viewer.setTool = (tool) => setTool(tool);
viewer.toggleLayer = (name) => toggleLayer(name);
window.viewer = viewer;

// ------------------------------------------------------------------------------------------ status line
function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function setLatency(label, ms, serverSeconds) {
  const server = serverSeconds != null ? ` (server ${(serverSeconds * 1000).toFixed(0)} ms)` : "";
  $("latency").textContent = `${label} ${ms.toFixed(0)} ms${server}`;
}

function showError(error) {
  console.error(error);
  if (error instanceof ApiError && error.status === 401) showLogin("the server refused the request: sign in");
  setStatus(error instanceof ApiError ? error.message : `${error.name}: ${error.message}`, true);
}

// Requests that change the mask run one after another, so an undo never overtakes the click before it.
let queue = Promise.resolve();
function serial(task) {
  state.pending++;
  const run = queue.then(task);
  queue = run.catch(() => {});
  return run.catch(showError).finally(() => {
    state.pending--;
    updateButtons();
  });
}

function updateButtons() {
  const open = state.session !== null;
  $("undo").disabled = !open || !state.canUndo;
  $("redo").disabled = !open || !state.canRedo;
  $("reset").disabled = !open;
  $("save").disabled = !open;
  $("new-object").classList.toggle("active", state.newObject);
}

// ------------------------------------------------------------------------------------------------ auth
function showLogin(message) {
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

async function checkAuth() {
  // Off unless the server answers GET /auth/ with enabled: true (with auth off it is a 404). -> signed in?
  let enabled = false;
  try {
    const response = await fetch(api.url("auth/"));
    enabled = response.ok && (await response.json())?.enabled === true;
  } catch {
    enabled = false;
  }
  state.roles = ["admin", "lead", "adjudicator", "reviewer", "annotator", "user"];
  if (!enabled) return true;
  if (api.token) {
    const response = await fetch(api.url("auth/token/valid"), { headers: api.headers() });
    if (response.ok) {
      state.roles = (await response.json()).roles || [];
      return true;
    }
    api.setToken(null);
  }
  showLogin();
  return false;
}

async function logIn(username, password) {
  const form = new URLSearchParams({ username, password, grant_type: "password" });
  const response = await fetch(api.url("auth/token"), { method: "POST", body: form });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `login failed: ${response.status}`);
  api.setToken(body.access_token);
  const valid = await fetch(api.url("auth/token/valid"), { headers: api.headers() });
  state.roles = valid.ok ? (await valid.json()).roles || [] : [];
  if (!clientId()) {
    $("client-id").value = body.username || username;
    localStorage.setItem(CLIENT_KEY, clientId());
  }
}

// ----------------------------------------------------------------------------------------- lists, info
function fillSelect(select, values, chosen) {
  select.replaceChildren(
    ...values.map((value) => {
      const option = document.createElement("option");
      option.value = option.textContent = value;
      return option;
    }),
  );
  if (chosen && values.includes(chosen)) select.value = chosen;
}

async function loadInfo() {
  const { data, ms } = await api.get("info/");
  state.info = data;
  setLatency("info", ms);
  $("app-name").textContent = data.name || "annotation-server";
  fillSelect($("label"), data.labels || []);
  state.labels = Object.fromEntries((data.labels || []).map((name, i) => [name, i + 1]));
  const models = Object.entries(data.models || {});
  const clickers = models.filter(([, m]) => CLICK_MODEL_TYPES.includes(m.type)).map(([name]) => name);
  fillSelect($("model"), clickers, data.server?.interactive_model); // the API's default when a prompt names none
  for (const option of $("model").options) option.title = data.models[option.value].description || "";
  const strategies = Object.keys(data.strategies || {});
  fillSelect($("strategy"), strategies, strategies.includes("random") ? "random" : strategies[0]);
}

async function loadListing() {
  const { data } = await api.get("datastore/", { params: { output: "all" } });
  state.listing = data.objects || {};
  renderListing();
}

function renderListing() {
  const items = Object.entries(state.listing).map(([id, object]) => {
    const li = document.createElement("li");
    li.dataset.image = id;
    li.classList.toggle("current", id === state.imageId);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = id;
    const final = object.labels?.final;
    const tag = document.createElement("span");
    tag.className = final ? "tag" : "tag none";
    tag.textContent = final ? `final v${final.info?.version ?? "?"}` : "unlabeled";
    li.append(name, tag);
    li.addEventListener("click", () => openImage(id));
    return li;
  });
  $("images").replaceChildren(...items);
}

// ---------------------------------------------------------------------------------------------- volumes
function labelColormap(labels) {
  const max = Math.max(1, ...Object.values(labels));
  const cm = { R: [], G: [], B: [], A: [], I: [], labels: [] };
  const names = Object.fromEntries(Object.entries(labels).map(([name, value]) => [value, name]));
  for (let value = 0; value <= max; value++) {
    const [r, g, b] = value === 0 ? [0, 0, 0] : PALETTE[(value - 1) % PALETTE.length];
    cm.R.push(r);
    cm.G.push(g);
    cm.B.push(b);
    cm.A.push(value === 0 ? 0 : 255);
    cm.I.push(value);
    cm.labels.push(names[value] || (value === 0 ? "background" : `label ${value}`));
  }
  return cm;
}

function styleLabelLayers() {
  const nv = viewer.nv;
  const cm = labelColormap(state.labels);
  const overlay = Number($("opacity").value) / 100;
  for (const [index, volume] of nv.volumes.entries()) {
    if (index === 0) continue;
    const layer = state.layers.find((l) => l.volume === volume);
    if (layer) {
      volume.setColormapLabel(solidColormap(layer.color, state.labels));
      volume.opacity = layer.visible ? 0.45 : 0;
      continue;
    }
    volume.setColormapLabel(cm);
    volume.opacity = index === 1 ? overlay : $("show-saved").checked ? SAVED_OPACITY : 0;
  }
  nv.updateGLVolume();
}

async function fetchSavedLabel(id) {
  try {
    const { data, response } = await api.get("datastore/label", { params: { label: id, tag: "final" }, as: "buffer" });
    return { buffer: data, name: downloadName(response) || `${id}-label.nii.gz`, version: response.headers.get("X-Label-Version") };
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

async function closeSession({ keepalive = false } = {}) {
  const session = state.session;
  state.session = null;
  state.canUndo = state.canRedo = false;
  updateButtons();
  if (session) {
    try {
      await api.request("DELETE", `interactive/sessions/${session.session_id}`, { keepalive });
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) console.warn(error);
    }
  }
}

async function openImage(id) {
  if (!id) return;
  if (state.dirty && !confirm(`Discard the unsaved changes on ${state.imageId}?`)) return;
  return serial(async () => {
    const nv = viewer.nv;
    await closeSession();
    state.imageId = id;
    state.dirty = false;
    state.savedVersion = null;
    state.lastAnswer = null;
    state.layers = [];
    state.adjudicating = false;
    renderListing();
    history.replaceState(null, "", `#image=${encodeURIComponent(id)}`);
    setStatus(`loading ${id}…`);
    const started = performance.now();
    const [image, saved] = await Promise.all([
      api.get("datastore/image", { params: { image: id }, as: "buffer" }),
      state.listing[id]?.labels?.final ? fetchSavedLabel(id) : null, // only ask for what exists: no 404 noise
    ]);
    const name = downloadName(image.response) || `${id}${state.listing[id]?.image?.ext || ".nii.gz"}`;
    const volume = await NVImage.loadFromUrl({ url: name, name, buffer: image.data, colormap: "gray" });
    const mask = NVImage.zerosLike(volume, "uint8");
    mask.name = `${id} (session)`;
    const layers = [volume, mask];
    if (saved) {
      try {
        const label = await NVImage.loadFromUrl({ url: saved.name, name: saved.name, buffer: saved.buffer });
        if (label.hdr.dims.slice(1, 4).join() === volume.hdr.dims.slice(1, 4).join()) {
          label.name = `${id} (saved final v${saved.version})`;
          layers.push(label);
          mask.img.set(label.img); // the session starts from this label (same grid, same voxel order)
          state.savedVersion = saved.version;
        } else console.warn("saved label is not on the image grid; not shown");
      } catch (error) {
        console.warn("saved label could not be displayed", error);
      }
    }
    let from = state.savedVersion ? { tag: "final", version: state.savedVersion } : null;
    if (state.project && hasRole("adjudicator")) {
      const consensus = await loadReadLayers(id, volume);
      if (state.layers.length) {
        state.adjudicating = true;
        if (consensus) {
          mask.img.set(consensus.volume.img); // the adjudicator corrects the consensus
          from = { tag: consensus.tag, version: consensus.version };
        }
      }
    }
    await nv.loadVolumes([]); // clear the scene
    for (const layer of layers) nv.addVolume(layer);
    for (const layer of state.layers) nv.addVolume(layer.volume);
    renderLayers();
    state.calRange = [volume.cal_min, volume.cal_max];
    if (volume.global_min < -500 && $("window").value === "auto") $("window").value = "400,50"; // CT: abdomen window
    applyWindow();
    styleLabelLayers();
    $("empty-hint").hidden = true;
    const dims = volume.hdr.dims.slice(1, 4);
    $("image-info").textContent = `${id}: ${dims.join("×")} · ${volume.hdr.pixDims.slice(1, 4).map((v) => +v.toFixed(2)).join("×")} mm`;
    await openSession(id, dims, from);
    state.openedAt = performance.now();
    const note = state.savedVersion ? ` · started from saved final v${state.savedVersion}` : "";
    setStatus(`${id} ready: click, box or lasso to segment${note}`);
    setLatency("load", performance.now() - started);
  });
}

async function openSession(id, dims, from = null) {
  const body = { image: id, label: $("label").value || undefined, model: $("model").value || undefined };
  if (clientId()) body.client_id = clientId();
  if (from) Object.assign(body, { from_label: from.tag, from_version: Number(from.version) });
  const { data, ms } = await api.post("interactive/sessions", body);
  if (data.shape.join() !== dims.join()) {
    await api.request("DELETE", `interactive/sessions/${data.session_id}`).catch(() => {});
    throw new Error(`the server's grid ${data.shape} differs from the displayed image ${dims}: editing disabled`);
  }
  state.session = data;
  state.labels = data.labels;
  state.canUndo = data.can_undo;
  state.canRedo = data.can_redo;
  styleLabelLayers();
  setLatency("session", ms);
  updateButtons();
}

// ------------------------------------------------------------------------------------------ interaction
async function applyAnswer(answer, ms, what) {
  const nv = viewer.nv;
  let changed = 0;
  if (answer.delta) {
    const mask = nv.volumes[1];
    const values = await decodeDelta(answer.delta);
    changed = applyDelta(mask.img, mask.hdr.dims.slice(1, 4), answer.delta, values);
    nv.updateGLVolume();
  }
  state.lastAnswer = answer;
  state.canUndo = answer.can_undo;
  state.canRedo = answer.can_redo;
  state.session.version = answer.version;
  if (changed) state.dirty = true;
  setStatus(`${what}: ${changed} voxels changed · step ${answer.version}`);
  setLatency(what.split(" ")[0], ms, answer.seconds);
}

function sendPoint(vox, positive) {
  const session = state.session;
  if (!session) return;
  const point = vox.map((v, axis) => Math.min(Math.max(Math.round(v), 0), session.shape[axis] - 1));
  return sendPrompt({ type: "point", point, positive }, `${positive ? "foreground" : "background"} point [${point}]`);
}

/**
 * Send one prompt and apply its delta. Points and boxes refine the current object with the click model (and
 * consume "New object"); a lasso is painted directly by the server, no model, and ends the current object.
 */
function sendPrompt(prompt, what) {
  const session = state.session;
  if (!session) return;
  const usesModel = prompt.type !== "lasso";
  prompt.label = $("label").value || undefined;
  if (usesModel && $("model").value) prompt.model = $("model").value;
  const newObject = usesModel && state.newObject;
  if (usesModel) {
    state.newObject = false;
    updateButtons();
  }
  return serial(async () => {
    const { data, ms } = await api.post(`interactive/sessions/${session.session_id}/prompt`, {
      prompt,
      new_object: newObject,
    });
    await applyAnswer(data, ms, what);
  });
}

function step(action) {
  const session = state.session;
  if (!session) return;
  return serial(async () => {
    const { data, ms } = await api.post(`interactive/sessions/${session.session_id}/${action}`);
    await applyAnswer(data, ms, action);
  });
}

function save() {
  const session = state.session;
  if (!session) return;
  if (state.project) return saveToProject();
  return serial(async () => {
    const info = { seconds_spent: Math.round((performance.now() - state.openedAt) / 1000), viewer: "web" };
    const body = { tag: "final", info };
    if (clientId()) body.client_id = clientId();
    const { data, ms } = await api.post(`interactive/sessions/${session.session_id}/save`, body);
    state.dirty = false;
    state.savedVersion = data.version;
    setStatus(`saved ${data.image} as ${data.tag} v${data.version}`);
    setLatency("save", ms);
    copyMaskToSavedLayer(data.version);
    await loadListing();
  });
}

function copyMaskToSavedLayer(version) {
  const nv = viewer.nv;
  const mask = nv.volumes[1];
  let saved = nv.volumes[2];
  if (!saved) {
    saved = NVImage.zerosLike(mask, "uint8");
    nv.addVolume(saved);
  }
  saved.img.set(mask.img);
  saved.name = `${state.imageId} (saved final v${version})`;
  styleLabelLayers();
}

async function next() {
  if (state.project) return nextInProject();
  const strategy = $("strategy").value;
  if (!strategy) return;
  try {
    const body = clientId() ? { client_id: clientId() } : {};
    const { data, ms } = await api.post(`activelearning/${encodeURIComponent(strategy)}`, body);
    setLatency("next", ms);
    if (!data.id) {
      setStatus(`every image is labeled (strategy ${strategy})`);
      return;
    }
    await openImage(data.id);
  } catch (error) {
    showError(error);
  }
}

// -------------------------------------------------------------------------------------- view settings
function applyWindow() {
  const nv = viewer.nv;
  const volume = nv.volumes[0];
  if (!volume) return;
  const choice = $("window").value;
  let [lo, hi] = state.calRange || [volume.cal_min, volume.cal_max];
  if (choice !== "auto") {
    const [width, level] = choice.split(",").map(Number);
    [lo, hi] = [level - width / 2, level + width / 2];
  }
  volume.cal_min = lo;
  volume.cal_max = hi;
  nv.updateGLVolume();
}

function applyView() {
  const nv = viewer.nv;
  const types = {
    axial: nv.sliceTypeAxial,
    coronal: nv.sliceTypeCoronal,
    sagittal: nv.sliceTypeSagittal,
    multi: nv.sliceTypeMultiplanar,
  };
  nv.setSliceType(types[$("view").value]);
}

function clientId() {
  return $("client-id").value.trim();
}

// ---------------------------------------------------------------------------------------------- events
function canvasVoxel(event) {
  const nv = viewer.nv;
  if (!nv.volumes.length) return null;
  const rect = nv.canvas.getBoundingClientRect();
  const dpr = nv.uiData.dpr || window.devicePixelRatio || 1;
  const frac = nv.canvasPos2frac([(event.clientX - rect.left) * dpr, (event.clientY - rect.top) * dpr]);
  if (!frac || frac[0] < 0) return null; // outside every 2-D tile
  return nativeVoxel(nv.volumes[0], Array.from(nv.frac2vox(frac)));
}

/**
 * NiiVue's voxel coordinates are those of the image turned to RAS (axes permuted and flipped); the server's
 * are the image as stored. Map one to the other through NiiVue's own native<->RAS index steps.
 */
function nativeVoxel(volume, ras) {
  const [nx, ny] = volume.hdr.dims.slice(1, 3);
  const start = volume.img2RASstart;
  const step = volume.img2RASstep;
  let index = 0;
  for (let axis = 0; axis < 3; axis++) {
    const v = Math.min(Math.max(Math.round(ras[axis]), 0), volume.dimsRAS[axis + 1] - 1);
    index += start[axis] + v * step[axis];
  }
  return [index % nx, Math.floor(index / nx) % ny, Math.floor(index / (nx * ny))];
}

function wireCanvas(canvas) {
  let press = null;
  canvas.addEventListener("pointerdown", (event) => {
    press = { x: event.clientX, y: event.clientY, button: event.button };
  });
  canvas.addEventListener("pointerup", (event) => {
    const start = press;
    press = null;
    if (!start || start.button !== event.button || !state.session || state.tool !== "point") return;
    if (Math.hypot(event.clientX - start.x, event.clientY - start.y) > CLICK_SLOP_PX) return;
    if (event.button !== 0 && event.button !== 2) return;
    const vox = canvasVoxel(event);
    if (!vox) return;
    const positive = event.button === 0 && !event.shiftKey && !$("background").checked;
    sendPoint(vox, positive);
  });
  canvas.addEventListener("contextmenu", (event) => event.preventDefault());
}

// --------------------------------------------------------------------------------------- box and lasso
// A box or lasso is drawn with the left button on one 2-D tile. The press, moves and release are taken in
// the capture phase on `window`, before they reach NiiVue's canvas listeners, so NiiVue neither moves the
// crosshair nor pans while one is drawn (the wheel and the right button still reach it: slice, contrast).
// The outline is drawn on the #draw canvas above NiiVue's; voxels are the image's as stored (`nativeVoxel`).
let drag = null; // {tool, tile, axis, index, positive, start, end, path, voxels}

function setTool(tool) {
  if (!Object.values(TOOLS).includes(tool)) return;
  cancelDrag();
  state.tool = tool;
  for (const button of document.querySelectorAll("#tools [data-tool]")) {
    button.classList.toggle("active", button.dataset.tool === tool);
    button.setAttribute("aria-pressed", String(button.dataset.tool === tool));
  }
  $("stage").dataset.tool = tool;
}

function devicePos(event) {
  const nv = viewer.nv;
  const rect = nv.canvas.getBoundingClientRect();
  const dpr = nv.uiData.dpr || window.devicePixelRatio || 1;
  return [(event.clientX - rect.left) * dpr, (event.clientY - rect.top) * dpr];
}

/** The stored axis that a step along RAS axis `rasAxis` moves on (NiiVue's native<->RAS strides: 1, nx, nx*ny). */
function storedAxis(volume, rasAxis) {
  const nx = volume.hdr.dims[1];
  const stride = Math.abs(volume.img2RASstep[rasAxis]);
  return stride === 1 ? 0 : stride === nx ? 1 : 2;
}

/** The stored voxel under device pixel `pos`, on the drag's tile and slice (outside the tile: its nearest edge). */
function dragVoxel(d, pos) {
  const nv = viewer.nv;
  const [left, top, width, height] = nv.screenSlices[d.tile].leftTopWidthHeight;
  const [x0, x1] = [Math.min(left, left + width), Math.max(left, left + width)];
  const [y0, y1] = [Math.min(top, top + height), Math.max(top, top + height)];
  const x = Math.min(Math.max(pos[0], x0 + 0.5), x1 - 0.5);
  const y = Math.min(Math.max(pos[1], y0 + 0.5), y1 - 0.5);
  const frac = nv.screenXY2TextureFrac(x, y, d.tile, false);
  const voxel = nativeVoxel(nv.volumes[0], Array.from(nv.frac2vox(frac))); // clamped into the image
  if (d.index !== null) voxel[d.axis] = d.index;
  return voxel;
}

function startDrag(event) {
  const nv = viewer.nv;
  if (!state.session || !nv.volumes.length) return null;
  const pos = devicePos(event);
  const tile = nv.tileIndex(pos[0], pos[1]);
  const slice = nv.screenSlices[tile];
  if (tile < 0 || !slice || slice.axCorSag > 2) {
    setStatus(`draw the ${state.tool} on a 2-D slice`);
    return null;
  }
  const axis = storedAxis(nv.volumes[0], HELD_RAS_AXIS[slice.axCorSag]);
  const positive = state.tool === "box" || (!event.shiftKey && !$("background").checked);
  const d = { tool: state.tool, tile, axis, index: null, positive, start: pos, end: pos, path: [pos], voxels: [] };
  const first = dragVoxel(d, pos);
  d.index = first[axis];
  d.voxels.push(first);
  const overlay = $("draw");
  const rect = nv.canvas.getBoundingClientRect();
  const dpr = nv.uiData.dpr || window.devicePixelRatio || 1;
  overlay.width = Math.round(rect.width * dpr);
  overlay.height = Math.round(rect.height * dpr);
  return d;
}

function extendDrag(d, event) {
  const pos = devicePos(event);
  d.end = pos;
  if (d.tool === "lasso") {
    d.path.push(pos);
    const voxel = dragVoxel(d, pos);
    if (voxel.join() !== d.voxels[d.voxels.length - 1].join()) d.voxels.push(voxel);
  }
  drawDrag(d);
}

function drawDrag(d) {
  const overlay = $("draw");
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  const dpr = viewer.nv.uiData.dpr || window.devicePixelRatio || 1;
  ctx.lineWidth = 1.5 * dpr;
  ctx.strokeStyle = d.positive ? "rgb(255, 214, 10)" : "rgb(120, 180, 255)";
  ctx.fillStyle = d.positive ? "rgba(255, 214, 10, 0.18)" : "rgba(120, 180, 255, 0.18)";
  ctx.beginPath();
  if (d.tool === "box") {
    ctx.rect(d.start[0], d.start[1], d.end[0] - d.start[0], d.end[1] - d.start[1]);
  } else {
    d.path.forEach(([x, y], n) => (n ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.closePath();
  }
  ctx.fill();
  ctx.stroke();
}

function clearOverlay() {
  if (drag) return; // a new outline is being drawn
  const overlay = $("draw");
  overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
}

function cancelDrag() {
  drag = null;
  clearOverlay();
}

function finishDrag(d, event) {
  extendDrag(d, event);
  const dpr = viewer.nv.uiData.dpr || window.devicePixelRatio || 1;
  let sent;
  if (d.tool === "box") {
    if (Math.hypot(d.end[0] - d.start[0], d.end[1] - d.start[1]) / dpr <= CLICK_SLOP_PX) {
      setStatus("box: drag a rectangle around the object");
    } else {
      const corners = [d.voxels[0], dragVoxel(d, d.end)];
      sent = sendPrompt({ type: "box", corners }, `box [${corners[0]}]–[${corners[1]}]`);
    }
  } else {
    const [a, b] = [0, 1, 2].filter((axis) => axis !== d.axis); // the slice's axes, ascending
    const polygon = [];
    for (const voxel of d.voxels) {
      const vertex = [voxel[a], voxel[b]];
      const last = polygon[polygon.length - 1];
      if (!last || last[0] !== vertex[0] || last[1] !== vertex[1]) polygon.push(vertex);
    }
    if (polygon.length > 1 && polygon[0].join() === polygon[polygon.length - 1].join()) polygon.pop();
    if (polygon.length < 3) {
      setStatus("lasso: draw an outline around the region (at least three voxels)");
    } else {
      const what = `lasso ${d.positive ? "fill" : "erase"} (axis ${d.axis}, slice ${d.index}, ${polygon.length} vertices)`;
      sent = sendPrompt({ type: "lasso", axis: d.axis, index: d.index, polygon, positive: d.positive }, what);
    }
  }
  if (sent) sent.finally(clearOverlay);
  else clearOverlay();
}

function wireDrawing(canvas) {
  // Capture phase on window: runs before NiiVue's own listeners on the canvas, which never see these events.
  window.addEventListener(
    "mousedown",
    (event) => {
      if (event.target !== canvas || state.tool === "point" || event.button !== 0 || !state.session) return;
      event.stopPropagation();
      event.preventDefault();
      drag = startDrag(event);
      if (drag) drawDrag(drag);
    },
    true,
  );
  window.addEventListener(
    "mousemove",
    (event) => {
      if (!drag) return;
      event.stopPropagation();
      extendDrag(drag, event);
    },
    true,
  );
  window.addEventListener(
    "mouseup",
    (event) => {
      if (!drag || event.button !== 0) return;
      event.stopPropagation();
      const d = drag;
      drag = null;
      finishDrag(d, event);
    },
    true,
  );
}

function wireControls() {
  $("next").addEventListener("click", next);
  $("refresh").addEventListener("click", () => loadListing().catch(showError));
  $("undo").addEventListener("click", () => step("undo"));
  $("redo").addEventListener("click", () => step("redo"));
  $("reset").addEventListener("click", () => step("reset"));
  $("save").addEventListener("click", save);
  for (const button of document.querySelectorAll("#tools [data-tool]")) {
    button.addEventListener("click", () => setTool(button.dataset.tool));
  }
  $("new-object").addEventListener("click", () => {
    state.newObject = !state.newObject;
    updateButtons();
  });
  $("window").addEventListener("change", applyWindow);
  $("view").addEventListener("change", applyView);
  $("opacity").addEventListener("input", styleLabelLayers);
  $("show-saved").addEventListener("change", styleLabelLayers);
  $("radiological").addEventListener("change", applyConvention);
  $("project").addEventListener("change", () => pickProject($("project").value).catch(showError));
  const client = $("client-id");
  client.value = localStorage.getItem(CLIENT_KEY) || "";
  client.placeholder = "name";
  client.addEventListener("change", () => localStorage.setItem(CLIENT_KEY, clientId()));
  $("login").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await logIn($("username").value.trim(), $("password").value);
      $("password").value = "";
      await Promise.all([loadInfo(), loadListing(), loadProjects()]);
      $("login").hidden = true;
      setStatus(`logged in · ${Object.keys(state.listing).length} images`);
      const wanted = new URLSearchParams(location.hash.slice(1)).get("image");
      if (wanted && state.listing[wanted] && !state.imageId) await openImage(wanted);
    } catch (error) {
      $("login-error").textContent = error.message;
    }
  });
  document.addEventListener("keydown", (event) => {
    const key = event.key.toLowerCase();
    const mod = event.ctrlKey || event.metaKey;
    if (event.target.closest("input:not([type=checkbox]):not([type=range]), textarea")) return;
    if (!mod && event.target.closest("select")) return; // letters pick options there
    if (mod && key === "z") step(event.shiftKey ? "redo" : "undo");
    else if (mod && key === "y") step("redo");
    else if (mod && key === "s") save();
    else if (!mod && key === "b") $("background").checked = !$("background").checked;
    else if (!mod && key === "n") $("new-object").click();
    else if (key === "escape" && drag) cancelDrag();
    else return;
    event.preventDefault();
  });
  // Tool keys in the capture phase: with the canvas focused NiiVue would also act on them (L moves its
  // crosshair, P cycles clip planes on key up), so they stop here.
  const toolKey = (event) =>
    !event.ctrlKey && !event.metaKey && !event.altKey && TOOLS[event.key.toLowerCase()] &&
    !event.target.closest("input:not([type=checkbox]):not([type=range]), textarea, select");
  window.addEventListener(
    "keydown",
    (event) => {
      if (!toolKey(event)) return;
      setTool(TOOLS[event.key.toLowerCase()]);
      event.preventDefault();
      event.stopPropagation();
    },
    true,
  );
  window.addEventListener("keyup", (event) => toolKey(event) && event.stopPropagation(), true);
  window.addEventListener("pagehide", () => {
    if (state.session) closeSession({ keepalive: true });
  });
}

// ------------------------------------------------------------------------------------ multi-reader projects
function hasRole(role) {
  return state.roles.includes(role);
}

function applyConvention() {
  viewer.nv.setRadiologicalConvention($("radiological").checked);
  viewer.nv.drawScene();
}

/** Every label value in one colour: a reader's layer is told apart by its colour, not by the label. */
function solidColormap(color, labels) {
  const max = Math.max(1, ...Object.values(labels));
  const cm = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: ["background"] };
  for (let value = 1; value <= max; value++) {
    cm.R.push(color[0]);
    cm.G.push(color[1]);
    cm.B.push(color[2]);
    cm.A.push(255);
    cm.I.push(value);
    cm.labels.push(`label ${value}`);
  }
  return cm;
}

async function loadProjects() {
  if (!hasRole("annotator")) return;
  let projects = [];
  try {
    projects = (await api.get("projects")).data;
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) throw error; // 404: a PACS datastore, no projects
  }
  const select = $("project");
  const options = projects.map((p) => {
    const option = document.createElement("option");
    option.value = String(p.id);
    option.textContent = `${p.name}${p.due ? ` (due ${p.due})` : ""}`;
    return option;
  });
  const none = document.createElement("option");
  none.value = "";
  none.textContent = "(none)";
  select.replaceChildren(none, ...options);
  if (state.project) select.value = String(state.project);
}

async function pickProject(value) {
  state.project = value ? Number(value) : null;
  await loadQueue();
  setStatus(state.project ? `project ${state.project}: Next opens your next case` : "no project: Next uses the strategy");
}

async function loadQueue() {
  const shown = Boolean(state.project);
  $("queue").hidden = $("queue-head").hidden = !shown;
  if (!shown) return;
  const mine = (await api.get("projects/mine")).data.filter((a) => a.project_id === state.project);
  const items = mine.map((a) => {
    const li = document.createElement("li");
    li.dataset.image = a.image_id;
    li.className = a.status === "done" ? "done" : "";
    li.textContent = `${a.image_id} · ${a.status}`;
    li.addEventListener("click", () => openImage(a.image_id));
    return li;
  });
  if (!items.length) items.push(Object.assign(document.createElement("li"), { textContent: "no cases assigned to you" }));
  $("queue").replaceChildren(...items);
}

async function nextInProject() {
  try {
    const { data, ms } = await api.post(`projects/${state.project}/next`, {});
    setLatency("next", ms);
    if (!data.id) {
      setStatus(`project ${state.project}: every case of yours is read`);
      return;
    }
    await openImage(data.id);
  } catch (error) {
    showError(error);
  }
}

async function fetchLabel(id, tag) {
  const { data, response } = await api.get("datastore/label", { params: { label: id, tag }, as: "buffer" });
  const name = downloadName(response) || `${id}-${tag}.nii.gz`;
  return { volume: await NVImage.loadFromUrl({ url: name, name, buffer: data }), version: response.headers.get("X-Label-Version") };
}

/** The case's reads and consensus as layers (adjudicators only); -> the consensus layer or null. */
async function loadReadLayers(id, image) {
  let answer;
  try {
    answer = (await api.get(`projects/${state.project}/cases/${encodeURIComponent(id)}/reads`)).data;
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null; // not a case of this project
    throw error;
  }
  const sameGrid = (v) => v.hdr.dims.slice(1, 4).join() === image.hdr.dims.slice(1, 4).join();
  const readers = Object.entries(answer.reads).sort(([a], [b]) => a.localeCompare(b));
  for (const [index, [reader, read]] of readers.entries()) {
    const { volume } = await fetchLabel(id, read.tag);
    if (!sameGrid(volume)) continue;
    volume.name = `${reader} (v${read.version})`;
    state.layers.push({ name: reader, tag: read.tag, color: LAYER_COLORS[index % LAYER_COLORS.length], visible: true, volume });
  }
  if (!answer.case.consensus_version) return null;
  const { volume, version } = await fetchLabel(id, answer.consensus_tag);
  if (!sameGrid(volume)) return null;
  volume.name = `consensus (v${version})`;
  const layer = { name: "consensus", tag: answer.consensus_tag, version, color: CONSENSUS_COLOR, visible: true, volume };
  state.layers.push(layer);
  return layer;
}

function renderLayers() {
  const shown = state.layers.length > 0;
  $("layers").hidden = $("layers-head").hidden = !shown;
  const items = state.layers.map((layer) => {
    const li = document.createElement("li");
    const box = Object.assign(document.createElement("input"), { type: "checkbox", checked: layer.visible });
    box.dataset.layer = layer.name;
    box.addEventListener("change", () => toggleLayer(layer.name, box.checked));
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${layer.color.join(",")})`;
    const name = document.createElement("span");
    name.textContent = layer.name;
    li.append(box, swatch, name);
    return li;
  });
  $("layers").replaceChildren(...items);
}

function toggleLayer(name, visible) {
  const layer = state.layers.find((l) => l.name === name);
  if (!layer) return;
  layer.visible = visible ?? !layer.visible;
  const box = document.querySelector(`#layers input[data-layer="${CSS.escape(name)}"]`);
  if (box) box.checked = layer.visible;
  styleLabelLayers();
}

/** The session's mask as an uncompressed NIfTI on the image's grid (labels as stored, no intensity scaling). */
async function maskAsNifti() {
  const mask = viewer.nv.volumes[1];
  const { scl_slope: slope, scl_inter: inter } = mask.hdr;
  mask.hdr.scl_slope = 1;
  mask.hdr.scl_inter = 0;
  try {
    return await mask.saveToUint8Array("mask.nii");
  } finally {
    mask.hdr.scl_slope = slope;
    mask.hdr.scl_inter = inter;
  }
}

function saveToProject() {
  const id = state.imageId;
  return serial(async () => {
    const seconds = Math.round((performance.now() - state.openedAt) / 1000);
    const form = new FormData();
    form.append("params", JSON.stringify({ seconds, viewer: "web" }));
    form.append("label", new Blob([await maskAsNifti()]), `${id}.nii`);
    const base = `projects/${state.project}/cases/${encodeURIComponent(id)}`;
    const [method, path] = state.adjudicating ? ["POST", `${base}/adjudicate`] : ["PUT", `${base}/label`];
    const started = performance.now();
    const response = await fetch(api.url(path), { method, body: form, headers: api.headers() });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(response.status, body.detail || response.statusText, method, path);
    state.dirty = false;
    state.savedVersion = body.version;
    state.lastSaved = body;
    setStatus(`saved ${body.image} as ${body.tag} v${body.version}${state.adjudicating ? " (adjudicated)" : ""}`);
    setLatency("save", performance.now() - started);
    await Promise.all([loadListing(), loadQueue()]);
  });
}

// ------------------------------------------------------------------------------------------------ start
async function main() {
  const nv = new Niivue({
    backColor: [0, 0, 0, 1],
    loadingText: "", // the empty stage shows its own hint; NiiVue's "loading ..." would be drawn under it
    crosshairColor: [1, 1, 0, 0.6],
    crosshairWidth: 0.5,
    show3Dcrosshair: false,
    dragAndDropEnabled: false,
    multiplanarLayout: 2, // grid: axial, coronal, sagittal in two rows
    multiplanarShowRender: 0, // never: a click on the 3-D tile would rotate it, not segment
    logLevel: "warn",
  });
  viewer.nv = nv;
  await nv.attachTo("gl");
  nv.setSliceType(nv.sliceTypeAxial);
  applyConvention();
  wireCanvas(nv.canvas);
  wireDrawing(nv.canvas);
  wireControls();
  setTool("point");
  updateButtons();
  if (!(await checkAuth())) {
    setStatus("log in to continue");
    viewer.ready = true;
    return;
  }
  try {
    await Promise.all([loadInfo(), loadListing(), loadProjects()]);
    setStatus(`${Object.keys(state.listing).length} images · pick one or press Next`);
  } catch (error) {
    showError(error);
  }
  viewer.ready = true;
  const wanted = new URLSearchParams(location.hash.slice(1)).get("image");
  if (wanted && state.listing[wanted]) await openImage(wanted);
}

main().catch((error) => {
  viewer.error = String(error?.stack || error);
  showError(error);
});
