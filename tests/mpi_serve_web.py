"""The web page of aesim-search serve (GET /), driven in headless Chromium
(Debian's `chromium`) through the DevTools protocol, against a server with
P = 2 ranks on 127.0.0.1 (database and checkpoint built as in
tests/mpi_serve.py).

- choosing a file (DOM.setFileInputFiles on the page's <input type=file>,
  the path a user's choice or drop takes) shows a grid of k results whose
  ids, ranks, labels and distances are those of POST /search with the same
  image, and each thumbnail is the PNG of GET /images/ID;
- clicking a result searches for more like it: the grid becomes the answer
  of POST /search {"id": that id} (first cell: that id at distance 0);
- choosing labels in the filter restricts the grid to them (checked against
  the MNIST labels file, not the server);
- the page loads nothing but the server's own URLs.
Skipped if chromium is not installed.
"""
import base64
import gzip
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import unittest
import urllib.request

import numpy as np

import mpi_serve as ms

CHROMIUM = shutil.which("chromium")  # Debian's chromium (launch/install-deps.sh)


class Cdp:
    """A minimal DevTools-protocol client over one WebSocket (RFC 6455:
    client frames masked, text opcode 1), enough for Runtime/DOM/Page calls."""

    def __init__(self, ws_url):
        m = re.match(r"ws://([^/:]+):(\d+)(/.*)", ws_url)
        self.sock = socket.create_connection((m.group(1), int(m.group(2))), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {m.group(3)} HTTP/1.1\r\nHost: {m.group(1)}:{m.group(2)}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.next_id = 0
        self.events = []

    def _recv_exact(self, n):
        b = b""
        while len(b) < n:
            chunk = self.sock.recv(n - len(b))
            if not chunk:
                raise ConnectionError("devtools socket closed")
            b += chunk
        return b

    def _recv_msg(self):
        data = b""
        while True:
            h = self._recv_exact(2)
            fin, op, n = h[0] & 0x80, h[0] & 0x0F, h[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            data += self._recv_exact(n)
            if fin and op != 9:
                return json.loads(data)

    def call(self, method, **params):
        self.next_id += 1
        payload = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
                                if n < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        while True:
            msg = self._recv_msg()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def eval(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expr, timeout=30):
        t0 = time.time()
        while time.time() - t0 < timeout:
            v = self.eval(expr)
            if v:
                return v
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expr}")


GRID = """JSON.stringify([...document.querySelectorAll('#grid .result')].map(c => [Number(c.dataset.rank),
  Number(c.dataset.id), Number(c.dataset.label), Number(c.dataset.distance), c.querySelector('img').complete &&
  c.querySelector('img').naturalWidth]))"""


@unittest.skipIf(CHROMIUM is None, "chromium is not installed (Debian package chromium)")
class WebPage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        ms.Serve.setUpClass.__func__(cls)  # trains, indexes and starts the server like mpi_serve.py
        cls.profile = tempfile.mkdtemp()
        cls.browser = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-port=0", f"--user-data-dir={cls.profile}", "--window-size=1000,800",
             cls.srv.url + "/"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = None
        t0 = time.time()
        for line in cls.browser.stderr:
            m = re.search(r"DevTools listening on ws://127.0.0.1:(\d+)/", line)
            if m:
                port = m.group(1)
                break
            if time.time() - t0 > 60:
                break
        assert port, "chromium did not start its DevTools server"
        targets = []
        while not any(t["type"] == "page" for t in targets):
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
            time.sleep(0.1)
        page = next(t for t in targets if t["type"] == "page")
        cls.cdp = Cdp(page["webSocketDebuggerUrl"])
        cls.cdp.call("Network.enable")
        cls.cdp.wait_for("document.readyState === 'complete' && document.querySelectorAll('#labels option').length")

    @classmethod
    def tearDownClass(cls):
        cls.browser.kill()
        cls.browser.wait()
        shutil.rmtree(cls.profile, ignore_errors=True)
        if cls.srv.proc.poll() is None:
            cls.srv.kill()

    def api(self, body, **args):
        q = "&".join(f"{k}={v}" for k, v in args.items())
        st, _, data = ms.request(f"{self.srv.url}/search?{q}", "POST", body)
        self.assertEqual(st, 200, data)
        return [(r["rank"], r["id"], r["label"], r["distance"]) for r in json.loads(data)["results"]]

    def grid(self, expect_first=None):
        def ready():
            g = json.loads(self.cdp.eval(GRID))
            if not g or not all(c[4] for c in g):
                return None  # thumbnails still loading
            if expect_first is not None and g[0][1] != expect_first:
                return None
            return g
        t0 = time.time()
        while time.time() - t0 < 30:
            g = ready()
            if g:
                return g
            time.sleep(0.1)
        self.fail("the result grid did not appear: " + str(self.cdp.eval("document.body.innerText")))

    def choose_file(self, path):
        doc = self.cdp.call("DOM.getDocument")
        node = self.cdp.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#file")
        self.cdp.call("DOM.setFileInputFiles", files=[path], nodeId=node["nodeId"])

    def test_choose_click_and_filter(self):
        images, labels = self.images, self.labels
        self.cdp.eval("document.getElementById('k').value = 6")
        png = os.path.join(ms.WORK, "web_q1234.png")
        with open(png, "wb") as f:
            f.write(ms.png_bytes(images[1234]))
        self.choose_file(png)
        g = self.grid(expect_first=1234)
        self.assertEqual([c[:4] for c in g], [list(r) for r in self.api(ms.png_bytes(images[1234]), k=6)])
        self.assertEqual(g[0][1:4], [1234, int(labels[1234]), 0.0])
        self.assertTrue(all(c[4] == 28 for c in g), "every thumbnail is a decoded 28x28 PNG")
        # Click the third result: more like it.
        target = g[2][1]
        self.cdp.eval("document.querySelectorAll('#grid .result')[2].click()")
        g2 = self.grid(expect_first=target)
        self.assertEqual([c[:4] for c in g2], [list(r) for r in self.api(json.dumps({"id": target}).encode(), k=6)])
        self.assertEqual(g2[0][3], 0.0)
        # Label filter: select 2 and 7 in the multi-select.
        self.cdp.eval("""(() => { for (const o of document.getElementById('labels').options)
                          o.selected = o.value === '2' || o.value === '7';
                          document.getElementById('labels').dispatchEvent(new Event('change')); })()""")
        t0 = time.time()
        while True:
            g3 = self.grid()
            if all(int(labels[c[1]]) in (2, 7) for c in g3) or time.time() - t0 > 30:
                break
            time.sleep(0.1)
        self.assertEqual(len(g3), 6)
        self.assertTrue(all(int(labels[c[1]]) in (2, 7) for c in g3), g3)  # MNIST's own labels file
        self.assertEqual([c[:4] for c in g3],
                         [list(r) for r in self.api(json.dumps({"id": target}).encode(), k=6, label="2,7")])
        # An image added while the page is open (POST /images) with a new
        # label: after the next search the filter offers that label, in
        # order, the selection kept, and the count says one more image.
        before = self.cdp.eval("document.getElementById('info').textContent")
        st, _, data = ms.request(f"{self.srv.url}/images?label=42", "POST", ms.png_bytes(images[5]))
        self.assertEqual(st, 200, data)
        self.cdp.eval("document.querySelectorAll('#grid .result')[1].click()")
        self.cdp.wait_for("[...document.querySelectorAll('#labels option')].some(o => o.value === '42')")
        opts = json.loads(self.cdp.eval("JSON.stringify([...document.getElementById('labels').options]"
                                        ".map(o => [Number(o.value), o.selected]))"))
        self.assertEqual([v for v, _ in opts], sorted(v for v, _ in opts))
        self.assertEqual(sorted(v for v, sel in opts if sel), [2, 7])
        n0 = int(before.split()[0])
        self.cdp.wait_for(f"document.getElementById('info').textContent.startsWith('{n0 + 1} images')")
        # Nothing outside the server was requested.
        urls = [e["params"]["request"]["url"] for e in self.cdp.events if e.get("method") == "Network.requestWillBeSent"]
        self.assertTrue(urls)
        self.assertTrue(all(u.startswith(self.srv.url) or u.startswith("blob:") or u.startswith("data:")
                            for u in urls), urls)
        shot = self.cdp.call("Page.captureScreenshot", format="png")
        with open(os.path.join(ms.WORK, "web_page.png"), "wb") as f:
            f.write(base64.b64decode(shot["data"]))


if __name__ == "__main__":
    unittest.main(verbosity=2)
