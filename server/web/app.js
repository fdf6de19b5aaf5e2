/*
 * tasam demo page. Plain browser JavaScript, no framework, no build step:
 * every request goes to the daemon that served this page (the API under
 * /v1, schema/openapi.yaml).
 *
 * The image is sent once (POST /v1/embeddings); every later request names
 * it by image_id and sends it again only when the daemon no longer has its
 * embedding (404). Masks come back as COCO compressed RLE and are painted
 * straight from their runs, so the cost is the masks' area, not the image's
 * area times the number of masks.
 */
'use strict';

const $ = (sel) => document.querySelector(sel);

/* Everything the page knows. Coordinates are image pixels. */
const state = {
  file: null,        /* the image as opened (Blob), re-sent when its embedding is gone */
  name: '',          /* its file name, for downloads */
  bitmap: null,      /* decoded for drawing */
  imageId: null,     /* SHA-256 of the file: the embedding's id */
  width: 0,
  height: 0,
  points: [],        /* [x, y, label]: 1 object, 0 background */
  box: null,         /* [x0, y0, x1, y1] or null */
  task: '',          /* the applied task ('' for none) */
  result: null,      /* the last segment response */
  everything: false, /* the last response was everything mode */
  masks: [],         /* decoded masks of the last response: {rec, counts, color, index, hidden} */
  output: 0,         /* multimask output shown (prompt mode) */
  hover: -1,         /* mask under the pointer (index into masks), -1 for none */
  limits: {},        /* /v1/info limits */
  seq: 0,            /* responses seen (also in #count's data-seq) */
};

/* ---- the API ---- */

class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field || '';
  }
}

let lastInstance = '';  /* X-Tasam-Instance of the last answer */

function authHeaders() {
  const t = $('#token').value.trim();
  return t ? { Authorization: 'Bearer ' + t } : {};
}

/* One API call. `body` is an object (sent as JSON) or FormData. Resolves to
 * the parsed JSON; rejects with an ApiError carrying the API's status,
 * message and field (or status 0 when the daemon cannot be reached). */
async function api(method, path, body) {
  const init = { method, headers: authHeaders(), cache: 'no-store' };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'cannot reach tasamd (' + e.message + ')');
  }
  /* behind a load balancer: which replica answered */
  lastInstance = res.headers.get('X-Tasam-Instance') || '';
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (e) {
    json = null;
  }
  if (!res.ok) {
    const err = json && json.error;
    if (err && typeof err.message === 'string')
      throw new ApiError(res.status, err.message, err.field);
    throw new ApiError(res.status, (res.statusText || 'error') + (text ? ': ' + text.slice(0, 300) : ''));
  }
  if (json === null)
    throw new ApiError(res.status, 'the answer was not JSON');
  return json;
}

/* ---- COCO compressed RLE (pycocotools' rleFrString) ---- */

/* The run lengths of a compressed RLE string, checked to cover h*w pixels. */
function rleCounts(s, h, w) {
  const cnts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1;
    while (more) {
      if (p >= s.length)
        throw new Error('truncated RLE');
      const c = s.charCodeAt(p) - 48;
      if (c < 0 || c > 63)
        throw new Error('bad RLE character');
      /* arithmetic, not 32-bit shifts: a run may need 35 bits here */
      x += (c & 0x1f) * 2 ** (5 * k);
      more = c & 0x20;
      p++;
      k++;
      if (!more && (c & 0x10))
        x -= 2 ** (5 * k);
    }
    if (cnts.length > 2)
      x += cnts[cnts.length - 2];
    if (x < 0)
      throw new Error('negative RLE run');
    cnts.push(x);
  }
  let total = 0;
  for (const n of cnts)
    total += n;
  if (total !== h * w)
    throw new Error('RLE covers ' + total + ' pixels, the image has ' + h * w);
  return cnts;
}

/* Calls fn(i) for the row-major index i of every pixel of the mask (runs
 * are column-major: down each column, then the next column). */
function forEachPixel(counts, h, w, fn) {
  let x = 0, y = 0;
  for (let r = 0; r < counts.length; r++) {
    let n = counts[r];
    if (r & 1) {
      while (n-- > 0) {
        fn(y * w + x);
        if (++y === h) { y = 0; x++; }
      }
    } else {
      x += Math.floor((y + n) / h);
      y = (y + n) % h;
    }
  }
}

