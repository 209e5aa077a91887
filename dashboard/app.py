"""The ITDA dashboard: ``itda serve`` or ``streamlit run dashboard/app.py -- --store data/itda.duckdb``.

Pages (one module each under ``views/``): Overview, Atom browser (with shareable atom pages
``atoms?dict=ID&atom=N``), Live decomposition, Similarity, Atom map and Diff (``diff?a=ID&b=ID``: what one
dictionary has and another lacks). The store is only ever read, through short read-only connections, so
training and indexing can run at the same time. The folder installs as the package ``itda_dashboard``
(``pip install -e ".[dashboard]"``), which is how the pages import each other.
"""

from __future__ import annotations

import streamlit as st

from itda_core.store.connection import StoreError
from itda_dashboard import data
from itda_dashboard.nav import PAGES

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
