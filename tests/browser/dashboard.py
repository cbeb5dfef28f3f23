"""The web dashboard in a real headless Chromium (Debian's chromium and
chromium-driver, driven by Selenium from PyPI), against the real `midge`
binary, with mosquitto_pub / mosquitto_sub as the MQTT clients on the other
side. Run by tests/tests/e2e/dashboard.rs (the README's test command).

Environment:
  MIDGE_BIN        the broker binary
  MIDGE_WASM_DIR   the built plugins (test_misbehave.wasm is loaded as "sink")
  DASH_PORT_BASE   first of three loopback ports (mqtt, ws, admin); the
                   broker is restarted on the same ones
  DASH_ARTIFACTS   where screenshots of every page go
  DASH_PERSIST     "sled" to run the broker with persistence on
  MIDGE_TEST_NATS  NATS URLs (scripts/test.sh starts them) for two clustered
                   nodes on the next ports (mqtt +3, admin +4; mqtt +5); the
                   cluster step is required under CI=true
The bridges step starts an edge broker on mqtt +6, admin +7, bridging to
this broker and to +8 (where nothing may listen).

Fails on any error in the browser console that the step did not expect
(the 401 of a wrong token; refused connections while the broker is down).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

os.environ["SE_AVOID_STATS"] = "true"  # Selenium Manager: no telemetry, no downloads

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

TOKEN = "dash-test-token-5f1c"
WAIT = 15.0

BIN = os.environ["MIDGE_BIN"]
WASM = os.environ.get("MIDGE_WASM_DIR", "")
BASE_PORT = int(os.environ.get("DASH_PORT_BASE", "24101"))
MQTT, WS, ADMIN = BASE_PORT, BASE_PORT + 1, BASE_PORT + 2
ART = os.environ.get("DASH_ARTIFACTS", "target/dashboard")
PERSIST = os.environ.get("DASH_PERSIST", "")
URL = f"http://127.0.0.1:{ADMIN}/"

started = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)


class Failure(Exception):
    pass


def wait_until(what, cond, timeout=WAIT, every=0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 (stale elements while a page redraws)
            last = e
        time.sleep(every)
    raise Failure(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


# --- the broker --------------------------------------------------------------

class Broker:
    def __init__(self, work):
        self.work = work
        self.proc = None
        self.cfg = os.path.join(work, "midge.toml")
        persist = ""
        if PERSIST == "sled":
            persist = f'[persistence]\nenabled = true\ndata_dir = "{work}/data"\n'
        plugin = ""
        if WASM:
            plugin = f"""
[[plugins.plugin]]
name = "sink"
path = "{WASM}/test_misbehave.wasm"
config = {{ mode = "rule-output-only" }}
[plugins.plugin.grants]
kv = "dash-sink"
publish = ["dash/sink-out/#"]

[[rules]]
id = "to-sink"
sql = 'SELECT topic, payload FROM "dash/sink/#"'
actions = [{{ type = "plugin", plugin = "sink" }}]
"""
        with open(self.cfg, "w") as f:
            f.write(f"""
[listeners]
mqtt = "127.0.0.1:{MQTT}"
ws = "127.0.0.1:{WS}"

[admin]
listen = "127.0.0.1:{ADMIN}"
token = "{TOKEN}"
api_rules_file = "{work}/api-rules.json"

[sys]
interval = 0

