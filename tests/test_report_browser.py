"""report.html as a person sees it: rendered by headless Chromium (Debian's ``chromium``), the
page loads without errors and with the network unreachable, every image is decoded, and the
screenshot shows the pictures and the green/red frames of the worst-query lists."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from reid_tf.evaluation.report import write_report
from report_helpers import standard_evaluation

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install -y "
    "chromium; .ci/run installs it before make test)")

# Written into a copy of the page: records load errors (capture phase: image errors too) and,
# once the page has loaded, how many images it has and how many are decoded.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (event) {
  window.__errors.push(String(event.message || (event.target && event.target.tagName) || "?"));
}, true);
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.filter(function (image) {
    return image.complete && image.naturalWidth > 0 && image.naturalHeight > 0; });
  var probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({images: images.length, decoded: decoded.length,
    errors: window.__errors, title: document.title,
    sections: document.querySelectorAll("section h2").length});
  document.body.appendChild(probe);
});
</script>"""


def _chromium(profile, *arguments):
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--hide-scrollbars",
               f"--user-data-dir={profile}",
               # Any attempt to reach a host fails: the page must not need the network.
               "--host-resolver-rules=MAP * ~NOTFOUND", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("browser"))
    summary, details = standard_evaluation(os.path.join(folder, "images"))
    return write_report(folder, summary, details, flags={"epoch_num": 3}, tag="trained")


def test_page_loads_without_errors_and_every_image_is_decoded(report_path, tmp_path):
    with open(report_path, encoding="utf-8") as handle:
        page = handle.read()
    probe_path = tmp_path / "probe.html"
    probe_path.write_text(page.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    done = _chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom",
                     probe_path.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, "the probe did not run: " + done.stdout[-500:]
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["errors"] == []
    assert probe["images"] == 2 + 20 * 11  # CMC + distances, 20 queries x (1 + top 10)
    assert probe["decoded"] == probe["images"]
    assert probe["title"] == "Evaluation report: TinyMarket (trained)"
    assert probe["sections"] == 5


def _near(pixels, colour, tolerance=30):
    return np.all(np.abs(pixels.astype(np.int32) - colour) <= tolerance, axis=-1)


def test_screenshot_shows_the_pictures_and_the_coloured_frames(report_path, tmp_path):
    from PIL import Image
    shot = tmp_path / "shot.png"
    done = _chromium(tmp_path / "profile", "--window-size=1280,2400",
                     f"--screenshot={shot}", "file://" + os.path.abspath(report_path))
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (2400, 1280, 3)
    assert np.mean(np.all(pixels > 245, axis=-1)) < 0.9  # not a blank page
    header = pixels[:60]
    assert np.mean(_near(header, (21, 50, 79))) > 0.5  # the dark title bar is drawn
    # The worst-query frames (CSS green #1e9e4a / red #d23a2f, query orange #f0a000) and the
    # histogram bars are on screen in quantity.
    assert _near(pixels, (210, 58, 47), 12).sum() > 2000
    assert _near(pixels, (30, 158, 74), 12).sum() > 500
    assert _near(pixels, (240, 160, 0), 12).sum() > 500
