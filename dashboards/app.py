"""dkdm dashboard: our MLflow runs against the paper's tables, a run explorer, Optuna studies and the DVC pipeline.

Start it with `dkdm dashboard` or `streamlit run dashboards/app.py [-- --tracking-uri URI --storage URL]`.
It only reads: MLflow (settings `tracking.uri`, env DKDM_TRACKING__URI), Optuna (env DKDM_TUNE__STORAGE) and DVC.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent

st.set_page_config(page_title="dkdm · DKDM dashboard", page_icon=":material/science:", layout="wide")
navigation = st.navigation([
    st.Page(HERE / "pages" / "paper_vs_ours.py", title="Paper vs ours", icon=":material/compare:", default=True),
    st.Page(HERE / "pages" / "run_explorer.py", title="Run explorer", icon=":material/search:"),
    st.Page(HERE / "pages" / "studies.py", title="Studies", icon=":material/tune:"),
    st.Page(HERE / "pages" / "pipeline.py", title="Pipeline", icon=":material/account_tree:"),
])
navigation.run()  # each page draws the shared sidebar itself (dkdm_ui.common.sidebar)
