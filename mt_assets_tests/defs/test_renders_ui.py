"""Renders in the web UI: one `dagster dev` over a materialized tiny profile with two queued render jobs.

A partition is rendered from the asset page in headless Chromium, and per-partition staleness is read
through the webserver's GraphQL endpoint.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`), the way Playwright
drives it, with the standard library only: real mouse events, real rendering, no mocks.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mt_assets.defs.keys import file_key
from mt_assets.defs.offline_cache import ASSET_KEY as OFFLINE_CACHE
from mt_assets.defs.renders import PARTITIONS, RENDERS_KEY
from mt_assets.manifest import load_profile
from mt_assets_tests.dagster_dev import REPO_ROOT, dagster_dev
from mt_assets_tests.defs.conftest import materialize_models, tiny_definitions
from mt_assets_tests.defs.test_renders import RenderEnv
from mt_assets_tests.defs.test_ui import HEADLESS_FLAGS, chromium

JOB_IDS = ("ui-alpha", "ui-bravo")
LOCATION = {"repositoryName": "__repository__", "repositoryLocationName": "mt_assets"}


@dataclass
class RendersUI:
    """A running `dagster dev` and, in this process, the same instance, volume and definitions."""

    url: str
    env: RenderEnv
    log: Path

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            doc = json.load(response)
        assert not doc.get("errors"), f"GraphQL errors: {doc['errors']}"
        return doc["data"]

    def stop_sensor(self, name: str) -> None:
        found = self.graphql(
            "query Sensor($s: SensorSelector!) { sensorOrError(sensorSelector: $s) {"
            " __typename ... on Sensor { sensorState { id } } } }",
            s={**LOCATION, "sensorName": name},
        )["sensorOrError"]
        assert found["__typename"] == "Sensor", found
        stopped = self.graphql(
            "mutation Stop($id: String) { stopSensor(id: $id) { __typename"
            " ... on StopSensorMutationResult { instigationState { status } } } }",
            id=found["sensorState"]["id"],
        )["stopSensor"]
        assert stopped.get("instigationState", {}).get("status") == "STOPPED", stopped

    def dev_log(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


class Browser:
    """Headless Chromium over the DevTools protocol on fds 3 (commands) and 4 (replies and events)."""

    def __init__(self, profile: Path, log: Path, size: tuple[int, int] = (1400, 1000)) -> None:
        # High fd numbers in the parent, so that the child's dup2 onto 3 and 4 cannot clobber them.
        to_browser, self._write = _high_pipe()
        self._read, from_browser = _high_pipe()

        def onto_3_and_4() -> None:
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.proc = subprocess.Popen(
            [
                chromium(),
                *HEADLESS_FLAGS,
                f"--window-size={size[0]},{size[1]}",
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            preexec_fn=onto_3_and_4,
            close_fds=False,  # the pipes are close-on-exec; only the dup2'd 3 and 4 are inherited
            stdin=subprocess.DEVNULL,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Page.enable", session=True)
        self.send("Runtime.enable", session=True)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close", timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def send(
        self, method: str, *, session: bool = False, timeout: float = 60, **params: Any
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer {method} within {timeout}s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed its DevTools pipe during {method}")
            self._buffer += chunk

    # -- the page ---------------------------------------------------------------------------------

    def goto(self, url: str) -> None:
        self.send("Page.navigate", session=True, url=url)

    def eval(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:200]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(  # an element found is `true`: only plain values cross the protocol
                f"(async () => {{ try {{ const v = await ({expression}); return v instanceof Node || v; }}"
                " catch (e) { return null; } })()"
            )
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}; page text:\n{self.text()}"
                )
            time.sleep(0.25)

    def text(self) -> str:
        return self.eval("document.body ? document.body.innerText : ''") or ""

    def click(self, element: str, what: str, timeout: float = 30) -> None:
        """Click the centre of the element that the JS expression `element` finds, as a mouse does: once
        it is visible, has stopped moving (popovers animate in) and is what the point hits."""
        point = self.wait_for(
            f"""(async () => {{
                const e = {element};
                if (!e) return null;
                e.scrollIntoView({{block: 'center', inline: 'center'}});
                const box = () => {{ const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; }};
                const before = box();
                await new Promise(done => setTimeout(done, 150));
                const [x, y, w, h] = box();
                if (!w || !h || [x, y, w, h].join() !== before.join()) return null;
                const hit = document.elementFromPoint(x + w / 2, y + h / 2);
                return hit && e.contains(hit) ? [x + w / 2, y + h / 2] : null;
            }})()""",
            what,
            timeout,
        )
        x, y = point
        self.send("Input.dispatchMouseEvent", session=True, type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y, button="left", clickCount=1
            )

    def screenshot(self, path: Path) -> Path:
        shot = self.send("Page.captureScreenshot", session=True, format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def _high_pipe() -> tuple[int, int]:
    r, w = os.pipe()
    high = (fcntl.fcntl(r, fcntl.F_DUPFD_CLOEXEC, 10), fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, 10))
    os.close(r)
    os.close(w)
    return high


def by_text(selector: str, text: str) -> str:
    """A JS expression: the first visible element matching `selector` whose text is exactly `text`."""
    return (
        f"[...document.querySelectorAll({json.dumps(selector)})]"
        f".find(e => e.innerText && e.innerText.trim() === {json.dumps(text)} && e.offsetParent !== null)"
    )


@pytest.fixture(scope="module")
def renders_ui(tiny_mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RendersUI]:
    """The tiny profile materialized (all but renders) into a DAGSTER_HOME, two render jobs accepted as
    partitions of `renders`, then `dagster dev` over that home and volume."""
    base = tmp_path_factory.mktemp("renders-ui")
    home, root = base / "dagster-home", base / "volume"
    home.mkdir()
    root.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    defs = tiny_definitions(root, tiny_mirror)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        env = RenderEnv(root, instance, defs)
        materialize_models(defs, instance)
        variables = {
            "MT_PROFILE": "tiny",
            "MT_VOLUME": str(root),
            "MT_SOURCE": str(tiny_mirror),
            "MT_RENDER_DEVICE": "cpu",
        }
        log = base / "dagster-dev.log"
        with dagster_dev(home, variables, log) as url:
            ui = RendersUI(url, env, log)
            # Only what a test launches runs: the automation sensor would start offline_cache runs of
            # its own when a test changes a model file's version (the same toggle as in the UI).
            ui.stop_sensor("volume_automation")
            # The jobs are accepted by a tick here, and their runs launched by the tests from the UI;
            # the daemon's own tick would ask for runs of queued jobs that have none.
            ui.stop_sensor("render_inbox")
            for job_id in JOB_IDS:
                env.drop(job_id)
            assert sorted(r.partition_key for r in env.tick().run_requests or []) == sorted(JOB_IDS)
            assert set(instance.get_dynamic_partitions(PARTITIONS.name)) == set(JOB_IDS)
            ui.graphql("mutation { setNuxSeen }")  # the one-time community dialog would cover the page
            yield ui


@contextlib.contextmanager
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tmp_path / "chromium-profile", tmp_path / "chromium.log")
    try:
        yield b
    except BaseException:
        with contextlib.suppress(Exception):
            b.screenshot(tmp_path / "failure.png")
        raise
    finally:
        b.close()


RUNS = """
query Runs($partition: String!) {
  runsOrError(filter: {tags: [{key: "dagster/partition", value: $partition}]}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}"""

STALENESS = """
query Staleness($partition: String!) {
  assetNodes(assetKeys: [{path: ["renders"]}]) {
    staleStatus(partition: $partition)
    staleCauses(partition: $partition) { key { path } partitionKey category reason dependency { path } }
  }
}"""


def wait_for_run(ui: RendersUI, partition: str, timeout: float = 180) -> dict[str, Any]:
    """The one run for `partition`, once it has finished (the daemon dequeues runs launched from the UI)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = ui.graphql(RUNS, partition=partition)["runsOrError"]["results"]
        if runs and runs[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            assert len(runs) == 1, runs
            return runs[0]
        if time.monotonic() > deadline:
            pytest.fail(f"no finished run for {partition} after {timeout}s: {runs}\n{ui.dev_log()}")
        time.sleep(1)


def failure_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [
        e.dagster_event.step_failure_data.error.message
        for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        if e.dagster_event and e.dagster_event.step_failure_data and e.dagster_event.step_failure_data.error
    ]


def partition_entry(job_id: str) -> str:
    """The name of `job_id` in the partitions list of the asset page (truncating text, titled in full)."""
    return f"document.querySelector('[title={json.dumps(job_id)}] > span')"


def test_one_render_partition_launched_from_the_asset_page_shows_its_metadata(
    renders_ui: RendersUI, tmp_path: Path
) -> None:
    job_id = JOB_IDS[0]
    with browser(tmp_path) as page:
        page.goto(f"{renders_ui.url}/assets/renders?view=partitions")
        for shown in JOB_IDS:
            page.wait_for(partition_entry(shown), f"{shown} listed as a partition of renders", timeout=90)

        page.click(by_text("button", "Materialize…"), "the Materialize… button")
        page.click(
            "[...document.querySelectorAll('[role=dialog] [aria-haspopup=dialog]')]"
            ".find(e => e.innerText.includes('Select a partition'))",
            "the partition picker of the launch dialog",
        )
        picker = "[...document.querySelectorAll('.dagster-popover [role=menuitem]')]"
        offered = page.wait_for(
            f"{picker}.map(e => e.innerText.trim().split('\\n')[0])", "the partitions offered by the picker"
        )
        assert set(JOB_IDS) <= set(offered), offered
        page.click(
            f"{picker}.find(e => e.innerText.trim().split('\\n')[0] === {json.dumps(job_id)})",
            f"{job_id} in the picker",
        )
        page.click(by_text(".bp5-dialog *", "Launch runs to materialize renders"), "the dialog title")
        page.click(by_text(".bp5-dialog button", "Launch 1 run"), "Launch 1 run")  # not a backfill

        run = wait_for_run(renders_ui, job_id)
        instance = renders_ui.env.instance
        assert run["status"] == "SUCCESS", (failure_messages(instance, run["runId"]), renders_ui.dev_log())
        assert {t["key"]: t["value"] for t in run["tags"]}.get("dagster/from_ui") == "true"  # the click
        rendered = [
            r.partition_key
            for r in instance.fetch_materializations(RENDERS_KEY, limit=100).records
            if r.run_id == run["runId"]
        ]
        assert rendered == [job_id]  # the one partition picked, nothing else
        video = renders_ui.env.root / "outputs" / job_id / "video.mp4"
        sha256 = hashlib.sha256(video.read_bytes()).hexdigest()

        page.goto(f"{renders_ui.url}/assets/renders?view=partitions")
        page.click(partition_entry(job_id), f"the {job_id} partition")
        page.wait_for(f"document.body.innerText.includes({json.dumps(sha256)})", "the render's sha256")
        text = page.text()
        for shown in ("seconds_per_step", "sha256", sha256, "video", str(video), run["runId"][:8]):
            assert shown in text, f"{shown!r} not on the {job_id} partition's page"
        screenshot = page.screenshot(tmp_path / "renders-partition.png")
    assert screenshot.stat().st_size > 10_000


def test_a_rendered_partition_goes_stale_when_a_model_file_changes_and_fresh_when_it_is_back(
    renders_ui: RendersUI,
) -> None:
    env = renders_ui.env
    job_id = JOB_IDS[1]
    assert env.render(job_id).success  # in-process, into the instance dagster dev serves

    def staleness() -> tuple[str, list[dict[str, Any]]]:
        [node] = renders_ui.graphql(STALENESS, partition=job_id)["assetNodes"]
        return node["staleStatus"], node["staleCauses"]

    assert staleness() == ("FRESH", [])

    f = load_profile("tiny").files[0]
    try:
        report_sha256(env.instance, file_key(f), "0" * 64)
        assert env.prove().success  # offline_cache: its data version hashes the recorded sha256s
        status, causes = staleness()
        assert status == "STALE"
        assert [(c["key"]["path"], c["category"], c["reason"]) for c in causes] == [
            (OFFLINE_CACHE.path, "DATA", "has a new data version")
        ]
    finally:
        report_sha256(env.instance, file_key(f), f.sha256)
        assert env.prove().success
    assert staleness() == ("FRESH", [])  # the same versions as when it was rendered


def report_sha256(instance: dg.DagsterInstance, key: dg.AssetKey, sha256: str) -> None:
    """A model file's new bytes as model_files records them: sha256 metadata, and it as the data version."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(key, metadata={"sha256": sha256}, tags={"dagster/data_version": sha256})
    )