/* ---- colours ---- */

/* Distinct colours: hues a golden angle apart (everything mode); a prompt's
 * three outputs get blue, amber and violet, clear of the points' green and
 * red. */
const OUTPUT_HUES = [205, 38, 275];
function colorOf(i, output) {
  const hue = output ? OUTPUT_HUES[i % 3] : (i * 137.508 + 200) % 360, s = 0.75, l = 0.55;
  const f = (n) => {
    const k = (n + hue / 30) % 12;
    const a = s * Math.min(l, 1 - l);
    return Math.round(255 * (l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [f(0), f(8), f(4)];
}
const css = (c) => 'rgb(' + c.join(',') + ')';

/* ---- drawing ---- */

const view = $('#view');
const ctx = view.getContext('2d');
let overlay = null;   /* canvas at the image's size holding the painted masks */
let labels = null;    /* Uint16Array: 1 + index of the top mask at each pixel, 0 for none */
let layout = { scale: 1, ox: 0, oy: 0 };
let drag = null;      /* {x0, y0, x1, y1, button, shift, moved} while the pointer is down */

/* The masks drawn now: everything mode shows all but the hidden ones,
 * prompt mode the chosen output of each prompt. */
function shownMasks() {
  if (state.everything)
    return state.masks.filter((m) => !m.hidden);
  const per = state.result && state.result.multimask ? 3 : 1;
  return state.masks.filter((m) => m.index % per === Math.min(state.output, per - 1));
}

/* Paint the shown masks into `overlay` (translucent fill, opaque outline)
 * and the label map used for hovering; larger masks first so small ones
 * stay visible on top. */
function paintOverlay() {
  const w = state.width, h = state.height;
  overlay = null;
  labels = null;
  const masks = shownMasks();
  if (!w || !h || !masks.length)
    return;
  labels = new Uint16Array(w * h);
  const order = masks.slice().sort((a, b) => b.rec.area - a.rec.area);
  for (const m of order) {
    const tag = state.masks.indexOf(m) + 1;
    forEachPixel(m.counts, h, w, (i) => { labels[i] = tag; });
  }
  const img = new ImageData(w, h);
  const d = img.data;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x, t = labels[i];
      if (!t)
        continue;
      const c = state.masks[t - 1].color;
      /* an outline where a 4-neighbour belongs elsewhere */
      const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
        labels[i - 1] !== t || labels[i + 1] !== t || labels[i - w] !== t || labels[i + w] !== t;
      d[4 * i] = c[0];
      d[4 * i + 1] = c[1];
      d[4 * i + 2] = c[2];
      d[4 * i + 3] = edge ? 240 : 120;
    }
  }
  overlay = document.createElement('canvas');
  overlay.width = w;
  overlay.height = h;
  overlay.getContext('2d').putImageData(img, 0, 0);
}

function fitCanvas() {
  const r = view.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
  const cw = Math.max(1, Math.round(r.width * dpr)), ch = Math.max(1, Math.round(r.height * dpr));
  if (view.width !== cw || view.height !== ch) {
    view.width = cw;
    view.height = ch;
  }
}

function draw() {
  fitCanvas();
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, view.width, view.height);
  $('#hint').hidden = !!state.bitmap;
  if (!state.bitmap)
    return;
  const w = state.width, h = state.height;
  const scale = Math.min(view.width / w, view.height / h);
  layout = { scale, ox: (view.width - w * scale) / 2, oy: (view.height - h * scale) / 2 };
  ctx.setTransform(scale, 0, 0, scale, layout.ox, layout.oy);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(state.bitmap, 0, 0, w, h);
  if (overlay) {
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(overlay, 0, 0);
  }
  const px = 1 / scale;  /* one screen pixel in image pixels */
  if (state.hover >= 0 && state.masks[state.hover]) {
    const b = state.masks[state.hover].rec.bbox;
    ctx.strokeStyle = '#fff';
    ctx.lineWidth = 2 * px;
    ctx.strokeRect(b[0], b[1], b[2], b[3]);
  }
  const box = drag && drag.moved ? [drag.x0, drag.y0, drag.x1, drag.y1] : state.box;
  if (box) {
    ctx.setLineDash([6 * px, 4 * px]);
    ctx.strokeStyle = '#4fc3f7';
    ctx.lineWidth = 2 * px;
    ctx.strokeRect(Math.min(box[0], box[2]), Math.min(box[1], box[3]),
      Math.abs(box[2] - box[0]), Math.abs(box[3] - box[1]));
    ctx.setLineDash([]);
  }
  for (const [x, y, label] of state.points) {
    /* a dark ring around a white one: visible on any mask and photo */
    ctx.beginPath();
    ctx.arc(x, y, 8 * px, 0, 2 * Math.PI);
    ctx.fillStyle = '#000a';
    ctx.fill();
    ctx.beginPath();
    ctx.arc(x, y, 6.5 * px, 0, 2 * Math.PI);
    ctx.fillStyle = '#fff';
    ctx.fill();
    ctx.beginPath();
    ctx.arc(x, y, 5 * px, 0, 2 * Math.PI);
    ctx.fillStyle = label ? '#2e7d32' : '#c62828';
    ctx.fill();
  }
}

