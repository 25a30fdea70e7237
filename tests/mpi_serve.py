"""MPI tests of aesim-search serve (the HTTP search service), P = 2 ranks,
on real MNIST images, every server on 127.0.0.1 with a port the kernel picks.

A small checkpoint is trained (aesim-train, 30 steps), 2000 MNIST test
images are indexed with P = 2, and `mpirun -np 2 aesim-search serve` runs
for the whole class.  Checked against references nobody here wrote:
- POST /search answers (JSON vectors, PNG/JPEG uploads of several sizes and
  colour types sent concurrently so that they share micro-batches,
  {"id": N}, label filters, radius) are identical, ids, order and
  distances, to `aesim-search query --json` on the same inputs, and agree
  with a float64 numpy brute force over the shard vectors (numpy.load);
- GET /images/ID decodes (PIL) to the MNIST pixels of that image;
- POST /images: the id is the next one, the image is found by the next
  search at distance 0, the new files are valid npz / npy (numpy), the
  manifest counts it, `query` in another process finds it, and after a
  restart it is still there and `eval --baseline pixels` reads it;
- bad requests get a 4xx JSON error and the server keeps serving; a body
  over --max-body-mib gets 413; a silent client is disconnected after
  --timeout and does not block others;
- GET /metrics parses as Prometheus text (counters match the requests sent);
- SIGTERM to rank 0 answers the request in flight and every rank exits 0;
  kill -9 of rank 1 ends the job within seconds.
"""
import concurrent.futures
import gzip
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get("AESIM_BUILD", "build")
TRAIN = os.path.join(ROOT, BUILD, "aesim-train")
SEARCH = os.path.join(ROOT, BUILD, "aesim-search")
SHARED = os.path.join(ROOT, "..", "shared", "data")
MNIST = os.path.join(SHARED, "mnist", "t10k-images-idx3-ubyte.gz")
MNIST_LABELS = os.path.join(SHARED, "mnist", "t10k-labels-idx1-ubyte.gz")
TMP = os.environ.get("AESIM_TEST_TMP") or tempfile.mkdtemp()
WORK = os.path.join(TMP, "mpi_serve")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
N_DB = 2000
TIMEOUT = 120
HTTP_TIMEOUT = 30


def mpirun(np_, *args, check=True):
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(np_), *args]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def load_mnist():
    raw = gzip.open(MNIST).read()
    lab = gzip.open(MNIST_LABELS).read()
    n = struct.unpack(">I", raw[4:8])[0]
    return (np.frombuffer(raw[16:], np.uint8).reshape(n, 28, 28),
            np.frombuffer(lab[8:], np.uint8).astype(np.int32))