[plugins]
kv_path = "{work}/kv"
{persist}{plugin}""")

    def start(self):
        self.out = open(os.path.join(ART, getattr(self, "log_name", "broker.log")), "a")
        self.proc = subprocess.Popen([BIN, "serve", "--config", self.cfg], stdout=subprocess.PIPE,
                                     stderr=self.out, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise Failure(f"broker exited at start (code {self.proc.poll()}); see {ART}/broker.log")
            if line.startswith("midge: admin listening on"):
                log(f"broker up (pid {self.proc.pid})")
                return
        raise Failure("broker did not print its admin listening line within 30 s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def api(method, path, body=None):
    return api_at(ADMIN, method, path, body)


def api_at(port, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode() or "null")


# --- MQTT clients that are not ours -------------------------------------------

children = []


def mosquitto(*args, wait=True, timeout=30):
    cmd = list(args[:1]) + ["-h", "127.0.0.1", "-p", str(MQTT)] + list(args[1:])
    if wait:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise Failure(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr}")
        return r.stdout
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    children.append(p)
    return p


def finish(p, timeout=10):
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        raise Failure(f"{p.args} did not finish; output so far: {out}")
    return out


# --- the browser -------------------------------------------------------------

def browser(profile):
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1280,1000"):
        o.add_argument(flag)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)


class Page:
    def __init__(self, d):
        self.d = d
        self.shots = []

    def go(self, route):
        self.d.get(URL + "#/" + route)
        self.wait_h1()

    def wait_h1(self, text=None):
        def ok():
            h1 = self.d.find_elements(By.CSS_SELECTOR, "#page h1")
            return h1 and h1[0].is_displayed() and (text is None or text in h1[0].text)
        wait_until(f"page heading {text or ''}", ok)

    def css(self, sel):
        return self.d.find_element(By.CSS_SELECTOR, sel)

    def all(self, sel):
        return self.d.find_elements(By.CSS_SELECTOR, sel)

    def text(self, sel):
        els = self.all(sel)
        return els[0].text if els else ""

    def fill(self, sel, value):
        el = self.css(sel)
        el.clear()
        el.send_keys(value)
        return el

    def click(self, sel):
        self.css(sel).click()

    def click_when(self, what, sel):
        """Clicks `sel` once it is there; retried while a list redraws under it."""
        wait_until(what, lambda: self.css(sel).click() or True)

    def confirm(self):
        wait_until("the confirmation dialog", lambda: self.all("dialog.confirm[open]"))
        self.css("dialog.confirm button[value=ok]").click()
        wait_until("the dialog to close", lambda: not self.all("dialog.confirm"))

    def shot(self, name):
        path = os.path.join(ART, f"{len(self.shots) + 1:02d}-{name}.png")
        self.d.save_screenshot(path)
        self.shots.append(path)

    def console(self, step, allowed=()):
        """Fails on any console error this step did not expect."""
        bad = []
        for entry in self.d.get_log("browser"):
            if entry["level"] != "SEVERE":
                continue
            if any(re.search(a, entry["message"]) for a in allowed):
                continue
            bad.append(entry["message"])
        if bad:
            raise Failure(f"browser console errors during '{step}':\n  " + "\n  ".join(bad))


# --- the steps ---------------------------------------------------------------

def step_wrong_token(p):
    p.d.get(URL)
    wait_until("the login form", lambda: p.css("#token").is_displayed())
    p.fill("#token", "not-the-token")
    p.css("#token").send_keys(Keys.ENTER)  # keyboard: Enter submits
    err = wait_until("the wrong-token message", lambda: p.text("#login-error"))
    if "refused this token" not in err or "invalid token" not in err:
        raise Failure(f"unexpected wrong-token message: {err!r}")
    if "not-the-token" in p.d.current_url or TOKEN in p.d.current_url:
        raise Failure("a token ended up in the URL")
    log(f"wrong token: {err!r}")
    p.shot("login-wrong-token")
    # The API's 401 answer is logged by Chromium as a failed resource load.
    p.console("wrong token", allowed=[r"api/v1/status .*401"])


def step_login(p):
    p.fill("#token", TOKEN)
    p.click("#login-form button[type=submit]")
    p.wait_h1("Overview")
    stored = p.d.execute_script("return sessionStorage.getItem('midge.admin.token')")
    if stored != TOKEN:
        raise Failure(f"the token is not in session storage: {stored!r}")
    if TOKEN in p.d.current_url:
        raise Failure("the token is in the URL")
    wait_until("the version card", lambda: re.match(r"\d+\.\d+", p.text("#stat-version")))
    log("logged in; overview shows version " + p.text("#stat-version"))
    p.console("login")


def chart_state(p, key):
    el = p.css(f'.value[data-key="{key}"]')
    line = p.css(f'polyline[data-key="{key}"]')
    raw = el.get_attribute("data-raw")
    return (float(raw) if raw else 0.0), line.get_attribute("points")


def step_overview_moves(p):
    wait_until("the charts to get points", lambda: int(p.css("#chart-messages").get_attribute("data-points") or 0) >= 2)
    _, before = chart_state(p, "messages_in_rate")
    # About 500 messages/s for ~8 s, from mosquitto_pub.
    pub = mosquitto("mosquitto_pub", "-t", "dash/load/1", "-m", "x" * 64, "--repeat", "4000",
                    "--repeat-delay", "0.002", "-q", "0", "-i", "dash-load", wait=False)
    rate = wait_until("messages in/s to rise on the chart",
                      lambda: (lambda r: r[0] if r[0] > 50 else None)(chart_state(p, "messages_in_rate")))
    _, during = chart_state(p, "messages_in_rate")
    if during == before:
        raise Failure("the messages chart did not move")
    bytes_in = float(p.css('.value[data-key="bytes_in_rate"]').get_attribute("data-raw") or 0)
    if bytes_in <= 0:
        raise Failure("bytes in/s did not rise")
    conns = wait_until("the load client on the listener chart",
                       lambda: float(p.css('.value[data-key="conn_mqtt"]').get_attribute("data-raw") or 0))
    log(f"overview chart moved: {rate:.0f} messages/s in, {bytes_in:.0f} B/s, mqtt connections {conns}")
    p.shot("overview-under-load")
    finish(pub, timeout=60)
    p.console("overview under load")


def step_kick(p):
    sub = mosquitto("mosquitto_sub", "-V", "mqttv5", "-i", "dash-kick-me", "-t", "dash/kick/#", "-q", "1", "-d",
                    wait=False)
    p.go("clients")
    p.fill("#client-search", "dash-kick")
    p.click("form.filters button[type=submit]")
    # The list redraws every 3 s: read the row inside the retried check.
    def row_cells():
        link = [a for a in p.all("#clients-list a") if a.text == "dash-kick-me"]
        if not link:
            return None
        return [c.text for c in link[0].find_element(By.XPATH, "ancestor::tr").find_elements(By.TAG_NAME, "td")]
    cells = wait_until("the mosquitto_sub client in the list", row_cells)
    if "5.0" not in cells or "connected" not in cells or not any(c.startswith("127.0.0.1:") for c in cells):
        raise Failure(f"unexpected client row: {cells}")
    p.shot("clients")
    p.click_when("the client's link", '#clients-list a[href="#/clients/dash-kick-me"]')
    p.wait_h1("dash-kick-me")
    wait_until("its subscription on the client page", lambda: "dash/kick/#" in p.text("#client-subs"))
    wait_until("its session facts", lambda: "connected" in p.text("#client-info"))
    p.shot("client-page")
    p.click(".actions button.danger")
    p.confirm()
    out = finish(sub)
    if "DISCONNECT (152)" not in out:
        raise Failure(f"mosquitto_sub did not see DISCONNECT 0x98 (administrative action): {out}")
    p.wait_h1("Clients")
    status, body = api("GET", "/api/v1/clients/dash-kick-me")
    if status != 404:
        raise Failure(f"the kicked client's session is still there: {status} {body}")
    log("kicked dash-kick-me from its page; mosquitto_sub saw 'Received DISCONNECT (152)' and exited")
    p.console("kick")


def step_topics(p):
    sub = mosquitto("mosquitto_sub", "-i", "dash-topics", "-t", "dash/topics/+/temp", "-W", "30", wait=False)
    p.go("topics")
    p.fill("#topic-match", "dash/topics/7/temp")
    p.css("#topic-match").send_keys(Keys.ENTER)
    wait_until("the filter matching dash/topics/7/temp", lambda: "dash/topics/+/temp" in p.text("#topics-list"))
    p.fill("#sub-client", "dash-topics")
    p.css("#sub-client").send_keys(Keys.ENTER)
    wait_until("the client's subscription", lambda: "dash/topics/+/temp" in p.text("#subs-list"))
    p.shot("subscriptions-and-topics")
    sub.kill()
    sub.wait()
    p.console("topics")


def step_rule(p):
    p.go("rules")
    p.click("#rule-new")
    p.wait_h1("New rule")
    p.fill("#rule-id", "dash-hot")
    # A typo on line 2: the error must point at it.
    p.fill("#rule-sql", 'SELECT payload.temp AS t, clientid\nFROM "dash/sensor/#" WHER t > 30')
    p.fill(".action-topic", "dash/alerts/${clientid}")
    p.fill(".action-payload", '{"t": ${t}}')
    p.click("#rule-save")
    err = wait_until("the SQL error with its position", lambda: p.text("#sql-error"))
    if "line 2" not in err or "^" not in err:
        raise Failure(f"the SQL error does not show its position: {err!r}")
    log("bad SQL refused at " + err.splitlines()[0])
    p.shot("rule-sql-error")
    p.fill("#rule-sql", 'SELECT payload.temp AS t, clientid\nFROM "dash/sensor/#" WHERE t > 30')
    # Dry run: the rows and what the republish would send.
    p.fill("#test-topic", "dash/sensor/1")
    p.fill("#test-clientid", "dash-probe")
    p.fill("#test-payload", '{"temp": 31}')
    p.click("#rule-test-run")
    wait_until("the dry run's result", lambda: "Matched" in p.text("#test-matched"))
    topic = p.text(".out-topic")
    payload = p.text(".out-payload")
    if topic != "dash/alerts/dash-probe" or json.loads(payload) != {"t": 31}:
        raise Failure(f"unexpected dry-run output: {topic!r} {payload!r}")
    row = json.loads(p.text(".test-row"))
    if row != {"t": 31, "clientid": "dash-probe"}:
        raise Failure(f"unexpected dry-run row: {row}")
    log(f"dry run: row {row}, republish to {topic} with {payload}")
    p.shot("rule-dry-run")
    p.click("#rule-save")
    p.wait_h1("Rule dash-hot")
    wait_until("the rule's metrics", lambda: p.text("#rule-matched") == "0")
    # Real publishes: three match the WHERE, one does not; the republished
    # messages are what the dry run said.
    alerts = mosquitto("mosquitto_sub", "-i", "dash-alerts", "-t", "dash/alerts/#", "-C", "3", "-W", "20", "-v",
                       wait=False)
    time.sleep(0.5)
    for i, temp in enumerate([35, 36, 12, 37]):
        mosquitto("mosquitto_pub", "-i", "dash-sensor", "-t", f"dash/sensor/{i}", "-m", json.dumps({"temp": temp}),
                  "-q", "1")
    wait_until("matched to reach 4 on the rule's page", lambda: p.text("#rule-matched") == "4")
    wait_until("passed to reach 3", lambda: p.text("#rule-passed") == "3")
    wait_until("3 successful actions", lambda: p.text("#rule-actions-ok") == "3")
    got = finish(alerts, timeout=25).strip().splitlines()
    want = [f'dash/alerts/dash-sensor {{"t": {t}}}' for t in (35, 36, 37)]
    if got != want:
        raise Failure(f"republished messages differ from the dry run's: {got} != {want}")
    p.shot("rule-page-metrics")
    p.go("rules")
    wait_until("matched 4 in the rules list",
               lambda: p.text('[data-metric="matched"][data-rule="dash-hot"]') == "4")
    p.shot("rules")
    log("rule dash-hot: matched 4, passed 3, republished " + "; ".join(got))
    # The refused SQL is the API's 400, which Chromium logs as a failed load.
    p.console("rule", allowed=[r"api/v1/rules - .*400"])


def step_retained(p):
    binfile = os.path.join(tempfile.mkdtemp(), "frame.bin")
    with open(binfile, "wb") as f:
        f.write(bytes([0xCB, 0x48, 0xCD, 0x00, 0xFF]))
    mosquitto("mosquitto_pub", "-t", "dash/ret/json", "-m", '{"a":1,"b":[true,null]}', "-r", "-q", "1")
    mosquitto("mosquitto_pub", "-t", "dash/ret/bin", "-f", binfile, "-r", "-q", "1")
    p.go("retained")
    p.fill("#retained-filter", "dash/ret/#")
    p.css("#retained-filter").send_keys(Keys.ENTER)
    wait_until("both retained messages", lambda: len(p.all("#retained-list button[data-topic]")) == 2)
    p.click('button[data-topic="dash/ret/bin"]')
    wait_until("the binary payload as hex", lambda: "cb 48 cd 00 ff" in p.text("pre.payload"))
    p.shot("retained-binary")
    p.click('button[data-topic="dash/ret/json"]')
    pretty = wait_until("the JSON payload pretty-printed", lambda: '"a": 1' in p.text("pre.payload") and p.text("pre.payload"))
    if json.loads(pretty) != {"a": 1, "b": [True, None]}:
        raise Failure(f"unexpected JSON view: {pretty!r}")
    p.shot("retained-json")
    p.click("#retained-delete")
    p.confirm()
    wait_until("the delete to be reported", lambda: "Deleted" in p.text(".msg.ok"))
    wait_until("one retained message left", lambda: len(p.all("#retained-list button[data-topic]")) == 1)
    status, _ = api("GET", "/api/v1/retained/dash%2Fret%2Fjson")
    if status != 404:
        raise Failure(f"the deleted retained message is still served ({status})")
    # A new subscriber gets the binary one, byte for byte, and not the deleted one.
    out = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(MQTT), "-t", "dash/ret/#", "-C", "2", "-W", "2",
                          "-F", "%t %x"], capture_output=True, text=True).stdout.split()
    if out != ["dash/ret/bin", "cb48cd00ff"]:
        raise Failure(f"after the delete a subscriber got {out}")
    log("retained: viewed as hex and JSON, deleted dash/ret/json; a subscriber gets only dash/ret/bin")
    p.shot("retained-after-delete")
    p.console("retained")


def live_round(p, version, label):
    p.css("#live-version").send_keys(label)
    wait_until("the WebSocket URL from the API", lambda: p.css("#live-url").get_attribute("value"))
    url = p.css("#live-url").get_attribute("value")
    if url != f"ws://127.0.0.1:{WS}/mqtt":
        raise Failure(f"unexpected WebSocket URL {url!r}")
    p.fill("#live-clientid", f"dash-live-{version}")
    p.click("#live-connect")
    wait_until(f"connected with {label}", lambda: f"connected ({label})" in p.text("#live-state"))
    status, c = api("GET", f"/api/v1/clients/dash-live-{version}")
    want = 5 if version == "v5" else 4
    if status != 200 or c["proto_ver"] != want:
        raise Failure(f"the broker does not see the page's {label} client: {status} {c}")
    p.fill("#live-filter", f"dash/live/{version}/#")
    p.css("#live-sub-qos").send_keys("QoS 1")
    p.click("#live-subscribe")
    wait_until("the subscription", lambda: p.all(f'#live-subs li[data-filter="dash/live/{version}/#"]'))
    # From mosquitto to the page.
    mosquitto("mosquitto_pub", "-t", f"dash/live/{version}/ext", "-m", f"from mosquitto {version}", "-q", "1")
    wait_until("mosquitto's message on the page", lambda: f"from mosquitto {version}" in p.text("#live-messages"))
    # From the page to mosquitto (and back to the page, which subscribes too).
    ext = mosquitto("mosquitto_sub", "-t", f"dash/live/{version}/page", "-C", "1", "-W", "15", "-i",
                    f"dash-live-sub-{version}", wait=False)
    wait_until("mosquitto_sub to subscribe",
               lambda: api("GET", f"/api/v1/subscriptions?clientid=dash-live-sub-{version}")[1]["meta"]["count"] == 1)
    p.fill("#live-pub-topic", f"dash/live/{version}/page")
    p.fill("#live-pub-payload", f"from the page {version}")
    p.css("#live-pub-qos").send_keys("QoS 1")
    p.click("#live-publish")
    wait_until("the PUBACK", lambda: "acknowledged" in p.text(".msg.ok"))
    got = finish(ext, timeout=15).strip()
    if got != f"from the page {version}":
        raise Failure(f"mosquitto_sub got {got!r} from the page")
    wait_until("the page's own message", lambda: f"from the page {version}" in p.text("#live-messages"))
    # Paused: held back, shown on resume.
    p.click("#live-pause")
    mosquitto("mosquitto_pub", "-t", f"dash/live/{version}/ext", "-m", f"while paused {version}", "-q", "1")
    wait_until("the held-back count", lambda: "1 waiting" in p.text("#live-count"))
    if f"while paused {version}" in p.text("#live-messages"):
        raise Failure("a message was shown while paused")
    p.click("#live-pause")
    wait_until("the held message after resume", lambda: f"while paused {version}" in p.text("#live-messages"))
    log(f"live page ({label}): received from mosquitto_pub, published to mosquitto_sub, paused and resumed")


def step_live(p):
    p.go("live")
    live_round(p, "v5", "MQTT 5.0")
    p.shot("live-mqtt5")
    p.click("#live-connect")  # disconnect
    wait_until("disconnected", lambda: p.text("#live-state") == "disconnected")
    live_round(p, "v4", "MQTT 3.1.1")
    p.shot("live-mqtt311")
    p.console("live")


def step_plugins(p):
    p.go("plugins")
    if not WASM:
        wait_until("the empty plugin list", lambda: "No plugins configured" in p.text("#plugins-list"))
        p.shot("plugins")
        p.console("plugins")
        return
    # Rows to the sink plugin through the config's rule.
    for i in range(3):
        mosquitto("mosquitto_pub", "-t", f"dash/sink/{i}", "-m", "row", "-q", "1")
    calls = wait_until("the sink plugin's calls on the page",
                       lambda: (lambda t: t if t not in ("", "0", "–") else None)(p.text('[data-calls="sink"]')))
    if "running" not in p.text("#plugins-list"):
        raise Failure("the sink plugin is not shown running")
    grants = p.text("#plugins-details .grants")
    if "kv: dash-sink" not in grants or "publish: dash/sink-out/#" not in grants:
        raise Failure(f"the grants are not shown: {grants!r}")
    p.shot("plugins")
    p.click_when("the Disable button", 'button[data-plugin="sink"][data-act="disable"]')
    wait_until("the plugin disabled", lambda: api("GET", "/api/v1/plugins")[1]["data"][0]["state"] == "disabled")
    wait_until("the page to show it", lambda: "disabled" in p.text("#plugins-list"))
    p.click_when("the Enable button", 'button[data-plugin="sink"][data-act="enable"]')
    wait_until("the plugin running again", lambda: api("GET", "/api/v1/plugins")[1]["data"][0]["state"] == "running")
    p.click_when("the Reload button", 'button[data-plugin="sink"][data-act="reload"]')
    # Recompiling the component takes seconds in a debug build on a busy machine.
    wait_until("the reload", lambda: "reloaded" in p.text(".msg.ok"), timeout=90)
    if api("GET", "/api/v1/plugins")[1]["data"][0]["metrics"]["reloads"] < 1:
        raise Failure("the reload was not counted")
    log(f"plugins: sink running, {calls} calls, grants {grants!r}; disabled, enabled and reloaded from the page")
    p.console("plugins")


def step_later_pages(p):
    p.go("cluster")
    off = wait_until("the not-clustered message", lambda: p.text("#cluster-off"))
    if "not in a cluster" not in off:
        raise Failure(f"unexpected cluster page of a single node: {off!r}")
    p.shot("cluster-single-node")
    p.go("bridges")
    none = wait_until("the no-bridges message", lambda: p.text("#bridges-none"))
    if "no bridges" not in none:
        raise Failure(f"unexpected bridges page of a broker without bridges: {none!r}")
    p.shot("bridges-none")
    p.console("cluster and bridges pages")


def step_bridges(p):
    """An edge broker bridging to this test's broker ("main": up) and to a
    port nothing listens on ("down"): its Bridges page shows "main"
    connected with the messages it sent (mosquitto_pub at the edge ->
    mosquitto_sub here), and "down" disconnected with its last error and
    the same messages buffered."""
    e_mqtt, e_admin, nowhere = BASE_PORT + 6, BASE_PORT + 7, BASE_PORT + 8
    work = tempfile.mkdtemp(prefix="midge-dash-bridges-")
    edge = Node(work, "edge", f"""