/* ---- the side panel ---- */

function showError(e) {
  let text;
  if (e instanceof ApiError) {
    text = (e.status ? 'HTTP ' + e.status + ': ' : '') + e.message + (e.field ? '  (field: ' + e.field + ')' : '');
    if (e.status === 401)
      text += '\nSet the API token under Connection.';
  } else {
    text = String(e && e.message ? e.message : e);
  }
  $('#error-text').textContent = text;
  $('#error').hidden = false;
}

function clearError() {
  $('#error').hidden = true;
  $('#error-text').textContent = '';
}

const fmt = (v, d) => (typeof v === 'number' ? v.toFixed(d) : '–');

function renderCount() {
  const n = state.bitmap ? shownMasks().length : 0;
  let text = n + (n === 1 ? ' mask' : ' masks');
  if (state.result && !state.everything && state.result.multimask)
    text += ' (output ' + (state.output + 1) + ' of 3)';
  else if (state.everything && state.masks.length !== n)
    text += ' of ' + state.masks.length;
  $('#count').textContent = text;
  $('#count').dataset.seq = String(state.seq);
}

function renderMasks() {
  const list = $('#masks');
  list.textContent = '';
  const shown = new Set(shownMasks());
  state.masks.forEach((m, i) => {
    const li = document.createElement('li');
    const sw = document.createElement('span');
    sw.className = 'swatch';
    sw.style.background = css(m.color);
    const label = document.createElement('span');
    const r = m.rec;
    const who = state.everything ? '#' + (i + 1) : 'output ' + (m.index % 3 + 1);
    label.textContent = who + '  IoU ' + fmt(r.predicted_iou, 3) + '  stability ' + fmt(r.stability_score, 3) +
      '  area ' + r.area;
    li.append(sw, label);
    li.title = 'bbox ' + r.bbox.map((v) => Math.round(v)).join(', ') +
      (state.everything ? ' · click to hide or show' : ' · click to show this output');
    if (!shown.has(m))
      li.classList.add('off');
    if (!state.everything && shown.has(m))
      li.classList.add('sel');
    if (i === state.hover)
      li.classList.add('hover');
    li.addEventListener('click', () => {
      if (state.everything)
        m.hidden = !m.hidden;
      else
        state.output = m.index % 3;
      refresh();
    });
    li.addEventListener('mouseenter', () => { state.hover = i; draw(); });
    li.addEventListener('mouseleave', () => { state.hover = -1; draw(); });
    list.append(li);
  });
  const multi = !state.everything && state.result && state.result.multimask;
  $('#outputs').hidden = !multi;
  for (const b of document.querySelectorAll('#outputs button'))
    b.classList.toggle('on', Number(b.dataset.k) === state.output);
  const any = state.bitmap && shownMasks().length > 0;
  $('#download-png').disabled = !any;
  $('#download-coco').disabled = !any;
}

