"""The ITDA dashboard: ``itda serve`` or ``streamlit run dashboard/app.py -- --store data/itda.duckdb``.

Pages (one module each under ``views/``): Overview, Atom browser (with shareable atom pages
``atoms?dict=ID&atom=N``), Live decomposition, Similarity and Atom map. The store is only ever read,
through short read-only connections, so training and indexing can run at the same time.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run dashboard/app.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import data  # noqa: E402
from dashboard.nav import PAGES  # noqa: E402
from itda_core.store.connection import StoreError  # noqa: E402

st.set_page_config(page_title="ITDA dashboard", page_icon=":material/hub:", layout="wide")

pages = [
    st.Page(file, title=title, icon=icon, url_path=name, default=(name == "overview"))
    for name, (file, title, icon) in PAGES.items()
]
current = st.navigation(pages)

with st.sidebar:
    path = data.store_path()
    st.caption(f"Store: `{path}`")
    if st.button("Refresh", help="Read the store again (new dictionaries also show up on any reload)."):
        data.clear_caches()
        st.rerun()

try:
    current.run()
except StoreError as err:  # e.g. a damaged store that opens but fails on a later query: one alert, no traceback
    st.error(str(err))
