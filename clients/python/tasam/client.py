"""The client: one object per daemon, standard library only.

    from tasam import Client
    c = Client("http://127.0.0.1:8080")
    r = c.segment("dog.jpg", points=[(400, 294, 1)])
    best = r.best()[0]              # the output SAM scores highest
    mask = best.decode()            # bytes, height * width, 0 or 1
    arr = best.to_numpy()           # with NumPy: (height, width) bool

An image is sent once: the client remembers the ids (SHA-256) of the
images the daemon has answered for, and names them by `image_id` after
that, sending the bytes again only when the daemon no longer has the
embedding (404 on the id).
"""
import base64
import collections
import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from . import masks as _masks
from .errors import NotFoundError, TasamConnectionError, TasamError, error_for

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_TERMINAL = ("succeeded", "failed", "cancelled")


class Mask:
    """One mask of a segment answer. `rle` (COCO dict), `png` (bytes) or
    `polygons` holds the mask, as the request's `output` asked."""

    def __init__(self, rec, height, width):
        self.raw = rec
        self.height = height
        self.width = width
        self.prompt = rec.get("prompt")
        self.rle = rec.get("rle")
        self.png = base64.b64decode(rec["png"]) if "png" in rec else None
        self.polygons = rec.get("polygons")
        self.bbox = rec.get("bbox")
        self.area = rec.get("area")
        self.predicted_iou = rec.get("predicted_iou")
        self.stability_score = rec.get("stability_score")
        self.point_coords = rec.get("point_coords")  # everything mode
        self.crop_box = rec.get("crop_box")          # everything mode

    def decode(self):
        """The mask as row-major bytes (height * width, 0 or 1)."""
        if self.rle is not None:
            return _masks.rle_decode(self.rle, self.height, self.width)
        if self.png is not None:
            w, h, data = _masks.png_decode(self.png)
            if (w, h) != (self.width, self.height):
                raise ValueError("the PNG is %dx%d, the image %dx%d" % (w, h, self.width, self.height))
            return data
        raise ValueError("polygons do not decode to a mask; ask for output 'rle' or 'png'")

    def to_numpy(self):
        """The mask as a (height, width) boolean NumPy array (needs NumPy)."""
        if self.rle is not None:
            return _masks.to_numpy(self.rle, self.height, self.width)
        import numpy as np
        return np.frombuffer(self.decode(), dtype=np.uint8).reshape(self.height, self.width).astype(bool)

    def __repr__(self):
        return "Mask(prompt=%r, area=%r, predicted_iou=%.3f, stability_score=%.3f)" % (
            self.prompt, self.area, self.predicted_iou or 0.0, self.stability_score or 0.0)


class SegmentResult:
    """A segment answer: `masks` (Mask), `image_id`, `width`, `height`,
    `timings` (ms by stage), `cache`, `adapter` (with a task), `mode`
    ("everything" in everything mode, else None), `raw` (the JSON)."""

    def __init__(self, raw):
        self.raw = raw
        self.image_id = raw.get("image_id")
        self.width = raw.get("width")
        self.height = raw.get("height")
        self.multimask = raw.get("multimask")
        self.mode = raw.get("mode")
        self.everything = raw.get("everything")
        self.everything_stats = raw.get("everything_stats")
        self.timings = raw.get("timings_ms", {})
        self.cache = raw.get("cache", {})
        self.adapter = raw.get("adapter")
        self.masks = [Mask(m, self.height, self.width) for m in raw.get("masks", [])]

    def __len__(self):
        return len(self.masks)

    def __iter__(self):
        return iter(self.masks)

    def __getitem__(self, i):
        return self.masks[i]

    def best(self):
        """For each prompt, the mask with the highest predicted IoU (in
        everything mode: every mask)."""
        if self.mode == "everything":
            return list(self.masks)
        out = {}
        for m in self.masks:
            if m.prompt not in out or m.predicted_iou > out[m.prompt].predicted_iou:
                out[m.prompt] = m
        return [out[k] for k in sorted(out)]

    def to_coco(self, file_name="image", category="object"):
        """The masks as a COCO instances dict (one image, one category, RLE
        segmentations, predicted IoU as `score`); needs output 'rle'."""
        anns = []
        for i, m in enumerate(self.masks):
            if m.rle is None:
                raise ValueError("COCO needs the RLE output")
            a = {"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": m.rle, "area": m.area,
                 "bbox": m.bbox, "iscrowd": 0, "score": m.predicted_iou,
                 "predicted_iou": m.predicted_iou, "stability_score": m.stability_score}
            for k in ("prompt", "point_coords", "crop_box"):
                if m.raw.get(k) is not None:
                    a[k] = m.raw[k]
            anns.append(a)
        return {"images": [{"id": 1, "file_name": file_name, "width": self.width, "height": self.height}],
                "categories": [{"id": 1, "name": category}], "annotations": anns}

    def __repr__(self):
        return "SegmentResult(image_id=%r, %d masks%s)" % (
            self.image_id, len(self.masks), ", everything" if self.mode == "everything" else "")