function renderTimings(r, roundTrip) {
  const tb = $('#timings tbody');
  tb.textContent = '';
  const rows = [];
  const t = (r && r.timings_ms) || {};
  const names = { decode: 'hash + decode', queue: 'queue', encode: 'image encoder', adapter: 'task adapter',
    decode_masks: 'mask decoder', postprocess: 'postprocess', total: 'server total' };
  for (const k of Object.keys(t))
    rows.push([names[k] || k, fmt(t[k], 1) + ' ms']);
  if (roundTrip !== undefined)
    rows.push(['round trip (browser)', fmt(roundTrip, 1) + ' ms']);
  const st = r && r.everything_stats;
  if (st)
    rows.push(['grid prompts → masks', st.prompts + ' → ' + st.masks]);
  for (const [k, v] of rows) {
    const tr = document.createElement('tr');
    const a = document.createElement('td'), b = document.createElement('td');
    a.textContent = k;
    b.textContent = v;
    tr.append(a, b);
    tb.append(tr);
  }
  const parts = [];
  if (r && r.cache)
    parts.push('embedding: ' + r.cache.embedding + (r.cache.tier ? ' (' + r.cache.tier + ')' : ''));
  if (r && r.adapter)
    parts.push('adapter: ' + r.adapter.source + ' ' + r.adapter.id.slice(0, 12) + ' (hypernetwork ' +
      r.adapter.hypernet_version + ')');
  if (lastInstance)
    parts.push('replica: ' + lastInstance);
  $('#cache').textContent = parts.join(' · ');
}

function refresh() {
  paintOverlay();
  renderMasks();
  renderCount();
  draw();
}

function setBusy(on) {
  document.body.dataset.state = on ? 'busy' : 'idle';
  $('#busy').hidden = !on;
}

/* ---- requests: one at a time, the newest wins ---- */

let running = false;
let queued = null;

/* Run `job` (an async function) after the one running, replacing any that
 * was waiting: clicking fast sends only the newest prompt. */
function schedule(job) {
  if (running) {
    queued = job;
    return;
  }
  running = true;
  setBusy(true);
  job().catch(showError).finally(() => {
    running = false;
    const next = queued;
    queued = null;
    if (next)
      schedule(next);
    else
      setBusy(false);
  });
}

/* A response arrived (success or error): tests wait on this counter. */
function responded() {
  state.seq++;
  renderCount();
}

/* POST /v1/segment for the current image. `req` holds the prompt fields;
 * the image goes as image_id, or as the file itself when `withImage` or when
 * the daemon answers 404 for the id (its cache no longer has it). */
async function segment(req, withImage) {
  const t0 = performance.now();
  let r;
  try {
    r = await segmentOnce(req, withImage || !state.imageId);
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 404 && e.field === 'image_id'))
      throw e;
    r = await segmentOnce(req, true);
  }
  return [r, performance.now() - t0];
}

async function segmentOnce(req, withImage) {
  if (!withImage)
    return api('POST', 'v1/segment', Object.assign({ image_id: state.imageId }, req));
  const fd = new FormData();
  fd.append('image', state.file, state.name || 'image');
  fd.append('request', JSON.stringify(req));
  return api('POST', 'v1/segment', fd);
}

/* Take a segment response: decode every mask (a bad RLE is an error shown,
 * not a blank picture) and show, of a prompt's three outputs, the one SAM
 * scores best. */
function accept(r, roundTrip) {
  const masks = (r.masks || []).map((rec, i) => {
    if (!rec.rle || typeof rec.rle.counts !== 'string')
      throw new Error('mask ' + i + ' has no RLE');
    return { rec, counts: rleCounts(rec.rle.counts, r.height, r.width), color: null, index: i, hidden: false };
  });
  state.result = r;
  state.imageId = r.image_id || state.imageId;
  state.everything = r.mode === 'everything';
  masks.forEach((m, i) => { m.color = state.everything ? colorOf(i, false) : colorOf(m.index % 3, true); });
  state.masks = masks;
  state.hover = -1;
  state.output = 0;
  if (!state.everything && r.multimask) {
    let best = 0;
    for (let k = 1; k < Math.min(3, masks.length); k++)
      if (masks[k].rec.predicted_iou > masks[best].rec.predicted_iou)
        best = k;
    state.output = best;
  }
  clearError();
  renderTimings(r, roundTrip);
  refresh();
}

function promptRequest() {
  const req = { multimask: $('#multimask').checked };
  if (state.points.length)
    req.points = state.points.map((p) => [round2(p[0]), round2(p[1]), p[2]]);
  if (state.box)
    req.boxes = [state.box.map(round2)];
  if (state.task)
    req.task = state.task;
  return req;
}
const round2 = (v) => Math.round(v * 100) / 100;

