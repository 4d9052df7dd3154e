"""The web page at `/ui`, end to end in headless Chromium (Debian's `chromium`, driven by Playwright) against
real proxies over real tritonservers: all-MiniLM-L6-v2 (`triton`) and the tiny bge-m3 (`m3_triton`).

Every number the page shows is checked against the public API it calls. Screenshots of each mode go to
`docs/screenshots/` when `BGE_TRITON_SCREENSHOTS=1`, otherwise to the test's tmp directory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from bge_triton.launcher import TritonOptions, free_port

if TYPE_CHECKING:
    from conftest import Service
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]
MINILM = "all-MiniLM-L6-v2"
KEY = "ui-test-key"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (/usr/bin/chromium): run ./install.sh --with-bench-tools",
)


# -- services and browser ---------------------------------------------------------------------------------------
def _proxy(spawn: Callable[..., Service], triton: TritonOptions, *extra: str) -> Service:
    port = free_port()
    return spawn(["serve-proxy", "--triton-url", triton.http_url, "--port", str(port), *extra], port=port,
                 ready_path="/health")  # fmt: skip


@pytest.fixture(scope="module")
def proxy(triton: TritonOptions, spawn: Callable[..., Service]) -> Service:
    return _proxy(spawn, triton)


@pytest.fixture(scope="module")
def m3_proxy(m3_triton: TritonOptions, spawn: Callable[..., Service]) -> Service:
    return _proxy(spawn, m3_triton)


@pytest.fixture(scope="module")
def keyed_proxy(triton: TritonOptions, spawn: Callable[..., Service]) -> Service:
    return _proxy(spawn, triton, "--api-key", KEY)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True,
                                  permissions=["clipboard-read", "clipboard-write"])  # fmt: skip
    page = context.new_page()
    problems: list[str] = []
    # 4xx answers the tests provoke are logged by Chromium as "Failed to load resource"; anything else
    # (a script error, a CSP refusal, a request for something that is not there) fails the test
    page.on("console", lambda m: m.type == "error" and "Failed to load" not in m.text and problems.append(m.text))
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    yield page
    context.close()
    assert not problems, problems


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("BGE_TRITON_SCREENSHOTS") == "1":
        folder = ROOT / "docs/screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path_factory.mktemp("screenshots")


# -- helpers ---------------------------------------------------------------------------------------------------
def _open(page: Page, service: Service, model: str | None = None) -> None:
    page.goto(f"{service.url}/ui")  # redirected to /ui/
    assert page.url == f"{service.url}/ui/"
    page.wait_for_function("() => document.body.dataset.models !== undefined")
    if model is not None:
        page.select_option("#model", model)


def _press(page: Page, selector: str) -> None:
    """Click a button and wait until the page has finished what it started (successfully or not)."""
    before = int(page.evaluate("Number(document.body.dataset.seq || 0)"))
    page.click(selector)
    page.wait_for_function(f"() => Number(document.body.dataset.seq || 0) > {before}", timeout=60_000)


def _embed(service: Service, texts: list[str], model: str, headers: dict[str, str] | None = None) -> np.ndarray:
    body = {"model": model, "input": texts, "encoding_format": "float"}
    response = httpx.post(f"{service.url}/v1/embeddings", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float64)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _cards(service: Service) -> list[dict[str, Any]]:
    return list(httpx.get(f"{service.url}/v1/models", timeout=10).json()["data"])


def _label(score: float, card: dict[str, Any], language: str) -> str:
    """The words the page must show for `score`: the band whose threshold (from the model's score bands, measured
    at export on STS pairs) the score reaches; the lowest band below every threshold."""
    bands = card["score_bands"]["languages"][language]
    assert bands["ordered"], bands
    label = bands["bands"][0]["label"]
    for band in bands["bands"]:
        if score >= bands["thresholds"].get(band["label"], 2.0):
            label = band["label"]
    return str(label)


def _error_message(service: Service, path: str, body: dict[str, Any]) -> str:
    response = httpx.post(f"{service.url}{path}", json=body, timeout=30)
    assert response.status_code >= 400
    return str(response.json()["error"]["message"])


# -- the page --------------------------------------------------------------------------------------------------
def test_static_files_are_served_with_the_page_headers(proxy: Service) -> None:
    root = httpx.get(f"{proxy.url}/ui", timeout=10)
    assert root.status_code == 307 and root.headers["location"] == "ui/"
    for path, kind in (("/ui/", "text/html"), ("/ui/app.js", "javascript"), ("/ui/style.css", "text/css")):
        response = httpx.get(f"{proxy.url}{path}", timeout=10)
        assert response.status_code == 200 and kind in response.headers["content-type"], path
        assert "default-src 'self'" in response.headers["content-security-policy"]
    html = httpx.get(f"{proxy.url}/ui/", timeout=10).text
    assert "http://" not in html and "https://" not in html  # nothing from a CDN: the page works offline


def test_two_texts_cosine_equals_the_api(page: Page, proxy: Service, shots: Path) -> None:
    a, b = "The weather is lovely today.", "It is sunny and warm outside."
    _open(page, proxy, MINILM)
    page.fill("#text-a", a)
    page.fill("#text-b", b)
    _press(page, "#compare")
    vectors = _embed(proxy, [a, b], MINILM)
    expected = _cos(vectors[0], vectors[1])
    assert page.text_content("#cosine") == f"{expected:.4f}"
    assert abs(float(page.get_attribute("#cosine", "data-value") or "nan") - expected) < 1e-6
    (card,) = [c for c in _cards(proxy) if c["id"] == MINILM]
    assert page.text_content("#band") == _label(expected, card, "en")
    assert "English STS pairs people rated" in (page.text_content("#band-note") or "")
    assert page.is_hidden("#m3-scores") and page.is_hidden("#error")
    page.screenshot(path=str(shots / "two-text.png"), full_page=True)


def test_score_words_follow_the_models_own_score_bands(page: Page, proxy: Service) -> None:
    """The words beside a score come from where it falls among the model's cosines on human-rated STS pairs of the
    texts' language (GET /v1/models `score_bands`), not from fixed cut-offs."""
    (card,) = [c for c in _cards(proxy) if c["id"] == MINILM]
    zh = card["score_bands"]["languages"]["zh"]
    assert [b["label"] for b in zh["bands"]] == ["unrelated", "related", "paraphrase"]
    assert zh["source"] == "zh-stsb-test.tsv" and zh["pairs"] >= 90 and card["score_bands"]["input_type"] == "passage"
    en = card["score_bands"]["languages"]["en"]
    assert en["bands"][0]["median"] < en["thresholds"]["related"] < en["thresholds"]["paraphrase"]
    _open(page, proxy, MINILM)
    for a, b, language in (("量子力学的基本原理", "我家的猫喜欢睡觉", "zh"), ("A man is playing a flute.",
                           "A man is playing a flute.", "en"), ("A man is playing a flute.", "The stock market fell.",
                           "en")):  # fmt: skip
        page.fill("#text-a", a)
        page.fill("#text-b", b)
        _press(page, "#compare")
        score = float(page.get_attribute("#cosine", "data-value") or "nan")
        assert page.text_content("#band") == _label(score, card, language), (a, b, score)
    assert page.text_content("#band") == "unrelated" and page.text_content("#band") != "very similar"