def _image_bytes(image):
    """Bytes of an image given as bytes, a path, a file object, a PIL image
    or an (H, W[, 3|4]) uint8 array."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return f.read()
    if hasattr(image, "read"):
        return image.read()
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image
        import io
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    shape = getattr(image, "shape", None)
    if shape is not None and hasattr(image, "tobytes"):
        if str(getattr(image, "dtype", "")) != "uint8" or len(shape) not in (2, 3) or (
                len(shape) == 3 and shape[2] not in (1, 3, 4)):
            raise TypeError("an array image must be uint8 of shape (H, W), (H, W, 3) or (H, W, 4)")
        channels = 1 if len(shape) == 2 else shape[2]
        return _masks.png_encode(image.tobytes(), shape[1], shape[0], channels)
    raise TypeError("image must be bytes, a path, a file object, a PIL image or a uint8 array, not %s"
                    % type(image).__name__)


def _is_image_id(image):
    return isinstance(image, str) and _HEX64.match(image) is not None and not os.path.exists(image)


def _points(points):
    out = []
    for p in points:
        p = list(p)
        if len(p) == 2:
            p.append(1)
        if len(p) != 3:
            raise ValueError("a point is (x, y) or (x, y, label), not %r" % (p,))
        out.append([float(p[0]), float(p[1]), int(p[2])])
    return out


def _boxes(boxes):
    boxes = list(boxes)
    if len(boxes) == 4 and all(isinstance(v, (int, float)) for v in boxes):
        boxes = [boxes]  # one box given flat
    out = []
    for b in boxes:
        b = [float(v) for v in b]
        if len(b) != 4:
            raise ValueError("a box is (x0, y0, x1, y1), not %r" % (b,))
        out.append(b)
    return out


class Client:
    """A tasamd at `url`.

    token: the API token, sent as `Authorization: Bearer` on /v1 routes
    (where the daemon asks for one); admin_token: the admin token, for the
    /admin routes (it also serves /v1 when no token is given). timeout:
    seconds a request may take. retries: how many times a request answered
    429 or 503 (not carried out) is sent again, after the daemon's
    Retry-After. reuse_images: name images the daemon has seen by image_id.
    """

    def __init__(self, url="http://127.0.0.1:8080", token=None, admin_token=None, timeout=120.0,
                 retries=2, reuse_images=True):
        self.url = url.rstrip("/")
        self.token = token
        self.admin_token = admin_token
        self.timeout = timeout
        self.retries = retries
        self.reuse_images = reuse_images
        self._known = collections.OrderedDict()  # image ids the daemon answered for

    # ---- transport ----

    def _request(self, method, path, body=None, content_type=None, admin=False, raw=False):
        """One call; the parsed JSON answer (bytes when `raw`). Errors raise
        the TasamError subclass of the answer's status."""
        token = (self.admin_token or self.token) if admin else (self.token or self.admin_token)
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = "Bearer " + token
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as res:
                    data = res.read()
                    if raw:
                        return data
                    return json.loads(data) if data else None
            except urllib.error.HTTPError as e:
                err = self._error(e)
                if err.status in (429, 503) and attempt < self.retries:
                    time.sleep(min(err.retry_after or 1, 30))
                    continue
                raise err from None
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise TasamConnectionError("cannot reach tasamd at %s: %s" % (self.url, reason)) from None
        raise AssertionError("unreachable")

    @staticmethod
    def _error(e):
        data = e.read()
        retry = e.headers.get("Retry-After") if e.headers else None
        retry = int(retry) if retry and retry.isdigit() else None
        try:
            body = json.loads(data)
            err = body["error"]
            return error_for(e.code, err["message"], err.get("field", ""), body, retry)
        except (ValueError, KeyError, TypeError):
            text = data.decode("utf-8", "replace")[:300]
            return error_for(e.code, text or str(e.reason), "", data, retry)

    def _json(self, method, path, obj, admin=False):
        return self._request(method, path, json.dumps(obj).encode(), "application/json", admin=admin)

    def _multipart(self, path, image, request):
        """POST `path` as multipart/form-data: the image file and the other
        fields as the `request` JSON part."""
        boundary = "tasam-" + uuid.uuid4().hex
        parts = [b"--" + boundary.encode() + b"\r\n"
                 b'Content-Disposition: form-data; name="image"; filename="image"\r\n'
                 b"Content-Type: application/octet-stream\r\n\r\n" + image + b"\r\n"]
        if request:
            parts.append(b"--" + boundary.encode() + b"\r\n"
                         b'Content-Disposition: form-data; name="request"\r\n'
                         b"Content-Type: application/json\r\n\r\n" + json.dumps(request).encode() + b"\r\n")
        parts.append(b"--" + boundary.encode() + b"--\r\n")
        return self._request("POST", path, b"".join(parts), "multipart/form-data; boundary=" + boundary)

    def _remember(self, image_id):
        if image_id:
            self._known[image_id] = True
            self._known.move_to_end(image_id)
            while len(self._known) > 4096:
                self._known.popitem(last=False)

    def _with_image(self, path, image, image_id, fields):
        """POST `fields` for an image: by id when the daemon has it (or was
        given an id), else with the bytes; a 404 on a remembered id sends
        the bytes."""
        if image is not None and _is_image_id(image):
            image, image_id = None, image
        if image is None:
            if image_id is None:
                raise ValueError("give an image or an image_id")
            return self._json("POST", path, dict(fields, image_id=image_id))
        data = _image_bytes(image)
        sha = hashlib.sha256(data).hexdigest()
        if self.reuse_images and sha in self._known and path == "/v1/segment":
            try:
                return self._json("POST", path, dict(fields, image_id=sha))
            except NotFoundError as e:
                if e.field != "image_id":
                    raise
                self._known.pop(sha, None)
        r = self._multipart(path, data, fields)
        self._remember(r.get("image_id"))
        return r

    # ---- the API ----

    def segment(self, image=None, points=None, boxes=None, task=None, everything=None, multimask=None,
                output=None, image_id=None):
        """POST /v1/segment. `image`: bytes, a path, a file object, a PIL
        image, a uint8 array, or an image id; `points`: (x, y[, label])
        with label 1 object (default) or 0 background; `boxes`: (x0, y0,
        x1, y1), one or a list (each box is one prompt); `task`: words;
        `everything`: True or a dict of the automatic mask generator's
        parameters (points_per_side, pred_iou_thresh, ...); `multimask`:
        3 masks a prompt (default) or 1; `output`: "rle" (default), "png"
        or "polygon". A task alone means every object of the task."""
        fields = {}
        if points is not None:
            fields["points"] = _points(points)
        if boxes is not None:
            fields["boxes"] = _boxes(boxes)
        if task is not None:
            fields["task"] = task
        if everything is not None:
            fields["everything"] = everything
        if multimask is not None:
            fields["multimask"] = bool(multimask)
        if output is not None:
            fields["output"] = output
        return SegmentResult(self._with_image("/v1/segment", image, image_id, fields))

    def embed(self, image):
        """POST /v1/embeddings: compute and cache the image's embedding;
        returns its image_id (what segment(image_id=...) takes)."""
        r = self._with_image("/v1/embeddings", image, None, {})
        return r["image_id"]

    def embedding(self, image_id):
        """GET /v1/embeddings/{id}: the cached embedding's metadata."""
        return self._request("GET", "/v1/embeddings/" + urllib.parse.quote(image_id, safe=""))

    def health(self):
        """GET /healthz."""
        return self._request("GET", "/healthz")

    def ready(self):
        """True when the model is loaded and the daemon takes requests."""
        try:
            self._request("GET", "/readyz")
            return True
        except TasamError as e:
            if e.status == 503:
                return False
            raise

    def wait_ready(self, timeout=120.0, poll=0.5):
        """Wait until ready(); TimeoutError after `timeout` seconds."""
        t0 = time.monotonic()
        while True:
            try:
                if self.ready():
                    return
            except TasamConnectionError:
                pass
            if time.monotonic() - t0 > timeout:
                raise TimeoutError("tasamd at %s is not ready after %.0f s" % (self.url, timeout))
            time.sleep(poll)

    def info(self):
        """GET /v1/info: model, device, limits, hypernetwork, versions."""
        return self._request("GET", "/v1/info")

    def metrics(self):
        """GET /metrics: the Prometheus text."""
        return self._request("GET", "/metrics", raw=True).decode("utf-8")

    # ---- task adapters ----

    def adapter(self, task):
        """GET /v1/adapters?task=: the cached adapter of a task, or None."""
        try:
            return self._request("GET", "/v1/adapters?" + urllib.parse.urlencode({"task": task}))
        except NotFoundError:
            return None

    def create_adapter(self, task):
        """POST /v1/adapters: generate (or find) and cache a task's adapter."""
        return self._json("POST", "/v1/adapters", {"task": task})

    def adapters(self, limit=50):
        """The cached adapters (GET /v1/adapters), every page, as an iterator."""
        after = None
        while True:
            q = {"limit": limit}
            if after:
                q["after"] = after
            page = self._request("GET", "/v1/adapters?" + urllib.parse.urlencode(q))
            for a in page.get("adapters", []):
                yield a
            after = page.get("next_after")
            if not after:
                return

    def adapter_info(self, adapter_id):
        """GET /v1/adapters/{id}: one cached adapter's metadata."""
        return self._request("GET", "/v1/adapters/" + urllib.parse.quote(adapter_id, safe=""))

    def adapter_weights(self, adapter_id):
        """GET /v1/adapters/{id}/weights: the adapter file (safetensors bytes)."""
        return self._request("GET", "/v1/adapters/%s/weights" % urllib.parse.quote(adapter_id, safe=""),
                             raw=True)

    def flush_adapters(self):
        """DELETE /admin/adapters (admin token): empty the adapter cache."""
        return self._request("DELETE", "/admin/adapters", admin=True)

    # ---- training (admin token) ----

    def train(self, data, val=None, steps=None, batch=None, **options):
        """POST /admin/train: start a training job of the hypernetwork on
        `data` (and validation on `val`), paths under the daemon's
        train-data-dir; any other `tasam-train run` option by name (lr,
        warmup, seed, ...). Returns the job ({"id", "state": "queued", ...})."""
        body = {"data": data}
        if val is not None:
            body["val"] = val
        if steps is not None:
            body["steps"] = steps
        if batch is not None:
            body["batch"] = batch
        body.update(options)
        return self._json("POST", "/admin/train", body, admin=True)

    def train_jobs(self):
        """GET /admin/train: the training jobs, newest first."""
        r = self._request("GET", "/admin/train", admin=True)
        return r.get("jobs", []) if isinstance(r, dict) else r

    def train_job(self, job_id):
        """GET /admin/train/{id}: a job's state, step, loss, metrics."""
        return self._request("GET", "/admin/train/" + urllib.parse.quote(str(job_id), safe=""), admin=True)

    def cancel_train(self, job_id):
        """DELETE /admin/train/{id}: cancel a job."""
        return self._request("DELETE", "/admin/train/" + urllib.parse.quote(str(job_id), safe=""),
                             admin=True)

    def wait_train(self, job_id, timeout=None, poll=1.0, on_progress=None):
        """Poll a job until it succeeds, fails or is cancelled; returns the
        last state (check its "state"). on_progress(job) sees every poll.
        TimeoutError after `timeout` seconds (None: no limit)."""
        t0 = time.monotonic()
        while True:
            job = self.train_job(job_id)
            if on_progress:
                on_progress(job)
            if job.get("state") in _TERMINAL:
                return job
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise TimeoutError("training job %s is still %s after %.0f s" % (job_id, job.get("state"), timeout))
            time.sleep(poll)

    def rollback_hypernet(self):
        """POST /admin/hypernet/rollback: the previous hypernetwork version
        becomes active again."""
        return self._request("POST", "/admin/hypernet/rollback", admin=True)