/* The everything settings the person filled in (empty: the daemon's). */
function everythingParams() {
  const p = {};
  for (const el of document.querySelectorAll('#ev-settings input[data-param]')) {
    if (el.value.trim() === '')
      continue;
    p[el.dataset.param] = Number(el.value);
  }
  return p;
}

/* Points, a box or a task changed: ask again. */
function update() {
  if (!state.bitmap)
    return;
  if (!state.points.length && !state.box) {
    if (state.task) {
      runTaskAlone();
      return;
    }
    state.result = null;
    state.masks = [];
    refresh();
    return;
  }
  const req = promptRequest();
  schedule(async () => {
    try {
      const [r, rt] = await segment(req, false);
      accept(r, rt);
    } finally {
      responded();
    }
  });
}

function runEverything(withTask) {
  if (!state.bitmap)
    return;
  state.points = [];
  state.box = null;
  const p = everythingParams();
  const req = { everything: Object.keys(p).length ? p : true };
  if (withTask && state.task)
    req.task = state.task;
  schedule(async () => {
    try {
      /* crop layers encode crops of the image itself: the id is not enough */
      const [r, rt] = await segment(req, (p.crop_n_layers || 0) > 0);
      accept(r, rt);
    } finally {
      responded();
    }
  });
  draw();
}

/* A task and no prompt: the daemon finds every object of the task
 * (everything mode under its adapter), with the settings given here. */
function runTaskAlone() {
  const p = everythingParams();
  if (Object.keys(p).length) {
    runEverything(true);
    return;
  }
  schedule(async () => {
    try {
      const [r, rt] = await segment({ task: state.task }, false);
      accept(r, rt);
    } finally {
      responded();
    }
  });
}

/* ---- opening an image ---- */

async function openImage(file) {
  if (!file)
    return;
  schedule(async () => {
    try {
      const fd = new FormData();
      fd.append('image', file, file.name || 'image');
      const t0 = performance.now();
      /* the daemon decides what is an image; the browser only draws it */
      const [r, bitmap] = await Promise.all([
        api('POST', 'v1/embeddings', fd),
        createImageBitmap(file, { imageOrientation: 'none' }).catch(() => null),
      ]);
      if (!bitmap)
        throw new Error('tasamd read the image, but this browser cannot draw it');
      if (bitmap.width !== r.width || bitmap.height !== r.height)
        throw new Error('the browser sees ' + bitmap.width + 'x' + bitmap.height + ', tasamd ' + r.width + 'x' +
          r.height + ': coordinates would not match');
      state.file = file;
      state.name = (file.name || 'image').replace(/\.[^.]*$/, '');
      state.bitmap = bitmap;
      state.imageId = r.image_id;
      state.width = r.width;
      state.height = r.height;
      state.points = [];
      state.box = null;
      state.result = null;
      state.masks = [];
      state.everything = false;
      $('#image-name').textContent = (file.name || 'image') + ' · ' + r.width + '×' + r.height;
      clearError();
      renderTimings(r, performance.now() - t0);
      refresh();
      if (state.task)
        runTaskAlone();
    } finally {
      responded();
    }
  });
}

/* ---- pointer input on the image ---- */

function toImage(ev) {
  const r = view.getBoundingClientRect(), dpr = view.width / r.width;
  const x = ((ev.clientX - r.left) * dpr - layout.ox) / layout.scale;
  const y = ((ev.clientY - r.top) * dpr - layout.oy) / layout.scale;
  return [x, y];
}
const inside = (x, y) => x >= 0 && y >= 0 && x <= state.width && y <= state.height;
const clamp = (v, hi) => Math.max(0, Math.min(hi, v));

view.addEventListener('contextmenu', (ev) => ev.preventDefault());

view.addEventListener('pointerdown', (ev) => {
  if (!state.bitmap || (ev.button !== 0 && ev.button !== 2))
    return;
  const [x, y] = toImage(ev);
  if (!inside(x, y))
    return;
  view.setPointerCapture(ev.pointerId);
  drag = { x0: x, y0: y, x1: x, y1: y, sx: ev.clientX, sy: ev.clientY, button: ev.button, shift: ev.shiftKey,
    moved: false };
});