def write_idx(prefix, images, labels):
    n = len(images)
    with open(prefix + "-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.astype(np.uint8).tobytes())
    with open(prefix + "-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + labels.astype(np.uint8).tobytes())
    return prefix + "-images-idx3-ubyte"


def load_db(db):
    with open(os.path.join(db, "manifest.json")) as f:
        man = json.load(f)
    xs = [np.load(os.path.join(db, "shard-%05d.vectors.npy" % s["shard"])) for s in man["shards"]]
    return man, np.concatenate(xs)


def rank_pids(mpirun_pid):
    """{rank: pid} of the processes mpirun started (children with OMPI_COMM_WORLD_RANK)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != mpirun_pid:
                continue
            with open(f"/proc/{d}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            if b"OMPI_COMM_WORLD_RANK" in env:
                out[int(env[b"OMPI_COMM_WORLD_RANK"])] = int(d)
        except (OSError, IndexError, ValueError):
            continue
    return out


class Server:
    """mpirun -np P aesim-search serve ... on 127.0.0.1:0; .url once listening."""

    def __init__(self, np_, db, ckpt, *extra, tag="serve"):
        self.log = os.path.join(WORK, f"{tag}.{time.time_ns()}.err")
        self.err = open(self.log, "w")
        cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(np_), SEARCH, "serve", "--db", db,
               "--model", ckpt, "--listen", "127.0.0.1:0", "--threads", "1", *extra]
        self.proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=self.err)
        t0 = time.time()
        self.url = None
        while self.url is None:
            with open(self.log) as f:
                m = re.search(r"listening on (http://(?:[0-9.]+|\[[0-9a-f:]+\]):\d+)", f.read())
            if m:
                self.url = m.group(1)
            elif self.proc.poll() is not None or time.time() - t0 > TIMEOUT:
                self.kill()
                raise AssertionError("server did not start:\n" + self.stderr())
            else:
                time.sleep(0.05)

    def stderr(self):
        with open(self.log) as f:
            return f.read()

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.err.close()

    def kill(self):
        for pid in rank_pids(self.proc.pid).values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.kill()
        self.proc.wait()
        self.err.close()


def request(url, method="GET", body=None, headers=None):
    """(status, content type, body bytes); 4xx/5xx are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def wait_for_db_lock(db, proc):
    """True once a process holds db's writer lock: an exclusive FLOCK on the
    lock file's inode in /proc/locks (read-only: no probe that could itself
    make the writer's non-blocking flock fail); False if proc ends first."""
    lock, deadline = os.path.join(db, ".aesim-db.lock"), time.time() + TIMEOUT
    while proc.poll() is None and time.time() < deadline:
        try:
            ino = os.stat(lock).st_ino
            with open("/proc/locks") as f:
                if any(l.split()[1] == "FLOCK" and l.split()[3] == "WRITE" and l.split()[5].endswith(f":{ino}")
                       for l in f if len(l.split()) > 5):
                    return True
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    return False


def start_index(np_, db, ckpt, data, log_name, *extra):
    """aesim-search index in the background: (Popen, its log file opened w+)."""
    log = open(os.path.join(WORK, log_name), "w+")
    proc = subprocess.Popen(["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(np_), SEARCH, "index",
                             *extra, "--db", db, "--model", ckpt, "--data", data, "--threads", "1"],
                            env=ENV, stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def raw_exchange(url, data):
    """Sends data as is on a new connection to url; every byte until the server closes it."""
    s = socket.create_connection(tuple(url[7:].split(":")), timeout=HTTP_TIMEOUT)
    s.sendall(data)
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
    s.close()
    return reply


def png_bytes(arr, fmt="PNG", **kw):
    from PIL import Image
    b = io.BytesIO()
    Image.fromarray(arr).save(b, fmt, **kw)
    return b.getvalue()


def results(doc):
    return [(r["id"], r["distance"]) for r in doc["results"]]


class Serve(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.makedirs(WORK, exist_ok=True)
        cls.images, cls.labels = load_mnist()
        cls.src = write_idx(os.path.join(WORK, "m2000"), cls.images[:N_DB], cls.labels[:N_DB])
        run = os.path.join(WORK, "run")
        shutil.rmtree(run, ignore_errors=True)  # the load and web tests share WORK: a fresh run each time
        mpirun(2, TRAIN, "--data", MNIST, "--max-steps", "30", "--batch-size", "64", "--seed", "3", "--threads", "1",
               "--out", run, "--grid", "0")
        cls.ckpt = os.path.join(run, "checkpoint.npz")
        cls.db = os.path.join(WORK, "db")
        shutil.rmtree(cls.db, ignore_errors=True)
        mpirun(2, SEARCH, "index", "--model", cls.ckpt, "--data", cls.src, "--db", cls.db, "--threads", "1")
        cls.man, cls.x = load_db(cls.db)
        cls.srv = Server(2, cls.db, cls.ckpt, "--timeout", "2", "--max-body-mib", "1", "--max-k", "500")

    @classmethod
    def tearDownClass(cls):
        if cls.srv.proc.poll() is None:
            cls.srv.kill()

    # ------------------------------------------------------------ helpers

    def post_search(self, body, **args):
        q = "&".join(f"{k}={v}" for k, v in args.items())
        st, ctype, data = request(f"{self.srv.url}/search?{q}", "POST", body)
        self.assertEqual(st, 200, data)
        self.assertEqual(ctype, "application/json")
        return json.loads(data)

    def query(self, *args):
        p = mpirun(2, SEARCH, "query", "--json", "--db", self.db, "--threads", "1", *args)
        return [[(r["id"], r["distance"]) for r in q["results"]] for q in json.loads(p.stdout)["queries"]]

    def check_brute(self, q, got, k, eligible=None):
        """got [(id, distance)] vs a float64 numpy brute force over the shard vectors."""
        man, x = load_db(self.db)
        q64, x64 = q.astype(np.float64), x.astype(np.float64)
        d = np.maximum((q64 ** 2).sum() + (x64 ** 2).sum(1) - 2.0 * (x64 @ q64), 0.0)
        if eligible is not None:
            d[~eligible(len(x))] = np.inf
        order = np.lexsort((np.arange(len(d)), d))[:k]
        order = [i for i in order if np.isfinite(d[i])]
        ids = [i for i, _ in got]
        np.testing.assert_allclose([dist for _, dist in got], d[order], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(d[ids], [dist for _, dist in got], rtol=1e-5, atol=1e-5)
        self.assertEqual(len(ids), len(order))

    # ------------------------------------------------------------ search

    def test_vectors_equal_query_and_bruteforce(self):
        rng = np.random.default_rng(5)
        a, b = rng.integers(0, N_DB, 6), rng.integers(0, N_DB, 6)
        q = (0.5 * self.x[a] + 0.5 * self.x[b] + rng.normal(0, 0.05, (6, self.x.shape[1]))).astype(np.float32)
        qfile = os.path.join(WORK, "q.npy")
        np.save(qfile, q)
        ref = self.query("--queries", qfile, "--k", "10")
        # Sent at once from 6 threads: they share micro-batches.
        with concurrent.futures.ThreadPoolExecutor(6) as ex:
            docs = list(ex.map(lambda v: self.post_search(json.dumps({"vector": [float(t) for t in v]}).encode(),
                                                          k=10), q))
        for i, doc in enumerate(docs):
            self.assertEqual(results(doc), ref[i])
            self.assertEqual([r["rank"] for r in doc["results"]], list(range(1, 11)))
            self.assertEqual([r["image"] for r in doc["results"]], [f"/images/{r['id']}" for r in doc["results"]])
            self.check_brute(q[i], results(doc), 10)
            for r in doc["results"]:
                self.assertEqual(r["label"], int(self.labels[r["id"]]))
                self.assertEqual(r["source"], f"m2000-images-idx3-ubyte#{r['id']}")

    def test_images_equal_query(self):
        files, bodies = [], []
        variants = [("q7.png", self.images[7], "PNG", {}),
                    ("q42_rgb.png", np.stack([self.images[42]] * 3, -1), "PNG", {}),
                    ("q9_56.png", np.kron(self.images[9], np.ones((2, 2), np.uint8)), "PNG", {}),
                    ("q3000.jpg", self.images[3000], "JPEG", {"quality": 90}),
                    ("q3001_wide.png", np.pad(self.images[3001], ((0, 0), (10, 30))), "PNG", {})]
        for name, arr, fmt, kw in variants:
            data = png_bytes(arr, fmt, **kw)
            path = os.path.join(WORK, name)
            with open(path, "wb") as f:
                f.write(data)
            files.append(path)
            bodies.append(data)
        ref = self.query("--model", self.ckpt, "--image", *files, "--k", "7")
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as ex:
            docs = list(ex.map(lambda b: self.post_search(b, k=7), bodies))
        for i, doc in enumerate(docs):
            self.assertEqual(results(doc), ref[i], files[i])
        # A database image finds itself first, at distance 0.
        self.assertEqual(results(docs[0])[0], (7, 0.0))

    def test_serve_encodes_in_its_precision(self):
        """serve --precision bf16 answers as query --precision bf16 does (it
        used to ignore --precision and encode fp32: a bf16 database's own
        image came back at distance 2e-4, not 0)."""
        path = os.path.join(WORK, "q_prec.png")
        with open(path, "wb") as f:
            f.write(png_bytes(self.images[11]))
        srv = Server(1, self.db, self.ckpt, "--precision", "bf16", tag="bf16")
        try:
            st, _, data = request(f"{srv.url}/search?k=5", "POST", png_bytes(self.images[11]))
            self.assertEqual(st, 200, data)
            got = results(json.loads(data))
        finally:
            srv.kill()
        self.assertEqual(got, self.query("--model", self.ckpt, "--image", path, "--k", "5", "--precision", "bf16")[0])
        self.assertNotEqual(got, self.query("--model", self.ckpt, "--image", path, "--k", "5")[0],
                            "bf16 and fp32 encodings give other distances")

    def test_more_like_this_label_and_radius(self):
        ref_q = os.path.join(WORK, "row123.npy")
        np.save(ref_q, self.x[123:124])
        doc = self.post_search(b'{"id": 123}', k=8)
        self.assertEqual(results(doc), self.query("--queries", ref_q, "--k", "8")[0])
        self.assertEqual(results(doc)[0], (123, 0.0))
        doc = self.post_search(b'{"id": 123}', k=8, label="3&label=5")
        self.assertEqual(results(doc), self.query("--queries", ref_q, "--k", "8", "--label", "3,5")[0])
        self.assertTrue(all(self.labels[i] in (3, 5) for i, _ in results(doc)))
        lab = self.labels[:N_DB]
        self.check_brute(self.x[123], results(doc), 8, eligible=lambda n: np.isin(np.r_[lab, np.full(n - N_DB, -1)],
                                                                                 [3, 5]))
        radius = results(self.post_search(b'{"id": 123}', k=20))[5][1]
        doc = self.post_search(b'{"id": 123}', k=20, radius=repr(radius))
        self.assertEqual(results(doc), self.query("--queries", ref_q, "--k", "20", "--radius", repr(radius))[0])
        self.assertEqual(len(doc["results"]), 6)

    def test_folder_name_with_source_syntax_characters(self):
        """A database folder whose name holds what the source syntax parses
        (a comma, a '?', a KIND: prefix) keeps its added images reachable:
        POST /images then GET /images/ID gives the pixels back."""
        from PIL import Image
        for name in ("my,db?x=1", "npz:odd"):
            db = os.path.join(WORK, name)
            shutil.copytree(self.db, db)
            srv = Server(1, db, self.ckpt, tag="odd")
            try:
                st, _, data = request(f"{srv.url}/images?label=2", "POST", png_bytes(self.images[9]))
                self.assertEqual(st, 200, data)
                nid = json.loads(data)["id"]
                st, _, data = request(f"{srv.url}/images/{nid}")
                self.assertEqual(st, 200, data)
                np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), self.images[9])
            finally:
                srv.kill()

    def test_serve_adds_only_to_the_database_it_holds(self):
        """One writer at a time: a server refuses POST /images (409) once
        another program changed its database on disk (here index --append,
        which used to lose its shards when the server added next); the
        appended vectors stay.  A train-ivf beside a running index is
        refused, naming the lock's holder."""
        db = os.path.join(WORK, "db-writers")
        shutil.copytree(self.db, db)
        srv = Server(1, db, self.ckpt, tag="writers")
        try:
            count = load_db(db)[0]["count"]
            mpirun(1, SEARCH, "index", "--append", "--db", db, "--model", self.ckpt, "--data", self.src,
                   "--threads", "1")
            self.assertEqual(load_db(db)[0]["count"], 2 * count)
            st, _, data = request(f"{srv.url}/images?label=1", "POST", png_bytes(self.images[7]))
            self.assertEqual(st, 409, data)
            self.assertIn("changed on disk since this server read it", json.loads(data)["error"])
            self.assertEqual(load_db(db)[0]["count"], 2 * count, "the appended vectors stay")
            st, _, data = request(f"{srv.url}/healthz")
            self.assertEqual(st, 200)
        finally:
            srv.kill()
        # A writer holding the lock (a long index --append, started in the
        # background) makes train-ivf fail at once with its pid.
        big = os.path.join(WORK, "big-src.npy")
        np.save(big, np.repeat(self.images[:N_DB], 60, axis=0)[:, None])
        proc, log = start_index(1, db, self.ckpt, big, "append-big.log", "--append")
        try:
            held = wait_for_db_lock(db, proc)
            log.seek(0)
            self.assertTrue(held, "index --append never held the lock: " + log.read())
            p = mpirun(1, SEARCH, "train-ivf", "--db", db, "--nlist", "4", check=False)
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn(f"{db} is in use by aesim-search index --append, pid ", p.stderr)
            self.assertEqual(proc.wait(timeout=TIMEOUT), 0, "the index --append goes on")
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        # Two runs creating one new database: the first locks the folder it
        # creates, the second is refused and removes nothing of the first's.
        new = os.path.join(WORK, "db-created-twice", "db")
        proc, log = start_index(1, new, self.ckpt, big, "index-new-big.log")
        try:
            held = wait_for_db_lock(new, proc)
            log.seek(0)
            self.assertTrue(held, "a new index never held the lock: " + log.read())
            p = mpirun(1, SEARCH, "index", "--db", new, "--model", self.ckpt, "--data", self.src, "--threads", "1",
                       check=False)
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn(f"{new} is in use by aesim-search index, pid ", p.stderr)
            self.assertEqual(proc.wait(timeout=TIMEOUT), 0, "the first index goes on")
            self.assertEqual(load_db(new)[0]["count"], 60 * N_DB)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        # A failed new index leaves no folder behind, lock file included.
        gone = os.path.join(WORK, "db-never", "db")
        p = mpirun(1, SEARCH, "index", "--db", gone, "--model", self.ckpt, "--data", "/nonexistent.npy",
                   "--threads", "1", check=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertFalse(os.path.exists(os.path.dirname(gone)), os.listdir(WORK))

    def test_sigterm_to_mpirun_during_index_leaves_nothing(self):
        """SIGTERM to mpirun while a new index encodes: every rank stops
        between chunks with one line naming the signal, and the folder the
        run created is removed (it used to die silently, leaving it)."""
        big = os.path.join(WORK, "big-src-term.npy")
        np.save(big, np.repeat(self.images[:N_DB], 100, axis=0)[:, None])
        db = os.path.join(WORK, "db-term", "db")
        proc, log = start_index(2, db, self.ckpt, big, "index-term.log")
        try:
            self.assertTrue(wait_for_db_lock(db, proc), "index never started")
            # At once: the ranks hold their handlers before the lock is
            # taken, and a stop that comes before encoding is acted on when
            # it starts; a fixed wait missed encoding on a fast CPU (200,000
            # images encoded in 1.5 s on an Intel Xeon, the signal came
            # while the database was written).
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=TIMEOUT)
            log.seek(0)
            out = log.read()
            self.assertNotEqual(proc.returncode, 0, out)
            self.assertIn("stopped by SIGTERM while encoding; nothing was written", out)
            self.assertFalse(os.path.exists(os.path.dirname(db)), out)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()

    def test_writers_remove_a_killed_writers_temporary_files(self):
        """A writer killed mid-write leaves NAME.tmp.PID in the database; the
        next writer, holding the lock, removes them (they stayed for good):
        index --append at its start, serve at its first addition.  Other
        files stay."""
        db = os.path.join(WORK, "db-stale")
        shutil.rmtree(db, ignore_errors=True)
        shutil.copytree(self.db, db, ignore=shutil.ignore_patterns(".aesim-db.lock"))
        plant = lambda: [open(os.path.join(db, n), "w").close() for n in
                         ("shard-00199.names.txt.tmp.99999999", "manifest.json.tmp.99999999",
                          "whiten.npz.tmp.99999999.Ab12Cd", "notes.tmp.txt", "report.tmp.99999999",
                          "shard-00007.vectors.npy.tmp." + str(os.getpid()))]
        KEPT = ["notes.tmp.txt", "report.tmp.99999999", "shard-00007.vectors.npy.tmp." + str(os.getpid())]
        plant()
        # a refused writer touches nothing, its leftovers included
        p = mpirun(1, SEARCH, "index", "--append", "--db", db, "--model", self.ckpt, "--data", "/nonexistent.npy",
                   "--threads", "1", check=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertNotIn("note: removed", p.stderr)
        self.assertEqual(len([f for f in os.listdir(db) if ".tmp" in f]), 6)
        p = mpirun(1, SEARCH, "index", "--append", "--db", db, "--model", self.ckpt, "--data", self.src,
                   "--threads", "1")
        # whiten.npz.tmp.PID.XXXXXX: libzip's own temporary file (it stayed)
        self.assertIn(f"note: removed 3 temporary file(s) an interrupted writer left in {db}", p.stderr)
        # a user's file (not a database name) and a live writer's temp stay
        self.assertEqual(sorted(f for f in os.listdir(db) if ".tmp" in f), sorted(KEPT))
        plant()
        srv = Server(1, db, self.ckpt, tag="stale")
        try:
            self.assertEqual(len([f for f in os.listdir(db) if ".tmp." in f]), 6, "serve only reads until it adds")
            st, _, data = request(f"{srv.url}/images?label=1", "POST", png_bytes(self.images[5]))
            self.assertEqual(st, 200, data)
            self.assertEqual(sorted(f for f in os.listdir(db) if ".tmp" in f), sorted(KEPT))
        finally:
            srv.kill()

    def test_get_image(self):
        from PIL import Image
        for i in (0, 7, 1999):
            st, ctype, data = request(f"{self.srv.url}/images/{i}")
            self.assertEqual((st, ctype), (200, "image/png"))
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), self.images[i])

    def test_source_rewritten_under_the_server_fails_one_request(self):
        """The source images are a user's files, memory-mapped: one truncated
        in place under the server fails GET /images/ID with a 500 naming it
        (it used to end the server: bus error); the server goes on, and
        serves the image again once the file is back."""
        from PIL import Image
        src = write_idx(os.path.join(WORK, "m-shrinks"), self.images[:N_DB], self.labels[:N_DB])
        db = os.path.join(WORK, "db-shrinks")
        shutil.rmtree(db, ignore_errors=True)
        mpirun(1, SEARCH, "index", "--model", self.ckpt, "--data", src, "--db", db, "--threads", "1")
        srv = Server(2, db, self.ckpt, tag="shrinks")
        try:
            last = N_DB - 1  # its pixels lie pages past the header
            st, _, data = request(f"{srv.url}/images/{last}")
            self.assertEqual(st, 200, data)
            with open(src, "rb") as f:
                whole = f.read()
            os.truncate(src, 16)  # the IDX header alone: the mapped pages past it are gone
            st, ctype, data = request(f"{srv.url}/images/{last}")
            self.assertEqual((st, ctype), (500, "application/json"), data)
            self.assertIn(f"{src} changed while in use", json.loads(data)["error"])
            st, _, data = request(f"{srv.url}/healthz")
            self.assertEqual(st, 200, data)
            self.assertEqual(results(self.post_search_at(srv.url, b'{"id": 7}', k=1))[0][0], 7)
            with open(src, "r+b") as f:  # back in place
                f.write(whole)
            st, _, data = request(f"{srv.url}/images/{last}")
            self.assertEqual(st, 200, data)
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), self.images[last])
            self.assertIsNone(srv.proc.poll(), srv.stderr())
        finally:
            srv.kill()

    def test_many_added_sources_keep_descriptors_bounded(self):
        """Each POST /images batch is a source of its own; GET /images/ID of
        each used to keep its files open for good (2 descriptors a source),
        until every request failed with "Too many open files".  At most 32
        stay open (SERVE_OPEN_SOURCES), least recently read closed first."""
        from PIL import Image
        db = os.path.join(WORK, "db-many-sources")
        shutil.rmtree(db, ignore_errors=True)
        shutil.copytree(self.db, db)
        srv = Server(1, db, self.ckpt, tag="many-sources")
        try:
            pid = rank_pids(srv.proc.pid)[0]
            fds = lambda: len(os.listdir(f"/proc/{pid}/fd"))
            added = []
            for i in range(90):  # one at a time: 90 sources
                st, _, data = request(f"{srv.url}/images?label=1", "POST", png_bytes(self.images[3000 + i]))
                self.assertEqual(st, 200, data)
                added.append(json.loads(data)["id"])
            before = fds()
            for rnd in range(2):
                for i, nid in enumerate(added):
                    st, _, data = request(f"{srv.url}/images/{nid}")
                    self.assertEqual(st, 200, data)
                    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), self.images[3000 + i])
                self.assertLessEqual(fds() - before, 2 * 32 + 4, f"round {rnd}")
            st, _, data = request(f"{srv.url}/images/0")  # the indexed data, opened again
            self.assertEqual(st, 200, data)
        finally:
            srv.kill()

    def post_search_at(self, url, body, **args):
        q = "&".join(f"{k}={v}" for k, v in args.items())
        st, _, data = request(f"{url}/search?{q}", "POST", body)
        self.assertEqual(st, 200, data)
        return json.loads(data)

    def test_healthz_labels_page(self):
        st, _, data = request(f"{self.srv.url}/healthz")
        h = json.loads(data)
        self.assertEqual((st, h["status"], h["dim"], h["ranks"], h["metric"]), (200, "ok", 392, 2, "l2"))
        self.assertGreaterEqual(h["vectors"], N_DB)
        st, _, data = request(f"{self.srv.url}/labels")
        self.assertEqual(json.loads(data)["labels"][:10], list(range(10)))
        st, ctype, data = request(f"{self.srv.url}/")
        self.assertEqual((st, ctype), (200, "text/html; charset=utf-8"))
        self.assertNotIn(b"http://", data.replace(b"http://www.w3.org", b""), "the page loads nothing from outside")

    # ------------------------------------------------------------ errors

    def test_bad_requests_get_4xx_and_server_keeps_serving(self):
        good = png_bytes(self.images[7])
        u = self.srv.url
        cases = [
            ("POST", "/search?k=5", good[:len(good) // 2], 400, "truncated"),
            ("POST", "/search?k=5", b"\x89PNG\r\n\x1a\n" + b"\0" * 50, 400, "PNG"),
            ("POST", "/search?k=5", b"\xff\xd8\xff" + b"garbage" * 10, 400, "JPEG"),
            ("POST", "/search?k=5", b"", 400, "empty body"),
            ("POST", "/search?k=5", b'{"vector": [1, 2', 400, "JSON"),
            ("POST", "/search?k=5", b'{"vector": [1, 2, 3]}', 400, "392"),
            ("POST", "/search?k=5", json.dumps({"vector": [1e39] * 392}).encode(), 400, "infinite"),
            ("POST", "/search?k=5", b'{"vector": [' + b",".join([b"NaN"] * 392) + b"]}", 400, "JSON"),
            ("POST", "/search?k=5", b'{"id": -1}', 400, "id"),
            ("POST", "/search?k=5", b'{"id": 99999999}', 404, "not in the database"),
            ("POST", "/search?k=5", b'{"id": 1, "vector": []}', 400, "must be"),
            ("POST", "/search?k=5", b'[1, 2]', 400, "must be"),
            ("POST", "/search?k=0", b'{"id": 1}', 400, "k must be"),
            ("POST", "/search?k=-3", b'{"id": 1}', 400, "k must be"),
            ("POST", "/search?k=501", b'{"id": 1}', 400, "k must be"),
            ("POST", "/search?k=abc", b'{"id": 1}', 400, "k must be"),
            ("POST", "/search?k=5&label=42", b'{"id": 1}', 400, "label 42"),
            ("POST", "/search?k=5&label=x", b'{"id": 1}', 400, "label"),
            ("POST", "/search?k=5&radius=-1", b'{"id": 1}', 400, "radius"),
            ("POST", "/search?k=5&radius=" + "9" * 80, b'{"id": 1}', 400, "radius"),  # found by fuzz_http
            ("POST", "/search?k=5&color=red", b'{"id": 1}', 400, "unknown query argument"),
            ("POST", "/search?k=5&radius=0x10", b'{"id": 1}', 400, "decimal number"),
            ("POST", "/search?k=5&radius=nan", b'{"id": 1}', 400, "decimal number"),
            ("POST", "/images?label=1,2", good, 400, "one label"),
            ("POST", "/images?label=-5", good, 400, "labels are 0 or more"),
            ("POST", "/search?k=5&k=6", b'{"id": 1}', 400, "k given twice"),
            ("POST", "/search?radius=1&radius=2", b'{"id": 1}', 400, "radius given twice"),
            ("POST", "/images", b"not an image", 400, "PNG"),
            ("GET", "/images/abc", None, 404, "no such image"),
            ("GET", "/images/99999999", None, 404, "not in the database"),
            ("GET", "/nowhere", None, 404, "no such path"),
            ("GET", "/%FF%FEx", None, 404, "no such path"),  # not UTF-8 (found by fuzz/fuzz_http.c)
            ("GET", "/search", None, 405, "POST"),
            ("DELETE", "/images/3", None, 405, "GET"),
            ("PUT", "/healthz", b"x", 405, "GET"),
            ("POST", "/search?k=5", b"x" * (1 << 20) + b"x", 413, "max-body-mib"),
        ]
        for method, path, body, status, needle in cases:
            with self.subTest(method=method, path=path, status=status):
                st, ctype, data = request(u + path, method, body)
                self.assertEqual(st, status, data)
                self.assertEqual(ctype, "application/json")
                doc = json.loads(data)
                self.assertEqual(doc["status"], status)
                self.assertIn(needle, doc["error"])
        # A radius below the smallest double is 0: only exact matches (id 1 itself).
        self.assertEqual([i for i, d in results(self.post_search(b'{"id": 1}', k=5, radius="1e-400"))
                          if i == 1], [1])
        # Upload errors carry a hint for an HTTP client, not the file/source hints.
        st, _, data = request(u + "/search?k=5", "POST", good[:len(good) // 2])
        self.assertEqual(st, 400)
        self.assertIn("send the whole PNG or JPEG file", json.loads(data)["error"])
        self.assertNotIn("skip_bad", json.loads(data)["error"])
        # %00 is not decoded into a NUL that cuts the path or the argument.
        st, _, _ = request(u + "/images/1%00")
        self.assertEqual(st, 404)
        st, _, data = request(u + "/search?k=5%00", "POST", b'{"id": 1}')
        self.assertEqual(st, 400, data)
        # The absolute form of the request target (RFC 9112, 3.2.2).
        reply = raw_exchange(u, b"GET http://%s/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                             % u[7:].encode())
        self.assertTrue(reply.startswith(b"HTTP/1.1 200"), reply[:200])
        self.assertIn(b'"status":"ok"', reply)
        # Two Content-Length headers: 400 and the connection closed, so the
        # bytes after the first length are never read as another request.
        reply = raw_exchange(u, b"POST /search?k=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                             b'Content-Length: 8\r\n\r\n{"id":1}GET /labels HTTP/1.1\r\nHost: x\r\n\r\n')
        self.assertTrue(reply.startswith(b"HTTP/1.1 400"), reply[:200])
        self.assertIn(b"more than one Content-Length", reply)
        self.assertEqual(reply.count(b"HTTP/1.1 "), 1, reply)
        # HEAD is GET without the body (RFC 9110): same status and headers, no body; 405 names both.
        for path in ("/healthz", "/labels", "/images/3", "/"):
            with self.subTest(head=path):
                c = http.client.HTTPConnection(u[7:], timeout=HTTP_TIMEOUT)
                c.request("HEAD", path)
                r = c.getresponse()
                self.assertEqual(r.status, 200)
                self.assertGreater(int(r.getheader("Content-Length")), 0)
                self.assertEqual(r.read(), b"")
                c.close()
        st, _, _ = request(u + "/images/99999999", "HEAD", None)
        self.assertEqual(st, 404)
        c = http.client.HTTPConnection(u[7:], timeout=HTTP_TIMEOUT)
        c.request("PUT", "/healthz", body=b"x")
        self.assertEqual(c.getresponse().getheader("Allow"), "GET, HEAD")
        c.close()
        # Chunked upload over the limit (no Content-Length): 413 too.
        c = http.client.HTTPConnection(u[7:], timeout=HTTP_TIMEOUT)
        c.request("POST", "/search?k=5", body=iter([b"y" * 65536] * 20), encode_chunked=True)
        self.assertEqual(c.getresponse().status, 413)
        c.close()
        # A body declared far over the limit: 413 before any of it is sent.
        s = socket.create_connection(tuple(u[7:].split(":")), timeout=HTTP_TIMEOUT)
        s.sendall(b"POST /search?k=5 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (100 << 20))
        self.assertTrue(s.recv(4096).startswith(b"HTTP/1.1 413"))
        s.close()
        self.assertEqual(results(self.post_search(good, k=3))[0], (7, 0.0))

    def test_silent_client_times_out_and_blocks_nobody(self):
        s = socket.create_connection(tuple(self.srv.url[7:].split(":")))
        s.sendall(b"POST /search?k=3 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"id\":")
        t0 = time.time()
        self.assertEqual(results(self.post_search(b'{"id": 5}', k=1))[0], (5, 0.0))
        self.assertLess(time.time() - t0, 2.0, "a stalled upload delayed another client")
        s.settimeout(15)
        got = s.recv(4096)  # b"" once the server closes the silent connection (--timeout 2)
        took = time.time() - t0
        s.close()
        self.assertEqual(got, b"")
        self.assertLess(took, 10)

    def test_one_address_cannot_take_every_connection(self):
        """200 connections from 127.0.0.2 trickling their headers (never idle
        for --timeout, so never cut): the server keeps at most 128 of them
        (include/search/http_server.h) and still answers 127.0.0.1."""
        host, port = self.srv.url[7:].split(":")
        socks = []
        try:
            for _ in range(200):
                s = socket.socket()
                s.bind(("127.0.0.2", 0))
                s.settimeout(5)
                s.connect((host, int(port)))
                s.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
                socks.append(s)
            time.sleep(1.0)
            alive = 0
            for s in socks:   # the refused ones were closed by the server
                s.setblocking(False)
                try:
                    alive += s.recv(1) != b""
                except BlockingIOError:
                    alive += 1
                except OSError:
                    pass
            self.assertLessEqual(alive, 128)
            self.assertGreaterEqual(alive, 100, "most slow connections are held (the test would show nothing)")
            st, _, data = request(f"{self.srv.url}/healthz")
            self.assertEqual(st, 200, data)
        finally:
            for s in socks:
                s.close()

    def test_metrics_prometheus_text(self):
        before = self.metrics()
        for _ in range(3):
            self.post_search(b'{"id": 1}', k=2)
        request(f"{self.srv.url}/search?k=0", "POST", b'{"id": 1}')
        after = self.metrics()
        key = 'aesim_http_requests_total{endpoint="search"}'
        self.assertEqual(after[key] - before.get(key, 0), 4)
        ekey = 'aesim_http_errors_total{endpoint="search"}'
        self.assertEqual(after[ekey] - before.get(ekey, 0), 1)
        self.assertEqual(after['aesim_http_request_seconds_count{endpoint="search"}'], after[key])
        self.assertEqual(after['aesim_vectors{rank="0"}'] + after['aesim_vectors{rank="1"}'],
                         after["aesim_vectors_total"])
        self.assertGreaterEqual(after["aesim_batch_size_count"], 3)
        buckets = [v for k, v in after.items() if k.startswith('aesim_http_request_seconds_bucket{endpoint="search"')]
        self.assertEqual(buckets, sorted(buckets), "cumulative buckets")

    def metrics(self):
        st, ctype, data = request(f"{self.srv.url}/metrics")
        self.assertEqual(st, 200)
        self.assertTrue(ctype.startswith("text/plain"))
        out = {}
        for line in data.decode().splitlines():
            if line.startswith("#") or not line:
                continue
            # Prometheus text format 0.0.4: name{labels} value
            m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)', line)
            self.assertIsNotNone(m, line)
            out[m.group(1)] = float(m.group(2))
        return out

    # ------------------------------------------------------------ additions, stop, restart

    def test_added_image_takes_the_class_name_of_its_label(self):
        """An image added with ?label=L has no source names of its own: it
        gets the name the indexed folder gives L (it answered "class": null
        beside neighbours of the same label named "dog")."""
        from PIL import Image
        folder = os.path.join(WORK, "pets")
        shutil.rmtree(folder, ignore_errors=True)
        for c, name in enumerate(("cat", "dog")):
            os.makedirs(os.path.join(folder, name))
            for i in range(6):
                Image.fromarray(self.images[20 * c + i]).save(os.path.join(folder, name, f"{i}.png"))
        db = os.path.join(WORK, "db-pets")
        shutil.rmtree(db, ignore_errors=True)
        mpirun(1, SEARCH, "index", "--model", self.ckpt, "--data", folder, "--db", db, "--threads", "1")
        srv = Server(1, db, self.ckpt, tag="pets")
        try:
            st, _, data = request(f"{srv.url}/images?label=1", "POST", png_bytes(self.images[99]))
            self.assertEqual(st, 200, data)
            nid = json.loads(data)["id"]
            st, _, data = request(f"{srv.url}/search?k=12", "POST", b'{"id": %d}' % nid)
            self.assertEqual(st, 200, data)
            named = {r["id"]: (r["label"], r["class"]) for r in json.loads(data)["results"]}
            self.assertEqual(named[nid], (1, "dog"))
            self.assertEqual({v for k, v in named.items() if k != nid}, {(0, "cat"), (1, "dog")})
        finally:
            srv.kill()

    def test_ipv6_listen_and_class_names(self):
        # the suite's server: MNIST IDX files name no classes -> "class": null
        doc = self.post_search(b'{"id": 3}', k=3)
        self.assertEqual([r["class"] for r in doc["results"]], [None] * 3)
        names = os.path.join(WORK, "digits.txt")
        with open(names, "w") as f:
            f.write("".join(f"digit {d}\n" for d in range(10)))
        srv = Server(1, self.db, self.ckpt, "--listen", "[::1]:0", "--class-names", names, tag="v6")
        try:
            self.assertTrue(srv.url.startswith("http://[::1]:"), srv.url)
            st, _, data = request(f"{srv.url}/search?k=6", "POST", b'{"id": 11}')
            self.assertEqual(st, 200, data)
            res = json.loads(data)["results"]
            self.assertEqual([(r["id"], r["distance"]) for r in res], results(doc6 := self.post_search(b'{"id": 11}', k=6)))
            self.assertEqual([r["class"] for r in res], [f"digit {int(self.labels[r['id']])}" for r in res])
            self.assertEqual([r["label"] for r in res], [r["label"] for r in doc6["results"]])
        finally:
            srv.kill()
        # a bracketless IPv6 address or a bad literal is refused with the reason
        for bad in ("::1:0", "[::1:0", "[zz::1]:0"):
            r = subprocess.run(["mpirun", "-np", "1", SEARCH, "serve", "--db", self.db, "--model", self.ckpt,
                                "--listen", bad], env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
            self.assertNotEqual(r.returncode, 0, bad)
            self.assertIn(f"--listen '{bad}'", r.stderr, bad)

    def test_z_add_stop_restart(self):
        from PIL import Image
        new = [5000, 5001]
        ids = []
        for i, lab in zip(new, (3, 8)):
            st, _, data = request(f"{self.srv.url}/images?label={lab}", "POST", png_bytes(self.images[i]))
            self.assertEqual(st, 200, data)
            ids.append(json.loads(data)["id"])
        man, x = load_db(self.db)
        self.assertEqual(ids, [man["count"] - 2, man["count"] - 1])
        self.assertGreaterEqual(ids[0], N_DB)
        for i, nid in zip(new, ids):
            doc = self.post_search(png_bytes(self.images[i]), k=2)
            self.assertEqual(results(doc)[0], (nid, 0.0))
            st, _, data = request(f"{self.srv.url}/images/{nid}")
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), self.images[i])
        doc = self.post_search(b'{"id": %d}' % ids[0], k=1, label=3)
        self.assertEqual(doc["results"][0]["label"], 3)
        # /healthz counts the new vectors and shards as the manifest does.
        st, _, data = request(f"{self.srv.url}/healthz")
        h = json.loads(data)
        self.assertEqual((h["vectors"], h["shards"]), (man["count"], len(man["shards"])))
        # The files are plain numpy formats; query in another process sees them.
        # The manifest names them relative to the database folder.
        added = [s for s in man["sources"] if "added-" in s["spec"]]
        self.assertEqual(sum(s["count"] for s in added), 2)
        for s in added:
            self.assertRegex(s["items"][0]["path"], r"^added-\d{5}\.npz$")
            z = np.load(os.path.join(self.db, s["items"][0]["path"]))
            self.assertEqual(z["data"].shape[1:], (1, 28, 28))
        np.testing.assert_array_equal(np.load(os.path.join(self.db, added[0]["items"][0]["path"]))["data"][0, 0],
                                      self.images[5000])
        q = os.path.join(WORK, "added.npy")
        np.save(q, x[ids[0]:ids[0] + 1])
        self.assertEqual(self.query("--queries", q, "--k", "1")[0][0], (ids[0], 0.0))

        # SIGTERM to rank 0 with a request in flight (half its body sent):
        # no new connection is accepted, the request is answered, and every
        # rank exits 0.
        pids = rank_pids(self.srv.proc.pid)
        host, port = self.srv.url[7:].split(":")
        body = png_bytes(self.images[11])
        s = socket.create_connection((host, int(port)), timeout=HTTP_TIMEOUT)
        s.sendall(b"POST /search?k=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                  % len(body) + body[:len(body) // 2])
        time.sleep(0.3)
        os.kill(pids[0], signal.SIGTERM)
        deadline = time.time() + 10
        while "stop requested" not in self.srv.stderr() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        with self.assertRaises(OSError):
            socket.create_connection((host, int(port)), timeout=5).close()
        self.assertIsNone(self.srv.proc.poll(), "stopped with a request in flight")
        s.sendall(body[len(body) // 2:])
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
        s.close()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer[:200])
        doc = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(results(doc)[0], (11, 0.0))
        self.assertEqual(self.srv.wait(30), 0, self.srv.stderr())
        self.assertIn("stop requested (SIGTERM)", self.srv.stderr())
        # Restart: the additions are still there; eval reads the added source.
        srv = Server(2, self.db, self.ckpt, tag="restart")
        try:
            st, _, data = request(f"{srv.url}/healthz")
            self.assertEqual(json.loads(data)["vectors"], man["count"])
            st, _, data = request(f"{srv.url}/search?k=1", "POST", png_bytes(self.images[5001]))
            self.assertEqual(results(json.loads(data))[0], (ids[1], 0.0))
            # SIGTERM to mpirun also stops the job (mpirun itself exits 1 in Open MPI 4.1; see
            # tests/mpi_reliability.py), within seconds.
            t0 = time.time()
            srv.proc.send_signal(signal.SIGTERM)
            srv.wait(30)
            self.assertLess(time.time() - t0, 20)
        finally:
            if srv.proc.poll() is None:
                srv.kill()
        p = mpirun(2, SEARCH, "eval", "--db", self.db, "--model", self.ckpt, "--queries", self.src, "--max-queries",
                   "50", "--baseline", "pixels", "--threads", "1")
        self.assertIn("mean", p.stdout)
        # A copy of the folder elsewhere keeps its added images: it reads its
        # own added-*.npz, not the original folder's (then changed).
        moved = os.path.join(WORK, "db-copy")
        shutil.copytree(self.db, moved)
        orig = os.path.join(self.db, added[0]["items"][0]["path"])
        os.rename(orig, orig + ".away")
        with open(orig, "wb") as f:
            f.write(b"not an npz any more")
        srv = Server(1, moved, self.ckpt, tag="copy")
        try:
            st, _, data = request(f"{srv.url}/images/{ids[0]}")
            self.assertEqual(st, 200, data)
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), self.images[5000])
        finally:
            srv.kill()
            os.replace(orig + ".away", orig)

    def test_whitened_ivf_server_equals_query(self):
        """A database indexed with --recipe retrieval (whitened codes, cosine) and an
        IVF index: served answers (image uploads, vectors) equal `query --nprobe`'s,
        with the whitening applied to the uploaded images' codes as query applies it;
        a live addition joins its nearest IVF list, is found by the next search and,
        after the server stops, by `query --nprobe` in another process (which reads
        the addition's list file)."""
        db = os.path.join(WORK, "db_wivf")
        shutil.rmtree(db, ignore_errors=True)
        # --qe 0: the live addition below must be its own nearest neighbour at distance 0,
        # which an expanded query is not (test_query_expansion_server_equals_query).
        mpirun(2, SEARCH, "index", "--model", self.ckpt, "--data", self.src, "--db", db, "--recipe", "retrieval",
               "--qe", "0", "--ivf", "16", "--threads", "1")
        man = json.load(open(os.path.join(db, "manifest.json")))
        self.assertEqual((man["transform"], man["metric"], man["ivf"]["nlist"], man["tta"]),
                         ("whiten", "cosine", 16, "flip,shift:1"))
        self.assertNotIn("query_expansion", man)
        srv = Server(2, db, self.ckpt, "--nprobe", "3", tag="wivf")
        try:
            self.assertIn("IVF index, 16 lists, scanning the 3 nearest", srv.stderr())
            files = []
            for i in (7, 123, 4000):
                path = os.path.join(WORK, f"wivf{i}.png")
                with open(path, "wb") as f:
                    f.write(png_bytes(self.images[i]))
                files.append(path)

            def q(*args):
                p = mpirun(2, SEARCH, "query", "--json", "--db", db, "--threads", "1", "--nprobe", "3", *args)
                return [[(r["id"], r["distance"]) for r in x["results"]] for x in json.loads(p.stdout)["queries"]]
            ref = q("--model", self.ckpt, "--image", *files, "--k", "5")
            for i, path in enumerate(files):
                st, _, data = request(f"{srv.url}/search?k=5", "POST", open(path, "rb").read())
                self.assertEqual(st, 200, data)
                self.assertEqual(results(json.loads(data)), ref[i], path)
            # The IVF answer differs from the exact one somewhere (nprobe 3 of 16), so the
            # equality above is not the exact search's by accident.
            exact = [[(r["id"], r["distance"]) for r in x["results"]] for x in json.loads(mpirun(
                2, SEARCH, "query", "--json", "--db", db, "--threads", "1", "--exact", "--model", self.ckpt,
                "--data", self.src, "--ids", "0-199", "--k", "10").stdout)["queries"]]
            approx = [[(r["id"], r["distance"]) for r in x["results"]] for x in json.loads(mpirun(
                2, SEARCH, "query", "--json", "--db", db, "--threads", "1", "--nprobe", "3", "--model", self.ckpt,
                "--data", self.src, "--ids", "0-199", "--k", "10").stdout)["queries"]]
            self.assertNotEqual(exact, approx)
            # Live addition.
            st, _, data = request(f"{srv.url}/images?label=4", "POST", png_bytes(self.images[6000]))
            self.assertEqual(st, 200, data)
            nid = json.loads(data)["id"]
            self.assertEqual(nid, N_DB)
            st, _, data = request(f"{srv.url}/search?k=1", "POST", png_bytes(self.images[6000]))
            got = results(json.loads(data))[0]
            self.assertEqual(got[0], nid)
            self.assertLess(got[1], 1e-5)
            man = json.load(open(os.path.join(db, "manifest.json")))
            crc = man["ivf"]["crc32"]
            lists = os.path.join(db, "shard-%05d.ivf-%s.lists.npy" % (len(man["shards"]) - 1, crc))
            self.assertTrue(os.path.exists(lists), lists)
        finally:
            srv.kill()
        added = os.path.join(WORK, "wivf_add.png")
        with open(added, "wb") as f:
            f.write(png_bytes(self.images[6000]))
        got = q("--model", self.ckpt, "--image", added, "--k", "1")[0][0]
        self.assertEqual(got[0], nid)
        self.assertLess(got[1], 1e-5)

    def test_cosine_ivf_additions_found_at_nprobe_1(self):
        """index --metric cosine --ivf 16 (plain codes, not whitened): images added by
        POST /images join the IVF list that their own normalised code probes first,
        so searching with the same image finds each of them at distance 0 with
        --nprobe 1, in the server and afterwards in `query --nprobe 1`.  Before the
        cosine IVF worked in the normalised space (lists of the raw codes, probed by
        the normalised query) most of them were not found."""
        db = os.path.join(WORK, "db_civf")
        shutil.rmtree(db, ignore_errors=True)
        mpirun(2, SEARCH, "index", "--model", self.ckpt, "--data", self.src, "--db", db, "--metric", "cosine",
               "--ivf", "16", "--threads", "1")
        srv = Server(2, db, self.ckpt, "--nprobe", "1", tag="civf")
        added, found = [], 0
        try:
            for i in range(6000, 6010):
                st, _, data = request(f"{srv.url}/images?label=1", "POST", png_bytes(self.images[i]))
                self.assertEqual(st, 200, data)
                nid = json.loads(data)["id"]
                added.append(nid)
                st, _, data = request(f"{srv.url}/search?k=1", "POST", png_bytes(self.images[i]))
                self.assertEqual(st, 200, data)
                got = results(json.loads(data))[0]
                found += got[0] == nid and got[1] < 1e-5
        finally:
            srv.kill()
        self.assertEqual(found, len(added))
        self.assertEqual(added, list(range(N_DB, N_DB + 10)))
        files = []
        for i in range(6000, 6010):
            path = os.path.join(WORK, f"civf{i}.png")
            with open(path, "wb") as f:
                f.write(png_bytes(self.images[i]))
            files.append(path)
        p = mpirun(2, SEARCH, "query", "--json", "--db", db, "--threads", "1", "--nprobe", "1", "--model",
                   self.ckpt, "--image", *files, "--k", "1")
        got = [(x["results"][0]["id"], x["results"][0]["distance"]) for x in json.loads(p.stdout)["queries"]]
        self.assertEqual([g[0] for g in got], added)
        self.assertLess(max(g[1] for g in got), 1e-5)

    def test_cosine_server_equals_query(self):
        srv = Server(3, self.db, self.ckpt, "--metric", "cosine", tag="cosine")
        try:
            qfile = os.path.join(WORK, "cos.npy")
            np.save(qfile, self.x[[10, 20]] * np.float32(1.5))
            ref = self.query("--queries", qfile, "--k", "6", "--metric", "cosine")
            for i, row in enumerate(np.load(qfile)):
                st, _, data = request(f"{srv.url}/search?k=6", "POST",
                                      json.dumps({"vector": [float(t) for t in row]}).encode())
                doc = json.loads(data)
                self.assertEqual((st, doc["metric"]), (200, "cosine"))
                self.assertEqual(results(doc), ref[i])
            # numpy: 1 - cosine similarity, float64
            x64 = self.x.astype(np.float64)
            q64 = np.load(qfile)[0].astype(np.float64)
            d = 1 - (x64 @ q64) / np.linalg.norm(x64, axis=1) / np.linalg.norm(q64)
            np.testing.assert_allclose([t for _, t in ref[0]], np.sort(d)[:6], atol=1e-5)
        finally:
            srv.kill()

    def test_query_expansion_server_equals_query(self):
        """serve --qe 3 --qe-alpha 2 answers vector and image queries as query does with
        the same options (the second, expanded search round runs over every rank's shards),
        and differently from the plain search (so the expansion did run)."""
        srv = Server(3, self.db, self.ckpt, "--metric", "cosine", "--qe", "3", "--qe-alpha", "2", tag="qe")
        try:
            self.assertIn("alpha query expansion, n = 3, alpha = 2", srv.stderr())
            st, _, data = request(f"{srv.url}/healthz")
            self.assertEqual((st, json.loads(data)["query_expansion"]), (200, {"n": 3, "alpha": 2}))
            qfile = os.path.join(WORK, "qe.npy")
            np.save(qfile, self.x[[10, 20, 30]] + np.float32(0.05))
            opts = ("--queries", qfile, "--k", "6", "--metric", "cosine")
            ref = self.query(*opts, "--qe", "3", "--qe-alpha", "2")
            self.assertNotEqual(ref, self.query(*opts))
            for i, row in enumerate(np.load(qfile)):
                st, _, data = request(f"{srv.url}/search?k=6", "POST",
                                      json.dumps({"vector": [float(t) for t in row]}).encode())
                self.assertEqual(st, 200, data)
                self.assertEqual(results(json.loads(data)), ref[i])
        finally:
            srv.kill()

    def test_sigterm_to_another_rank_stops_every_rank(self):
        srv = Server(2, self.db, self.ckpt, tag="term1")
        try:
            os.kill(rank_pids(srv.proc.pid)[1], signal.SIGTERM)
            self.assertEqual(srv.wait(30), 0, srv.stderr())
            self.assertIn("signal received by another rank", srv.stderr())
        finally:
            if srv.proc.poll() is None:
                srv.kill()

    def test_zz_kill9_of_a_rank_ends_the_job(self):
        srv = Server(2, self.db, self.ckpt, tag="kill9")
        try:
            t0 = time.time()
            os.kill(rank_pids(srv.proc.pid)[1], signal.SIGKILL)
            rc = srv.wait(30)
            self.assertNotEqual(rc, 0)
            self.assertLess(time.time() - t0, 15, "the job outlived its dead rank")
        finally:
            if srv.proc.poll() is None:
                srv.kill()



if __name__ == "__main__":
    unittest.main(verbosity=2)
