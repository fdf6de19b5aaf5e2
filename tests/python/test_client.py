#!/usr/bin/env python3
"""tests/python/test_client.py: the Python client (clients/python, installed
with pip into a virtual environment) against a live tasamd serving the
fixture model with a random hypernetwork and an admin token.

    test_client.py --url http://127.0.0.1:PORT --admin-token TOKEN --fixtures DIR

Masks are checked against the engine's own outputs: the same prompt as RLE
and as PNG (two encoders in the daemon, two decoders here) must agree pixel
for pixel, and with the reference goldens of the fixtures. The training
calls, whose daemon side may be absent, are checked on the wire against a
local recording server, and against the daemon where it has them.

Prints "STEP <name> ok|FAIL <why>|SKIP <why>" per test and "DONE"
(tests/pyrun.h).
"""
import argparse
import hashlib
import http.server
import json
import os
import struct
import sys
import threading
import traceback
import unittest

import tasam
from tasam import Client

ARGS = None
DOG = None         # bytes of images/dog.jpg
DOG_ID = None      # its sha256
GOLDEN = None      # golden_tiny.safetensors: name -> (dtype, shape, bytes)


def safetensors(path, names):
    """The named tensors of a safetensors file: name -> (dtype, shape, bytes)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        out = {}
        for k in names:
            t = head[k]
            a, b = t["data_offsets"]
            f.seek(8 + n + a)
            out[k] = (t["dtype"], t["shape"], f.read(b - a))
    return out


def agreement(a, b):
    same = sum(1 for x, y in zip(a, b) if (x != 0) == (y != 0))
    return same / max(1, len(a))


def has_numpy():
    try:
        import numpy  # noqa: F401
        return True
    except ImportError:
        return False


class Live(unittest.TestCase):
    """Against the daemon."""

    def setUp(self):
        self.c = Client(ARGS.url, admin_token=None)
        self.admin = Client(ARGS.url, admin_token=ARGS.admin_token)

    def test_installed(self):
        # the package under test is the one pip installed, not the source tree
        self.assertIn("site-packages", tasam.__file__)
        self.assertEqual(tasam.__version__, "0.1.0")

    def test_health_info_metrics(self):
        self.assertEqual(self.c.health(), {"status": "ok"})
        self.assertTrue(self.c.ready())
        self.c.wait_ready(timeout=5)
        info = self.c.info()
        self.assertTrue(info["ready"])
        self.assertTrue(info["hypernetwork"]["available"])
        self.assertIn("max_points", info["limits"])
        self.assertIn("tasam_requests_total", self.c.metrics())

    def test_embed(self):
        image_id = self.c.embed(os.path.join(ARGS.fixtures, "images", "dog.jpg"))
        self.assertEqual(image_id, DOG_ID)
        meta = self.c.embedding(image_id)
        self.assertEqual((meta["width"], meta["height"]), (800, 534))

    def test_segment_goldens(self):
        """point1: the client's decode of the RLE equals the reference masks."""
        r = self.c.segment(DOG, points=[(400, 293.7, 1)])
        self.assertEqual((r.width, r.height, len(r)), (800, 534, 3))
        self.assertEqual(r.image_id, DOG_ID)
        dtype, shape, data = GOLDEN["point1.masks"]
        self.assertEqual(shape, [3, 534, 800])
        for k, m in enumerate(r):
            self.assertEqual(m.prompt, 0)
            got = m.decode()
            self.assertEqual(len(got), 534 * 800)
            self.assertEqual(sum(got), m.area)
            ref = data[k * 534 * 800:(k + 1) * 534 * 800]
            self.assertGreaterEqual(agreement(got, ref), 0.999, "mask %d" % k)
            # the encoder gives back the daemon's exact string
            self.assertEqual(tasam.rle_encode(got, 534, 800), m.rle)
        best = r.best()
        self.assertEqual(len(best), 1)
        self.assertEqual(best[0].predicted_iou, max(m.predicted_iou for m in r))

    def test_rle_equals_png(self):
        """The engine's two encoders through the client's two decoders."""
        pts = [(400, 294, 1), (150, 100, 0)]
        a = self.c.segment(DOG, points=pts)
        b = self.c.segment(DOG, points=pts, output="png")
        self.assertEqual(len(a), len(b))
        for ma, mb in zip(a, b):
            self.assertIsNotNone(mb.png)
            self.assertIsNone(mb.rle)
            self.assertEqual(ma.decode(), mb.decode())
        p = self.c.segment(DOG, points=pts, output="polygon", multimask=False)
        self.assertEqual(len(p), 1)
        self.assertTrue(p[0].polygons)
        with self.assertRaises(ValueError):
            p[0].decode()

    def test_numpy(self):
        if not has_numpy():
            self.skipTest("NumPy is not installed")
        import numpy as np
        r = self.c.segment(DOG, boxes=(160, 80, 560, 480), multimask=False)
        m = r[0]
        arr = m.to_numpy()
        self.assertEqual(arr.shape, (534, 800))
        self.assertEqual(arr.dtype, bool)
        self.assertEqual(int(arr.sum()), m.area)
        self.assertEqual(arr.astype(np.uint8).tobytes(), m.decode())
        self.assertEqual(tasam.rle_encode(arr), m.rle)
        # an array is an image too (sent as PNG): same pixels, same masks
        dog_rgb = GOLDEN["image_rgb"][2]
        img = np.frombuffer(dog_rgb, dtype=np.uint8).reshape(534, 800, 3)
        r2 = self.c.segment(img, boxes=(160, 80, 560, 480), multimask=False)
        self.assertNotEqual(r2.image_id, DOG_ID)
        self.assertGreaterEqual(agreement(r2[0].decode(), m.decode()), 0.99)

    def test_image_sent_once(self):
        sent = []
        c = Client(ARGS.url)
        real = c._request

        def spy(method, path, body=None, content_type=None, admin=False, raw=False):
            sent.append((path, content_type or "", len(body or b"")))
            return real(method, path, body, content_type, admin, raw)

        c._request = spy
        r1 = c.segment(DOG, points=[(400, 294)])
        r2 = c.segment(DOG, points=[(300, 200)])
        r3 = c.segment(DOG_ID, boxes=[(160, 80, 560, 480), (0, 0, 100, 100)])
        self.assertTrue(sent[0][1].startswith("multipart/form-data"))
        self.assertGreater(sent[0][2], len(DOG))
        self.assertEqual(sent[1][1], "application/json")
        self.assertLess(sent[1][2], 500)
        self.assertEqual(sent[2][1], "application/json")
        self.assertEqual(r2.cache["embedding"], "hit")
        self.assertEqual(r1.image_id, r2.image_id)
        self.assertEqual(len(r3), 6)
        self.assertEqual([m.prompt for m in r3], [0, 0, 0, 1, 1, 1])
        # an id the daemon does not have (never seen, or evicted): the
        # client tries it, gets 404 and sends the bytes, transparently
        from tasam import masks
        new = masks.png_encode(bytes(range(256)) * 48, 64, 64, 3)
        c._known[hashlib.sha256(new).hexdigest()] = True
        del sent[:]
        r4 = c.segment(new, points=[(10, 10)])
        self.assertEqual([s[1].split(";")[0] for s in sent], ["application/json", "multipart/form-data"])
        self.assertEqual((r4.width, r4.height), (64, 64))

    def test_everything(self):
        params = {"points_per_side": 4, "pred_iou_thresh": 0, "stability_score_thresh": 0,
                  "box_nms_thresh": 1}
        r = self.c.segment(DOG_ID, everything=params)
        self.assertEqual(r.mode, "everything")
        # the fixture's grid4_all: the official generator keeps 48 masks
        ref = json.load(open(os.path.join(ARGS.fixtures, "golden_amg_tiny.json")))
        case = [c for c in ref["cases"] if c["name"] == "grid4_all"][0]
        self.assertEqual(len(r), len(case["masks"]))
        for m, g in zip(r, case["masks"]):
            self.assertAlmostEqual(m.predicted_iou, g["predicted_iou"], delta=1e-3)
            self.assertLessEqual(abs(m.area - g["area"]), 0.001 * g["area"] + 1)
            self.assertEqual(len(m.point_coords), 1)
            self.assertEqual(len(m.crop_box), 4)
            self.assertEqual(sum(m.decode()), m.area)
        self.assertEqual(len(r.best()), len(r))
        coco = r.to_coco(file_name="dog.jpg")
        self.assertEqual(len(coco["annotations"]), 48)

    def test_task(self):
        task = "segment the dog, client test"
        self.assertIsNone(self.c.adapter(task))
        r = self.c.segment(DOG_ID, points=[(400, 294, 1)], task=task)
        self.assertEqual(r.adapter["source"], "generated")
        plain = self.c.segment(DOG_ID, points=[(400, 294, 1)])
        self.assertNotEqual([m.rle for m in r], [m.rle for m in plain])
        meta = self.c.adapter(task)
        self.assertEqual(meta["id"], r.adapter["id"])
        again = self.c.create_adapter(task)
        self.assertEqual(again["id"], meta["id"])
        self.assertIn(again["source"], ("cache-memory", "cache-disk"))
        self.assertEqual(self.c.adapter_info(meta["id"])["task_normalized"], r.adapter["task_normalized"])
        w = self.admin.adapter_weights(meta["id"])
        n = struct.unpack("<Q", w[:8])[0]
        self.assertIn("lora_A", w[8:8 + n].decode())
        ids = [a["id"] for a in self.admin.adapters(limit=1)]
        self.assertIn(meta["id"], ids)
        # a task alone: every object of the task (everything mode under the
        # adapter, with the daemon's defaults: a 3x3 grid keeping every mask)
        alone = self.c.segment(DOG_ID, task=task)
        self.assertEqual(alone.mode, "everything")
        self.assertEqual(len(alone), alone.everything_stats["masks"])
        self.assertEqual(alone.everything["points_per_side"], 3)
        self.assertGreater(len(alone), 0)
        self.assertEqual(alone.adapter["id"], meta["id"])
        self.assertTrue(all(m.point_coords for m in alone))

    def test_admin_token(self):
        with self.assertRaises(tasam.UnauthorizedError) as cm:
            self.c.flush_adapters()
        self.assertEqual(cm.exception.status, 401)
        self.assertIn("token", cm.exception.message)
        with self.assertRaises(tasam.ForbiddenError):
            Client(ARGS.url, admin_token="wrong").flush_adapters()
        flushed = self.admin.flush_adapters()
        self.assertIn("flushed", flushed)

    def test_errors(self):
        with self.assertRaises(tasam.BadRequestError) as cm:
            self.c.segment(DOG_ID, points=[(9999, 10, 1)])
        e = cm.exception
        self.assertEqual((e.status, e.field), (400, "points[0]"))
        self.assertTrue(e.message)
        self.assertIsInstance(e, tasam.ClientError)
        self.assertIn("HTTP 400", str(e))
        with self.assertRaises(tasam.NotFoundError) as cm:
            self.c.segment(image_id="ab" * 32, points=[(1, 1)])
        self.assertEqual(cm.exception.field, "image_id")
        with self.assertRaises((tasam.UnsupportedMediaTypeError, tasam.BadRequestError)) as cm:
            self.c.segment(b"not an image at all", points=[(1, 1)])
        self.assertEqual(cm.exception.field, "image")
        with self.assertRaises(tasam.BadRequestError):
            self.c.segment(DOG_ID, task="   ")
        with self.assertRaises(ValueError):
            self.c.segment(DOG_ID, points=[(1, 2, 3, 4)])
        with self.assertRaises(tasam.TasamConnectionError) as cm:
            Client("http://127.0.0.1:1", timeout=5).health()
        self.assertEqual(cm.exception.status, 0)

    def test_training_live(self):
        """The training routes of the daemon: the token is required, and a
        daemon without --train-data-dir refuses to train (403, saying why)."""
        with self.assertRaises(tasam.UnauthorizedError) as cm:
            self.c.train_jobs()
        self.assertEqual(cm.exception.status, 401)
        jobs = self.admin.train_jobs()
        self.assertIsInstance(jobs, list)
        with self.assertRaises(tasam.ClientError) as cm:
            self.admin.train("shapes/train", val="shapes/val", steps=1, batch=1)
        self.assertEqual(cm.exception.status, 403)
        self.assertIn("train-data-dir", cm.exception.message)