[listeners]
mqtt = "127.0.0.1:{e_mqtt}"
ws = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:{e_admin}"
token = "{TOKEN}"
api_rules_file = "{work}/api-rules.json"

[sys]
interval = 0

[[bridges]]
name = "main"
remote = "mqtt://127.0.0.1:{MQTT}"
client_id = "dash-edge-main"
[bridges.reconnect]
initial_ms = 200
max_ms = 1000
[[bridges.out]]
filter = "dash/bridge/#"
add_prefix = "edge/"
qos = 1

[[bridges]]
name = "down"
remote = "mqtt://127.0.0.1:{nowhere}"
client_id = "dash-edge-down"
[bridges.reconnect]
initial_ms = 200
max_ms = 1000
[[bridges.out]]
filter = "dash/bridge/#"
qos = 1
""")
    try:
        edge.start()
        p.d.get(f"http://127.0.0.1:{e_admin}/#/bridges")
        wait_until("the login form of the edge", lambda: p.css("#token").is_displayed())
        p.fill("#token", TOKEN)
        p.click("#login-form button[type=submit]")
        p.wait_h1("Bridges")
        wait_until("bridge main connected", lambda: p.text('[data-state="main"]') == "connected", timeout=30)
        wait_until("bridge down disconnected", lambda: p.text('[data-state="down"]') == "disconnected")
        # main has no `in` direction: connected is the whole state, no "(subscribing)" after it.
        st, body = api_at(e_admin, "GET", "/api/v1/bridges/main")
        if st != 200 or not body["subscribed"]:
            raise Failure(f"bridge main (no `in` directions) is not reported subscribed: {st} {body}")
        if "subscribing" in p.css('[data-state="main"]').find_element(By.XPATH, "..").text:
            raise Failure("the page shows bridge main (no `in` directions) as still subscribing")
        sub = mosquitto("mosquitto_sub", "-t", "edge/dash/bridge/#", "-q", "1", "-C", "5", "-W", "30", "-v",
                        "-i", "dash-bridge-sub", wait=False)
        time.sleep(0.5)
        for i in range(5):
            r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(e_mqtt), "-t", f"dash/bridge/{i}",
                                "-m", f"b{i}", "-q", "1", "-i", "dash-bridge-pub"], capture_output=True, text=True,
                               timeout=30)
            if r.returncode != 0:
                raise Failure(f"mosquitto_pub at the edge failed: {r.stderr}")
        out = finish(sub, timeout=40)
        if sub.returncode != 0 or out.count("\n") < 5 or "edge/dash/bridge/4 b4" not in out:
            raise Failure(f"mosquitto_sub here did not get the 5 bridged messages: {out!r}")
        wait_until("main's sent count on the page", lambda: p.text('[data-sent="main"]') == "5")
        wait_until("down's 5 buffered messages on the page", lambda: p.text('[data-buffered="down"]') == "5")
        err = wait_until("down's last error on the page", lambda: p.text('[data-error="down"]'))
        if "refused" not in err.lower():
            raise Failure(f"the last error of bridge down does not say the connection was refused: {err!r}")
        if p.text('[data-buffered="main"]') != "0":
            raise Failure(f"bridge main shows {p.text('[data-buffered=main]')!r} buffered after sending everything")
        # The page shows what the API says.
        st, body = api_at(e_admin, "GET", "/api/v1/bridges/down")
        if st != 200 or body["buffered"]["messages"] != 5 or body["connected"]:
            raise Failure(f"the API disagrees with the page: {st} {body}")
        # Rates are over the last 5 s: keep messages flowing until the page shows one.
        deadline = time.monotonic() + 30
        i = 5
        while p.text('[data-sent-rate="main"]') in ("", "0", "–"):
            if time.monotonic() > deadline:
                raise Failure("the page never showed a send rate for bridge main")
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(e_mqtt), "-t", f"dash/bridge/{i}",
                            "-m", f"b{i}", "-q", "1", "-i", "dash-bridge-pub"], capture_output=True, timeout=30)
            i += 1
            time.sleep(0.3)
        p.shot("bridges")
        log(f"bridges: main connected, 5 sent (rate {p.text('[data-sent-rate=main]')}/s); "
            f"down disconnected with 5 buffered, last error {err!r}")
        p.console("bridges")
        # Back to this broker's origin: its tab storage still has the token.
        p.d.get(URL + "#/overview")
        p.wait_h1("Overview")
    finally:
        edge.stop()
        shutil.rmtree(work, ignore_errors=True)


class Node(Broker):
    """A clustered `midge` (NATS from MIDGE_TEST_NATS) for the cluster page."""

    def __init__(self, work, node, text):
        self.work = work
        self.proc = None
        self.log_name = f"node-{node}.log"
        self.cfg = os.path.join(work, f"{node}.toml")
        with open(self.cfg, "w") as f:
            f.write(text)


def step_cluster(p):
    """Two clustered nodes: the page of node a lists both alive, counts the
    messages a forwards to b and b receives while mosquitto clients talk
    through them, and drops b once it stops."""
    urls = os.environ.get("MIDGE_TEST_NATS", "")
    if not urls:
        if os.environ.get("CI") in ("true", "1"):
            raise Failure("MIDGE_TEST_NATS is not set under CI (scripts/test.sh starts NATS)")
        log("cluster: SKIPPED, MIDGE_TEST_NATS is not set (scripts/test.sh starts NATS)")
        return
    name = "dash" + re.sub(r"[^0-9]", "", f"{time.time_ns()}{os.getpid()}")[-20:]
    nats = ", ".join(json.dumps(u) for u in urls.split(","))
    a_mqtt, a_admin, b_mqtt = BASE_PORT + 3, BASE_PORT + 4, BASE_PORT + 5
    work = tempfile.mkdtemp(prefix="midge-dash-cluster-")
    nodes = {}
    try:
        for node, mqtt, admin in (("a", a_mqtt, a_admin), ("b", b_mqtt, 0)):
            nodes[node] = Node(work, node, f"""
