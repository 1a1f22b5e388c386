"""The Data Docs as the api-server serves them: readable with nothing but inline styles.

plugins/mlops_links.py serves every report under `Content-Security-Policy: sandbox; default-src 'none';
style-src 'unsafe-inline'; img-src data:`, because Great Expectations writes values from the data into its HTML
unescaped. That policy also stops the pages' CDN stylesheets, icon font and scripts: the tables stay readable as
plain HTML, but the pass/fail icons (Font Awesome glyphs, no text) would be blank. STYLE, a constant (no value from
the data), goes inline into every page and shows them as words, with some table rules.
"""

from __future__ import annotations

from pathlib import Path

STYLE = """<style id="mlops-data-docs">
body{font-family:system-ui,sans-serif;margin:1em 1.5em;line-height:1.35}
table{border-collapse:collapse;margin:.3em 0} td,th{border:1px solid #ddd;padding:2px 8px;vertical-align:top}
i.fas{font-style:normal;font-weight:bold;white-space:nowrap}
.fa-check-circle::before{content:"\\2714  passed";color:#1a7f37}
.fa-times::before{content:"\\2718  failed";color:#c00}
.fa-exclamation-triangle::before{content:"\\26A0  error";color:#b35900}
.fa-question-circle::before{content:"?";color:#555}
.text-danger{color:#c00} .show-scrollbars{max-height:12em;overflow:auto}
</style>"""


def style_pages(docs_dir: Path) -> int:
    """Put STYLE into the head of every HTML page under `docs_dir`; how many pages."""
    pages = sorted(docs_dir.rglob("*.html"))
    for page in pages:
        text = page.read_text(encoding="utf-8")
        if STYLE not in text:
            page.write_text(text.replace("</head>", f"{STYLE}\n</head>", 1), encoding="utf-8")
    return len(pages)