view.addEventListener('pointermove', (ev) => {
  if (!state.bitmap)
    return;
  const [x, y] = toImage(ev);
  if (drag) {
    drag.x1 = clamp(x, state.width);
    drag.y1 = clamp(y, state.height);
    if (drag.button === 0 && Math.hypot(ev.clientX - drag.sx, ev.clientY - drag.sy) > 5)
      drag.moved = true;
    if (drag.moved)
      draw();
    return;
  }
  const ix = Math.floor(x), iy = Math.floor(y);
  const t = labels && ix >= 0 && iy >= 0 && ix < state.width && iy < state.height ? labels[iy * state.width + ix] : 0;
  if (t - 1 !== state.hover) {
    state.hover = t - 1;
    renderMasks();
    draw();
  }
});

view.addEventListener('pointerup', (ev) => {
  if (!drag)
    return;
  const d = drag;
  drag = null;
  if (d.moved) {
    const box = [Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), Math.max(d.x0, d.x1), Math.max(d.y0, d.y1)];
    if (box[2] - box[0] < 1 || box[3] - box[1] < 1) {
      draw();
      return;
    }
    state.box = box;
  } else {
    if (state.points.length >= (state.limits.max_points || 16)) {
      showError(new Error('at most ' + (state.limits.max_points || 16) + ' points (max-points); undo or clear first'));
      return;
    }
    const label = d.button === 2 || d.shift || ev.shiftKey ? 0 : 1;
    state.points.push([clamp(d.x0, state.width), clamp(d.y0, state.height), label]);
  }
  if (state.everything) {
    state.result = null;
    state.masks = [];
  }
  draw();
  update();
});

view.addEventListener('pointerleave', () => {
  if (!drag && state.hover >= 0) {
    state.hover = -1;
    renderMasks();
    draw();
  }
});

/* ---- downloads ---- */

function save(blob, name) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

/* The shown masks at the image's size, each in its colour, transparent
 * elsewhere (smaller masks on top, as drawn). */
function downloadPng() {
  const w = state.width, h = state.height, img = new ImageData(w, h), d = img.data;
  const order = shownMasks().slice().sort((a, b) => b.rec.area - a.rec.area);
  for (const m of order)
    forEachPixel(m.counts, h, w, (i) => {
      d[4 * i] = m.color[0];
      d[4 * i + 1] = m.color[1];
      d[4 * i + 2] = m.color[2];
      d[4 * i + 3] = 255;
    });
  const c = document.createElement('canvas');
  c.width = w;
  c.height = h;
  c.getContext('2d').putImageData(img, 0, 0);
  c.toBlob((b) => (b ? save(b, state.name + '-masks.png') : showError(new Error('PNG encoding failed'))), 'image/png');
}

/* The shown masks as a COCO instances file: one image, one category (the
 * task, or "object"), an annotation per mask with its RLE and scores. */
function downloadCoco() {
  const r = state.result;
  const anns = shownMasks().map((m, k) => {
    const a = {
      id: k + 1, image_id: 1, category_id: 1, segmentation: m.rec.rle, area: m.rec.area, bbox: m.rec.bbox,
      iscrowd: 0, score: m.rec.predicted_iou, predicted_iou: m.rec.predicted_iou,
      stability_score: m.rec.stability_score,
    };
    for (const f of ['point_coords', 'crop_box', 'prompt'])
      if (m.rec[f] !== undefined)
        a[f] = m.rec[f];
    return a;
  });
  const coco = {
    info: { description: 'tasam masks', date_created: new Date().toISOString(), image_id_sha256: state.imageId,
      mode: state.everything ? 'everything' : 'prompt', task: state.task || null,
      adapter: r && r.adapter ? r.adapter : null },
    images: [{ id: 1, file_name: state.file && state.file.name ? state.file.name : state.name, width: state.width,
      height: state.height }],
    categories: [{ id: 1, name: state.task || 'object' }],
    annotations: anns,
  };
  save(new Blob([JSON.stringify(coco)], { type: 'application/json' }), state.name + '-masks.json');
}

/* ---- wiring ---- */