def test_bge_m3_scores_side_by_side_equal_v1_similarity(page: Page, m3_proxy: Service, shots: Path) -> None:
    models = httpx.get(f"{m3_proxy.url}/v1/models", timeout=10).json()["data"]
    (card,) = [c for c in models if c["parent"] is None]  # not its -query / -passage variants
    assert card["m3"] is True
    a, b = "如何部署向量模型？", "用 Triton 部署嵌入模型"
    _open(page, m3_proxy, card["id"])
    page.fill("#text-a", a)
    page.fill("#text-b", b)
    _press(page, "#compare")
    body = {"model": card["id"], "query": a, "passages": [b]}
    scores = httpx.post(f"{m3_proxy.url}/v1/similarity", json=body, timeout=60).json()["data"][0]
    for key in ("dense", "sparse", "colbert", "hybrid"):
        assert page.text_content(f"#m3-{key}") == f"{scores[key]:.4f}", key
    vectors = _embed(m3_proxy, [a, b], card["id"])
    assert page.text_content("#cosine") == f"{_cos(vectors[0], vectors[1]):.4f}"
    assert page.is_visible("#m3-scores")
    page.screenshot(path=str(shots / "two-text-m3.png"), full_page=True)


def test_many_texts_heatmap_hover_and_near_duplicates(page: Page, proxy: Service, shots: Path, tmp_path: Path) -> None:
    texts = [
        "The cat sits on the mat.", "A cat is sitting on the mat.", "Stock markets fell sharply on Monday.",
        "Shares dropped steeply at the start of the week.", "How do I deploy an embedding model?",
        "What is the way to serve a text embedding model?", "I like green apples.",
    ]  # fmt: skip
    n = len(texts)
    _open(page, proxy, MINILM)
    page.click("#tab-many")
    page.fill("#many-texts", "\n".join(texts) + "\n\n")  # blank lines are ignored
    _press(page, "#matrix")
    (card,) = [c for c in _cards(proxy) if c["id"] == MINILM]
    # the near-duplicate threshold starts at the model's paraphrase level for the texts' language (English here)
    paraphrase = card["score_bands"]["languages"]["en"]["thresholds"]["paraphrase"]
    assert float(page.input_value("#threshold")) == round(paraphrase, 2)
    assert "paraphrase level" in (page.text_content("#threshold-note") or "")
    assert page.locator("#heatmap td.cell").count() == n * n
    assert page.locator("#heatmap th.row").count() == n
    vectors = _embed(proxy, texts, MINILM)
    expected = np.array([[_cos(vectors[i], vectors[j]) for j in range(n)] for i in range(n)])
    shown = page.eval_on_selector_all(
        "#heatmap td.cell", "cells => cells.map(c => [+c.dataset.i, +c.dataset.j, +c.dataset.value])"
    )
    for i, j, value in shown:
        assert round(value, 4) == round(float(expected[int(i), int(j)]), 4)

    def duplicates(threshold: float) -> tuple[int, int]:
        page.fill("#threshold", f"{threshold}")
        count = int(page.text_content("#dup-count") or "-1")
        return count, page.locator("#heatmap td.dup").count()

    upper = expected[np.triu_indices(n, 1)]
    for threshold in (0.99, 0.6, 0.3, -1.0):
        count, highlighted = duplicates(threshold)
        assert count == int((upper >= threshold).sum()) and highlighted == 2 * count, threshold
    assert duplicates(0.99)[0] < duplicates(0.3)[0] < duplicates(-1.0)[0] == n * (n - 1) // 2
    page.fill("#threshold", "0.6")
    assert page.input_value("#threshold-range") == "0.6"

    page.hover("#heatmap td.cell[data-i='0'][data-j='1']")
    tooltip = page.text_content("#tooltip") or ""
    assert page.is_visible("#tooltip") and f"{expected[0, 1]:.4f}" in tooltip and texts[1] in tooltip

    # the user's threshold stays when the heatmap is recomputed
    page.fill("#threshold", "0.6")
    _press(page, "#matrix")
    assert page.input_value("#threshold") == "0.6" and page.text_content("#threshold-note") == ""

    # a .txt file dropped on the text box replaces the lines and redraws the heatmap
    dropped = ["alpha beta", "alpha beta gamma", "zeta"]
    before = int(page.evaluate("Number(document.body.dataset.seq || 0)"))
    transfer = page.evaluate_handle(
        "text => { const t = new DataTransfer(); t.items.add(new File([text], 'lines.txt', {type: 'text/plain'}));"
        " return t; }",
        "\n".join(dropped),
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    page.wait_for_function(f"() => Number(document.body.dataset.seq || 0) > {before}")
    assert page.locator("#heatmap td.cell").count() == len(dropped) ** 2
    assert page.input_value("#many-texts") == "\n".join(dropped)
    path = tmp_path / "four.txt"
    path.write_text("one\ntwo\nthree\nfour\n")
    before = int(page.evaluate("Number(document.body.dataset.seq || 0)"))
    page.set_input_files("#many-file", str(path))
    page.wait_for_function(f"() => Number(document.body.dataset.seq || 0) > {before}")
    assert page.locator("#heatmap td.cell").count() == 16


def test_chinese_heatmap_labels_are_upright_and_the_threshold_is_chinese(
    page: Page, proxy: Service, shots: Path
) -> None:
    _open(page, proxy, MINILM)
    page.click("#tab-many")
    defaults = page.input_value("#many-texts").splitlines()
    assert sum(bool(re.search(r"[\u4e00-\u9fff]", line)) for line in defaults) >= 3  # Chinese sample texts
    _press(page, "#matrix")
    assert page.locator("#heatmap td.cell").count() == len(defaults) ** 2
    (card,) = [c for c in _cards(proxy) if c["id"] == MINILM]
    paraphrase = card["score_bands"]["languages"]["zh"]["thresholds"]["paraphrase"]
    assert float(page.input_value("#threshold")) == round(paraphrase, 2)
    # a Chinese column label reads top to bottom with upright glyphs: no rotation, the first character on top
    label = page.evaluate(
        """() => {
            const span = document.querySelector('#heatmap th.col span');
            const text = span.firstChild;
            const han = [...text.data].map((c, i) => [c, i]).filter(([c]) => /\\p{Script=Han}/u.test(c));
            const rect = (i) => { const r = document.createRange(); r.setStart(text, i); r.setEnd(text, i + 1);
                                  return r.getBoundingClientRect(); };
            const first = rect(han[0][1]), last = rect(han[han.length - 1][1]);
            const style = getComputedStyle(span);
            return {transform: style.transform, writing: style.writingMode, orientation: style.textOrientation,
                    firstTop: first.top, lastTop: last.top, firstLeft: first.left, lastLeft: last.left};
        }"""
    )
    assert label["transform"] == "none" and label["writing"] == "vertical-rl", label
    assert label["orientation"] in ("mixed", "upright"), label
    assert label["firstTop"] < label["lastTop"] and abs(label["firstLeft"] - label["lastLeft"]) < 2, label
    page.screenshot(path=str(shots / "many-text.png"), full_page=True)


def test_tokens_view_marks_the_window(page: Page, proxy: Service, shots: Path) -> None:
    short = "Tokenizers split unbelievable words into pieces."
    long = " ".join(["Embedding models read at most a fixed number of tokens; the rest is cut off."] * 19)
    _open(page, proxy, MINILM)
    page.click("#tab-tokens")
    page.fill("#token-texts", f"{short}\n{long}")
    _press(page, "#tokenize")
    answer = httpx.post(f"{proxy.url}/tokenize", json={"model": MINILM, "inputs": [short, long]}, timeout=30).json()
    cards = page.locator(".tok-card")
    assert cards.count() == 2
    counts = [int(cards.nth(i).get_attribute("data-count") or "-1") for i in range(2)]
    assert counts == [len(tokens) for tokens in answer]
    assert counts[0] <= 256 < counts[1]
    assert cards.nth(0).locator(".trunc-marker").count() == 0 and cards.nth(1).locator(".trunc-marker").count() == 1
    assert cards.nth(0).locator(".tok-count").text_content() == f"{counts[0]} / 256 tokens"
    # the mark sits after the 255th token: [CLS] + 254 text tokens + [SEP] are the 256 the model sees
    assert cards.nth(1).locator(".trunc-marker").get_attribute("data-index") == "255"
    assert cards.nth(1).locator(".chip.beyond").count() == counts[1] - 256
    pieces = cards.nth(0).locator(".chip .piece").all_text_contents()
    assert pieces == [t["token"] for t in answer[0]]
    assert cards.nth(0).locator(".chip .id").all_text_contents() == [str(t["id"]) for t in answer[0]]
    page.screenshot(path=str(shots / "tokens.png"), full_page=True)


def test_errors_name_the_field_and_clear_the_previous_result(page: Page, proxy: Service) -> None:
    _open(page, proxy, MINILM)
    page.fill("#text-a", "some text")
    page.fill("#text-b", "other text")
    _press(page, "#compare")
    assert page.is_visible("#two-result")
    page.fill("#text-b", "  ")
    _press(page, "#compare")
    assert page.is_visible("#error") and page.text_content("#error .error-message") == "Text B is empty"
    assert page.is_hidden("#two-result")  # the previous pair's score is not left beside the error
    page.fill("#text-b", "fine again")
    _press(page, "#compare")
    assert page.is_hidden("#error") and page.is_visible("#two-result")

    page.click("#tab-tokens")
    _press(page, "#tokenize")
    assert page.is_visible("#token-result")
    page.fill("#token-texts", "   \n  ")  # no lines
    _press(page, "#tokenize")
    assert page.text_content("#error .error-message") == "Texts is empty: write one text per line"
    assert page.is_hidden("#token-result")


def test_api_errors_are_shown_with_their_message(page: Page, proxy: Service) -> None:
    """An error the API finds is shown with its status and message, inputs named as the page's fields."""
    message = _error_message(proxy, "/v1/embeddings", {"model": "no-such-model", "input": ["a", "b"]})
    _open(page, proxy, MINILM)
    page.evaluate("() => { const o = document.createElement('option'); o.value = o.textContent = 'no-such-model';"
                  " document.querySelector('#model').append(o); }")  # fmt: skip
    page.select_option("#model", "no-such-model")
    _press(page, "#compare")
    assert page.text_content("#error .error-message") == message
    assert "404" in (page.text_content("#error") or "")
    long = "word " * 2000  # over the window: the API refuses it when asked not to truncate; the page names it
    refused = _error_message(proxy, "/v1/embeddings", {"model": MINILM, "input": ["a", long], "truncate": False})
    assert "input 1" in refused
    page.select_option("#model", MINILM)
    page.evaluate("() => { const orig = JSON.stringify; JSON.stringify = (v, ...r) => orig("
                  "v && v.input && !v.query ? {...v, truncate: false} : v, ...r); }")  # fmt: skip
    page.fill("#text-a", "a")
    page.fill("#text-b", long)
    _press(page, "#compare")
    assert page.text_content("#error .error-message") == refused.replace("input 1", "Text B")


def test_model_picker_lists_served_models_not_their_query_passage_variants(page: Page, proxy: Service) -> None:
    cards = _cards(proxy)
    _open(page, proxy)
    options = page.eval_on_selector_all("#model option", "options => options.map(o => o.value)")
    assert options == [c["id"] for c in cards if not c.get("parent")]
    assert not {c["id"] for c in cards if c.get("parent")} & set(options)
    # the sample texts a first visit shows include Chinese in every mode
    for box in ("#text-a", "#text-b", "#many-texts", "#token-texts"):
        assert re.search(r"[\u4e00-\u9fff]", page.input_value(box)), box


def test_copy_as_curl_and_python_reproduce_the_vectors(page: Page, proxy: Service, tmp_path: Path) -> None:
    texts = ["copy me as curl", "it's a 'quoted' text with \"quotes\" and 中文"]
    _open(page, proxy, MINILM)
    page.fill("#text-a", texts[0])
    page.fill("#text-b", texts[1])
    page.check("input[name=input_type][value=query]")
    _press(page, "#copy-curl")
    curl = page.text_content("#snippet") or ""
    assert curl.startswith("curl -s ") and page.evaluate("navigator.clipboard.readText()") == curl
    run = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    from_curl = np.array([d["embedding"] for d in json.loads(run.stdout)["data"]])

    with page.expect_download() as download_info:
        _press(page, "#download")
    download = download_info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    vectors = json.loads(saved.read_text())
    assert vectors["model"] == MINILM and vectors["input_type"] == "query" and vectors["dimensions"] == 384
    assert [d["text"] for d in vectors["data"]] == texts
    from_page = np.array([d["embedding"] for d in vectors["data"]])
    np.testing.assert_allclose(from_curl, from_page, atol=1e-6)
    np.testing.assert_allclose(from_curl, _embed(proxy, texts, MINILM), atol=1e-6)

    _press(page, "#copy-python")
    python = page.text_content("#snippet") or ""
    assert "from openai import OpenAI" in python and 'extra_body={"input_type": "query"}' in python
    script = tmp_path / "snippet.py"
    script.write_text(python + "\nimport json\nprint(json.dumps(vectors))\n", encoding="utf-8")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    np.testing.assert_allclose(np.array(json.loads(run.stdout)), from_page, atol=1e-6)


def test_api_key_is_asked_for_and_sent(page: Page, keyed_proxy: Service) -> None:
    assert httpx.get(f"{keyed_proxy.url}/ui/app.js", timeout=10).status_code == 200  # static files: no key
    assert httpx.get(f"{keyed_proxy.url}/v1/models", timeout=10).status_code == 401
    assert httpx.post(f"{keyed_proxy.url}/tokenize", json={"inputs": "x"}, timeout=10).status_code == 401
    assert httpx.post(f"{keyed_proxy.url}/ui/app.js", timeout=10).status_code == 401  # only GET/HEAD are open
    _open(page, keyed_proxy)
    assert page.evaluate("document.body.dataset.models") == "error"
    assert "401" in (page.text_content("#error") or "") and "API key" in (page.text_content("#error") or "")
    page.fill("#api-key", KEY)
    page.click("#save-key")
    page.wait_for_function("() => document.body.dataset.models === 'loaded'")
    assert page.evaluate(f"sessionStorage.getItem('bge-triton-api-key') === '{KEY}'")
    assert page.input_value("#api-key") == ""  # not left on screen
    page.fill("#text-a", "secured")
    page.fill("#text-b", "protected")
    _press(page, "#compare")
    vectors = _embed(keyed_proxy, ["secured", "protected"], MINILM, {"Authorization": f"Bearer {KEY}"})
    assert page.text_content("#cosine") == f"{_cos(vectors[0], vectors[1]):.4f}"
    _press(page, "#copy-curl")
    curl = page.text_content("#snippet") or ""
    assert "$BGE_TRITON_API_KEY" in curl and KEY not in curl
    run = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "BGE_TRITON_API_KEY": KEY})  # fmt: skip
    assert json.loads(run.stdout)["data"][1]["index"] == 1
