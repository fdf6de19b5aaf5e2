#!/usr/bin/env python3
"""tests/web/browser_test.py: the demo page in headless Chromium (Selenium).

Run by tests/test_web.c against a live tasamd that serves the fixture model
with a random hypernetwork:

    browser_test.py --url http://127.0.0.1:PORT --image dog.jpg --out DIR

It opens the page, uploads the image, clicks, shift-clicks, right-clicks,
drags a box, switches the multimask output, runs everything mode, applies a
task with and without points, downloads the masks, and checks along the way
that masks appear (#count and the canvas pixels), that no request leaves the
daemon, that the image is sent once, that the browser logs no error, and
that an API error is shown. Screenshots of each step go to DIR.

Output: one line per step, "STEP <name> ok" or "STEP <name> FAIL <why>",
then "DONE" (tests/pyrun.h reports them through the test harness).
"""
import argparse
import json
import os
import re
import struct
import sys
import time
import traceback

# the client library's RLE encoder, from the source tree (a known string for the page's decoder)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))
from tasam.masks import rle_string  # noqa: E402

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

# Steps in order; tests/test_web.c expects each of these names.
STEPS = ["page", "upload", "click", "multimask", "background", "box", "everything",
         "task_alone", "task_points", "downloads", "console", "network", "error_shown"]


class StepFailed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise StepFailed(msg)