class Recorder(http.server.BaseHTTPRequestHandler):
    """A stand-in daemon for the training routes: records each request and
    answers as issue 11's API says."""
    log = []
    polls = 0

    def _answer(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        Recorder.log.append((self.command, self.path, self.headers.get("Authorization"),
                             self.headers.get("Content-Type"), body))
        if self.path == "/busy":
            if Recorder.polls < 100:
                Recorder.polls = 100
                self.send_response(429)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                return None
            return self._answer(200, {"ok": True})
        if self.headers.get("Authorization") != "Bearer adm":
            return self._answer(401, {"error": {"code": 401, "message": "needs the admin token", "field": ""}})
        if self.command == "POST" and self.path == "/admin/train":
            return self._answer(202, {"id": "j1", "state": "queued", "steps": json.loads(body)["steps"]})
        if self.command == "GET" and self.path == "/admin/train":
            return self._answer(200, {"jobs": [{"id": "j1", "state": "running"}]})
        if self.command == "GET" and self.path == "/admin/train/j1":
            Recorder.polls += 1
            state = "running" if Recorder.polls < 3 else "succeeded"
            return self._answer(200, {"id": "j1", "state": state, "step": Recorder.polls})
        if self.command == "DELETE" and self.path == "/admin/train/j1":
            return self._answer(200, {"id": "j1", "state": "cancelled"})
        if self.command == "POST" and self.path == "/admin/hypernet/rollback":
            return self._answer(200, {"hypernetwork": {"id": "h0", "version": "1"}})
        return self._answer(404, {"error": {"code": 404, "message": "no such route", "field": ""}})

    do_GET = do_POST = do_DELETE = _handle

    def log_message(self, *a):
        pass


class Wire(unittest.TestCase):
    """The training calls on the wire (issue 11's API), and retries."""

    @classmethod
    def setUpClass(cls):
        cls.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        cls.th = threading.Thread(target=cls.srv.serve_forever, daemon=True)
        cls.th.start()
        cls.url = "http://127.0.0.1:%d" % cls.srv.server_address[1]

    @classmethod
    def tearDownClass(cls):
        cls.srv.shutdown()
        cls.srv.server_close()

    def test_training_calls(self):
        Recorder.log.clear()
        Recorder.polls = 0
        c = Client(self.url, admin_token="adm", token="api")
        job = c.train("shapes/train", val="shapes/val", steps=60, batch=2, lr=1e-3, seed=3)
        self.assertEqual(job, {"id": "j1", "state": "queued", "steps": 60})
        method, path, auth, ctype, body = Recorder.log[-1]
        self.assertEqual((method, path, auth, ctype), ("POST", "/admin/train", "Bearer adm", "application/json"))
        self.assertEqual(json.loads(body), {"data": "shapes/train", "val": "shapes/val", "steps": 60,
                                            "batch": 2, "lr": 1e-3, "seed": 3})
        self.assertEqual(c.train_jobs(), [{"id": "j1", "state": "running"}])
        seen = []
        done = c.wait_train("j1", poll=0.01, on_progress=seen.append)
        self.assertEqual(done["state"], "succeeded")
        self.assertEqual([j["state"] for j in seen], ["running", "running", "succeeded"])
        self.assertEqual(c.cancel_train("j1")["state"], "cancelled")
        self.assertEqual(Recorder.log[-1][:3], ("DELETE", "/admin/train/j1", "Bearer adm"))
        self.assertEqual(c.rollback_hypernet()["hypernetwork"]["version"], "1")
        self.assertEqual(Recorder.log[-1][:2], ("POST", "/admin/hypernet/rollback"))
        with self.assertRaises(tasam.UnauthorizedError):
            Client(self.url, token="api").train_jobs()
        self.assertEqual(Recorder.log[-1][2], "Bearer api")

    def test_retry_after(self):
        Recorder.polls = 0
        c = Client(self.url, retries=1)
        self.assertEqual(c._request("GET", "/busy"), {"ok": True})
        Recorder.polls = 0
        with self.assertRaises(tasam.TooManyRequestsError) as cm:
            Client(self.url, retries=0)._request("GET", "/busy")
        self.assertEqual(cm.exception.retry_after, 1)


class Codec(unittest.TestCase):
    """RLE and PNG on their own."""

    def test_rle_roundtrip(self):
        import random
        rnd = random.Random(5)
        for h, w in [(1, 1), (3, 7), (40, 33), (128, 1)]:
            for density in (0.0, 0.02, 0.5, 1.0):
                m = bytes(1 if rnd.random() < density else 0 for _ in range(h * w))
                rle = tasam.rle_encode(m, h, w)
                self.assertEqual(tasam.rle_decode(rle), m)
                self.assertEqual(tasam.rle_area(rle), sum(m))
                self.assertEqual(tasam.rle_string(tasam.rle_counts(rle["counts"])), rle["counts"])
        # runs past 32 bits survive (the page's decoder must not use 32-bit shifts either)
        big = [0, 3000000000]
        self.assertEqual(tasam.rle_counts(tasam.rle_string(big)), big)
        with self.assertRaises(ValueError):
            tasam.rle_decode({"size": [2, 2], "counts": "3"})
        with self.assertRaises(ValueError):
            tasam.rle_counts("0\x7f")

    def test_png(self):
        from tasam import masks
        rows = bytes([0, 255, 0, 255, 255, 0])
        png = masks.png_encode(rows, 3, 2, 1)
        self.assertEqual(tasam.png_decode(png), (3, 2, bytes([0, 1, 0, 1, 1, 0])))
        with self.assertRaises(ValueError):
            tasam.png_decode(b"nope")


class StepResult(unittest.TestResult):
    def _name(self, test):
        return "%s.%s" % (type(test).__name__, test._testMethodName)

    def addSuccess(self, test):
        print("STEP %s ok" % self._name(test), flush=True)

    def addFailure(self, test, err):
        print("STEP %s FAIL %s" % (self._name(test), str(err[1]).replace("\n", " ")[:400]), flush=True)
        traceback.print_exception(*err, file=sys.stderr)

    def addError(self, test, err):
        print("STEP %s FAIL %s: %s" % (self._name(test), err[0].__name__,
                                       str(err[1]).replace("\n", " ")[:400]), flush=True)
        traceback.print_exception(*err, file=sys.stderr)

    def addSkip(self, test, reason):
        print("STEP %s SKIP %s" % (self._name(test), reason), flush=True)


def main():
    global ARGS, DOG, DOG_ID, GOLDEN
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--admin-token", required=True)
    ap.add_argument("--fixtures", required=True)
    ARGS = ap.parse_args()
    with open(os.path.join(ARGS.fixtures, "images", "dog.jpg"), "rb") as f:
        DOG = f.read()
    DOG_ID = hashlib.sha256(DOG).hexdigest()
    GOLDEN = safetensors(os.path.join(ARGS.fixtures, "golden_tiny.safetensors"),
                         ["point1.masks", "image_rgb"])
    suite = unittest.TestSuite()
    loader = unittest.TestLoader()
    for cls in (Codec, Wire, Live):
        suite.addTests(loader.loadTestsFromTestCase(cls))
    suite.run(StepResult())
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