[listeners]
mqtt = "127.0.0.1:{mqtt}"
ws = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:{admin}"
token = "{TOKEN}"

[sys]
interval = 0

[cluster]
enabled = true
node = "{node}"
name = "{name}"
nats = [{nats}]
replicas = 3
heartbeat_ms = 300
node_timeout_ms = 1500
""")
            nodes[node].start()
        # Another origin: its own session storage, so log in again.
        p.d.get(f"http://127.0.0.1:{a_admin}/#/cluster")
        wait_until("the login form of node a", lambda: p.css("#token").is_displayed())
        p.fill("#token", TOKEN)
        p.click("#login-form button[type=submit]")
        p.wait_h1("Cluster")
        wait_until("NATS connected", lambda: p.text("#cluster-nats") == "connected")
        for node in ("a", "b"):
            wait_until(f"node {node} alive", lambda: p.text(f'[data-state="{node}"]') == "alive", timeout=30)
        if "a" != p.text("#cluster-node"):
            raise Failure(f"the page names this node {p.text('#cluster-node')!r}")
        p.shot("cluster-two-nodes")
        # mosquitto_sub on b, mosquitto_pub on a: publish until b's interest
        # reached a and five messages got through.
        sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(b_mqtt), "-t", "dash/cluster/#",
                                "-q", "1", "-C", "5", "-W", "60", "-i", "dash-cluster-sub"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        children.append(sub)
        deadline = time.monotonic() + 45
        i = 0
        while sub.poll() is None and time.monotonic() < deadline:
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(a_mqtt), "-t", f"dash/cluster/{i}",
                            "-m", f"m{i}", "-q", "1", "-i", "dash-cluster-pub"], capture_output=True, timeout=30)
            i += 1
            time.sleep(0.2)
        out = finish(sub)
        if sub.returncode != 0 or out.count("\n") < 5:
            raise Failure(f"mosquitto_sub on node b did not get 5 messages published on node a: {out!r}")

        def count(node, key):
            raw = p.css(f'[data-node="{node}"][data-{key}]').get_attribute(f"data-{key}")
            return int(raw or 0)
        wait_until("a's forwarded count", lambda: count("a", "forwarded") >= 5, timeout=20)
        wait_until("b's received count", lambda: count("b", "received") >= 5, timeout=20)
        wait_until("the cross-node chart to show the forwarded messages",
                   lambda: float(p.css("#chart-cluster").get_attribute("data-peak") or 0) > 0)
        log(f"cluster: a forwarded {count('a', 'forwarded')}, b received {count('b', 'received')} "
            f"({i} published on a, 5 read on b)")
        p.shot("cluster-traffic")
        nodes["b"].stop()
        wait_until("node b gone or dead", lambda: p.text('[data-state="b"]') in ("", "dead"), timeout=30)
        p.shot("cluster-b-stopped")
        log("cluster: node b stopped, the page no longer shows it alive")
        p.console("cluster")
        p.d.get(URL + "#/overview")
    finally:
        for n in nodes.values():
            n.stop()
        shutil.rmtree(work, ignore_errors=True)


def step_keyboard(p):
    p.go("overview")
    body = p.css("body")
    body.click()
    # Tab from the top of the page to the Clients link, then Enter.
    p.d.execute_script("document.activeElement.blur(); window.scrollTo(0,0)")
    for _ in range(15):
        active = p.d.switch_to.active_element
        if active.tag_name == "a" and active.text == "Clients":
            break
        active.send_keys(Keys.TAB) if active.tag_name != "body" else body.send_keys(Keys.TAB)
    else:
        raise Failure("the Clients link was not reached with Tab")
    p.d.switch_to.active_element.send_keys(Keys.ENTER)
    p.wait_h1("Clients")
    log("keyboard: reached the Clients link with Tab and opened it with Enter")
    p.console("keyboard")


def step_narrow(p):
    p.d.set_window_size(390, 844)
    p.go("overview")
    if p.css("#nav").is_displayed():
        raise Failure("the page list should fold behind the menu button on a narrow screen")
    width = p.d.execute_script("return document.documentElement.scrollWidth")
    if width > 400:
        raise Failure(f"the overview is wider than a 390 px screen ({width} px)")
    p.shot("overview-narrow")
    p.click("#menu")
    wait_until("the menu to open", lambda: p.css("#nav").is_displayed())
    p.shot("menu-narrow")
    [a for a in p.all("#nav a") if a.text == "Rules"][0].click()
    p.wait_h1("Rules")
    p.shot("rules-narrow")
    p.d.set_window_size(1280, 1000)
    log(f"narrow screen: overview fits 390 px ({width} px), the menu opens and navigates")
    p.console("narrow")


def step_restart(p, broker):
    p.go("overview")
    wait_until("points on the chart", lambda: int(p.css("#chart-connections").get_attribute("data-points") or 0) >= 2)
    broker.stop()
    wait_until("the reconnecting banner", lambda: p.css("#banner").is_displayed() and "Reconnecting" in p.text("#banner"))
    if p.text("#link") != "reconnecting":
        raise Failure(f"the header does not say reconnecting: {p.text('#link')!r}")
    p.shot("reconnecting")
    log("broker stopped: the page says " + p.text("#banner"))
    time.sleep(3)
    broker.start()
    restarted = time.time() * 1000
    wait_until("the banner to go", lambda: not p.css("#banner").is_displayed(), timeout=30)
    wait_until("new points after the restart",
               lambda: float(p.css("#chart-connections").get_attribute("data-end") or 0) > restarted, timeout=30)
    wait_until("the uptime to restart", lambda: re.fullmatch(r"\d+s", p.text("#stat-uptime")), timeout=30)
    p.shot("recovered")
    log("broker restarted: the page recovered by itself (uptime " + p.text("#stat-uptime") + ")")
    # While the broker was down, Chromium logged the refused connections.
    p.console("restart", allowed=[r"ERR_CONNECTION_REFUSED", r"ERR_EMPTY_RESPONSE", r"ERR_INCOMPLETE_CHUNKED_ENCODING",
                                  r"ERR_CONNECTION_RESET", r"Failed to fetch"])


def step_logout(p):
    p.click("#logout")
    wait_until("the login form", lambda: p.css("#login").is_displayed())
    if p.d.execute_script("return sessionStorage.getItem('midge.admin.token')") is not None:
        raise Failure("the token stayed in session storage after logging out")
    p.console("logout")


def main():
    for tool in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not os.path.exists(tool):
            raise Failure(f"{tool} is missing (apt-get install chromium chromium-driver)")
    shutil.rmtree(ART, ignore_errors=True)
    os.makedirs(ART)
    work = tempfile.mkdtemp(prefix="midge-dash-")
    profile = tempfile.mkdtemp(prefix="midge-dash-chromium-")
    broker = Broker(work)
    d = None
    try:
        broker.start()
        d = browser(profile)
        p = Page(d)
        for name, step in [("wrong token", step_wrong_token), ("login", step_login),
                           ("overview moves under load", step_overview_moves), ("kick a client", step_kick),
                           ("subscriptions and topics", step_topics), ("rule", step_rule),
                           ("retained", step_retained), ("live topics", step_live), ("plugins", step_plugins),
                           ("cluster and bridges pages", step_later_pages), ("cluster of two nodes", step_cluster),
                           ("bridges", step_bridges),
                           ("keyboard", step_keyboard),
                           ("narrow screen", step_narrow)]:
            log(f"step: {name}")
            try:
                step(p)
            except Exception:
                p.shot(f"FAILED-{name.replace(' ', '-')}")
                raise
        log("step: broker restart")
        step_restart(p, broker)
        step_logout(p)
        log(f"PASS: {len(p.shots)} screenshots in {ART}")
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
        if d is not None:
            d.quit()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    # SIGTERM (the Rust test's time limit) unwinds through main's cleanup.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))
    try:
        main()
    except Failure as e:
        print(f"FAIL: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