class Page:
    def __init__(self, args):
        self.args = args
        self.url = args.url.rstrip("/")
        self.out = args.out
        self.downloads = os.path.join(self.out, "downloads")
        os.makedirs(self.downloads, exist_ok=True)
        for f in os.listdir(self.downloads):
            os.unlink(os.path.join(self.downloads, f))
        opts = webdriver.ChromeOptions()
        opts.binary_location = args.chromium
        for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                  "--window-size=1280,900", "--force-device-scale-factor=1", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-default-apps", "--disable-sync", "--disable-extensions"]:
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        opts.add_experimental_option("prefs", {"download.default_directory": self.downloads,
                                               "download.prompt_for_download": False})
        self.d = webdriver.Chrome(service=Service(executable_path=args.chromedriver), options=opts)
        self.d.set_script_timeout(60)
        self.d.execute_cdp_cmd("Browser.setDownloadBehavior",
                               {"behavior": "allow", "downloadPath": self.downloads})
        self.perf = []      # every performance-log entry read so far
        self.console = []   # every browser-log entry read so far
        self.shot_n = 0

    # ---- page access ----

    def q(self, sel):
        return self.d.find_element(By.CSS_SELECTOR, sel)

    def shot(self, name):
        self.shot_n += 1
        self.d.save_screenshot(os.path.join(self.out, "%02d-%s.png" % (self.shot_n, name)))

    def seq(self):
        return int(self.q("#count").get_attribute("data-seq"))

    def count(self):
        text = self.q("#count").text
        m = re.match(r"(\d+)", text)
        check(m, "#count text '%s' does not start with a number" % text)
        return int(m.group(1))

    def wait_response(self, before, timeout=None):
        """Waits until the page has seen a response after `before` and is idle."""
        timeout = timeout or self.args.timeout
        try:
            WebDriverWait(self.d, timeout, poll_frequency=0.1).until(
                lambda d: self.seq() > before and
                d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle")
        except Exception:
            raise StepFailed("no response within %d s (#count '%s', error '%s')" %
                             (timeout, self.q("#count").text, self.error_text()))

    def respond(self, action, ok=True):
        """Runs action() and waits for the page's response to it; with ok,
        the page must show no error after it."""
        before = self.seq()
        action()
        self.wait_response(before)
        if ok:
            self.no_error()

    def error_text(self):
        e = self.q("#error")
        return self.q("#error-text").text if e.is_displayed() else ""

    def no_error(self):
        t = self.error_text()
        check(not t, "the page shows an error: %s" % t)

    def pixels(self):
        """A sample of the canvas's pixels (every 5th pixel, RGB)."""
        return self.d.execute_script(
            "const v = document.querySelector('#view');"
            # a copy to read from: reading the page's own canvas back makes
            # Chromium warn (willReadFrequently), which the console step counts
            "const c = document.createElement('canvas'); c.width = v.width; c.height = v.height;"
            "const x = c.getContext('2d', {willReadFrequently: true}); x.drawImage(v, 0, 0);"
            "const d = x.getImageData(0, 0, c.width, c.height).data;"
            "const out = [];"
            "for (let i = 0; i < d.length; i += 20) out.push(d[i], d[i + 1], d[i + 2]);"
            "return out;")

    @staticmethod
    def changed(a, b):
        """Fraction of sampled pixels that differ."""
        if len(a) != len(b) or not a:
            return 1.0
        n = len(a) // 3
        diff = sum(1 for i in range(n) if a[3 * i:3 * i + 3] != b[3 * i:3 * i + 3])
        return diff / n

    def image_point(self, x, y):
        """Offsets from the canvas centre of image pixel (x, y): the page fits
        the image into the canvas, centred."""
        r = self.d.execute_script(
            "const r = document.querySelector('#view').getBoundingClientRect();"
            "return [r.width, r.height];")
        w, h = self.size
        s = min(r[0] / w, r[1] / h)
        ox, oy = (r[0] - w * s) / 2, (r[1] - h * s) / 2
        return ox + x * s - r[0] / 2, oy + y * s - r[1] / 2

    def click_image(self, x, y, how="left"):
        view = self.q("#view")
        dx, dy = self.image_point(x, y)
        a = ActionChains(self.d).move_to_element_with_offset(view, int(dx), int(dy))
        if how == "shift":
            a = a.key_down(Keys.SHIFT).click().key_up(Keys.SHIFT)
        elif how == "right":
            a = a.context_click()
        else:
            a = a.click()
        a.perform()

    def read_perf(self):
        for e in self.d.get_log("performance"):
            self.perf.append(json.loads(e["message"])["message"])

    def requests(self):
        """Every request the page made so far: (method, url, postData or None)."""
        self.read_perf()
        out = []
        for m in self.perf:
            if m.get("method") == "Network.requestWillBeSent":
                r = m["params"]["request"]
                out.append((r["method"], r["url"], r.get("postData")))
        return out

    def last_segment(self):
        for method, url, body in reversed(self.requests()):
            if method == "POST" and url.endswith("/v1/segment"):
                return json.loads(body) if body and body.lstrip().startswith("{") else body
        raise StepFailed("no POST /v1/segment was made")

    def read_console(self):
        self.console.extend(self.d.get_log("browser"))

    # ---- steps ----

    def step_page(self):
        self.d.get(self.url + "/")
        WebDriverWait(self.d, 30).until(lambda d: "SAM" in self.q("#server").text or
                                        "failed" in self.q("#server").text)
        check("SAM" in self.q("#server").text, "header: %s" % self.q("#server").text)
        for sel in ["#image", "#view", "#everything", "#task", "#count"]:
            check(self.d.find_elements(By.CSS_SELECTOR, sel), "no %s on the page" % sel)
        check(self.count() == 0, "#count before an image: %s" % self.q("#count").text)
        self.no_error()
        self.shot("page")

    def step_upload(self):
        self.blank = self.pixels()
        self.respond(lambda: self.q("#image").send_keys(os.path.abspath(self.args.image)))
        name = self.q("#image-name").text
        m = re.search(r"(\d+)×(\d+)", name)
        check(m, "image name line '%s'" % name)
        self.size = (int(m.group(1)), int(m.group(2)))
        self.photo = self.pixels()
        check(self.changed(self.blank, self.photo) > 0.2, "the image was not drawn")
        check(self.count() == 0, "#count after the upload: %s" % self.q("#count").text)
        cache = self.q("#cache").text
        check("embedding: miss" in cache, "a new image's embedding: '%s'" % cache)
        check("image encoder" in self.q("#timings").text, "no encoder time: %s" % self.q("#timings").text)
        self.shot("upload")

    def step_click(self):
        self.respond(lambda: self.click_image(400, 294))
        n = self.count()
        check(n > 0, "no mask after a click (#count '%s')" % self.q("#count").text)
        self.clicked = self.pixels()
        frac = self.changed(self.photo, self.clicked)
        check(frac > 0.001, "the canvas did not change after the click (%.5f)" % frac)
        cache = self.q("#cache").text
        check("embedding: hit" in cache, "a click's embedding: '%s'" % cache)
        req = self.last_segment()
        check(isinstance(req, dict) and "image_id" in req and "image" not in req,
              "the click's request does not name the image by image_id: %r" % (req,))
        check(req.get("points") and req["points"][0][2] == 1, "points %r" % req.get("points"))
        self.shot("click")

    def step_multimask(self):
        text = self.q("#count").text
        check("of 3" in text, "a click with 3 outputs: #count '%s'" % text)
        outs = self.d.find_elements(By.CSS_SELECTOR, "#outputs button")
        check(len(outs) == 3 and outs[0].is_displayed(), "the 3 output buttons are not shown")
        cur = int(re.search(r"output (\d)", text).group(1))
        other = 1 if cur != 1 else 2
        before = self.pixels()
        outs[other - 1].click()
        check("output %d of 3" % other in self.q("#count").text,
              "#count after choosing output %d: %s" % (other, self.q("#count").text))
        items = self.d.find_elements(By.CSS_SELECTOR, "#masks li")
        check(len(items) == 3, "%d masks listed, want 3" % len(items))
        check(all("IoU" in li.text and "stability" in li.text for li in items),
              "the list lacks the scores: %r" % [li.text for li in items])
        frac = self.changed(before, self.pixels())
        check(frac > 0, "switching outputs did not change the picture")
        self.shot("multimask")

    def step_background(self):
        self.respond(lambda: self.click_image(150, 100, "shift"))
        req = self.last_segment()
        labels = [p[2] for p in req.get("points", [])]
        check(labels == [1, 0], "after a shift-click the points' labels are %r" % labels)
        self.respond(lambda: self.click_image(700, 480, "right"))
        req = self.last_segment()
        labels = [p[2] for p in req.get("points", [])]
        check(labels == [1, 0, 0], "after a right-click the points' labels are %r" % labels)
        check(self.count() > 0, "no mask after the background points")
        self.shot("background")

    def step_box(self):
        self.q("#clear").click()
        check(self.count() == 0, "clear left %s" % self.q("#count").text)
        view = self.q("#view")
        x0, y0 = self.image_point(160, 80)
        x1, y1 = self.image_point(560, 480)
        self.respond(lambda: ActionChains(self.d).move_to_element_with_offset(view, int(x0), int(y0))
                     .click_and_hold().move_by_offset(int((x1 - x0) / 2), int((y1 - y0) / 2))
                     .move_by_offset(int((x1 - x0) / 2), int((y1 - y0) / 2)).release().perform())
        req = self.last_segment()
        boxes = req.get("boxes") or []
        check(len(boxes) == 1 and "points" not in req, "a drag sent %r" % (req,))
        b = boxes[0]
        check(abs(b[0] - 160) < 4 and abs(b[1] - 80) < 4 and abs(b[2] - 560) < 4 and abs(b[3] - 480) < 4,
              "the box %r is not the one dragged (160, 80, 560, 480)" % (b,))
        check(self.count() > 0, "no mask for the box")
        self.shot("box")

    def set_everything(self, **params):
        det = self.q("#ev-settings")
        if not det.get_attribute("open"):
            det.find_element(By.TAG_NAME, "summary").click()
        for k, v in params.items():
            el = self.q("#ev-" + k)
            el.clear()
            el.send_keys(str(v))

    def step_everything(self):
        self.q("#clear").click()
        # the fixture's grid4_all case: the reference generator keeps 48 masks
        self.set_everything(points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0,
                            box_nms_thresh=1)
        shown = self.pixels()
        self.respond(lambda: self.q("#everything").click())
        req = self.last_segment()
        check(isinstance(req, dict) and req.get("everything", {}).get("points_per_side") == 4,
              "the everything request: %r" % (req,))
        n = self.count()
        check(n == 48, "everything mode (grid4_all) shows %d masks, the reference keeps 48" % n)
        check(len(self.d.find_elements(By.CSS_SELECTOR, "#masks li")) == 48, "the list is not 48 long")
        frac = self.changed(shown, self.pixels())
        check(frac > 0.05, "the canvas barely changed in everything mode (%.4f)" % frac)
        # the page's RLE decoder agrees with the daemon's areas, and keeps runs
        # past 32 bits (no 32-bit shifts)
        bad = self.d.execute_script(
            "return state.masks.filter((m) => {"
            "  let a = 0; for (let i = 1; i < m.counts.length; i += 2) a += m.counts[i];"
            "  return a !== m.rec.area; }).length;")
        check(bad == 0, "%s masks decode to another area than the daemon's" % bad)
        big = self.d.execute_script("return rleCounts(%s, 1, 3000000000);" % json.dumps(rle_string([0, 3000000000])))
        check(big == [0, 3000000000], "a 3e9 run decodes as %r" % (big,))
        self.everything_pixels = self.pixels()
        self.shot("everything")

    def step_task_alone(self):
        self.q("#clear").click()
        t = self.q("#task")
        t.clear()
        self.respond(lambda: t.send_keys("segment the dog" + Keys.ENTER))
        req = self.last_segment()
        check(isinstance(req, dict) and req.get("task") == "segment the dog" and "points" not in req,
              "a task alone sent %r" % (req,))
        n = self.count()
        check(n > 0, "a task alone shows no mask (#count '%s')" % self.q("#count").text)
        cache = self.q("#cache").text
        check("adapter:" in cache, "the adapter is not shown: '%s'" % cache)
        frac = self.changed(self.everything_pixels, self.pixels())
        check(frac > 0.001, "the task's adapter changed nothing on the canvas")
        self.shot("task-alone")

    def step_task_points(self):
        self.respond(lambda: self.click_image(400, 294))
        req = self.last_segment()
        check(req.get("task") == "segment the dog" and req.get("points"), "task + point sent %r" % (req,))
        check(self.count() > 0, "no mask for a task with a point")
        cache = self.q("#cache").text
        check("adapter: cache-memory" in cache, "the second use of the task's adapter: '%s'" % cache)
        check(self.changed(self.clicked, self.pixels()) > 0.0005,
              "the task's adapter gave the same picture as the plain click")
        timings = self.q("#timings").text
        check("mask decoder" in timings and "round trip" in timings, "timings: %s" % timings)
        self.shot("task-points")

    def step_downloads(self):
        n = self.count()
        self.q("#download-png").click()
        self.q("#download-coco").click()
        png = json_path = None
        t0 = time.time()
        while time.time() - t0 < 20 and not (png and json_path):
            for f in os.listdir(self.downloads):
                p = os.path.join(self.downloads, f)
                if f.endswith(".png") and not f.endswith(".crdownload"):
                    png = p
                if f.endswith(".json"):
                    json_path = p
            time.sleep(0.2)
        check(png and json_path, "downloads: %r" % os.listdir(self.downloads))
        time.sleep(0.3)
        with open(png, "rb") as f:
            head = f.read(24)
        check(head[:8] == b"\x89PNG\r\n\x1a\n", "the PNG download is not a PNG")
        w, h = struct.unpack(">II", head[16:24])
        check((w, h) == self.size, "the PNG is %dx%d, the image %dx%d" % (w, h, *self.size))
        with open(json_path) as f:
            coco = json.load(f)
        anns = coco.get("annotations", [])
        check(len(anns) == n, "the COCO file has %d annotations, the page shows %d" % (len(anns), n))
        img = coco["images"][0]
        check((img["width"], img["height"]) == self.size, "COCO image size %r" % (img,))
        check(all(a["segmentation"]["size"] == [self.size[1], self.size[0]] and
                  isinstance(a["segmentation"]["counts"], str) for a in anns), "COCO segmentations")
        check(coco["categories"][0]["name"] == "segment the dog", "category %r" % coco["categories"])

    def step_console(self):
        self.read_console()
        bad = [e for e in self.console if e.get("level") in ("SEVERE", "WARNING")]
        check(not bad, "the browser logged: %s" % "; ".join(e["message"] for e in bad[:5]))

    def step_network(self):
        reqs = self.requests()
        check(len(reqs) > 5, "only %d requests seen in the performance log" % len(reqs))
        outside = [u for _, u, _ in reqs
                   if not (u.startswith(self.url + "/") or u.startswith("data:") or u.startswith("blob:"))]
        check(not outside, "requests left the daemon: %s" % outside[:5])
        embeds = [r for r in reqs if r[0] == "POST" and r[1].endswith("/v1/embeddings")]
        check(len(embeds) == 1, "%d POST /v1/embeddings for one image" % len(embeds))
        segs = [r for r in reqs if r[0] == "POST" and r[1].endswith("/v1/segment")]
        check(len(segs) >= 7, "only %d segment requests" % len(segs))
        with_image = [r for r in segs if not (r[2] or "").lstrip().startswith("{")]
        check(not with_image, "%d segment requests sent the image again" % len(with_image))

    def step_error_shown(self):
        bad = os.path.join(self.out, "not-an-image.png")
        with open(bad, "wb") as f:
            f.write(b"this is not a PNG file\n" * 10)
        self.respond(lambda: self.q("#image").send_keys(bad), ok=False)
        text = self.error_text()
        check(re.search(r"HTTP 4\d\d: ", text), "a bad image shows no API error: '%s'" % text)
        check(self.count() > 0, "a failed upload dropped the masks shown")
        self.shot("error")
        # the only console errors now are the failed request's
        self.read_console()
        other = [e for e in self.console
                 if e.get("level") == "SEVERE" and "/v1/embeddings" not in e["message"]]
        check(not other, "the browser logged: %s" % "; ".join(e["message"] for e in other[:5]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    ap.add_argument("--timeout", type=int, default=120)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for f in os.listdir(args.out):  # the folder shows the latest run only
        if f.endswith(".png"):
            os.unlink(os.path.join(args.out, f))
    try:
        page = Page(args)
    except Exception as e:
        for s in STEPS:
            print("STEP %s FAIL the browser did not start: %s" % (s, str(e).splitlines()[0]), flush=True)
        print("DONE", flush=True)
        return 1
    failed = False
    try:
        for s in STEPS:
            if failed and s not in ("console", "network"):
                print("STEP %s FAIL an earlier step failed" % s, flush=True)
                continue
            try:
                getattr(page, "step_" + s)()
                print("STEP %s ok" % s, flush=True)
            except StepFailed as e:
                failed = True
                print("STEP %s FAIL %s" % (s, e), flush=True)
                page.shot("failed-" + s)
            except Exception as e:
                failed = True
                msg = "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")
                print("STEP %s FAIL %s" % (s, msg), flush=True)
                traceback.print_exc(file=sys.stderr)
                page.shot("failed-" + s)
    finally:
        page.d.quit()
    print("DONE", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