$('#image').addEventListener('change', (ev) => {
  openImage(ev.target.files[0]);
  ev.target.value = '';
});

const stage = $('#stage');
stage.addEventListener('dragover', (ev) => {
  ev.preventDefault();
  stage.classList.add('dragover');
});
stage.addEventListener('dragleave', () => stage.classList.remove('dragover'));
stage.addEventListener('drop', (ev) => {
  ev.preventDefault();
  stage.classList.remove('dragover');
  if (ev.dataTransfer.files.length)
    openImage(ev.dataTransfer.files[0]);
});
window.addEventListener('paste', (ev) => {
  const f = [...(ev.clipboardData ? ev.clipboardData.files : [])].find((x) => x.type.startsWith('image/'));
  if (f)
    openImage(f);
});

$('#task').addEventListener('keydown', (ev) => {
  if (ev.key !== 'Enter')
    return;
  ev.preventDefault();
  state.task = ev.target.value.trim();
  if (!state.bitmap) {
    showError(new Error('open an image first; the task applies to it'));
    return;
  }
  update();
});

$('#everything').addEventListener('click', () => {
  if (!state.bitmap) {
    showError(new Error('open an image first'));
    return;
  }
  runEverything(true);
});
$('#undo').addEventListener('click', undo);
$('#clear').addEventListener('click', clearPrompts);
$('#multimask').addEventListener('change', () => {
  if (state.points.length || state.box)
    update();
});
for (const b of document.querySelectorAll('#outputs button'))
  b.addEventListener('click', () => {
    state.output = Number(b.dataset.k);
    refresh();
  });
$('#download-png').addEventListener('click', downloadPng);
$('#download-coco').addEventListener('click', downloadCoco);
$('#error-close').addEventListener('click', clearError);
$('#token').value = sessionStorage.getItem('tasam-token') || '';
$('#token').addEventListener('change', () => {
  sessionStorage.setItem('tasam-token', $('#token').value.trim());
  clearError();
  describeServer();
});

function undo() {
  if (state.points.length)
    state.points.pop();
  else if (state.box)
    state.box = null;
  else
    return;
  draw();
  update();
}

function clearPrompts() {
  state.points = [];
  state.box = null;
  state.result = null;
  state.masks = [];
  refresh();
}

document.addEventListener('keydown', (ev) => {
  if (ev.target instanceof HTMLInputElement)
    return;
  if (ev.key === 'Escape')
    clearPrompts();
  else if ((ev.ctrlKey || ev.metaKey) && ev.key === 'z') {
    ev.preventDefault();
    undo();
  } else if (['1', '2', '3'].includes(ev.key) && !$('#outputs').hidden) {
    state.output = Number(ev.key) - 1;
    refresh();
  }
});

new ResizeObserver(() => draw()).observe(view);

/* What the daemon runs, shown in the header; polls while the model loads. */
async function describeServer() {
  try {
    const info = await api('GET', 'v1/info');
    state.limits = info.limits || {};
    if (!info.ready) {
      $('#server').textContent = 'tasamd ' + info.version + ' · loading the model…';
      setTimeout(describeServer, 1000);
      return;
    }
    const m = info.model || {};
    const hn = info.hypernetwork || {};
    const device = String(info.device || '?');
    $('#server').textContent = 'tasamd ' + info.version + ' · SAM ' + (m.arch || '?') + ' · ' + device +
      (info.precision && !device.includes(info.precision) ? ' ' + info.precision : '') + ' · ' +
      (hn.available ? 'tasks: ' + hn.text_model : 'no hypernetwork (tasks answer 501)');
    if (/^cpu/i.test(device)) {
      /* a first try on a CPU: the reference's 32 x 32 grid is a thousand decoder runs */
      $('#ev-note').textContent = 'This tasamd runs on the CPU: a 32×32 grid (the reference default) may pass the ' +
        'request deadline; 8 to 16 points per side answer in seconds.';
      $('#ev-note').hidden = false;
    }
    if (!hn.available) {
      $('#task-note').textContent = hn.note || 'This tasamd has no hypernetwork: tasks answer 501.';
    }
  } catch (e) {
    $('#server').textContent = 'tasamd: /v1/info failed';
    showError(e);
  }
}

document.body.dataset.state = 'idle';
renderCount();
draw();
describeServer();
